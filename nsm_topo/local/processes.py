"""Programs a lab runs in its namespaces: started detached, recorded with their start time, stopped surely.

A pid alone is not an identity (pids are reused): a record also keeps the process's start time from
`/proc/<pid>/stat`, and only a process with both is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    role: str
    """nse-sidecar, nsc-sidecar, zebra, ospfd, nsm-local, ..."""
    device: str
    pid: int
    start_time: int
    """Field 22 of /proc/<pid>/stat: clock ticks after boot when it started."""
    log: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(
            str(data["role"]),
            str(data["device"]),
            int(data["pid"]),
            int(data["start_time"]),
            str(data.get("log", "")),
        )


def start_time_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: count from the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def alive(record: ProcessRecord) -> bool:
    return start_time_of(record.pid) == record.start_time


def record_of(role: str, device: str, pid: int, log: str = "") -> ProcessRecord | None:
    started = start_time_of(pid)
    return None if started is None else ProcessRecord(role, device, pid, started, log)


def spawn(
    role: str,
    device: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    netns: str | None = None,
) -> ProcessRecord:
    """Start `argv` in its own session (it survives nsm-topo), stdout and stderr into `log_path`."""
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]  # `ip netns exec` execs: the pid is the program's
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    record = record_of(role, device, child.pid, str(log_path))
    if record is None:  # it died at once; the caller reads the log
        return ProcessRecord(role, device, child.pid, -1, str(log_path))
    return record


def stop(records: Iterable[ProcessRecord], grace: float) -> list[ProcessRecord]:
    """SIGTERM every live one, wait up to `grace` s, then SIGKILL; returns those that needed SIGKILL."""
    live = [r for r in records if alive(r)]
    for record in live:
        _signal(record, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(r) for r in live):
        _reap()
        time.sleep(0.05)
    killed = [r for r in live if alive(r)]
    for record in killed:
        _signal(record, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(r) for r in killed):
        _reap()
        time.sleep(0.05)
    return killed


def _signal(record: ProcessRecord, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, sig)


def _reap() -> None:
    """Collect our own exited children (started by this process), so they do not linger as zombies."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def processes_by_netns(netns_inodes: set[int]) -> list[tuple[int, int]]:
    """(pid, netns inode) of every process whose network namespace is one of these (what a crashed lab
    may have left behind), in one pass over /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            inode = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        if inode in netns_inodes:
            found.append((int(entry), inode))
    return found
