"""The seed's environment contract through NSM's real control plane: a NetworkService whose match picks
the endpoint by label (`link=net-0` -> `device=device-2`), the endpoint naming its side from the client's
`peerif` label and handing out a /30 per link from IP_ADDRESS (client network+1, endpoint network+2).
The Python endpoint serves both a Python client (seed grammar) and the Go reference client (plain labels).
"""

from __future__ import annotations

import pytest
from interop_lab import Lab, wait_until

pytestmark = pytest.mark.timeout(300)

P2P = {
    "name": "p2p",
    "payload": "IP",
    "matches": [
        {
            "source_selector": {"link": "net-0"},
            "routes": [{"destination_selector": {"device": "device-2"}}],
        }
    ],
}

SEED_NSE_ENV = {
    "ENDPOINT_NETWORK_SERVICE": "p2p",
    "ENDPOINT_LABELS": "device=device-2",
    "IP_ADDRESS": "10.60.1.0/24",
}


@pytest.mark.parametrize("nsc_kind", ["py", "go"])
def test_peerif_and_slash30_addressing_work_through_the_real_nsmgr(lab: Lab, nsc_kind: str) -> None:
    lab.register_ns(P2P)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    lab.py_nse(dev2, "device-2", SEED_NSE_ENV)
    lab.wait_for_nse("p2p", "device-2")
    if nsc_kind == "py":
        lab.py_nsc(dev1, "device-1", {"NS_NETWORKSERVICEMESH_IO": "p2p/eth12?link=net-0&peerif=eth21"})
    else:
        lab.go_nsc(dev1, "device-1", "p2p", "eth12", "-labels", "link=net-0,peerif=eth21")
    wait_until(
        lambda: lab.link_up(dev1, "eth12", "10.60.1.1/30") and lab.link_up(dev2, "eth21", "10.60.1.2/30"),
        30,
        "eth12 10.60.1.1/30 <-> eth21 10.60.1.2/30",
    )
    assert list(lab.links(dev1)) == ["eth12"]
    assert list(lab.links(dev2)) == ["eth21"]
    assert lab.ping(dev1, "10.60.1.2")
    assert lab.ping(dev2, "10.60.1.1")
    # the endpoint's own service registration never replaced the one with matches
    for registration in lab.events("registry.register_ns", name="p2p"):
        assert registration["ns"].get("matches"), registration
    assert lab.events("strict.rejected") == []


def test_a_client_the_match_does_not_select_gets_no_link(lab: Lab) -> None:
    lab.register_ns(P2P)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    lab.py_nse(dev2, "device-2", SEED_NSE_ENV)
    lab.wait_for_nse("p2p", "device-2")
    lab.py_nsc(dev1, "device-1", {"NS_NETWORKSERVICEMESH_IO": "p2p/eth12?link=net-9&peerif=eth21"})
    failures = wait_until(
        lambda: lab.events("nsmgr.request_failed", id="device-1-0"), 20, "the nsmgr to refuse the request"
    )
    # the nsmgr finds no forwarder for an unmatched client: the service's matches filter forwarders first
    assert "no candidates found" in failures[0]["error"]
    assert lab.links(dev1) == {} and lab.links(dev2) == {}
    assert lab.events("veth.created") == []
