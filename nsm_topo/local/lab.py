"""A topology on this host: `up`, `status`, `down`.

One network namespace per device, named `<topology>-<device>`; in it the device's nse-sidecar and, if it
owns links, its nsc-sidecar, with exactly the environment k8s-topo gives the pods (`wiring.py`, plus the
pod name and a readiness file); for routers, FRR with the device's configuration. nsm-local wires the links.
A device whose file entry names an image (`custom_image`) runs it as a container in its namespace, with
podman or docker (`containers.py`); its sidecars run beside it as for any device, and it runs no FRR here.

Agent mode (`up(..., agents=N)`, `nsm-topo up --agents N`) is for big labs: instead of two sidecar processes
per device, N `nsm-agent --routers` processes host the agents of all devices (each device still its own
NSM client and endpoint, acting in its namespace by fd; `nsm_agent.host`). Each host keeps a status file,
which `up` follows instead of reading every namespace until all its devices are ready.

Everything `up` creates is recorded, as it is created, in `/run/nsm-topo/<topology>/lab.json`; `down`
removes exactly that, and when the record is missing (a crash before it was written, or a machine that
lost /run) it finds the lab's namespaces by name, the processes by the namespace they run in and the
containers by their label. `down` on a lab that is not up removes nothing and succeeds.
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

from nsm_agent.host import CLOSE_ALLOWANCE
from nsm_sdk.agent.statefile import write_atomically
from nsm_sdk.kernel import LinkState, read_link_states
from nsm_sdk.kernel.errors import KernelError
from nsm_sdk.kernel.netlink import netlink_in
from nsm_topo.local import containers, frr
from nsm_topo.local.containers import Container, ContainerError, Engine, NoEngineError
from nsm_topo.local.controlplane import ControlPlane, acquire, apply_service, release, sole_user
from nsm_topo.local.processes import ProcessRecord, alive, processes_by_netns, spawn, start_time_of, stop
from nsm_topo.topology import Link, Topology
from nsm_topo.wiring import Wiring, is_router, router_config, wire

NETNS_DIR = Path("/run/netns")
AGENT_ROLES = frozenset({"nsc-sidecar", "nse-sidecar", "nsm-agent"})
SIDECAR_GRACE = 25.0
"""How long a sidecar may take to close its links after SIGTERM (its backstop: request timeout + 5 s)."""


class LabError(RuntimeError):
    """The lab cannot be brought up (or is in a state `up` must not touch)."""


def netns_name(topology: Topology, device: str) -> str:
    return f"{topology.name}-{device}"


def lab_dir(topology: Topology, plane: ControlPlane) -> Path:
    return plane.run_dir / topology.name


@dataclass
class LabRecord:
    """What `up` created, written as it goes (lab.json)."""

    topology: str
    file: str
    namespaces: dict[str, str] = field(default_factory=dict)
    processes: list[ProcessRecord] = field(default_factory=list)
    control_plane: dict[str, Any] = field(default_factory=dict)
    containers: dict[str, str] = field(default_factory=dict)
    """device -> its container's name (`<topology>-<device>`), recorded before it is started"""
    engine: str = ""
    """podman or docker: what runs the containers"""

    def save(self, path: Path) -> None:
        data = {
            "topology": self.topology,
            "file": self.file,
            "namespaces": self.namespaces,
            "processes": [p.to_json() for p in self.processes],
            "control_plane": self.control_plane,
            "containers": self.containers,
            "engine": self.engine,
        }
        write_atomically(path, json.dumps(data, indent=1), mode=0o644)  # `nsm-topo graph` reads it as anyone

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
            containers={str(k): str(v) for k, v in data.get("containers", {}).items()},
            engine=str(data.get("engine", "")),
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


def _ip_batch(commands: list[str], *, force: bool = False) -> subprocess.CompletedProcess[str]:
    """The `ip` commands in one process (`ip -batch`; a process each costs a few ms: seconds for a lab of
    a thousand devices); with `force`, going on past one that fails."""
    argv = ["ip", *(["-force"] if force else []), "-batch", "-"]
    return subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True, text=True, check=False)


def _create_namespaces(names: list[str]) -> None:
    """Every named namespace, in one batch; LabError naming the first that failed."""
    if not names:
        return
    done = _ip_batch([f"netns add {name}" for name in names])
    if done.returncode != 0:
        raise LabError(f"ip netns add: {done.stderr.strip()}")


def _loopback_up(name: str) -> None:
    """`ip -n NAME link set lo up`, by netlink from here (lo is index 1 in every new namespace)."""
    fd = _netns_fd(name)
    if fd is None:
        raise LabError(f"network namespace {name} is gone")
    try:
        with netlink_in(fd) as ipr:
            ipr.set_link(1, up=True)
    except KernelError as exc:
        raise LabError(f"{name}: cannot set lo up: {exc}") from None
    finally:
        os.close(fd)


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


def up(
    topology: Topology, plane: ControlPlane, progress: Progress, timeout: float = 120.0, agents: int = 0
) -> list[LinkView]:
    """Bring the lab up and wait until every link is up; LabError (lab left as it is) if not in time.

    `agents`: 0 runs an nse-sidecar and an nsc-sidecar per device (as in pods); N > 0 runs N agent hosts.
    """
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
    images = device_images(topology)
    routers = [d for d in topology.devices if is_router(topology, d) and d not in images]
    engine = _prepare_containers(topology, images, progress)  # NoEngineError: nothing created yet
    if routers and not frr.installed():
        raise LabError(
            f"{routers[0]} is a router but FRR is not installed: run scripts/setup.sh (apt install frr)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    record = LabRecord(topology.name, str(topology.source or ""), engine=engine.name if engine else "")
    record.save(record_path)

    own_namespace = {  # docker's containers make their own namespace, which then gets the lab's name
        d for d in topology.devices if engine is not None and d in images and not engine.joins_named_netns
    }
    plain = [d for d in topology.devices if d not in own_namespace]
    for device in plain:
        record.namespaces[device] = netns_name(topology, device)
    record.save(record_path)  # recorded first: a crash right after still leaves them to `down`
    _create_namespaces([netns_name(topology, d) for d in plain])
    for device in topology.devices:
        name = netns_name(topology, device)
        if device in own_namespace and engine is not None:
            pid = _start_container(engine, topology, device, images[device], record, record_path)
            _run("ip", "netns", "attach", name, str(pid))
            record.namespaces[device] = name
            record.save(record_path)
        if engine is not None and device in images and engine.joins_named_netns:
            _start_container(engine, topology, device, images[device], record, record_path)
        _loopback_up(name)
        if device in routers:
            _run("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    progress("namespaces", len(topology.devices), len(topology.devices))

    started_plane = acquire(plane, topology.name)
    record.control_plane = {"url": str(plane.url), "started_by_nsm_topo": started_plane}
    record.save(record_path)
    apply_service(plane, wiring.network_service())
    progress("networkservice", 1, 1)

    for device in routers:
        config = router_config(topology, device)
        record.processes += frr.start(netns_name(topology, device), device, config)
        record.save(record_path)
    if agents:
        _start_agent_hosts(topology, wiring, plane, record, record_path, agents)
        _wait_for_hosts(record, progress, len(topology.devices), timeout)
    else:
        _start_sidecars(topology, wiring, plane, record, record_path)
    views = _wait_for_links(topology, record, progress, timeout)
    if engine is not None and record.containers:
        _check_containers_run(engine, topology)
    return views


# ----- containers --------------------------------------------------------------------------------------


def device_images(topology: Topology) -> dict[str, str]:
    """device -> image, for the devices that run as containers (their entry in custom_image).

    k8s-topo's other kinds are not run as containers here: qrtr/frr routers run FRR on the host, and the
    cEOS and vrnetlab kinds (whose images are licensed or VMs) and hosts run as plain namespaces."""
    return {device: image for device in topology.devices if (image := topology.image_of(device)) is not None}


def _prepare_containers(topology: Topology, images: dict[str, str], progress: Progress) -> Engine | None:
    """Before anything is created: the engine (NoEngineError if none), no container of this lab left over,
    no container of someone else under a name the lab needs, and every image here (pulled if missing)."""
    if not images:
        return None
    first = next(iter(images))
    engine = containers.require(first, images[first])
    try:
        left = containers.lab_containers(engine, topology.name)
        if left:
            raise LabError(
                f"container {left[0].name} of lab {topology.name} exists already (left by a crashed lab?): "
                f"run nsm-topo down {topology.source or topology.name} first"
            )
        for device in images:
            name = netns_name(topology, device)
            if containers.labels_of(engine, name) is not None:
                raise LabError(
                    f"a container named {name} exists already (not this lab's): remove or rename it"
                )
        wanted = sorted(set(images.values()))
        for done, image in enumerate(wanted, 1):
            containers.ensure_image(engine, image)
            progress(f"images {image}", done, len(wanted))
    except ContainerError as exc:
        raise LabError(str(exc)) from None
    return engine


def _start_container(
    engine: Engine, topology: Topology, device: str, image: str, record: LabRecord, record_path: Path
) -> int:
    name = netns_name(topology, device)
    record.containers[device] = name  # recorded first: a crash right after still leaves it to `down`
    record.save(record_path)
    try:
        return containers.start(
            engine, name, image, topology.name, device, NETNS_DIR / name, topology.config_file(device)
        )
    except ContainerError as exc:
        raise LabError(str(exc)) from None


def _check_containers_run(engine: Engine, topology: Topology) -> None:
    try:
        stopped = [c for c in containers.lab_containers(engine, topology.name) if not c.running]
    except ContainerError as exc:
        raise LabError(str(exc)) from None
    if stopped:
        first = stopped[0]
        logs = containers.logs_tail(engine, first.name)
        raise LabError(
            f"container {first.name} ({first.image}) is {first.state}, not running"
            f"{': ' + logs if logs else ''} ({engine.name} logs {first.name})"
        )


def _engine_for(topology: Topology, record: LabRecord | None) -> Engine | None:
    """The engine that may hold this lab's containers: the recorded one, else the one detected, if the lab
    has (or had) container devices; None if it has none or no engine is here."""
    recorded = record.engine if record is not None else ""
    if not recorded and not device_images(topology):
        return None
    if recorded:
        binary = shutil.which(recorded)
        return Engine(recorded, binary) if binary is not None else None
    try:
        return containers.detect()
    except NoEngineError:
        return None


def lab_container_states(topology: Topology, record: LabRecord | None) -> dict[str, Container]:
    """device -> its container as the engine sees it (devices whose container exists)."""
    engine = _engine_for(topology, record)
    if engine is None:
        return {}
    try:
        found = containers.lab_containers(engine, topology.name)
    except ContainerError:
        return {}
    prefix = f"{topology.name}-"
    return {c.name[len(prefix) :]: c for c in found if c.name.startswith(prefix)}


def container_exec_argv(
    topology: Topology, plane: ControlPlane, device: str, argv: list[str], tty: bool
) -> list[str] | None:
    """`podman exec` / `docker exec` of `argv` in the device's container, or None if the device runs
    none (then the command runs in its namespace)."""
    record = LabRecord.load(lab_dir(topology, plane) / "lab.json")
    engine = _engine_for(topology, record)
    if engine is None or device not in lab_container_states(topology, record):
        return None
    return containers.exec_argv(engine, netns_name(topology, device), argv, tty)


def _start_sidecars(
    topology: Topology, wiring: Wiring, plane: ControlPlane, record: LabRecord, record_path: Path
) -> None:
    directory = lab_dir(topology, plane)
    for device in wiring.devices:  # endpoints first: their clients then find them registered
        env = _sidecar_env(
            plane,
            netns_name(topology, device.name),
            {
                **device.nse_env,
                "NSM_READY_FILE": str(directory / f"{device.name}.nse.ready"),
            },
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


def _start_agent_hosts(
    topology: Topology, wiring: Wiring, plane: ControlPlane, record: LabRecord, record_path: Path, hosts: int
) -> None:
    """`hosts` nsm-agent processes, each hosting an equal share of the devices (both roles of each)."""
    directory = lab_dir(topology, plane)
    shares: list[list[dict[str, Any]]] = [[] for _ in range(min(hosts, len(wiring.devices)))]
    for position, device in enumerate(wiring.devices):
        pod = netns_name(topology, device.name)
        env = {"POD_NAME": pod, **device.nse_env, **(device.nsc_env or {})}
        shares[position % len(shares)].append({"netns": str(NETNS_DIR / pod), "env": env})
    for index, routers in enumerate(shares):
        routers_file = directory / f"agents-{index}.json"
        routers_file.write_text(json.dumps({"routers": routers}, indent=1))
        argv = [sys.executable, "-m", "nsm_agent", "--routers", str(routers_file)]
        argv += ["--status", str(directory / f"agents-{index}.status")]
        env = _sidecar_env(plane, f"{topology.name}-agents-{index}", {})
        env.pop("POD_NAME")  # each router has its own
        record.processes.append(
            spawn("nsm-agent", f"agents-{index}", argv, env, directory / f"agents-{index}.log")
        )
        record.save(record_path)


def hosted_devices(directory: Path) -> dict[str, str]:
    """device namespace -> the agent host (`agents-<k>`) that hosts it, from the hosts' routers files."""
    hosted = {}
    for routers_file in directory.glob("agents-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            for router in json.loads(routers_file.read_text())["routers"]:
                hosted[Path(router["netns"]).name] = routers_file.stem
    return hosted


def _wait_for_hosts(record: LabRecord, progress: Progress, devices: int, timeout: float) -> None:
    """Until every agent host says all its routers are ready (their links verified on the client side,
    their endpoints registered); LabError if a host dies or time runs out."""
    hosts = [p for p in record.processes if p.role == "nsm-agent"]
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        ready, waiting = 0, []
        for host in hosts:
            status_file = Path(host.log).with_suffix(".status")
            try:
                status = json.loads(status_file.read_text())
                ready += int(status["ready"])
                waiting += [str(name) for name in status["not_ready"]]
            except (OSError, ValueError, KeyError, TypeError):
                pass  # not written yet (the host is still importing), or being replaced
        if ready != last:
            progress("routers ready", ready, devices)
            last = ready
        if ready == devices:
            return
        dead = [h for h in hosts if not alive(h)]
        if dead or time.monotonic() > deadline:
            why = (
                f"agent host {dead[0].device} exited (log: {dead[0].log})"
                if dead
                else f"not within {timeout:.0f}s"
            )
            shown = ", ".join(waiting[:5]) + (" and more" if len(waiting) > 5 else "")
            raise LabError(f"{devices - ready} of {devices} devices are not ready, {why}: {shown}")
        time.sleep(0.2)


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
        dead = [p for p in record.processes if p.role in AGENT_ROLES and not alive(p)]
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
    containers: int = 0


def down(topology: Topology, plane: ControlPlane) -> DownReport:
    """Remove what `up` created (or what a crashed `up` left); nothing at all if the lab is not up."""
    directory = lab_dir(topology, plane)
    record = LabRecord.load(directory / "lab.json")
    names = {device: netns_name(topology, device) for device in topology.devices}
    if record is not None:
        names.update(record.namespaces)
    processes = list(record.processes) if record is not None else []
    order = {"nsc-sidecar": 0, "nsm-agent": 0, "nse-sidecar": 1}
    live = [p for p in processes if alive(p)]
    if record is not None and sole_user(plane, topology.name):
        # This lab's nsm-local goes with it (`release`), and all it knows with it: closing every link
        # through it first would only make it remove the veths one by one (tens of ms each in the kernel;
        # a minute for a lab of a thousand routers) that deleting the namespaces removes in one batch.
        stop([p for p in live if p.role in order], 0)
    grace = SIDECAR_GRACE + CLOSE_ALLOWANCE * len(topology.links)  # as an agent host's backstop grows
    for rank in (0, 1):  # clients first (they close their links), then endpoints, then the rest (FRR)
        stop([p for p in live if order.get(p.role) == rank], grace)
    removed_containers, container_problem = _remove_containers(topology, record)
    stop([p for p in live if p.role not in order], 5)
    stray = _stop_strays(names.values())
    present = [name for name in names.values() if (NETNS_DIR / name).exists()]
    if present:
        _ip_batch([f"netns delete {name}" for name in present], force=True)
    removed = sum(not (NETNS_DIR / name).exists() for name in present)
    for name in names.values():
        frr.remove_rundir(name)
    if record is not None and record.control_plane and plane.running():
        # the service may be gone already (another lab's down, a restarted nsm-local): never block on it
        with contextlib.suppress(Exception):
            apply_service(plane, wire(topology).network_service(), delete=True)
    shutil.rmtree(directory, ignore_errors=True)
    release(plane, topology.name)  # last: it removes the run directory once nothing else is in it
    if container_problem:
        raise LabError(container_problem)
    return DownReport(len(live) + stray, removed, record is not None, removed_containers)


def _remove_containers(topology: Topology, record: LabRecord | None) -> tuple[int, str]:
    """The lab's containers, recorded or found by label, stopped and removed: (how many, problem or "")."""
    engine = _engine_for(topology, record)
    if engine is None:
        return 0, ""
    names = list(record.containers.values()) if record is not None else []
    try:
        names += [c.name for c in containers.lab_containers(engine, topology.name)]
        return containers.remove(engine, topology.name, names), ""
    except ContainerError as exc:
        return 0, f"containers of {topology.name} not removed: {exc}"


def _stop_strays(names: Iterable[str]) -> int:
    """Processes still running in the lab's namespaces (not recorded: a crash during `up`)."""
    inodes = {}
    for name in names:
        with contextlib.suppress(OSError):
            inodes[os.stat(NETNS_DIR / name).st_ino] = name
    strays: list[ProcessRecord] = []
    for pid, netns in processes_by_netns(set(inodes)):
        if pid == os.getpid():
            continue
        started = start_time_of(pid)
        if started is not None:
            strays.append(ProcessRecord("stray", inodes[netns], pid, started))
    stop(strays, 10)
    return len(strays)
