"""The NSM wiring of a topology: the one function both the local lab and the Kubernetes manifests use.

What k8s-topo's NSM mode creates (legacy-contract.md §4.3), computed once:

* one NetworkService named after the topology, with one match per link:
  `{link: net-<i>}` -> the endpoint device `{device: <dev>}`;
* per device an nse-sidecar with `ENDPOINT_NETWORK_SERVICE=<topology>`, `ENDPOINT_LABELS=device=<dev>`
  and `IP_ADDRESS=10.60.<n>.0/24`, n the device's position (k8s-topo's gaps in n are not copied), and,
  beyond k8s-topo, `ENDPOINT_LINKS` listing the links it answers: the k-th gets the k-th /30 of the pool,
  so a link's addresses are known in advance and stay the same whatever restarts (k8s-topo's endpoints
  gave /30s first come, first served); and `NSM_REGISTER_SERVICE=false`: both targets create the
  NetworkService, with its matches, before any endpoint starts, so an endpoint need not look for it (each
  look fetches the whole service, at every registration refresh: 100 KB in a lab of two thousand links);
* per device that is the first end of at least one link, an nsc-sidecar with `NS_NETWORKSERVICEMESH_IO`,
  one `<topology>/<if>?link=net-<i>&peerif=<peer if>` per link it owns.

What each device runs is decided here too, for both: routers (`is_router`) run FRR with
`router_config`, and `frr_daemons` says which FRR daemons that configuration needs.

Each endpoint device's /24 holds 64 /30s, so a device can be the endpoint of at most 64 links; the pools
(10.60.0.0/24 onwards, within 10.60.0.0/14) run out after 1024 devices. Both are refused here, naming the
device.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from nsm_topo.topology import Link, Topology, TopologyError

POOL_BASE = ipaddress.IPv4Network("10.60.0.0/14")
"""10.60.<n>.0/24 for the first 256 devices (k8s-topo's numbering), then on through 10.63.255.0/24."""
POOL_PREFIX = 24
LINK_PREFIX = 30
MAX_DEVICES = 2 ** (POOL_PREFIX - POOL_BASE.prefixlen)
MAX_LINKS_PER_ENDPOINT = 2 ** (LINK_PREFIX - POOL_PREFIX)
ROUTER_NAME_PARTS = ("qrtr", "frr")
FRR_DAEMONS = (
    ("ospfd", r"^router ospf\b"),
    ("bgpd", r"^router bgp\b"),
    ("isisd", r"^router isis\b"),
    ("staticd", r"^\s*ip(v6)? route\s"),
)
"""Routing daemons by the configuration line that needs them (zebra runs always)."""


@dataclass(frozen=True, slots=True)
class DeviceWiring:
    name: str
    pool: ipaddress.IPv4Network
    nse_env: dict[str, str]
    nsc_env: dict[str, str] | None
    """None when the device owns no link (k8s-topo then gives its pod no nsc-sidecar)."""
    owned: tuple[Link, ...]
    """The links this device's nsc-sidecar requests."""
    served: tuple[Link, ...]
    """The links this device's nse-sidecar answers."""


@dataclass(frozen=True, slots=True)
class Wiring:
    topology: Topology
    devices: tuple[DeviceWiring, ...]

    @property
    def service_name(self) -> str:
        return self.topology.name

    def device(self, name: str) -> DeviceWiring:
        for wired in self.devices:
            if wired.name == name:
                return wired
        raise KeyError(name)

    def network_service(self, api_version: str = "networkservicemesh.io/v1") -> dict[str, Any]:
        """The NetworkService manifest (NSM v1 CRD shape; `v1alpha1` gives k8s-topo's own).

        NSM v1's spec is the Go `registry.NetworkService` struct decoded with encoding/json (sdk-k8s), so
        its keys are the proto field names, snake_case (`source_selector`), as NSM's own examples write
        them; a camelCase `sourceSelector` would be dropped there. k8s-topo's v1alpha1 used camelCase.
        """
        if api_version.endswith("v1alpha1"):
            source, routes, destination = "sourceSelector", "route", "destinationSelector"
        else:
            source, routes, destination = "source_selector", "routes", "destination_selector"
        matches = [
            {
                source: {"link": link.name},
                routes: [{destination: {"device": link.endpoint.device}}],
            }
            for link in self.topology.links
        ]
        return {
            "apiVersion": api_version,
            "kind": "NetworkService",
            "metadata": {"name": self.service_name},
            "spec": {"payload": "IP", "matches": matches},
        }


def is_router(topology: Topology, device: str) -> bool:
    """Routers run FRR: k8s-topo's quagga/frr names, or any device with a configuration in conf_dir."""
    return any(part in device for part in ROUTER_NAME_PARTS) or topology.config_file(device) is not None


def router_config(topology: Topology, device: str) -> str:
    """A router's FRR configuration: its file in conf_dir, else OSPF on every interface."""
    given = topology.config_file(device)
    if given is not None:
        return given.read_text()
    return f"frr defaults traditional\nhostname {device}\n!\nrouter ospf\n network 0.0.0.0/0 area 0\n!\n"


def frr_daemons(config: str) -> list[str]:
    """The FRR daemons a configuration needs: zebra always, and the routing daemons it configures."""
    return ["zebra", *(name for name, pattern in FRR_DAEMONS if re.search(pattern, config, re.MULTILINE))]


def client_entry(service: str, link: Link) -> str:
    return f"{service}/{link.client.interface}?link={link.name}&peerif={link.endpoint.interface}"


def wire(topology: Topology) -> Wiring:
    """Everything the sidecars of every device are told; TopologyError if the pools cannot hold it."""
    where = str(topology.source) if topology.source is not None else "<topology>"
    if len(topology.devices) > MAX_DEVICES:
        raise TopologyError(
            f"{where}: {len(topology.devices)} devices, but the /24 pools of {POOL_BASE} hold {MAX_DEVICES}: "
            f"device {topology.devices[MAX_DEVICES]} gets none"
        )
    service = topology.name
    wired = []
    pools = POOL_BASE.subnets(new_prefix=POOL_PREFIX)
    owned_by: dict[str, list[Link]] = {device: [] for device in topology.devices}
    served_by: dict[str, list[Link]] = {device: [] for device in topology.devices}
    for link in topology.links:
        owned_by[link.client.device].append(link)
        served_by[link.endpoint.device].append(link)
    for device in topology.devices:
        owned, served = tuple(owned_by[device]), tuple(served_by[device])
        if len(served) > MAX_LINKS_PER_ENDPOINT:
            raise TopologyError(
                f"{where}: device {device} is the endpoint (second end) of {len(served)} links, but its "
                f"/{POOL_PREFIX} pool holds {MAX_LINKS_PER_ENDPOINT} /{LINK_PREFIX}s: list it first in some "
                "of them, or split the device"
            )
        pool = next(pools)
        nse_env = {
            "ENDPOINT_NETWORK_SERVICE": service,
            "ENDPOINT_LABELS": f"device={device}",
            "IP_ADDRESS": str(pool),
            "NSM_REGISTER_SERVICE": "false",
        }
        if served:
            nse_env["ENDPOINT_LINKS"] = ",".join(link.name for link in served)
        nsc_env = (
            {"NS_NETWORKSERVICEMESH_IO": ",".join(client_entry(service, link) for link in owned)}
            if owned
            else None
        )
        wired.append(DeviceWiring(device, pool, nse_env, nsc_env, owned, served))
    return Wiring(topology, tuple(wired))


def planned_addresses(wired: DeviceWiring, link: Link) -> tuple[str, str]:
    """(client, endpoint) addresses of a link its endpoint device `wired` answers, as `ENDPOINT_LINKS`
    fixes them: the k-th served link gets network+1 and network+2 of the k-th /30 of the pool."""
    block = list(wired.pool.subnets(new_prefix=LINK_PREFIX))[wired.served.index(link)]
    return f"{block.network_address + 1}/{LINK_PREFIX}", f"{block.network_address + 2}/{LINK_PREFIX}"
