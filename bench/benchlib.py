"""Shared helpers for the benchmarks: reading a process's memory and CPU from /proc, the machine, tables.

Memory figures, all from the kernel:
  RSS   VmRSS of /proc/<pid>/status: resident pages, shared libraries counted in full in every process;
  peak  VmHWM: the highest RSS the process ever had;
  PSS   Pss of /proc/<pid>/smaps_rollup: shared pages divided among the processes sharing them, so PSS
        summed over all processes is the memory they really take together.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Memory:
    """Kilobytes, as /proc reports them."""

    rss: int
    peak: int
    pss: int


def memory(pid: int) -> Memory | None:
    """The process's memory now, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        pss = 0
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return Memory(_kb(fields.get("VmRSS")), _kb(fields.get("VmHWM")), pss)


def _kb(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) may hold spaces: split after its closing parenthesis
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have been busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLOCK_TICKS  # user..steal; guest time is already inside user


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for (e.g. `ip` calls)."""
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum((self_usage.ru_utime, self_usage.ru_stime, children.ru_utime, children.ru_stime))


def machine() -> list[tuple[str, str]]:
    """What the figures were measured on."""
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    with open("/proc/loadavg") as loadavg:
        load = " ".join(loadavg.read().split()[:3])
    return [
        ("cpus (nproc)", str(os.cpu_count())),
        ("cpu model", model),
        ("memory", f"{total_kb / 1024 / 1024:.1f} GiB"),
        ("kernel", platform.release()),
        ("python", sys.version.split()[0]),
        ("load average at start", load),
    ]


def package_versions(*names: str) -> str:
    from importlib import metadata

    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} ?")
    return ", ".join(found)


def print_machine() -> None:
    for key, value in machine():
        print(f"{key:>22}: {value}")
    packages = package_versions(
        "grpcio", "protobuf", "pyjwt", "cryptography", "spiffe", "pyasn1-modules"
    )
    print(f"{'packages':>22}: {packages}")
    print()


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table (readable in a terminal too), columns padded to their widest cell."""
    text_rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text_rows)) if text_rows else len(h) for i, h in
              enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(r) for r in text_rows)
    return "\n".join(out)


def mib(kilobytes: float) -> str:
    return f"{kilobytes / 1024:.1f}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def run_quiet(*argv: str, timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, input=input)
