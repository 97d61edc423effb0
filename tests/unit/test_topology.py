"""k8s-topo topology files: k8s-topo's naming and role rules, and every bad file refused with one line that
names the link or the device (legacy-contract.md §4.2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nsm_topo.topology import Endpoint, TopologyError, load_topology, parse_topology

NSM_5NODE = """\
nsm: true
links:
  - endpoints: ["qrtr-1:eth12", "qrtr-2:eth21"]
  - endpoints: ["qrtr-1:eth13", "qrtr-3:eth31"]
  - endpoints: ["qrtr-2:eth23", "qrtr-3:eth32"]
  - endpoints: ["qrtr-4:eth41", "qrtr-1:eth14"]
  - endpoints: ["qrtr-5:eth52", "qrtr-2:eth25"]
  - endpoints: ["qrtr-4:eth45", "qrtr-5:eth54"]
"""


def test_first_end_is_the_client_and_links_are_named_by_position(tmp_path: Path) -> None:
    path = tmp_path / "nsm-5node.yml"
    path.write_text(NSM_5NODE)
    topology = load_topology(path)
    assert topology.name == "nsm-5node"
    assert [link.name for link in topology.links] == [f"net-{i}" for i in range(6)]
    assert topology.links[3].client == Endpoint("qrtr-4", "eth41")
    assert topology.links[3].endpoint == Endpoint("qrtr-1", "eth14")
    assert topology.devices == ("qrtr-1", "qrtr-2", "qrtr-3", "qrtr-4", "qrtr-5")
    assert [link.name for link in topology.links_of("qrtr-5")] == ["net-4", "net-5"]


def test_k8s_topo_name_rules_apply_to_devices_and_interfaces() -> None:
    topology = parse_topology(
        'links:\n  - endpoints: ["Leaf1.lab:Ethernet1", "SPINE-2:Ethernet2/1:10.0.0.2/30"]\n'
    )
    client, endpoint = topology.links[0].client, topology.links[0].endpoint
    assert (client.device, client.interface) == ("leaf1", "eth1")
    assert (endpoint.device, endpoint.interface, endpoint.ip) == ("spine-2", "eth2_1", "10.0.0.2/30")


def test_prefix_names_the_topology_and_conf_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "r1").write_text("hostname r1\n")
    path = tmp_path / "lab.yaml"
    path.write_text('prefix: Demo\nconf_dir: configs\nlinks:\n  - endpoints: ["r1:eth1", "r2:eth1"]\n')
    topology = load_topology(path)
    assert topology.name == "demo"
    assert topology.config_file("r1") == tmp_path / "configs" / "r1"
    assert topology.config_file("r2") is None


def test_custom_image_picks_the_image_by_name_substring() -> None:
    topology = parse_topology(
        'custom_image: {frr: "quay.io/frrouting/frr:8.4"}\n'
        'links:\n  - endpoints: ["frr-1:eth1", "host-1:eth1"]\n'
    )
    assert topology.image_of("frr-1") == "quay.io/frrouting/frr:8.4"
    assert topology.image_of("host-1") is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (
            'links:\n  - endpoints: ["r1:eth1", "r2:eth1", "r3:eth1"]\n',
            "net-0: a link has exactly two ends, this one has 3",
        ),
        ('links:\n  - endpoints: ["r1:eth1"]\n', "net-0: a link has exactly two ends, this one has 1"),
        (
            'links:\n  - endpoints: ["r1:eth1", "r2:eth1"]\n  - endpoints: ["r1:eth1", "r3:eth1"]\n',
            "net-1: interface eth1 of device r1 is already used by link net-0",
        ),
        ('links:\n  - endpoints: ["r1:averyveryverylongname", "r2:eth1"]\n', "Linux limit is 15"),
        ('links:\n  - endpoints: ["r1:eth1?x", "r2:eth1"]\n', "may hold only letters"),
        (
            'links:\n  - endpoints: ["r_1:eth1", "r2:eth1"]\n',
            "device name 'r_1' cannot be a Kubernetes pod name",
        ),
        ('links:\n  - endpoints: ["r1:eth1", "r1:eth2"]\n', "net-0: both ends are on device r1"),
        ('links:\n  - endpoints: ["r1", "r2:eth1"]\n', "expected device:interface"),
        ('links:\n  - endpoints: ["r1:eth1:10.0.0.300/30", "r2:eth1"]\n', "is not an ip/prefix"),
        ("links: []\n", "'links' must be a non-empty list"),
        ("nsm: true\n", "'links' must be a non-empty list"),
        ('linkz:\n  - endpoints: ["r1:eth1", "r2:eth1"]\n', "unknown key 'linkz'"),
        ("links: [\n", "not valid YAML"),
        ('prefix: "my lab"\nlinks:\n  - endpoints: ["r1:eth1", "r2:eth1"]\n', "topology name 'my lab'"),
    ],
)
def test_a_bad_file_is_refused_naming_the_link_or_device(text: str, named: str) -> None:
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, Path("/labs/bad.yml"))
    message = str(caught.value)
    assert message.startswith("/labs/bad.yml:") and named in message, message
    assert "\n" not in message


def test_an_unreadable_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "missing.yml")
