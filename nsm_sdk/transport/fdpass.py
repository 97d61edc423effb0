"""SCM_RIGHTS on a raw unix stream socket, the way grpcfd does it (§6, §12 item 1).

`FdSocket` wraps one connected, non-blocking socket:

* `send(data)`: fds queued with `queue_fds` go first, one `sendmsg` per fd carrying ONE byte of `data`
  (at most 64 per call, never a zero-byte sendmsg), then the rest of `data` with plain `send`.
  Python 3.11's asyncio has no `sock_sendmsg`, so writes wait for writability with `loop.add_writer`
  and retry on EAGAIN; partial writes continue where they stopped.
* `recv()`: every read is a `recvmsg` with room for 64 fds (MSG_CMSG_CLOEXEC); each fd goes into the
  connection's `FdStore`. With MSG_CTRUNC the kernel has already closed what did not fit, and every fd
  we did get is stored or closed, so nothing leaks.

On TCP sockets no fds are sent (grpcfd does not wrap TCP connections); reading is the same.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import TypeVar

from nsm_sdk.transport.fdstore import FdStore

MAX_FDS_PER_WRITE = 64
RECV_CHUNK = 256 * 1024
_INT_SIZE = array.array("i").itemsize
_ANCILLARY_SPACE = socket.CMSG_SPACE(MAX_FDS_PER_WRITE * _INT_SIZE)
_NETNS_PATH = "/proc/thread-self/ns/net"

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


def open_netns_fd() -> int:
    """An fd of the calling thread's network namespace (what an NSC/NSE sends as its netns, §6)."""
    return os.open(_NETNS_PATH, os.O_RDONLY | os.O_CLOEXEC)


def open_socket_file_fd(path: str) -> int:
    """An O_PATH fd of a socket FILE (not the listening socket), sent at registration (§12 item 8)."""
    return os.open(path, os.O_PATH | os.O_CLOEXEC)


def fds_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """Every fd in SCM_RIGHTS messages; a trailing partial int (truncated control data) is dropped."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % _INT_SIZE])
            fds.extend(received)
    return fds


class FdSocket:
    """One connected stream socket that carries fds in both directions; owns the socket."""

    def __init__(self, sock: socket.socket, received: FdStore) -> None:
        sock.setblocking(False)
        self._sock = sock
        self.received = received
        self.passes_fds = sock.family == socket.AF_UNIX
        self._queued: deque[int] = deque()
        self._write_lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._sock.fileno()}"
        return f"<FdSocket {state} queued={len(self._queued)} received={len(self.received)}>"

    @property
    def queued_fds(self) -> int:
        return len(self._queued)

    def queue_fds(self, fds: Iterable[int]) -> None:
        """Send dups of `fds` on the next writes; the caller keeps its own fds. No-op on TCP or closed."""
        if not self.passes_fds or self._closed:
            _log.debug("relay.fds_not_queued", extra={"fields": {"socket": repr(self)}})
            return
        for fd in fds:
            self._queued.append(os.dup(fd))

    async def send(self, data: bytes) -> None:
        """Write all of `data`, queued fds riding one per byte on its first bytes."""
        async with self._write_lock:
            view = memoryview(data)
            fds_sent = 0
            while view and self._queued and fds_sent < MAX_FDS_PER_WRITE:
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [self._queued[0]]))]
                one_byte = [view[:1]]
                await self._when_writable(partial(self._sock.sendmsg, one_byte, rights, socket.MSG_NOSIGNAL))
                os.close(self._queued.popleft())
                view = view[1:]
                fds_sent += 1
            while view:
                sent = await self._when_writable(partial(self._sock.send, view, socket.MSG_NOSIGNAL))
                view = view[sent:]

    async def recv(self) -> bytes:
        """The next chunk from the peer (b"" at end of stream); fds that came with it go to the store."""
        while True:
            try:
                data, ancdata, flags, _ = self._sock.recvmsg(
                    RECV_CHUNK, _ANCILLARY_SPACE, socket.MSG_CMSG_CLOEXEC
                )
            except (BlockingIOError, InterruptedError):
                await self._wait(writable=False)
                continue
            for fd in fds_from_ancillary(ancdata):
                self.received.add(fd)
            if flags & socket.MSG_CTRUNC:
                _log.warning("relay.fds_truncated", extra={"fields": {"socket": repr(self)}})
            return data

    def shutdown_write(self) -> None:
        """Half-close toward the peer (end of stream); errors mean the peer is gone already."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Close the socket, unsent fds and every received fd. Idempotent."""
        if self._closed:
            return
        self._closed = True
        while self._queued:
            os.close(self._queued.popleft())
        self.received.close()
        self._sock.close()

    async def _when_writable(self, operation: Callable[[], _T]) -> _T:
        while True:
            try:
                return operation()
            except (BlockingIOError, InterruptedError):
                await self._wait(writable=True)

    async def _wait(self, *, writable: bool) -> None:
        loop = asyncio.get_running_loop()
        fileno = self._sock.fileno()
        ready: asyncio.Future[None] = loop.create_future()
        if writable:
            loop.add_writer(fileno, _resolve, ready)
        else:
            loop.add_reader(fileno, _resolve, ready)
        try:
            await ready
        finally:
            if writable:
                loop.remove_writer(fileno)
            else:
                loop.remove_reader(fileno)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
