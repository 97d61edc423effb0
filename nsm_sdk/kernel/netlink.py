"""Netlink (rtnetlink) sessions bound to a given network namespace, without forking.

`netlink_in(ns_fd)` creates the socket inside the netns (see `_netns`) and hands it to pyroute2's
`IPRoute(use_socket=...)` (pyroute2 0.9.7 also takes `fileno=`, but then owns an fd we created).
The socket has strict checking on (see `KERNEL_FILTERED`), so a dump can read one link's objects only.
IPRoute.close() closes the socket through its asyncio transport; our own close afterwards is a no-op
then, and still closes it if IPRoute failed to start.

Threading: pyroute2 0.9 binds an IPRoute to the thread that built it (it has its own event loop), so
use the session only inside the `with` block, in one thread. Never call this from an event loop
thread; asyncio callers go through `asyncio.to_thread`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted

from nsm_sdk.kernel._netns import call_in_netns
from nsm_sdk.kernel.errors import kernel_errors

T = TypeVar("T")

_SOL_NETLINK = 270
_NETLINK_EXT_ACK = 11  # the kernel then explains EINVAL & co. in the error message
_NETLINK_GET_STRICT_CHK = 12  # the kernel then filters dumps by the request's header and attributes
_BUFFER_BYTES = 1 << 20  # what pyroute2 uses for its own sockets
_DUMP_ATTEMPTS = 3


def _open_rtnetlink_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER_BYTES)
        sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
        sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
    except BaseException:
        sock.close()
        raise
    return sock


@contextmanager
def netlink_in(ns_fd: int | None) -> Iterator[Any]:
    """An `IPRoute` whose socket lives in the netns `ns_fd` (None: the calling thread's own netns).

    The caller keeps ownership of `ns_fd`; it is only used while the socket is created.
    """
    with kernel_errors(f"open rtnetlink socket in netns fd={ns_fd}"):
        sock = call_in_netns(ns_fd, _open_rtnetlink_socket)
    try:
        with kernel_errors("start pyroute2 IPRoute"):
            ipr = IPRoute(use_socket=sock)
        try:
            yield ipr
        finally:
            ipr.close()
    finally:
        sock.close()


def _kernel_filtered(_message: Any) -> bool:
    return True


KERNEL_FILTERED: dict[str, Any] = {"dump_filter": _kernel_filtered}
"""Keyword arguments that make a pyroute2 dump send its selectors (`index=`, `oif=`, `table=`) to the
kernel instead of filtering every message of a full dump in Python: `ipr.addr("dump", index=3,
**KERNEL_FILTERED)`. pyroute2 0.9 puts a dump's keywords into a Python-side filter unless a `dump_filter`
is given; then they go into the request, and with strict checking (set on every socket here, Linux 4.20+)
the kernel answers with the matching objects only. A kernel without strict checking answers with
everything, so callers still check what they get."""


def dump(request: Callable[[], Iterable[T]]) -> list[T]:
    """Run a netlink dump, repeating it when the kernel flags it as interrupted by a concurrent change."""
    for attempt in range(_DUMP_ATTEMPTS):
        try:
            return list(request())
        except NetlinkDumpInterrupted:
            if attempt == _DUMP_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")
