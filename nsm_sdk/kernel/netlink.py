"""Netlink (rtnetlink) sessions bound to a given network namespace, without forking.

`netlink_in(ns_fd)` creates the socket inside the netns (see `_netns`) and wraps it in an `rtnl.Rtnl`
session. The socket has extended acks (the kernel explains EINVAL & co.) and strict checking on, so a
dump can ask the kernel for one link's objects only. A session is synchronous: use it inside the `with`
block, in one thread; asyncio callers go through `asyncio.to_thread`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from nsm_sdk.kernel._netns import call_in_netns
from nsm_sdk.kernel.errors import kernel_errors
from nsm_sdk.kernel.rtnl import DumpInterrupted, Rtnl

T = TypeVar("T")

_SOL_NETLINK = 270
_NETLINK_EXT_ACK = 11  # the kernel then explains EINVAL & co. in the error message
_NETLINK_GET_STRICT_CHK = 12  # the kernel then filters dumps by the request's header and attributes
_BUFFER_BYTES = 1 << 20
_DUMP_ATTEMPTS = 3


def _open_rtnetlink_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER_BYTES)
        sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
        sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


@contextmanager
def netlink_in(ns_fd: int | None) -> Iterator[Rtnl]:
    """An rtnetlink session whose socket lives in the netns `ns_fd` (None: the calling thread's own).

    The caller keeps ownership of `ns_fd`; it is only used while the socket is created.
    """
    with kernel_errors(f"open rtnetlink socket in netns fd={ns_fd}"):
        sock = call_in_netns(ns_fd, _open_rtnetlink_socket)
    try:
        yield Rtnl(sock)
    finally:
        sock.close()


def dump(request: Callable[[], list[T]]) -> list[T]:
    """Run a netlink dump, repeating it when the kernel flags it as interrupted by a concurrent change."""
    for attempt in range(_DUMP_ATTEMPTS):
        try:
            return request()
        except DumpInterrupted:
            if attempt == _DUMP_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")
