"""Helpers for the privileged tests: throwaway namespaces and `ip`/`ping` used only for checking."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def link_names(ip_link_output: str) -> set[str]:
    """Link names from `ip -o link show` output (`2: eth1@if2: <...>` -> `eth1`)."""
    return {line.split(":")[1].strip().split("@")[0] for line in ip_link_output.splitlines() if line}


@dataclass(frozen=True)
class Netns:
    """A throwaway netns: its name (for `ip -n`) and an open fd on it (what the library takes)."""

    name: str
    fd: int

    def ip(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "-n", self.name, *argv, check=check)

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, *argv, check=check)

    def link_names(self) -> set[str]:
        return link_names(self.ip("-o", "link", "show").stdout)

    def link_json(self, ifname: str) -> dict[str, Any]:
        """`ip -d -j link show` of one link, as a dict."""
        shown: list[dict[str, Any]] = json.loads(self.ip("-d", "-j", "link", "show", "dev", ifname).stdout)
        return shown[0]

    def pings(self, address: str, attempts: int = 3) -> bool:
        """Whether `address` answers one of `attempts` single pings (each waits up to 1 s)."""
        return any(
            self.exec("ping", "-c1", "-W1", address, check=False).returncode == 0 for _ in range(attempts)
        )
