"""Every benchmark in one command: each script of bench/ in turn, its tables printed, everything in JSON.

    sudo python bench/run.py                 # the full runs docs/performance.md records (~20 min)
    sudo python bench/run.py --quick         # every script on a tiny workload (~2-3 min; CI runs this)
    sudo python bench/run.py --only kernel,startup --json out.json

Each benchmark runs as its own process (`python bench/<name>.py ARGS`), one after another so that none
measures another's load, with the arguments of the table below. The full mode's are the "typical run" of
bench/README.md. The quick mode proves that every benchmark still runs end to end and prints its tables;
its figures are too small to mean anything, and nothing here judges a time. It leaves out the soak, whose
one-minute version is a test (`tests/system/test_soak.py`).

The JSON (`--json`, default `bench-results.json` in the working directory) holds the machine, the
package versions, and per benchmark its arguments, exit code, wall time and printed output. Exit code:
0 when every benchmark exited 0, else 1 (the summary table says which).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchlib import machine, package_versions, table

BENCH_DIR = Path(__file__).resolve().parent
PACKAGES = ("grpcio", "protobuf", "pyjwt", "cryptography", "spiffe", "prometheus-client")


@dataclass(frozen=True)
class Suite:
    name: str
    full: tuple[str, ...]
    quick: tuple[str, ...] | None  # None: not in the quick mode
    needs: str


SUITES = (
    Suite("startup", ("--runs", "7"), ("--runs", "1"), "-"),
    Suite("kernel", ("--links", "60"), ("--links", "5", "--together", "20", "--spread", "20"), "root"),
    Suite("rpc", (), ("--calls", "100", "--concurrency", "4", "--payloads", "64"), "-"),
    Suite("accept", (), ("--seconds", "1", "--backends", "1,2", "--rate", "50"), "-"),
    Suite(
        "links",
        ("--topology", "fan", "--routers", "31", "--parallel", "2", "--nse-first"),
        ("--topology", "chain", "--routers", "3", "--settle", "1"),
        "root, iproute2",
    ),
    Suite(
        "lab_scale",
        ("--routers", "1000", "--links", "2000", "--agents", "2"),
        ("--routers", "6", "--links", "8", "--agents", "1"),
        "root, iproute2",
    ),
    Suite("security", ("--runs", "5"), ("--runs", "1", "--warmup", "0"), "root, iproute2"),
    Suite(
        "pod_resources",
        (),
        ("--routers", "3", "--extra", "0", "--settle", "2", "--idle", "3"),
        "root, FRR",
    ),
    Suite("versus_go", ("--runs", "30"), ("--runs", "2", "--warmup", "0"), "root, the interop harness"),
    Suite("soak", (), None, "root, iproute2"),
)


@dataclass
class Outcome:
    name: str
    argv: list[str]
    exit_code: int
    seconds: float
    output: str


def run_suite(suite: Suite, quick: bool, timeout: float) -> Outcome:
    args = suite.quick if quick else suite.full
    assert args is not None
    argv = [sys.executable, str(BENCH_DIR / f"{suite.name}.py"), *args]
    print(f"### {suite.name}: {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        code, output = done.returncode, done.stdout + (f"\n{done.stderr}" if done.returncode else "")
    except subprocess.TimeoutExpired as exc:
        code = -1
        output = f"{exc.stdout or ''}\nbench/run.py: {suite.name} did not end within {timeout:.0f} s"
    seconds = time.monotonic() - started
    print(output, flush=True)
    return Outcome(suite.name, argv[1:], code, round(seconds, 1), output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny workloads: does everything still run?")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"), metavar="PATH")
    parser.add_argument("--timeout", type=float, default=None, help="bound per benchmark (s)")
    args = parser.parse_args(argv)
    names = {suite.name for suite in SUITES}
    wanted = [name for name in args.only.split(",") if name]
    unknown = sorted(set(wanted) - names)
    if unknown:
        print(
            f"bench/run.py: --only {args.only}: unknown {', '.join(unknown)}"
            f" (known: {', '.join(sorted(names))})",
            file=sys.stderr,
        )
        return 2
    chosen = [
        s for s in SUITES if (not wanted or s.name in wanted) and (s.quick is not None or not args.quick)
    ]
    timeout = args.timeout or (300.0 if args.quick else 1800.0)
    mode = "quick" if args.quick else "full"
    facts = [*machine(), ("packages", package_versions(*PACKAGES)), ("mode", mode)]
    for key, value in facts:
        print(f"{key:>22}: {value}")
    print()
    outcomes = [run_suite(suite, args.quick, timeout) for suite in chosen]
    rows = [
        (
            o.name,
            " ".join(o.argv[1:]) or "(defaults)",
            "ok" if o.exit_code == 0 else f"exit {o.exit_code}",
            f"{o.seconds:.1f}",
        )
        for o in outcomes
    ]
    print(table(("benchmark", "arguments", "result", "seconds"), rows))
    skipped = [s.name for s in SUITES if s not in chosen]
    if skipped:
        print(f"not run ({mode} mode or --only): {', '.join(skipped)}")
    args.json.write_text(
        json.dumps({"machine": dict(facts), "results": [asdict(o) for o in outcomes]}, indent=2) + "\n"
    )
    print(f"results: {args.json}")
    return 0 if all(o.exit_code == 0 for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
