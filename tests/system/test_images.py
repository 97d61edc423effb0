"""The images, run for real: docs/containers.md's `docker run` commands, with podman.

nsm-local serves (secure: it is also the SPIFFE Workload API) on sockets in a private directory, as a host
process or from its own image (`--pid host`, the docs' other way). The two devices are network
namespaces; each sidecar runs from its image as a container in its device's namespace
(`--network ns:/run/netns/<ns>`), with NET_ADMIN as its only capability, configured only by `-e`
variables and the two socket directories mounted where the images expect them. Everything is removed at
the end, also on failure: the containers (by label), the namespaces and nsm-local.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest
from containertools import ROOT, build_images, labelled, podman, remove_labelled
from labtools import run, wait_until
from test_router_agent import CROSS


@pytest.fixture(scope="session")
def images() -> str:
    return build_images()


@dataclass
class Host:
    """The host side of the docs' setup: nsm-local, the namespaces, and the label of this test's
    containers (what the cleanup removes)."""

    directory: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    image: str = ""
    namespaces: list[str] = field(default_factory=list)
    nsm_local: subprocess.Popen[bytes] | None = None
    nsm_local_container: str = ""

    @property
    def nsm_dir(self) -> Path:
        return self.directory / "nsm"  # mounted at /var/lib/networkservicemesh

    @property
    def spire_dir(self) -> Path:
        return self.directory / "spire"  # mounted at /run/spire/sockets

    @property
    def label(self) -> str:
        return f"nsm-test-images={self.tag}"

    def serve(self, where: str) -> None:
        for path in (self.nsm_dir, self.spire_dir, self.directory / "state"):
            path.mkdir()
        if where == "container":
            self.nsm_local_container = f"img{self.tag}-nsm-local"
            podman(
                "run",
                "--detach",
                "--name",
                self.nsm_local_container,
                "--label",
                self.label,
                "--network",
                "none",
                "--pid",
                "host",
                *("--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--cap-add", "SYS_ADMIN"),
                *("--cap-add", "SYS_PTRACE"),
                *self.mounts,
                "--volume",
                f"{self.directory / 'state'}:/var/lib/nsm-local",
                f"nsm-local:{self.image}",
                *("serve", "--state-dir", "/var/lib/nsm-local"),
            )
            wait_until(lambda: (self.nsm_dir / "nsm.io.sock").exists(), 30, "nsm-local to listen")
            return
        with (self.directory / "nsm-local.log").open("wb") as log:
            self.nsm_local = self._popen_nsm_local(log)
        wait_until(lambda: (self.nsm_dir / "nsm.io.sock").exists(), 15, "nsm-local to listen")

    def _popen_nsm_local(self, log: BinaryIO) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nsm_local",
                "serve",
                "--listen",
                f"unix://{self.nsm_dir}/nsm.io.sock",
                "--workload-api",
                f"unix://{self.spire_dir}/agent.sock",
                # its CA key stays out of the directory the sidecars get (docs/containers.md)
                "--state-dir",
                str(self.directory / "state"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    @property
    def mounts(self) -> list[str]:
        return [
            *("--volume", f"{self.nsm_dir}:/var/lib/networkservicemesh"),
            *("--volume", f"{self.spire_dir}:/run/spire/sockets"),
        ]

    def nsm_local_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        if (
            self.nsm_local_container
        ):  # `docker run --rm --network none --pid host -v ... nsm-local:0.1.0 ARGS`
            return podman(
                *("run", "--rm", "--network", "none", "--pid", "host", *self.mounts),
                *("--volume", f"{ROOT / 'examples'}:/examples:ro", f"nsm-local:{self.image}", *args),
                check=False,
            )
        return subprocess.run(
            [sys.executable, "-m", "nsm_local", *args, "--connect-to", f"unix://{self.nsm_dir}/nsm.io.sock"],
            env={**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix://{self.spire_dir}/agent.sock"},
            capture_output=True,
            text=True,
            timeout=30,
        )

    def netns(self, name: str) -> str:
        full = f"img{self.tag}-{name}"
        run("ip", "netns", "add", full)
        self.namespaces.append(full)
        run("ip", "-n", full, "link", "set", "lo", "up")
        return full

    def sidecar(self, name: str, netns: str, image: str, env: dict[str, str]) -> str:
        """`docker run -d --name NAME --network ... --cap-drop ALL --cap-add NET_ADMIN --stop-timeout 25
        -v ...:/var/lib/networkservicemesh -v ...:/run/spire/sockets -e ... IMAGE`, as the docs say."""
        argv = [
            "run",
            "--detach",
            "--name",
            name,
            "--label",
            self.label,
            "--network",
            f"ns:/run/netns/{netns}",
            "--cap-drop",
            "ALL",
            "--cap-add",
            "NET_ADMIN",
            "--stop-timeout",
            "25",
            *self.mounts,
        ]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        podman(*argv, image)
        return name

    def close(self) -> None:
        remove_labelled(self.label)
        if self.nsm_local is not None and self.nsm_local.poll() is None:
            self.nsm_local.send_signal(signal.SIGTERM)
            try:
                self.nsm_local.wait(15)
            except subprocess.TimeoutExpired:
                self.nsm_local.kill()
                self.nsm_local.wait(5)
        for name in self.namespaces:
            run("ip", "netns", "delete", name, check=False)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    host = Host(Path(tmp_path))
    try:
        yield host
    finally:
        host.close()


def interfaces(netns: str) -> dict[str, list[str]]:
    """Interface name -> its IPv4 addresses (addr/len) in a namespace."""
    out = run("ip", "-n", netns, "-j", "addr", "show").stdout
    return {
        link["ifname"]: [
            f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a["family"] == "inet"
        ]
        for link in json.loads(out or "[]")
    }


def ready(container: str) -> bool:
    """The docs' readiness probe: `docker exec <sidecar> test -f /run/nsm/ready`."""
    return podman("exec", container, "test", "-f", "/run/nsm/ready", check=False).returncode == 0


def logs(*containers: str) -> str:
    shown = []
    for container in containers:
        done = podman("logs", container, check=False)
        shown.append(f"--- {container}:\n{done.stdout}{done.stderr}")
    return "\n".join(shown)


def ping(netns: str, address: str) -> bool:
    return run("ip", "netns", "exec", netns, "ping", "-c1", "-W2", address, check=False).returncode == 0


@pytest.mark.parametrize("nsm_local", ["host", "container"])
def test_sidecar_images_link_two_namespaces_and_leave_nothing(
    images: str, host: Host, nsm_local: str
) -> None:
    host.image = images
    host.serve(nsm_local)
    examples = "/examples" if nsm_local == "container" else str(ROOT / "examples")
    applied = host.nsm_local_cli("apply", "-f", f"{examples}/p2p.yaml")
    assert applied.returncode == 0, applied.stderr
    device_1, device_2 = host.netns("d1"), host.netns("d2")
    nse = host.sidecar(
        f"{device_2}-nse",
        device_2,
        f"nse-sidecar:{images}",
        {
            "ENDPOINT_NETWORK_SERVICE": "p2p",
            "ENDPOINT_LABELS": "device=device-2",
            "IP_ADDRESS": "10.60.1.0/24",
            "POD_NAME": "device-2",
        },
    )
    nsc = host.sidecar(
        f"{device_1}-nsc",
        device_1,
        f"nsc-sidecar:{images}",
        {"NS_NETWORKSERVICEMESH_IO": "p2p/eth12?link=net-0&peerif=eth21", "POD_NAME": "device-1"},
    )
    try:
        wait_until(lambda: ready(nsc) and ready(nse), 60, "both sidecars ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(nsc, nse)}") from None

    # the link, named and addressed as asked, and traffic both ways
    assert interfaces(device_1)["eth12"] == ["10.60.1.1/30"]
    assert interfaces(device_2)["eth21"] == ["10.60.1.2/30"]
    assert ping(device_1, "10.60.1.2") and ping(device_2, "10.60.1.1")

    # secure by default: each sidecar's identity is its device's namespace, from the mounted Workload API
    for container, netns in ((nsc, device_1), (nse, device_2)):
        inode = os.stat(f"/run/netns/{netns}").st_ino
        assert f"spiffe_id=spiffe://nsm.local/netns/{inode}/uid/0" in logs(container), logs(container)
        status = podman("exec", container, "grep", "^CapEff:", "/proc/1/status").stdout
        assert status.split() == ["CapEff:", "0000000000001000"], f"{container}: not NET_ADMIN only: {status}"
        shown = podman(
            "exec", container, "ls", "-A", "/var/lib/networkservicemesh", "/run/spire/sockets"
        ).stdout
        assert "ca-key.pem" not in shown and "nsm-local-ca" not in shown, shown
    listed = host.nsm_local_cli("list")
    if nsm_local == "host":  # the operator sees every connection
        assert "device-1 -> device-2" in listed.stdout, listed.stdout + listed.stderr
    else:  # a container of its own is not the operator: services and endpoints only
        assert "link=net-0 -> device=device-2" in listed.stdout and "service=p2p" in listed.stdout, (
            listed.stdout
        )

    # `docker stop` of the client: SIGTERM, it closes its link (gone on both sides) and exits 0
    started = time.monotonic()
    podman("stop", nsc, timeout=60)
    stopped_after = time.monotonic() - started
    assert podman("inspect", "--format", "{{.State.ExitCode}}", nsc).stdout.strip() == "0", logs(nsc)
    assert stopped_after < 20, f"podman stop took {stopped_after:.1f}s (SIGKILL after 25 s?)"
    wait_until(
        lambda: "eth12" not in interfaces(device_1) and "eth21" not in interfaces(device_2),
        10,
        "the link to go on both sides",
    )
    assert ready(nse), "the endpoint stays registered"
    podman("stop", nse, timeout=60)
    assert podman("inspect", "--format", "{{.State.ExitCode}}", nse).stdout.strip() == "0", logs(nse)
    podman("rm", nsc, nse)

    # nothing left: containers, links, namespaces, nsm-local and its sockets
    assert list(interfaces(device_1)) == ["lo"] and list(interfaces(device_2)) == ["lo"]
    if host.nsm_local is not None:
        host.nsm_local.send_signal(signal.SIGTERM)
        assert host.nsm_local.wait(15) == 0
    else:
        podman("stop", host.nsm_local_container, timeout=60)
        exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", host.nsm_local_container).stdout
        assert exit_code.strip() == "0", logs(host.nsm_local_container)
        podman("rm", host.nsm_local_container)
    for netns in (device_1, device_2):
        run("ip", "netns", "delete", netns)
    assert labelled(host.label) == []
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"img{host.tag}-")]
    assert not list(host.nsm_dir.iterdir()) and not list(host.spire_dir.iterdir())


def test_image_check_script_passes_every_check_end_to_end(images: str) -> None:
    """images/check.sh as CI runs it (images/README.md): entrypoints, labels (the version and NSM API the
    programs report), no build tools, bad configuration, then one link end to end from the three images."""
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed: scripts/setup.sh installs it")
    done = subprocess.run(
        ["bash", str(ROOT / "images" / "check.sh"), "--tag", images, "--e2e"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = [line for line in done.stdout.splitlines() if not line.startswith("      |")]
    print("\n".join(report))
    assert done.returncode == 0, "\n".join(report) + done.stderr[-2000:]
    assert not [line for line in report if line.startswith("FAIL")]
    assert "PASS  ping 10.60.1.2 from device-1" in report
    assert sum(line.startswith("PASS") for line in report) >= 30
    assert report[-1] == "all checks passed"


def test_agent_image_runs_both_roles_of_two_routers_linked_both_ways(images: str, host: Host) -> None:
    """`nsm-agent` from its image, one container per router: r1 asks for net-0 and answers net-1, r2 the
    other way round; each is ready once its link is verified and its endpoint registered."""
    host.image = images
    host.serve("host")
    manifest = host.directory / "cross.yaml"
    manifest.write_text(CROSS)
    applied = host.nsm_local_cli("apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr
    r1, r2 = host.netns("r1"), host.netns("r2")
    routers = {}
    for name, netns, link, pool, peer in (
        ("r1", r1, "net-0", "10.60.1.0/24", "r2"),
        ("r2", r2, "net-1", "10.60.2.0/24", "r1"),
    ):
        routers[name] = host.sidecar(
            f"{netns}-agent",
            netns,
            f"nsm-agent:{images}",
            {
                "NS_NETWORKSERVICEMESH_IO": f"cross/to-{peer}?link={link}&peerif=from-{name}",
                "ENDPOINT_NETWORK_SERVICE": "cross",
                "ENDPOINT_LABELS": f"device={name}",
                "ENDPOINT_LINKS": "net-1" if name == "r1" else "net-0",
                "IP_ADDRESS": pool,
                "POD_NAME": name,
            },
        )
    try:
        wait_until(lambda: all(ready(c) for c in routers.values()), 60, "both routers ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(*routers.values())}") from None
    assert interfaces(r1)["to-r2"] == ["10.60.2.1/30"] and interfaces(r2)["from-r1"] == ["10.60.2.2/30"]
    assert interfaces(r2)["to-r1"] == ["10.60.1.1/30"] and interfaces(r1)["from-r2"] == ["10.60.1.2/30"]
    assert ping(r1, "10.60.2.2") and ping(r2, "10.60.1.2")
    for container in routers.values():
        assert len(re.findall(r"event=identity\.ready", logs(container))) == 1, "one SVID per router"
    for container in routers.values():
        podman("stop", container, timeout=60)
        assert podman("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip() == "0"
    wait_until(lambda: set(interfaces(r1)) == {"lo"} and set(interfaces(r2)) == {"lo"}, 15, "every link gone")
