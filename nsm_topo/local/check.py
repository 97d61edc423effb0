"""`nsm-topo check`: every router's loopback pinged from one router, as the seed's demo did.

Routing needs time to converge after `up` (OSPF adjacencies, then routes), so the check repeats until
every loopback answers or the bound is reached, and says how long it took. The loopbacks are read from
the routers' configurations (`interface lo` / `ip address A/32`).
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from nsm_topo.local import frr
from nsm_topo.local.lab import netns_name
from nsm_topo.topology import Topology
from nsm_topo.wiring import is_router


class CheckError(RuntimeError):
    """The check cannot run (no router, no loopback, unknown source device)."""


@dataclass(frozen=True, slots=True)
class PingResult:
    device: str
    loopback: ipaddress.IPv4Address
    received: bool

    def line(self) -> str:
        """The seed's line (busybox ping's summary), with whom it is about."""
        loss = "0" if self.received else "100"
        got = 1 if self.received else 0
        summary = f"1 packets transmitted, {got} packets received, {loss}% packet loss"
        return f"{self.device} {self.loopback}: {summary}"


def loopbacks(topology: Topology) -> dict[str, ipaddress.IPv4Address]:
    found = {}
    for device in topology.devices:
        config = topology.config_file(device)
        if config is None or not is_router(topology, device):
            continue
        address = frr.loopback_of(config.read_text())
        if address is not None:
            found[device] = address
    return dict(sorted(found.items(), key=lambda item: item[1]))


def ping(netns: str, address: ipaddress.IPv4Address) -> bool:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", "1", "-W", "1", str(address)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def ping_loopbacks(
    topology: Topology, source: str | None, timeout: float, on_round: Callable[[int, int], None] | None = None
) -> tuple[str, list[PingResult], float]:
    """(the source router, one result per loopback, seconds until all answered or the bound was reached)."""
    targets = loopbacks(topology)
    if not targets:
        raise CheckError("no router with a loopback in its configuration (interface lo / ip address A/32)")
    if source is None:
        source = next(iter(targets))
    if source not in topology.devices:
        raise CheckError(f"--from {source}: no such device in {topology.name}")
    netns = netns_name(topology, source)
    started = time.monotonic()
    answered: set[str] = set()
    while True:
        for device, address in targets.items():
            if device not in answered and ping(netns, address):
                answered.add(device)
        if on_round is not None:
            on_round(len(answered), len(targets))
        elapsed = time.monotonic() - started
        if len(answered) == len(targets) or elapsed > timeout:
            break
        time.sleep(0.5)
    results = [PingResult(device, address, device in answered) for device, address in targets.items()]
    return source, results, elapsed
