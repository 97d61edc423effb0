"""gRPC face of the endpoint: NetworkService (Request, Close) and MonitorConnection (protocol doc
§8.4-§8.6).

The caller is the TLS peer of the connection the call came in on (the forwarder); our netns fd goes back
with the reply that names it (`inodeURL`), on that connection only, like grpcfd's sendfd server. A
policy violation is PERMISSION_DENIED, any other refusal UNKNOWN (what the Go endpoint answers, §7).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty

from nse_sidecar.endpoint import Accepted, EndpointCore
from nsm_sdk._proto.networkservice import networkservice_pb2_grpc
from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk.agent.credentials import caller_token
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.monitor_hub import MonitorHub
from nsm_sdk.identity.policies import PermissionDenied
from nsm_sdk.protocol.errors import NsmError, ProtocolError
from nsm_sdk.protocol.path import prev_expires
from nsm_sdk.protocol.timing import server_close_deadline
from nsm_sdk.transport.relay import RelayConnection

Context = grpc.aio.ServicerContext[Any, Any]


def _caller_id(own: Connection) -> str:
    """The caller's connection id (its segment, just before ours) for our view of a connection."""
    index = own.path.index
    segments = own.path.path_segments
    return segments[index - 1].id if 0 < index <= len(segments) else own.id


class EndpointServicer(networkservice_pb2_grpc.NetworkServiceServicer):
    """Serialises work per connection id, arms the server-side expiry close, and feeds the monitor hub.

    `on_accepted(accepted)` runs after each successful Request (the agent verifies its interface there);
    `on_closed(conn)` after each Close or expiry. `connection_for(context)` is the relay connection a call
    came in on (its authenticated peer; where our `netns_fd` goes with the reply).
    """

    def __init__(
        self,
        core: EndpointCore,
        hub: MonitorHub,
        on_accepted: Callable[[Accepted], None],
        on_closed: Callable[[Connection], None],
        log: EventLog,
        connection_for: Callable[[Context], RelayConnection | None],
        netns_fd: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        self.hub = hub
        self._connection_for = connection_for
        self._netns_fd = netns_fd
        self._on_accepted = on_accepted
        self._on_closed = on_closed
        self._log = log
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._expiry_timers: dict[str, asyncio.TimerHandle] = {}

    def _lock(self, conn_id: str) -> asyncio.Lock:
        return self._locks.setdefault(conn_id, asyncio.Lock())

    async def Request(self, request: NetworkServiceRequest, context: Context) -> Connection:
        token, expires = caller_token(context.invocation_metadata())
        connection = self._connection_for(context)
        peer = connection.peer if connection is not None else None
        presented = connection.presented if connection is not None else None
        async with self._lock(request.connection.id):
            try:
                accepted = self.core.request(request, token, expires, peer, presented)
                try:
                    remaining = context.time_remaining() or 0.0
                    deadline = server_close_deadline(prev_expires(accepted.own_view), remaining)
                except ProtocolError:
                    self.core.allocator.release(accepted.own_view.id)
                    raise
            except NsmError as exc:
                await self._refuse(context, "request.refused", request.connection.id, exc)
        own = accepted.own_view
        known = own.id in self.hub.connections
        self.hub.update(own)
        self._arm_expiry(own, deadline)
        # A refresh of a connection we already hold is routine: one line per state change, not per refresh.
        report = self._log.debug if known else self._log.info
        report("request.refreshed" if known else "request.accepted", conn=own.id, service=own.network_service,
                       ifname=accepted.interface_name,
                       src=",".join(own.context.ip_context.src_ip_addrs),
                       dst=",".join(own.context.ip_context.dst_ip_addrs))
        self._on_accepted(accepted)
        if connection is not None:
            connection.queue_fds([self._netns_fd])  # rides with this reply, which names it
        return accepted.reply

    async def _refuse(self, context: Context, event: str, conn_id: str, exc: NsmError) -> None:
        denied = isinstance(exc, PermissionDenied)
        self._log.warning(event, conn=conn_id, reason=str(exc))
        code = grpc.StatusCode.PERMISSION_DENIED if denied else grpc.StatusCode.UNKNOWN
        await context.abort(code, str(exc))
        raise AssertionError("unreachable") from exc

    async def Close(self, conn: Connection, context: Context) -> Empty:
        token, expires = caller_token(context.invocation_metadata())
        connection = self._connection_for(context)
        peer = connection.peer if connection is not None else None
        presented = connection.presented if connection is not None else None
        async with self._lock(conn.id):
            try:
                mine = self.core.close(conn, token, expires, peer, presented)
            except NsmError as exc:
                await self._refuse(context, "close.refused", conn.id, exc)
        self._forget(mine)
        self._log.info("close.done", conn=mine.id)
        return Empty()

    def _forget(self, mine: Connection) -> None:
        timer = self._expiry_timers.pop(mine.id, None)
        if timer is not None:
            timer.cancel()
        self._locks.pop(_caller_id(mine), None)  # locks are keyed by the id the caller sends
        self.hub.delete(mine.id)
        self._on_closed(mine)

    def _arm_expiry(self, own: Connection, deadline: float) -> None:
        """Close by ourselves when the caller stops refreshing (Go `timeout` server, §4.4)."""
        old = self._expiry_timers.pop(own.id, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, deadline - self._clock())
        loop = asyncio.get_running_loop()
        stored = Connection()
        stored.CopyFrom(own)
        self._expiry_timers[own.id] = loop.call_later(delay, self._expire, stored)

    def _expire(self, own: Connection) -> None:
        self._log.warning("connection.expired", conn=own.id)
        self.core.allocator.release(own.id)
        self._forget(own)

    def close_all(self) -> list[Connection]:
        """Shutdown: release everything we hold and tell monitors (DELETE), returning what was open."""
        open_connections = list(self.hub.connections.values())
        for own in open_connections:
            self.core.allocator.release(own.id)
            self._forget(own)
        return open_connections
