"""Lab devices as containers: podman or docker, whichever works here, the way containerlab runs nodes.

A device whose file entry names an image (`custom_image`) runs that image as a container in the device's
network namespace; its sidecars (and nothing else) still run beside it in that namespace, so the links
arrive inside the container. Each container is called `<topology>-<device>` (the namespace's name) and
carries the labels `nsm-topo.lab=<topology>` and `nsm-topo.device=<device>`: `down` finds exactly the
containers of its lab by label, also when the lab's record is lost, and never touches anyone else's.

* **podman** joins the namespace `up` made: `--network ns:/run/netns/<topology>-<device>`.
* **docker** cannot join a named namespace: the container is started with `--network none` and its own
  namespace is then given the lab's name (`ip netns attach`), so the sidecars and nsm-local find it at
  the same path.

The container gets NET_ADMIN and NET_RAW on top of the engine's default capabilities (k8s-topo gave its
router containers NET_ADMIN; ping needs NET_RAW), the device's name as hostname, and the device's file in
`conf_dir`, if any, read-only at `/mnt/flash/startup-config` (where k8s-topo mounts it for `Generic`
devices). Its own command is the image's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LAB_LABEL = "nsm-topo.lab"
DEVICE_LABEL = "nsm-topo.device"
ENGINE_ENV = "NSM_TOPO_CONTAINER_ENGINE"
"""`podman` or `docker`: use that one (default: podman if installed, else docker if its daemon answers)."""
ENGINES = ("podman", "docker")
INSTALL_HINT = (
    "install podman (scripts/setup.sh does: apt-get install podman runc conmon containernetworking-plugins "
    "catatonit) or start a docker daemon"
)
STARTUP_CONFIG = "/mnt/flash/startup-config"
CAPABILITIES = ("NET_ADMIN", "NET_RAW")
STOP_GRACE = 10
_TIMEOUT = 120.0


class ContainerError(RuntimeError):
    """A container engine command failed (the message has its last error line)."""


class NoEngineError(ContainerError):
    """A device needs a container, but neither podman nor docker can run one here."""


@dataclass(frozen=True, slots=True)
class Engine:
    name: str
    """podman or docker"""
    binary: str

    @property
    def joins_named_netns(self) -> bool:
        """podman runs a container in an existing named namespace; docker only in one it makes."""
        return self.name == "podman"

    def command(self, *args: str) -> list[str]:
        return [self.binary, *args]

    def run(self, *args: str, timeout: float = _TIMEOUT) -> str:
        """Run an engine command; its stdout, or ContainerError with its last stderr line."""
        try:
            done = subprocess.run(
                self.command(*args),
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise ContainerError(f"{self.name} {args[0]}: no answer within {timeout:.0f}s") from None
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
            raise ContainerError(f"{self.name} {' '.join(args[:2])}: {lines[-1]}")
        return done.stdout


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    image: str
    state: str
    """running, exited, created, ... as the engine says"""

    @property
    def running(self) -> bool:
        return self.state.lower().startswith(("running", "up"))


def _docker_answers(binary: str) -> bool:
    try:
        done = subprocess.run(
            [binary, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            check=False,
            timeout=15,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def detect(environ: Mapping[str, str] | None = None) -> Engine | None:
    """The engine to use: $NSM_TOPO_CONTAINER_ENGINE if set, else podman if installed, else docker if its
    daemon answers (a docker CLI without a daemon does not count); None if there is none."""
    env = os.environ if environ is None else environ
    chosen = env.get(ENGINE_ENV, "").strip()
    if chosen:
        if chosen not in ENGINES:
            raise NoEngineError(f"{ENGINE_ENV}={chosen}: expected one of {', '.join(ENGINES)}")
        binary = shutil.which(chosen)
        if binary is None or (chosen == "docker" and not _docker_answers(binary)):
            raise NoEngineError(f"{ENGINE_ENV}={chosen}: {chosen} does not work here; {INSTALL_HINT}")
        return Engine(chosen, binary)
    podman = shutil.which("podman")
    if podman is not None:
        return Engine("podman", podman)
    docker = shutil.which("docker")
    if docker is not None and _docker_answers(docker):
        return Engine("docker", docker)
    return None


def require(device: str, image: str) -> Engine:
    """The engine, or NoEngineError naming the device that needs one and what to install."""
    engine = detect()
    if engine is None:
        raise NoEngineError(
            f"device {device} runs image {image} (custom_image), but neither podman nor docker works "
            f"here: {INSTALL_HINT}"
        )
    return engine


def ensure_image(engine: Engine, image: str) -> None:
    """The image is here, pulled if it was not (before the lab creates anything)."""
    try:
        engine.run("image", "inspect", "--format", "{{.Id}}", image)
        return
    except ContainerError:
        pass
    try:
        engine.run("pull", image, timeout=600)
    except ContainerError as exc:
        raise ContainerError(f"image {image} is not here and cannot be pulled: {exc}") from None


def lab_containers(engine: Engine, lab: str) -> list[Container]:
    """Every container (running or not) labelled as this lab's."""
    listed = engine.run(
        "ps",
        "--all",
        "--filter",
        f"label={LAB_LABEL}={lab}",
        "--format",
        "{{.Names}}\t{{.Image}}\t{{.State}}",
    )
    found = []
    for line in listed.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0]:
            found.append(Container(parts[0], parts[1], parts[2]))
    return found


def labels_of(engine: Engine, name: str) -> dict[str, str] | None:
    """A container's labels, or None if there is no container of that name."""
    try:
        out = engine.run("container", "inspect", "--format", "{{json .Config.Labels}}", name)
    except ContainerError:
        return None
    data = json.loads(out.strip() or "null")
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def start(
    engine: Engine,
    name: str,
    image: str,
    lab: str,
    device: str,
    netns_path: Path,
    config: Path | None,
) -> int:
    """Start the device's container, detached; returns its main process's pid (as the host sees it).

    podman joins `netns_path`; docker gets its own namespace (`--network none`), which the caller then
    names with `ip netns attach`.
    """
    network = f"ns:{netns_path}" if engine.joins_named_netns else "none"
    argv = [
        "run",
        "--detach",
        "--pull",
        "never",
        "--name",
        name,
        "--label",
        f"{LAB_LABEL}={lab}",
        "--label",
        f"{DEVICE_LABEL}={device}",
        "--hostname",
        device,
        "--network",
        network,
    ]
    for capability in CAPABILITIES:
        argv += ["--cap-add", capability]
    if config is not None:
        argv += ["--volume", f"{config.resolve()}:{STARTUP_CONFIG}:ro"]
    engine.run(*argv, image)
    pid = engine.run("container", "inspect", "--format", "{{.State.Pid}}", name).strip()
    if not pid.isdigit() or int(pid) == 0:
        logs = logs_tail(engine, name)
        raise ContainerError(f"container {name} ({image}) exited at once{': ' + logs if logs else ''}")
    return int(pid)


def logs_tail(engine: Engine, name: str, lines: int = 3) -> str:
    try:
        done = subprocess.run(
            engine.command("logs", "--tail", str(lines), name),
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return ""
    return " | ".join((done.stdout + done.stderr).strip().splitlines()[-lines:])


def remove(engine: Engine, lab: str, names: Sequence[str], grace: int = STOP_GRACE) -> int:
    """Stop (SIGTERM, then SIGKILL after `grace` s) and remove those of these containers that are this
    lab's (by label: a container of that name that someone else made stays); how many there were."""
    present = [name for name in dict.fromkeys(names) if (labels_of(engine, name) or {}).get(LAB_LABEL) == lab]
    if not present:
        return 0
    subprocess.run(
        engine.command("stop", "--time", str(grace), *present),
        capture_output=True,
        check=False,
        timeout=grace + 60,
        stdin=subprocess.DEVNULL,
    )
    engine.run("rm", "--force", *present)
    return len(present)


def exec_argv(engine: Engine, name: str, argv: Sequence[str], tty: bool) -> list[str]:
    """`<engine> exec -i[t] NAME ARGV...`: a command in the device's container."""
    return engine.command("exec", "-it" if tty else "-i", name, *argv)
