"""The fds one connection has received, by (st_dev, st_ino), like grpcfd's connWrap (§6).

The store owns every fd in it. A second fd for a key already held is closed at once; a waiter gets a
`dup` it must close itself; `close()` closes everything and wakes the waiters, who then raise
`ConnectionClosedError`. At most `MAX_FDS_PER_CONNECTION` distinct files are kept: NSM passes a few per
connection (a netns, a socket file), so more is a peer trying to use up our fd table; the extra fds are
closed at once and a call waiting for one fails with `FdCapError` (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import NamedTuple

from nsm_sdk.transport.errors import ConnectionClosedError, FdCapError, FdNotReceivedError

MAX_FDS_PER_CONNECTION = 64
_log = logging.getLogger(__name__)


class InodeKey(NamedTuple):
    """The identity of a passed file: what an `inode://dev/ino` URL names."""

    dev: int
    ino: int


def inode_key_of(fd: int) -> InodeKey:
    """(st_dev, st_ino) of an open fd."""
    st = os.fstat(fd)
    return InodeKey(st.st_dev, st.st_ino)


class FdStore:
    """Received fds of one connection; used from the event loop's thread only."""

    def __init__(
        self, on_add: Callable[[InodeKey], None] | None = None, cap: int = MAX_FDS_PER_CONNECTION
    ) -> None:
        self._cap = cap
        self._refused: set[InodeKey] = set()  # remembered up to `cap` too, so waiters fail fast
        self._fds: dict[InodeKey, int] = {}
        self._waiters: dict[InodeKey, list[asyncio.Future[None]]] = {}
        self._on_add = on_add
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._fds)} fds"
        return f"<FdStore {state} keys={sorted(self._fds)}>"

    def __len__(self) -> int:
        return len(self._fds)

    def __contains__(self, key: object) -> bool:
        return key in self._fds

    @property
    def closed(self) -> bool:
        return self._closed

    def keys(self) -> list[InodeKey]:
        return list(self._fds)

    def first(self) -> tuple[InodeKey, int] | None:
        """The first fd received (its key and the fd, still ours), if any."""
        return next(iter(self._fds.items()), None)

    def add(self, fd: int) -> InodeKey | None:
        """Take ownership of `fd`; returns its key, or None when it was closed (duplicate, closed store)."""
        if self._closed:
            os.close(fd)
            return None
        try:
            key = inode_key_of(fd)
        except OSError:
            os.close(fd)
            return None
        if key in self._fds:
            os.close(fd)
            return None
        if len(self._fds) >= self._cap:
            os.close(fd)
            self._refuse(key)
            return None
        self._fds[key] = fd
        for waiter in self._waiters.pop(key, []):
            if not waiter.done():
                waiter.set_result(None)
        if self._on_add is not None:
            self._on_add(key)
        return key

    def _refuse(self, key: InodeKey) -> None:
        if not self._refused:
            _log.warning(
                "relay.fd_cap",
                extra={"fields": {"cap": self._cap, "refused": f"inode://{key.dev}/{key.ino}"}},
            )
        if len(self._refused) < self._cap:
            self._refused.add(key)
        for waiter in self._waiters.pop(key, []):
            if not waiter.done():
                waiter.set_result(None)

    def dup(self, dev: int, ino: int) -> int | None:
        """A new fd for the file with this key, or None if it has not arrived (yet); `FdCapError` if it
        came over the cap."""
        if self._closed:
            raise ConnectionClosedError("the connection that received the fds is closed")
        if (dev, ino) in self._refused:
            raise FdCapError(dev, ino, self._cap)
        fd = self._fds.get(InodeKey(dev, ino))
        return None if fd is None else os.dup(fd)

    async def wait(self, dev: int, ino: int, timeout: float | None) -> int:
        """A dup of the fd with this key, waiting up to `timeout` seconds for it to arrive."""
        key = InodeKey(dev, ino)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while (fd := self.dup(dev, ino)) is None:
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.setdefault(key, []).append(waiter)
                    try:
                        await waiter
                    finally:
                        self._forget_waiter(key, waiter)
        except TimeoutError:
            raise FdNotReceivedError(dev, ino, timeout) from None
        return fd

    def close(self) -> None:
        """Close every stored fd and wake all waiters. Idempotent."""
        self._closed = True
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
        waiters, self._waiters = self._waiters, {}
        for pending in waiters.values():
            for waiter in pending:
                if not waiter.done():
                    waiter.set_result(None)

    def _forget_waiter(self, key: InodeKey, waiter: asyncio.Future[None]) -> None:
        pending = self._waiters.get(key)
        if pending and waiter in pending:
            pending.remove(waiter)
            if not pending:
                del self._waiters[key]
