"""How long a virtual network takes to come up and go down on nsm-local, and what it costs in memory and CPU.

Every router is a network namespace with one nse-sidecar (labels device=r<i>, IP_ADDRESS 10.60.<i>.0/24)
and, if it owns links, one nsc-sidecar with one `topo/ethX?link=net-<k>&peerif=ethY` entry per owned link
(the k8s-topo shape); one NetworkService with one match per link is applied with `nsm-local apply`.
Topologies (`--parallel K` puts K links between each connected pair, all owned by the same client):

  chain   r1 - r2 - ... - rN          r<i> owns its link(s) to r<i+1>
  star    r2..rN each own their link(s) to the hub r1 (the hub's endpoint serves them all)
  fan     the hub r1 owns the links to r2..rN (one client with many links)

Measured per run: wall time from starting the sidecars until every endpoint is registered, every client's
NSM_READY_FILE exists and every interface of every link is present with an address in both namespaces;
then, after `--settle` seconds of steady state, memory (RSS, peak, PSS) of nsm-local and of the sidecars,
CPU time of nsm-local (bring-up and idle) and of the sidecars; then the time from SIGTERM to all clients
until every link interface is gone from every namespace, and until the clients have exited.

Secure as by default (nsm-local's development Workload API in the lab's directory, mTLS, SPIFFE
tokens and policies), or with `--insecure` (nsm-local `--insecure`, NSM_INSECURE=true for the sidecars).

Everything (processes, namespaces, the temp directory) is removed at the end, also on failure or Ctrl-C;
on failure the logs are kept and their directory is printed. Needs root, iproute2, the installed project.

    python bench/links.py --topology chain --routers 2,10,30
    python bench/links.py --topology fan --routers 11 --parallel 2
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import yaml
from benchlib import (
    Memory,
    cpu_seconds,
    machine_busy_seconds,
    median,
    memory,
    mib,
    own_cpu_seconds,
    print_machine,
    run_quiet,
    table,
)

SERVICE = "topo"
MAX_ROUTERS = 254  # 10.60.<i>.0/24, i = 1..254
LINKS_PER_ENDPOINT = 64  # a /30 per link out of a /24
TOPOLOGIES = ("chain", "star", "fan")
PROGRAMS = {"nsm-local": "nsm_local", "nse-sidecar": "nse_sidecar", "nsc-sidecar": "nsc_sidecar"}


# --- the topology ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedLink:
    label: str  # net-<k>, the client's `link` label that the NetworkService matches on
    owner: int  # router whose nsc-sidecar requests the link
    peer: int  # router whose nse-sidecar answers for it
    owner_if: str
    peer_if: str


def plan_links(topology: str, routers: int, parallel: int) -> list[PlannedLink]:
    if topology == "chain":
        pairs = [(i, i + 1) for i in range(1, routers)]
    elif topology == "star":
        pairs = [(i, 1) for i in range(2, routers + 1)]
    elif topology == "fan":
        pairs = [(1, i) for i in range(2, routers + 1)]
    else:
        raise ValueError(f"unknown topology {topology!r}")
    interfaces: Counter[int] = Counter()
    links: list[PlannedLink] = []
    for owner, peer in pairs:
        for _ in range(parallel):
            interfaces[owner] += 1
            interfaces[peer] += 1
            owner_if, peer_if = f"eth{interfaces[owner]}", f"eth{interfaces[peer]}"
            links.append(PlannedLink(f"net-{len(links)}", owner, peer, owner_if, peer_if))
    return links


def plan_problem(topology: str, routers: int, parallel: int) -> str | None:
    if not 2 <= routers <= MAX_ROUTERS:
        return f"--routers must be between 2 and {MAX_ROUTERS}, got {routers}"
    if not 1 <= parallel <= LINKS_PER_ENDPOINT:
        return f"--parallel must be between 1 and {LINKS_PER_ENDPOINT}, got {parallel}"
    served = Counter(link.peer for link in plan_links(topology, routers, parallel))
    busiest = max(served.values(), default=0)
    if busiest > LINKS_PER_ENDPOINT:
        return f"an endpoint would serve {busiest} links, more than the {LINKS_PER_ENDPOINT} /30s of its /24"
    return None


def manifest(links: Sequence[PlannedLink]) -> str:
    """The NetworkService k8s-topo would write: one match per link, client label -> peer device."""
    matches = [
        {
            "match": None,
            "sourceSelector": {"link": link.label},
            "route": [{"destination": None, "destinationSelector": {"device": f"r{link.peer}"}}],
        }
        for link in links
    ]
    document = {
        "apiVersion": "networkservicemesh.io/v1alpha1",
        "kind": "NetworkService",
        "metadata": {"name": SERVICE},
        "spec": {"payload": "IP", "matches": matches},
    }
    return yaml.safe_dump(document, sort_keys=False)


def client_entries(links: Iterable[PlannedLink]) -> str:
    return ",".join(f"{SERVICE}/{link.owner_if}?link={link.label}&peerif={link.peer_if}" for link in links)


def expected_interfaces(links: Iterable[PlannedLink]) -> dict[int, set[str]]:
    """Router -> the interface names its namespace must hold once every link is up."""
    found: dict[int, set[str]] = defaultdict(set)
    for link in links:
        found[link.owner].add(link.owner_if)
        found[link.peer].add(link.peer_if)
    return found


# --- the lab: processes and namespaces that always go away --------------------------------------------------


class BenchFailed(Exception):
    """The network did not come up (or down) as expected; the message says what and where the logs are."""


@dataclass
class Proc:
    role: str
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_wall: float
    ready_file: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def ready(self) -> bool:
        return self.ready_file is not None and self.ready_file.exists()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Lab:
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nsmb-", dir="/tmp")))
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    namespaces: dict[int, str] = field(default_factory=dict)
    processes: list[Proc] = field(default_factory=list)
    keep_directory: bool = False
    insecure: bool = False
    """Plaintext everywhere (nsm-local --insecure, NSM_INSECURE=true); else nsm-local serves SVIDs."""
    code_dir: Path | None = None
    """Run the programs from this source tree (PYTHONPATH and working directory) instead of the installed
    project, e.g. a `git archive` of a commit from before the security work: such code knows no security
    options and gets none."""

    @property
    def socket_url(self) -> str:
        return f"unix://{self.directory}/nsm.sock"

    @property
    def workload_api_url(self) -> str:
        """nsm-local's development Workload API, in the lab's directory (never the host's SPIRE socket)."""
        return f"unix://{self.directory}/agent.sock"

    def security_env(self) -> dict[str, str]:
        if self.code_dir is not None:
            return {"PYTHONPATH": str(self.code_dir)}
        if self.insecure:
            return {"NSM_INSECURE": "true"}
        return {"SPIFFE_ENDPOINT_SOCKET": self.workload_api_url}

    def start_nsm_local(self) -> Proc:
        """`nsm-local serve` on the lab's socket, state and CA in the lab's directory; waits until it listens
        (in the secure mode its Workload API is up before the manager socket appears)."""
        args = ["serve", "--listen", self.socket_url, "--state-dir", str(self.directory)]
        if self.code_dir is None:
            args += ["--insecure"] if self.insecure else ["--workload-api", self.workload_api_url]
        proc = self.start("nsm-local", "nsm-local", {}, args=args)
        wait_for((self.directory / "nsm.sock").exists, time.monotonic() + 15, "nsm-local to listen", self)
        return proc

    def apply(self, manifest_text: str) -> None:
        manifest_path = self.directory / "manifest.yaml"
        manifest_path.write_text(manifest_text)
        argv = [sys.executable, "-m", "nsm_local", "apply", "-f", str(manifest_path), "--connect-to",
                self.socket_url]
        applied = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30,
                                 env={"PATH": os.environ.get("PATH", ""), **self.security_env()},
                                 cwd=self.code_dir)
        if applied.returncode != 0:
            raise BenchFailed(f"nsm-local apply failed: {applied.stderr.strip()}")

    def add_netns(self, router: int) -> str:
        name = f"nsmb{self.tag}-r{router}"
        result = run_quiet("ip", "netns", "add", name)
        if result.returncode != 0:
            raise BenchFailed(f"ip netns add {name}: {result.stderr.strip()}")
        self.namespaces[router] = name
        return name

    def start(
        self,
        role: str,
        name: str,
        env: dict[str, str],
        netns: str | None = None,
        args: Sequence[str] = (),
        ready: bool = False,
    ) -> Proc:
        argv = [sys.executable, "-m", PROGRAMS[role], *args]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]  # `ip netns exec` execs: the pid is Python's
        ready_file = self.directory / "ready" / name if ready else None
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "NSM_CONNECT_TO": self.socket_url,
            "NSM_NAME": name,
            **self.security_env(),
            **({"NSM_READY_FILE": str(ready_file)} if ready_file else {}),
            **env,
        }
        log_path = self.directory / f"{name}.log"
        with log_path.open("wb") as log:
            # own session: a terminal's Ctrl-C reaches only the bench, which then stops everything in order
            popen = subprocess.Popen(
                argv, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.code_dir,
            )
        proc = Proc(role, name, popen, log_path, time.time(), ready_file)
        self.processes.append(proc)
        return proc

    def of_role(self, role: str) -> list[Proc]:
        return [p for p in self.processes if p.role == role]

    @staticmethod
    def stop(procs: Sequence[Proc], timeout: float) -> float:
        """SIGTERM to all at once, SIGKILL to any left after `timeout`; returns seconds until all exited."""
        start = time.monotonic()
        for proc in procs:
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        deadline = start + timeout
        for proc in procs:
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)
        return time.monotonic() - start

    def close(self) -> None:
        """Clients, then endpoints, then nsm-local; then the namespaces; then the directory."""
        for role in ("nsc-sidecar", "nse-sidecar", "nsm-local"):
            self.stop(self.of_role(role), 20)
        for name in self.namespaces.values():
            run_quiet("ip", "netns", "delete", name)
        if self.keep_directory:
            print(f"logs kept in {self.directory}", file=sys.stderr)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    def interfaces(self) -> dict[int, dict[str, list[str]]]:
        """Router -> interface name -> global addresses, read in all namespaces (in parallel)."""

        def read(item: tuple[int, str]) -> tuple[int, dict[str, list[str]]]:
            router, netns = item
            out = run_quiet("ip", "-n", netns, "-j", "addr", "show").stdout
            links = json.loads(out or "[]")
            return router, {
                link["ifname"]: [a["local"] for a in link.get("addr_info", []) if a.get("scope") == "global"]
                for link in links
                if link["ifname"] != "lo"
            }

        with ThreadPoolExecutor(max_workers=8) as pool:
            return dict(pool.map(read, self.namespaces.items()))


def wait_for(
    condition: Callable[[], bool], deadline: float, what: str, lab: Lab, interval: float = 0.05
) -> float:
    """Poll until `condition()`; fail if the deadline passes or any process died. Returns monotonic time."""
    while True:
        if condition():
            return time.monotonic()
        dead = [p for p in lab.processes if not p.alive()]
        if dead:
            proc = dead[0]
            raise BenchFailed(f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}:\n"
                              f"{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchFailed(f"timed out waiting for {what}")
        time.sleep(interval)


# --- one run ------------------------------------------------------------------------------------------------


@dataclass
class Result:
    topology: str
    routers: int
    parallel: int
    links: int
    clients: int
    endpoints: int
    nse_first: bool
    endpoints_ready: float = 0.0  # s from the first sidecar start until all endpoints are registered
    clients_started: float = 0.0  # s from the first sidecar start until the clients were started
    links_ready: float = 0.0  # ... until every client is ready and every interface is present
    startup_median: float = 0.0  # s from a client's exec until its first log line (Python start-up)
    requests_median: float = 0.0  # s from a client's first log line until it is ready
    down: float = 0.0  # s from SIGTERM to all clients until no link interface is left anywhere
    clients_exited: float = 0.0  # s from SIGTERM until every client process exited
    endpoints_exited: float = 0.0
    nsm_memory: Memory | None = None
    nsm_peak_after: int = 0  # nsm-local VmHWM after the teardown
    nse_memory: list[Memory] = field(default_factory=list)
    nsc_memory: list[Memory] = field(default_factory=list)
    nsm_cpu_up: float = 0.0  # nsm-local CPU seconds from the first sidecar start until all links are ready
    nsm_cpu_idle: float = 0.0  # nsm-local CPU seconds during the settle window
    nsm_cpu_down: float = 0.0  # nsm-local CPU seconds during the client teardown
    sidecar_cpu_up: float = 0.0  # all sidecars' CPU seconds until ready (includes Python start-up)
    nse_cpu_up: list[float] = field(default_factory=list)  # each endpoint's CPU seconds until ready
    nsc_cpu_up: list[float] = field(default_factory=list)
    sidecar_cpu_idle: float = 0.0
    settle: float = 0.0
    problems: Counter[str] = field(default_factory=Counter)
    token_lifetime: str = "10m (default)"
    insecure: bool = False
    others_busy: float = 0.0  # cores busy with processes not ours during bring-up (other load on the machine)


def first_log_wall(proc: Proc, event: str) -> float | None:
    """Wall-clock time of the first log line with `event=<event>` (logfmt `ts=...Z`, ms resolution)."""
    try:
        text = proc.log_path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if f" event={event}" in line and line.startswith("ts="):
            stamp = line[3 : line.index(" ")]
            seconds = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            return seconds + float("0" + stamp[19:-1])
    return None


def log_warnings(procs: Iterable[Proc]) -> Counter[str]:
    found: Counter[str] = Counter()
    for proc in procs:
        try:
            text = proc.log_path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if " level=warning " in line or " level=error " in line or line.startswith("Traceback"):
                event = next((part[6:] for part in line.split() if part.startswith("event=")), line[:60])
                found[f"{proc.role}:{event}"] += 1
    return found


def _cpu(procs: Iterable[Proc]) -> float:
    return sum(cpu_seconds(p.pid) or 0.0 for p in procs)


def run_once(topology: str, routers: int, parallel: int, nse_first: bool, timeout: float,
             settle: float, keep_logs: bool, token_lifetime: str | None = None,
             insecure: bool = False) -> Result:
    links = plan_links(topology, routers, parallel)
    common_env = {"NSM_MAX_TOKEN_LIFETIME": token_lifetime} if token_lifetime else {}
    owners = sorted({link.owner for link in links})
    result = Result(topology, routers, parallel, len(links), len(owners), routers, nse_first, settle=settle)
    if token_lifetime:
        result.token_lifetime = token_lifetime
    result.insecure = insecure
    lab = Lab(keep_directory=keep_logs, insecure=insecure)
    try:
        nsm = lab.start_nsm_local()
        lab.apply(manifest(links))
        for router in range(1, routers + 1):
            lab.add_netns(router)

        nsm_cpu_base = cpu_seconds(nsm.pid) or 0.0  # its own start-up and the apply
        busy_base, own_base = machine_busy_seconds(), own_cpu_seconds()
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        endpoints = [
            lab.start("nse-sidecar", f"r{router}-nse", {
                "ENDPOINT_NETWORK_SERVICE": SERVICE,
                "ENDPOINT_LABELS": f"device=r{router}",
                "IP_ADDRESS": f"10.60.{router}.0/24",
                **common_env,
            }, lab.namespaces[router], ready=True)
            for router in range(1, routers + 1)
        ]
        if nse_first:
            result.endpoints_ready = wait_for(lambda: all(p.ready() for p in endpoints), deadline,
                                              "all endpoints to register", lab) - t0
        result.clients_started = time.monotonic() - t0
        clients = [
            lab.start("nsc-sidecar", f"r{owner}-nsc",
                      {"NS_NETWORKSERVICEMESH_IO": client_entries(k for k in links if k.owner == owner),
                       **common_env},
                      lab.namespaces[owner], ready=True)
            for owner in owners
        ]
        if not nse_first:
            result.endpoints_ready = wait_for(lambda: all(p.ready() for p in endpoints), deadline,
                                              "all endpoints to register", lab) - t0
        wait_for(lambda: all(p.ready() for p in clients), deadline, "all clients to be ready", lab)
        wanted = expected_interfaces(links)

        def all_present() -> bool:
            found = lab.interfaces()
            return all(found[r].get(ifname) for r, names in wanted.items() for ifname in names)

        result.links_ready = wait_for(all_present, deadline, "every link interface in both namespaces",
                                      lab, interval=0.2) - t0
        nsm_cpu_ready = cpu_seconds(nsm.pid) or 0.0
        result.nsm_cpu_up = nsm_cpu_ready - nsm_cpu_base
        result.nse_cpu_up = [cpu_seconds(p.pid) or 0.0 for p in endpoints]
        result.nsc_cpu_up = [cpu_seconds(p.pid) or 0.0 for p in clients]
        result.sidecar_cpu_up = sum(result.nse_cpu_up) + sum(result.nsc_cpu_up)
        ours = result.nsm_cpu_up + result.sidecar_cpu_up + own_cpu_seconds() - own_base
        result.others_busy = max(0.0, machine_busy_seconds() - busy_base - ours) / result.links_ready
        starts, spans = [], []
        for proc in clients:
            first, ready = first_log_wall(proc, "agent.start"), first_log_wall(proc, "agent.ready")
            if first is not None:
                starts.append(first - proc.started_wall)
                if ready is not None:
                    spans.append(ready - first)
        result.startup_median, result.requests_median = median(starts), median(spans)

        time.sleep(settle)  # steady state: refreshes, monitors, nothing else
        result.nsm_cpu_idle = (cpu_seconds(nsm.pid) or 0.0) - nsm_cpu_ready
        result.sidecar_cpu_idle = _cpu(endpoints + clients) - result.sidecar_cpu_up
        result.nsm_memory = memory(nsm.pid)
        result.nse_memory = [m for p in endpoints if (m := memory(p.pid)) is not None]
        result.nsc_memory = [m for p in clients if (m := memory(p.pid)) is not None]

        nsm_cpu_before = cpu_seconds(nsm.pid) or 0.0
        t1 = time.monotonic()
        for proc in clients:
            proc.popen.send_signal(signal.SIGTERM)

        def all_gone() -> bool:
            found = lab.interfaces()
            return not any(ifname in found[r] for r, names in wanted.items() for ifname in names)

        gone_at: float | None = None
        exited_at: float | None = None
        down_deadline = t1 + timeout
        while gone_at is None or exited_at is None:
            if exited_at is None and not any(p.alive() for p in clients):
                exited_at = time.monotonic()
            if gone_at is None and all_gone():
                gone_at = time.monotonic()
            if time.monotonic() > down_deadline:
                raise BenchFailed("timed out waiting for the links to go down after SIGTERM to the clients")
            time.sleep(0.05)
        result.down, result.clients_exited = gone_at - t1, exited_at - t1
        nsm_after = memory(nsm.pid)
        result.nsm_peak_after = nsm_after.peak if nsm_after else 0
        result.nsm_cpu_down = (cpu_seconds(nsm.pid) or 0.0) - nsm_cpu_before
        result.endpoints_exited = Lab.stop(endpoints, 30)
        bad_exits = [p for p in clients + endpoints if p.popen.returncode != 0]
        result.problems = log_warnings(lab.processes)
        for proc in bad_exits:
            result.problems[f"{proc.role}:exit {proc.popen.returncode}"] += 1
        return result
    except BenchFailed:
        lab.keep_directory = True
        raise
    finally:
        lab.close()


# --- the report ---------------------------------------------------------------------------------------------


def _s(seconds: float) -> str:
    return f"{seconds:.2f}"


def report(results: Sequence[Result]) -> None:
    modes = sorted({"insecure (plaintext)" if r.insecure else "secure (mTLS, SPIFFE SVIDs from nsm-local)"
                    for r in results})
    print("Security: " + ", ".join(modes))
    print()
    print("Bring-up and teardown (seconds; from the first sidecar start, or from SIGTERM to the clients)")
    print()
    print(table(
        ["topology", "routers", "links", "nsc", "nse", "order", "nse registered", "links ready",
         "client start-up (med)", "client requests (med)", "links gone", "clients exited", "nse exited"],
        [[r.topology + (f" x{r.parallel}" if r.parallel > 1 else ""), r.routers, r.links, r.clients,
          r.endpoints, "nse first" if r.nse_first else "together", _s(r.endpoints_ready),
          _s(r.links_ready) + (f" ({_s(r.links_ready - r.clients_started)} after nsc start)"
                               if r.nse_first else ""),
          _s(r.startup_median), _s(r.requests_median), _s(r.down), _s(r.clients_exited),
          _s(r.endpoints_exited)] for r in results],
    ))
    print()
    print("Memory (MiB) after the settle window: RSS / peak RSS (VmHWM) / PSS; sidecars: median (max)")
    print()

    def spread(values: list[int]) -> str:
        return f"{mib(median(values))} ({mib(max(values, default=0))})"

    rows = []
    for r in results:
        nsm = r.nsm_memory or Memory(0, 0, 0)
        total_pss = nsm.pss + sum(m.pss for m in r.nse_memory + r.nsc_memory)
        rows.append([
            f"{r.topology} {r.routers}r/{r.links}l",
            f"{mib(nsm.rss)} / {mib(max(nsm.peak, r.nsm_peak_after))} / {mib(nsm.pss)}",
            spread([m.rss for m in r.nse_memory]), spread([m.peak for m in r.nse_memory]),
            spread([m.pss for m in r.nse_memory]),
            spread([m.rss for m in r.nsc_memory]), spread([m.peak for m in r.nsc_memory]),
            spread([m.pss for m in r.nsc_memory]),
            mib(total_pss),
        ])
    print(table(["run", "nsm-local RSS/peak/PSS", "nse RSS", "nse peak", "nse PSS", "nsc RSS", "nsc peak",
                 "nsc PSS", "all PSS"], rows))
    print()
    print("CPU seconds (user+system); sidecars: all together, then per process median (max), with start-up;")
    print("idle = during the settle window of " + ", ".join(sorted({f"{r.settle:g} s" for r in results}))
          + ", sidecar token lifetime " + ", ".join(sorted({r.token_lifetime for r in results}))
          + " (clients refresh at a fifth of it)")
    print()
    print(table(
        ["run", "nsm-local bring-up", "nsm-local per link", "nsm-local idle (per s)",
         "nsm-local teardown", "sidecars until ready", "nse until ready", "nsc until ready",
         "sidecars idle (per s, all)",
         "other load (cores)"],
        [[f"{r.topology} {r.routers}r/{r.links}l", _s(r.nsm_cpu_up),
          f"{r.nsm_cpu_up / r.links * 1000:.0f} ms",
          f"{r.nsm_cpu_idle / r.settle:.3f}" if r.settle else "-", _s(r.nsm_cpu_down),
          _s(r.sidecar_cpu_up), f"{_s(median(r.nse_cpu_up))} ({_s(max(r.nse_cpu_up, default=0))})",
          f"{_s(median(r.nsc_cpu_up))} ({_s(max(r.nsc_cpu_up, default=0))})",
          f"{r.sidecar_cpu_idle / r.settle:.3f}" if r.settle else "-", f"{r.others_busy:.2f}"]
         for r in results],
    ))
    problems = Counter[str]()
    for r in results:
        problems.update(r.problems)
    print()
    if problems:
        print("Warnings and errors in the logs (role:event count): "
              + ", ".join(f"{k} {v}" for k, v in sorted(problems.items())))

    else:
        print("No warnings or errors in any log.")
    print()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through run_once's cleanup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", choices=TOPOLOGIES, default="chain")
    parser.add_argument(
        "--routers", default="2,10,30", help="comma list of router counts (default %(default)s)"
    )
    parser.add_argument("--parallel", type=int, default=1, help="links between each connected pair")
    parser.add_argument("--nse-first", action="store_true",
                        help="start the clients only once every endpoint is registered")
    parser.add_argument("--timeout", type=float, default=120, help="bound for bring-up and for teardown (s)")
    parser.add_argument("--settle", type=float, default=5, help="steady-state window before measuring (s)")
    parser.add_argument("--token-lifetime", default=None,
                        help="NSM_MAX_TOKEN_LIFETIME for the sidecars (Go duration; clients refresh at a "
                             "fifth of it, so e.g. 30s makes the settle window include refreshes)")
    parser.add_argument("--insecure", action="store_true",
                        help="nsm-local --insecure and NSM_INSECURE=true for the sidecars (default: secure)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the log directory (always on failure)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    try:
        counts = [int(n) for n in args.routers.split(",")]
    except ValueError:
        parser.error(f"--routers: expected a comma list of numbers, got {args.routers!r}")
    for count in counts:
        problem = plan_problem(args.topology, count, args.parallel)
        if problem:
            parser.error(problem)
    signal.signal(signal.SIGTERM, _on_sigterm)
    print_machine()
    results = []
    try:
        for count in counts:
            print(f"running {args.topology} with {count} routers ...", file=sys.stderr, flush=True)
            results.append(run_once(args.topology, count, args.parallel, args.nse_first, args.timeout,
                                    args.settle, args.keep_logs, args.token_lifetime, args.insecure))
    except BenchFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        if results:
            report(results)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything was stopped and removed", file=sys.stderr)
        return 130
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
