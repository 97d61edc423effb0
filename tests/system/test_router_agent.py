"""`nsm-agent`: one process plays both roles of a router (its client and its endpoint), configured with
the two sidecars' variables together, through nsm-local with SPIFFE.

Two routers, each the client of one link and the endpoint of the other, so each process must request,
serve, verify both sides of its links, say it is ready only when both roles are, and close everything on
SIGTERM.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lab import Lab, wait_until

from nsm_sdk.version import NSM_API_VERSION

CROSS = """
apiVersion: networkservicemesh.io/v1alpha1
kind: NetworkService
metadata:
  name: cross
spec:
  matches:
  - match:
    sourceSelector:
      link: net-0
    route:
    - destination:
      destinationSelector:
        device: r2
  - match:
    sourceSelector:
      link: net-1
    route:
    - destination:
      destinationSelector:
        device: r1
  payload: IP
"""


def router_env(device: str, pool: str, link: str, ifname: str, peer_if: str, ready: Path) -> dict[str, str]:
    return {
        "NSM_NAME": device,
        "NS_NETWORKSERVICEMESH_IO": f"cross/{ifname}?link={link}&peerif={peer_if}",
        "ENDPOINT_NETWORK_SERVICE": "cross",
        "ENDPOINT_LABELS": f"device={device}",
        "IP_ADDRESS": pool,
        "NSM_READY_FILE": str(ready),
    }


def test_one_process_per_router_serves_requests_verifies_and_closes_both_roles(lab: Lab) -> None:
    lab.nsm_local()
    lab.apply(CROSS)
    r1, r2 = lab.netns("r1"), lab.netns("r2")
    ready1, ready2 = lab.directory / "r1.ready", lab.directory / "r2.ready"
    agent1 = lab.start("nsm-agent", router_env("r1", "10.60.1.0/24", "net-0", "eth1", "eth2", ready1), r1)
    agent2 = lab.start("nsm-agent", router_env("r2", "10.60.2.0/24", "net-1", "eth1", "eth2", ready2), r2)
    wait_until(lambda: ready1.exists() and ready2.exists(), 30, "both routers ready")
    # net-0: r1's client eth1 -> r2's endpoint eth2 (r2's pool); net-1: r2's eth1 -> r1's eth2 (r1's pool)
    assert lab.link_up(r1, "eth1", "10.60.2.1/30") and lab.link_up(r2, "eth2", "10.60.2.2/30")
    assert lab.link_up(r2, "eth1", "10.60.1.1/30") and lab.link_up(r1, "eth2", "10.60.1.2/30")
    assert lab.ping(r1, "10.60.2.2") and lab.ping(r2, "10.60.1.2")
    for agent in (agent1, agent2):
        wait_until(lambda agent=agent: len(agent.events("link.verified")) == 2, 10, "both sides verified")
        start = agent.events("agent.start")[0]
        assert start["roles"] == "client+endpoint"
        assert agent.events("program.start")[0]["nsm_api"] == NSM_API_VERSION

    for agent in (agent1, agent2):
        agent.signal()
    assert [agent.wait(30) for agent in (agent1, agent2)] == [0, 0], "0: closed cleanly, not by the backstop"
    assert lab.addresses(r1) == {} and lab.addresses(r2) == {}, "every link closed and removed"
    assert not ready1.exists() and not ready2.exists()
    for agent in (agent1, agent2):
        assert agent.events("close.done") and agent.events("registration.removed"), agent.log


@pytest.mark.parametrize(
    ("args", "starts"),
    [
        ((), "nsm-agent: NS_NETWORKSERVICEMESH_IO"),
        (
            ("--routers", "/nonexistent/routers.json"),
            "nsm-agent: --routers='/nonexistent/routers.json': not a routers file",
        ),
    ],
)
def test_bad_configuration_is_refused_in_one_line_with_exit_code_2(
    args: tuple[str, ...], starts: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nsm_agent", *args],
        env={"PATH": "/usr/bin:/bin", "NSM_NAME": "r1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(starts), done.stderr
