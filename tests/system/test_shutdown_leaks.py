"""What a component owns goes with it, and the components that stay keep nothing of it: open fds of the
survivors are counted in /proc/<pid>/fd before and after, over several rounds."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from lab import Lab, Process, wait_until
from test_p2p_link import P2P

THREE_LINKS = ",".join(f"p2p/eth1{i}?link=net-0&peerif=eth{i}1" for i in (2, 3, 4))


def open_fds(process: Process) -> dict[str, str]:
    """fd number → what it points to, for a live process."""
    found = {}
    for fd in os.listdir(f"/proc/{process.popen.pid}/fd"):
        try:
            found[fd] = os.readlink(f"/proc/{process.popen.pid}/fd/{fd}")
        except FileNotFoundError:  # closed while we looked
            continue
    return found


def new_fds(process: Process, before: dict[str, str]) -> list[str]:
    """What the process has open now that it did not have in `before` (for failure messages)."""
    return sorted(f"{fd} -> {target}" for fd, target in open_fds(process).items() if before.get(fd) != target)


def settled_fd_count(process: Process, expected: int | None = None, seconds: float = 10) -> int:
    """The fd count once it stops moving (or reaches `expected`): closes happen asynchronously."""
    counts = [len(open_fds(process))]

    def steady() -> bool:
        counts.append(len(open_fds(process)))
        if expected is not None:
            return counts[-1] == expected
        return len(counts) >= 3 and counts[-1] == counts[-2] == counts[-3]

    with contextlib.suppress(AssertionError):  # the caller compares and shows what is open
        wait_until(steady, seconds, "the fd count to settle", interval=0.5)
    return counts[-1]


def one_round(lab: Lab, dev1: str, dev2: str) -> None:
    """A client with three links comes, is verified, and goes with SIGTERM; nothing of it stays."""
    nsc = lab.nsc(dev1, NS_NETWORKSERVICEMESH_IO=THREE_LINKS)
    wait_until(lambda: len(lab.addresses(dev2)) == 3 and len(lab.addresses(dev1)) == 3, 30, "three links")
    wait_until(lambda: nsc.events("agent.ready"), 10, "the client verified")
    nsc.signal(signal.SIGTERM)
    assert nsc.wait(20) == 0, nsc.log
    wait_until(lambda: lab.addresses(dev1) == {} and lab.addresses(dev2) == {}, 10, "both sides to go")
    assert "conn=" not in lab.nsm_local_cli("list").stdout


def test_clients_coming_and_going_leave_no_fds_in_the_manager_or_the_endpoint(lab: Lab) -> None:
    manager = lab.nsm_local()
    lab.apply(P2P)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    nse = lab.nse(
        dev2, ENDPOINT_NETWORK_SERVICE="p2p", ENDPOINT_LABELS="device=device-2", IP_ADDRESS="10.60.1.0/24"
    )
    one_round(lab, dev1, dev2)  # the first round opens what stays for good (the manager's channel to nse)
    manager_fds, endpoint_fds = settled_fd_count(manager), settled_fd_count(nse)
    seen = open_fds(manager), open_fds(nse)
    for _ in range(2):
        one_round(lab, dev1, dev2)
        assert settled_fd_count(manager, manager_fds) == manager_fds, new_fds(manager, seen[0])
        assert settled_fd_count(nse, endpoint_fds) == endpoint_fds, new_fds(nse, seen[1])


def test_an_endpoint_going_leaves_the_manager_with_the_fds_it_had_before_it_came(lab: Lab) -> None:
    manager = lab.nsm_local()
    lab.apply(P2P)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    before = settled_fd_count(manager)
    seen = open_fds(manager)
    nse = lab.nse(
        dev2, ENDPOINT_NETWORK_SERVICE="p2p", ENDPOINT_LABELS="device=device-2", IP_ADDRESS="10.60.1.0/24"
    )
    one_round(lab, dev1, dev2)
    nse.signal(signal.SIGTERM)
    assert nse.wait(20) == 0, nse.log
    assert nse.events("registration.removed")
    wait_until(lambda: manager.events("endpoint.unregistered"), 10, "the endpoint unregistered")
    assert settled_fd_count(manager, before) == before, new_fds(manager, seen)


def test_sigterm_to_nsm_local_closes_its_sockets_and_exits_in_time(lab: Lab) -> None:
    manager = lab.nsm_local()
    lab.apply(P2P)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    lab.nse(
        dev2, ENDPOINT_NETWORK_SERVICE="p2p", ENDPOINT_LABELS="device=device-2", IP_ADDRESS="10.60.1.0/24"
    )
    lab.nsc(dev1, NS_NETWORKSERVICEMESH_IO=THREE_LINKS)
    wait_until(lambda: len(lab.addresses(dev1)) == 3, 30, "three links")
    manager.signal(signal.SIGTERM)
    assert manager.wait(15) == 0, manager.log
    sockets = [Path(lab.socket.removeprefix("unix://")), Path(lab.workload_api.removeprefix("unix://"))]
    assert [path for path in sockets if path.exists()] == []
    assert len(lab.addresses(dev1)) == 3, "the data plane outlives the control plane (it heals on restart)"
