"""A real SPIRE (server + agent, v1.13.3, built by scripts/build-spire.sh) for the interop tests' secure mode.

Everything lives under one short /tmp/sp-<random>/ directory (unix socket paths are limited to 108 bytes):
the server's sqlite datastore, disk key manager and admin socket, the agent's data and the Workload API
socket. The server attests the agent with a join token; the agent attests workloads with the `unix`
attestor. Every process of a lab runs as uid 0 (they need root capabilities for netns and netlink), so
identities are told apart by the **effective gid** (`unix:gid:<gid>`): start a workload with `popen(...,
gid=...)` or any `subprocess.Popen(..., group=gid, extra_groups=[])`.

Default identities (trust domain `harness.test`, see IDENTITIES):

| gid  | SPIFFE id                          | who |
| ---- | ---------------------------------- | --- |
| 2000 | spiffe://harness.test/nsmgr        | control plane: the nsmgr... |
| 2000 | spiffe://harness.test/registry     | ...its memory registry...   |
| 2000 | spiffe://harness.test/forwarder    | ...and its forwarder (the harness picks each by path) |
| 2001 | spiffe://harness.test/nsc          | reference Go NSC, Python nsc-sidecar |
| 2002 | spiffe://harness.test/nse          | reference Go NSE, Python nse-sidecar |
| 2003 | spiffe://harness.test/intruder     | a workload that owns nothing (negative tests) |

A workload learns where the Workload API is from `SPIFFE_ENDPOINT_SOCKET` (`env()`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from labtools import wait_until

REPO = Path(__file__).resolve().parents[2]
SPIRE_BIN = REPO / "tests" / "interop" / "spire" / "bin"
SPIRE_SERVER = SPIRE_BIN / "spire-server"
SPIRE_AGENT = SPIRE_BIN / "spire-agent"
BUILD_SCRIPT = REPO / "scripts" / "build-spire.sh"

TRUST_DOMAIN = "harness.test"
AGENT_ID = f"spiffe://{TRUST_DOMAIN}/agent"  # the join token's alias: the parent of every entry


@dataclass(frozen=True)
class Identity:
    gid: int
    spiffe_id: str


def spiffe_id(path: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{path}"


# role -> identity; roles sharing a gid are one workload with several SVIDs
IDENTITIES: dict[str, Identity] = {
    "nsmgr": Identity(2000, spiffe_id("nsmgr")),
    "registry": Identity(2000, spiffe_id("registry")),
    "forwarder": Identity(2000, spiffe_id("forwarder")),
    "nsc": Identity(2001, spiffe_id("nsc")),
    "nse": Identity(2002, spiffe_id("nse")),
    "intruder": Identity(2003, spiffe_id("intruder")),
}
CONTROL_PLANE_GID = IDENTITIES["nsmgr"].gid
NSC_GID = IDENTITIES["nsc"].gid
NSE_GID = IDENTITIES["nse"].gid
INTRUDER_GID = IDENTITIES["intruder"].gid


def binaries_built() -> bool:
    return SPIRE_SERVER.exists() and SPIRE_AGENT.exists()


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def popen(
    argv: Sequence[str],
    gid: int | None,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
    cwd: Path | None = None,
    start_new_session: bool = True,
) -> subprocess.Popen[bytes]:
    """Start a workload as uid 0 with `gid` as its real and effective gid and no supplementary groups, which
    is what the `unix` attestor matches (`unix:gid`); root capabilities are kept. gid=None: unchanged."""
    if gid is None:
        return subprocess.Popen(
            list(argv), env=env, stdout=stdout, stderr=stderr, cwd=cwd, start_new_session=start_new_session
        )
    return subprocess.Popen(
        list(argv),
        env=env,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        start_new_session=start_new_session,
        group=gid,
        extra_groups=[],
    )


@dataclass
class SpireLab:
    """One SPIRE server and one agent; `start()`, then `add_entry(...)`, `env()`, and `close()` at the end."""

    default_x509_ttl: float = 3600.0  # server default_x509_svid_ttl, seconds
    identities: Mapping[str, Identity] = field(default_factory=lambda: dict(IDENTITIES))
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sp-", dir="/tmp")))
    server: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    entries: dict[tuple[str, int], str] = field(default_factory=dict)  # (spiffe id, gid) -> entry id
    timings: dict[str, float] = field(default_factory=dict)  # seconds since start()

    # ----- paths -----

    @property
    def server_socket(self) -> Path:
        return self.directory / "server.sock"

    @property
    def agent_socket(self) -> Path:
        return self.directory / "agent.sock"

    def env(self) -> dict[str, str]:
        """What a workload needs to find the Workload API."""
        return {"SPIFFE_ENDPOINT_SOCKET": f"unix://{self.agent_socket}"}

    # ----- lifecycle -----

    def start(self, timeout: float = 60) -> None:
        """Start the server, create the default entries, start the agent, and wait until every default
        identity is served by the Workload API."""
        t0 = time.monotonic()
        try:
            self._start_server(timeout)
            self.timings["server_healthy"] = time.monotonic() - t0
            token = self.server_cli("token", "generate", "-spiffeID", AGENT_ID, "-ttl", "600")
            join_token = token.split()[-1]
            # created before the agent starts, so that its first sync already has them
            for identity in self.identities.values():
                self.add_entry(identity.spiffe_id, identity.gid, wait=False)
            self._start_agent(join_token, timeout)
            self.timings["agent_healthy"] = time.monotonic() - t0
            first = True
            for identity in self.identities.values():
                self.wait_for_svid(identity.spiffe_id, identity.gid, timeout)
                if first:
                    self.timings["first_svid"] = time.monotonic() - t0
                    first = False
            self.timings["all_svids"] = time.monotonic() - t0
        except BaseException:
            self.close()
            raise

    def _start_server(self, timeout: float) -> None:
        data = self.directory / "server"
        data.mkdir()
        conf = self.directory / "server.conf"
        conf.write_text(
            f"""
server {{
    bind_address = "127.0.0.1"
    bind_port = "{free_tcp_port()}"
    socket_path = "{self.server_socket}"
    trust_domain = "{TRUST_DOMAIN}"
    data_dir = "{data}"
    log_level = "INFO"
    default_x509_svid_ttl = "{int(self.default_x509_ttl)}s"
    # new entries reach the agents within a second instead of five
    experimental {{
        cache_reload_interval = "1s"
    }}
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    KeyManager "disk" {{
        plugin_data {{
            keys_path = "{data}/keys.json"
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
}}
"""
        )
        self.server = server = self._spawn([str(SPIRE_SERVER), "run", "-config", str(conf)], "server.log")
        wait_until(
            lambda: self._healthy(SPIRE_SERVER, self.server_socket) or server.poll() is not None,
            timeout,
            "spire-server healthy",
            interval=0.2,
        )
        if server.poll() is not None:
            raise RuntimeError(f"spire-server exited:\n{self.log('server')}")

    def _start_agent(self, join_token: str, timeout: float) -> None:
        data = self.directory / "agent"
        data.mkdir()
        conf = self.directory / "agent.conf"
        server_port = self._server_port()
        conf.write_text(
            f"""
agent {{
    data_dir = "{data}"
    log_level = "INFO"
    server_address = "127.0.0.1"
    server_port = "{server_port}"
    socket_path = "{self.agent_socket}"
    trust_domain = "{TRUST_DOMAIN}"
    insecure_bootstrap = true
    # entries added later reach the Workload API within a second instead of five
    experimental {{
        sync_interval = "1s"
    }}
}}
plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"""
        )
        self.agent = agent = self._spawn(
            [str(SPIRE_AGENT), "run", "-config", str(conf), "-joinToken", join_token], "agent.log"
        )
        wait_until(
            lambda: self._healthy(SPIRE_AGENT, self.agent_socket) or agent.poll() is not None,
            timeout,
            "spire-agent healthy",
            interval=0.2,
        )
        if agent.poll() is not None:
            raise RuntimeError(f"spire-agent exited:\n{self.log('agent')}")

    def _server_port(self) -> str:
        for line in (self.directory / "server.conf").read_text().splitlines():
            if line.strip().startswith("bind_port"):
                return line.split('"')[1]
        raise AssertionError("no bind_port in server.conf")

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with (self.directory / log_name).open("ab") as log:
            return subprocess.Popen(
                argv, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _healthy(self, binary: Path, sock: Path) -> bool:
        if not sock.exists():
            return False
        result = subprocess.run(
            [str(binary), "healthcheck", "-socketPath", str(sock)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0

    def close(self) -> None:
        """Stop the agent, then the server (SIGTERM, then SIGKILL), and remove every file."""
        for process in (self.agent, self.server):
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        shutil.rmtree(self.directory, ignore_errors=True)

    def log(self, which: str) -> str:
        path = self.directory / f"{which}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def report(self, lines: int = 60) -> str:
        parts = []
        for which in ("server", "agent"):
            text = self.log(which)
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"----- spire-{which}.log (last {lines} lines) -----\n{tail}")
        return "\n".join(parts)

    # ----- registration entries and SVIDs -----

    def server_cli(self, *args: str) -> str:
        result = subprocess.run(
            [str(SPIRE_SERVER), args[0], *args[1:], "-socketPath", str(self.server_socket)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"spire-server {' '.join(args)}: {result.stdout}{result.stderr}")
        return result.stdout

    def add_entry(self, spiffe_id: str, gid: int, x509_ttl: float | None = None, wait: bool = True) -> str:
        """Register `spiffe_id` for workloads whose effective gid is `gid` (x509_ttl: this entry's X509-SVID
        lifetime in seconds, else the server default). With wait, return once the agent serves it. A pair
        registered before is not registered again (its TTL stays)."""
        if (spiffe_id, gid) in self.entries:
            if wait:
                self.wait_for_svid(spiffe_id, gid)
            return self.entries[(spiffe_id, gid)]
        argv = ["entry", "create", "-parentID", AGENT_ID, "-spiffeID", spiffe_id]
        argv += ["-selector", f"unix:gid:{gid}"]
        if x509_ttl is not None:
            argv += ["-x509SVIDTTL", str(int(x509_ttl))]
        out = self.server_cli(*argv, "-output", "json")
        entry_id: str = json.loads(out)["results"][0]["entry"]["id"]
        self.entries[(spiffe_id, gid)] = entry_id
        if wait:
            self.wait_for_svid(spiffe_id, gid)
        return entry_id

    def fetch_x509(self, gid: int) -> list[dict[str, Any]]:
        """The X509-SVIDs the Workload API gives a workload with that gid ([] if none)."""
        argv = [str(SPIRE_AGENT), "api", "fetch", "x509", "-socketPath", str(self.agent_socket)]
        process = popen(
            [*argv, "-output", "json"],
            gid=gid,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return []
        if process.returncode != 0:
            return []
        # one JSON document per line; the last one is the response
        docs = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
        svids: list[dict[str, Any]] = docs[-1].get("svids", []) if docs else []
        return svids

    def wait_for_svid(self, spiffe_id: str, gid: int, timeout: float = 30) -> None:
        wait_until(
            lambda: any(svid.get("spiffe_id") == spiffe_id for svid in self.fetch_x509(gid)),
            timeout,
            f"an X509-SVID {spiffe_id} for gid {gid}",
            interval=0.3,
        )


def main() -> None:
    """Start a lab, print its timings and SVIDs, stop it (python tests/interop/spire_lab.py, as root)."""
    lab = SpireLab()
    try:
        lab.start()
        print(json.dumps(lab.timings))
        for role, identity in lab.identities.items():
            ids = [svid["spiffe_id"] for svid in lab.fetch_x509(identity.gid)]
            print(role, identity.gid, ids)
    finally:
        lab.close()
    assert not lab.directory.exists()
    print(os.listdir("/tmp"))


if __name__ == "__main__":
    main()
