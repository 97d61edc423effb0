"""A throwaway lab for system tests: network namespaces plus nsm-local, nse-sidecar and nsc-sidecar run
as separate processes, exactly as a user runs them. Everything is torn down at the end, also on failure:
processes get SIGTERM (then SIGKILL), namespaces are deleted, and the socket directory goes with tmp_path.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from labtools import run, wait_until

from nsm_sdk.transport.probe import socket_problem

PROGRAMS = {
    "nsm-local": "nsm_local",
    "nse-sidecar": "nse_sidecar",
    "nsc-sidecar": "nsc_sidecar",
    "nsm-agent": "nsm_agent",
}


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, event: str | None = None) -> list[dict[str, str]]:
        """Parsed logfmt lines with `event=<event>` (every line that has an event, without one)."""
        found = []
        for line in self.log.splitlines():
            fields = _logfmt(line)
            if fields.get("event") == event or (event is None and "event" in fields):
                found.append(fields)
        return found

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        return self.popen.wait(timeout)


def _logfmt(line: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    i = 0
    while i < len(line):
        eq = line.find("=", i)
        if eq < 0:
            break
        key = line[i:eq].strip()
        i = eq + 1
        if i < len(line) and line[i] == '"':
            j = i + 1
            value = []
            while j < len(line) and line[j] != '"':
                if line[j] == "\\" and j + 1 < len(line):
                    j += 1
                value.append(line[j])
                j += 1
            fields[key] = "".join(value)
            i = j + 2
        else:
            j = line.find(" ", i)
            j = len(line) if j < 0 else j
            fields[key] = line[i:j]
            i = j + 1
    return fields


@dataclass
class Lab:
    directory: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return f"unix://{self.directory}/nsm.sock"

    @property
    def workload_api(self) -> str:
        """nsm-local's development SPIFFE Workload API of this lab (the sidecars' SPIFFE_ENDPOINT_SOCKET)."""
        return f"unix://{self.directory}/agent.sock"

    def netns(self, name: str) -> str:
        full = f"{name}-{self.tag}"
        run("ip", "netns", "add", full)
        self.namespaces.append(full)
        return full

    def start(
        self,
        program: str,
        env: Mapping[str, str] | None = None,
        netns: str | None = None,
        args: tuple[str, ...] = (),
    ) -> Process:
        argv = [sys.executable, "-m", PROGRAMS[program], *args]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        index = sum(1 for p in self.processes if p.name.startswith(program))
        log_path = self.directory / f"{program}-{index}.log"
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "NSM_CONNECT_TO": self.socket,
            "SPIFFE_ENDPOINT_SOCKET": self.workload_api,
            **(env or {}),
        }
        with log_path.open("wb") as log:
            popen = subprocess.Popen(argv, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        process = Process(program, popen, log_path)
        self.processes.append(process)
        return process

    def nsm_local(self, *extra: str) -> Process:
        process = self.start(
            "nsm-local",
            args=(
                "serve",
                "--listen",
                self.socket,
                "--state-dir",
                str(self.directory),
                "--workload-api",
                self.workload_api,
                *extra,
            ),
        )
        wait_until(
            lambda: socket_problem(self.socket) is None or not process.alive(),  # not a killed one's file
            10,
            "nsm-local to listen",
        )
        assert process.alive(), process.log
        return process

    def nsm_local_cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nsm_local", *args, "--connect-to", self.socket],
            env={**os.environ, "SPIFFE_ENDPOINT_SOCKET": self.workload_api},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def apply(self, manifest: str) -> None:
        path = self.directory / f"manifest-{secrets.token_hex(3)}.yaml"
        path.write_text(manifest)
        result = self.nsm_local_cli("apply", "-f", str(path))
        assert result.returncode == 0, result.stderr

    def nse(self, netns: str, **env: str) -> Process:
        return self.start("nse-sidecar", env, netns)

    def nsc(self, netns: str, **env: str) -> Process:
        return self.start("nsc-sidecar", env, netns)

    def addresses(self, netns: str) -> dict[str, list[str]]:
        """Interface name → global addresses (addr/len) in a netns."""
        out = run("ip", "-n", netns, "-j", "addr", "show").stdout
        result: dict[str, list[str]] = {}
        for link in json.loads(out or "[]"):
            if link["ifname"] == "lo":
                continue
            result[link["ifname"]] = [
                f"{a['local']}/{a['prefixlen']}"
                for a in link.get("addr_info", [])
                if a.get("scope") == "global"
            ]
        return result

    def link_up(self, netns: str, ifname: str, *addresses: str) -> bool:
        found = self.addresses(netns).get(ifname)
        return found is not None and all(a in found for a in addresses)

    def ping(self, netns: str, address: str) -> bool:
        return run("ip", "netns", "exec", netns, "ping", "-c1", "-W1", address, check=False).returncode == 0

    def close(self) -> None:
        """Stop clients, then endpoints, then nsm-local (newest first), each given time to close cleanly."""
        order = {"nsc-sidecar": 0, "nsm-agent": 0, "nse-sidecar": 1, "nsm-local": 2}
        for process in sorted(reversed(self.processes), key=lambda p: order[p.name]):
            process.signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(5)
        for name in self.namespaces:
            run("ip", "netns", "delete", name, check=False)
