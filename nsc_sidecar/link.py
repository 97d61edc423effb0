"""One requested link, kept alive from first Request to Close (protocol doc §5).

Lifecycle: REQUESTING → ESTABLISHED → (REFRESHING | HEALING) → ESTABLISHED … → CLOSED. The transitions
are listed in `TRANSITIONS`; anything else is a bug and raises. Retries never end the loop: only shutdown.

* refresh: at `client_refresh_delay` (0.2 x the earliest segment expiry), re-sending the last reply;
* heal: when the manager's monitor stream breaks, or reports our connection DOWN/deleted. If our side of
  the link is still healthy (present, up, carrier) we refresh; otherwise we reselect: Close the old
  connection, then Request again with the endpoint choice cleared;
* verify: after every successful Request, our interface must exist under the requested name (renamed if
  the forwarder gave it another one), be up, and carry the returned addresses and routes. A refresh whose
  reply changes nothing for our side is checked only once the last check is `RECHECK_AFTER` old (with
  short tokens a link refreshes every second); the monitor and a failing refresh check at once;
* adopt: before the first Request, ask the manager what it still holds for our connection id (a previous
  run of ours, killed without closing); if it holds it, the first Request is a refresh of it, like
  cmd-nsc's start-up recovery (§5.4), so the link keeps its interface and addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections.abc import Callable, Iterable, Sequence

import grpc

from nsm_sdk._proto.networkservice.connection_pb2 import (
    Connection,
    ConnectionEventType,
    MonitorScopeSelector,
    PathSegment,
    State,
)
from nsm_sdk._proto.networkservice.connectioncontext_pb2 import ConnectionContext
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk.agent.lifecycle import ABANDONED_GRACE, Stopped, unless_stopped
from nsm_sdk.agent.link_check import RECHECK_AFTER, Adopt, announce_later, check_side
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.nsm_client import NsmClient, RpcFailed
from nsm_sdk.kernel.errors import KernelError
from nsm_sdk.kernel.links import delete_link
from nsm_sdk.kernel.state import LinkState as KernelLinkState
from nsm_sdk.protocol.nsurl import LinkSpec
from nsm_sdk.protocol.requests import (
    KERNEL,
    connection_id,
    first_request,
    kernel_preference,
    own_connection_in,
    refresh_request,
    reselect_request,
)
from nsm_sdk.protocol.timing import Backoff, client_refresh_delay

NAME_PARAM = "name"
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
OUTCOME_UNKNOWN = UNREACHABLE | {grpc.StatusCode.CANCELLED, grpc.StatusCode.ALREADY_EXISTS}
"""A first Request that failed so may still have been carried out: look before asking again."""
"""Lookup failures that a Request would meet too (no manager yet): retried before the first Request."""
RETRY = Backoff(base=0.2, factor=2.0, cap=5.0, jitter=0.1)


class LinkState(enum.Enum):
    REQUESTING = "requesting"
    ESTABLISHED = "established"
    REFRESHING = "refreshing"
    HEALING = "healing"
    CLOSED = "closed"


TRANSITIONS: dict[LinkState, frozenset[LinkState]] = {
    LinkState.REQUESTING: frozenset({LinkState.ESTABLISHED, LinkState.CLOSED}),
    LinkState.ESTABLISHED: frozenset({LinkState.REFRESHING, LinkState.HEALING, LinkState.CLOSED}),
    LinkState.REFRESHING: frozenset({LinkState.ESTABLISHED, LinkState.HEALING, LinkState.CLOSED}),
    LinkState.HEALING: frozenset({LinkState.ESTABLISHED, LinkState.REQUESTING, LinkState.CLOSED}),
    LinkState.CLOSED: frozenset(),
}


class Trigger(enum.Enum):
    STOP = "stop"
    REFRESH_DUE = "refresh_due"
    REFRESH_REQUESTED = "refresh_requested"
    DOWN = "down"
    MONITOR_LOST = "monitor_lost"


class Link:
    def __init__(
        self,
        spec: LinkSpec,
        client_name: str,
        netns_url: str,
        client: NsmClient,
        request_timeout: float,
        on_ready: Callable[[str, bool], None],
        log: EventLog,
        clock: Callable[[], float] = time.time,
        netns_fd: int | None = None,
    ) -> None:
        """`netns_fd`: the namespace our interface is in, when not our own (an agent host's router)."""
        self.spec = spec
        self.netns_fd = netns_fd
        self.client_name = client_name
        self.conn_id = connection_id(client_name, spec.index)
        self.preference = kernel_preference(spec.interface_name, netns_url)
        self.client = client
        self.request_timeout = request_timeout
        self._on_ready = on_ready
        self._clock = clock
        self._log = log.bind(link=spec.interface_name, service=spec.network_service, conn=self.conn_id)
        self.state = LinkState.REQUESTING
        self.conn: Connection | None = None
        self._verified = False
        self._checked: tuple[str, ConnectionContext] | None = None  # what the last clean check saw
        self._checked_at = 0.0
        self._triggers: asyncio.Queue[Trigger] = asyncio.Queue()
        self._abandoned = False  # a Request was cut short by the stop: a first one the manager may make yet

    def __repr__(self) -> str:
        return f"<Link {self.spec.interface_name} {self.state.value} conn={self.conn_id}>"

    def _move(self, new: LinkState, **fields: object) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(
                f"link {self.spec.interface_name}: no transition {self.state.value} -> {new.value}"
            )
        routine = (new is LinkState.REFRESHING and fields.get("reason") == Trigger.REFRESH_DUE.value) or (
            new is LinkState.ESTABLISHED and self.state is LinkState.REFRESHING
        )
        # A refresh on time is routine (every link, every fifth of its token lifetime): debug, so that a
        # big lab's log says what changed. Metrics count it whatever the level (NSM_PROMETHEUS_LISTEN_ON).
        report = self._log.debug if routine else self._log.info
        report(f"link.{new.value}", previous=self.state.value, **fields)
        self.state = new

    async def _request(self, request: NetworkServiceRequest, stop: asyncio.Event) -> Connection | None:
        """Send until one succeeds; None only when stopping.

        A failure is logged when it first happens or its reason changes, not on every retry. While a
        refresh pinned to an endpoint keeps failing, our side of the link is checked after every attempt
        (and at once when the manager reports the connection down): once it is gone, we Close the old
        connection and reselect, so a vanished endpoint never holds the link hostage (§5.4).
        """
        try:
            return await self._send_until_made(request, stop)
        except Stopped:  # a call cut short: its outcome is unknown (`close` undoes a first Request's)
            self._abandoned = True
            return None

    async def _send_until_made(
        self, request: NetworkServiceRequest, stop: asyncio.Event
    ) -> Connection | None:
        """`_request`'s retries; every call in them raises Stopped as soon as `stop` is set."""
        delays = RETRY.delays(random.Random())
        attempts, last_reason = 0, ""
        while not stop.is_set():
            outcome_unknown = False
            try:
                call = self.client.request(request, self.request_timeout, check_reply=True)
                return await unless_stopped(stop, call)
            except RpcFailed as exc:
                attempts += 1
                if exc.details != last_reason:
                    self._log.warning(
                        "request.failed", code=exc.code.name, reason=exc.details, attempt=attempts
                    )
                    last_reason = exc.details
                outcome_unknown = exc.code in OUTCOME_UNKNOWN
            if outcome_unknown and not request.connection.network_service_endpoint_name:
                request = await unless_stopped(stop, self._adopt_if_made(request))
            if (
                request.connection.network_service_endpoint_name
                and self.conn is not None
                and await self._data_plane_problems(self.conn)
            ):
                request = await self._reselect(self.conn, "the pinned endpoint fails and our side is gone")
                continue
            if await self._pause(stop, next(delays)):
                return None
        return None

    async def _pause(self, stop: asyncio.Event, delay: float) -> bool:
        """Sleep between retries; a monitor trigger ends the pause early. True when stopping."""
        await self._next_trigger(stop, delay)
        return stop.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        monitor: asyncio.Task[None] | None = None
        announcer: asyncio.Task[None] | None = None
        try:
            request = await self._initial_request(stop)
            while request is not None:
                reply = await self._request(request, stop)
                if reply is None:
                    break
                self.conn = reply
                was_verified = self._verified
                problems = await self._verify_unless_fresh(reply)
                if self._verified and not was_verified:  # a link new to the namespace's listeners
                    if announcer is not None:
                        announcer.cancel()
                    addresses = list(reply.context.ip_context.src_ip_addrs)
                    announcer = asyncio.create_task(
                        announce_later(self.spec.interface_name, addresses, self.netns_fd)
                    )
                if self.state != LinkState.ESTABLISHED:
                    self._move(
                        LinkState.ESTABLISHED,
                        endpoint=reply.network_service_endpoint_name,
                        src=",".join(reply.context.ip_context.src_ip_addrs),
                        dst=",".join(reply.context.ip_context.dst_ip_addrs),
                    )
                self._on_ready(self.spec.interface_name, not problems)
                if monitor is None or monitor.done():
                    monitor = asyncio.create_task(self._monitor())
                trigger = await self._next_trigger(stop, client_refresh_delay(reply, self._clock()))
                if trigger is Trigger.STOP:
                    break
                request = await self._respond(trigger, reply)
                if trigger is Trigger.MONITOR_LOST and monitor.done():
                    monitor = None
        finally:
            for task in (monitor, announcer):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            self._on_ready(self.spec.interface_name, False)
        await self.close()

    async def _adopt_if_made(self, request: NetworkServiceRequest) -> NetworkServiceRequest:
        """After a Request whose outcome we do not know (our deadline passed, the stream broke, or the
        manager says our interface name is taken), ask whether the manager made the connection after all:
        then the next attempt refreshes it instead of asking for a second one."""
        selector = MonitorScopeSelector(path_segments=[PathSegment(id=self.conn_id)])
        try:
            held = await self.client.held_connections(selector, self.request_timeout)
        except RpcFailed:
            return request
        previous = previous_connection(held, self.conn_id)
        if previous is None:
            return request
        self._log.info(
            "link.adopting", endpoint=previous.network_service_endpoint_name, reason="outcome_unknown"
        )
        return refresh_request(previous, self.preference)

    def _first_request(self) -> NetworkServiceRequest:
        return first_request(
            self.client_name, self.conn_id, self.spec.network_service, self.spec.labels, self.preference
        )

    async def _initial_request(self, stop: asyncio.Event) -> NetworkServiceRequest | None:
        """A refresh of the connection the manager still holds for our id, else a first Request; None when
        stopping. Asked until the manager answers: a first Request sent blindly would open a second
        connection beside the one we left behind (or be refused for taking its interface name)."""
        selector = MonitorScopeSelector(path_segments=[PathSegment(id=self.conn_id)])  # cmd-nsc's selector
        delays = RETRY.delays(random.Random())
        last_reason = ""
        while not stop.is_set():
            try:
                held = await unless_stopped(
                    stop, self.client.held_connections(selector, self.request_timeout)
                )
            except Stopped:
                return None
            except RpcFailed as exc:
                if exc.details != last_reason:
                    self._log.warning("adopt.lookup_failed", code=exc.code.name, reason=exc.details)
                    last_reason = exc.details
                if exc.code not in UNREACHABLE:  # the manager answers, but not this: nothing to adopt
                    return self._first_request()
                if await self._pause(stop, next(delays)):
                    return None
                continue
            previous = previous_connection(held, self.conn_id)
            if previous is None:
                return self._first_request()
            return await self._adoption_request(previous)
        return None

    async def _adoption_request(self, previous: Connection) -> NetworkServiceRequest:
        """Refresh what a previous run left (cmd-nsc `constructRequest`): as it is when it still fits our
        link; reselected when the manager reports it DOWN and our side is gone; closed and requested anew
        when our configuration names another service or interface now."""
        name = previous.mechanism.parameters.get(NAME_PARAM, "")
        if previous.network_service != self.spec.network_service or name != self.spec.interface_name:
            self._log.warning("adopt.mismatch", previous_service=previous.network_service, previous_if=name)
            with contextlib.suppress(RpcFailed):
                await self.client.close(previous, self.request_timeout)
            return self._first_request()
        self.conn = previous
        self._log.info(
            "link.adopting",
            endpoint=previous.network_service_endpoint_name,
            src=",".join(previous.context.ip_context.src_ip_addrs),
            state=State.Name(previous.state),
        )
        if previous.state == State.DOWN and await self._data_plane_problems(previous):
            return reselect_request(previous, self.preference)
        return refresh_request(previous, self.preference)

    async def _respond(self, trigger: Trigger, reply: Connection) -> NetworkServiceRequest:
        if trigger in (Trigger.REFRESH_DUE, Trigger.REFRESH_REQUESTED):
            self._move(LinkState.REFRESHING, reason=trigger.value)
            return refresh_request(reply, self.preference)
        self._move(LinkState.HEALING, reason=trigger.value)
        if not await self._data_plane_problems(reply):
            return refresh_request(reply, self.preference)
        request = await self._reselect(reply, "our side of the link is gone or down")
        self._move(LinkState.REQUESTING)
        return request

    async def _reselect(self, last: Connection, reason: str) -> NetworkServiceRequest:
        """Close the old connection (errors ignored), then ask for another endpoint (§5.4)."""
        self._log.warning("heal.reselect", reason=reason)
        self._on_ready(self.spec.interface_name, False)
        self._verified = False
        with contextlib.suppress(RpcFailed):
            await self.client.close(last, self.request_timeout)
        return reselect_request(last, self.preference)

    async def _next_trigger(self, stop: asyncio.Event, refresh_in: float) -> Trigger:
        stopped = asyncio.create_task(stop.wait())
        triggered = asyncio.create_task(self._triggers.get())
        try:
            done, _ = await asyncio.wait(
                {stopped, triggered}, timeout=refresh_in, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopped.cancel()
            triggered.cancel()
        if stopped in done:
            return Trigger.STOP
        if triggered in done:
            return triggered.result()
        return Trigger.REFRESH_DUE

    async def _monitor(self) -> None:
        """Watch our connection at the manager; post a trigger on DOWN, delete, refresh request or loss."""
        selector = MonitorScopeSelector(path_segments=[PathSegment(id=self.conn_id, name=self.client_name)])
        try:
            async for event in self.client.monitor(selector):
                ours = own_connection_in(event.connections, self.conn_id)
                if ours is None:
                    if event.type == ConnectionEventType.INITIAL_STATE_TRANSFER:
                        # A manager that does not know our connection (it restarted before this stream
                        # was opened) will never report on it: heal now rather than at the next refresh.
                        self._triggers.put_nowait(Trigger.DOWN)
                        return
                    continue
                if event.type == ConnectionEventType.DELETE or ours.state == State.DOWN:
                    self._triggers.put_nowait(Trigger.DOWN)
                    return
                if ours.state == State.REFRESH_REQUESTED:
                    self._triggers.put_nowait(Trigger.REFRESH_REQUESTED)
        except RpcFailed as exc:
            self._log.warning("monitor.lost", code=exc.code.name, reason=exc.details)
        self._triggers.put_nowait(Trigger.MONITOR_LOST)

    async def _data_plane_problems(self, conn: Connection) -> list[str]:
        """Our liveness check: the interface is present, up, has carrier and its addresses.

        cmd-nsc pings the peer; a kernel check needs no raw sockets and catches what matters for a veth
        (the peer end vanishes with its namespace, which takes our end with it).
        """
        return (
            await check_side(self.spec.interface_name, conn, "client", carrier=True, ns_fd=self.netns_fd)
        ).problems

    async def _verify_unless_fresh(self, reply: Connection) -> list[str]:
        """`_verify`, unless a clean check of the same interface and context is under `RECHECK_AFTER` old."""
        now = self._clock()
        seen = (reply.mechanism.parameters.get(NAME_PARAM, ""), reply.context)
        if self._verified and self._checked == seen and 0.0 <= now - self._checked_at < RECHECK_AFTER:
            return []
        problems = await self._verify(reply)
        if problems:
            self._checked = None
        else:
            context = ConnectionContext()
            context.CopyFrom(reply.context)
            self._checked, self._checked_at = (seen[0], context), now
        return problems

    async def _verify(self, conn: Connection) -> list[str]:
        """Our side after a Request: rename it if it arrived under another name, then check it."""
        adopt: Adopt | None = _arrived_as(f"server-{self.conn_id}", set(conn.context.ip_context.src_ip_addrs))
        problems: list[str] = []
        for _ in range(20):
            check = await check_side(
                self.spec.interface_name, conn, "client", adopt=adopt, ns_fd=self.netns_fd
            )
            if check.renamed_from is not None:
                self._log.info("link.renamed", old=check.renamed_from, new=self.spec.interface_name)
            if check.rename_error is not None:
                self._log.warning(
                    "link.rename_failed", new=self.spec.interface_name, reason=check.rename_error
                )
            adopt = None  # one rename attempt per verification, as before
            problems = check.problems
            if not problems:
                if not self._verified:
                    self._log.info("link.verified", addresses=",".join(conn.context.ip_context.src_ip_addrs))
                self._verified = True
                return []
            await asyncio.sleep(0.05)
        self._log.warning("link.unverified", problems="; ".join(problems))
        self._verified = False
        return problems

    async def close(self) -> None:
        """Close at the manager (bounded by the request timeout), then make sure our side is gone."""
        if self.conn is None:  # never established: the name may belong to someone else's interface
            if self._abandoned:
                await self._close_abandoned()
            self._move(LinkState.CLOSED)
            return
        try:
            await self.client.close(self.conn, self.request_timeout)
            self._log.info("close.done")
        except RpcFailed as exc:
            self._log.warning("close.failed", code=exc.code.name, reason=exc.details)
        try:
            removed = await asyncio.to_thread(delete_link, self.netns_fd, self.spec.interface_name)
            if removed:
                self._log.info("link.removed")
        except KernelError as exc:
            self._log.warning("link.remove_failed", reason=str(exc))
        if self.state != LinkState.CLOSED:
            self._move(LinkState.CLOSED)

    async def _close_abandoned(self) -> None:
        """The first Request the stop cut short may have been made by the manager after all: if it holds
        a connection for our id now, Close it. Bounded by ABANDONED_GRACE, so the stop stays prompt."""
        selector = MonitorScopeSelector(path_segments=[PathSegment(id=self.conn_id)])
        try:
            async with asyncio.timeout(ABANDONED_GRACE):
                held = await self.client.held_connections(selector, ABANDONED_GRACE)
                made = previous_connection(held, self.conn_id)
                if made is not None:
                    await self.client.close(made, ABANDONED_GRACE)
                    self._log.info("close.done", abandoned="true")
        except (RpcFailed, TimeoutError) as exc:
            self._log.info("close.abandoned", reason=str(exc) or "no answer in time")


def previous_connection(held: Iterable[Connection], conn_id: str) -> Connection | None:
    """Ours among the manager's connections (cmd-nsc's match: the manager's view, index 1, whose first
    segment is our id, with our mechanism type), as our own view: index 0 and our id."""
    for conn in held:
        segments = conn.path.path_segments
        if conn.path.index != 1 or len(segments) < 2 or segments[0].id != conn_id:
            continue
        if conn.mechanism.type != KERNEL:
            continue
        ours = Connection()
        ours.CopyFrom(conn)
        ours.path.index = 0
        ours.id = conn_id
        return ours
    return None


def _arrived_as(alias: str, addresses: set[str]) -> Adopt:
    """Our interface under another name: the one with our connection's alias (the forwarder's mark),
    else one carrying all our addresses."""

    def pick(states: Sequence[KernelLinkState]) -> KernelLinkState | None:
        return next((s for s in states if s.alias == alias), None) or next(
            (s for s in states if addresses and addresses <= set(s.addresses)), None
        )

    return pick
