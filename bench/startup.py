"""What one sidecar process costs before it does anything: interpreter start, imports, memory.

For each program: wall and CPU time of `python -c "import <its agent module>"` and the peak RSS of that
process (from wait4's rusage), against a bare `python -c pass`; then, from `python -X importtime`, what
each large third-party package and the project's own packages take. Bounded by `--runs`
(default 5, at most 20). Needs no root.

    python bench/startup.py
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence

from benchlib import median, mib, print_machine, table

PROGRAMS = {
    "bare python": "pass",
    "nsc-sidecar": "import nsc_sidecar.agent, nsc_sidecar.settings",
    "nse-sidecar": "import nse_sidecar.agent, nse_sidecar.settings",
    "nsm-local": "import nsm_local.server, nsm_local.__main__",
}
#: Top-level packages whose import cost is reported (cumulative microseconds from -X importtime).
PACKAGES = ("asyncio", "grpc", "google.protobuf", "pyroute2", "jwt", "cryptography", "yaml", "nsm_sdk._proto",
            "nsm_sdk", "nsc_sidecar", "nse_sidecar", "nsm_local")


def run_child(code: str) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user+system) and peak RSS in KiB of `python -c code`."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code])
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"python -c {code!r} failed with {child.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def import_times(code: str) -> dict[str, float]:
    """Milliseconds spent importing each package group of `code` (self times of all its modules summed,
    each module charged to the longest matching name in PACKAGES, the rest to "other"), plus "total"."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                            check=True)
    found: dict[str, float] = {}
    pattern = re.compile(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)")
    for line in result.stderr.splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        own_ms, module = int(match.group(1)) / 1000, match.group(2)
        groups = [p for p in PACKAGES if module == p or module.startswith(p + ".")]
        group = max(groups, key=len) if groups else "other"
        found[group] = found.get(group, 0.0) + own_ms
        found["total"] = found.get("total", 0.0) + own_ms
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per program (1..20, default %(default)s)")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be 1..20")
    print_machine()
    rows = []
    for name, code in PROGRAMS.items():
        runs = [run_child(code) for _ in range(args.runs)]
        wall, cpu, rss = (median([r[i] for r in runs]) for i in range(3))
        rows.append([name, f"{wall * 1000:.0f}", f"{cpu * 1000:.0f}", mib(rss)])
    print(f"Start-up and imports, median of {args.runs} runs")
    print()
    print(table(["program", "wall ms", "CPU ms", "peak RSS MiB"], rows))
    print()
    times = [import_times(code) for code in PROGRAMS.values() if code != "pass"]
    print("Where the import time goes (ms, one run each, `python -X importtime`: self time of every module, "
          "summed per package; the interpreter's own start-up is not included)")
    print()
    names = [n for n in PROGRAMS if n != "bare python"]
    print(table(["package", *names],
                [[package, *(f"{t[package]:.0f}" if package in t else "-" for t in times)]
                 for package in (*PACKAGES, "other", "total")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
