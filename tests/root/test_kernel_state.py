"""Inspecting, verifying, waiting for and renaming links, as the sidecars do inside their own netns."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator

import pytest
from kernel_lab import Netns

from nsm_sdk.kernel import (
    End,
    LinkNameTaken,
    LinkNotFound,
    LinkState,
    LinkWaitCancelled,
    LinkWaitTimeout,
    Route,
    configure_link,
    create_veth_pair,
    inspect_link,
    read_link_states,
    rename_link,
    rtnl,
    verify_link,
    wait_for_link,
)
from nsm_sdk.kernel._netns import call_in_netns
from nsm_sdk.kernel.netlink import netlink_in

RTM_GETADDR, RTM_GETROUTE = 22, 26

pytestmark = pytest.mark.root


@pytest.fixture
def pair(netns_a: Netns, netns_b: Netns) -> tuple[Netns, Netns]:
    """netns_a:eth1 <-> netns_b:eth21, not configured."""
    create_veth_pair(End(netns_a.fd, "eth1"), End(netns_b.fd, "eth21"))
    return netns_a, netns_b


def test_inspect_link_reports_addresses_routes_and_the_peer(pair: tuple[Netns, Netns]) -> None:
    client, server = pair
    configure_link(
        client.fd, "eth1", ["10.60.0.1/30", "fd00:60::1/126"], [Route("10.99.0.0/24", "10.60.0.2")], 1400, "x"
    )

    state = inspect_link(client.fd, "eth1")

    server_index = server.link_json("eth21")["ifindex"]
    assert (state.ifname, state.up, state.mtu, state.alias, state.kind) == ("eth1", True, 1400, "x", "veth")
    assert state.index == client.link_json("eth1")["ifindex"]
    assert state.peer_index == server_index
    assert state.peer_netnsid == client.link_json("eth1")["link_netnsid"]
    assert state.addresses == {"10.60.0.1/30", "fd00:60::1/126"}
    # The kernel's own prefix routes are reported too.
    assert state.routes == {Route("10.60.0.0/30"), Route("fd00:60::/126"), Route("10.99.0.0/24", "10.60.0.2")}


def test_verify_link_is_empty_when_everything_expected_is_there(pair: tuple[Netns, Netns]) -> None:
    client, _ = pair
    configure_link(client.fd, "eth1", ["169.254.0.1/32"], [Route("169.254.0.0/32")], mtu=1450)

    assert verify_link(client.fd, "eth1", ["169.254.0.1/32"], [Route("169.254.0.0/32")], mtu=1450) == []


def test_verify_link_reports_a_missing_address_and_route(pair: tuple[Netns, Netns]) -> None:
    client, _ = pair
    configure_link(client.fd, "eth1", ["10.60.0.1/30"])

    problems = verify_link(
        client.fd, "eth1", ["10.60.0.1/30", "fd00:60::1/126"], [Route("10.99.0.0/24", "10.60.0.2")]
    )

    assert problems == [
        "link eth1 lacks address fd00:60::1/126",
        "link eth1 lacks route 10.99.0.0/24 via 10.60.0.2",
    ]


def test_verify_link_reports_a_down_or_missing_link(pair: tuple[Netns, Netns]) -> None:
    client, _ = pair

    assert verify_link(client.fd, "eth1") == ["link eth1 is down"]
    assert verify_link(client.fd, "eth9") == ["link eth9 not found"]


def test_inspecting_a_missing_link_raises_link_not_found(netns_a: Netns) -> None:
    with pytest.raises(LinkNotFound):
        inspect_link(netns_a.fd, "eth1")


def test_wait_for_link_returns_a_link_that_is_already_there(pair: tuple[Netns, Netns]) -> None:
    client, _ = pair
    assert wait_for_link(client.fd, "eth1", timeout=5).ifname == "eth1"


@pytest.fixture
def creator(netns_a: Netns, netns_b: Netns) -> Iterator[threading.Event]:
    """Creates netns_a:eth1 <-> netns_b:eth21 in another thread once the event is set."""
    go = threading.Event()

    def create_when_told() -> None:
        if go.wait(timeout=30):
            create_veth_pair(End(netns_a.fd, "eth1"), End(netns_b.fd, "eth21"))

    thread = threading.Thread(target=create_when_told)
    thread.start()
    try:
        yield go
    finally:
        go.set()
        thread.join()


def test_wait_for_link_sees_a_link_created_while_waiting(netns_a: Netns, creator: threading.Event) -> None:
    def appear_on_first_poll(state: LinkState) -> bool:
        creator.set()  # called once per link seen: lo, on the first poll
        return state.ifname == "eth1"

    state = wait_for_link(netns_a.fd, None, timeout=30, until=appear_on_first_poll, interval=0.01)

    assert state.ifname == "eth1"
    assert state.kind == "veth"


def test_wait_for_link_gives_up_with_a_temporary_timeout(netns_a: Netns) -> None:
    with pytest.raises(LinkWaitTimeout) as raised:
        wait_for_link(netns_a.fd, "eth1", timeout=0.2, interval=0.05)
    assert raised.value.errno == errno.ETIMEDOUT
    assert raised.value.temporary


def test_wait_for_link_stops_when_the_stop_event_is_set(netns_a: Netns) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(LinkWaitCancelled):
        wait_for_link(netns_a.fd, "eth1", timeout=3600, stop=stop)


def test_rename_keeps_an_up_link_up_with_its_index_and_addresses(pair: tuple[Netns, Netns]) -> None:
    client, _ = pair
    index = configure_link(client.fd, "eth1", ["10.60.0.1/30"])

    assert rename_link(client.fd, "eth1", "nsm-1") == index

    state = inspect_link(client.fd, "nsm-1")
    assert (state.index, state.up, state.addresses) == (index, True, frozenset({"10.60.0.1/30"}))
    assert client.link_names() == {"lo", "nsm-1"}


def test_rename_keeps_a_down_link_down(pair: tuple[Netns, Netns]) -> None:
    client, _ = pair
    rename_link(client.fd, "eth1", "nsm-1")
    assert inspect_link(client.fd, "nsm-1").up is False


def test_rename_is_idempotent(pair: tuple[Netns, Netns]) -> None:
    client, _ = pair
    index = rename_link(client.fd, "eth1", "nsm-1")
    assert rename_link(client.fd, "eth1", "nsm-1") == index
    assert rename_link(client.fd, "nsm-1", "nsm-1") == index


def test_rename_onto_a_taken_name_raises_and_leaves_both_links(pair: tuple[Netns, Netns]) -> None:
    client, _ = pair
    client.ip("link", "add", "nsm-1", "type", "veth", "peer", "name", "spare")
    with pytest.raises(LinkNameTaken):
        rename_link(client.fd, "eth1", "nsm-1")
    assert client.link_names() == {"lo", "eth1", "nsm-1", "spare"}


def test_rename_of_a_missing_link_raises_link_not_found(netns_a: Netns) -> None:
    with pytest.raises(LinkNotFound):
        rename_link(netns_a.fd, "eth1", "nsm-1")


def test_sidecar_in_its_own_netns_uses_none_for_it(pair: tuple[Netns, Netns]) -> None:
    _, server = pair

    def as_sidecar() -> list[str]:
        configure_link(None, "eth21", ["10.60.0.2/30"])
        rename_link(None, "eth21", "icmp-respo-1")
        return verify_link(None, "icmp-respo-1", ["10.60.0.2/30"])

    assert call_in_netns(server.fd, as_sidecar) == []
    assert server.link_names() == {"lo", "icmp-respo-1"}


def test_reading_one_link_among_many_gets_only_its_own_objects_from_the_kernel(
    netns_a: Netns, netns_b: Netns, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(1, 9):
        create_veth_pair(End(netns_a.fd, f"eth{i}"), End(netns_b.fd, f"eth{i}"))
        addresses = [f"10.70.{i}.1/30", f"fd00:70:{i}::1/64"]
        configure_link(netns_a.fd, f"eth{i}", addresses, [Route(f"10.99.{i}.0/24")])
    received: list[tuple[int, bytes]] = []
    with netlink_in(netns_a.fd) as ipr:
        everyone = {state.ifname: state for state in read_link_states(ipr)}
        dump_from_kernel = ipr._dump

        def recording(msg_type: int, body: bytes) -> list[bytes]:
            replies = dump_from_kernel(msg_type, body)
            received.extend((msg_type, reply) for reply in replies)
            return replies

        monkeypatch.setattr(ipr, "_dump", recording)
        (eth5,) = read_link_states(ipr, "eth5")

    assert eth5 == everyone["eth5"]
    assert eth5.addresses == {"10.70.5.1/30", "fd00:70:5::1/64"}
    assert Route("10.99.5.0/24") in eth5.routes
    # Kernel-side filtering: what the kernel sent were eth5's addresses (IPv4, IPv6, link-local) and its
    # main-table routes only, not the other seven links' (a cost that does not grow with the namespace).
    addresses = [rtnl._address(body) for kind, body in received if kind == RTM_GETADDR]
    routes = [rtnl._route(body) for kind, body in received if kind == RTM_GETROUTE]
    assert len(addresses) + len(routes) == len(received)
    assert addresses and {address.index for address in addresses} == {eth5.index}
    assert routes and {route.oif for route in routes} == {eth5.index}
