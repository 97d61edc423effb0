"""Server side of MonitorConnections (protocol doc §8.6): current connections plus live subscribers.

Each subscriber first gets INITIAL_STATE_TRANSFER with every matching connection, then UPDATE/DELETE
events filtered by its selector, and by a `visible` predicate when the server shows callers only their
own connections (nsm-local). Subscribers are plain asyncio queues, so a slow monitor never blocks a
Request; the stream ends when the client cancels or the hub is closed. Both are bounded: at most
`MAX_SUBSCRIBERS` streams, and a subscriber `MAX_BACKLOG` events behind is cut off (its stream ends with
RESOURCE_EXHAUSTED; a client then monitors again and gets the current state).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from nsm_sdk._proto.networkservice import connection_pb2_grpc
from nsm_sdk._proto.networkservice.connection_pb2 import (
    Connection,
    ConnectionEvent,
    ConnectionEventType,
    MonitorScopeSelector,
    State,
)
from nsm_sdk.protocol.errors import ExhaustedError, NsmError
from nsm_sdk.protocol.monitor import build_event
from nsm_sdk.transport.status import abort

MAX_SUBSCRIBERS = 1_000
MAX_BACKLOG = 1_000
_CLOSED = None
Visible = Callable[[Connection], bool]


def _everything(_conn: Connection) -> bool:
    return True


class MonitorHub:
    def __init__(self) -> None:
        self._connections: dict[str, Connection] = {}
        self._subscribers: dict[
            asyncio.Queue[ConnectionEvent | None], tuple[MonitorScopeSelector, Visible]
        ] = {}
        self._overflowed: set[asyncio.Queue[ConnectionEvent | None]] = set()

    def __repr__(self) -> str:
        return f"<MonitorHub connections={len(self._connections)} subscribers={len(self._subscribers)}>"

    @property
    def connections(self) -> dict[str, Connection]:
        return dict(self._connections)

    def update(self, conn: Connection) -> None:
        stored = Connection()
        stored.CopyFrom(conn)
        self._connections[conn.id] = stored
        self._publish(ConnectionEventType.UPDATE, stored)

    def delete(self, conn_id: str) -> None:
        stored = self._connections.pop(conn_id, None)
        if stored is None:
            return
        stored.state = State.DOWN
        self._publish(ConnectionEventType.DELETE, stored)

    def _publish(self, kind: ConnectionEventType.ValueType, conn: Connection) -> None:
        for queue, (selector, visible) in self._subscribers.items():
            if not visible(conn):
                continue
            event = build_event(kind, selector, [conn])
            if event is None or queue in self._overflowed:
                continue
            if queue.qsize() >= MAX_BACKLOG:
                self._overflowed.add(queue)
                queue.put_nowait(_CLOSED)
            else:
                queue.put_nowait(event)

    async def subscribe(
        self, selector: MonitorScopeSelector, visible: Visible = _everything
    ) -> AsyncIterator[ConnectionEvent]:
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise ExhaustedError(f"at most {MAX_SUBSCRIBERS} monitor streams at a time")
        queue: asyncio.Queue[ConnectionEvent | None] = asyncio.Queue()
        initial = build_event(
            ConnectionEventType.INITIAL_STATE_TRANSFER,
            selector,
            [conn for conn in self._connections.values() if visible(conn)],
        )
        assert initial is not None
        self._subscribers[queue] = (selector, visible)
        try:
            yield initial
            while (event := await queue.get()) is not _CLOSED:
                assert event is not None
                yield event
            if queue in self._overflowed:
                raise ExhaustedError(f"the monitor stream fell {MAX_BACKLOG} events behind: monitor again")
        finally:
            self._subscribers.pop(queue, None)
            self._overflowed.discard(queue)

    def close(self) -> None:
        """End every subscription (server shutdown)."""
        for queue in self._subscribers:
            queue.put_nowait(_CLOSED)


class MonitorServicer(connection_pb2_grpc.MonitorConnectionServicer):
    """`/connection.MonitorConnection/MonitorConnections` served from a hub."""

    def __init__(self, hub: MonitorHub) -> None:
        self.hub = hub

    async def MonitorConnections(
        self, selector: MonitorScopeSelector, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[ConnectionEvent]:
        try:
            async for event in self.hub.subscribe(selector):
                yield event
        except NsmError as exc:
            await abort(context, exc)
