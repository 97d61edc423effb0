"""The `nsm-topo` command as a user runs it, against a lab with its own sockets and state directory
(--connect-to, --workload-api, --state-dir), so nothing of the host's own nsm-local or labs is touched;
and what to look at afterwards (the lab's namespaces, processes left behind, each link's addresses against
the planned ones). Shared by tests/system.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from labtools import run

from nsm_topo.topology import Topology
from nsm_topo.wiring import planned_addresses, wire


@dataclass
class TopoCli:
    directory: Path

    @property
    def options(self) -> list[str]:
        return [
            "--connect-to",
            f"unix://{self.directory}/sock/nsm.sock",
            "--workload-api",
            f"unix://{self.directory}/sock/agent.sock",
            "--state-dir",
            str(self.directory / "state"),
        ]

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        command, rest = args[0], args[1:]
        options = self.options if command not in ("random", "show") else []
        return subprocess.run(
            [sys.executable, "-m", "nsm_topo", command, *options, *rest],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.directory,
        )


def lab_namespaces(name: str) -> list[str]:
    listed = run("ip", "-j", "netns", "list").stdout
    return sorted(ns["name"] for ns in json.loads(listed or "[]") if ns["name"].startswith(f"{name}-"))


def processes_of(directory: Path) -> list[str]:
    """Command lines of processes started for this test's labs (their sockets or state are in their argv)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            # not "pytest" not in cmdline: the test's own directory (/tmp/pytest-of-root/...) holds that word
            if str(directory) in cmdline and int(entry) != os.getpid():
                found.append(cmdline)
    return found


def planned(topology: Topology) -> dict[str, tuple[str, str]]:
    wiring = wire(topology)
    return {
        link.name: planned_addresses(wiring.device(link.endpoint.device), link) for link in topology.links
    }


def interface_addresses(topology: Topology) -> dict[str, tuple[str, str]]:
    """Each link's (client, endpoint) address as the kernel has it, read in the two namespaces."""

    def address(device: str, interface: str) -> str:
        shown = json.loads(
            run("ip", "-j", "-n", f"{topology.name}-{device}", "addr", "show", interface).stdout
        )
        info = shown[0]["addr_info"][0]
        return f"{info['local']}/{info['prefixlen']}"

    return {
        link.name: (
            address(link.client.device, link.client.interface),
            address(link.endpoint.device, link.endpoint.interface),
        )
        for link in topology.links
    }
