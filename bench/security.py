"""What the secure mode costs a link: the two-device example end to end, secure (default) and insecure.

The seed's two-device example (`examples/p2p.yaml`, as `scripts/demo-p2p.sh` runs it) on a fresh nsm-local
per run: nsm-local, `nsm-local apply`, an nse-sidecar in device-2's netns (ENDPOINT_LABELS=device=device-2,
IP_ADDRESS=10.60.1.0/24) and, once it has registered, an nsc-sidecar in device-1's netns
(`p2p/eth12?link=net-0&peerif=eth21`). Two modes:

  secure     the default: nsm-local's development CA and Workload API (in the run's directory), every
             process fetches an X.509-SVID at start, mTLS on every connection, tokens signed with the
             SVIDs and NSM's policies at every hop
  insecure   nsm-local --insecure, NSM_INSECURE=true for the sidecars and the CLI: plaintext
  baseline   with `--baseline DIR`: the programs of another source tree, typically a commit from before
             the security work (plaintext, no identity code at all), run from DIR with PYTHONPATH=DIR:

               git archive 85e960f | tar -x -C DIR    # DIR empty; then the generated protos, gitignored:
               cp -r nsm_sdk/_proto/networkservice nsm_sdk/_proto/registry DIR/nsm_sdk/_proto/

Measured per run, from the NSM_READY_FILE's mtime and the processes' log timestamps (ms resolution):
link setup = nsc exec until its side of the link is verified (NSM_READY_FILE), and until the endpoint's
side is verified too (its `link.verified`); split into Python start-up (exec -> `agent.start`), identity
fetch (`agent.start` -> `identity.ready`, the SVID from the Workload API) and the rest (Request through
nsm-local to the endpoint and back, link checks); the CPU the nsc, the nse and nsm-local spent on it;
the endpoint's start until registered; nsm-local's start until it listens; the `apply`; and the teardown
(SIGTERM to the nsc until both interfaces are gone).

Runs alternate the modes (each round starts with the next mode) so that load drifting over the run hits
all alike; `--warmup` rounds are not counted. Every process runs in its own session
and is stopped when a run ends, fails, times out (`--timeout` per run) or is interrupted; the namespaces
`nsmb<tag>-r1`, `nsmb<tag>-r2` and the temp directory go with it (on a failure the logs are kept and
their directory printed). Needs root, iproute2 and the installed project.

    python bench/security.py                   # 5 runs of each mode, ~1 min
    python bench/security.py --runs 10 --baseline /tmp/nsmb-base
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from benchlib import cpu_seconds, machine_busy_seconds, median, own_cpu_seconds, print_machine, table
from links import BenchFailed, Lab, Proc, first_log_wall, log_warnings, wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "p2p.yaml"
SERVICE = "p2p"
CLIENT, ENDPOINT = 1, 2  # device-1 (nsc, eth12) and device-2 (nse, eth21): Lab's routers r1 and r2
CLIENT_IF, ENDPOINT_IF = "eth12", "eth21"
SECURE, INSECURE, BASELINE = "secure", "insecure", "baseline"
EXPECTED_WARNINGS = {"security.insecure"}  # the insecure mode says so loudly, as it should


@dataclass
class Run:
    mode: str
    ms: dict[str, float] = field(default_factory=dict)
    """Measure key -> milliseconds (missing when the mode has no such step)."""
    others_busy: float = 0.0
    problems: Counter[str] = field(default_factory=Counter)


# Measure keys and their row labels, in report order.
MEASURES: tuple[tuple[str, str], ...] = (
    ("link", "**nsc exec -> its side verified (NSM_READY_FILE)**"),
    ("both", "nsc exec -> both sides verified (nse `link.verified`)"),
    ("startup", "of which: nsc exec -> `agent.start` (Python start-up, imports)"),
    ("identity", "of which: `agent.start` -> `identity.ready` (SVID from the Workload API)"),
    ("requests", "of which: identity (insecure: `agent.start`) -> `agent.ready` (Request, link check)"),
    ("nsc_cpu", "nsc CPU until ready"),
    ("nsm_cpu", "nsm-local CPU from nsc exec until ready"),
    ("nse_registered", "nse exec -> registered (NSM_READY_FILE)"),
    ("nse_identity", "of which: nse exec -> `identity.ready`"),
    ("nse_cpu", "nse CPU until registered"),
    ("nsm_listening", "nsm-local exec -> `server.listening`"),
    ("apply", "`nsm-local apply -f examples/p2p.yaml` (wall)"),
    ("down", "SIGTERM to nsc -> both interfaces gone"),
)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _mtime(path: Path | None) -> float | None:
    try:
        return os.stat(path).st_mtime_ns / 1e9 if path is not None else None
    except FileNotFoundError:
        return None


def _since(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def run_once(mode: str, timeout: float, keep_logs: bool, baseline: Path | None) -> Run:
    run = Run(mode)
    code_dir = baseline if mode == BASELINE else None
    lab = Lab(keep_directory=keep_logs, insecure=mode != SECURE, code_dir=code_dir)
    try:
        deadline = time.monotonic() + timeout
        client_ns, endpoint_ns = lab.add_netns(CLIENT), lab.add_netns(ENDPOINT)
        nsm = lab.start_nsm_local()
        started = time.monotonic()
        lab.apply(EXAMPLE.read_text())
        run.ms["apply"] = (time.monotonic() - started) * 1000

        nse = lab.start("nse-sidecar", "device-2-nse", {
            "ENDPOINT_NETWORK_SERVICE": SERVICE,
            "ENDPOINT_LABELS": "device=device-2",
            "IP_ADDRESS": "10.60.1.0/24",
        }, endpoint_ns, ready=True)
        wait_for(nse.ready, deadline, "the endpoint to register", lab, interval=0.01)

        nsm_cpu, nse_cpu = cpu_seconds(nsm.pid) or 0.0, cpu_seconds(nse.pid) or 0.0
        run.ms["nse_cpu"] = nse_cpu * 1000
        busy, own, window = machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
        entry = f"{SERVICE}/{CLIENT_IF}?link=net-0&peerif={ENDPOINT_IF}"
        nsc = lab.start("nsc-sidecar", "device-1-nsc", {"NS_NETWORKSERVICEMESH_IO": entry}, client_ns,
                        ready=True)
        wait_for(nsc.ready, deadline, "the client's link to be verified", lab, interval=0.01)
        window = time.monotonic() - window
        nsc_cpu = cpu_seconds(nsc.pid) or 0.0
        nsm_cpu = (cpu_seconds(nsm.pid) or 0.0) - nsm_cpu
        ours = nsc_cpu + nsm_cpu + (cpu_seconds(nse.pid) or 0.0) - nse_cpu + own_cpu_seconds() - own
        run.others_busy = max(0.0, machine_busy_seconds() - busy - ours) / window
        run.ms["nsc_cpu"], run.ms["nsm_cpu"] = nsc_cpu * 1000, nsm_cpu * 1000

        def both_present() -> bool:
            found = lab.interfaces()
            return bool(found[CLIENT].get(CLIENT_IF)) and bool(found[ENDPOINT].get(ENDPOINT_IF))

        wait_for(both_present, deadline, f"{CLIENT_IF} and {ENDPOINT_IF} with addresses", lab, interval=0.05)
        endpoint_verified = wait_for_log(nse, "link.verified", deadline, lab)
        record_startup(run, lab, nsm, nse, nsc, endpoint_verified)

        started = time.monotonic()
        nsc.popen.send_signal(signal.SIGTERM)

        def both_gone() -> bool:
            found = lab.interfaces()
            return CLIENT_IF not in found[CLIENT] and ENDPOINT_IF not in found[ENDPOINT]

        run.ms["down"] = (wait_for_exit_ok(both_gone, deadline, lab, nsc) - started) * 1000
        run.problems = Counter({k: v for k, v in log_warnings(lab.processes).items()
                                if k.split(":", 1)[1] not in EXPECTED_WARNINGS})
        return run
    except BenchFailed:
        lab.keep_directory = True
        raise
    finally:
        lab.close()


def wait_for_log(proc: Proc, event: str, deadline: float, lab: Lab) -> float:
    found: list[float] = []

    def logged() -> bool:
        stamp = first_log_wall(proc, event)
        if stamp is not None:
            found.append(stamp)
        return stamp is not None

    wait_for(logged, deadline, f"{proc.name} to log {event}", lab, interval=0.02)
    return found[0]


def wait_for_exit_ok(condition: Callable[[], bool], deadline: float, lab: Lab, leaving: Proc) -> float:
    """`wait_for` that tolerates `leaving` exiting (it was told to) but no other process."""
    while True:
        if condition():
            return time.monotonic()
        dead = [p for p in lab.processes if p is not leaving and not p.alive()]
        if dead:
            raise BenchFailed(f"{dead[0].name} exited with {dead[0].popen.returncode}:\n{dead[0].log_tail()}")
        if time.monotonic() > deadline:
            raise BenchFailed("timed out waiting for the link to go down")
        time.sleep(0.02)


def record_startup(run: Run, lab: Lab, nsm: Proc, nse: Proc, nsc: Proc, endpoint_verified: float) -> None:
    ready = _mtime(nsc.ready_file)
    agent_start, identity = first_log_wall(nsc, "agent.start"), first_log_wall(nsc, "identity.ready")
    agent_ready = first_log_wall(nsc, "agent.ready")
    measured = {
        "link": _since(nsc.started_wall, ready),
        "both": _since(nsc.started_wall, max(ready or 0.0, endpoint_verified)),
        "startup": _since(nsc.started_wall, agent_start),
        "identity": _since(agent_start, identity),
        "requests": _since(identity if identity is not None else agent_start, agent_ready),
        "nse_registered": _since(nse.started_wall, _mtime(nse.ready_file)),
        "nse_identity": _since(nse.started_wall, first_log_wall(nse, "identity.ready")),
        "nsm_listening": _since(nsm.started_wall, first_log_wall(nsm, "server.listening")),
    }
    if run.mode == SECURE and identity is None:
        raise BenchFailed(f"secure run, but the client logged no identity.ready; logs in {lab.directory}")
    for key, seconds in measured.items():
        value = _ms(seconds)
        if value is not None:
            run.ms[key] = value


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def _difference(a: Sequence[float], b: Sequence[float]) -> str:
    return f"{median(a) - median(b):+.0f}" if a and b else "-"


def report(runs: Sequence[Run], baseline: Path | None) -> None:
    modes = [SECURE, INSECURE] + ([BASELINE] if baseline is not None else [])
    by_mode = {mode: [r for r in runs if r.mode == mode] for mode in modes}
    counts = ", ".join(f"{len(v)} {k}" for k, v in by_mode.items())
    print(f"The two-device example, nse registered first, {counts} runs: milliseconds, median (min-max)")
    if baseline is not None:
        print(f"baseline = the programs in {baseline} (plaintext, no identity code)")
    print()
    pairs = [(SECURE, INSECURE)] + ([(SECURE, BASELINE), (INSECURE, BASELINE)] if baseline else [])
    rows = []
    for key, label in MEASURES:
        values = {mode: [r.ms[key] for r in by_mode[mode] if key in r.ms] for mode in modes}
        rows.append([label, *(_spread(values[mode]) for mode in modes),
                     *(_difference(values[a], values[b]) for a, b in pairs)])
    print(table(["measure", *(f"{m} (default)" if m == SECURE else m for m in modes),
                 *(f"{a} - {b}" for a, b in pairs)], rows))
    print("(differences of the medians)")
    print()
    busy = {mode: median([r.others_busy for r in v]) for mode, v in by_mode.items()}
    print("Other load during the link setups (cores busy with processes not part of the run, median): "
          + ", ".join(f"{mode} {value:.2f}" for mode, value in busy.items()))
    problems = Counter[str]()
    for r in runs:
        problems.update({f"{r.mode} {k}": v for k, v in r.problems.items()})
    if problems:
        print("Warnings and errors in the logs (mode role:event count): "
              + ", ".join(f"{k} {v}" for k, v in sorted(problems.items())))
    else:
        print("No warnings or errors in any log (besides the insecure mode's `security.insecure`).")
    print()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through run_once's cleanup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="counted runs of each mode (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=60, help="bound for one run (s)")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="also run the programs of this source tree (see the module docstring)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs (always on failure)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    if not 1 <= args.runs <= 50 or not 0 <= args.warmup <= 5:
        parser.error("--runs must be 1..50 and --warmup 0..5")
    baseline = args.baseline.resolve() if args.baseline is not None else None
    if baseline is not None and not (baseline / "nsc_sidecar" / "__main__.py").exists():
        parser.error(f"--baseline {args.baseline}: no source tree of this project there")
    modes = [SECURE, INSECURE] + ([BASELINE] if baseline is not None else [])
    signal.signal(signal.SIGTERM, _on_sigterm)
    print_machine()
    runs: list[Run] = []
    try:
        for round_number in range(args.warmup + args.runs):
            shift = round_number % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                counted = round_number >= args.warmup
                print(f"round {round_number + 1}/{args.warmup + args.runs}{'' if counted else ' (warm-up)'}: "
                      f"{mode} ...", file=sys.stderr, flush=True)
                result = run_once(mode, args.timeout, args.keep_logs, baseline)
                if counted:
                    runs.append(result)
    except BenchFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        if runs:
            report(runs, baseline)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything was stopped and removed", file=sys.stderr)
        return 130
    report(runs, baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
