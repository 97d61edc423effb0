"""Soak: many links with short tokens for a long time, nsm-local killed and started again on the way.

The lab is links.py's `chain` with `--parallel` links per pair (default 20): r<i> owns `--parallel` links
to r<i+1>, so 200 links are 11 routers, 10 clients of 20 links each and 10 endpoints serving 20 each (the
first router's endpoint serves none). Few processes with many links each keep 200 links within reach
of a 2-4 core machine (a router with one link costs ~1.3 CPU s to start and ~68 MiB); 20 links per
client keeps a client's O(k) check of its namespace per refresh small. Each endpoint gets a NetworkService
of its own (`topo-r<i>`, links.py's manifest renamed): nsm-local accepts at most 128 selectors, so 64
links, per NetworkService. The endpoints start together; the clients start one after another, each once
the one before is ready (200 first Requests at once, each with a 2 s deadline, time out and retry in a
storm on 2 cores; what the soak is about starts once every link is up).

The clients get NSM_MAX_TOKEN_LIFETIME=`--token` (default 5s) and NSM_REQUEST_TIMEOUT=`--request-timeout`
(default 2s): a client refreshes at a fifth of its path's earliest expiry (every second with 5 s tokens),
and a server closes a connection at its expiry minus the Request's deadline, so the timeout must stay
well below the token lifetime (with the default 15 s every connection would be closed at once).
`--restarts` times, evenly spaced over the run, nsm-local is killed with SIGKILL and started again on the
same socket and state directory (as tests/system/test_lifecycle.py does once).

Every sidecar serves Prometheus metrics on 127.0.0.1 in its own netns (nsc 9464, nse 9465; `lo` is
brought up there) and nsm-local on 127.0.0.1:0 (the address it logs as `metrics.serving`); they are
scraped from inside each netns (setns in a worker thread, no extra process). Measured:

- every `--sample` s: per process open fds, asyncio tasks, RSS, CPU (process_open_fds, nsm_asyncio_tasks,
  process_resident_memory_bytes, process_cpu_seconds_total), the clients' nsm_links{state} and the
  connections nsm-local holds;
- every `--dataplane` s (default 1): one `ip -j addr` per namespace; a link is up when both its
  interfaces are present with a global address. A link's outage is counted from the last sample that saw
  it up to the first that sees it up again (an upper bound: it can exceed the real outage by up to two
  sampling gaps);
- from the clients' logs: every heal, `link.healing` to the link's next `link.established` (a reselect,
  Close + new Request, is part of the same heal), refreshes, failed requests.

Verdict (exit 1 on FAIL), the criteria the issue sets, with the tolerances below:

- no link down longer than one heal: longest outage <= longest heal + 2 x the longest gap between two
  data-plane samples (the outage's measuring error) + 0.5 s; with no heal at all, no outage longer than
  that tolerance;
- every heal quick: no heal longer than HEAL_BOUND (15 s), so a storm of slow heals does not pass the
  criterion above by making "one heal" long;
- fds and tasks flat: per process, the lower quartile of the last third of the steady samples (at
  least three) minus the highest sample of the first third is at most FD_TOLERANCE fds /
  TASK_TOLERANCE tasks. A refresh in flight holds a relay connection and tasks for a moment (a client
  of 20 links moves between 22 and ~46 fds and 90-108 tasks, nsm-local with 200 connections between
  442 and ~470 fds, from one sample to the next; with 5 s tokens dozens are in flight at any time) and a
  heal for longer. The lower quartile is the level a process comes back to between them, whatever the
  refresh rate, and one dip does not move it; a leak per refresh, heal or restart raises it by hundreds
  to thousands over a run. It is compared with the first third's highest sample, not its lower
  quartile: refreshes in flight lower a client's task count as well as raise it (a link waiting for its
  next refresh holds two waiter tasks that a refresh in flight does not), so two lower quartiles of the
  same band differ by chance (a leak-free 200-link run had one client at 90 -> 103 while every one of its
  samples stayed within 88-108). A growth smaller than that band cannot be told from refreshes in flight.
  (Medians failed a 60-link run with 5 s tokens on the refreshes in flight alone: nsm-local's tasks sat
  at 355 between them from start to end.);
- memory: the drift of the median RSS at most max(MEMORY_TOLERANCE_MIB, MEMORY_TOLERANCE_FRACTION x RSS);
- every sidecar still alive, every link up at the end, every restart's connections back (nsm-local's
  nsm_connections back at the number of links within RECOVERY_TIMEOUT).

What it costs: every link refreshes at a fifth of the token lifetime, and a refresh costs 30-90 ms of CPU
over the client, nsm-local and the endpoint (more the more interfaces the client's namespace holds: its
check is O(interfaces); docs/performance.md, "Soak"). 200 links with 5 s tokens are 200 refreshes a
second, 6-18 cores: on a smaller machine refreshes queue past their deadline, connections expire and links
flap. `--token 60s` (17 refreshes a second, ~1.5 cores) or fewer `--links` fit 2 cores.

Everything (processes, namespaces, the temp directory) is removed at the end, also on failure or Ctrl-C;
with `--keep-logs`, or on failure, the logs are kept and their directory printed. Needs root and iproute2.

    python bench/soak.py                                      # 200 links, 5s tokens, 10 min, 2 restarts
    python bench/soak.py --token 60s                          # 200 links within reach of 2 cores
    python bench/soak.py --links 10 --parallel 5 --minutes 1 --restarts 1 --sample 5   # tests/system
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import itertools
import math
import os
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml
from benchlib import (
    machine_busy_seconds,
    median,
    own_cpu_seconds,
    percentile,
    print_machine,
    run_quiet,
    table,
)
from links import (
    LINKS_PER_ENDPOINT,
    MAX_ROUTERS,
    SERVICE,
    BenchFailed,
    Lab,
    PlannedLink,
    Proc,
    _on_sigterm,
    client_entries,
    log_warnings,
    manifest,
    plan_links,
    wait_for,
)

NSC_METRICS_PORT = 9464
NSE_METRICS_PORT = 9465
FD_TOLERANCE = 8
TASK_TOLERANCE = 8
MEMORY_TOLERANCE_MIB = 8.0
MEMORY_TOLERANCE_FRACTION = 0.10
OUTAGE_SLACK = 0.5  # s, on top of two data-plane sampling gaps
HEAL_BOUND = 15.0
"""s: the longest a heal may take. A heal is a refresh or a reselect (Close + Request, each bounded by the
request timeout) with retries; after a restart of nsm-local it also waits for the endpoints to register
again (3-7 s seen). Longer heals mean a storm, which "no link down longer than one heal" alone lets pass
(a 200-link run with heals of 42 s did)."""
STEADY_WINDOW = 3  # at least this many samples (else a third of them) make the first / last window
RECOVERY_TIMEOUT = 120.0  # s for every connection to be back at a restarted nsm-local
KINDS = ("nsc-sidecar", "nse-sidecar", "nsm-local")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class SoakConfig:
    links: int = 200
    token: str = "5s"
    request_timeout: str = "2s"
    minutes: float = 10.0
    restarts: int = 2
    sample: float = 10.0
    dataplane: float = 1.0
    parallel: int = 20
    warmup: float | None = None
    insecure: bool = False
    bringup_timeout: float = 300.0
    keep_logs: bool = False

    @property
    def routers(self) -> int:
        return math.ceil(self.links / self.parallel) + 1

    @property
    def duration(self) -> float:
        return self.minutes * 60

    @property
    def warmup_seconds(self) -> float:
        if self.warmup is not None:
            return self.warmup
        return min(60.0, max(20.0, self.duration / 10))

    def problem(self) -> str | None:
        if self.links < 1:
            return "--links must be at least 1"
        if not 1 <= self.parallel <= LINKS_PER_ENDPOINT:
            return f"--parallel must be between 1 and {LINKS_PER_ENDPOINT}"
        if self.routers > MAX_ROUTERS:
            return f"{self.links} links at --parallel {self.parallel} need more than {MAX_ROUTERS} routers"
        if self.restarts < 0 or self.sample <= 0 or self.dataplane <= 0 or self.minutes <= 0:
            return "--restarts must be >= 0, --sample, --dataplane and --minutes > 0"
        if self.duration < self.warmup_seconds + STEADY_WINDOW * 2 * self.sample:
            return "the run is too short for two windows of steady samples after the warm-up"
        return None


# --- scraping metrics inside a namespace -----------------------------------------------------------------

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Target:
    """One process's /metrics: where it listens and in which network namespace."""

    kind: str
    name: str
    proc: Proc
    address: str
    netns_fd: int  # fd of the namespace to scrape from (the host's for nsm-local)


@contextmanager
def in_netns(fd: int) -> Iterator[None]:
    """Run the body with this thread in another network namespace (setns is per thread)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    yield


def scrape(target: Target, host_fd: int) -> Metrics | None:
    """Every sample of the target's /metrics by (name, labels), or None if it did not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    host, _, port = target.address.rpartition(":")
    for _ in range(2):  # one retry: a scrape can meet a process mid-restart or a busy loop
        try:
            with in_netns(target.netns_fd):
                connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=5)
                try:
                    connection.request("GET", "/metrics")
                    response = connection.getresponse()
                    text = response.read().decode()
                finally:
                    connection.close()
            if response.status != 200:
                continue
            return {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
        except (OSError, http.client.HTTPException, ValueError):
            continue
        finally:
            _libc.setns(host_fd, CLONE_NEWNET)  # pool threads are reused: always go home
    return None


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


# --- what is recorded -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float  # s since every link was up
    kind: str
    name: str
    fds: float
    tasks: float
    rss_mib: float
    cpu: float
    links_established: float = 0.0  # clients: links established or refreshing
    connections: float = 0.0  # nsm-local and endpoints: connections held


@dataclass
class Restart:
    at: float  # s since every link was up, when SIGKILL was sent
    listening: float = 0.0  # s from SIGKILL until the new nsm-local serves
    recovered: float | None = None  # s from SIGKILL until it holds every connection again
    name: str = ""


@dataclass
class Heal:
    link: str  # owner router's client name and conn id
    start: float  # s since every link was up
    duration: float
    ended: bool


@dataclass
class Outage:
    link: str
    start: float  # last sample up (s since every link was up)
    duration: float  # to the first sample up again (or the end)
    ended: bool


@dataclass
class SoakResult:
    config: SoakConfig
    routers: int = 0
    clients: int = 0
    endpoints: int = 0
    bringup: float = 0.0
    elapsed: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    scrape_failures: Counter[str] = field(default_factory=Counter)
    restarts: list[Restart] = field(default_factory=list)
    heals: list[Heal] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)
    dataplane_samples: int = 0
    dataplane_max_gap: float = 0.0
    links_down_at_end: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)  # client log events over the run
    problems: Counter[str] = field(default_factory=Counter)
    cpu_cores: dict[str, float] = field(default_factory=dict)  # kind -> average cores over the run
    others_busy: float = 0.0
    log_dir: str = ""


# --- the run ----------------------------------------------------------------------------------------------


def _log_field(proc: Proc, event: str, key: str) -> str | None:
    try:
        text = proc.log_path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if f" event={event} " in line + " ":
            for part in line.split():
                if part.startswith(key + "="):
                    return part[len(key) + 1 :]
    return None


def _log_wall(line: str) -> float | None:
    if not line.startswith("ts="):
        return None
    return datetime.fromisoformat(line[3 : line.index(" ")]).timestamp()


def service_name(peer: int) -> str:
    return f"{SERVICE}-r{peer}"


def service_manifest(peer: int, links: Sequence[PlannedLink]) -> str:
    """links.py's NetworkService for the links one endpoint serves, named after it: nsm-local accepts at
    most 128 selectors (64 links) per NetworkService, so one service for 200 links would be refused."""
    document = yaml.safe_load(manifest(links))
    document["metadata"]["name"] = service_name(peer)
    return str(yaml.safe_dump(document, sort_keys=False))


def entries(links: Sequence[PlannedLink]) -> str:
    """links.py's client entries, each naming the service of its link's endpoint."""
    return ",".join(
        entry.replace(f"{SERVICE}/", f"{service_name(link.peer)}/", 1)
        for link, entry in zip(links, client_entries(links).split(","), strict=True)
    )


def start_manager(lab: Lab, generation: int) -> tuple[Proc, str]:
    """nsm-local serve (as links.py's Lab does) plus its metrics endpoint; waits until it listens."""
    args = [
        "serve",
        "--listen",
        lab.socket_url,
        "--state-dir",
        str(lab.directory),
        "--prometheus-listen-on",
        "127.0.0.1:0",
    ]
    args += ["--insecure"] if lab.insecure else ["--workload-api", lab.workload_api_url]
    name = "nsm-local" if generation == 0 else f"nsm-local-{generation}"
    proc = lab.start("nsm-local", name, {}, args=args)
    wait_for(
        lambda: (
            _log_field(proc, "server.listening", "event") is not None
            and _log_field(proc, "metrics.serving", "address") is not None
        ),
        time.monotonic() + 30,
        f"{name} to listen",
        lab,
    )
    return proc, _log_field(proc, "metrics.serving", "address") or ""


class DataPlane(threading.Thread):
    """Reads every namespace's interfaces every `interval` s: which links are up, sample by sample."""

    def __init__(self, lab: Lab, links: Sequence[PlannedLink], interval: float) -> None:
        super().__init__(name="dataplane", daemon=True)
        self.lab, self.links, self.interval = lab, links, interval
        self.samples: list[tuple[float, frozenset[str]]] = []  # (monotonic, labels of the links up)
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def up_now(self) -> frozenset[str]:
        found = self.lab.interfaces()
        return frozenset(
            link.label
            for link in self.links
            if found.get(link.owner, {}).get(link.owner_if) and found.get(link.peer, {}).get(link.peer_if)
        )

    def run(self) -> None:
        next_at = time.monotonic()
        try:
            while not self.stopping.is_set():
                up = self.up_now()
                self.samples.append((time.monotonic(), up))
                next_at = max(next_at + self.interval, time.monotonic())
                self.stopping.wait(next_at - time.monotonic())
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def outages(
    samples: Sequence[tuple[float, frozenset[str]]], labels: Sequence[str], t0: float, end: float
) -> list[Outage]:
    found = []
    for label in labels:
        last_up: float | None = None
        down = False
        for when, up in samples:
            if label in up:
                if down and last_up is not None:
                    found.append(Outage(label, last_up - t0, when - last_up, True))
                down, last_up = False, when
            else:
                down = True
        if down and last_up is not None:
            found.append(Outage(label, last_up - t0, end - last_up, False))
    return found


def heals(clients: Sequence[Proc], t0_wall: float, end_wall: float) -> tuple[list[Heal], Counter[str]]:
    """Every heal in the clients' logs after t0 (healing to the link's next established), and event counts."""
    found: list[Heal] = []
    events: Counter[str] = Counter()
    for proc in clients:
        open_heals: dict[str, float] = {}
        try:
            lines = proc.log_path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if " event=" not in line:
                continue
            when = _log_wall(line)
            if when is None or when < t0_wall:
                continue
            if when > end_wall:
                break
            event = line.split(" event=", 1)[1].split(" ", 1)[0]
            events[event] += 1
            conn = next((p[5:] for p in line.split() if p.startswith("conn=")), None)
            if conn is None:
                continue
            if event == "link.healing" and conn not in open_heals:
                open_heals[conn] = when
            elif event in ("link.established", "link.closed") and conn in open_heals:
                start = open_heals.pop(conn)
                found.append(Heal(conn, start - t0_wall, when - start, event == "link.established"))
        for conn, start in open_heals.items():
            found.append(Heal(conn, start - t0_wall, end_wall - start, False))
    return found, events


def run_soak(config: SoakConfig, progress: Callable[[str], None] | None = None) -> SoakResult:
    say = progress or (lambda text: None)
    problem = config.problem()
    if problem:
        raise ValueError(problem)
    links = plan_links("chain", config.routers, config.parallel)[: config.links]
    owners = sorted({link.owner for link in links})
    result = SoakResult(config, routers=config.routers, clients=len(owners), endpoints=config.routers)
    lab = Lab(keep_directory=config.keep_logs, insecure=config.insecure)
    result.log_dir = str(lab.directory)
    host_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    netns_fds: list[int] = []
    dataplane: DataPlane | None = None
    try:
        nsm, nsm_address = start_manager(lab, 0)
        for peer in sorted({link.peer for link in links}):
            lab.apply(service_manifest(peer, [k for k in links if k.peer == peer]))
        for router in range(1, config.routers + 1):
            name = lab.add_netns(router)
            run_quiet("ip", "-n", name, "link", "set", "lo", "up")
        fds = {router: os.open(f"/run/netns/{name}", os.O_RDONLY) for router, name in lab.namespaces.items()}
        netns_fds.extend(fds.values())

        say(f"starting {config.routers} endpoints and {len(owners)} clients for {len(links)} links")
        started = time.monotonic()
        deadline = started + config.bringup_timeout
        endpoints = [
            lab.start(
                "nse-sidecar",
                f"r{router}-nse",
                {
                    "ENDPOINT_NETWORK_SERVICE": service_name(router),
                    "ENDPOINT_LABELS": f"device=r{router}",
                    "IP_ADDRESS": f"10.60.{router}.0/24",
                    "NSM_PROMETHEUS_LISTEN_ON": f"127.0.0.1:{NSE_METRICS_PORT}",
                },
                lab.namespaces[router],
                ready=True,
            )
            for router in range(1, config.routers + 1)
        ]
        wait_for(lambda: all(p.ready() for p in endpoints), deadline, "every endpoint registered", lab)
        # One client at a time, each once the one before is ready: all first Requests at once, each with
        # the short request timeout, time out and retry in a storm on a small machine.
        clients = []
        for owner in owners:
            client = lab.start(
                "nsc-sidecar",
                f"r{owner}-nsc",
                {
                    "NS_NETWORKSERVICEMESH_IO": entries([k for k in links if k.owner == owner]),
                    "NSM_MAX_TOKEN_LIFETIME": config.token,
                    "NSM_REQUEST_TIMEOUT": config.request_timeout,
                    "NSM_PROMETHEUS_LISTEN_ON": f"127.0.0.1:{NSC_METRICS_PORT}",
                    "NSM_LOG_LEVEL": "DEBUG",  # the refreshes counted from the log are debug lines
                },
                lab.namespaces[owner],
                ready=True,
            )
            clients.append(client)
            wait_for(client.ready, deadline, f"{client.name} ready", lab)
        dataplane = DataPlane(lab, links, config.dataplane)
        wait_for(
            lambda: len(dataplane.up_now()) == len(links),
            deadline,
            "every link in both namespaces",
            lab,
            interval=0.2,
        )
        t0, t0_wall = time.monotonic(), time.time()
        result.bringup = t0 - started
        say(f"all {len(links)} links up after {result.bringup:.1f} s; soaking for {config.duration:g} s")
        dataplane.start()

        targets = [Target("nsm-local", nsm.name, nsm, nsm_address, host_fd)]
        targets += [
            Target("nse-sidecar", p.name, p, f"127.0.0.1:{NSE_METRICS_PORT}", fds[r])
            for r, p in zip(range(1, config.routers + 1), endpoints, strict=True)
        ]
        targets += [
            Target("nsc-sidecar", p.name, p, f"127.0.0.1:{NSC_METRICS_PORT}", fds[r])
            for r, p in zip(owners, clients, strict=True)
        ]
        restart_at = [config.duration * k / (config.restarts + 1) for k in range(1, config.restarts + 1)]
        busy_base, own_base = machine_busy_seconds(), own_cpu_seconds()
        cpu_base: dict[str, float] = {}
        cpu_last: dict[str, float] = {}
        pending: Restart | None = None
        next_sample = 0.0
        generation = 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            while True:
                now = time.monotonic() - t0
                if dataplane.error is not None:
                    raise BenchFailed(f"data-plane sampling failed: {dataplane.error!r}")
                dead = [p.name for p in endpoints + clients if not p.alive()]
                if dead:
                    result.dead = dead
                    raise BenchFailed(f"{dead[0]} exited during the soak")
                if restart_at and now >= restart_at[0]:
                    restart_at.pop(0)
                    generation += 1
                    pending = Restart(now)
                    say(f"t={now:.0f}s: SIGKILL to nsm-local (restart {generation})")
                    old = targets[0].proc
                    old.popen.send_signal(signal.SIGKILL)
                    old.popen.wait(10)
                    lab.processes.remove(old)  # wait_for fails on dead processes; it is reaped already
                    nsm, nsm_address = start_manager(lab, generation)
                    pending.listening = time.monotonic() - t0 - pending.at
                    pending.name = nsm.name
                    cpu_base[nsm.name] = 0.0
                    targets[0] = Target("nsm-local", nsm.name, nsm, nsm_address, host_fd)
                    result.restarts.append(pending)
                if pending is not None:
                    plane = scrape(targets[0], host_fd)
                    if plane is not None and metric(plane, "nsm_connections") >= len(links):
                        pending.recovered = time.monotonic() - t0 - pending.at
                        say(f"t={now:.0f}s: every connection back after {pending.recovered:.1f} s")
                        pending = None
                    elif time.monotonic() - t0 - pending.at > RECOVERY_TIMEOUT:
                        say(f"t={now:.0f}s: connections not back after {RECOVERY_TIMEOUT:g} s")
                        pending = None
                if now >= next_sample:
                    t = now
                    found = list(pool.map(lambda target: scrape(target, host_fd), targets))
                    for target, metrics in zip(targets, found, strict=True):
                        if metrics is None:
                            result.scrape_failures[target.name] += 1
                            continue
                        cpu = metric(metrics, "process_cpu_seconds_total")
                        cpu_base.setdefault(target.name, cpu)
                        cpu_last[target.name] = cpu
                        result.samples.append(
                            Sample(
                                t,
                                target.kind,
                                target.name,
                                metric(metrics, "process_open_fds"),
                                metric(metrics, "nsm_asyncio_tasks"),
                                metric(metrics, "process_resident_memory_bytes") / 2**20,
                                cpu,
                                metric(metrics, "nsm_links", state="established")
                                + metric(metrics, "nsm_links", state="refreshing"),
                                metric(metrics, "nsm_connections"),
                            )
                        )
                    next_sample += config.sample
                if now >= config.duration:
                    break
                tick = 0.5 if pending is not None else 1.0
                time.sleep(min(tick, max(0.05, next_sample - (time.monotonic() - t0))))
        end, end_wall = time.monotonic(), time.time()
        result.elapsed = end - t0
        dataplane.stopping.set()
        dataplane.join(10)
        last_up = dataplane.up_now()
        result.links_down_at_end = sorted(k.label for k in links if k.label not in last_up)
        samples = dataplane.samples
        result.dataplane_samples = len(samples)
        result.dataplane_max_gap = max((b[0] - a[0] for a, b in itertools.pairwise(samples)), default=0.0)
        result.outages = outages(samples, [k.label for k in links], t0, end)
        result.heals, result.events = heals(clients, t0_wall, end_wall)
        by_kind: dict[str, float] = defaultdict(float)
        for sample_name, cpu in cpu_last.items():
            kind = next(s.kind for s in result.samples if s.name == sample_name)
            by_kind[kind] += cpu - cpu_base.get(sample_name, cpu)
        result.cpu_cores = {kind: seconds / result.elapsed for kind, seconds in by_kind.items()}
        ours = sum(by_kind.values()) + own_cpu_seconds() - own_base
        result.others_busy = max(0.0, machine_busy_seconds() - busy_base - ours) / result.elapsed
        say("stopping")
        Lab.stop(clients, 30)
        result.problems = log_warnings(lab.processes)
        if not all(c.ok for c in verdict(result)):
            lab.keep_directory = True  # the logs of a failed soak are kept, as on any failure
        return result
    except BaseException:
        lab.keep_directory = True
        raise
    finally:
        if dataplane is not None:
            dataplane.stopping.set()
            if dataplane.is_alive():
                dataplane.join(10)
        lab.close()
        for fd in [*netns_fds, host_fd]:
            os.close(fd)


# --- the verdict --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    name: str
    ok: bool
    detail: str


def steady(result: SoakResult) -> dict[str, list[Sample]]:
    """Each process's steady samples: after the warm-up; nsm-local's from its last instance's recovery."""
    start = result.config.warmup_seconds
    nsm_start = start
    if result.restarts:
        last = result.restarts[-1]
        nsm_start = max(start, last.at + (last.recovered if last.recovered is not None else last.listening))
    found: dict[str, list[Sample]] = defaultdict(list)
    for sample in result.samples:
        if sample.kind == "nsm-local":
            if result.restarts and sample.name != result.restarts[-1].name:
                continue
            if sample.t >= nsm_start:
                found[sample.name].append(sample)
        elif sample.t >= start:
            found[sample.name].append(sample)
    return found


@dataclass(frozen=True)
class Drift:
    kind: str
    name: str  # the process with the largest drift of this metric
    first: float
    last: float

    @property
    def change(self) -> float:
        return self.last - self.first


def lower_quartile(values: Sequence[float]) -> float:
    return percentile(sorted(values), 0.25)


FLOOR_OF = {"fds": lower_quartile, "tasks": lower_quartile}
"""How the last window of samples is summed up: fds and tasks by the level a process comes back to
between refreshes in flight (module docstring), memory by the median."""

CEILING_OF = {"fds": max, "tasks": max}
"""How the first window is summed up: fds and tasks by the top of their band (module docstring), memory
by the median."""


def drifts(result: SoakResult, attribute: str) -> dict[str, Drift]:
    """Per process kind, the process whose `attribute` grew most: the last window's level (`FLOOR_OF`,
    else the median) minus the first's (`CEILING_OF`, else the median), each window a third of the steady
    samples (at least STEADY_WINDOW)."""
    level = FLOOR_OF.get(attribute, median)
    start: Callable[[Sequence[float]], float] = CEILING_OF.get(attribute, median)
    worst: dict[str, Drift] = {}
    for name, samples in steady(result).items():
        window = min(max(STEADY_WINDOW, len(samples) // 3), len(samples) // 2)
        if window == 0:
            continue
        values = [getattr(s, attribute) for s in samples]
        drift = Drift(samples[0].kind, name, start(values[:window]), level(values[-window:]))
        if drift.kind not in worst or drift.change > worst[drift.kind].change:
            worst[drift.kind] = drift
    return worst


def memory_bound(drift: Drift) -> float:
    return max(MEMORY_TOLERANCE_MIB, MEMORY_TOLERANCE_FRACTION * drift.first)


def outage_tolerance(result: SoakResult) -> float:
    return 2 * max(result.dataplane_max_gap, result.config.dataplane) + OUTAGE_SLACK


def verdict(result: SoakResult) -> list[Criterion]:
    criteria = []
    longest_outage = max(result.outages, key=lambda o: o.duration, default=None)
    longest_heal = max(result.heals, key=lambda h: h.duration, default=None)
    heal = longest_heal.duration if longest_heal else 0.0
    allowed = heal + outage_tolerance(result)
    outage = longest_outage.duration if longest_outage else 0.0
    where = f" ({longest_outage.link} at t={longest_outage.start:.0f}s)" if longest_outage else ""
    criteria.append(
        Criterion(
            "no link down longer than one heal",
            outage <= allowed,
            f"longest outage {outage:.1f} s{where}, longest heal {heal:.1f} s, allowed {allowed:.1f} s "
            f"(heal + 2 x {max(result.dataplane_max_gap, result.config.dataplane):.1f} s sampling gap "
            f"+ {OUTAGE_SLACK} s)",
        )
    )
    slow = f" ({longest_heal.link} at t={longest_heal.start:.0f}s)" if longest_heal else ""
    criteria.append(
        Criterion(
            "every heal quick",
            heal <= HEAL_BOUND,
            f"longest heal {heal:.1f} s{slow}, {len(result.heals)} heals, allowed {HEAL_BOUND:.0f} s each",
        )
    )
    flat = (("fds", "open fds", FD_TOLERANCE), ("tasks", "tasks", TASK_TOLERANCE))
    for attribute, label, tolerance in flat:
        found = drifts(result, attribute)
        bad = [d for d in found.values() if d.change > tolerance]
        criteria.append(
            Criterion(
                f"{label} flat",
                bool(found) and not bad,
                "; ".join(f"{d.kind} {d.first:g} -> {d.last:g} ({d.name})" for d in found.values())
                + f" (allowed growth {tolerance} per process)",
            )
        )
    found = drifts(result, "rss_mib")
    bad = [d for d in found.values() if d.change > memory_bound(d)]
    criteria.append(
        Criterion(
            "memory growth bounded",
            bool(found) and not bad,
            "; ".join(
                f"{d.kind} {d.first:.1f} -> {d.last:.1f} MiB ({d.name}, allowed +{memory_bound(d):.1f})"
                for d in found.values()
            ),
        )
    )
    criteria.append(Criterion("every sidecar alive", not result.dead, ", ".join(result.dead) or "all alive"))
    criteria.append(
        Criterion(
            "every link up at the end",
            not result.links_down_at_end,
            ", ".join(result.links_down_at_end) or f"all {result.config.links} up",
        )
    )
    unrecovered = [r for r in result.restarts if r.recovered is None]
    criteria.append(
        Criterion(
            "every restart recovered",
            len(result.restarts) == result.config.restarts and not unrecovered,
            f"{len(result.restarts)} of {result.config.restarts} restarts, "
            + (
                f"{len(unrecovered)} without every connection back" if unrecovered else "all connections back"
            ),
        )
    )
    return criteria


# --- the report ---------------------------------------------------------------------------------------------


def _span(values: Sequence[float], digits: int = 0) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if low == high else f"{low:.{digits}f}-{high:.{digits}f}"


def report(result: SoakResult) -> bool:
    """Prints the tables and the verdict; True if every criterion holds."""
    config = result.config
    mode = "insecure (plaintext)" if config.insecure else "secure (mTLS, SPIFFE SVIDs from nsm-local)"
    print(
        table(
            [
                "links",
                "routers",
                "clients",
                "endpoints",
                "links per client",
                "token",
                "request timeout",
                "run",
                "restarts",
                "sample",
                "data plane",
                "security",
                "bring-up",
            ],
            [
                [
                    config.links,
                    result.routers,
                    result.clients,
                    result.endpoints,
                    config.parallel,
                    config.token,
                    config.request_timeout,
                    f"{result.elapsed:.0f} s",
                    config.restarts,
                    f"{config.sample:g} s",
                    f"{config.dataplane:g} s",
                    mode,
                    f"{result.bringup:.1f} s",
                ]
            ],
        )
    )
    print()
    print("Samples over time (s since every link was up): min-max over the processes of each kind;")
    print("RSS in MiB;", end=" ")
    print("nsc links = established or refreshing per client; nsm conns = connections nsm-local holds")
    print()
    by_time: dict[float, list[Sample]] = defaultdict(list)
    for sample in result.samples:
        by_time[sample.t].append(sample)
    rows = []
    for t, group in sorted(by_time.items()):
        row: list[object] = [f"{t:.0f}"]
        for kind in KINDS:
            of_kind = [s for s in group if s.kind == kind]
            row += [
                _span([s.fds for s in of_kind]),
                _span([s.tasks for s in of_kind]),
                _span([s.rss_mib for s in of_kind], 1),
            ]
        row.append(_span([s.links_established for s in group if s.kind == "nsc-sidecar"]))
        row.append(_span([s.connections for s in group if s.kind == "nsm-local"]))
        rows.append(row)
    print(
        table(
            [
                "t",
                "nsc fds",
                "nsc tasks",
                "nsc RSS",
                "nse fds",
                "nse tasks",
                "nse RSS",
                "nsm fds",
                "nsm tasks",
                "nsm RSS",
                "nsc links",
                "nsm conns",
            ],
            rows,
        )
    )
    print()
    print(
        "Drift over the steady samples: the last third's level minus the first third's (fds, tasks: lower "
        "quartile; RSS: median) "
        f"(at least {STEADY_WINDOW} samples each);\nthe process of each kind that grew most; warm-up "
        f"{config.warmup_seconds:g} s; nsm-local: its last instance, from its recovery; CPU over the run"
    )
    print()
    rows = []
    for kind in KINDS:
        row = [kind]
        for attribute, digits in (("fds", 0), ("tasks", 0), ("rss_mib", 1)):
            d = drifts(result, attribute).get(kind)
            row.append(
                f"{d.first:.{digits}f} -> {d.last:.{digits}f} ({d.change:+.{digits}f}, {d.name})"
                if d
                else "-"
            )
        row.append(f"{result.cpu_cores.get(kind, 0.0):.2f}")
        rows.append(row)
    print(table(["kind", "open fds", "asyncio tasks", "RSS MiB", "CPU (cores, all of the kind)"], rows))
    print()
    print(
        f"Outages and heals ({result.dataplane_samples} data-plane samples, longest gap "
        f"{result.dataplane_max_gap:.2f} s; other load on the machine {result.others_busy:.2f} cores)"
    )
    print()
    longest = sorted(result.outages, key=lambda o: -o.duration)[:5]
    slowest = sorted(result.heals, key=lambda h: -h.duration)[:5]
    down_links = {o.link for o in result.outages}
    print(
        table(
            ["", "count", "links", "longest (s)", "where, when"],
            [
                [
                    "outages",
                    len(result.outages),
                    len(down_links),
                    f"{longest[0].duration:.2f}" if longest else "-",
                    ", ".join(
                        f"{o.link} t={o.start:.0f}s {o.duration:.1f}s" + ("" if o.ended else " (ongoing)")
                        for o in longest
                    )
                    or "-",
                ],
                [
                    "heals",
                    len(result.heals),
                    len({h.link for h in result.heals}),
                    f"{slowest[0].duration:.2f}" if slowest else "-",
                    ", ".join(
                        f"{h.link} t={h.start:.0f}s {h.duration:.1f}s" + ("" if h.ended else " (open)")
                        for h in slowest
                    )
                    or "-",
                ],
            ],
        )
    )
    print()
    events = result.events
    print(
        "Client events over the run: "
        + ", ".join(
            f"{name} {events[name]}"
            for name in (
                "link.refreshing",
                "link.healing",
                "heal.reselect",
                "link.requesting",
                "request.failed",
                "link.unverified",
                "monitor.lost",
            )
        )
    )
    print()
    if result.restarts:
        print("Restarts of nsm-local (SIGKILL, then started again on the same socket and state directory)")
        print()
        print(
            table(
                ["restart", "at (s)", "serving again after (s)", "every connection back after (s)"],
                [
                    [
                        i + 1,
                        f"{r.at:.0f}",
                        f"{r.listening:.2f}",
                        f"{r.recovered:.2f}"
                        if r.recovered is not None
                        else f"not within {RECOVERY_TIMEOUT:g} s",
                    ]
                    for i, r in enumerate(result.restarts)
                ],
            )
        )
        print()
    if result.scrape_failures:
        print(
            "Scrapes that failed (twice in a row): "
            + ", ".join(f"{k} {v}" for k, v in sorted(result.scrape_failures.items()))
        )
    if result.problems:
        print(
            "Warnings and errors in the logs (role:event count): "
            + ", ".join(f"{k} {v}" for k, v in sorted(result.problems.items()))
        )
    print()
    criteria = verdict(result)
    rows = [[c.name, "ok" if c.ok else "FAIL", c.detail] for c in criteria]
    print(table(["criterion", "", "measured"], rows))
    print()
    passed = all(c.ok for c in criteria)
    print(
        ("PASS" if passed else "FAIL") + f": {config.links} links, {config.token} tokens, "
        f"{result.elapsed / 60:.1f} min, {len(result.restarts)} nsm-local restarts"
    )
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=200)
    parser.add_argument("--token", default="5s", help="NSM_MAX_TOKEN_LIFETIME of the clients (Go duration)")
    parser.add_argument(
        "--request-timeout",
        default="2s",
        help="NSM_REQUEST_TIMEOUT of the clients; keep it well below --token",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak after bring-up")
    parser.add_argument("--restarts", type=int, default=2, help="nsm-local SIGKILLs, evenly spaced")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between metrics samples")
    parser.add_argument("--dataplane", type=float, default=1.0, help="seconds between data-plane samples")
    parser.add_argument("--parallel", type=int, default=20, help="links per client (chain, K per pair)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds after bring-up before steady samples (default: a tenth, 20-60 s)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="nsm-local --insecure and NSM_INSECURE=true for the sidecars (default: secure)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="bound for the bring-up (s)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the log directory (always on failure)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    config = SoakConfig(
        links=args.links,
        token=args.token,
        request_timeout=args.request_timeout,
        minutes=args.minutes,
        restarts=args.restarts,
        sample=args.sample,
        dataplane=args.dataplane,
        parallel=args.parallel,
        warmup=args.warmup,
        insecure=args.insecure,
        bringup_timeout=args.timeout,
        keep_logs=args.keep_logs,
    )
    problem = config.problem()
    if problem:
        parser.error(problem)
    signal.signal(signal.SIGTERM, _on_sigterm)
    print_machine()
    try:
        result = run_soak(config, lambda text: print(text, file=sys.stderr, flush=True))
    except BenchFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything was stopped and removed", file=sys.stderr)
        return 130
    passed = report(result)
    if config.keep_logs or not passed:
        print(f"logs: {Path(result.log_dir)}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
