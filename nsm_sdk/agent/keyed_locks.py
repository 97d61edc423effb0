"""One asyncio lock per key (a connection id), kept only while someone holds or waits for it.

Request, Close and teardown of one connection take its lock, so they never interleave. A plain dict of
locks grows by one entry for every id ever seen (a flood of first Requests that fail, say); here an entry
goes as soon as its last user leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        """Keys held or waited for right now."""
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            current, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (current, users - 1)
