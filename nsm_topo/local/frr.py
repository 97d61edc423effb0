"""FRR in a device's namespace: one instance per namespace, FRR's own pathspace mechanism (`-N`).

As measured on these machines (build-environment.md): `zebra -N NAME -d -i /var/run/frr/NAME/zebra.pid -f
CONFIG` under `ip netns exec NAME`, then each routing daemon the configuration needs the same way; the
daemons drop to user `frr`, so the pid directory and the configuration must be readable by it. `vtysh -N
NAME` talks to that instance. Which daemons: zebra always, and ospfd, bgpd, isisd, staticd when the
configuration has `router ospf`, `router bgp`, `router isis` or a static route.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

from nsm_topo.local.processes import ProcessRecord, record_of
from nsm_topo.wiring import frr_daemons

FRR_LIB = Path("/usr/lib/frr")
RUN_FRR = Path("/var/run/frr")
_LOOPBACK = re.compile(r"^interface lo\s*\n(?:[ \t].*\n)*?[ \t]+ip address (\S+)/32", re.MULTILINE)


class FrrError(RuntimeError):
    """FRR cannot run (not installed, or a daemon did not start)."""


def installed() -> bool:
    return (FRR_LIB / "zebra").is_file()


def daemons_for(config: str) -> list[str]:
    return frr_daemons(config)  # shared with the Kubernetes pods' FRR `daemons` file


def loopback_of(config: str) -> ipaddress.IPv4Address | None:
    """The router's loopback, from its configuration (`interface lo` / `ip address A/32`)."""
    found = _LOOPBACK.search(config)
    return ipaddress.IPv4Address(found.group(1)) if found else None


def _own_by_frr(path: Path) -> None:
    os.chown(path, pwd.getpwnam("frr").pw_uid, grp.getgrnam("frr").gr_gid)


def start(netns: str, device: str, config: str, timeout: float = 10.0) -> list[ProcessRecord]:
    """Start the daemons `config` needs in `netns`; their records (they daemonize: pids from pid files).

    The configuration, pid files and logs go into FRR's own run directory for the pathspace
    (`/var/run/frr/<netns>/`), which belongs to `frr`: the daemons read their configuration after dropping
    to that user, so a lab directory only root may enter would leave them without one.
    """
    if not installed():
        raise FrrError(
            f"FRR is not installed ({FRR_LIB}/zebra missing): run scripts/setup.sh, or apt install frr"
        )
    rundir = RUN_FRR / netns
    rundir.mkdir(parents=True, exist_ok=True)
    _own_by_frr(rundir)
    config_path = rundir / "frr.conf"
    config_path.write_text(config)
    _own_by_frr(config_path)
    (rundir / "vtysh.conf").touch()  # vtysh_argv points vtysh here; without one it warns on every call
    records = []
    for daemon in daemons_for(config):
        pid_file = rundir / f"{daemon}.pid"
        pid_file.unlink(missing_ok=True)
        log = rundir / f"{daemon}.log"
        argv = [
            "ip",
            "netns",
            "exec",
            netns,
            str(FRR_LIB / daemon),
            "-N",
            netns,
            "-d",
            "-i",
            str(pid_file),
            "-f",
            str(config_path),
            "--log",
            f"file:{log}",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        record = _wait_pid(pid_file, daemon, device, str(log), timeout)
        if done.returncode != 0 or record is None:
            output = (done.stderr or done.stdout).strip()[-300:]
            raise FrrError(f"{daemon} did not start in {netns}: {output}")
        records.append(record)
    return records


def vtysh_argv(netns: str, argv: list[str]) -> list[str]:
    """`vtysh ARGS` for the instance in `netns`: its pathspace, and the run directory as its configuration
    directory (vtysh appends the pathspace to it)."""
    if "-N" in argv[1:] or "--pathspace" in argv[1:]:
        return argv
    return [argv[0], "-N", netns, "--config_dir", str(RUN_FRR), *argv[1:]]


def _wait_pid(pid_file: Path, role: str, device: str, log: str, timeout: float) -> ProcessRecord | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.05)
            continue
        return record_of(role, device, pid, log)
    return None


def remove_rundir(netns: str) -> None:
    shutil.rmtree(RUN_FRR / netns, ignore_errors=True)
