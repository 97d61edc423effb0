"""What one router pod needs: CPU and memory of its sidecars and of FRR, measured in a local lab.

`nsm-topo random ROUTERS EXTRA` writes a topology (FRR routers running OSPF), `nsm-topo up` brings it up
on this host (one network namespace per router with its nse-sidecar, nsc-sidecar if it owns links, and
FRR's zebra and ospfd, all on a private nsm-local), `nsm-topo check` waits until OSPF has converged and
every loopback answers. Each router's processes are what its Pod's containers run; the router container
of a Pod also runs FRR's `staticd` and `watchfrr` (the FRR image starts them from its `daemons` file), so
the bench starts those two in every router's namespace as soon as `up` returns and counts them with FRR.
(FRR 9 and later also run `mgmtd`; Debian bookworm's FRR 8.4 has none.)

Every process is sampled every `--sample` seconds from /proc while the lab comes up, converges, settles
and idles:

  startup CPU     CPU seconds from `nsm-topo up` until `check` passed (Python start-up, SVID fetch,
                  Requests, link checks; FRR's start and OSPF convergence)
  peak cores      the highest CPU rate seen over any 1 s window during bring-up; all the lab's processes
                  start at once and share the machine's cores, so this is bounded by contention
  idle mCPU       CPU milliseconds per second (millicores) over the `--idle` window after `--settle`
                  seconds of quiet: what a CPU request should cover
  peak RSS        VmHWM: the highest resident memory the process ever had
  steady RSS/PSS  at the end of the idle window; anon is RssAnon (private memory: what a container's
                  memory cgroup is always charged for; shared library pages are charged to whichever
                  cgroup touched them first, so a container's usage lies between PSS and RSS)

Per-router figures are summed per container (FRR: all its daemons); tables show median and max over the
routers.

Then one container of one router is restarted alone, as the kubelet restarts a container: the nsc-sidecar
of the router that owns the most links, then the nse-sidecar of the router that answers the most (SIGTERM,
wait until it is gone, start the same program with the same environment in the same namespace; the other
routers' clients heal on their own). Nothing else starts meanwhile, and it runs at niceness `--nice`
(default -10: other processes on the machine take little of its core), so its peak CPU rate (over 0.1 s
and 1 s windows, sampled every 0.05 s) is what a CPU limit would cap, and its CPU until ready what a limit
would stretch: with a limit of L cores its start takes at least (CPU until ready) / L seconds. "ready" is
the sidecar's own NSM_READY_FILE (what the pod's probes test), and for the nse also every client's again.
A `host` device (k8s-topo's, alpine's shell idling; here busybox's) is measured for a few seconds too.

Run as root from the repository root, with the project installed and FRR (apt) present; the lab gets its
own sockets and state in a temporary directory (NSM_CONNECT_TO, SPIFFE_ENDPOINT_SOCKET, NSM_TOPO_STATE_DIR,
as scripts/demo.sh does), so nothing else on the host is touched, and is taken down at the end, also on
failure or Ctrl-C.

    python bench/pod_resources.py                       # 10 routers, 4 extra links, about 1.5 min
    python bench/pod_resources.py --routers 20 --extra 10 --idle 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from benchlib import cpu_seconds, machine_busy_seconds, print_machine, table

NAME = "podres"
FRR_LIB = Path("/usr/lib/frr")
RUN_FRR = Path("/var/run/frr")
CONTAINERS = ("nse-sidecar", "nsc-sidecar", "frr")
FRR_ROLES = {"zebra", "ospfd", "bgpd", "isisd", "staticd", "watchfrr", "mgmtd"}


@dataclass
class Sample:
    round: int
    at: float
    cpu: float
    rss: int
    pss: int


@dataclass
class Tracked:
    role: str
    device: str
    pid: int
    samples: list[Sample] = field(default_factory=list)
    peak_rss: int = 0
    anon: int = 0
    gone: bool = False

    @property
    def container(self) -> str:
        return "frr" if self.role in FRR_ROLES else self.role


def _status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon (kB) of a live process; {} if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        return {}
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM", "RssAnon") if key in fields}


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Reads the lab's record (lab.json) for new processes and samples every known one."""

    def __init__(self, state: Path, interval: float) -> None:
        super().__init__(daemon=True)
        self.state = state
        self.rounds = 0
        self.interval = interval
        self.tracked: dict[int, Tracked] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def add(self, role: str, device: str, pid: int) -> None:
        self.tracked.setdefault(pid, Tracked(role, device, pid))

    def _discover(self) -> None:
        """The lab's processes (lab.json) and the nsm-local that nsm-topo started (nsm-local.json)."""
        for path, key in (
            (self.state / NAME / "lab.json", "processes"),
            (self.state / "nsm-local.json", "process"),
        ):
            try:
                found = json.loads(path.read_text()).get(key) or []
            except (OSError, ValueError):
                continue
            for process in found if isinstance(found, list) else [found]:
                self.add(str(process["role"]), str(process["device"]), int(process["pid"]))

    def sample_once(self) -> None:
        with self.lock:  # the thread and the main program both take samples
            self._discover()
            self.rounds += 1
            now = time.monotonic()
            for item in self.tracked.values():
                if item.gone:
                    continue
                cpu = cpu_seconds(item.pid)
                status = _status(item.pid)
                if cpu is None or not status:
                    item.gone = True
                    continue
                item.peak_rss = max(item.peak_rss, status.get("VmHWM", 0))
                item.anon = status.get("RssAnon", 0)
                item.samples.append(Sample(self.rounds, now, cpu, status.get("VmRSS", 0), _pss(item.pid)))

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample_once()
            self.stop.wait(self.interval)


def _cpu_at(item: Tracked, moment: float) -> float:
    """CPU seconds of the process at the last sample not after `moment` (0 before its first sample)."""
    before = [s.cpu for s in item.samples if s.at <= moment]
    return before[-1] if before else 0.0


def _peak_rate(items: Sequence[Tracked], until: float, window: float = 1.0) -> float:
    """The highest CPU rate (cores) of the processes together over any `window` seconds before `until`."""
    moments = sorted({s.at for item in items for s in item.samples if s.at <= until})
    best = 0.0
    for index, start in enumerate(moments):
        end = next((m for m in moments[index:] if m - start >= window), None)
        if end is None:
            break
        used = sum(_cpu_at(item, end) - _cpu_at(item, start) for item in items)
        best = max(best, used / (end - start))
    return best


@dataclass
class ContainerFigures:
    """One container of one router: its processes summed."""

    startup_cpu: float
    peak_cores: float
    idle_mcpu: float
    peak_rss: int
    rss: int
    pss: int
    max_pss: int
    anon: int


def figures(items: Sequence[Tracked], converged: float, idle_from: float, idle_to: float) -> ContainerFigures:
    last = [item.samples[-1] for item in items if item.samples]
    pss_by_round: dict[int, int] = defaultdict(int)
    for item in items:
        for sample in item.samples:
            pss_by_round[sample.round] += sample.pss
    idle = sum(_cpu_at(i, idle_to) - _cpu_at(i, idle_from) for i in items)
    return ContainerFigures(
        startup_cpu=sum(_cpu_at(i, converged) for i in items),
        peak_cores=_peak_rate(items, converged),
        idle_mcpu=idle / (idle_to - idle_from) * 1000,
        peak_rss=sum(i.peak_rss for i in items),
        rss=sum(s.rss for s in last),
        pss=sum(s.pss for s in last),
        max_pss=max(pss_by_round.values(), default=0),
        anon=sum(i.anon for i in items),
    )


def _topo(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "nsm_topo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"nsm-topo {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-800:]}"
        )
    return done


def _start_pod_daemons(netns: str, device: str, sampler: Sampler) -> list[int]:
    """staticd and watchfrr in a router's namespace, as the FRR image runs them; their pids."""
    rundir = RUN_FRR / netns
    pids = []
    for daemon, args in (
        ("staticd", ["-i", str(rundir / "staticd.pid"), "-f", str(rundir / "frr.conf")]),
        ("watchfrr", ["--dry", "zebra", "ospfd", "staticd"]),  # --dry: it never starts or kills anything
    ):
        pid_file = rundir / f"{daemon}.pid"
        argv = ["ip", "netns", "exec", netns, str(FRR_LIB / daemon), "-N", netns, "-d"]
        if daemon != "watchfrr":
            argv += ["--log", f"file:{rundir / (daemon + '.log')}"]
        subprocess.run([*argv, *args], capture_output=True, timeout=15, check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                pid = int(pid_file.read_text().strip())
                break
            except (OSError, ValueError):
                time.sleep(0.05)
        else:
            raise RuntimeError(f"{daemon} did not start in {netns}")
        with sampler.lock:
            sampler.add(daemon, device, pid)
        pids.append(pid)
    return pids


def _stop(pids: Iterable[int]) -> None:
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.1)


def _med_max(values: Sequence[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(max(values))})"


def report(sampler: Sampler, converged: float, idle_from: float, idle_to: float) -> None:
    by_device: dict[str, dict[str, list[Tracked]]] = defaultdict(lambda: defaultdict(list))
    others: list[Tracked] = []
    for item in sampler.tracked.values():
        if item.container in CONTAINERS:
            by_device[item.device][item.container].append(item)
        else:
            others.append(item)
    per: dict[str, list[ContainerFigures]] = defaultdict(list)
    pods: list[ContainerFigures] = []
    for containers in by_device.values():
        for name, items in containers.items():
            per[name].append(figures(items, converged, idle_from, idle_to))
        pods.append(
            figures([i for items in containers.values() for i in items], converged, idle_from, idle_to)
        )
    rows = []
    for name, found in [*((c, per[c]) for c in CONTAINERS if per[c]), ("whole pod", pods)]:
        rows.append(
            [
                name,
                len(found),
                _med_max([f.startup_cpu for f in found], "{:.2f}"),
                _med_max([f.peak_cores for f in found], "{:.2f}"),
                _med_max([f.idle_mcpu for f in found], "{:.1f}"),
                _med_max([f.peak_rss / 1024 for f in found], "{:.1f}"),
                _med_max([f.rss / 1024 for f in found], "{:.1f}"),
                _med_max([f.pss / 1024 for f in found], "{:.1f}"),
                _med_max([f.max_pss / 1024 for f in found], "{:.1f}"),
                _med_max([f.anon / 1024 for f in found], "{:.1f}"),
            ]
        )
    print("Per router, median (max) over the routers; CPU in seconds, memory in MiB:")
    print()
    headers = [
        "container",
        "n",
        "startup CPU s",
        "peak cores (1 s, contended)",
        "idle mCPU",
        "peak RSS",
        "steady RSS",
        "steady PSS",
        "peak PSS",
        "steady anon",
    ]
    print(table(headers, rows))
    print()
    frr_roles = sorted({i.role for i in sampler.tracked.values() if i.container == "frr"})
    role_rows = []
    for role in frr_roles:
        items = [i for i in sampler.tracked.values() if i.role == role]
        found = [figures([i], converged, idle_from, idle_to) for i in items]
        role_rows.append(
            [
                role,
                len(found),
                _med_max([f.startup_cpu for f in found], "{:.2f}"),
                _med_max([f.idle_mcpu for f in found], "{:.1f}"),
                _med_max([f.peak_rss / 1024 for f in found], "{:.1f}"),
                _med_max([f.pss / 1024 for f in found], "{:.1f}"),
            ]
        )
    for item in others:
        found = [figures([item], converged, idle_from, idle_to)]
        role_rows.append(
            [
                item.role,
                1,
                _med_max([f.startup_cpu for f in found], "{:.2f}"),
                _med_max([f.idle_mcpu for f in found], "{:.1f}"),
                _med_max([f.peak_rss / 1024 for f in found], "{:.1f}"),
                _med_max([f.pss / 1024 for f in found], "{:.1f}"),
            ]
        )
    print("FRR's daemons one by one, and the lab's nsm-local (not part of a pod):")
    print()
    print(table(["process", "n", "startup CPU s", "idle mCPU", "peak RSS", "steady PSS"], role_rows))


# -- one container restarted alone ---------------------------------------------------------------------


@dataclass
class Restart:
    """One sidecar restarted alone: from the start of the new process until it (and its peers) are ready."""

    role: str
    device: str
    links: int
    seconds: float
    cpu: float
    peak_100ms: float
    peak_1s: float
    peak_rss: int
    rss: int
    frr_peak_100ms: float
    """The busiest router's FRR meanwhile (links going down and up, OSPF converging again)."""
    frr_peak_1s: float
    other_cores: float
    """Cores the machine was busy with meanwhile, beyond the restarted sidecar (the lab healing, and
    whatever else runs on the machine): a busy machine lowers the sidecar's peak."""


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _cmdline(pid: int) -> list[str]:
    return [arg for arg in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") if arg]


def _links_of(role: str, env: dict[str, str]) -> int:
    """Links a sidecar owns (nsc: its k8s-topo entries) or answers (nse: ENDPOINT_LINKS)."""
    value = env.get("NS_NETWORKSERVICEMESH_IO" if role == "nsc-sidecar" else "ENDPOINT_LINKS", "")
    return len([item for item in value.split(",") if item])


def _until(done: Callable[[], bool], timeout: float, what: str, tick: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{what} after {timeout:.0f} s")
        tick()
        time.sleep(0.05)


def _ready_files(items: Iterable[Tracked]) -> list[Path]:
    files = []
    for item in items:
        with contextlib.suppress(OSError):
            ready = _environ(item.pid).get("NSM_READY_FILE")
            if ready:
                files.append(Path(ready))
    return files


def restart_alone(
    sampler: Sampler, role: str, netns: dict[str, str], work: Path, started: list[int], nice: int
) -> Restart:
    """Restart the `role` sidecar with the most links, alone, at niceness `nice` (so that other load on
    the machine takes little of its core); the new pid goes into `started`."""
    live = [i for i in sampler.tracked.values() if Path(f"/proc/{i.pid}").exists()]
    candidates = [i for i in live if i.role == role]
    envs = {item.pid: _environ(item.pid) for item in candidates}
    old = max(candidates, key=lambda item: (_links_of(role, envs[item.pid]), item.device))
    env, argv = envs[old.pid], _cmdline(old.pid)
    answered = {f"link={link}" for link in env.get("ENDPOINT_LINKS", "").split(",") if link}
    clients = [  # for an nse: the clients of the links it answers, which must heal once it is back
        i
        for i in live
        if role == "nse-sidecar"
        and i.role == "nsc-sidecar"
        and answered & set(_environ(i.pid).get("NS_NETWORKSERVICEMESH_IO", "").replace("?", "&").split("&"))
    ]
    peers = _ready_files(clients)
    own = Path(env["NSM_READY_FILE"])
    os.kill(old.pid, signal.SIGTERM)
    gone = f"{role} of {old.device} still running"
    _until(lambda: not Path(f"/proc/{old.pid}").exists(), 30, gone, lambda: None)
    # its links are down on both sides: the clients noticed before the new one starts
    _until(lambda: not any(path.exists() for path in peers), 15, "clients still ready", lambda: None)
    with (work / f"{role}-{old.device}.restart.log").open("ab") as log:
        child = subprocess.Popen(
            ["ip", "netns", "exec", netns[old.device], *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    os.setpriority(os.PRIO_PROCESS, child.pid, nice)  # `ip netns exec` execs: this is the sidecar
    started.append(child.pid)
    item = Tracked(role, old.device, child.pid)
    frr: dict[str, list[Tracked]] = defaultdict(list)
    for other in live:
        if other.container == "frr":
            frr[other.device].append(Tracked(other.role, other.device, other.pid))
    with sampler.lock:  # the lab's process now (the next restart looks for live clients there)
        sampler.tracked[child.pid] = item
    begin = time.monotonic()
    busy_from = machine_busy_seconds()
    rounds = 0

    def sample() -> None:
        nonlocal rounds
        rounds += 1
        cpu, status = cpu_seconds(child.pid), _status(child.pid)
        if cpu is None or not status or child.poll() is not None:
            raise RuntimeError(f"restarted {role} of {old.device} exited: see {log.name}")
        now = time.monotonic()
        item.peak_rss = max(item.peak_rss, status.get("VmHWM", 0))
        item.samples.append(Sample(rounds, now, cpu, status.get("VmRSS", 0), 0))
        for daemons in frr.values():
            for daemon in daemons:
                used = cpu_seconds(daemon.pid)
                if used is not None:
                    daemon.samples.append(Sample(rounds, now, used, 0, 0))

    wanted = [own, *peers]
    late = f"restarted {role} of {old.device} (or its clients) not ready"
    _until(lambda: all(path.exists() for path in wanted), 60, late, sample)
    sample()
    ready = time.monotonic()
    other_cores = (machine_busy_seconds() - busy_from - _cpu_at(item, ready)) / (ready - begin)
    for _ in range(20):  # a second more: what it does right after (monitor streams, first checks)
        time.sleep(0.05)
        sample()
    return Restart(
        role,
        old.device,
        _links_of(role, env),
        ready - begin,
        _cpu_at(item, ready),
        _peak_rate([item], item.samples[-1].at, 0.1),
        _peak_rate([item], item.samples[-1].at, 1.0),
        item.peak_rss,
        item.samples[-1].rss,
        max((_peak_rate(daemons, item.samples[-1].at, 0.1) for daemons in frr.values()), default=0.0),
        max((_peak_rate(daemons, item.samples[-1].at, 1.0) for daemons in frr.values()), default=0.0),
        other_cores,
    )


def measure_host(seconds: float = 3.0) -> tuple[int, int]:
    """RSS and PSS (kB) of a k8s-topo host device: the manifests' idling shell, busybox's as in alpine."""
    from nsm_topo.kube.manifests import HOST_COMMAND

    shell = shutil.which("busybox")
    if shell is None:
        return 0, 0
    child = subprocess.Popen(
        [shell, *HOST_COMMAND],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(seconds)
        pids = [child.pid] + [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _ppid(int(entry.name)) == child.pid
        ]
        return sum(_status(pid).get("VmRSS", 0) for pid in pids), sum(_pss(pid) for pid in pids)
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(10)


def _ppid(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(text[text.rindex(")") + 2 :].split()[1])


def report_restarts(restarts: Sequence[Restart], host: tuple[int, int]) -> None:
    print("One sidecar restarted alone (nothing else starting); CPU in seconds, memory in MiB:")
    print()
    rows = [
        [
            r.role,
            r.device,
            r.links,
            f"{r.seconds:.2f}",
            f"{r.cpu:.2f}",
            f"{r.peak_100ms:.2f}",
            f"{r.peak_1s:.2f}",
            f"{r.peak_rss / 1024:.1f}",
            f"{r.rss / 1024:.1f}",
            f"{r.frr_peak_100ms:.2f} / {r.frr_peak_1s:.2f}",
            f"{r.other_cores:.2f}",
        ]
        for r in restarts
    ]
    headers = [
        "container",
        "router",
        "links",
        "s until ready",
        "CPU s until ready",
        "peak cores (0.1 s)",
        "peak cores (1 s)",
        "peak RSS",
        "RSS after",
        "busiest FRR meanwhile, peak cores 0.1 s / 1 s",
        "other cores busy",
    ]
    print(table(headers, rows))
    print()
    print(
        f"host device (busybox sh idling, as the manifests' alpine host): RSS {host[0] / 1024:.1f} MiB, "
        f"PSS {host[1] / 1024:.1f} MiB, no CPU"
    )


class _Interrupted(Exception):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routers", type=int, default=10)
    parser.add_argument("--extra", type=int, default=4, help="links beyond the spanning tree (default 4)")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--settle", type=float, default=10.0, help="quiet seconds before the idle window")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of the idle window (default 30)")
    parser.add_argument("--sample", type=float, default=0.2, help="sampling interval (default 0.2 s)")
    parser.add_argument(
        "--nice", type=int, default=-10, help="niceness of the sidecars restarted alone (default -10)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("pod_resources: needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    print_machine()
    work = Path(tempfile.mkdtemp(prefix="nsm-podres-", dir="/tmp"))
    env = {
        **os.environ,
        "NSM_CONNECT_TO": f"unix://{work}/nsm.sock",
        "SPIFFE_ENDPOINT_SOCKET": f"unix://{work}/agent.sock",
        "NSM_TOPO_STATE_DIR": str(work / "state"),
    }
    topology = work / f"{NAME}.yml"
    sampler = Sampler(work / "state", args.sample)
    extra_pids: list[int] = []
    try:
        _topo(
            env,
            "random",
            str(args.routers),
            str(args.extra),
            "--seed",
            str(args.seed),
            "--name",
            NAME,
            "-o",
            str(work),
        )
        sampler.start()
        started = time.monotonic()
        _topo(env, "up", str(topology))
        up = time.monotonic()
        record = json.loads((work / "state" / NAME / "lab.json").read_text())
        for device, netns in record["namespaces"].items():
            extra_pids += _start_pod_daemons(netns, device, sampler)
        _topo(env, "check", str(topology))
        converged = time.monotonic()
        time.sleep(args.settle)
        idle_from = time.monotonic()
        sampler.sample_once()
        busy_from = machine_busy_seconds()
        time.sleep(args.idle)
        sampler.sample_once()
        busy_to = machine_busy_seconds()
        idle_to = time.monotonic()
        ours = sum(_cpu_at(i, idle_to) - _cpu_at(i, idle_from) for i in sampler.tracked.values())
        other_idle = (busy_to - busy_from - ours) / (idle_to - idle_from)
        sampler.stop.set()
        sampler.join()
        print(
            f"{args.routers} routers, {args.routers - 1 + args.extra} links (seed {args.seed}): "
            f"up in {up - started:.1f} s, OSPF converged and every loopback answering "
            f"{converged - started:.1f} s after the start; settle {args.settle:.0f} s, idle window "
            f"{idle_to - idle_from:.0f} s, sampled every {args.sample} s; other processes kept "
            f"{other_idle:.2f} cores busy during the idle window"
        )
        print()
        report(sampler, converged, idle_from, idle_to)
        print(flush=True)
        restarts = [
            restart_alone(sampler, role, record["namespaces"], work, extra_pids, args.nice)
            for role in ("nsc-sidecar", "nse-sidecar")
        ]
        report_restarts(restarts, measure_host())
        return 0
    except (_Interrupted, KeyboardInterrupt):
        print("pod_resources: interrupted, taking the lab down", file=sys.stderr)
        return 1
    except (RuntimeError, OSError) as exc:
        print(f"pod_resources: {exc}", file=sys.stderr)
        return 1
    finally:
        sampler.stop.set()
        _stop(reversed(extra_pids))  # restarted sidecars, then watchfrr before what it watches
        if topology.exists():
            subprocess.run(
                [sys.executable, "-m", "nsm_topo", "down", str(topology)],
                env=env,
                capture_output=True,
                timeout=120,
                check=False,
            )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
