"""Several links per client, the k8s-topo shape: one NSC entry per owned link, one NSE per device."""

from __future__ import annotations

import ipaddress

from lab import Lab, wait_until

TOPO = """
apiVersion: networkservicemesh.io/v1alpha1
kind: NetworkService
metadata:
  name: topo
spec:
  payload: IP
  matches:
  - match: null
    sourceSelector: {link: net-0}
    route:
    - destination: null
      destinationSelector: {device: r2}
  - match: null
    sourceSelector: {link: net-1}
    route:
    - destination: null
      destinationSelector: {device: r3}
  - match: null
    sourceSelector: {link: net-2}
    route:
    - destination: null
      destinationSelector: {device: r2}
"""


def test_one_client_with_links_to_two_devices_and_two_links_to_one(lab: Lab) -> None:
    lab.nsm_local()
    lab.apply(TOPO)
    r1, r2, r3 = lab.netns("r1"), lab.netns("r2"), lab.netns("r3")
    lab.nse(r2, ENDPOINT_NETWORK_SERVICE="topo", ENDPOINT_LABELS="device=r2", IP_ADDRESS="10.60.2.0/24")
    lab.nse(r3, ENDPOINT_NETWORK_SERVICE="topo", ENDPOINT_LABELS="device=r3", IP_ADDRESS="10.60.3.0/24")
    lab.nsc(
        r1,
        NS_NETWORKSERVICEMESH_IO=(
            "topo/eth12?link=net-0&peerif=eth21,topo/eth13?link=net-1&peerif=eth31,"
            "topo/eth122?link=net-2&peerif=eth221"
        ),
    )

    def all_up() -> bool:
        r1_links, r2_links, r3_links = lab.addresses(r1), lab.addresses(r2), lab.addresses(r3)
        return (
            len(r1_links) == 3
            and len(r2_links) == 2
            and len(r3_links) == 1
            and all(r1_links.values())
            and all(r2_links.values())
            and all(r3_links.values())
        )

    wait_until(all_up, 30, "three links from r1")
    r1_links, r2_links, r3_links = lab.addresses(r1), lab.addresses(r2), lab.addresses(r3)
    assert r3_links == {"eth31": ["10.60.3.2/30"]}
    assert r1_links["eth13"] == ["10.60.3.1/30"]
    # two links to r2 get two different /30s from r2's pool, whichever order they were made in
    assert sorted(r2_links) == ["eth21", "eth221"]
    assert {r1_links["eth12"][0], r1_links["eth122"][0]} == {"10.60.2.1/30", "10.60.2.5/30"}
    for link, peer in (("eth21", "eth12"), ("eth221", "eth122")):
        endpoint, client = (
            ipaddress.ip_interface(r2_links[link][0]),
            ipaddress.ip_interface(r1_links[peer][0]),
        )
        assert endpoint.network == client.network and endpoint.ip == client.ip + 1
        assert lab.ping(r1, str(endpoint.ip))
    assert lab.ping(r1, "10.60.3.2")
    assert lab.ping(r3, "10.60.3.1")
