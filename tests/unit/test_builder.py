"""`nsm-topo random`: k8s-topo's builder, working on Python 3.11, deterministic per seed."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsm_topo.builder import MAX_ROUTERS, BuilderError, build, frr_config, spanning_tree, write
from nsm_topo.topology import load_topology
from nsm_topo.wiring import wire


def connected(count: int, edges: list[tuple[int, int]]) -> bool:
    reach, todo = {0}, [0]
    while todo:
        node = todo.pop()
        for a, b in edges:
            for here, there in ((a, b), (b, a)):
                if here == node and there not in reach:
                    reach.add(there)
                    todo.append(there)
    return len(reach) == count


@given(st.integers(min_value=2, max_value=40), st.integers(min_value=0, max_value=2**32))
@settings(max_examples=60, deadline=None)
def test_spanning_tree_connects_every_router_with_n_minus_one_links(count: int, seed: int) -> None:
    edges = spanning_tree(count, random.Random(seed))
    assert len(edges) == count - 1 and connected(count, edges)
    assert len({frozenset(e) for e in edges}) == count - 1


def test_spanning_trees_of_four_nodes_are_uniform() -> None:
    # Cayley: 16 labelled trees on 4 nodes; each should come up about 1/16 of the time
    counts: dict[frozenset[frozenset[int]], int] = {}
    rng = random.Random(7)
    runs = 16_000
    for _ in range(runs):
        tree = frozenset(frozenset(edge) for edge in spanning_tree(4, rng))
        counts[tree] = counts.get(tree, 0) + 1
    assert len(counts) == 16
    assert all(abs(seen - runs / 16) < 0.15 * runs / 16 for seen in counts.values()), sorted(counts.values())


def test_routers_are_named_after_rfc5737_loopbacks_round_robin_prefixes() -> None:
    network = build(258, 0, seed=1, prefixes=("qrtr", "frr"))
    names = [router.name for router in network.routers]
    assert names[:3] == ["qrtr-192-0-2-0", "frr-192-0-2-1", "qrtr-192-0-2-2"]
    assert network.routers[256].loopback == ipaddress.IPv4Address("198.51.100.0")
    assert names[257] == "frr-198-51-100-1"


def test_same_seed_same_files_other_seed_other_links(tmp_path: Path) -> None:
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for directory, seed in ((first, 42), (second, 42), (other, 43)):
        write(build(10, 3, seed=seed), directory)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 11
    assert all((first / f).read_text() == (second / f).read_text() for f in files)
    assert (first / "random.yml").read_text() != (other / "random.yml").read_text()


def test_written_topology_loads_wires_and_has_extra_links_without_duplicates(tmp_path: Path) -> None:
    path = write(build(10, 4, seed=3), tmp_path)
    topology = load_topology(path)
    assert len(topology.links) == 9 + 4 and len(topology.devices) == 10
    pairs = {frozenset((link.client.device, link.endpoint.device)) for link in topology.links}
    assert len(pairs) == 13
    assert all(link.client.device < link.endpoint.device for link in topology.links)  # sorted ends
    wiring = wire(topology)
    assert wiring.service_name == "random"
    for device in topology.devices:
        config = topology.config_file(device)
        assert config is not None and f"hostname {device}" in config.read_text()


def test_frr_config_runs_ospf_on_every_interface_and_advertises_the_loopback() -> None:
    router = build(3, 0, seed=5).routers[0]
    text = frr_config(router)
    assert f"ip address {router.loopback}/32" in text
    assert "network 0.0.0.0/0 area 0" in text and f"ospf router-id {router.loopback}" in text
    for interface in router.interfaces:
        assert f"interface {interface}\n ip ospf network point-to-point" in text
    assert "ip address 10." not in text  # link addresses come from NSM


@pytest.mark.parametrize(
    ("count", "extra", "message"),
    [
        (1, 0, "at least 2"),
        (MAX_ROUTERS + 1, 0, "at most 768"),
        (3, 2, "room for 1 more"),
        (4, -1, "negative"),
    ],
)
def test_impossible_networks_are_refused(count: int, extra: int, message: str) -> None:
    with pytest.raises(BuilderError, match=message):
        build(count, extra)


def test_router_configs_drop_the_lsa_and_spf_hold_downs_for_fast_lab_convergence() -> None:
    network = build(3, 0, seed=1)
    for router in network.routers:
        text = frr_config(router)
        for line in (
            "timers throttle lsa all 0",
            "timers lsa min-arrival 0",
            "timers throttle spf 0 50 1000",
        ):
            assert f"\n {line}\n" in text
