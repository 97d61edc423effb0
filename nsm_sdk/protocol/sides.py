"""Which addresses and routes each side of a kernel link carries (protocol doc §9).

`src` is always the client (NSC) side and `dst` the endpoint (NSE) side. Each side gets its own addresses,
an on-link route to every peer address its own prefixes do not already cover, and its routes from the IP
context; a route without a next hop goes through the first peer address of its family unless the prefix
is itself a peer address (then it is on-link). The forwarder configures from this; the sidecars verify
against it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from nsm_sdk._proto.networkservice.connectioncontext_pb2 import IPContext

Side = Literal["client", "endpoint"]


@dataclass(frozen=True, slots=True)
class SideRoute:
    prefix: str
    via: str | None = None


@dataclass(frozen=True, slots=True)
class SideConfig:
    addresses: tuple[str, ...]
    routes: tuple[SideRoute, ...]


def _host(cidr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(cidr)


def side_config(ip_context: IPContext, side: Side) -> SideConfig:
    if side == "client":
        own, peer, extra = ip_context.src_ip_addrs, ip_context.dst_ip_addrs, ip_context.src_routes
    else:
        own, peer, extra = ip_context.dst_ip_addrs, ip_context.src_ip_addrs, ip_context.dst_routes
    own_networks = [_host(a).network for a in own]
    peer_hosts = [_host(a).ip for a in peer]
    routes: list[SideRoute] = []

    def add(route: SideRoute) -> None:
        if route not in routes:
            routes.append(route)

    for host in peer_hosts:
        if not any(host in network for network in own_networks if network.version == host.version):
            add(SideRoute(prefix=str(ipaddress.ip_network(host))))
    for route in extra:
        network = ipaddress.ip_network(route.prefix, strict=False)
        via = route.nextHop or None
        is_peer_address = network.num_addresses == 1 and network.network_address in peer_hosts
        if via is None and not is_peer_address:
            gateway = next((h for h in peer_hosts if h.version == network.version), None)
            via = None if gateway is None else str(gateway)
        add(SideRoute(prefix=network.with_prefixlen, via=via))
    return SideConfig(addresses=tuple(own), routes=tuple(routes))
