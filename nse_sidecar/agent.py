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
from collections.abc import Iterator
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
from nsm_sdk.agent.security import AgentIdentity, agent_identity
from nsm_sdk.kernel.errors import KernelError
from nsm_sdk.kernel.links import delete_link
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

    def __init__(self, timeout: float, log: EventLog) -> None:
        self.timeout = timeout
        self._log = log
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
            await wait_link(ifname, self.timeout)
        except KernelError as exc:
            log.warning("link.missing", reason=str(exc))
            return
        problems = []
        for _ in range(20):  # the forwarder configures right after creating: give it a moment
            problems = (await check_side(ifname, own, "endpoint")).problems
            if not problems:
                break
            await asyncio.sleep(0.05)
        if problems:
            log.warning("link.unverified", problems="; ".join(problems))
        else:
            log.info("link.verified", addresses=",".join(own.context.ip_context.dst_ip_addrs))
            await announce_later(ifname, list(own.context.ip_context.dst_ip_addrs))

    async def remove_all(self, links: list[tuple[str, str]]) -> None:
        """Remove our side of each (connection id, interface) at shutdown."""
        for conn_id in list(self._tasks):
            self._cancel(conn_id)
        for conn_id, ifname in links:
            try:
                found = await asyncio.to_thread(delete_link, None, ifname)
                self._log.info("link.removed", conn=conn_id, ifname=ifname, found=found)
            except KernelError as exc:
                self._log.warning("link.remove_failed", conn=conn_id, ifname=ifname, reason=str(exc))

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
            with listen_path(settings, name) as path:
                await _serve(settings, name, stop, log, identity, netns_fd, path)
    finally:
        os.close(netns_fd)


async def _serve(
    settings: NseSettings,
    name: str,
    stop: asyncio.Event,
    log: EventLog,
    identity: AgentIdentity,
    netns_fd: int,
    path: str,
) -> None:
    hub = MonitorHub()
    sides = EndpointSides(settings.request_timeout, log)
    core = EndpointCore(name, make_allocator(settings), inode_url_for_fd(netns_fd), identity.tokens.sign)
    served: list[ServerHandle] = []  # the handle, once the server runs

    def connection_for(context: grpc.aio.ServicerContext[Any, Any]) -> RelayConnection | None:
        return served[0].connection_for(context) if served else None

    servicer = EndpointServicer(core, hub, sides.accepted, sides.closed, log, connection_for, netns_fd)

    def register(server: grpc.aio.Server) -> None:
        networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(servicer, server)
        connection_pb2_grpc.add_MonitorConnectionServicer_to_server(MonitorServicer(hub), server)

    async with serve(path, register, security=identity.security, stop_grace=1.0) as handle:
        served.append(handle)
        socket_fd = open_socket_file_fd(path)
        try:
            record = endpoint_record(name, settings.services, settings.labels, inode_url_for_path(path))
            log.info(
                "endpoint.listening",
                listen_on=f"unix://{path}",
                services=",".join(settings.services),
                addressing=settings.addressing.mode,
            )
            async with dial(str(settings.connect_to), send_fds=[socket_fd], security=identity.security) as (
                channel,
                relay,
            ):
                client = NsmClient(channel, identity.tokens, relay)
                with readiness(settings.readiness_file) as ready:
                    registrar = Registrar(
                        client,
                        record,
                        settings.payload,
                        settings.register_service,
                        settings.request_timeout,
                        log,
                        ready.set,
                    )
                    registration = asyncio.create_task(registrar.run(stop))
                    await stop.wait()
                    log.info("shutdown.begin")
                    ready.set(False)
                    await registration
                    await registrar.unregister()
            # Names first: closing forgets them (EndpointSides.closed), and we must still remove them.
            open_links = [(conn_id, sides.interface_of(conn_id)) for conn_id in list(hub.connections)]
            await servicer.aclose()
            servicer.close_all()
            await asyncio.sleep(0.1)  # let monitor streams deliver the DELETE events
            await sides.remove_all([(conn_id, name) for conn_id, name in open_links if name])
            hub.close()
        finally:
            os.close(socket_fd)
    log.info("shutdown.done")
