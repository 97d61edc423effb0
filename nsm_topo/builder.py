"""`nsm-topo random N EXTRA`: k8s-topo's random network builder (legacy-contract.md §4.5), on Python 3.11.

N routers joined by a uniform random spanning tree (the Aldous-Broder random walk on the complete graph)
plus EXTRA random links between routers not yet linked. Router i has the i-th loopback /32 from
192.0.2.0/24, then 198.51.100.0/24, then 203.0.113.0/24 (RFC 5737; at most 768 routers) and is named
`<prefix>-<loopback with dashes>`, e.g. `qrtr-192-0-2-0`, prefixes taken round-robin. Each router's
interfaces are eth1, eth2, ... in link order, and each link lists its ends sorted, so the first (the
client) goes by string order, as k8s-topo's builder did.

Each router gets an FRR configuration: OSPF area 0 on every interface (point-to-point, 1 s hellos, no LSA
or SPF hold-down, so a lab converges in about a second), the loopback advertised; the interface addresses
are not in it, they come from NSM. The same seed always gives the same files.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

LOOPBACK_RANGES = tuple(
    ipaddress.IPv4Network(cidr) for cidr in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)
MAX_ROUTERS = sum(net.num_addresses for net in LOOPBACK_RANGES)
DEFAULT_PREFIX = "qrtr"


class BuilderError(ValueError):
    """Arguments the builder cannot satisfy (too many routers, too many extra links)."""


@dataclass(frozen=True, slots=True)
class Router:
    name: str
    loopback: ipaddress.IPv4Address
    interfaces: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RandomNetwork:
    routers: tuple[Router, ...]
    links: tuple[tuple[str, str], ...]
    """Each link as its two `device:interface` ends, sorted."""


def loopbacks(count: int) -> list[ipaddress.IPv4Address]:
    if count > MAX_ROUTERS:
        raise BuilderError(f"at most {MAX_ROUTERS} routers (the RFC 5737 ranges), not {count}")
    found: list[ipaddress.IPv4Address] = []
    for network in LOOPBACK_RANGES:
        for address in network:
            if len(found) == count:
                return found
            found.append(address)
    return found


def spanning_tree(count: int, rng: random.Random) -> list[tuple[int, int]]:
    """A uniform random spanning tree of the complete graph on `count` nodes (Aldous-Broder)."""
    if count < 2:
        return []
    current = rng.randrange(count)
    visited = {current}
    edges: list[tuple[int, int]] = []
    while len(visited) < count:
        step = rng.randrange(count - 1)
        following = step if step < current else step + 1  # any node but the current one, uniformly
        if following not in visited:
            visited.add(following)
            edges.append((current, following))
        current = following
    return edges


def extra_links(
    count: int, existing: list[tuple[int, int]], extra: int, rng: random.Random
) -> list[tuple[int, int]]:
    """`extra` random pairs not linked yet (no parallel links, no loops)."""
    taken = {frozenset(edge) for edge in existing}
    free = [(a, b) for a in range(count) for b in range(a + 1, count) if frozenset((a, b)) not in taken]
    if extra > len(free):
        raise BuilderError(f"{count} routers have room for {len(free)} more links, not {extra}")
    return rng.sample(free, extra)


def build(
    count: int, extra: int, seed: int | None = None, prefixes: tuple[str, ...] = (DEFAULT_PREFIX,)
) -> RandomNetwork:
    if count < 2:
        raise BuilderError(f"a network needs at least 2 routers, not {count}")
    if extra < 0:
        raise BuilderError(f"EXTRA must not be negative, not {extra}")
    rng = random.Random(seed)
    addresses = loopbacks(count)
    names = [
        f"{prefixes[i % len(prefixes)]}-{str(address).replace('.', '-')}"
        for i, address in enumerate(addresses)
    ]
    edges = spanning_tree(count, rng)
    edges += extra_links(count, edges, extra, rng)
    interfaces: list[list[str]] = [[] for _ in range(count)]
    links = []
    for a, b in edges:
        ends = []
        for node in (a, b):
            interface = f"eth{len(interfaces[node]) + 1}"
            interfaces[node].append(interface)
            ends.append(f"{names[node]}:{interface}")
        first, second = sorted(ends)
        links.append((first, second))
    routers = tuple(Router(names[i], addresses[i], tuple(interfaces[i])) for i in range(count))
    return RandomNetwork(routers, tuple(links))


def frr_config(router: Router) -> str:
    lines = [
        "frr defaults traditional",
        f"hostname {router.name}",
        "log stdout informational",
        "service integrated-vtysh-config",
        "!",
        "interface lo",
        f" ip address {router.loopback}/32",
        "!",
    ]
    for interface in router.interfaces:
        lines += [
            f"interface {interface}",
            " ip ospf network point-to-point",
            " ip ospf hello-interval 1",
            " ip ospf dead-interval 4",
            "!",
        ]
    lines += [
        "router ospf",
        f" ospf router-id {router.loopback}",
        " network 0.0.0.0/0 area 0",
        # Lab timers: no hold-down between LSAs or SPF runs, so a lab converges in about a second
        # instead of FRR's default ~10 s (each new link re-originates the router LSA, rate-limited to 5 s).
        " timers throttle lsa all 0",
        " timers lsa min-arrival 0",
        " timers throttle spf 0 50 1000",
        "!",
        "line vty",
        "!",
    ]
    return "\n".join(lines) + "\n"


def topology_yaml(network: RandomNetwork, name: str, conf_dir: str) -> str:
    """The topology file: k8s-topo's keys, with `nsm: true` and `conf_dir` relative to the file."""
    document = {
        "prefix": name,
        "nsm": True,
        "conf_dir": conf_dir,
        "links": [{"endpoints": list(link)} for link in network.links],
    }
    header = f"# nsm-topo random: {len(network.routers)} routers, {len(network.links)} links\n"
    return header + yaml.safe_dump(document, sort_keys=False)


def write(network: RandomNetwork, directory: Path, name: str = "random") -> Path:
    """Write `<name>.yml` and `config-<name>/<router>` into `directory`; returns the topology file."""
    conf_dir = f"config-{name}"
    (directory / conf_dir).mkdir(parents=True, exist_ok=True)
    for router in network.routers:
        (directory / conf_dir / router.name).write_text(frr_config(router))
    path = directory / f"{name}.yml"
    path.write_text(topology_yaml(network, name, conf_dir))
    return path
