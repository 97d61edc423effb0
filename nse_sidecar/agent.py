"""The endpoint agent: serve, register, verify each link's endpoint side, shut down cleanly.

Shutdown order (style.md guideline 7): stop refreshing the registration, unregister, close every
connection (monitors get DELETE, addresses are released), remove our side of each link, stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from nse_sidecar.endpoint import Accepted, EndpointCore
from nse_sidecar.registration import Registrar, endpoint_record
from nse_sidecar.servicer import EndpointServicer
from nse_sidecar.settings import NseSettings
from nsm_sdk._proto.networkservice import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk.agent.lifecycle import readiness
from nsm_sdk.agent.link_check import announce_later, check_side, wait_link
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.monitor_hub import MonitorHub, MonitorServicer
from nsm_sdk.agent.nsm_client import NsmClient
from nsm_sdk.agent.reachability import reporting_unreachable_manager
from nsm_sdk.agent.security import AgentIdentity, agent_identity
from nsm_sdk.kernel.errors import KernelError
from nsm_sdk.kernel.links import delete_links
from nsm_sdk.protocol.ipam import NsmP2PAllocator, P2PAllocator, SeedP2PAllocator
from nsm_sdk.transport.client import dial
from nsm_sdk.transport.fdpass import open_netns_fd, open_socket_file_fd
from nsm_sdk.transport.relay import RelayConnection
from nsm_sdk.transport.server import ServerHandle, serve
from nsm_sdk.transport.urls import inode_url_for_fd, inode_url_for_path


def make_allocator(settings: NseSettings) -> P2PAllocator:
    pools = settings.addressing.pools
    if settings.addressing.mode == "seed":
        return SeedP2PAllocator(pools[0][0], reserved=settings.addressing.reserved)
    return NsmP2PAllocator(pools)


@contextlib.contextmanager
def listen_path(settings: NseSettings, name: str) -> Iterator[str]:
    """NSM_LISTEN_ON, or `<fresh temp dir>/listen.on` like cmd-nse-icmp-responder (§2.3)."""
    if settings.listen_on is not None:
        yield settings.listen_on.path
        return
    directory = tempfile.mkdtemp(prefix=f"{name}-")
    try:
        yield os.path.join(directory, "listen.on")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class EndpointSides:
    """Our side of each link: verified once it appears, removed on shutdown."""

    def __init__(self, timeout: float, log: EventLog, netns_fd: int | None = None) -> None:
        """`netns_fd`: the namespace our sides are in when not our own (an agent host's router)."""
        self.timeout = timeout
        self._log = log
        self._netns_fd = netns_fd
        self._interfaces: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def accepted(self, accepted: Accepted) -> None:
        own = accepted.own_view
        previous = self._interfaces.get(own.id)
        self._interfaces[own.id] = accepted.interface_name
        if previous == accepted.interface_name and own.id in self._tasks:
            return
        self._cancel(own.id)
        self._tasks[own.id] = asyncio.create_task(self._verify(accepted.interface_name, own))

    def closed(self, own: Connection) -> None:
        self._cancel(own.id)
        self._interfaces.pop(own.id, None)

    def _cancel(self, conn_id: str) -> None:
        task = self._tasks.pop(conn_id, None)
        if task is not None:
            task.cancel()

    async def _verify(self, ifname: str, own: Connection) -> None:
        log = self._log.bind(conn=own.id, ifname=ifname)
        try:
            await wait_link(ifname, self.timeout, self._netns_fd)
        except KernelError as exc:
            log.warning("link.missing", reason=str(exc))
            return
        problems = []
        for _ in range(20):  # the forwarder configures right after creating: give it a moment
            problems = (await check_side(ifname, own, "endpoint", ns_fd=self._netns_fd)).problems
            if not problems:
                break
            await asyncio.sleep(0.05)
        if problems:
            log.warning("link.unverified", problems="; ".join(problems))
        else:
            log.info("link.verified", addresses=",".join(own.context.ip_context.dst_ip_addrs))
            await announce_later(ifname, list(own.context.ip_context.dst_ip_addrs), self._netns_fd)

    async def remove_all(self, links: list[tuple[str, str]]) -> None:
        """Remove our side of each (connection id, interface) at shutdown."""
        for conn_id in list(self._tasks):
            self._cancel(conn_id)
        if not links:
            return
        try:
            found = await asyncio.to_thread(delete_links, self._netns_fd, [ifname for _, ifname in links])
        except KernelError as exc:
            for conn_id, ifname in links:
                self._log.warning("link.remove_failed", conn=conn_id, ifname=ifname, reason=str(exc))
            return
        for (conn_id, ifname), there in zip(links, found, strict=True):
            self._log.info("link.removed", conn=conn_id, ifname=ifname, found=there)

    def interface_of(self, conn_id: str) -> str | None:
        return self._interfaces.get(conn_id)


async def run(settings: NseSettings, stop: asyncio.Event) -> None:
    netns_fd = open_netns_fd()
    try:
        name = settings.name or f"nse-{os.fstat(netns_fd).st_ino}"
        log = EventLog("nse_sidecar.agent", name=name)
        for warning in settings.warnings:
            log.warning("config.warning", detail=warning)
        lifetime = settings.max_token_lifetime
        async with agent_identity(settings.security, name, lifetime, log, stop) as identity:
            if identity is None:  # stopped before the Workload API gave us an SVID
                log.info("shutdown.done")
                return
            endpoint = Endpoint(settings, name, identity, netns_fd, log)
            async with (
                endpoint.serving() as socket_fd,
                dial(str(settings.connect_to), send_fds=[socket_fd], security=identity.security) as (
                    channel,
                    relay,
                ),
            ):
                with readiness(settings.readiness_file) as ready:
                    async with reporting_unreachable_manager(channel, str(settings.connect_to), log):
                        await endpoint.run(NsmClient(channel, identity.tokens, relay), stop, ready.set)
        log.info("shutdown.done")
    finally:
        os.close(netns_fd)


class Endpoint:
    """One endpoint: its server (`serving`), then its registration and links (`run`) until `stop`.

    `netns_fd` is the namespace the endpoint answers for: our own in the sidecar, a router's in an agent
    host (then `delegated`: our link checks enter it by fd).
    """

    def __init__(
        self,
        settings: NseSettings,
        name: str,
        identity: AgentIdentity,
        netns_fd: int,
        log: EventLog,
        *,
        delegated: bool = False,
    ) -> None:
        self.settings = settings
        self.name = name
        self._identity = identity
        self._netns_fd = netns_fd
        self._log = log
        self._hub = MonitorHub()
        self._sides = EndpointSides(settings.request_timeout, log, netns_fd if delegated else None)
        core = EndpointCore(name, make_allocator(settings), inode_url_for_fd(netns_fd), identity.tokens.sign)
        self._handle: ServerHandle | None = None  # while serving
        self._servicer = EndpointServicer(
            core, self._hub, self._sides.accepted, self._sides.closed, log, self._connection_for, netns_fd
        )
        self._path: str | None = None

    def _connection_for(self, context: grpc.aio.ServicerContext[Any, Any]) -> RelayConnection | None:
        return self._handle.connection_for(context) if self._handle is not None else None

    def _register(self, server: grpc.aio.Server) -> None:
        networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(self._servicer, server)
        connection_pb2_grpc.add_MonitorConnectionServicer_to_server(MonitorServicer(self._hub), server)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[int]:
        """Serve until the context exits; yields an O_PATH fd of the socket file, which the registration
        must send to the manager (§12 item 8)."""
        with listen_path(self.settings, self.name) as path:
            async with serve(
                path, self._register, security=self._identity.security, stop_grace=1.0
            ) as handle:
                self._handle, self._path = handle, path
                socket_fd = open_socket_file_fd(path)
                try:
                    self._log.info(
                        "endpoint.listening",
                        listen_on=f"unix://{path}",
                        services=",".join(self.settings.services),
                        addressing=self.settings.addressing.mode,
                    )
                    yield socket_fd
                finally:
                    os.close(socket_fd)
                    self._handle = None

    async def run(
        self,
        client: NsmClient,
        stop: asyncio.Event,
        report_ready: Callable[[bool], None],
        close_after: asyncio.Event | None = None,
    ) -> None:
        """Register (and keep registered) until `stop`; then unregister, close every connection and
        remove our side of each link. Call inside `serving`.

        `close_after` (default `stop`): the endpoint unregisters and closes its connections only once it
        is set too. An agent host keeps its endpoints registered and answering until its clients have
        closed their links (nsm-local takes an unregistered endpoint's connections for broken)."""
        assert self._path is not None, "Endpoint.run outside serving()"
        settings = self.settings
        record = endpoint_record(
            self.name, settings.services, settings.labels, inode_url_for_path(self._path)
        )
        registrar = Registrar(
            client,
            record,
            settings.payload,
            settings.register_service,
            settings.request_timeout,
            self._log,
            report_ready,
        )
        try:
            registration = asyncio.create_task(registrar.run(stop))
            await stop.wait()
            self._log.info("shutdown.begin")
        finally:
            report_ready(False)
        await registration
        if close_after is not None:
            await close_after.wait()
        await registrar.unregister()
        # Names first: closing forgets them (EndpointSides.closed), and we must still remove them.
        hub, sides = self._hub, self._sides
        open_links = [(conn_id, sides.interface_of(conn_id)) for conn_id in list(hub.connections)]
        await self._servicer.aclose()
        self._servicer.close_all()
        await asyncio.sleep(0.1)  # let monitor streams deliver the DELETE events
        await sides.remove_all([(conn_id, ifname) for conn_id, ifname in open_links if ifname])
        hub.close()
