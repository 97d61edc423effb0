"""A throwaway lab around NSM's real Go control plane: the `nsmharness` binary (tests/interop/harness) serves
the sdk's registry, nsmgr and a kernel forwarder on unix sockets under a short /tmp/hx-<random>/ directory,
and the clients and endpoints under test, Go or Python, run in their own network namespaces.

Everything is torn down at the end, also on failure: processes get SIGTERM (then SIGKILL), namespaces are
deleted, and the directory is removed.

Security: a lab is insecure (cleartext, HS256 test tokens, authorize.Any(); the Python sidecars get
NSM_INSECURE=true) unless it is given a running SpireLab (`Lab(spire=...)`). Then every Go process runs with
`-spiffe`, every process (Go or Python) gets SPIFFE_ENDPOINT_SOCKET, and each runs with the gid of its role
(`gids`: control plane, nsc, nse; spire_lab.IDENTITIES says which SPIFFE id a gid gets).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labtools import run, wait_until
from spire_lab import CONTROL_PLANE_GID, NSC_GID, NSE_GID, SpireLab, popen

REPO = Path(__file__).resolve().parents[2]
HARNESS_BIN = REPO / "tests" / "interop" / "harness" / "bin" / "nsmharness"
BUILD_SCRIPT = REPO / "scripts" / "build-interop.sh"

# Short lifetimes, so that refresh, server-side expiry and re-registration all happen several times
# within a test. The Go nsmgr drops a registration at expiry - (deadline of the Register call) and
# closes a connection at token expiry - (deadline of the Request), so every deadline stays well below a
# third of these.
TOKEN_LIFETIME = 8.0
REGISTRATION_EXPIRY = 8.0
REQUEST_TIMEOUT = 1.5

# What a link gets from point-to-point IPAM in 169.254.0.0/16 (both NSEs' default): NSE first, then NSC.
NSE_ADDRESS = "169.254.0.0/32"
NSC_ADDRESS = "169.254.0.1/32"


# role -> effective gid in a secure lab; helpers (find-nse, register-ns) act as a client or an endpoint
DEFAULT_GIDS: dict[str, int] = {"control-plane": CONTROL_PLANE_GID, "nsc": NSC_GID, "nse": NSE_GID}


def go_duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms"


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    role: str  # "nsc", "nse" or "control-plane": the order of teardown

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Signal the process and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.alive():
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            return None


@dataclass
class Lab:
    """One control plane and whatever clients/endpoints a test starts around it."""

    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hx-", dir="/tmp")))
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    ready: dict[str, Any] = field(default_factory=dict)
    spire: SpireLab | None = None  # secure when set (shared: the lab never stops it)
    gids: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_GIDS))

    # ----- security -----

    @property
    def secure(self) -> bool:
        return self.spire is not None

    def go_security(self) -> list[str]:
        """The flag every nsmharness subcommand gets."""
        return ["-spiffe"] if self.secure else []

    def security_env(self) -> dict[str, str]:
        """SPIFFE_ENDPOINT_SOCKET in a secure lab; in an insecure one, what makes a sidecar plaintext."""
        if self.spire is not None:
            return self.spire.env()
        return {"NSM_INSECURE": "true"}

    def gid(self, role: str) -> int | None:
        """The gid a process of that role runs with (None: unchanged, in an insecure lab)."""
        return self.gids[role] if self.secure else None

    # ----- namespaces and processes -----

    def netns(self, role: str) -> str:
        name = f"hx-{self.tag}-{role}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        return name

    def start(
        self,
        name: str,
        role: str,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        netns: str | None = None,
        gid_role: str | None = None,
    ) -> Process:
        """Start a process of a role (nsc, nse, control-plane), with the gid of `gid_role` (default: role)."""
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        log_path = self.directory / f"{name}.log"
        full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **(env or {})}
        if self.spire is not None:
            full_env.update(self.spire.env())
        with log_path.open("ab") as log:
            child = popen(
                argv, self.gid(gid_role or role), env=full_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        process = Process(name, child, log_path, role)
        self.processes.append(process)
        return process

    def helper(
        self,
        *args: str,
        role: str = "nsc",
        gid: int | None = None,
        spiffe: bool | None = None,
        netns: str | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short nsmharness subcommand (find-nse, register-ns, foreign) as a workload of `role` (or
        with `gid`), in `netns` if given. spiffe=False runs it insecure even in a secure lab."""
        secure = self.secure if spiffe is None else spiffe
        argv = [str(HARNESS_BIN), args[0], *(["-spiffe"] if secure else []), *args[1:]]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        env = {**os.environ, **(self.spire.env() if self.spire is not None else {})}
        if gid is None:
            gid = self.gid(role)
        child = popen(argv, gid, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
        return subprocess.CompletedProcess(
            argv, child.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )

    @property
    def nsmgr_url(self) -> str:
        return str(self.ready["nsmgr_url"])

    def control_plane(self, strict: bool = True) -> Process:
        process = self.start(
            "control-plane",
            "control-plane",
            [
                str(HARNESS_BIN),
                "control-plane",
                "-dir",
                str(self.directory),
                "-token-lifetime",
                go_duration(TOKEN_LIFETIME),
                "-registration-expiry",
                go_duration(REGISTRATION_EXPIRY),
                "-request-timeout",
                go_duration(REQUEST_TIMEOUT),
                f"-strict={'true' if strict else 'false'}",
                *self.go_security(),
                # HX_LOG_LEVEL=trace shows every chain element's input and output, for debugging
                "-log-level",
                os.environ.get("HX_LOG_LEVEL", "info"),
            ],
            # nsmgr's clientinfo adds nodeName to every request and registration, as in a cluster
            env={"NODE_NAME": "hx-node"},
        )
        ready = self.directory / "ready.json"
        wait_until(lambda: ready.exists() or not process.alive(), 20, "the control plane's ready.json")
        assert process.alive(), process.log
        self.ready = json.loads(ready.read_text())
        return process

    # ----- the four kinds of agents -----

    def go_nse(self, netns: str, name: str, services: str, *extra: str) -> Process:
        return self.start(
            name,
            "nse",
            [
                str(HARNESS_BIN),
                "nse",
                "-connect-to",
                self.nsmgr_url,
                "-name",
                name,
                "-services",
                services,
                "-listen-on",
                f"unix://{self.directory}/{name}.sock",
                "-token-lifetime",
                go_duration(TOKEN_LIFETIME),
                "-request-timeout",
                go_duration(REQUEST_TIMEOUT),
                *self.go_security(),
                *extra,
            ],
            netns=netns,
        )

    def py_nse(self, netns: str, name: str, env: Mapping[str, str]) -> Process:
        return self.start(
            name,
            "nse",
            [sys.executable, "-m", "nse_sidecar"],
            env={
                "NSM_CONNECT_TO": self.nsmgr_url,
                "NSM_NAME": name,
                "NSM_LISTEN_ON": f"unix://{self.directory}/{name}.sock",
                "NSM_MAX_TOKEN_LIFETIME": go_duration(TOKEN_LIFETIME),
                "NSM_REQUEST_TIMEOUT": go_duration(REQUEST_TIMEOUT),
                **self.security_env(),
                **env,
            },
            netns=netns,
        )

    def go_nsc(self, netns: str, name: str, service: str, ifname: str, *extra: str) -> Process:
        return self.start(
            name,
            "nsc",
            [
                str(HARNESS_BIN),
                "nsc",
                "-connect-to",
                self.nsmgr_url,
                "-name",
                name,
                "-service",
                service,
                "-ifname",
                ifname,
                "-out",
                str(self.connection_file(name)),
                "-token-lifetime",
                go_duration(TOKEN_LIFETIME),
                "-request-timeout",
                go_duration(REQUEST_TIMEOUT),
                *self.go_security(),
                *extra,
            ],
            netns=netns,
        )

    def py_nsc(self, netns: str, name: str, env: Mapping[str, str]) -> Process:
        return self.start(
            name,
            "nsc",
            [sys.executable, "-m", "nsc_sidecar"],
            env={
                "NSM_CONNECT_TO": self.nsmgr_url,
                "NSM_NAME": name,
                "NSM_MAX_TOKEN_LIFETIME": go_duration(TOKEN_LIFETIME),
                "NSM_REQUEST_TIMEOUT": go_duration(REQUEST_TIMEOUT),
                **self.security_env(),
                **env,
            },
            netns=netns,
        )

    def nse(self, kind: str, netns: str, name: str, service: str) -> Process:
        """An endpoint for `service` in NSM v1 addressing (/32 pairs from 169.254.0.0/16), Go or Python."""
        if kind == "go":
            return self.go_nse(netns, name, service)
        return self.py_nse(netns, name, {"NSM_SERVICE_NAMES": service})

    def nsc(self, kind: str, netns: str, name: str, service: str, ifname: str) -> Process:
        """A client asking for one link to `service` named `ifname`, Go or Python."""
        if kind == "go":
            return self.go_nsc(netns, name, service, ifname)
        return self.py_nsc(netns, name, {"NSM_NETWORK_SERVICES": f"kernel://{service}/{ifname}"})

    def connection_file(self, nsc_name: str) -> Path:
        return self.directory / f"{nsc_name}.connection.json"

    # ----- what the control plane saw and did -----

    def events(self, kind: str | None = None, **match: str) -> list[dict[str, Any]]:
        """The control plane's event log (one JSON object per line), filtered by event and fields."""
        path = self.directory / "events.jsonl"
        if not path.exists():
            return []
        found = []
        text = path.read_text()
        # the harness may be writing a line right now (a long error event comes in more than one write):
        # only lines it has finished, those before the last newline, are events yet
        for line in text[: text.rfind("\n") + 1].splitlines():
            if not line.strip():
                continue
            event = json.loads(line)
            if kind is not None and event.get("event") != kind:
                continue
            if all(event.get(k) == v for k, v in match.items()):
                found.append(event)
        return found

    def find_nse(self, service: str) -> list[dict[str, Any]]:
        result = self.helper(
            "find-nse", "-connect-to", self.nsmgr_url, "-service", service, "-log-level", "error", role="nsc"
        )
        return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    def wait_for_nse(self, service: str, name: str, timeout: float = 20) -> None:
        wait_until(
            lambda: any(nse.get("name") == name for nse in self.find_nse(service)),
            timeout,
            f"endpoint {name} registered for {service} in the Go registry",
            interval=0.3,
        )

    def register_ns(self, service: Mapping[str, Any], role: str = "nse") -> None:
        """Register a NetworkService, as an endpoint by default: in a secure lab the nsmgr's registry
        (client_allowed) lets only the SPIFFE id that registered a service name first register it again."""
        result = self.helper(
            "register-ns",
            "-connect-to",
            self.nsmgr_url,
            "-json",
            json.dumps(service),
            "-log-level",
            "error",
            role=role,
        )
        assert result.returncode == 0, result.stderr

    # ----- the kernel side -----

    def links(self, netns: str) -> dict[str, dict[str, Any]]:
        """ifname → `ip -j addr` record, without lo."""
        out = run("ip", "-n", netns, "-j", "addr", "show").stdout
        return {link["ifname"]: link for link in json.loads(out or "[]") if link["ifname"] != "lo"}

    def addresses(self, netns: str, ifname: str) -> list[str] | None:
        """Global addresses (addr/len) of an interface, None if it does not exist."""
        link = self.links(netns).get(ifname)
        if link is None:
            return None
        return [
            f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") == "global"
        ]

    def link_up(self, netns: str, ifname: str, *addresses: str) -> bool:
        found = self.addresses(netns, ifname)
        return found is not None and all(a in found for a in addresses)

    def ping(self, netns: str, address: str) -> bool:
        ip = address.split("/")[0]
        return run("ip", "netns", "exec", netns, "ping", "-c1", "-W1", ip, check=False).returncode == 0

    # ----- teardown -----

    def report(self) -> str:
        """Every log, for a failed test's report (and the end of SPIRE's, in a secure lab)."""
        parts = []
        for path in sorted(self.directory.glob("*.log")) + sorted(self.directory.glob("events.jsonl")):
            text = path.read_text(errors="replace")
            parts.append(f"----- {path.name} (last 150 lines) -----\n" + "\n".join(text.splitlines()[-150:]))
        if self.spire is not None:
            parts.append(self.spire.report())
        return "\n".join(parts)

    def close(self) -> None:
        """Clients first, then endpoints, then the control plane, each given time to close cleanly."""
        order = {"nsc": 0, "nse": 1, "control-plane": 2}
        for process in sorted(self.processes, key=lambda p: order[p.role]):
            process.stop(signal.SIGTERM, timeout=15)
        for name in self.namespaces:
            run("ip", "netns", "delete", name, check=False)
        shutil.rmtree(self.directory, ignore_errors=True)


# ----- one link between a client and an endpoint, the unit of the test matrix -----

PAIRS = [("go", "go"), ("go", "py"), ("py", "go"), ("py", "py")]
# the pairs the secure matrix runs (Go <-> Go is the baseline; Python pairs join once the sidecars speak TLS)
SECURE_PAIRS = PAIRS
SERVICE, IFNAME = "icmp", "nsm-1"
NSC_NAME, NSE_NAME = "nsc-1", "nse-1"
CONN_ID = f"{NSC_NAME}-0"  # both clients name their first connection <name>-0, like cmd-nsc


def pair_id(pair: tuple[str, str]) -> str:
    return f"{pair[0]}-nsc-{pair[1]}-nse"


@dataclass
class Link:
    lab: Lab
    nsc_kind: str
    nse_kind: str
    nsc_ns: str
    nse_ns: str
    nsc: Process
    nse: Process

    def endpoint_ifname(self) -> str:
        """The name the endpoint chose for its side, from its reply to the forwarder."""
        replies = self.lab.events("endpoint.reply")
        assert replies, "the forwarder never got a reply from the endpoint"
        name: str = replies[-1]["connection"]["mechanism"]["parameters"]["name"]
        return name


def establish(lab: Lab, nsc_kind: str, nse_kind: str) -> Link:
    nsc_ns, nse_ns = lab.netns("nsc"), lab.netns("nse")
    nse = lab.nse(nse_kind, nse_ns, NSE_NAME, SERVICE)
    lab.wait_for_nse(SERVICE, NSE_NAME)
    nsc = lab.nsc(nsc_kind, nsc_ns, NSC_NAME, SERVICE, IFNAME)
    wait_until(lambda: lab.link_up(nsc_ns, IFNAME, NSC_ADDRESS), 30, f"{IFNAME} with {NSC_ADDRESS}")
    return Link(lab, nsc_kind, nse_kind, nsc_ns, nse_ns, nsc, nse)
