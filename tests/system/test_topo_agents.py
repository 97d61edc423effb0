"""`nsm-topo up --agents N`: the agents of every device hosted by N `nsm-agent` processes, as a user runs it
(the real command, real namespaces, nsm-local with SPIFFE), against the lab's own sockets and state.

Each device must still be its own NSM client and endpoint: its links verified in both namespaces, with
the addresses its endpoint's pool plans, and its own SPIFFE identity, the one its namespace gives.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from topocli import TopoCli, interface_addresses, lab_namespaces, planned, processes_of

from nsm_topo.topology import load_topology

# No router names: no FRR, only the NSM agents (the shape of the thousand-router benchmark, smaller).
RING = """\
prefix: {name}
links:
  - endpoints: ["d1:eth1", "d2:eth1"]
  - endpoints: ["d2:eth2", "d3:eth1"]
  - endpoints: ["d3:eth2", "d4:eth1"]
  - endpoints: ["d4:eth2", "d1:eth2"]
  - endpoints: ["d1:eth3", "d3:eth3"]
"""


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[TopoCli]:
    cli = TopoCli(Path(tmp_path))
    yield cli
    for stem in ("ring", "other"):
        path = cli.directory / f"{stem}.yml"
        if path.exists():
            cli("down", str(path))


def ring(cli: TopoCli, name: str) -> Path:
    path = cli.directory / f"{name}.yml"
    path.write_text(RING.format(name=name))
    return path


def agent_hosts(directory: Path) -> list[str]:
    return [p for p in processes_of(directory) if "nsm_agent --routers" in p]


def delegated_identities(cli: TopoCli) -> set[str]:
    """The SPIFFE ids nsm-local's Workload API issued to a process acting for a namespace it sent."""
    log = (cli.directory / "state" / "nsm-local.log").read_text()
    return {
        match.group(1)
        for line in log.splitlines()
        if "event=workload.svid_issued" in line and "process_netns=" in line
        if (match := re.search(r"spiffe_id=(\S+)", line))
    }


def connections(cli: TopoCli) -> list[str]:
    """The connection ids nsm-local holds (`nsm-local list`, as the operator)."""
    listed = subprocess.run(
        [sys.executable, "-m", "nsm_local", "list", "--connect-to", f"unix://{cli.directory}/sock/nsm.sock"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix://{cli.directory}/sock/agent.sock"},
        check=True,
    ).stdout
    return [line.split()[0] for line in listed.split("CONNECTIONS", 1)[1].splitlines() if line.strip()]


def test_agent_mode_verifies_every_link_gives_each_device_its_identity_and_leaves_nothing(
    topo: TopoCli,
) -> None:
    path = ring(topo, "ring")
    up = topo("up", str(path), "--agents", "2")
    assert up.returncode == 0, up.stderr
    assert "5 links up across 4 devices" in up.stdout
    topology = load_topology(path)
    assert interface_addresses(topology) == planned(topology)
    assert len(agent_hosts(topo.directory)) == 2, "two processes host the four devices"
    assert not [p for p in processes_of(topo.directory) if "_sidecar" in p], "no sidecar processes"

    inodes = {os.stat(f"/run/netns/ring-{device}").st_ino for device in topology.devices}
    assert delegated_identities(topo) == {f"spiffe://nsm.local/netns/{inode}/uid/0" for inode in inodes}

    status = topo("status", str(path))
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("nsm-agent (agents-") == 4 and status.stdout.count(" up ") == 5, status.stdout

    down = topo("down", str(path))
    assert down.returncode == 0, down.stderr
    assert lab_namespaces("ring") == []
    assert processes_of(topo.directory) == []
    assert not (topo.directory / "state").exists(), "the state directory goes with the last lab"


def test_an_agent_lab_beside_another_closes_its_links_through_the_shared_nsm_local(topo: TopoCli) -> None:
    """With another lab on the same nsm-local, `down` must close each link there (nsm-local stays): the
    hosts close their clients' links before their endpoints go, and nsm-local is left holding only the
    other lab's connections."""
    mine, other = ring(topo, "ring"), ring(topo, "other")
    for path in (other, mine):
        up = topo("up", str(path), "--agents", "1")
        assert up.returncode == 0, up.stderr
    assert len(connections(topo)) == 10

    down = topo("down", str(mine))
    assert down.returncode == 0, down.stderr
    assert "stopped 1 processes" in down.stdout
    held = connections(topo)
    assert len(held) == 5 and all(conn.startswith("other-") for conn in held), held
    log = (topo.directory / "state" / "nsm-local.log").read_text()
    assert "close.denied" not in log and "endpoint.lost" not in log
    assert lab_namespaces("ring") == []
