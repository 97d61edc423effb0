"""Entering a network namespace without forking.

Our processes are grpcio programs, so they must not fork (pyroute2's `netns=` does). A netns is a
per-thread attribute on Linux: a short-lived helper thread calls setns(2) on the caller's fd, does one
small job there (create a socket, open a /proc/sys file) and exits, taking its netns with it. Sockets
stay bound to the netns they were created in, so the caller's threads never change netns.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from nsm_sdk.kernel.errors import NetnsUnavailable

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int

#: This thread's own netns. /proc/self/ns/net would name the main thread's, which is not always the same.
OWN_NETNS_PATH = "/proc/thread-self/ns/net"


def _setns(ns_fd: int) -> None:
    if _libc.setns(ns_fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise NetnsUnavailable(f"setns(fd={ns_fd}, CLONE_NEWNET): {os.strerror(code)}", code)


def call_in_netns(ns_fd: int | None, job: Callable[[], T]) -> T:
    """Run `job` with the netns `ns_fd` (None: the caller's own, run inline) and return its result.

    The helper thread only ever lives for one job, so no thread is left in a foreign netns.
    """
    if ns_fd is None:
        return job()
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _setns(ns_fd)
            results.append(job())
        except BaseException as exc:  # handed back to the caller's thread below
            errors.append(exc)

    helper = threading.Thread(target=run, name=f"netns-fd{ns_fd}", daemon=True)
    helper.start()
    helper.join()
    if errors:
        raise errors[0]
    return results[0]


@dataclass(frozen=True)
class NetnsId:
    """Identity of a netns: the (st_dev, st_ino) of its nsfs file, as `ip netns identify` compares."""

    dev: int
    ino: int


def netns_id(ns_fd: int | None) -> NetnsId:
    """The identity of the netns behind `ns_fd` (None: the calling thread's own)."""
    try:
        st = os.stat(OWN_NETNS_PATH) if ns_fd is None else os.fstat(ns_fd)
    except OSError as exc:
        raise NetnsUnavailable(f"netns fd={ns_fd}: {exc.strerror}", exc.errno) from exc
    return NetnsId(st.st_dev, st.st_ino)
