"""Our nsc-sidecar side by side with NSM's Go reference client, through NSM's Go nsmgr (issue 10, item 5).

One run of the interop harness (tests/interop/harness, NSM sdk v1.18.0): its `control-plane` (the sdk's
registry, nsmgr and a kernel veth forwarder) starts once, and one endpoint: the harness's Go reference
`nse` (sdk endpoint chain, point-to-point IPAM) in a netns of its own. The endpoint is the fixed point
both clients talk to, so it is the Go one: it is the reference, the same for both, and the lighter load
on a small machine (our nse-sidecar would be a second Python process competing for the cores).

Then the two clients take turns (each round starts with the other one, so load that drifts over the run
hits both alike), each run in a fresh netns asking for one link `kernel://icmp/nsm-1`:

  ours  `nsc-sidecar` (through bench/nsc_probe.py: the unchanged program with its manager calls timed)
  go    the harness's `nsc` (modelled on cmd-nsc: the sdk client chain, heal, KERNEL, sendfd) with -timing

Per run: Request latency as the client sees it (ours: `NsmClient.request`, from the probe's
`probe.request` log line; Go: `nsc.Request` on the sdk client chain, from its -timing line), and the
nsmgr's share of it (events.jsonl: the nsmgr's path segment expiry minus its token lifetime is when it
signed its token, its `nsmgr.request` event when it answered); exec -> ready, by the program's own clock
(ours: the probe's `probe.ready`, right after NSM_READY_FILE is written once the link is verified; Go: its
-timing line's `ready`, right after the -out file is written once the Request returned; file mtimes would
be off by up to a kernel tick); CPU at ready (utime+stime of /proc/<pid>/stat, in 10 ms ticks, and the
live threads' on-CPU nanoseconds from /proc/<pid>/task/*/schedstat) and memory at ready (RSS, PSS,
anonymous RSS, peak; the bench polls for the ready file every 5 ms and samples on seeing it); where the time
went (start-up, what comes before the Request, the Request, what comes after). Then SIGTERM, and the next
run starts once the client has exited and the nsmgr has closed its connection.

Security as in the interop tier's basic matrix (tests/interop/test_matrix.py::TestLink): insecure,
i.e. plaintext gRPC over grpcfd, HS256 test tokens nobody verifies, authorize.Any(), our sidecar with
NSM_INSECURE=true; strict fd passing on. Tokens live 10 min and requests may take 15 s (both programs'
defaults), so nothing refreshes during a run.

Everything (processes, namespaces `vgo<tag>-*`, the temp directory /tmp/vgo-*) is removed at the end,
also on failure, timeout (`--timeout` per run) or Ctrl-C/SIGTERM; on failure the logs are kept and their
directory is printed. Needs root, iproute2, the installed project and the harness binary
(`scripts/build-interop.sh`, with the nsc's -timing flag).

    python bench/versus_go.py                       # 30 runs of each client, ~30 s on 2 idle cores
    python bench/versus_go.py --runs 30 --json /tmp/versus_go.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from benchlib import (
    cpu_seconds,
    machine,
    machine_busy_seconds,
    median,
    memory,
    mib,
    own_cpu_seconds,
    package_versions,
    percentile,
    print_machine,
    run_quiet,
    table,
)
from links import BenchFailed, Proc

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PROBE = BENCH / "nsc_probe.py"
HARNESS_DIR = REPO / "tests" / "interop" / "harness"
HARNESS_BIN = HARNESS_DIR / "bin" / "nsmharness"

OURS, GO = "ours", "go"
CLIENTS = (OURS, GO)
LABEL = {OURS: "ours (nsc-sidecar)", GO: "Go (harness nsc)"}
SERVICE, IFNAME, NSE_NAME = "icmp", "nsm-1", "nse-1"
TOKEN_LIFETIME_S = 600.0  # 10m: both programs' default; the control plane signs its tokens with it too
TOKEN_LIFETIME, REQUEST_TIMEOUT, REGISTRATION_EXPIRY = "10m", "15s", "1m"
MODE = (
    "insecure, as the interop tier's basic matrix (test_matrix.py::TestLink): plaintext gRPC over grpcfd, "
    "HS256 test tokens nobody verifies, authorize.Any(); our sidecar with NSM_INSECURE=true; strict fd "
    f"passing; tokens {TOKEN_LIFETIME}, request timeout {REQUEST_TIMEOUT} (no refresh during a run)"
)
GO_MODULES = (
    "github.com/networkservicemesh/sdk",
    "github.com/networkservicemesh/sdk-kernel",
    "github.com/networkservicemesh/api",
    "github.com/edwarnicke/grpcfd",
    "google.golang.org/grpc",
)
GO_PROBLEM = re.compile(r"\[(WARN|ERRO|FATA|PANI)[A-Z]*\]|^panic:")


# --- timestamps and logs ----------------------------------------------------------------------------------


def wall(stamp: str) -> float:
    """Epoch seconds of an RFC 3339 UTC time (`...Z`, any number of fraction digits)."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    return seconds + (float("0." + frac) if frac else 0.0)


def logfmt_events(path: Path) -> list[dict[str, str]]:
    """Our sidecar's log lines (`ts=... level=... event=... k=v`) as dicts; other lines are skipped."""
    found = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        if not line.startswith("ts="):
            continue
        try:
            parts = shlex.split(line)
        except ValueError:
            continue
        found.append(dict(part.split("=", 1) for part in parts if "=" in part))
    return found


def first_event(events: Sequence[dict[str, str]], name: str) -> dict[str, str] | None:
    return next((e for e in events if e.get("event") == name), None)


def json_lines(path: Path) -> list[dict[str, Any]]:
    found = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


def anon_kb(pid: int) -> int | None:
    """RssAnon: the process's private heap and stacks, what it would cost without any shared pages."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return 0


def on_cpu_ns(pid: int) -> int | None:
    """Nanoseconds the process's live threads have run (/proc/<pid>/task/*/schedstat, first field): finer
    than /proc/<pid>/stat's clock ticks (10 ms), but threads that already exited are not counted."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return None
    total = 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as schedstat:
                total += int(schedstat.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def go_module_versions() -> list[tuple[str, str]]:
    versions = dict.fromkeys(GO_MODULES, "?")
    for line in (HARNESS_DIR / "go.mod").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "require":
            parts = parts[1:]
        if len(parts) >= 2 and parts[0] in versions:
            versions[parts[0]] = parts[1]
    return list(versions.items())


def go_toolchain() -> str:
    """The Go release the harness binary was built with (`go version FILE`), if a go command is around."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if go is None:
        return "?"
    result = run_quiet(go, "version", str(HARNESS_BIN))
    return result.stdout.split(":", 1)[-1].strip() or "?"


# --- one run of one client ----------------------------------------------------------------------------------


@dataclass
class Run:
    client: str
    index: int
    counted: bool
    ms: dict[str, float] = field(default_factory=dict)
    """Measure -> milliseconds: ready, startup, before_request, lookup, request, after_request, nsmgr,
    cpu, cpu_control_plane, cpu_nse, close."""
    kb: dict[str, int] = field(default_factory=dict)
    """rss, pss, anon, peak at ready (kilobytes)."""
    others_busy: float = 0.0  # cores busy with processes that are not part of the run, exec -> ready
    others_cpu: float = 0.0  # their CPU seconds in that window (/proc/stat: 10 ms ticks, so summed over runs)
    window: float = 0.0  # seconds from exec to seeing the ready file
    exit_code: int | None = None
    problems: Counter[str] = field(default_factory=Counter)


@dataclass
class Lab:
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vgo-", dir="/tmp")))
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    namespaces: list[str] = field(default_factory=list)
    processes: list[Proc] = field(default_factory=list)
    keep_directory: bool = False
    ready: dict[str, Any] = field(default_factory=dict)
    control_plane: Proc | None = None
    endpoint: Proc | None = None
    _events: list[dict[str, Any]] = field(default_factory=list)
    _events_read: int = 0

    @property
    def events_path(self) -> Path:
        return self.directory / "events.jsonl"

    @property
    def nsmgr_url(self) -> str:
        return str(self.ready["nsmgr_url"])

    def add_netns(self, suffix: str) -> str:
        name = f"vgo{self.tag}-{suffix}"
        result = run_quiet("ip", "netns", "add", name)
        if result.returncode != 0:
            raise BenchFailed(f"ip netns add {name}: {result.stderr.strip()}")
        self.namespaces.append(name)
        return name

    def delete_netns(self, name: str) -> None:
        run_quiet("ip", "netns", "delete", name)
        if name in self.namespaces:
            self.namespaces.remove(name)

    def start(
        self,
        role: str,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        netns: str | None = None,
        ready_file: Path | None = None,
    ) -> Proc:
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]  # `ip netns exec` execs: the pid is the program's
        full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **(env or {})}
        log_path = self.directory / f"{name}.log"
        with log_path.open("wb") as log:
            started = time.time()
            # own session: a terminal's Ctrl-C reaches only the bench, which then stops everything in order
            popen = subprocess.Popen(
                list(argv),
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
            )
        proc = Proc(role, name, popen, log_path, started, ready_file)
        self.processes.append(proc)
        return proc

    def wait(
        self,
        condition: Callable[[], bool],
        deadline: float,
        what: str,
        interval: float = 0.005,
        leaving: Proc | None = None,
    ) -> None:
        """Poll until `condition()`; fail when the deadline passes or a process (but `leaving`) died."""
        while not condition():
            dead = [p for p in self.processes if p is not leaving and not p.alive()]
            if dead:
                raise BenchFailed(
                    f"{dead[0].name} exited with {dead[0].popen.returncode} while waiting for "
                    f"{what}:\n{dead[0].log_tail()}"
                )
            if time.monotonic() > deadline:
                raise BenchFailed(f"timed out waiting for {what}")
            time.sleep(interval)

    def events(self, kind: str, **match: str) -> list[dict[str, Any]]:
        """The control plane's events of a kind (events.jsonl, read on from where the last call stopped)."""
        try:
            with self.events_path.open("rb") as events:
                events.seek(self._events_read)
                chunk = events.read()
        except FileNotFoundError:
            chunk = b""
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._events_read += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if line.strip():
                self._events.append(json.loads(line))
        return [
            e for e in self._events if e.get("event") == kind and all(e.get(k) == v for k, v in match.items())
        ]

    def start_control_plane(self, timeout: float) -> None:
        argv = [
            str(HARNESS_BIN),
            "control-plane",
            "-dir",
            str(self.directory),
            "-token-lifetime",
            TOKEN_LIFETIME,
            "-registration-expiry",
            REGISTRATION_EXPIRY,
            "-request-timeout",
            REQUEST_TIMEOUT,
            "-strict=true",
            "-log-level",
            "info",
        ]
        # the nsmgr's clientinfo adds nodeName to requests and registrations, as in a cluster (interop_lab)
        self.control_plane = self.start("control-plane", "control-plane", argv, {"NODE_NAME": "vgo-node"})
        ready = self.directory / "ready.json"
        self.wait(ready.exists, time.monotonic() + timeout, "the control plane's ready.json", 0.02)
        self.ready = json.loads(ready.read_text())

    def start_endpoint(self, timeout: float) -> None:
        netns = self.add_netns("nse")
        argv = [
            str(HARNESS_BIN),
            "nse",
            "-connect-to",
            self.nsmgr_url,
            "-name",
            NSE_NAME,
            "-services",
            SERVICE,
            "-listen-on",
            f"unix://{self.directory}/{NSE_NAME}.sock",
            "-token-lifetime",
            TOKEN_LIFETIME,
            "-request-timeout",
            REQUEST_TIMEOUT,
        ]
        self.endpoint = self.start("nse", NSE_NAME, argv, netns=netns)
        self.wait(
            lambda: bool(self.events("registry.register", name=NSE_NAME)),
            time.monotonic() + timeout,
            f"{NSE_NAME} to register with the Go registry",
            0.02,
        )

    def close(self) -> None:
        """Clients, then the endpoint, then the control plane; then the namespaces; then the directory."""
        for role in ("nsc", "nse", "control-plane"):
            for proc in (p for p in self.processes if p.role == role):
                stop(proc, 15)
        for name in list(self.namespaces):
            self.delete_netns(name)
        if self.keep_directory:
            print(f"logs kept in {self.directory}", file=sys.stderr)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)


def stop(proc: Proc, timeout: float) -> int | None:
    """SIGTERM, then SIGKILL after `timeout`; the exit code (None when it had to be killed)."""
    if proc.alive():
        proc.popen.send_signal(signal.SIGTERM)
    try:
        return proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        proc.popen.wait(5)
        return None


def start_client(lab: Lab, client: str, name: str, netns: str, probe: bool) -> Proc:
    if client == GO:
        out = lab.directory / f"{name}.connection.json"
        argv = [
            str(HARNESS_BIN),
            "nsc",
            "-connect-to",
            lab.nsmgr_url,
            "-name",
            name,
            "-service",
            SERVICE,
            "-ifname",
            IFNAME,
            "-out",
            str(out),
            "-token-lifetime",
            TOKEN_LIFETIME,
            "-request-timeout",
            REQUEST_TIMEOUT,
            "-timing",
        ]
        return lab.start("nsc", name, argv, netns=netns, ready_file=out)
    ready = lab.directory / f"{name}.ready"
    env = {
        "NSM_CONNECT_TO": lab.nsmgr_url,
        "NSM_NAME": name,
        "NSM_NETWORK_SERVICES": f"kernel://{SERVICE}/{IFNAME}",
        "NSM_READY_FILE": str(ready),
        "NSM_INSECURE": "true",
        "NSM_MAX_TOKEN_LIFETIME": TOKEN_LIFETIME,
        "NSM_REQUEST_TIMEOUT": REQUEST_TIMEOUT,
    }
    argv = [sys.executable, str(PROBE)] if probe else [sys.executable, "-m", "nsc_sidecar"]
    return lab.start("nsc", name, argv, env, netns=netns, ready_file=ready)


def run_client(lab: Lab, client: str, index: int, counted: bool, probe: bool, timeout: float) -> Run:
    run = Run(client, index, counted)
    name = f"{client}-nsc-{index}"
    conn_id = f"{name}-0"  # both clients name their first connection <name>-0, like cmd-nsc
    netns = lab.add_netns(f"{client}{index}")
    assert lab.control_plane is not None and lab.endpoint is not None
    deadline = time.monotonic() + timeout
    proc: Proc | None = None
    try:
        cp_cpu, nse_cpu = cpu_seconds(lab.control_plane.pid) or 0.0, cpu_seconds(lab.endpoint.pid) or 0.0
        busy, own, window = machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
        proc = start_client(lab, client, name, netns, probe)
        ready_file = proc.ready_file
        assert ready_file is not None
        lab.wait(ready_file.exists, deadline, f"{name} to be ready")
        # at ready, before anything else: the client's CPU and memory
        cpu, cpu_ns = cpu_seconds(proc.pid), on_cpu_ns(proc.pid)
        mem, anon = memory(proc.pid), anon_kb(proc.pid)
        window = time.monotonic() - window
        if cpu is None or mem is None:
            raise BenchFailed(f"{name} was gone right after it became ready:\n{proc.log_tail()}")
        cp_used = (cpu_seconds(lab.control_plane.pid) or 0.0) - cp_cpu
        nse_used = (cpu_seconds(lab.endpoint.pid) or 0.0) - nse_cpu
        ours = cpu + cp_used + nse_used + own_cpu_seconds() - own
        run.others_cpu, run.window = max(0.0, machine_busy_seconds() - busy - ours), window
        run.others_busy = run.others_cpu / window
        run.ms.update(cpu=cpu * 1000, cpu_control_plane=cp_used * 1000, cpu_nse=nse_used * 1000)
        if cpu_ns is not None:
            run.ms["cpu_sched"] = cpu_ns / 1e6
        run.kb.update(rss=mem.rss, pss=mem.pss, peak=mem.peak, anon=anon or 0)
        timings = client_timings(lab, proc, client, deadline)
        for key in ("lookup", "request"):
            if key in timings:
                run.ms[key] = (timings[key][1] - timings[key][0]) * 1000
        program_start, ready_at = timings["startup"][1], timings["ready"][1]
        run.ms["ready"] = (ready_at - proc.started_wall) * 1000
        run.ms["startup"] = (program_start - proc.started_wall) * 1000
        if "request" in timings:
            # what each asks of the manager before it has a link, dial included: Go's Request dials (and
            # opens heal's monitor stream); ours dialled for the lookup that comes before its Request
            run.ms["manager_calls"] = run.ms["request"] + run.ms.get("lookup", 0.0)
            request_start, request_end = timings["request"]
            run.ms["before_request"] = (request_start - program_start) * 1000
            run.ms["after_request"] = (ready_at - request_end) * 1000

        lab.wait(
            lambda: bool(lab.events("nsmgr.request", id=conn_id)),
            deadline,
            f"the nsmgr's nsmgr.request event for {conn_id}",
            0.02,
        )
        nsmgr = nsmgr_share(lab, lab.events("nsmgr.request", id=conn_id)[0])
        if nsmgr is not None:
            run.ms["nsmgr"] = nsmgr * 1000

        sigterm = time.monotonic()
        run.exit_code = stop(proc, min(20.0, max(1.0, deadline - time.monotonic())))
        run.ms["close"] = (time.monotonic() - sigterm) * 1000
        lab.wait(
            lambda: bool(lab.events("nsmgr.close", id=conn_id)),
            deadline,
            f"the nsmgr to close {conn_id}",
            0.02,
            leaving=proc,
        )
        run.problems = log_problems(proc, client)
        if run.exit_code != 0:
            run.problems[f"exit {run.exit_code}"] += 1
        return run
    except BenchFailed:
        lab.keep_directory = True
        raise
    finally:
        if proc is not None:
            stop(proc, 15)
            lab.processes.remove(proc)
        lab.delete_netns(netns)


def client_timings(lab: Lab, proc: Proc, client: str, deadline: float) -> dict[str, tuple[float, float]]:
    """Wall-clock (start, end) of: startup (exec -> the program's first own timestamp), ready (exec ->
    ready, from the program's own clock), request and, for ours, lookup (the held-connections Monitor
    call before the first Request); ours without the probe: only startup and ready (ms stamps)."""
    if client == GO:
        found: list[dict[str, Any]] = []

        def timed() -> bool:
            found[:] = [e for e in json_lines(proc.log_path) if e.get("event") == "nsc.request_timing"]
            return bool(found)

        lab.wait(timed, deadline, f"{proc.name}'s nsc.request_timing line (harness built with -timing?)")
        line = found[0]
        if line.get("attempts", 1) != 1:
            raise BenchFailed(
                f"{proc.name} needed {line['attempts']} Request attempts; logs in {lab.directory}"
            )
        start = wall(line["request_start"])
        return {
            "startup": (proc.started_wall, wall(line["entered"])),
            "ready": (proc.started_wall, wall(line["ready"])),
            "request": (start, start + float(line["last_ms"]) / 1000),
        }
    events: list[dict[str, str]] = []

    def logged() -> bool:
        events[:] = logfmt_events(proc.log_path)
        return first_event(events, "agent.ready") is not None

    lab.wait(logged, deadline, f"{proc.name} to log agent.ready")
    agent_start, agent_ready = first_event(events, "agent.start"), first_event(events, "agent.ready")
    if agent_start is None or agent_ready is None:
        raise BenchFailed(f"{proc.name} logged no agent.start; logs in {lab.directory}")
    ready = first_event(events, "probe.ready")
    timings = {
        "startup": (proc.started_wall, wall(agent_start["ts"])),
        "ready": (proc.started_wall, float(ready["at"]) if ready else wall(agent_ready["ts"])),
    }
    request, lookup = first_event(events, "probe.request"), first_event(events, "probe.lookup")
    if request is None or lookup is None:
        return timings  # --no-probe
    if request.get("ok") != "true" or len([e for e in events if e.get("event") == "probe.request"]) != 1:
        raise BenchFailed(f"{proc.name}'s first Request failed or was retried; logs in {lab.directory}")

    def span(event: dict[str, str]) -> tuple[float, float]:
        begin = float(event["start"])
        return begin, begin + float(event["ms"]) / 1000

    return {**timings, "lookup": span(lookup), "request": span(request)}


def nsmgr_share(lab: Lab, event: dict[str, Any]) -> float | None:
    """Seconds from when the nsmgr signed its path token for this Request (its segment's expiry minus the
    token lifetime; the harness's tokens carry nanoseconds) to its `nsmgr.request` event (its reply)."""
    segments = event.get("connection", {}).get("path", {}).get("path_segments", [])
    ours = [s for s in segments if s.get("name") == lab.ready.get("nsmgr_name") and s.get("expires")]
    if not ours:
        return None
    return wall(event["time"]) - (wall(ours[0]["expires"]) - TOKEN_LIFETIME_S)


def log_problems(proc: Proc, client: str) -> Counter[str]:
    found: Counter[str] = Counter()
    try:
        text = proc.log_path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        if client == OURS:
            if (" level=warning " in line or " level=error " in line or line.startswith("Traceback")) and (
                "event=security.insecure" not in line  # the insecure mode says so, as it should
            ):
                event = next((p[6:] for p in line.split() if p.startswith("event=")), line[:60])
                found[event] += 1
        elif GO_PROBLEM.search(line):
            found[line[20:100].strip()] += 1  # after the "Dec  3 08:23:39.374 " stamp
    return found


# --- the report ---------------------------------------------------------------------------------------------


def values(runs: Sequence[Run], client: str, key: str) -> list[float]:
    return [
        float(r.ms[key]) if key in r.ms else float(r.kb[key])
        for r in runs
        if r.client == client and (key in r.ms or key in r.kb)
    ]


def spread(numbers: Sequence[float], fmt: Callable[[float], str]) -> str:
    if not numbers:
        return "-"
    return f"{fmt(median(numbers))} ({fmt(min(numbers))}-{fmt(max(numbers))})"


def ms1(value: float) -> str:
    return f"{value:.1f}"


def ms0(value: float) -> str:
    return f"{value:.0f}"


def p(numbers: Sequence[float], fraction: float) -> float:
    return percentile(sorted(numbers), fraction)


def summary(runs: Sequence[Run]) -> dict[str, dict[str, float]]:
    """Per client: the headline figures (ms, KiB)."""
    out: dict[str, dict[str, float]] = {}
    for client in CLIENTS:
        request, calls = values(runs, client, "request"), values(runs, client, "manager_calls")
        out[client] = {
            "request_p50_ms": p(request, 0.5),
            "request_p99_ms": p(request, 0.99),
            "manager_calls_p50_ms": p(calls, 0.5),
            "manager_calls_p99_ms": p(calls, 0.99),
            "ready_median_ms": median(values(runs, client, "ready")),
            "cpu_median_ms": median(values(runs, client, "cpu")),
            "cpu_sched_median_ms": median(values(runs, client, "cpu_sched")),
            "rss_median_kb": median(values(runs, client, "rss")),
            "pss_median_kb": median(values(runs, client, "pss")),
            "anon_median_kb": median(values(runs, client, "anon")),
            "nsmgr_p50_ms": p(values(runs, client, "nsmgr"), 0.5),
            # CPU seconds over seconds of all runs: one run's window is a few /proc/stat ticks at most
            "others_busy": sum(r.others_cpu for r in runs if r.client == client)
            / (sum(r.window for r in runs if r.client == client) or 1.0),
        }
    return out


def report(runs: Sequence[Run], probe: bool, whole_run_load: float | None) -> dict[str, dict[str, float]]:
    counted = [r for r in runs if r.counted]
    counts = {c: len([r for r in counted if r.client == c]) for c in CLIENTS}
    print(f"Security: {MODE}")
    print(
        f"Endpoint: the harness's Go reference nse; {counts[OURS]} runs of ours, {counts[GO]} of Go's, "
        "alternating, each in a fresh netns; milliseconds / MiB, median (min-max) unless said otherwise"
    )
    print()

    def row(label: str, key: str, fmt: Callable[[float], str] = ms1) -> list[str]:
        return [label, *(spread(values(counted, c, key), fmt) for c in CLIENTS)]

    def mem_row(label: str, key: str) -> list[str]:
        return [label, *(spread(values(counted, c, key), mib) for c in CLIENTS)]

    def pct_row(label: str, key: str) -> list[str]:
        return [
            label,
            *(
                f"{p(values(counted, c, key), 0.5):.1f} / {p(values(counted, c, key), 0.99):.1f}"
                for c in CLIENTS
            ),
        ]

    rows = [
        pct_row("**Request latency p50 / p99** (client's view)", "request"),
        row("Request latency", "request"),
        pct_row("lookup + Request p50 / p99 (ours; Go: Request, which dials itself)", "manager_calls"),
        pct_row("nsmgr's share p50 / p99 (its token signed -> its reply)", "nsmgr"),
        row("**exec -> ready** (the program's own clock)", "ready", ms1),
        row("**CPU to ready** (utime+stime of /proc/pid/stat, 10 ms ticks)", "cpu", ms0),
        row("CPU to ready (live threads' on-CPU time, schedstat; ms)", "cpu_sched", ms1),
        mem_row("**RSS at ready**", "rss"),
        mem_row("PSS at ready", "pss"),
        mem_row("anonymous RSS at ready (RssAnon)", "anon"),
        mem_row("peak RSS (VmHWM) at ready", "peak"),
        row("control plane CPU, exec -> ready (ms)", "cpu_control_plane"),
        row("endpoint CPU, exec -> ready (ms)", "cpu_nse"),
        row("SIGTERM -> exited (Close included)", "close", ms0),
    ]
    print(table(["measure", LABEL[OURS], LABEL[GO]], rows))
    print("(p99 is nearest-rank: with fewer than 100 runs it is the slowest run or close to it. PSS shares")
    print(" pages out among every process that maps them, other people's Python or nsmharness processes")
    print(" included, so it moves with whatever else runs; RssAnon is what the process has to itself)")
    print()
    print("Where the time to ready goes (median ms)")
    print()
    breakdown = [
        [
            "exec -> the program's first own timestamp",
            "Python start-up, imports, settings (`agent.start`)",
            spread(values(counted, OURS, "startup"), ms0),
            "Go runtime start-up (-timing's `entered`)",
            spread(values(counted, GO, "startup"), ms0),
        ],
        [
            "-> the Request leaves",
            "channel, netns fd, held-connections lookup (Monitor RPC, first connect)",
            spread(values(counted, OURS, "before_request"), ms1),
            "flags, client chain built",
            spread(values(counted, GO, "before_request"), ms1),
        ],
        [
            "of which: the lookup",
            "probe.lookup",
            spread(values(counted, OURS, "lookup"), ms1),
            "(none: the harness nsc does not look up)",
            "-",
        ],
        [
            "the Request",
            "NsmClient.request (connection already up)",
            spread(values(counted, OURS, "request"), ms1),
            "nsc.Request (dials, Request, opens heal's monitor stream)",
            spread(values(counted, GO, "request"), ms1),
        ],
        [
            "Request returned -> ready",
            "verify the interface (netlink), NSM_READY_FILE",
            spread(values(counted, OURS, "after_request"), ms1),
            "log, write -out",
            spread(values(counted, GO, "after_request"), ms1),
        ],
    ]
    print(table(["step", "ours: what", "ours", "Go: what", "Go"], breakdown))
    print()
    figures = summary(counted)
    ratio_rows = []
    for label, key, target in (
        ("Request latency p50", "request_p50_ms", True),
        ("Request latency p99", "request_p99_ms", True),
        ("lookup + Request p50 (Go: Request)", "manager_calls_p50_ms", True),
        ("lookup + Request p99 (Go: Request)", "manager_calls_p99_ms", True),
        ("exec -> ready (median)", "ready_median_ms", True),
        ("CPU to ready (median, /proc/pid/stat)", "cpu_median_ms", True),
        ("CPU to ready (median, schedstat)", "cpu_sched_median_ms", True),
        ("RSS at ready (median)", "rss_median_kb", False),
        ("PSS at ready (median)", "pss_median_kb", False),
        ("anonymous RSS at ready (median)", "anon_median_kb", False),
    ):
        ours, go = figures[OURS][key], figures[GO][key]
        ratio = ours / go if go else float("inf")
        verdict = ("met" if ratio <= 1.0 else "NOT met") if target else "as measured (no target)"
        unit = "MiB" if key.endswith("_kb") else "ms"
        show = mib if unit == "MiB" else ms1
        ratio_rows.append([label, f"{show(ours)} {unit}", f"{show(go)} {unit}", f"{ratio:.2f}", verdict])
    print("Ours / Go (target for latency, ready and CPU: ratio <= 1.0)")
    print()
    print(table(["measure", "ours", "Go", "ours / Go", "target"], ratio_rows))
    print()
    busy = ", ".join(f"{LABEL[c]} {figures[c]['others_busy']:.2f}" for c in CLIENTS)
    with open("/proc/loadavg") as loadavg:
        load = " ".join(loadavg.read().split()[:3])
    whole = f"{whole_run_load:.2f}" if whole_run_load is not None else "-"
    print(
        "Other load (cores busy with processes not part of the bench, from /proc/stat): during the clients' "
        f"exec -> ready windows {busy}; over the whole bench {whole}; load average at the end: {load}"
    )
    if not probe:
        print("--no-probe: ours ran as `python -m nsc_sidecar`; its Request figures are missing")
    problems = Counter[str]()
    for r in counted:
        problems.update({f"{r.client} {k}": v for k, v in r.problems.items()})
    if problems:
        print(
            "Warnings, errors and bad exits in the clients' logs: "
            + ", ".join(f"{k} ({v})" for k, v in sorted(problems.items()))
        )
    else:
        print(
            "No warnings or errors in the clients' logs (besides our insecure mode's `security.insecure`); "
            "every client exited 0."
        )
    print()
    return figures


def print_versions() -> list[tuple[str, str]]:
    versions = [
        ("project", package_versions("nsm-topology-sidecars")),
        (
            "go modules (harness)",
            ", ".join(f"{m.removeprefix('github.com/')} {v}" for m, v in go_module_versions()),
        ),
        ("harness built with", go_toolchain()),
        ("our client runs", f"{sys.executable} (python {sys.version.split()[0]})"),
    ]
    for key, value in versions:
        print(f"{key:>22}: {value}")
    print()
    return versions


class LoadMeter:
    """Cores busy with processes that are not the bench's, from now until `others()`: the machine's busy
    time minus the bench's own CPU (with the clients it has reaped) and the control plane's and endpoint's."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.start = time.monotonic()
        self.busy, self.own, self.servers = machine_busy_seconds(), own_cpu_seconds(), self._servers()

    def _servers(self) -> float:
        return sum(cpu_seconds(p.pid) or 0.0 for p in (self.lab.control_plane, self.lab.endpoint) if p)

    def others(self) -> float:
        ours = own_cpu_seconds() - self.own + self._servers() - self.servers
        return max(0.0, machine_busy_seconds() - self.busy - ours) / (time.monotonic() - self.start)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the cleanup


def harness_has_timing() -> bool:
    result = run_quiet(str(HARNESS_BIN), "nsc", "-h")
    return "-timing" in result.stdout + result.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=30, help="counted runs of each client (default %(default)s)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=30, help="bound for one client's run (s)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write every raw figure here")
    parser.add_argument(
        "--no-probe",
        action="store_true",
        help="run our client as `python -m nsc_sidecar` (no Request timing)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs (always on failure)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    if not 1 <= args.runs <= 100 or not 0 <= args.warmup <= 5:
        parser.error("--runs must be 1..100 and --warmup 0..5")
    if not HARNESS_BIN.exists():
        parser.error(f"{HARNESS_BIN} is missing: run scripts/build-interop.sh")
    if not harness_has_timing():
        parser.error(f"{HARNESS_BIN}'s nsc has no -timing flag: rebuild it with scripts/build-interop.sh")
    probe = not args.no_probe
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even if started with SIGINT ignored
    print_machine()
    versions = print_versions()
    runs: list[Run] = []
    lab = Lab(keep_directory=args.keep_logs)
    whole_run_load: float | None = None
    status = 0
    try:
        lab.start_control_plane(args.timeout)
        lab.start_endpoint(args.timeout)
        load_meter = LoadMeter(lab)
        index = 0
        for round_number in range(args.warmup + args.runs):
            counted = round_number >= args.warmup
            order = CLIENTS if round_number % 2 == 0 else CLIENTS[::-1]
            for client in order:
                index += 1
                print(
                    f"round {round_number + 1}/{args.warmup + args.runs}{'' if counted else ' (warm-up)'}: "
                    f"{client} ...",
                    file=sys.stderr,
                    flush=True,
                )
                run = run_client(lab, client, index, counted, probe, args.timeout)
                runs.append(run)
        whole_run_load = load_meter.others()
    except BenchFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        lab.keep_directory = True
        status = 1
    except KeyboardInterrupt:
        print("interrupted; everything was stopped and removed", file=sys.stderr)
        status = 130
    finally:
        lab.close()
    if status == 130:
        return status
    if not any(r.counted for r in runs):
        return status or 1
    figures = report(runs, probe, whole_run_load)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "command": [sys.executable, *sys.argv],
                    "machine": dict(machine()),
                    "versions": dict(versions),
                    "mode": MODE,
                    "endpoint": "harness Go reference nse",
                    "probe": probe,
                    "summary": figures,
                    "other_load_whole_run": whole_run_load,
                    "runs": [asdict(r) for r in runs],
                },
                indent=1,
            )
            + "\n"
        )
        print(f"raw figures: {args.json}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
