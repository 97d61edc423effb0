"""Veth pairs across namespaces: same names on both ends, idempotence, collisions, deletion."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
from kernel_lab import Netns, link_names, run

from nsm_sdk.kernel import (
    End,
    InvalidArgument,
    LinkNameTaken,
    create_veth_pair,
    delete_link,
    inspect_link,
)
from nsm_sdk.kernel._netns import call_in_netns

pytestmark = pytest.mark.root


def host_links() -> set[str]:
    return link_names(run("ip", "-o", "link", "show").stdout)


def peer_of(ns: Netns, ifname: str) -> str:
    """`ip -o link show` text of one link, which names the peer's netns (`link-netns NAME`)."""
    return ns.ip("-o", "link", "show", "dev", ifname).stdout


def test_pair_with_the_same_name_on_both_ends_joins_the_two_namespaces(
    netns_a: Netns, netns_b: Netns
) -> None:
    create_veth_pair(End(netns_a.fd, "eth1"), End(netns_b.fd, "eth1"))

    shown_a, shown_b = netns_a.link_json("eth1"), netns_b.link_json("eth1")
    assert shown_a["linkinfo"]["info_kind"] == shown_b["linkinfo"]["info_kind"] == "veth"
    assert shown_a["link_index"] == shown_b["ifindex"]
    assert shown_b["link_index"] == shown_a["ifindex"]
    assert f"link-netns {netns_b.name}" in peer_of(netns_a, "eth1")
    assert f"link-netns {netns_a.name}" in peer_of(netns_b, "eth1")
    assert netns_a.link_names() == netns_b.link_names() == {"lo", "eth1"}


def test_creating_an_existing_pair_again_succeeds_and_keeps_the_links(netns_a: Netns, netns_b: Netns) -> None:
    a, b = End(netns_a.fd, "eth1"), End(netns_b.fd, "eth1")
    create_veth_pair(a, b)
    before = (inspect_link(netns_a.fd, "eth1").index, inspect_link(netns_b.fd, "eth1").index)

    create_veth_pair(a, b)
    create_veth_pair(b, a)

    assert (inspect_link(netns_a.fd, "eth1").index, inspect_link(netns_b.fd, "eth1").index) == before
    assert netns_a.link_names() == netns_b.link_names() == {"lo", "eth1"}


def test_name_held_by_another_link_raises_link_name_taken_and_creates_nothing(
    netns_a: Netns, netns_b: Netns
) -> None:
    netns_a.ip("link", "add", "eth1", "type", "veth", "peer", "name", "spare")

    with pytest.raises(LinkNameTaken) as raised:
        create_veth_pair(End(netns_a.fd, "eth1"), End(netns_b.fd, "eth1"))

    assert raised.value.errno == errno.EEXIST
    assert "eth1" in str(raised.value)
    assert netns_a.link_json("eth1")["link"] == "spare"
    assert netns_b.link_names() == {"lo"}


def test_veths_with_look_alike_peers_in_other_namespaces_are_not_taken_for_the_pair(
    make_netns: Callable[[], Netns],
) -> None:
    # a:eth1 <-> c:x and b:eth1 <-> d:y. Fresh namespaces number links alike, so each eth1 points at
    # the other's index: only the peer netns tells that they are not a pair.
    ns_a, ns_b, ns_c, ns_d = make_netns(), make_netns(), make_netns(), make_netns()
    ns_a.ip("link", "add", "eth1", "type", "veth", "peer", "name", "x", "netns", ns_c.name)
    ns_b.ip("link", "add", "eth1", "type", "veth", "peer", "name", "y", "netns", ns_d.name)
    shown_a, shown_b = ns_a.link_json("eth1"), ns_b.link_json("eth1")
    assert shown_a["link_index"] == shown_b["ifindex"] and shown_b["link_index"] == shown_a["ifindex"]

    with pytest.raises(LinkNameTaken):
        create_veth_pair(End(ns_a.fd, "eth1"), End(ns_b.fd, "eth1"))


def test_pair_is_never_created_in_the_callers_netns_even_if_the_name_is_taken_there(
    make_netns: Callable[[], Netns],
) -> None:
    caller, ns_a, ns_b = make_netns(), make_netns(), make_netns()
    caller.ip("link", "add", "eth1", "type", "veth", "peer", "name", "spare")
    host_before = host_links()

    # Run the library as a program whose own netns is `caller` (which already has an eth1).
    call_in_netns(caller.fd, lambda: create_veth_pair(End(ns_a.fd, "eth1"), End(ns_b.fd, "eth1")))

    assert caller.link_names() == {"lo", "eth1", "spare"}
    assert caller.link_json("eth1")["link"] == "spare"
    assert ns_a.link_names() == ns_b.link_names() == {"lo", "eth1"}
    assert host_links() == host_before


def test_pair_between_a_netns_and_our_own_puts_each_end_where_asked(
    make_netns: Callable[[], Netns],
) -> None:
    own, other = make_netns(), make_netns()

    def in_own_netns() -> None:
        create_veth_pair(End(None, "nsm-1"), End(other.fd, "eth1"))
        create_veth_pair(End(None, "nsm-1"), End(other.fd, "eth1"))

    call_in_netns(own.fd, in_own_netns)

    assert own.link_names() == {"lo", "nsm-1"}
    assert other.link_names() == {"lo", "eth1"}
    assert f"link-netns {other.name}" in peer_of(own, "nsm-1")


def test_pair_inside_one_netns_needs_two_names(netns_a: Netns) -> None:
    with pytest.raises(InvalidArgument):
        create_veth_pair(End(netns_a.fd, "eth1"), End(netns_a.fd, "eth1"))
    create_veth_pair(End(netns_a.fd, "eth1"), End(netns_a.fd, "eth2"))
    create_veth_pair(End(netns_a.fd, "eth1"), End(netns_a.fd, "eth2"))

    assert netns_a.link_names() == {"lo", "eth1", "eth2"}
    assert netns_a.link_json("eth1")["link"] == "eth2"


def test_delete_link_is_idempotent(netns_a: Netns, netns_b: Netns) -> None:
    create_veth_pair(End(netns_a.fd, "eth1"), End(netns_b.fd, "eth1"))

    assert delete_link(netns_a.fd, "eth1") is True
    assert delete_link(netns_a.fd, "eth1") is False
    assert netns_a.link_names() == {"lo"}


def test_deleting_one_end_removes_the_other(netns_a: Netns, netns_b: Netns) -> None:
    create_veth_pair(End(netns_a.fd, "eth1"), End(netns_b.fd, "eth21"))

    assert delete_link(netns_b.fd, "eth21") is True

    assert netns_a.link_names() == {"lo"}
    assert netns_b.link_names() == {"lo"}
    assert delete_link(netns_a.fd, "eth1") is False
