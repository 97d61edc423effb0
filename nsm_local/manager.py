"""nsm-local's NetworkService API: nsmgr and kernel forwarder in one hop (protocol doc §4, §5, §8, §10).

A client Request walks the same path as with real NSM: `[client, nsmgr, forwarder, endpoint]`. As
nsmgr we update the path and tokens and check the caller's expiry; as forwarder we choose the endpoint
(the one the connection names on refresh, else by the NetworkService's matches, round robin), call it,
then create the veth pair in both namespaces from the two netns fds (the client's from this connection,
the endpoint's from its reply). Sessions are keyed by our (nsmgr) segment id, which a refresh keeps, so
a refresh after a restart of nsm-local finds its veth again.

The rules it applies live next to it: `request_rules` (what a Request must carry), `endpoint_calls`
(choosing and calling endpoints), `endpoint_watch` (following a connection at its endpoint), `sessions`.

Security (§3.4 and `ownership`): the caller is authenticated by mTLS; Request and Close pass nsmgr's
default policies on the left side of the path; a connection belongs to the identity that opened it; the
client's and the endpoint's namespaces must be their own; a link name in use is never taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

import grpc
from google.protobuf.empty_pb2 import Empty

from nsm_local.endpoint_calls import ENDPOINT_CALL_TIMEOUT, EndpointCaller
from nsm_local.endpoint_dialer import EndpointChannel, EndpointDialer
from nsm_local.endpoint_watch import StreamBroke, follow_endpoint
from nsm_local.forwarder import CrossConnect, ensure_cross_connect, remove_cross_connect
from nsm_local.identities import ControlPlaneIdentity
from nsm_local.overload import LoopLag
from nsm_local.ownership import (
    ConnectionOwners,
    LinkEnd,
    LinkNameInUse,
    check_caller_subject,
    check_own_namespace,
)
from nsm_local.registry import EndpointEntry, Registry
from nsm_local.registry_servicer import fd_wait
from nsm_local.request_rules import check_request, client_interface_name, inode_of, kernel_mechanism
from nsm_local.sessions import Session, client_connection_id
from nsm_sdk._proto.networkservice import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_sdk._proto.networkservice.connection_pb2 import (
    Connection,
    ConnectionEvent,
    Mechanism,
    MonitorScopeSelector,
    PathSegment,
    State,
)
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk.agent.credentials import caller_token
from nsm_sdk.agent.keyed_locks import KeyedLocks
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.monitor_hub import MonitorHub
from nsm_sdk.agent.nsm_client import RpcFailed
from nsm_sdk.agent.security import authorize_server
from nsm_sdk.agent.tasks import OwnedTasks
from nsm_sdk.identity.policies import PermissionDenied
from nsm_sdk.kernel.errors import KernelError
from nsm_sdk.protocol.errors import DeadlineError, ExhaustedError, NsmError, ProtocolError
from nsm_sdk.protocol.path import copy_caller_token, prev_expires, restore_index, set_own_token, update_path
from nsm_sdk.protocol.timing import server_close_deadline
from nsm_sdk.transport.errors import FdNotReceivedError
from nsm_sdk.transport.relay import RelayConnection
from nsm_sdk.transport.server import ServerHandle
from nsm_sdk.transport.status import abort

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

DEFER_STEP = 0.25
"""While overloaded, a deferred expiry looks again this often (seconds)."""

CLOSE_MARGIN = 1.0
"""A deferred expiry closes this long before the caller's token runs out: the Close we send the endpoint
carries the caller's path, and an endpoint refuses a Close whose path holds an expired token (policy
`tokens_expired`), which would leave the connection and its addresses held there."""


@dataclasses.dataclass(frozen=True)
class Deadline:
    """When a connection closes unless refreshed: `close` as Go's `timeout` server reckons it (the caller's
    expiry minus its request timeout), `token` the caller's expiry itself, the limit while overloaded."""

    close: float
    token: float


CANCELLED_EARLY = 0.5
"""A Request cancelled with more than this left before its deadline (seconds) was given up by its caller
(stopping, or gone), not timed out: a first one that gets made all the same is closed again."""

KERNEL_RECHECK = 5.0
"""A refresh whose link is unchanged (same interfaces in the same namespaces, same IP context) reads the
kernel again only when the last kernel step of its connection is at least this old (seconds). With short
tokens a link is refreshed every second, and reading both ends each time was a fifth of nsm-local's
CPU; a link broken in between is repaired by the next step that does read, and each sidecar checks its
own end on its side (docs/architecture.md, "Refreshes")."""

MANAGER_NAME = "nsmgr-local"
FORWARDER_NAME = "forwarder-local"
MAX_CONNECTIONS = 20_000
"""A bound, well above a thousand-router lab's links, so a flood of Requests cannot exhaust the host's fds
(each connection holds its client's netns fd)."""


TimeLeft = Callable[[], float | None]


def _time_left(remaining: float | None) -> TimeLeft:
    """Seconds left of the caller's deadline as it was when its call came (None: it set none)."""
    if remaining is None:
        return lambda: None
    ends = time.monotonic() + remaining
    return lambda: max(0.0, ends - time.monotonic())


class ManagerServicer(networkservice_pb2_grpc.NetworkServiceServicer):
    def __init__(
        self,
        registry: Registry,
        dialer: EndpointDialer,
        identity: ControlPlaneIdentity,
        owners: ConnectionOwners,
        hub: MonitorHub,
        server: Callable[[], ServerHandle],
        log: EventLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.dialer = dialer
        self.identity = identity
        self.manager_tokens = identity.manager.tokens
        self.forwarder_tokens = identity.forwarder.tokens
        self.owners = owners
        self.hub = hub
        self._server = server
        self._log = log
        self._clock = clock
        self.sessions: dict[str, Session] = {}
        self._by_endpoint: dict[str, dict[str, Session]] = {}  # endpoint key -> its sessions by id
        self._ends: dict[LinkEnd, str] = {}  # every live session's interfaces -> its id
        self.endpoints = EndpointCaller(registry, dialer, clock)
        self._locks = KeyedLocks()  # Request, Close, expiry and teardown of one connection never interleave
        self._tasks = OwnedTasks("nsm-local manager")
        self.lag = LoopLag()  # probed once the first connection is stored
        self._probe: asyncio.Task[None] | None = None
        self._overloaded_since: float | None = None

    def __repr__(self) -> str:
        return f"<ManagerServicer sessions={len(self.sessions)}>"

    # --- Request ----------------------------------------------------------------------------------------

    def _caller(self, context: Context) -> tuple[RelayConnection | None, str | None]:
        connection = self._server().connection_for(context)
        return connection, self.identity.caller(connection)

    def _step_onto_path(
        self,
        conn: Connection,
        token: str | None,
        expires: float | None,
        connection: RelayConnection | None,
        caller: str | None,
    ) -> int:
        """updatepath, updatetoken, authorize (nsmgr's chain order, §3.4); returns the caller's index.
        Our token is signed with the SVID presented on the caller's connection (the caller checks it so)."""
        peer = connection.peer if connection is not None else None
        own = connection.presented if connection is not None else None
        caller_index = update_path(conn, MANAGER_NAME)
        copy_caller_token(conn, token, expires)
        own_token, own_expires = self.manager_tokens.sign(peer, own)
        set_own_token(conn, own_token, own_expires)
        authorize_server(conn, peer, self._clock())
        if conn.path.index > 0:
            check_caller_subject(conn.path.path_segments[conn.path.index - 1].token, caller, peer is not None)
        return caller_index

    async def Request(self, request: NetworkServiceRequest, context: Context) -> Connection:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            # Its caller gave up while it waited in our queue (we are overloaded) and has retried or will:
            # doing the work now would only make the next Requests later still.
            self._log.warning("request.shed", conn=request.connection.id, reason="deadline passed in queue")
            await abort(context, DeadlineError("the Request's deadline passed before nsm-local got to it"))
        token, expires = caller_token(context.invocation_metadata())
        connection, caller = self._caller(context)
        conn = Connection()
        conn.CopyFrom(request.connection)
        try:
            check_request(request)
            caller_index = self._step_onto_path(conn, token, expires, connection, caller)
            self.owners.check(conn.id, caller)
            if conn.id not in self.sessions and len(self.sessions) >= MAX_CONNECTIONS:
                raise ExhaustedError(f"nsm-local holds at most {MAX_CONNECTIONS} connections")
            expires = prev_expires(conn)
            close_at = server_close_deadline(expires, remaining or 0.0)
            deadline = Deadline(close_at, expires if expires is not None else close_at)
            time_left = _time_left(remaining)
            first = conn.id not in self.sessions
            # Detached from this call: once it touches the kernel, a Request runs to its end even if the
            # caller gives up (its deadline passes): cut short, it would undo a refresh's live link or
            # close fds a kernel thread still uses. A caller that gave up finds the result by its id.
            work = self._tasks.spawn(
                self._locked(
                    conn.id,
                    self._request(request, conn, caller, connection, caller_index, deadline, time_left),
                ),
                f"request {conn.id}",
                report_errors=False,
            )
            try:
                reply: Connection = await asyncio.shield(work)
            except asyncio.CancelledError:
                work.add_done_callback(partial(self._log_abandoned, conn.id))
                left = context.time_remaining()
                if first and (left is None or left > CANCELLED_EARLY):
                    work.add_done_callback(partial(self._undo_abandoned, conn.id))
                raise
        except (NsmError, KernelError) as exc:
            self._log.warning(
                "request.failed" if not isinstance(exc, PermissionDenied) else "request.denied",
                conn=request.connection.id,
                service=conn.network_service,
                caller=caller or "-",
                reason=str(exc),
            )
            await abort(context, exc)
        return reply

    async def _locked(self, conn_id: str, work: Coroutine[Any, Any, T]) -> T:
        """`work` (not started yet) under the connection's lock."""
        try:
            async with self._locks.hold(conn_id):
                return await work
        finally:
            work.close()  # a no-op once it ran; cancelled while waiting for the lock, it never will

    def _log_abandoned(self, conn_id: str, work: asyncio.Task[Connection]) -> None:
        """The caller left before its Request ended: say how it ended (the caller finds out by its id)."""
        if work.cancelled():
            return
        error = work.exception()
        self._log.info(
            "request.abandoned",
            conn=conn_id,
            outcome="failed" if error else "done",
            reason=str(error) if error else "",
        )

    def _undo_abandoned(self, conn_id: str, work: asyncio.Task[Connection]) -> None:
        """A first Request whose caller cancelled it before its deadline (the client is stopping, or died)
        and that was made all the same: nobody will ever hear of it, so it is closed again, as Go's chain
        rolls back a cancelled Request. A caller whose deadline passed keeps it: it adopts it by its id."""
        if work.cancelled() or work.exception() is not None:
            return
        made = self.sessions.get(conn_id)
        if made is None:
            return

        async def undo() -> None:
            if self.sessions.get(conn_id) is made:  # not refreshed or closed by anyone since
                await self._teardown(made, "its caller left before the reply", call_endpoint=True)

        self._tasks.spawn(self._locked(conn_id, undo()), f"undo {conn_id}")

    async def _request(
        self,
        request: NetworkServiceRequest,
        conn: Connection,
        caller: str | None,
        connection: RelayConnection | None,
        caller_index: int,
        deadline: Deadline,
        time_left: TimeLeft,
    ) -> Connection:
        mechanism = kernel_mechanism(request)
        client_ifname = client_interface_name(conn, mechanism, secrets.token_bytes)
        mechanism.parameters["name"] = client_ifname
        client_ns_fd, client_netns = await self._client_netns_fd(mechanism, connection, time_left())
        try:
            client_end = LinkEnd(client_netns, client_ifname)
            self._check_link_free(client_end, conn.id)
            session = self.sessions.get(conn.id)
            if session is not None and conn.state == State.RESELECT_REQUESTED:
                await self._teardown(session, "reselect requested", call_endpoint=True)
                session = None
            forwarded = self._forwarder_hop(conn, session, connection)
            endpoint_name, channel, reply = await self.endpoints.call(conn, forwarded, session, time_left())
            try:
                endpoint_ns_fd, endpoint_netns = await self.endpoints.netns_fd(
                    endpoint_name, reply, channel, time_left()
                )
                endpoint_end = LinkEnd(endpoint_netns, reply.mechanism.parameters["name"])
                self._check_link_free(endpoint_end, conn.id)
            except BaseException:
                if session is None or session.endpoint_name != endpoint_name:
                    with contextlib.suppress(RpcFailed):
                        await channel.client.close(reply, ENDPOINT_CALL_TIMEOUT)
                raise
        except BaseException:
            os.close(client_ns_fd)
            raise
        xc = CrossConnect(client_ns_fd, client_ifname, endpoint_ns_fd, reply.mechanism.parameters["name"])
        try:
            if session is not None and (session.xc.client_ifname, session.xc.endpoint_ifname) != (
                xc.client_ifname,
                xc.endpoint_ifname,
            ):
                await remove_cross_connect(session.xc)
            now = self._clock()
            if _kernel_step_due(session, (client_end, endpoint_end), reply, now):
                await ensure_cross_connect(xc, reply)
                kernel_checked = now
            else:
                assert session is not None
                kernel_checked = session.kernel_checked
        except BaseException:
            os.close(client_ns_fd)
            with contextlib.suppress(RpcFailed):
                await channel.client.close(reply, ENDPOINT_CALL_TIMEOUT)
            raise
        finally:
            # Never keep the endpoint's namespace alive: when its pod goes, the veth must go with it, so the
            # client sees its side vanish and reselects. The client's fd stays: it is how we remove the pair.
            os.close(endpoint_ns_fd)
        xc = dataclasses.replace(xc, endpoint_ns_fd=None)

        out = Connection()
        out.CopyFrom(reply)
        out.mechanism.CopyFrom(mechanism)
        out.network_service_endpoint_name = endpoint_name
        out.state = State.UP
        restore_index(out, caller_index)
        view = Connection()
        view.CopyFrom(out)
        restore_index(view, caller_index + 1)
        self._store(
            Session(
                view,
                endpoint_name,
                channel.key,
                reply,
                xc,
                caller,
                (client_end, endpoint_end),
                kernel_checked=kernel_checked,
            ),
            session,
            deadline,
            channel,
        )
        if session is not None and session.endpoint_name != endpoint_name:
            # Moved to another endpoint without a reselect (the old one vanished): let the old one release.
            await self._close_at_endpoint(session.endpoint_name, session.endpoint_conn)
        report = self._log.info if session is None else self._log.debug
        report(
            "connection.up" if session is None else "connection.refreshed",
            conn=view.id,  # the manager's own segment id, as in every other line about the connection
            client_conn=out.id,
            service=out.network_service,
            endpoint=endpoint_name,
            client_if=xc.client_ifname,
            endpoint_if=xc.endpoint_ifname,
            src=",".join(out.context.ip_context.src_ip_addrs),
            dst=",".join(out.context.ip_context.dst_ip_addrs),
        )
        return out

    def _check_link_free(self, end: LinkEnd, conn_id: str) -> None:
        """A name another live connection holds in that namespace is refused, never taken over."""
        holder = self._ends.get(end)
        if holder is not None and holder != conn_id:
            raise LinkNameInUse(f"interface {end} is in use by connection {holder}")

    def _hold(self, session: Session) -> None:
        conn_id = session.manager_view.id
        old = self.sessions.get(conn_id)
        if old is not None:
            self._release(old)
        self.sessions[conn_id] = session
        self._by_endpoint.setdefault(session.endpoint_key, {})[conn_id] = session
        for end in session.ends:
            self._ends[end] = conn_id

    def _release(self, session: Session) -> None:
        """Forget `session` if it is the one held for its id (a refresh may have replaced it)."""
        conn_id = session.manager_view.id
        if self.sessions.get(conn_id) is not session:
            return
        del self.sessions[conn_id]
        users = self._by_endpoint.get(session.endpoint_key, {})
        users.pop(conn_id, None)
        if not users:
            self._by_endpoint.pop(session.endpoint_key, None)
        for end in session.ends:
            if self._ends.get(end) == conn_id:
                del self._ends[end]

    async def _client_netns_fd(
        self, mechanism: Mechanism, connection: RelayConnection | None, remaining: float | None
    ) -> tuple[int, int]:
        url = mechanism.parameters.get("inodeURL", "")
        dev, ino = inode_of(url, "client")
        if connection is None:
            raise ProtocolError("this connection cannot carry file descriptors")
        check_own_namespace("the client", ino, self.identity.acting_netns(connection))
        try:
            fd = await connection.received.wait(dev, ino, fd_wait(remaining))
        except FdNotReceivedError as exc:
            raise DeadlineError(f"timeout in recvfd waiting for {url}") from exc
        return fd, ino

    def _forwarder_hop(
        self, conn: Connection, session: Session | None, connection: RelayConnection | None
    ) -> Connection:
        """The forwarder's step: nsmgr's token for the forwarder goes into nsmgr's segment (what the Go
        forwarder copies from nsmgr's call metadata), then the forwarder's own segment. nsmgr signs it with
        the SVID the client saw on its connection: the client checks that token against that certificate."""
        forwarded = Connection()
        forwarded.CopyFrom(conn)
        update_path(forwarded, FORWARDER_NAME)
        presented = connection.presented if connection is not None else None
        token, expires = self.manager_tokens.sign(self.identity.forwarder_peer(), presented)
        copy_caller_token(forwarded, token, expires)
        token, expires = self.forwarder_tokens.sign()
        set_own_token(forwarded, token, expires)
        forwarded.ClearField("mechanism")
        if session is not None:  # a refresh: the endpoint gets its own previous mechanism back
            forwarded.mechanism.CopyFrom(session.endpoint_conn.mechanism)
        return forwarded

    def _store(self, new: Session, old: Session | None, deadline: Deadline, channel: EndpointChannel) -> None:
        conn_id = new.manager_view.id
        if old is not None:
            if old.expiry is not None:
                old.expiry.cancel()
            new.monitor = old.monitor if old.monitor is not None and not old.monitor.done() else None
            if new.monitor is not None and old.endpoint_key != new.endpoint_key:
                new.monitor.cancel()
                new.monitor = None
            old.close_fds()
        self._hold(new)
        self.owners.set(conn_id, new.owner)
        new.token_expires = deadline.token
        delay = max(0.0, deadline.close - self._clock())
        new.expiry = asyncio.get_running_loop().call_later(delay, self._expire, conn_id)
        if self._probe is None:
            self._probe = self._tasks.spawn(self.lag.run(), "loop lag probe")
        if new.monitor is None:
            new.monitor = self._tasks.spawn(self._watch_endpoint(conn_id, channel), f"watch {conn_id}")
        self.hub.update(new.manager_view)

    # --- endpoint side events -----------------------------------------------------------------------------

    async def _watch_endpoint(self, conn_id: str, channel: EndpointChannel) -> None:
        """DELETE from the endpoint tears the link down; a lost stream marks the connection DOWN so the
        client heals (refresh if its side still works, else reselect), like NSM's monitor chain.

        A stream that breaks while the endpoint is fine (a connection retired after an SVID rotation, say)
        is re-opened first: if the endpoint still lists the connection, nothing happened. One re-open per
        break; a re-opened stream that worked earns the next one."""
        session = self.sessions.get(conn_id)
        if session is None:
            return
        forwarder_id = session.forwarder_id
        selector = MonitorScopeSelector(path_segments=[PathSegment(id=forwarder_id, name=FORWARDER_NAME)])
        reopened = False
        while True:
            try:
                deleted = await follow_endpoint(channel, selector, reopened, self._log)
            except StreamBroke as broke:
                current = self.sessions.get(conn_id)
                if current is None or current.forwarder_id != forwarder_id:
                    return
                if not reopened or broke.worked:
                    reopened = True
                    await asyncio.sleep(0.1)
                    continue
                self._endpoint_lost(current, broke.reason)
                return
            if deleted:
                async with self._locks.hold(conn_id):
                    current = self.sessions.get(conn_id)
                    if current is not None and current.forwarder_id == forwarder_id:
                        current.monitor = None
                        await self._teardown(current, "endpoint closed the connection", call_endpoint=False)
            return

    def endpoint_gone(self, entry: EndpointEntry, why: str) -> None:
        """The registry no longer has `entry`'s socket. Unregistered or replaced: the socket is gone, so
        its connections go DOWN (their clients heal) and its channel closes. Expired: the endpoint may
        still be there and register again, so the channel closes once no connection uses it (`_teardown`)."""
        key = entry.record.url
        users = list(self._by_endpoint.get(key, {}).values())
        if why != "expired":
            for session in users:
                if session.monitor is not None:
                    session.monitor.cancel()
                self._endpoint_lost(session, f"the endpoint {why}")
        if why != "expired" or not users:
            self.dialer.forget(key)

    def _forget_unused_channel(self, key: str) -> None:
        """After a teardown: the channel of an endpoint that is no longer registered, once unused, goes."""
        if not self.registry.has_url(key) and key not in self._by_endpoint:
            self.dialer.forget(key)

    def _endpoint_lost(self, session: Session, reason: str) -> None:
        session.monitor = None
        self._log.warning(
            "endpoint.lost", conn=session.manager_view.id, endpoint=session.endpoint_name, reason=reason
        )
        down = Connection()
        down.CopyFrom(session.manager_view)
        down.state = State.DOWN
        self.hub.update(down)

    def _expire(self, conn_id: str) -> None:
        session = self.sessions.get(conn_id)
        if session is None:
            return
        now = self._clock()
        limit = None if session.token_expires is None else session.token_expires - CLOSE_MARGIN
        if limit is not None and now < limit and self._overloaded(now):
            # Its refresh may be waiting in our queues: wait for it, almost up to the caller's own expiry.
            self._log.debug("expiry.deferred", conn=conn_id, closes_in=f"{limit - now:.2f}s")
            delay = min(DEFER_STEP, limit - now)
            session.expiry = asyncio.get_running_loop().call_later(delay, self._expire, conn_id)
            return
        self._tasks.spawn(self._expire_now(session), f"expire {conn_id}")

    def _overloaded(self, now: float) -> bool:
        """The loop lags (see `overload`); says so once per spell of overload."""
        if not self.lag.overloaded():
            if self._overloaded_since is not None:
                self._log.info("manager.caught_up", after=f"{now - self._overloaded_since:.1f}s")
            self._overloaded_since = None
            return False
        if self._overloaded_since is None:
            self._overloaded_since = now
            self._log.warning(
                "manager.overloaded",
                lag=f"{self.lag.recent():.2f}s",
                connections=len(self.sessions),
                action="expiries wait until just before the callers' tokens run out",
            )
        return True

    async def _expire_now(self, session: Session) -> None:
        conn_id = session.manager_view.id
        async with self._locks.hold(conn_id):
            if self.sessions.get(conn_id) is session:  # not refreshed while we waited for the lock
                await self._teardown(session, "path expired", call_endpoint=True)

    async def _teardown(self, session: Session, reason: str, call_endpoint: bool) -> None:
        conn_id = session.manager_view.id
        self._release(session)
        if session.expiry is not None:
            session.expiry.cancel()
        if session.monitor is not None and session.monitor is not asyncio.current_task():
            session.monitor.cancel()
        if call_endpoint:
            await self._close_at_endpoint(session.endpoint_name, session.endpoint_conn)
        removed = await remove_cross_connect(session.xc)
        session.close_fds()
        self._forget_unused_channel(session.endpoint_key)
        self.hub.delete(conn_id)  # before forgetting the owner: the owner's monitors must see the DELETE
        if conn_id not in self.sessions:
            self.owners.forget(conn_id)
        self._log.info(
            "connection.closed",
            conn=conn_id,
            client_conn=client_connection_id(session.manager_view),
            reason=reason,
            link_removed=removed,
        )

    async def _close_at_endpoint(self, endpoint_name: str, endpoint_conn: Connection) -> None:
        failure = await self.endpoints.close_at(endpoint_name, endpoint_conn)
        if failure is not None:
            self._log.warning("endpoint.close_failed", endpoint=endpoint_name, reason=failure)

    # --- Close ------------------------------------------------------------------------------------------

    async def Close(self, conn: Connection, context: Context) -> Empty:
        token, expires = caller_token(context.invocation_metadata())
        connection, caller = self._caller(context)
        mine = Connection()
        mine.CopyFrom(conn)
        try:
            self._step_onto_path(mine, token, expires, connection, caller)
            self.owners.check(mine.id, caller)
        except NsmError as exc:
            self._log.warning("close.denied", conn=conn.id, caller=caller or "-", reason=str(exc))
            await abort(context, exc)
        async with self._locks.hold(mine.id):
            session = self.sessions.get(mine.id)
            if session is not None:
                await self._teardown(session, "closed by client", call_endpoint=True)
            elif self.owners.owner(mine.id) is not None and mine.network_service_endpoint_name:
                # Known to be the caller's but not live (we restarted): let the endpoint release it too.
                self.owners.forget(mine.id)
                forwarded = Connection()
                forwarded.CopyFrom(mine)
                update_path(forwarded, FORWARDER_NAME)
                await self._close_at_endpoint(mine.network_service_endpoint_name, forwarded)
        return Empty()

    async def aclose(self) -> None:
        """Shutdown: keep links in place (clients heal through a restart), just release our resources."""
        for session in list(self.sessions.values()):
            if session.expiry is not None:
                session.expiry.cancel()
            session.close_fds()
        self.sessions.clear()
        self._ends.clear()
        await self._tasks.aclose()  # endpoint watches, expiries under way


class ManagerMonitorServicer(connection_pb2_grpc.MonitorConnectionServicer):
    """MonitorConnections as nsmgr serves it, but each caller sees only the connections it opened (the
    operator sees all): NSM's `monitor/service_connection` policy, which nsmgr leaves unwired."""

    def __init__(self, manager: ManagerServicer) -> None:
        self.manager = manager

    async def MonitorConnections(
        self, selector: MonitorScopeSelector, context: Context
    ) -> AsyncIterator[ConnectionEvent]:
        _, caller = self.manager._caller(context)
        identity, owners = self.manager.identity, self.manager.owners

        def visible(conn: Connection) -> bool:
            return identity.is_operator(caller) or (caller is not None and owners.owner(conn.id) == caller)

        try:
            async for event in self.manager.hub.subscribe(selector, visible):
                yield event
        except NsmError as exc:
            await abort(context, exc)


def _kernel_step_due(
    session: Session | None, ends: tuple[LinkEnd, LinkEnd], reply: Connection, now: float
) -> bool:
    """Whether this Request must create, confirm or repair the link in the kernel: always for a new link or
    a changed one (other interfaces or namespaces, another IP context or MTU), and for an unchanged one once
    its last kernel step is `KERNEL_RECHECK` old."""
    if session is None or session.ends != ends or session.endpoint_conn.context != reply.context:
        return True
    return not 0.0 <= now - session.kernel_checked < KERNEL_RECHECK
