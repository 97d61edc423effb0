"""Names, addresses, routes and link checks as pure values (no root needed, except the kernel oracle).

The pure tests here would sit in tests/unit; they live next to the kernel tests they back up.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Iterator

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from kernel_lab import run

from nsm_sdk.kernel import (
    End,
    InvalidArgument,
    LinkState,
    Route,
    canonical_interface,
    check_ifname,
    create_veth_pair,
    delete_link,
    ifname_problem,
    link_problems,
)

names = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF), min_size=0, max_size=20)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)


@given(names)
def test_accepted_names_are_short_printable_ascii_without_slash_colon_or_percent(name: str) -> None:
    if ifname_problem(name) is None:
        assert 1 <= len(name) <= 15
        assert all("!" <= ch <= "~" for ch in name)
        assert not set(name) & set("/:%") and name not in (".", "..")
    else:
        with pytest.raises(InvalidArgument):
            check_ifname(name)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a:1", "eth%d", "a b", "x" * 16, "ü"])
def test_names_the_kernel_would_refuse_are_rejected(name: str) -> None:
    assert ifname_problem(name) is not None


@given(st.one_of(ipv4, ipv6), st.integers(min_value=0, max_value=128))
def test_route_prefix_is_normalised_to_its_network(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, length: int
) -> None:
    assume(length <= address.max_prefixlen)
    route = Route(f"{address}/{length}")
    network = ipaddress.ip_network(route.prefix)
    assert address in network and network.prefixlen == length
    assert Route(route.prefix, route.via) == route
    assert hash(Route(f"{address}/{length}")) == hash(route)


@given(ipv6, ipv6)
def test_route_next_hop_is_compressed(prefix: ipaddress.IPv6Address, via: ipaddress.IPv6Address) -> None:
    route = Route(f"{prefix.exploded}/64", via.exploded)
    assert route.via == str(via)
    assert str(route) == f"{ipaddress.ip_network(f'{prefix}/64', strict=False)} via {via}"


@pytest.mark.parametrize(
    ("prefix", "via"),
    [("10.0.0.0/33", None), ("nonsense", None), ("10.0.0.0/8", "fd00::1"), ("::/0", "10.0.0.1")],
)
def test_malformed_routes_raise_invalid_argument(prefix: str, via: str | None) -> None:
    with pytest.raises(InvalidArgument):
        Route(prefix, via)


@given(st.one_of(ipv4, ipv6), st.integers(min_value=0, max_value=128))
def test_canonical_interface_is_stable(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, length: int
) -> None:
    assume(length <= address.max_prefixlen)
    text = canonical_interface(f"{address.exploded}/{length}")
    assert text == f"{address}/{length}"
    assert canonical_interface(text) == text


def state_with(addresses: set[str], routes: set[Route], up: bool = True) -> LinkState:
    return LinkState(
        ifname="eth1",
        index=2,
        up=up,
        carrier=up,
        operstate="UP" if up else "DOWN",
        mtu=1500,
        alias=None,
        kind="veth",
        peer_index=2,
        peer_netnsid=0,
        addresses=frozenset(addresses),
        routes=frozenset(routes),
    )


interfaces = st.builds(lambda a, n: f"10.{a}.0.1/{n}", st.integers(0, 255), st.integers(8, 32))
routes = st.builds(lambda a: Route(f"10.{a}.0.0/16"), st.integers(0, 255))


@given(st.sets(interfaces, max_size=4), st.sets(interfaces, max_size=4), st.sets(routes, max_size=3))
def test_problems_are_exactly_the_missing_addresses_and_routes(
    present: set[str], expected: set[str], expected_routes: set[Route]
) -> None:
    state = state_with(present, set())
    problems = link_problems(state, "eth1", sorted(expected), sorted(expected_routes, key=str))
    assert problems == [f"link eth1 lacks address {a}" for a in sorted(expected - present)] + [
        f"link eth1 lacks route {r}" for r in sorted(expected_routes, key=str)
    ]


def test_problems_of_a_down_or_missing_link() -> None:
    assert link_problems(None, "eth1") == ["link eth1 not found"]
    assert link_problems(state_with(set(), set(), up=False), "eth1", mtu=1400) == [
        "link eth1 is down",
        "link eth1 has mtu 1500, expected 1400",
    ]


@pytest.fixture(scope="module")
def oracle_netns() -> Iterator[int]:
    name = f"t-{secrets.token_hex(5)}"
    run("ip", "netns", "add", name)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)
        run("ip", "netns", "delete", name)


@pytest.mark.root
@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=15))
def test_every_name_we_accept_the_kernel_accepts(oracle_netns: int, name: str) -> None:
    assume(ifname_problem(name) is None and name != "peer0")
    create_veth_pair(End(oracle_netns, name), End(oracle_netns, "peer0"))
    assert delete_link(oracle_netns, name)
