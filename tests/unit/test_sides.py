"""Which addresses and routes each side of a kernel link gets (protocol doc §9).

src = the client (NSC) side, dst = the endpoint (NSE) side.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from nsm_sdk._proto.networkservice.connectioncontext_pb2 import IPContext
from nsm_sdk.protocol.ipam import NsmP2PAllocator, SeedP2PAllocator, apply_to_ip_context
from nsm_sdk.protocol.sides import Side, SideConfig, SideRoute, side_config


def context(src: list[str], dst: list[str], src_routes: Sequence[tuple[str, str]] = (),
            dst_routes: Sequence[tuple[str, str]] = ()) -> IPContext:
    ctx = IPContext(src_ip_addrs=src, dst_ip_addrs=dst)
    for prefix, via in src_routes:
        ctx.src_routes.add(prefix=prefix, nextHop=via)
    for prefix, via in dst_routes:
        ctx.dst_routes.add(prefix=prefix, nextHop=via)
    return ctx


def test_seed_slash_30_needs_no_routes_on_either_side() -> None:
    ctx = context(["10.0.0.1/30"], ["10.0.0.2/30"])
    assert side_config(ctx, "client") == SideConfig(addresses=("10.0.0.1/30",), routes=())
    assert side_config(ctx, "endpoint") == SideConfig(addresses=("10.0.0.2/30",), routes=())


def test_nsm_slash_32_pair_gets_one_on_link_route_to_the_peer_per_side() -> None:
    """The Go NSE default (§8.4): the IPAM routes name the peer address, which is already on-link."""
    ctx = context(["169.254.0.1/32"], ["169.254.0.0/32"],
                  src_routes=[("169.254.0.0/32", "")], dst_routes=[("169.254.0.1/32", "")])
    assert side_config(ctx, "client") == SideConfig(
        addresses=("169.254.0.1/32",), routes=(SideRoute("169.254.0.0/32"),))
    assert side_config(ctx, "endpoint") == SideConfig(
        addresses=("169.254.0.0/32",), routes=(SideRoute("169.254.0.1/32"),))


def test_slash_32_pair_without_ipam_routes_still_reaches_the_peer_on_link() -> None:
    ctx = context(["169.254.0.1/32"], ["169.254.0.0/32"])
    assert side_config(ctx, "client").routes == (SideRoute("169.254.0.0/32"),)
    assert side_config(ctx, "endpoint").routes == (SideRoute("169.254.0.1/32"),)


def test_ipv6_pair_gets_slash_128_on_link_routes() -> None:
    ctx = context(["fd00::1/128"], ["fd00::/128"],
                  src_routes=[("fd00::/128", "")], dst_routes=[("fd00::1/128", "")])
    assert side_config(ctx, "client") == SideConfig(
        addresses=("fd00::1/128",), routes=(SideRoute("fd00::/128"),))
    assert side_config(ctx, "endpoint") == SideConfig(
        addresses=("fd00::/128",), routes=(SideRoute("fd00::1/128"),))


def test_ipv6_seed_slash_126_needs_no_routes() -> None:
    ctx = context(["fd00::1/126"], ["fd00::2/126"])
    assert side_config(ctx, "client").routes == ()
    assert side_config(ctx, "endpoint").routes == ()


def test_route_without_next_hop_goes_via_the_first_peer_address_of_its_family() -> None:
    ctx = context(["10.0.0.1/30", "fd00::1/126"], ["10.0.0.2/30", "fd00::2/126"],
                  src_routes=[("192.168.0.0/16", ""), ("fd10::/64", "")],
                  dst_routes=[("172.16.0.0/12", "")])
    assert side_config(ctx, "client").routes == (
        SideRoute("192.168.0.0/16", via="10.0.0.2"), SideRoute("fd10::/64", via="fd00::2"))
    assert side_config(ctx, "endpoint").routes == (SideRoute("172.16.0.0/12", via="10.0.0.1"),)


def test_route_with_next_hop_keeps_it() -> None:
    ctx = context(["10.0.0.1/30"], ["10.0.0.2/30"], src_routes=[("192.168.0.0/16", "10.0.0.3")])
    assert side_config(ctx, "client").routes == (SideRoute("192.168.0.0/16", via="10.0.0.3"),)


def test_route_without_next_hop_and_no_peer_of_its_family_is_on_link() -> None:
    ctx = context(["10.0.0.1/30"], ["10.0.0.2/30"], src_routes=[("fd10::/64", "")])
    assert side_config(ctx, "client").routes == (SideRoute("fd10::/64"),)


def test_route_prefix_with_host_bits_is_normalised() -> None:
    ctx = context(["10.0.0.1/30"], ["10.0.0.2/30"], src_routes=[("192.168.1.7/16", "")])
    assert side_config(ctx, "client").routes == (SideRoute("192.168.0.0/16", via="10.0.0.2"),)


def test_routes_of_the_other_side_are_not_used() -> None:
    ctx = context(["10.0.0.1/30"], ["10.0.0.2/30"], src_routes=[("192.168.0.0/16", "")])
    assert side_config(ctx, "endpoint").routes == ()


def test_empty_context_gives_nothing() -> None:
    assert side_config(IPContext(), "client") == SideConfig(addresses=(), routes=())


def test_every_address_of_own_side_is_kept_in_order() -> None:
    ctx = context(["10.0.0.1/30", "fd00::1/126"], ["10.0.0.2/30"])
    assert side_config(ctx, "client").addresses == ("10.0.0.1/30", "fd00::1/126")


@settings(deadline=None)
@given(connections=st.integers(min_value=1, max_value=6), v6=st.booleans())
def test_every_ipam_allocation_lets_each_side_reach_the_other_and_nothing_twice(
    connections: int, v6: bool
) -> None:
    """Whatever either allocator hands out: each side has the peer's address covered by one of its own
    prefixes or by exactly one route, and no route appears twice."""
    pool = "fd00::/120" if v6 else "10.10.0.0/24"
    for allocator in (SeedP2PAllocator(pool), NsmP2PAllocator([[pool]])):
        for n in range(connections):
            ctx = IPContext()
            apply_to_ip_context(ctx, allocator.request(f"conn-{n}"))
            peers: tuple[tuple[Side, str], ...] = (
                ("client", ctx.dst_ip_addrs[0]), ("endpoint", ctx.src_ip_addrs[0]))
            for side, peer in peers:
                config = side_config(ctx, side)
                peer_ip = ipaddress.ip_interface(peer).ip
                covered = any(peer_ip in ipaddress.ip_interface(a).network for a in config.addresses)
                routed = [r for r in config.routes if peer_ip in ipaddress.ip_network(r.prefix)]
                assert covered or (len(routed) == 1 and routed[0].via is None)
                assert len(set(config.routes)) == len(config.routes)
