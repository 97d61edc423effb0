"""`nsm-local apply`, `delete` and `list`: talk to a running nsm-local over its own API."""

from __future__ import annotations

import sys
from typing import TextIO

from nsm_sdk._proto.networkservice.connection_pb2 import MonitorScopeSelector, State
from nsm_sdk._proto.registry.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceQuery,
)
from nsm_sdk.agent.credentials import CallTokens
from nsm_sdk.agent.nsm_client import NsmClient
from nsm_sdk.identity.tokens import TokenSigner
from nsm_sdk.protocol.registry_path import RegistryPath
from nsm_sdk.transport.client import dial

TIMEOUT = 10.0


def _tokens() -> CallTokens:
    return CallTokens(TokenSigner("nsm-local-cli"), 600.0)


async def apply(url: str, services: list[NetworkService], out: TextIO = sys.stdout) -> None:
    async with dial(url) as (channel, _relay):
        client = NsmClient(channel, _tokens())
        for service in services:
            await client.register_service(service, RegistryPath(), TIMEOUT)
            print(f"networkservice/{service.name} applied ({len(service.matches)} matches)", file=out)


async def delete(url: str, services: list[NetworkService], out: TextIO = sys.stdout) -> None:
    async with dial(url) as (channel, _relay):
        client = NsmClient(channel, _tokens())
        for service in services:
            await client.unregister_service(NetworkService(name=service.name), RegistryPath(), TIMEOUT)
            print(f"networkservice/{service.name} deleted", file=out)


def _labels(labels: object) -> str:
    items = sorted(dict(labels).items()) if isinstance(labels, dict) else sorted(labels)  # type: ignore[call-overload]
    return ",".join(f"{k}={v}" for k, v in items) or "-"


async def show(url: str, out: TextIO = sys.stdout) -> None:
    async with dial(url) as (channel, _relay):
        client = NsmClient(channel, _tokens())
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
