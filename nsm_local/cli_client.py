"""`nsm-local apply`, `delete` and `list`: talk to a running nsm-local over its own API.

The CLI is a workload like any other: it gets its SVID from the Workload API (nsm-local's own, by
default) and talks mTLS. Run on the host as the user who started nsm-local, it is the operator: it may
manage every NetworkService and `list` shows every connection.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TextIO

from nsm_sdk._proto.networkservice.connection_pb2 import MonitorScopeSelector, State
from nsm_sdk._proto.registry.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceQuery,
)
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.nsm_client import NsmClient
from nsm_sdk.agent.security import agent_identity
from nsm_sdk.protocol.envvalues import SecuritySettings
from nsm_sdk.protocol.errors import TemporaryError
from nsm_sdk.protocol.registry_path import RegistryPath
from nsm_sdk.transport.client import dial
from nsm_sdk.transport.probe import socket_problem

TIMEOUT = 10.0
STARTUP_GRACE = 2.0
"""Seconds the CLI waits for a socket to be served before it says that nothing serves it."""


class NoIdentity(TemporaryError):
    """The Workload API gave no SVID in time."""


class Unreachable(TemporaryError):
    """Nothing answers at nsm-local's socket or at the Workload API's."""


def _problem_after_grace(url: str) -> str | None:
    """`socket_problem(url)`, asked again for up to STARTUP_GRACE while there is one: a script may run us
    a moment after starting `nsm-local serve`, while it still replaces a stale socket."""
    deadline = time.monotonic() + STARTUP_GRACE
    while (problem := socket_problem(url)) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    return problem


def check_reachable(url: str, security: SecuritySettings) -> None:
    """Fail soon (STARTUP_GRACE), naming the socket and what to start, when nothing listens where we would
    wait for an answer (gRPC would only say DEADLINE_EXCEEDED after TIMEOUT seconds)."""
    problem = _problem_after_grace(url)
    if problem is not None:
        raise Unreachable(
            f"cannot reach nsm-local at {url}: {problem}; start it with `nsm-local serve` "
            "(or give --connect-to the socket of one that runs)"
        )
    if security.insecure:
        return
    workload_api = str(security.spiffe_endpoint)
    problem = _problem_after_grace(workload_api)
    if problem is not None:
        raise Unreachable(
            f"no SPIFFE Workload API at {workload_api} (the CLI's identity comes from it): {problem}; "
            "`nsm-local serve` serves it (or set SPIFFE_ENDPOINT_SOCKET to the one it serves)"
        )


@asynccontextmanager
async def connected(url: str, security: SecuritySettings) -> AsyncIterator[NsmClient]:
    """A client of nsm-local at `url`, with an SVID from `security`'s Workload API (or insecure)."""
    await asyncio.to_thread(check_reachable, url, security)
    stop = asyncio.Event()
    timer = asyncio.get_running_loop().call_later(TIMEOUT, stop.set)
    log = EventLog("nsm_local.cli")
    try:
        async with agent_identity(security, "nsm-local-cli", 600.0, log, stop) as identity:
            timer.cancel()
            if identity is None:
                raise NoIdentity(
                    f"no X.509-SVID from the Workload API at {security.spiffe_endpoint} within "
                    f"{TIMEOUT:.0f}s; is `nsm-local serve` running (it serves that socket), "
                    "or is SPIFFE_ENDPOINT_SOCKET wrong?"
                )
            async with dial(url, security=identity.security) as (channel, relay):
                yield NsmClient(channel, identity.tokens, relay)
    finally:
        timer.cancel()


async def apply(
    url: str, services: list[NetworkService], security: SecuritySettings, out: TextIO = sys.stdout
) -> None:
    async with connected(url, security) as client:
        for service in services:
            await client.register_service(service, RegistryPath(), TIMEOUT)
            print(f"networkservice/{service.name} applied ({len(service.matches)} matches)", file=out)


async def delete(
    url: str, services: list[NetworkService], security: SecuritySettings, out: TextIO = sys.stdout
) -> None:
    async with connected(url, security) as client:
        for service in services:
            await client.unregister_service(NetworkService(name=service.name), RegistryPath(), TIMEOUT)
            print(f"networkservice/{service.name} deleted", file=out)


def _labels(labels: object) -> str:
    items = sorted(dict(labels).items()) if isinstance(labels, dict) else sorted(labels)  # type: ignore[call-overload]
    return ",".join(f"{k}={v}" for k, v in items) or "-"


async def show(url: str, security: SecuritySettings, out: TextIO = sys.stdout) -> None:
    async with connected(url, security) as client:
        services = [
            r.network_service
            async for r in client.find_services(
                NetworkServiceQuery(network_service=NetworkService()), timeout=TIMEOUT
            )
        ]
        endpoints = [
            r.network_service_endpoint
            async for r in client.find_endpoints(
                NetworkServiceEndpointQuery(network_service_endpoint=NetworkServiceEndpoint()),
                timeout=TIMEOUT,
            )
        ]
        connections = {}
        async for event in client.monitor(MonitorScopeSelector()):
            connections = dict(event.connections)
            break
    print("NETWORK SERVICES", file=out)
    for ns in sorted(services, key=lambda s: s.name):
        matches = (
            "; ".join(
                f"{_labels(dict(m.source_selector))} -> "
                + " | ".join(_labels(dict(r.destination_selector)) for r in m.routes)
                for m in ns.matches
            )
            or "any endpoint"
        )
        print(f"  {ns.name:<20} payload={ns.payload or '-':<8} {matches}", file=out)
    print("ENDPOINTS", file=out)
    for nse in sorted(endpoints, key=lambda e: e.name):
        for service in nse.network_service_names:
            labels = nse.network_service_labels.get(service)
            shown = _labels(dict(labels.labels)) if labels is not None else "-"
            print(f"  {nse.name:<20} service={service:<12} labels={shown}", file=out)
    print("CONNECTIONS", file=out)
    for conn in sorted(connections.values(), key=lambda c: c.path.path_segments[0].id):
        segments = conn.path.path_segments
        owner = segments[0].name if segments else "?"
        ip = conn.context.ip_context
        print(
            f"  {segments[0].id:<20} {owner} -> {conn.network_service_endpoint_name} "
            f"service={conn.network_service} if={conn.mechanism.parameters.get('name', '?')} "
            f"src={','.join(ip.src_ip_addrs) or '-'} dst={','.join(ip.dst_ip_addrs) or '-'} "
            f"state={State.Name(conn.state)}",
            file=out,
        )
