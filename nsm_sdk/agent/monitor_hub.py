"""Server side of MonitorConnections (protocol doc §8.6): current connections plus live subscribers.

Each subscriber first gets INITIAL_STATE_TRANSFER with every matching connection, then UPDATE/DELETE
events filtered by its selector, and by a `visible` predicate when the server shows callers only their
own connections (nsm-local). Subscribers are `Feed`s (queues), so a slow monitor never blocks a
Request; the stream ends when the client cancels or the hub is closed. Both are bounded: at most
`max_subscribers` streams (`MAX_SUBSCRIBERS` by default), and a subscriber `MAX_BACKLOG` events behind
is cut off (its stream ends with RESOURCE_EXHAUSTED; a client then monitors again and gets the current
state).

A change reaches only the subscribers that can match it: a selector that names a segment id is indexed
by that id (every sidecar link monitors its own connection so), so publishing costs the same with 1 or
1000 streams open; only selectors without any id (an operator's `list`) see every change.
"""

from __future__ import annotations

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
from nsm_sdk.agent.feed import Feed
from nsm_sdk.protocol.errors import ExhaustedError, NsmError
from nsm_sdk.protocol.monitor import build_event
from nsm_sdk.transport.status import abort

MAX_SUBSCRIBERS = 1_000
MAX_BACKLOG = 1_000
Visible = Callable[[Connection], bool]


def _everything(_conn: Connection) -> bool:
    return True


def _segment_id_key(selector: MonitorScopeSelector) -> str | None:
    """A segment id that every connection the selector matches must carry (None: no such id)."""
    return next((pattern.id for pattern in selector.path_segments if pattern.id), None)


class MonitorHub:
    def __init__(self, max_subscribers: int = MAX_SUBSCRIBERS) -> None:
        """`max_subscribers`: a manager that serves a whole lab allows one stream per connection."""
        self.max_subscribers = max_subscribers
        self._connections: dict[str, Connection] = {}
        self._conns_by_segment_id: dict[str, set[str]] = {}  # a new stream's first event reads only these
        self._subscribers: dict[Feed[ConnectionEvent], tuple[MonitorScopeSelector, Visible]] = {}
        self._by_segment_id: dict[str, set[Feed[ConnectionEvent]]] = {}
        self._unkeyed: set[Feed[ConnectionEvent]] = set()  # selectors that name no segment id

    def __repr__(self) -> str:
        return f"<MonitorHub connections={len(self._connections)} subscribers={len(self._subscribers)}>"

    @property
    def connections(self) -> dict[str, Connection]:
        return dict(self._connections)

    def update(self, conn: Connection) -> None:
        stored = Connection()
        stored.CopyFrom(conn)
        self._unindex(self._connections.get(conn.id))
        self._connections[conn.id] = stored
        for segment in stored.path.path_segments:
            self._conns_by_segment_id.setdefault(segment.id, set()).add(stored.id)
        self._publish(ConnectionEventType.UPDATE, stored)

    def delete(self, conn_id: str) -> None:
        stored = self._connections.pop(conn_id, None)
        if stored is None:
            return
        self._unindex(stored)
        stored.state = State.DOWN
        self._publish(ConnectionEventType.DELETE, stored)

    def _unindex(self, stored: Connection | None) -> None:
        if stored is None:
            return
        for segment in stored.path.path_segments:
            ids = self._conns_by_segment_id.get(segment.id)
            if ids is not None:
                ids.discard(stored.id)
                if not ids:
                    del self._conns_by_segment_id[segment.id]

    def _matching(self, key: str | None) -> list[Connection]:
        """The connections a selector naming segment id `key` may match (all of them for None)."""
        if key is None:
            return list(self._connections.values())
        return [self._connections[conn_id] for conn_id in self._conns_by_segment_id.get(key, ())]

    def _candidates(self, conn: Connection) -> set[Feed[ConnectionEvent]]:
        """The subscribers whose selector may match `conn` (each gets its events in publishing order,
        whatever order the subscribers are offered them in)."""
        found = set(self._unkeyed)
        for segment in conn.path.path_segments:
            found.update(self._by_segment_id.get(segment.id, ()))
        return found

    def _publish(self, kind: ConnectionEventType.ValueType, conn: Connection) -> None:
        for feed in self._candidates(conn):
            selector, visible = self._subscribers[feed]
            if feed.cut_off or not visible(conn):
                continue
            event = build_event(kind, selector, [conn])
            if event is not None:
                feed.offer(event)

    async def subscribe(
        self, selector: MonitorScopeSelector, visible: Visible = _everything
    ) -> AsyncIterator[ConnectionEvent]:
        if len(self._subscribers) >= self.max_subscribers:
            raise ExhaustedError(f"at most {self.max_subscribers} monitor streams at a time")
        feed = Feed[ConnectionEvent](
            MAX_BACKLOG, f"the monitor stream fell {MAX_BACKLOG} events behind: monitor again"
        )
        key = _segment_id_key(selector)
        initial = build_event(
            ConnectionEventType.INITIAL_STATE_TRANSFER,
            selector,
            [conn for conn in self._matching(key) if visible(conn)],
        )
        assert initial is not None
        self._subscribers[feed] = (selector, visible)
        (self._unkeyed if key is None else self._by_segment_id.setdefault(key, set())).add(feed)
        try:
            yield initial
            while (event := await feed.next()) is not None:
                yield event
        finally:
            self._subscribers.pop(feed, None)
            if key is None:
                self._unkeyed.discard(feed)
            elif (feeds := self._by_segment_id.get(key)) is not None:
                feeds.discard(feed)
                if not feeds:
                    del self._by_segment_id[key]

    def close(self) -> None:
        """End every subscription (server shutdown)."""
        for feed in self._subscribers:
            feed.close()


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
