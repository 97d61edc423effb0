"""The wiring one topology gets, locally and on Kubernetes alike (legacy-contract.md §4.3)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from test_topology import NSM_5NODE

from nsm_sdk.protocol.nsurl import parse_seed_services
from nsm_topo.topology import TopologyError, parse_topology
from nsm_topo.wiring import MAX_LINKS_PER_ENDPOINT, planned_addresses, wire


def test_sidecar_environment_is_k8s_topos_nsm_mode() -> None:
    wiring = wire(parse_topology(NSM_5NODE, Path("/labs/nsm-5node.yml")))
    qrtr4 = wiring.device("qrtr-4")
    assert qrtr4.nsc_env == {
        "NS_NETWORKSERVICEMESH_IO": "nsm-5node/eth41?link=net-3&peerif=eth14,"
        "nsm-5node/eth45?link=net-5&peerif=eth54"
    }
    assert qrtr4.nse_env == {
        "ENDPOINT_NETWORK_SERVICE": "nsm-5node",
        "ENDPOINT_LABELS": "device=qrtr-4",
        "IP_ADDRESS": "10.60.3.0/24",
        "NSM_REGISTER_SERVICE": "false",  # ours: the NetworkService object is created first
    }
    # pools follow the device order without k8s-topo's gaps
    assert [str(device.pool) for device in wiring.devices] == [f"10.60.{n}.0/24" for n in range(5)]


def test_every_client_entry_parses_as_the_sidecar_reads_it() -> None:
    wiring = wire(parse_topology(NSM_5NODE))
    for device in wiring.devices:
        if device.nsc_env is None:
            continue
        specs = parse_seed_services("NS_NETWORKSERVICEMESH_IO", device.nsc_env["NS_NETWORKSERVICEMESH_IO"])
        assert [(s.interface_name, dict(s.labels)) for s in specs] == [
            (link.client.interface, {"link": link.name, "peerif": link.endpoint.interface})
            for link in device.owned
        ]


def test_a_device_that_owns_no_link_gets_no_client() -> None:
    wiring = wire(parse_topology('links:\n  - endpoints: ["r1:eth1", "r2:eth1"]\n'))
    assert wiring.device("r2").nsc_env is None
    assert [link.name for link in wiring.device("r2").served] == ["net-0"]


def test_network_service_has_one_match_per_link_toward_the_endpoint_device() -> None:
    wiring = wire(parse_topology(NSM_5NODE, Path("/labs/nsm-5node.yml")))
    service = wiring.network_service()
    assert service["metadata"] == {"name": "nsm-5node"} and service["spec"]["payload"] == "IP"
    assert service["spec"]["matches"][3] == {  # NSM v1: the Go struct's JSON names (proto field names)
        "source_selector": {"link": "net-3"},
        "routes": [{"destination_selector": {"device": "qrtr-1"}}],
    }
    legacy = wiring.network_service("networkservicemesh.io/v1alpha1")["spec"]["matches"][3]
    assert legacy == {
        "sourceSelector": {"link": "net-3"},
        "route": [{"destinationSelector": {"device": "qrtr-1"}}],
    }


def test_a_device_with_more_links_than_its_pool_is_refused_naming_it() -> None:
    links = "".join(
        f'  - endpoints: ["c{i}:eth1", "hub:eth{i}"]\n' for i in range(MAX_LINKS_PER_ENDPOINT + 1)
    )
    with pytest.raises(TopologyError, match=r"device hub is the endpoint .* of 65 links"):
        wire(parse_topology("links:\n" + links))
    # 64 fit: 64 /30s in a /24
    fitting = "".join(f'  - endpoints: ["c{i}:eth1", "hub:eth{i}"]\n' for i in range(MAX_LINKS_PER_ENDPOINT))
    hub = wire(parse_topology("links:\n" + fitting)).device("hub")
    assert len(list(hub.pool.subnets(new_prefix=30))) == len(hub.served)
    assert isinstance(hub.pool, ipaddress.IPv4Network)


def test_more_devices_than_pools_is_refused_naming_the_first_without_one() -> None:
    links = "".join(f'  - endpoints: ["a{i}:eth1", "b{i}:eth1"]\n' for i in range(513))
    with pytest.raises(TopologyError, match=r"1026 devices.* device a512 gets none"):
        wire(parse_topology("links:\n" + links))


def test_devices_past_the_256th_get_pools_after_10_60_255() -> None:
    links = "".join(f'  - endpoints: ["a{i}:eth1", "b{i}:eth1"]\n' for i in range(512))
    wiring = wire(parse_topology("links:\n" + links))
    assert [str(d.pool) for d in wiring.devices[255:257]] == ["10.60.255.0/24", "10.61.0.0/24"]
    assert str(wiring.devices[-1].pool) == "10.63.255.0/24"


def test_endpoint_links_fix_each_links_addresses_in_the_endpoints_pool() -> None:
    topology = parse_topology(NSM_5NODE, Path("/labs/nsm-5node.yml"))
    qrtr2 = wire(topology).device("qrtr-2")
    assert qrtr2.nse_env["ENDPOINT_LINKS"] == "net-0,net-4"
    net0, net4 = topology.links[0], topology.links[4]
    assert planned_addresses(qrtr2, net0) == ("10.60.1.1/30", "10.60.1.2/30")
    assert planned_addresses(qrtr2, net4) == ("10.60.1.5/30", "10.60.1.6/30")
    assert "ENDPOINT_LINKS" not in wire(topology).device("qrtr-4").nse_env, "it answers no link"
