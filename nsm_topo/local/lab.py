"""A topology on this host: `up`, `status`, `down`.

One network namespace per device, named `<topology>-<device>`; in it the device's nse-sidecar and, if it
owns links, its nsc-sidecar, with exactly the environment k8s-topo gives the pods (`wiring.py`, plus the
pod name and a readiness file); for routers, FRR with the device's configuration. nsm-local wires the links.

Everything `up` creates is recorded, as it is created, in `/run/nsm-topo/<topology>/lab.json`; `down`
removes exactly that, and when the record is missing (a crash before it was written, or a machine that
lost /run) it finds the lab's namespaces by name and the processes by the namespace they run in. `down`
on a lab that is not up removes nothing and succeeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsm_sdk.kernel import LinkState, read_link_states
from nsm_sdk.kernel.errors import KernelError
from nsm_sdk.kernel.netlink import netlink_in
from nsm_topo.local import frr
from nsm_topo.local.controlplane import ControlPlane, acquire, apply_service, release
from nsm_topo.local.processes import ProcessRecord, alive, pids_in_netns, spawn, start_time_of, stop
from nsm_topo.topology import Link, Topology
from nsm_topo.wiring import Wiring, wire

NETNS_DIR = Path("/run/netns")
SIDECAR_GRACE = 25.0
"""How long a sidecar may take to close its links after SIGTERM (its backstop: request timeout + 5 s)."""


class LabError(RuntimeError):
    """The lab cannot be brought up (or is in a state `up` must not touch)."""


def netns_name(topology: Topology, device: str) -> str:
    return f"{topology.name}-{device}"


def lab_dir(topology: Topology, plane: ControlPlane) -> Path:
    return plane.run_dir / topology.name


def is_router(topology: Topology, device: str) -> bool:
    """Routers run FRR: k8s-topo's quagga/frr names, or any device with a configuration in conf_dir."""
    return "qrtr" in device or "frr" in device or topology.config_file(device) is not None


@dataclass
class LabRecord:
    """What `up` created, written as it goes (lab.json)."""

    topology: str
    file: str
    namespaces: dict[str, str] = field(default_factory=dict)
    processes: list[ProcessRecord] = field(default_factory=list)
    control_plane: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        data = {
            "topology": self.topology,
            "file": self.file,
            "namespaces": self.namespaces,
            "processes": [p.to_json() for p in self.processes],
            "control_plane": self.control_plane,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> LabRecord | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return cls(
            topology=str(data.get("topology", "")),
            file=str(data.get("file", "")),
            namespaces=dict(data.get("namespaces", {})),
            processes=[ProcessRecord.from_json(p) for p in data.get("processes", [])],
            control_plane=dict(data.get("control_plane", {})),
        )


# ----- bring-up -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkView:
    link: Link
    client: LinkState | None
    endpoint: LinkState | None

    @property
    def up(self) -> bool:
        return all(
            side is not None and side.up and any("." in address for address in side.addresses)
            for side in (self.client, self.endpoint)
        )


def _netns_fd(name: str) -> int | None:
    try:
        return os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def read_namespace(name: str) -> dict[str, LinkState]:
    """Interface name -> state, in a named netns (empty if it does not exist)."""
    fd = _netns_fd(name)
    if fd is None:
        return {}
    try:
        with netlink_in(fd) as ipr:
            return {state.ifname: state for state in read_link_states(ipr)}
    except KernelError:
        return {}
    finally:
        os.close(fd)


def link_views(topology: Topology) -> list[LinkView]:
    states = {device: read_namespace(netns_name(topology, device)) for device in topology.devices}
    return [
        LinkView(
            link,
            states[link.client.device].get(link.client.interface),
            states[link.endpoint.device].get(link.endpoint.interface),
        )
        for link in topology.links
    ]


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip()}")


def _sidecar_env(plane: ControlPlane, pod: str, extra: dict[str, str]) -> dict[str, str]:
    """`pod` plays a pod's name (the seed took it from the hostname): the device's namespace name, unique
    across labs, so two labs with the same device names register different endpoint names."""
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "POD_NAME": pod,
        **plane.sidecar_env(),
        **extra,
    }


Progress = Callable[[str, int, int], None]
"""progress(event, done, total): 'link.up net-3', ... for the caller's display."""


def up(topology: Topology, plane: ControlPlane, progress: Progress, timeout: float = 120.0) -> list[LinkView]:
    """Bring the lab up and wait until every link is up; LabError (lab left as it is) if not in time."""
    wiring = wire(topology)
    directory = lab_dir(topology, plane)
    record_path = directory / "lab.json"
    existing = LabRecord.load(record_path)
    if existing is not None and any(alive(p) for p in existing.processes):
        raise LabError(f"lab {topology.name} is already up (from {existing.file}): nsm-topo down it first")
    taken = [d for d in topology.devices if (NETNS_DIR / netns_name(topology, d)).exists()]
    if taken:
        raise LabError(
            f"network namespace {netns_name(topology, taken[0])} exists already (left by a crashed lab?): "
            f"run nsm-topo down {topology.source or topology.name} first"
        )
    routers = [d for d in topology.devices if is_router(topology, d)]
    if routers and not frr.installed():
        raise LabError(
            f"{routers[0]} is a router but FRR is not installed: run scripts/setup.sh (apt install frr)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    record = LabRecord(topology.name, str(topology.source or ""))
    record.save(record_path)

    for device in topology.devices:
        name = netns_name(topology, device)
        _run("ip", "netns", "add", name)
        record.namespaces[device] = name
        record.save(record_path)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        if device in routers:
            _run("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    progress("namespaces", len(topology.devices), len(topology.devices))

    started_plane = acquire(plane, topology.name)
    record.control_plane = {"url": str(plane.url), "started_by_nsm_topo": started_plane}
    record.save(record_path)
    apply_service(plane, wiring.network_service())
    progress("networkservice", 1, 1)

    for device in routers:
        config = _router_config(topology, device)
        record.processes += frr.start(netns_name(topology, device), device, config)
        record.save(record_path)
    _start_sidecars(topology, wiring, plane, record, record_path)
    return _wait_for_links(topology, record, progress, timeout)


def _router_config(topology: Topology, device: str) -> str:
    given = topology.config_file(device)
    if given is not None:
        return given.read_text()
    return f"frr defaults traditional\nhostname {device}\n!\nrouter ospf\n network 0.0.0.0/0 area 0\n!\n"


def _start_sidecars(
    topology: Topology, wiring: Wiring, plane: ControlPlane, record: LabRecord, record_path: Path
) -> None:
    directory = lab_dir(topology, plane)
    for device in wiring.devices:  # endpoints first: their clients then find them registered
        env = _sidecar_env(
            plane,
            netns_name(topology, device.name),
            {**device.nse_env, "NSM_READY_FILE": str(directory / f"{device.name}.nse.ready")},
        )
        record.processes.append(
            spawn(
                "nse-sidecar",
                device.name,
                [sys.executable, "-m", "nse_sidecar"],
                env,
                directory / f"{device.name}.nse.log",
                netns_name(topology, device.name),
            )
        )
        record.save(record_path)
    for device in wiring.devices:
        if device.nsc_env is None:
            continue
        env = _sidecar_env(
            plane,
            netns_name(topology, device.name),
            {**device.nsc_env, "NSM_READY_FILE": str(directory / f"{device.name}.nsc.ready")},
        )
        record.processes.append(
            spawn(
                "nsc-sidecar",
                device.name,
                [sys.executable, "-m", "nsc_sidecar"],
                env,
                directory / f"{device.name}.nsc.log",
                netns_name(topology, device.name),
            )
        )
        record.save(record_path)


def _wait_for_links(
    topology: Topology, record: LabRecord, progress: Progress, timeout: float
) -> list[LinkView]:
    total = len(topology.links)
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while True:
        views = link_views(topology)
        for view in views:
            if view.up and view.link.name not in seen:
                seen.add(view.link.name)
                progress(
                    f"link.up {view.link.name} {view.link.client} <-> {view.link.endpoint}", len(seen), total
                )
        if len(seen) == total:
            return views
        dead = [p for p in record.processes if p.role.endswith("sidecar") and not alive(p)]
        if dead or time.monotonic() > deadline:
            missing = [v.link for v in views if not v.up]
            why = (
                f"{dead[0].role} of {dead[0].device} exited (log: {dead[0].log})"
                if dead
                else f"not up within {timeout:.0f}s"
            )
            listed = ", ".join(f"{link.name} ({link.client} <-> {link.endpoint})" for link in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise LabError(f"{len(missing)} of {total} links are not up, {why}: {listed}{more}")
        time.sleep(0.2)


# ----- tear-down ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DownReport:
    processes: int
    namespaces: int
    found_record: bool


def down(topology: Topology, plane: ControlPlane) -> DownReport:
    """Remove what `up` created (or what a crashed `up` left); nothing at all if the lab is not up."""
    directory = lab_dir(topology, plane)
    record = LabRecord.load(directory / "lab.json")
    names = {device: netns_name(topology, device) for device in topology.devices}
    if record is not None:
        names.update(record.namespaces)
    processes = list(record.processes) if record is not None else []
    order = {"nsc-sidecar": 0, "nse-sidecar": 1}
    live = [p for p in processes if alive(p)]
    for rank in (0, 1):  # clients first (they close their links), then endpoints, then the rest (FRR)
        stop([p for p in live if order.get(p.role) == rank], SIDECAR_GRACE)
    stop([p for p in live if p.role not in order], 5)
    stray = _stop_strays(names.values())
    removed = 0
    for name in names.values():
        if (NETNS_DIR / name).exists():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
            removed += 1
        frr.remove_rundir(name)
    if record is not None and record.control_plane and plane.running():
        # the service may be gone already (another lab's down, a restarted nsm-local): never block on it
        with contextlib.suppress(Exception):
            apply_service(plane, wire(topology).network_service(), delete=True)
    shutil.rmtree(directory, ignore_errors=True)
    release(plane, topology.name)  # last: it removes the run directory once nothing else is in it
    return DownReport(len(live) + stray, removed, record is not None)


def _stop_strays(names: Iterable[str]) -> int:
    """Processes still running in the lab's namespaces (not recorded: a crash during `up`)."""
    strays: list[ProcessRecord] = []
    for name in names:
        path = NETNS_DIR / name
        try:
            inode = os.stat(path).st_ino
        except OSError:
            continue
        for pid in pids_in_netns(inode):
            if pid == os.getpid():
                continue
            started = start_time_of(pid)
            if started is not None:
                strays.append(ProcessRecord("stray", name, pid, started))
    stop(strays, 10)
    return len(strays)
