"""One subscriber's queue of changes, cut off once it falls too far behind.

Both of nsm-local's streaming APIs use it: registry watches (`Find` with `watch`) and MonitorConnections.
A publisher never waits for a slow subscriber; instead a subscriber `limit` items behind is cut off, and
its stream ends with RESOURCE_EXHAUSTED, after which the client subscribes again and gets the current
state (the same way both clients recover from a dropped stream).
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

from nsm_sdk.protocol.errors import ExhaustedError

T = TypeVar("T")


class Feed(Generic[T]):
    def __init__(self, limit: int, cut_off_message: str) -> None:
        self._queue: asyncio.Queue[T | None] = asyncio.Queue()
        self._limit = limit
        self._cut_off_message = cut_off_message
        self.cut_off = False

    def offer(self, item: T) -> None:
        """Queue `item`, or cut the subscriber off if it is `limit` items behind (then nothing more)."""
        if self.cut_off:
            return
        if self._queue.qsize() >= self._limit:
            self.cut_off = True
            self._queue.put_nowait(None)
        else:
            self._queue.put_nowait(item)

    def close(self) -> None:
        """End the stream normally (server shutdown)."""
        self._queue.put_nowait(None)

    async def next(self) -> T | None:
        """The next item; None once closed; ExhaustedError once cut off."""
        item = await self._queue.get()
        if item is None and self.cut_off:
            raise ExhaustedError(self._cut_off_message)
        return item
