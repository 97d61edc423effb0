"""MonitorConnections selector matching and event building (protocol doc §5.4, §8.6).

A selector's path segments must appear as a contiguous run in the connection's path; an empty name, id or
token in the selector is a wildcard; an empty selector matches every connection
(networkservicemesh/api `MatchesMonitorScopeSelector`). `network_services` is not used for matching there,
and not here either.
"""

from __future__ import annotations

from collections.abc import Iterable

from nsm_sdk._proto.networkservice.connection_pb2 import (
    Connection,
    ConnectionEvent,
    ConnectionEventType,
    MonitorScopeSelector,
    PathSegment,
)


def _segment_matches(pattern: PathSegment, segment: PathSegment) -> bool:
    return all(
        not wanted or wanted == actual
        for wanted, actual in (
            (pattern.name, segment.name),
            (pattern.id, segment.id),
            (pattern.token, segment.token),
        )
    )


def selector_matches(selector: MonitorScopeSelector, conn: Connection) -> bool:
    patterns = selector.path_segments
    if len(patterns) == 0:
        return True
    segments = conn.path.path_segments
    for start in range(len(segments) - len(patterns) + 1):
        if all(_segment_matches(p, segments[start + j]) for j, p in enumerate(patterns)):
            return True
    return False


def build_event(
    kind: ConnectionEventType.ValueType, selector: MonitorScopeSelector, connections: Iterable[Connection]
) -> ConnectionEvent | None:
    """One event for one subscriber: only matching connections, keyed by their id; None when nothing
    matches, except that an INITIAL_STATE_TRANSFER is always sent (possibly empty, §8.6 step 1)."""
    event = ConnectionEvent(type=kind)
    for conn in connections:
        if selector_matches(selector, conn):
            event.connections[conn.id].CopyFrom(conn)
    if len(event.connections) == 0 and kind != ConnectionEventType.INITIAL_STATE_TRANSFER:
        return None
    return event
