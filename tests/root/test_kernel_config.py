"""Link configuration: addresses (/30, /126, /32 pairs), routes, MTU, alias, IPv6, reachability."""

from __future__ import annotations

import errno

import pytest
from kernel_lab import Netns

from nsm_sdk.kernel import (
    End,
    LinkNotFound,
    Route,
    configure_link,
    create_veth_pair,
    inspect_link,
    operational,
    verify_link,
    wait_for_link,
)

pytestmark = pytest.mark.root


def wait_until_operational(*namespaces: Netns) -> None:
    """Carrier changes reach the kernel's IPv6 code asynchronously; traffic needs operstate UP."""
    for ns in namespaces:
        wait_for_link(ns.fd, "eth1", timeout=15, until=operational)


@pytest.fixture
def pair(netns_a: Netns, netns_b: Netns) -> tuple[Netns, Netns]:
    """netns_a:eth1 <-> netns_b:eth1, not configured."""
    create_veth_pair(End(netns_a.fd, "eth1"), End(netns_b.fd, "eth1"))
    return netns_a, netns_b


def test_v4_slash30_and_v6_slash126_addresses_let_the_ends_ping_each_other(pair: tuple[Netns, Netns]) -> None:
    client, server = pair
    configure_link(client.fd, "eth1", ["10.60.0.1/30", "fd00:60::1/126"])
    configure_link(server.fd, "eth1", ["10.60.0.2/30", "fd00:60::2/126"])
    wait_until_operational(client, server)

    assert client.pings("10.60.0.2")
    assert client.pings("fd00:60::2")
    assert server.pings("10.60.0.1")
    assert server.pings("fd00:60::1")
    assert inspect_link(client.fd, "eth1").addresses == {"10.60.0.1/30", "fd00:60::1/126"}


def test_slash32_pairs_with_on_link_routes_reach_each_other_and_gateway_routes_use_the_peer(
    pair: tuple[Netns, Netns],
) -> None:
    # NSM v1 defaults (protocol §9): NSC 169.254.0.1/32 + route to 169.254.0.0/32, NSE the mirror.
    client, server = pair
    configure_link(
        client.fd,
        "eth1",
        ["169.254.0.1/32"],
        # Gateway route listed first: the library must add the on-link route to the next hop before it.
        [Route("10.99.0.0/24", "169.254.0.0"), Route("169.254.0.0/32")],
    )
    configure_link(server.fd, "eth1", ["169.254.0.0/32"], [Route("169.254.0.1/32")])
    wait_until_operational(client, server)

    assert client.pings("169.254.0.0")
    assert server.pings("169.254.0.1")
    shown = client.ip("route", "show", "dev", "eth1").stdout
    assert "169.254.0.0 proto static scope link" in shown
    assert "10.99.0.0/24 via 169.254.0.0" in shown
    assert inspect_link(client.fd, "eth1").routes >= {
        Route("169.254.0.0/32"),
        Route("10.99.0.0/24", "169.254.0.0"),
    }


def test_v6_slash128_pairs_with_on_link_and_gateway_routes_reach_each_other(
    pair: tuple[Netns, Netns],
) -> None:
    client, server = pair
    configure_link(client.fd, "eth1", ["fd00::1/128"], [Route("fd00:99::/64", "fd00::"), Route("fd00::/128")])
    configure_link(server.fd, "eth1", ["fd00::/128"], [Route("fd00::1/128")])
    wait_until_operational(client, server)

    assert client.pings("fd00::")
    assert "fd00:99::/64 via fd00::" in client.ip("-6", "route", "show", "dev", "eth1").stdout


def test_configure_link_sets_link_up_with_mtu_and_alias(pair: tuple[Netns, Netns]) -> None:
    client, _ = pair
    index = configure_link(client.fd, "eth1", mtu=1400, alias="server-0f3c")

    shown = client.link_json("eth1")
    assert shown["ifindex"] == index
    assert "UP" in shown["flags"]
    assert shown["mtu"] == 1400
    assert shown["ifalias"] == "server-0f3c"


def test_configuring_twice_changes_nothing(pair: tuple[Netns, Netns]) -> None:
    client, _ = pair
    addresses = ["10.60.0.1/30", "fd00:60::1/126", "169.254.0.1/32"]
    routes = [
        Route("169.254.0.0/32"),
        Route("10.99.0.0/24", "10.60.0.2"),
        Route("fd00:99::/64", "fd00:60::2"),
    ]
    configure_link(client.fd, "eth1", addresses, routes, mtu=1450, alias="server-x")
    first = inspect_link(client.fd, "eth1")

    configure_link(client.fd, "eth1", addresses, routes, mtu=1450, alias="server-x")

    assert inspect_link(client.fd, "eth1") == first
    assert verify_link(client.fd, "eth1", addresses, routes, mtu=1450) == []


def test_ipv6_addresses_work_on_a_link_whose_ipv6_was_disabled(pair: tuple[Netns, Netns]) -> None:
    client, _ = pair
    client.exec("sysctl", "-w", "net.ipv6.conf.eth1.disable_ipv6=1")

    configure_link(client.fd, "eth1", ["fd00:60::1/126"])

    assert client.exec("sysctl", "-n", "net.ipv6.conf.eth1.disable_ipv6").stdout.strip() == "0"
    assert "fd00:60::1/126" in inspect_link(client.fd, "eth1").addresses


def test_ipv6_sysctl_is_changed_only_in_the_target_netns(pair: tuple[Netns, Netns]) -> None:
    client, server = pair
    server.exec("sysctl", "-w", "net.ipv6.conf.eth1.disable_ipv6=1")

    configure_link(client.fd, "eth1", ["fd00:60::1/126"])

    assert server.exec("sysctl", "-n", "net.ipv6.conf.eth1.disable_ipv6").stdout.strip() == "1"


def test_configuring_a_missing_link_raises_link_not_found(netns_a: Netns) -> None:
    with pytest.raises(LinkNotFound) as raised:
        configure_link(netns_a.fd, "eth9", ["10.0.0.1/30"])
    assert raised.value.errno == errno.ENODEV
