"""nsm_topo.local.containers without an engine: the choice of engine and how its answers are read."""

from __future__ import annotations

import pytest

from nsm_topo.local.containers import Container, Engine, NoEngineError, detect, exec_argv


def test_an_unknown_engine_is_refused_in_one_line() -> None:
    with pytest.raises(NoEngineError, match=r"NSM_TOPO_CONTAINER_ENGINE=lxc: expected one of podman, docker"):
        detect({"NSM_TOPO_CONTAINER_ENGINE": "lxc"})


@pytest.mark.parametrize(
    ("state", "running"),
    [
        ("running", True),  # docker, and podman's Docker API
        ("Up 4 seconds ago", True),  # podman 4.3's ps
        ("Exited (0) 2 seconds ago", False),
        ("exited", False),
        ("created", False),
    ],
)
def test_running_is_read_from_either_engines_state(state: str, running: bool) -> None:
    assert Container("lab-box", "busybox", state).running is running


def test_exec_gets_a_terminal_only_when_there_is_one() -> None:
    podman = Engine("podman", "/usr/bin/podman")
    assert exec_argv(podman, "lab-box", ["ip", "addr"], tty=False) == [
        "/usr/bin/podman",
        "exec",
        "-i",
        "lab-box",
        "ip",
        "addr",
    ]
    assert exec_argv(podman, "lab-box", ["sh"], tty=True)[2] == "-it"
    assert podman.joins_named_netns and not Engine("docker", "/usr/bin/docker").joins_named_netns
