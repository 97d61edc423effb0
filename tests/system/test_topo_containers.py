"""`nsm-topo` labs whose devices run as containers (`custom_image`), with real podman: the busybox image
that images/busybox.sh makes, in the device's namespace, its sidecars beside it. Each test's lab has its
own name, sockets and state directory; whatever it leaves is removed at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from containertools import BUSYBOX, build_images, labelled, podman, remove_labelled
from labtools import run, wait_until

TOPOLOGY = """\
prefix: {name}
conf_dir: configs
custom_image:
  box: {image}
links:
  - endpoints: ["box-a:eth1", "host-b:eth1"]
  - endpoints: ["box-c:eth1", "box-a:eth2"]
"""


@pytest.fixture(scope="session")
def images() -> str:
    return build_images()


@dataclass
class Topo:
    directory: Path
    name: str = field(default_factory=lambda: f"ct{secrets.token_hex(3)}")

    @property
    def file(self) -> Path:
        return self.directory / f"{self.name}.yml"

    def write(self, image: str = BUSYBOX) -> Path:
        (self.directory / "configs").mkdir(exist_ok=True)
        (self.directory / "configs" / "box-a").write_text("hostname box-a\n")
        self.file.write_text(TOPOLOGY.format(name=self.name, image=image))
        return self.file

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        command, rest = args[0], args[1:]
        options = [
            "--connect-to",
            f"unix://{self.directory}/sock/nsm.sock",
            "--workload-api",
            f"unix://{self.directory}/sock/agent.sock",
            "--state-dir",
            str(self.directory / "state"),
        ]
        return subprocess.run(
            [sys.executable, "-m", "nsm_topo", command, *options, str(self.file), *rest],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            env=env,
        )

    def namespaces(self) -> list[str]:
        listed = json.loads(run("ip", "-j", "netns", "list").stdout or "[]")
        return sorted(ns["name"] for ns in listed if ns["name"].startswith(f"{self.name}-"))

    def containers(self) -> list[str]:
        return labelled(f"nsm-topo.lab={self.name}")

    def processes(self) -> list[str]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if str(self.directory) in cmdline and "pytest" not in cmdline:
                    found.append(cmdline)
        return found


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topo]:
    lab = Topo(Path(tmp_path))
    try:
        yield lab
    finally:
        if lab.file.exists():
            lab("down")
        remove_labelled(f"nsm-topo.lab={lab.name}")
        for name in lab.namespaces():
            run("ip", "netns", "delete", name, check=False)


def test_devices_with_an_image_run_as_containers_with_their_links(images: str, topo: Topo) -> None:
    topo.write()
    up = topo("up")
    assert up.returncode == 0, up.stderr
    assert topo.containers() == [f"{topo.name}-box-a", f"{topo.name}-box-c"]
    assert topo.namespaces() == [f"{topo.name}-box-a", f"{topo.name}-box-c", f"{topo.name}-host-b"]

    # the container is in the device's namespace: the links are inside it, and ping works across them
    inside = topo("exec", "box-a", "--", "ip", "-o", "-4", "addr", "show")
    assert inside.returncode == 0, inside.stderr
    assert "eth1" in inside.stdout and "10.60.1.1/30" in inside.stdout, inside.stdout
    assert "eth2" in inside.stdout and "10.60.0.2/30" in inside.stdout, inside.stdout
    to_host = topo("exec", "box-a", "--", "ping", "-c1", "-W2", "10.60.1.2")  # host-b, a plain namespace
    assert to_host.returncode == 0, to_host.stdout + to_host.stderr
    to_box = topo("exec", "box-c", "--", "ping", "-c1", "-W2", "10.60.0.2")  # box-a, another container
    assert to_box.returncode == 0, to_box.stdout + to_box.stderr
    # `exec` runs in the container (its hostname, its files: the device's file from conf_dir)
    who = topo("exec", "box-a", "--", "sh", "-c", "hostname; cat /mnt/flash/startup-config")
    assert who.stdout.split() == ["box-a", "hostname", "box-a"], who.stdout + who.stderr
    # a device without an image still runs in its namespace on the host
    plain = topo("exec", "host-b", "--", "ip", "-o", "-4", "addr", "show", "eth1")
    assert "10.60.1.2/30" in plain.stdout, plain.stderr

    status = topo("status")
    assert status.returncode == 0, status.stderr
    rows = [line for line in status.stdout.splitlines() if "box-a" in line and "container" in line]
    assert rows and BUSYBOX in rows[0] and "yes" in rows[0], status.stdout
    assert status.stdout.count(" up ") == 2, status.stdout

    down = topo("down")
    assert down.returncode == 0, down.stderr
    assert "removed 3 namespaces and 2 container(s)" in down.stdout, down.stdout
    assert topo.containers() == [] and topo.namespaces() == [] and topo.processes() == []
    assert podman("ps", "--all", "--filter", f"name={topo.name}", "--format", "{{.Names}}").stdout == ""
    again = topo("down")
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_down_after_a_crash_finds_the_containers_by_label(images: str, topo: Topo) -> None:
    topo.write()
    assert topo("up").returncode == 0
    record_path = topo.directory / "state" / topo.name / "lab.json"
    record = json.loads(record_path.read_text())
    assert record["containers"] == {"box-a": f"{topo.name}-box-a", "box-c": f"{topo.name}-box-c"}
    for process in record["processes"]:
        os.kill(process["pid"], signal.SIGKILL)
    record_path.unlink()  # as if nsm-topo died before writing it
    again = topo("up")
    assert again.returncode == 1 and "nsm-topo down" in again.stderr, again.stderr
    down = topo("down")
    assert down.returncode == 0, down.stderr
    assert "2 container(s)" in down.stdout, down.stdout
    assert topo.containers() == [] and topo.namespaces() == [] and topo.processes() == []


def test_without_podman_or_docker_up_says_what_to_install_and_creates_nothing(topo: Topo) -> None:
    topo.write()
    bare = {**os.environ, "PATH": str(topo.directory / "no-such-dir")}  # neither podman nor docker found
    up = topo("up", env=bare)
    assert up.returncode == 2, up.stdout + up.stderr
    lines = up.stderr.splitlines()
    assert len(lines) == 1 and "box-a" in lines[0] and "install podman" in lines[0], up.stderr
    assert topo.namespaces() == [] and not (topo.directory / "state").exists()


@pytest.fixture
def docker_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a docker CLI that talks to podman's Docker-compatible API (no docker daemon
    here), with nsm-topo told to use docker."""
    socket = Path(tmp_path) / "docker.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time", "0", f"unix://{socket}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(socket.exists, 15, "podman's Docker API")
        yield {**os.environ, "DOCKER_HOST": f"unix://{socket}", "NSM_TOPO_CONTAINER_ENGINE": "docker"}
    finally:
        service.terminate()
        service.wait(15)


if shutil.which("docker") is not None:  # collected only where a docker CLI is installed (the CI machines)

    def test_with_docker_the_container_makes_the_namespace_and_the_lab_names_it(
        images: str, docker_env: dict[str, str], topo: Topo
    ) -> None:
        """docker cannot join a named namespace: the container starts with --network none and its
        namespace gets the device's name (`ip netns attach`)."""
        topo.write()
        up = topo("up", env=docker_env)
        assert up.returncode == 0, up.stderr
        record = json.loads((topo.directory / "state" / topo.name / "lab.json").read_text())
        assert record["engine"] == "docker"
        box = f"{topo.name}-box-a"
        pid = subprocess.run(
            ["docker", "inspect", "--format", "{{.State.Pid}}", box],
            env=docker_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{box}").st_ino
        ping = topo("exec", "box-a", "--", "ping", "-c1", "-W2", "10.60.1.2", env=docker_env)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        down = topo("down", env=docker_env)
        assert down.returncode == 0 and "2 container(s)" in down.stdout, down.stdout + down.stderr
        assert topo.containers() == [] and topo.namespaces() == [] and topo.processes() == []
