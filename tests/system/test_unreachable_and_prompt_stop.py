"""What a new user sees when nothing serves the manager's socket, and how fast a stop signal is obeyed.

Every message names the socket, says what is wrong with it, and what to start. A stop signal while a
call is in flight cancels the call instead of waiting out its deadline (15 s by default): the process is
gone within a second.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lab import Lab, Process, wait_until
from test_p2p_link import P2P

PROMPT = 1.0  # seconds from the stop signal to the process's exit


def _stopped_within(process: Process, sig: int = signal.SIGTERM) -> float:
    started = time.monotonic()
    process.signal(sig)
    assert process.wait(20) == 0, process.log
    return time.monotonic() - started


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nsm_local", *args], capture_output=True, text=True, timeout=30
    )


def test_nsm_local_list_without_nsm_local_names_the_missing_socket_and_the_command(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/nsm.sock"
    started = time.monotonic()
    result = _cli("list", "--connect-to", url)
    assert time.monotonic() - started < 5, "no waiting out a gRPC deadline for a socket that is not there"
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"nsm-local: cannot reach nsm-local at {url}: no socket there")
    assert "`nsm-local serve`" in lines[0]


def test_nsm_local_list_at_a_stale_socket_says_nothing_listens_on_it(tmp_path: Path) -> None:
    path = tmp_path / "nsm.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # bound, never listening: what a killed server leaves behind
        result = _cli("list", "--connect-to", f"unix://{path}")
    assert result.returncode == 1
    assert "the socket file exists but nothing listens on it" in result.stderr
    assert "`nsm-local serve`" in result.stderr


def test_nsm_local_list_without_its_workload_api_names_that_socket(lab: Lab) -> None:
    lab.nsm_local()
    missing = f"unix://{lab.directory}/no-agent.sock"
    result = subprocess.run(
        [sys.executable, "-m", "nsm_local", "list", "--connect-to", lab.socket],
        env={"PATH": "/usr/bin:/bin", "SPIFFE_ENDPOINT_SOCKET": missing},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"no SPIFFE Workload API at {missing}" in result.stderr
    assert "no socket there" in result.stderr
    assert "SPIFFE_ENDPOINT_SOCKET" in result.stderr


@pytest.mark.parametrize("role", ["nsc-sidecar", "nse-sidecar"])
def test_sidecar_without_a_manager_names_the_socket_and_stops_at_once(lab: Lab, role: str) -> None:
    device = lab.netns("device-1")
    common = {"NSM_INSECURE": "true", "NSM_DIAL_TIMEOUT": "1s"}  # insecure: no Workload API either
    if role == "nsc-sidecar":
        sidecar = lab.nsc(device, NS_NETWORKSERVICEMESH_IO="p2p/eth12?link=net-0", **common)
    else:
        sidecar = lab.nse(device, ENDPOINT_NETWORK_SERVICE="p2p", IP_ADDRESS="10.60.1.0/24", **common)
    report = wait_until(lambda: sidecar.events("manager.unreachable"), 15, "the unreachable manager report")[
        0
    ]
    assert report["socket"] == lab.socket
    assert report["problem"] == "no socket there (no such file)"
    assert "nsm-local serve" in report["hint"] and "NSM_CONNECT_TO" in report["hint"]
    time.sleep(1)  # its calls wait for the manager now
    assert _stopped_within(sidecar) < PROMPT, sidecar.log
    assert sidecar.events("shutdown.done")


def test_sidecar_without_a_workload_api_says_which_socket_and_what_serves_it(lab: Lab) -> None:
    device = lab.netns("device-1")
    nsc = lab.nsc(device, NS_NETWORKSERVICEMESH_IO="p2p/eth12?link=net-0")
    report = wait_until(lambda: nsc.events("identity.waiting"), 15, "the Workload API report")[0]
    assert report["workload_api"] == lab.workload_api
    assert report["reason"] == "no socket there (no such file)"
    assert "nsm-local serve" in report["hint"] and "SPIFFE_ENDPOINT_SOCKET" in report["hint"]
    assert _stopped_within(nsc, signal.SIGINT) < PROMPT, nsc.log


def test_sigterm_during_a_request_stuck_at_its_endpoint_exits_at_once_and_leaves_no_link(lab: Lab) -> None:
    manager = lab.nsm_local()
    lab.apply(P2P)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    nse = lab.nse(
        dev2, ENDPOINT_NETWORK_SERVICE="p2p", ENDPOINT_LABELS="device=device-2", IP_ADDRESS="10.60.1.0/24"
    )
    wait_until(lambda: nse.events("registration.done"), 20, "the endpoint to register")
    nse.signal(signal.SIGSTOP)  # the endpoint hangs: nsm-local's call to it, and so the Request, wait
    try:
        nsc = lab.nsc(dev1, NS_NETWORKSERVICEMESH_IO="p2p/eth12?link=net-0&peerif=eth21")
        wait_until(lambda: nsc.events("identity.ready"), 20, "the client's identity")
        time.sleep(1.5)  # its adoption lookup is answered at once; the Request is now in flight
        assert not nsc.events("link.established")
        assert _stopped_within(nsc) < PROMPT, nsc.log
    finally:
        nse.signal(signal.SIGCONT)
    # The endpoint answers now and nsm-local makes the link after all; nobody will ever use it, so nsm-local
    # closes it again at once (Go's chain rolls a cancelled Request back the same way).
    wait_until(
        lambda: any(
            e.get("reason") == "its caller left before the reply" for e in manager.events("connection.closed")
        ),
        20,
        "nsm-local to undo the abandoned Request",
    )
    wait_until(lambda: lab.addresses(dev1) == {} and lab.addresses(dev2) == {}, 10, "both sides to go")
    assert "if=eth12" not in lab.nsm_local_cli("list").stdout
    assert nse.alive()
