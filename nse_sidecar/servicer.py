"""gRPC face of the endpoint: NetworkService (Request, Close) and MonitorConnection (protocol doc
§8.4-§8.6).

The caller is the TLS peer of the connection the call came in on (the forwarder); our netns fd goes back
with the reply that names it (`inodeURL`), on that connection only, like grpcfd's sendfd server. A
refusal carries its error's status (`nsm_sdk.transport.status`): PERMISSION_DENIED for a policy,
INVALID_ARGUMENT for a malformed request, RESOURCE_EXHAUSTED for an empty pool. (The Go endpoint answers
UNKNOWN for all but the first, §7; the forwarder retries whatever the code.) Never UNAVAILABLE: nsm-local
drops its channel to an endpoint that answers that.

After a restart (SIGKILL) the pool is empty but the links made before are live: before serving the first
Request we keep for each of our interfaces what it still carries (`keep_for_interface`), so no new
connection gets those addresses while the refresh for that interface recovers them; what an interface no
longer carries is freed again before later Requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.empty_pb2 import Empty

from nse_sidecar.endpoint import Accepted, EndpointCore
from nsm_sdk._proto.networkservice import networkservice_pb2_grpc
from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk.agent.credentials import caller_token
from nsm_sdk.agent.keyed_locks import KeyedLocks
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.monitor_hub import MonitorHub
from nsm_sdk.agent.tasks import OwnedTasks
from nsm_sdk.kernel.errors import KernelError
from nsm_sdk.kernel.netlink import netlink_in
from nsm_sdk.kernel.state import LinkState, read_link_states
from nsm_sdk.protocol.errors import NsmError, ProtocolError
from nsm_sdk.protocol.labels import label_map_problem
from nsm_sdk.protocol.path import prev_expires
from nsm_sdk.protocol.timing import server_close_deadline
from nsm_sdk.transport.relay import RelayConnection
from nsm_sdk.transport.status import abort

Context = grpc.aio.ServicerContext[Any, Any]
Carried = Callable[[], Awaitable[dict[str, frozenset[str]]]]


def _own_links() -> list[LinkState]:
    with netlink_in(None) as ipr:
        return read_link_states(ipr)


async def kernel_carried() -> dict[str, frozenset[str]]:
    """Interface -> the addresses and route prefixes it carries in our netns (loopback left out)."""
    states = await asyncio.to_thread(_own_links)
    return {
        state.ifname: state.addresses | {route.prefix for route in state.routes}
        for state in states
        if state.ifname != "lo"
    }


def _caller_id(own: Connection) -> str:
    """The caller's connection id (its segment, just before ours) for our view of a connection."""
    index = own.path.index
    segments = own.path.path_segments
    return segments[index - 1].id if 0 < index <= len(segments) else own.id


def check_labels(conn: Connection) -> None:
    """An absurd label map is a malformed request (`label_map_problem`)."""
    problem = label_map_problem(conn.labels)
    if problem is not None:
        raise ProtocolError(f"connection labels: {problem}")


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
        carried: Carried = kernel_carried,
    ) -> None:
        self.core = core
        self.hub = hub
        self._connection_for = connection_for
        self._netns_fd = netns_fd
        self._on_accepted = on_accepted
        self._on_closed = on_closed
        self._log = log
        self._clock = clock
        self._locks = KeyedLocks()  # by the id the caller sends: Request, Close and expiry never interleave
        self._expiry_timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks = OwnedTasks("nse-sidecar servicer")
        self._carried = carried
        self._scanned = False
        self._scan_lock = asyncio.Lock()

    async def Request(self, request: NetworkServiceRequest, context: Context) -> Connection:
        token, expires = caller_token(context.invocation_metadata())
        connection = self._connection_for(context)
        peer = connection.peer if connection is not None else None
        presented = connection.presented if connection is not None else None
        try:
            await self._keep_what_links_carry()
        except KernelError as exc:
            await self._refuse(context, "request.refused", request.connection.id, exc)
        async with self._locks.hold(request.connection.id):
            try:
                check_labels(request.connection)
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
        report(
            "request.refreshed" if known else "request.accepted",
            conn=own.id,
            service=own.network_service,
            ifname=accepted.interface_name,
            src=",".join(own.context.ip_context.src_ip_addrs),
            dst=",".join(own.context.ip_context.dst_ip_addrs),
        )
        self._on_accepted(accepted)
        if connection is not None:
            connection.queue_fds([self._netns_fd])  # rides with this reply, which names it
        return accepted.reply

    async def _keep_what_links_carry(self) -> None:
        """First call: keep for each of our interfaces what it carries (links from before a restart).
        Later calls, while anything is kept: keep only what the interface still carries. A failed look
        is retried with the next Request (until the first one works, nothing is allocated blind)."""
        allocator = self.core.allocator
        if self._scanned and not allocator.kept():
            return
        async with self._scan_lock:
            kept = allocator.kept()
            if self._scanned and not kept:
                return
            try:
                carried = await self._carried()
            except KernelError as exc:
                self._log.warning("ipam.scan_failed", reason=str(exc))
                if not self._scanned:
                    raise
                return
            names = set(kept) if self._scanned else set(kept) | set(carried)
            self._scanned = True
            for ifname in sorted(names):
                before = kept.get(ifname, frozenset())
                allocator.release_interface(ifname)
                now = allocator.keep_for_interface(ifname, carried.get(ifname, ()))
                if now != before:
                    event = "ipam.kept" if now else "ipam.kept_released"
                    self._log.info(event, ifname=ifname, addresses=",".join(sorted(now or before)))

    async def _refuse(self, context: Context, event: str, conn_id: str, exc: NsmError) -> NoReturn:
        self._log.warning(event, conn=conn_id, reason=str(exc))
        await abort(context, exc)

    async def Close(self, conn: Connection, context: Context) -> Empty:
        token, expires = caller_token(context.invocation_metadata())
        connection = self._connection_for(context)
        peer = connection.peer if connection is not None else None
        presented = connection.presented if connection is not None else None
        async with self._locks.hold(conn.id):
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
        timer = self._expiry_timers.get(own.id)
        self._tasks.spawn(self._expire_now(own, timer), f"expire {own.id}")

    async def _expire_now(self, own: Connection, timer: asyncio.TimerHandle | None) -> None:
        async with self._locks.hold(_caller_id(own)):
            if self._expiry_timers.get(own.id) is not timer:  # refreshed (re-armed) or closed meanwhile
                return
            self._log.warning("connection.expired", conn=own.id)
            self.core.allocator.release(own.id)
            self._forget(own)

    async def aclose(self) -> None:
        """Cancel expiries under way (the agent's shutdown closes what is open with `close_all`)."""
        await self._tasks.aclose()

    def close_all(self) -> list[Connection]:
        """Shutdown: release everything we hold and tell monitors (DELETE), returning what was open."""
        open_connections = list(self.hub.connections.values())
        for own in open_connections:
            self.core.allocator.release(own.id)
            self._forget(own)
        return open_connections
