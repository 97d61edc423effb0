"""`nsm-local serve`: registry, manager and kernel forwarder on one unix socket, secure by default.

Secure (default): a development CA kept in the state directory, a SPIFFE Workload API for the host's
workloads (at NSM's standard agent socket unless told otherwise), and mTLS plus nsmgr's policies on the
manager socket, which only its owner and group may open (0660). `--insecure` serves plaintext without a
Workload API, and says so loudly.

Kubernetes mode (`settings.kubernetes`, `nsm_local.kube.node`): the same, plus the node's pods (callers are
named by pod: `spiffe://<td>/ns/<namespace>/pod/<name>`) and the cluster's NetworkService objects in the
registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from nsm_local.attestation import DEFAULT_SVID_TTL
from nsm_local.endpoint_dialer import EndpointDialer
from nsm_local.identities import ControlPlaneIdentity
from nsm_local.manager import MANAGER_NAME, MAX_CONNECTIONS, ManagerMonitorServicer, ManagerServicer
from nsm_local.ownership import ConnectionOwners
from nsm_local.registry import Registry
from nsm_local.registry_servicer import EndpointRegistryServicer, RegistryPathKeeper, ServiceRegistryServicer
from nsm_sdk._proto.networkservice import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_sdk._proto.registry import registry_pb2_grpc
from nsm_sdk.agent.lifecycle import sleep_or_stop
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.monitor_hub import MonitorHub
from nsm_sdk.agent.security import INSECURE_WARNING
from nsm_sdk.protocol.envvalues import DEFAULT_SPIFFE_ENDPOINT
from nsm_sdk.protocol.errors import NsmError
from nsm_sdk.transport.server import ServerHandle, serve

if TYPE_CHECKING:  # Kubernetes mode only
    from nsm_local.kube.node import KubeNode, KubeSettings

MANAGER_SOCKET_MODE = 0o660
BACKEND_SERVERS = 8
"""grpc.aio servers behind the manager's socket. One takes its calls one at a time, a turn of the event loop
each, so while the loop is busy it caps the calls per second, not the CPU (nsm_sdk/transport/server.py).
Connections are spread over them: 8 took 200 Requests a second through a loop 5 ms a turn, one took
fewer than 50 (docs/performance.md, "Soak")."""


class WorkloadApiInUse(NsmError):
    """Another process already serves a Workload API where we would serve ours."""


DEFAULT_STATE_DIR = "/var/lib/nsm-local"


@dataclass(frozen=True, slots=True)
class ServeSettings:
    socket_path: str = "/var/lib/networkservicemesh/nsm.io.sock"
    """Where clients and endpoints connect (NSM's standard nsmgr socket)."""
    state_dir: str = DEFAULT_STATE_DIR
    """Where applied NetworkServices, connection owners and the CA are kept (0700). Never the socket's
    directory by default: that directory is mounted into every sidecar container, and the CA key must not
    be readable there."""
    registration_expiry: float = 60.0
    """Longest registration an endpoint gets before it must refresh (nsmgr's default, §8.2)."""
    token_lifetime: float = 600.0
    """Lifetime of the tokens nsm-local signs (NSM_MAX_TOKEN_LIFETIME of the Go components)."""
    insecure: bool = False
    """Plaintext, no Workload API, no authentication (experiments only)."""
    trust_domain: str = "nsm.local"
    """The SPIFFE trust domain of the development CA."""
    workload_api_path: str = DEFAULT_SPIFFE_ENDPOINT.path
    """Where the development Workload API listens (what the sidecars' SPIFFE_ENDPOINT_SOCKET names)."""
    svid_ttl: float = DEFAULT_SVID_TTL
    """Lifetime of the X.509-SVIDs nsm-local issues (its own and the workloads'); rotated at half."""
    kubernetes: KubeSettings | None = None
    """Kubernetes mode: the NSM of one node (pods attested by pod, NetworkService objects served)."""

    @property
    def directory(self) -> Path:
        return Path(self.state_dir)

    @property
    def state_file(self) -> Path:
        return self.directory / "nsm-local-services.json"

    @property
    def owners_file(self) -> Path:
        return self.directory / "nsm-local-connections.json"

    @property
    def ca_dir(self) -> Path:
        return self.directory / "nsm-local-ca"


def socket_in_use(path: str) -> bool:
    """Whether something accepts connections on the unix socket `path` (a stale file does not)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


@asynccontextmanager
async def control_plane_identity(
    settings: ServeSettings, log: EventLog, node: KubeNode | None = None
) -> AsyncIterator[ControlPlaneIdentity]:
    """Our own identities and, when secure, the Workload API for the host's workloads (or the node's pods)."""
    attest = node.attestor.attest if node is not None else None
    if settings.insecure:
        log.warning("security.insecure", detail=INSECURE_WARNING)
        yield ControlPlaneIdentity.insecure(settings.trust_domain, settings.token_lifetime, attest)
        return
    from nsm_local.dev_ca import DevCA  # py-spiffe and the X.509 builders: secure mode only
    from nsm_local.workload_api import serve_workload_api

    if socket_in_use(settings.workload_api_path):
        raise WorkloadApiInUse(
            f"a Workload API (a SPIRE agent, or another nsm-local) already listens at "
            f"{settings.workload_api_path}; stop it, or give nsm-local another --workload-api and the "
            "sidecars the same SPIFFE_ENDPOINT_SOCKET"
        )
    ca = await asyncio.to_thread(DevCA.load_or_create, settings.ca_dir, settings.trust_domain)
    identity = ControlPlaneIdentity.secure_from(ca, settings.svid_ttl, settings.token_lifetime, log, attest)
    identity.start()
    try:
        async with serve_workload_api(
            settings.workload_api_path,
            ca,
            settings.svid_ttl,
            node.attestor.attest_waiting if node is not None else None,
        ):
            log.info(
                "workload_api.listening",
                socket=f"unix://{settings.workload_api_path}",
                trust_domain=ca.trust_domain,
                ca=str(settings.ca_dir),
                svid_ttl=f"{settings.svid_ttl:.0f}s",
                attestation="kubernetes pod" if node is not None else "netns and uid",
            )
            yield identity
    finally:
        await identity.aclose()


async def serve_control_plane(
    settings: ServeSettings,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    *,
    node: KubeNode | None = None,
) -> None:
    """Serve until `stop`. In Kubernetes mode `node` may be given (the tests' fake sources, or the real
    client connected before the loop started, so a bad kubeconfig is a usage error); else it is connected
    from `settings.kubernetes`."""
    log = EventLog("nsm_local.server")
    Path(settings.socket_path).parent.mkdir(parents=True, exist_ok=True)
    settings.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        if settings.kubernetes is not None:
            from nsm_local.kube.node import connect_node, running_node

            if node is None:
                node = connect_node(settings.kubernetes, settings.trust_domain, log)
            await stack.enter_async_context(running_node(node))
        identity = await stack.enter_async_context(control_plane_identity(settings, log, node))
        await _serve(settings, identity, stop, ready, log, node)


def _cluster_services(node: KubeNode | None, registry: Registry) -> AbstractAsyncContextManager[None]:
    """Kubernetes mode: the NetworkService objects into the registry (listed before we listen)."""
    return node.services_into(registry) if node is not None else contextlib.nullcontext()


async def _serve(
    settings: ServeSettings,
    identity: ControlPlaneIdentity,
    stop: asyncio.Event,
    ready: asyncio.Event | None,
    log: EventLog,
    node: KubeNode | None = None,
) -> None:
    registry = Registry(settings.state_file)
    owners = ConnectionOwners(settings.owners_file)
    dialer = EndpointDialer(identity.forwarder)
    hub = MonitorHub(max_subscribers=MAX_CONNECTIONS)  # each client link monitors its own connection
    handle: ServerHandle | None = None

    def current() -> ServerHandle:
        assert handle is not None
        return handle

    paths = RegistryPathKeeper(MANAGER_NAME, identity, current)
    manager = ManagerServicer(registry, dialer, identity, owners, hub, current, log)
    registry.on_endpoint_gone = manager.endpoint_gone

    monitor = ManagerMonitorServicer(manager)
    endpoints = EndpointRegistryServicer(
        registry,
        paths,
        current,
        settings.registration_expiry,
        log,
        on_registered=lambda entry: dialer.warm(entry),
    )
    services = ServiceRegistryServicer(registry, paths, log)

    def register(server: grpc.aio.Server) -> None:  # the same servicers on each of the backend servers
        networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(manager, server)
        connection_pb2_grpc.add_MonitorConnectionServicer_to_server(monitor, server)
        registry_pb2_grpc.add_NetworkServiceEndpointRegistryServicer_to_server(endpoints, server)
        registry_pb2_grpc.add_NetworkServiceRegistryServicer_to_server(services, server)

    try:
        async with (
            _cluster_services(node, registry),
            serve(
                settings.socket_path,
                register,
                security=identity.manager.security,
                socket_mode=MANAGER_SOCKET_MODE,
                stop_grace=1.0,
                backends=BACKEND_SERVERS,
            ) as handle,
        ):
            log.info(
                "server.listening",
                socket=f"unix://{settings.socket_path}",
                security="mTLS (SPIFFE)" if identity.secure else "INSECURE",
                services=len(registry.services),
                state=str(settings.state_file),
            )
            for problem in (registry.load_problem, owners.load_problem):
                if problem is not None:
                    log.warning("state.damaged", detail=problem)
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
        owners.flush()
        with contextlib.suppress(Exception):
            await dialer.aclose()
        registry.close()
        log.info("server.stopped")
