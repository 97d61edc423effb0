"""`nsm-local serve`: registry, manager and kernel forwarder on one unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from nsm_local.endpoint_dialer import EndpointDialer
from nsm_local.manager import FORWARDER_NAME, MANAGER_NAME, ManagerServicer
from nsm_local.registry import Registry
from nsm_local.registry_servicer import EndpointRegistryServicer, RegistryPathKeeper, ServiceRegistryServicer
from nsm_sdk._proto.networkservice import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_sdk._proto.registry import registry_pb2_grpc
from nsm_sdk.agent.credentials import CallTokens
from nsm_sdk.agent.lifecycle import sleep_or_stop
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.monitor_hub import MonitorHub, MonitorServicer
from nsm_sdk.identity.tokens import TokenSigner
from nsm_sdk.transport.server import ServerHandle, serve


@dataclass(frozen=True, slots=True)
class ServeSettings:
    socket_path: str = "/var/lib/networkservicemesh/nsm.io.sock"
    """Where clients and endpoints connect (NSM's standard nsmgr socket)."""
    state_dir: str | None = None
    """Where applied NetworkServices are kept across restarts; None: beside the socket."""
    registration_expiry: float = 60.0
    """Longest registration an endpoint gets before it must refresh (nsmgr's default, §8.2)."""
    token_lifetime: float = 600.0
    """Lifetime of the tokens nsm-local signs (NSM_MAX_TOKEN_LIFETIME of the Go components)."""

    @property
    def state_file(self) -> Path:
        directory = Path(self.state_dir) if self.state_dir else Path(self.socket_path).parent
        return directory / "nsm-local-services.json"


async def serve_control_plane(
    settings: ServeSettings, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    log = EventLog("nsm_local.server")
    Path(settings.socket_path).parent.mkdir(parents=True, exist_ok=True)
    registry = Registry(settings.state_file)
    manager_tokens = CallTokens(TokenSigner(MANAGER_NAME), settings.token_lifetime)
    dialer = EndpointDialer(CallTokens(TokenSigner(FORWARDER_NAME), settings.token_lifetime))
    hub = MonitorHub()
    handle: ServerHandle | None = None

    def current() -> ServerHandle:
        assert handle is not None
        return handle

    paths = RegistryPathKeeper(MANAGER_NAME, manager_tokens)
    manager = ManagerServicer(registry, dialer, manager_tokens, dialer.tokens, hub, current, log)

    def register(server: grpc.aio.Server) -> None:
        networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(manager, server)
        connection_pb2_grpc.add_MonitorConnectionServicer_to_server(MonitorServicer(hub), server)
        registry_pb2_grpc.add_NetworkServiceEndpointRegistryServicer_to_server(
            EndpointRegistryServicer(registry, paths, current, settings.registration_expiry, log), server
        )
        registry_pb2_grpc.add_NetworkServiceRegistryServicer_to_server(
            ServiceRegistryServicer(registry, paths, log), server
        )

    try:
        async with serve(settings.socket_path, register, stop_grace=1.0) as handle:
            log.info(
                "server.listening",
                socket=f"unix://{settings.socket_path}",
                services=len(registry.services),
                state=str(settings.state_file),
            )
            if registry.load_problem is not None:
                log.warning("state.damaged", detail=registry.load_problem)
            if ready is not None:
                ready.set()
            while not await sleep_or_stop(stop, 1.0):
                for name in registry.expire(time.time()):
                    log.warning("endpoint.expired", name=name)
            log.info("server.stopping")
            hub.close()
            registry.close()
    finally:
        await manager.aclose()
        with contextlib.suppress(Exception):
            await dialer.aclose()
        registry.close()
