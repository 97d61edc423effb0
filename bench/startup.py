"""What one sidecar process costs before it does anything: interpreter start, imports, memory.

For each program: wall and CPU time of `python -c "import <its agent module>"` and the peak RSS of that
process (from wait4's rusage), against a bare `python -c pass`; then, from `python -X importtime`, what
each large third-party package and the project's own packages take (median of `--runs` runs). Bounded by
`--runs` (default 5, at most 20). Needs no root.

`--compare DIR` measures the programs of another source tree as well (working directory and PYTHONPATH =
DIR), e.g. a `git archive` of an older commit with the generated protos copied in (see bench/security.py),
alternating the two trees run by run so that changing load hits both alike.

    python bench/startup.py
    python bench/startup.py --compare /tmp/nsmb-base
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchlib import median, mib, print_machine, table

PROGRAMS = {
    "bare python": "pass",
    "nsc-sidecar": "import nsc_sidecar.agent, nsc_sidecar.settings",
    "nse-sidecar": "import nse_sidecar.agent, nse_sidecar.settings",
    "nsm-local": "import nsm_local.server, nsm_local.__main__",
}
#: Top-level packages whose import cost is reported (cumulative microseconds from -X importtime).
PACKAGES = ("asyncio", "grpc", "google.protobuf", "pyroute2", "jwt", "cryptography", "spiffe", "pyasn1",
            "pyasn1_modules", "yaml", "nsm_sdk._proto", "nsm_sdk", "nsc_sidecar", "nse_sidecar", "nsm_local")


def _in_tree(tree: str | None) -> dict[str, Any]:
    """Popen options that import the programs from source tree `tree` (None: the installed project)."""
    if tree is None:
        return {}
    return {"cwd": tree, "env": {**os.environ, "PYTHONPATH": tree}}


def run_child(code: str, tree: str | None = None) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user+system) and peak RSS in KiB of `python -c code`."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code], **_in_tree(tree))
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"python -c {code!r} failed with {child.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def import_times(code: str, tree: str | None = None) -> dict[str, float]:
    """Milliseconds spent importing each package group of `code` (self times of all its modules summed,
    each module charged to the longest matching name in PACKAGES, the rest to "other"), plus "total"."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                            check=True, **_in_tree(tree))
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


def median_times(samples: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per package, the median over runs (a package missing from a run counts as 0 there)."""
    packages = {package for sample in samples for package in sample}
    return {package: median([sample.get(package, 0.0) for sample in samples]) for package in packages}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per program (1..20, default %(default)s)")
    parser.add_argument("--compare", default=None, metavar="DIR",
                        help="also measure the programs of this source tree, runs alternating")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be 1..20")
    other = os.path.abspath(args.compare) if args.compare is not None else None
    if other is not None and not os.path.exists(os.path.join(other, "nsc_sidecar", "agent.py")):
        parser.error(f"--compare {args.compare}: no source tree of this project there")
    trees: list[str | None] = [None] if other is None else [None, other]
    print_machine()
    if other is not None:
        print(f"compared with the programs in {other} (columns marked 'there'); runs alternate")
        print()
    rows = []
    for name, code in PROGRAMS.items():
        runs: dict[str | None, list[tuple[float, float, int]]] = {tree: [] for tree in trees}
        for _ in range(args.runs):
            for tree in trees:
                runs[tree].append(run_child(code, tree))
        row: list[object] = [name]
        cpus = []
        for tree in trees:
            wall, cpu, rss = (median([r[i] for r in runs[tree]]) for i in range(3))
            row += [f"{wall * 1000:.0f}", f"{cpu * 1000:.0f}", mib(rss)]
            cpus.append(cpu)
        if other is not None:
            row.append(f"{(cpus[0] - cpus[1]) * 1000:+.0f}")
        rows.append(row)
    print(f"Start-up and imports, median of {args.runs} runs")
    print()
    headers = ["program", "wall ms", "CPU ms", "peak RSS MiB"]
    if other is not None:
        headers += ["wall ms there", "CPU ms there", "peak RSS MiB there", "CPU ms here - there"]
    print(table(headers, rows))
    print()
    names = [n for n in PROGRAMS if n != "bare python"]
    columns: list[tuple[str, dict[str, float]]] = []
    for name in names:
        samples: dict[str | None, list[dict[str, float]]] = {tree: [] for tree in trees}
        for _ in range(args.runs):
            for tree in trees:
                samples[tree].append(import_times(PROGRAMS[name], tree))
        columns += [(name if tree is None else f"{name} there", median_times(samples[tree]))
                    for tree in trees]
    print(f"Where the import time goes (ms, median of {args.runs} runs of `python -X importtime`: self time "
          "of every module, summed per package; the interpreter's own start-up is not included)")
    print()
    print(table(["package", *(title for title, _ in columns)],
                [[package, *(f"{t[package]:.0f}" if t.get(package) else "-" for _, t in columns)]
                 for package in (*PACKAGES, "other", "total")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
