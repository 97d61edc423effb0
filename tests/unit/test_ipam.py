"""Point-to-point IPAM: seed /30 mode (legacy-contract.md §2.1) and NSM point2pointipam (protocol §8.4)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsm_sdk._proto.networkservice.connectioncontext_pb2 import IPContext
from nsm_sdk.protocol.errors import ConfigError, TemporaryError
from nsm_sdk.protocol.ipam import (
    NsmP2PAllocator,
    P2PAddresses,
    PoolExhausted,
    SeedP2PAllocator,
    apply_to_ip_context,
    parse_excluded,
    remove_from_ip_context,
)

# --- seed /30 mode -------------------------------------------------------------------------------


def test_reserved_links_get_their_own_block_in_any_request_order() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24", reserved=("net-0", "net-3", "net-7"))
    assert pool.request("c1", key="net-7")[0].src_ip == "10.60.1.9/30"
    assert pool.request("c2", key="net-0")[0].src_ip == "10.60.1.1/30"
    assert pool.request("c3", key=None)[0].src_ip == "10.60.1.13/30", "unreserved: after the reserved blocks"
    assert pool.request("c4", key="net-3")[0].src_ip == "10.60.1.5/30"


def test_a_re_requested_link_gets_its_reserved_block_back_after_a_close() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24", reserved=("net-0", "net-1"))
    first = pool.request("old", key="net-1")
    pool.request("other", key="net-0")
    pool.release("old")
    assert pool.request("new", key="net-1") == first


def test_a_reserved_block_still_held_by_a_stale_connection_falls_back_to_a_free_block() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24", reserved=("net-0",))
    pool.request("stale", key="net-0")
    assert pool.request("fresh", key="net-0")[0].src_ip == "10.60.1.5/30"


def test_an_excluded_reserved_block_is_not_given() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24", reserved=("net-0", "net-1"))
    assert pool.request("c", excluded=["10.60.1.0/30"], key="net-0")[0].src_ip == "10.60.1.9/30"


@given(st.permutations(range(8)))
def test_reserved_addresses_do_not_depend_on_the_order_links_arrive_in(order: list[int]) -> None:
    keys = tuple(f"net-{i}" for i in range(8))
    pool = SeedP2PAllocator("10.60.1.0/26", reserved=keys)
    got = {keys[i]: pool.request(f"conn-{i}", key=keys[i])[0].src_ip for i in order}
    assert got == {key: f"10.60.1.{4 * k + 1}/30" for k, key in enumerate(keys)}


def test_seed_first_link_gets_network_plus_one_and_two_with_the_block_prefix() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    assert pool.allocate("c1") == P2PAddresses("10.60.1.1/30", "10.60.1.2/30")


def test_seed_allocates_sequential_blocks() -> None:
    pool = SeedP2PAllocator(ipaddress.ip_network("10.60.1.0/24"))
    results = [pool.allocate(f"c{n}") for n in range(3)]
    assert [r.src_ip for r in results] == ["10.60.1.1/30", "10.60.1.5/30", "10.60.1.9/30"]
    assert [r.dst_ip for r in results] == ["10.60.1.2/30", "10.60.1.6/30", "10.60.1.10/30"]


def test_seed_results_need_no_routes() -> None:
    addrs = SeedP2PAllocator("10.60.1.0/24").allocate("c1")
    assert (addrs.src_routes, addrs.dst_routes) == ((), ())


def test_seed_allocation_is_idempotent_per_id() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    assert pool.allocate("c1") == pool.allocate("c1")
    assert pool.allocate("c2").src_ip == "10.60.1.5/30"


def test_seed_release_frees_the_block_for_the_next_id() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    pool.allocate("c1")
    pool.allocate("c2")
    assert pool.release("c1") == (P2PAddresses("10.60.1.1/30", "10.60.1.2/30"),)
    assert pool.held("c1") == ()
    assert pool.allocate("c3").src_ip == "10.60.1.1/30"
    assert pool.release("unknown") == ()


def test_seed_ipv6_uses_126_blocks() -> None:
    pool = SeedP2PAllocator("fd00::/64")
    assert pool.allocate("c1") == P2PAddresses("fd00::1/126", "fd00::2/126")
    assert pool.allocate("c2") == P2PAddresses("fd00::5/126", "fd00::6/126")


def test_seed_skips_blocks_overlapping_excluded_prefixes() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    assert pool.allocate("c1", excluded=["10.60.1.0/29", "10.60.1.9/32"]).src_ip == "10.60.1.13/30"


def test_seed_ignores_excluded_prefixes_of_the_other_family_and_garbage() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    assert pool.allocate("c1", excluded=["::/0", "not-a-prefix"]).src_ip == "10.60.1.1/30"


def test_seed_exhausted_pool_raises_a_temporary_error() -> None:
    pool = SeedP2PAllocator("10.60.1.0/29")
    pool.allocate("c1")
    pool.allocate("c2")
    with pytest.raises(PoolExhausted) as raised:
        pool.allocate("c3")
    assert isinstance(raised.value, TemporaryError)


def test_seed_excluded_prefix_covering_the_pool_exhausts_it() -> None:
    with pytest.raises(PoolExhausted):
        SeedP2PAllocator("10.60.1.0/24").allocate("c1", excluded=["10.0.0.0/8"])


@pytest.mark.parametrize("pool", ["10.60.1.0/31", "10.60.1.1/32", "fd00::/127", "nonsense"])
def test_seed_pool_smaller_than_a_block_or_invalid_is_a_config_error(pool: str) -> None:
    with pytest.raises(ConfigError, match="IP_ADDRESS"):
        SeedP2PAllocator(pool)


def test_seed_recover_reclaims_a_free_valid_pair() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    assert pool.recover("c1", "10.60.1.9/30", "10.60.1.10/30") == P2PAddresses(
        "10.60.1.9/30", "10.60.1.10/30"
    )
    assert pool.held("c1") == (P2PAddresses("10.60.1.9/30", "10.60.1.10/30"),)
    assert pool.allocate("c2").src_ip == "10.60.1.1/30"


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("10.60.1.10/30", "10.60.1.9/30"),  # swapped sides
        ("10.60.1.9/30", "10.60.1.14/30"),  # two blocks
        ("10.60.1.9/24", "10.60.1.10/24"),  # wrong prefix length
        ("10.61.1.9/30", "10.61.1.10/30"),  # outside the pool
        ("10.60.1.8/30", "10.60.1.9/30"),  # network address
        ("garbage", "10.60.1.10/30"),
        ("fd00::1/126", "fd00::2/126"),
    ],
)
def test_seed_recover_refuses_anything_but_a_block_pair_of_the_pool(src: str, dst: str) -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    assert pool.recover("c1", src, dst) is None
    assert pool.held("c1") == ()


def test_seed_recover_refuses_a_block_held_by_another_id() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    pool.allocate("c1")
    assert pool.recover("c2", "10.60.1.1/30", "10.60.1.2/30") is None


def test_seed_recover_refuses_an_excluded_block() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    assert pool.recover("c1", "10.60.1.1/30", "10.60.1.2/30", excluded=["10.60.1.2/32"]) is None


def test_seed_recover_is_idempotent_and_leaves_another_held_block_alone() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    first = pool.recover("c1", "10.60.1.5/30", "10.60.1.6/30")
    assert pool.recover("c1", "10.60.1.5/30", "10.60.1.6/30") == first
    assert pool.recover("c1", "10.60.1.9/30", "10.60.1.10/30") is None
    assert pool.held("c1") == (first,)


def test_seed_request_reuses_held_then_recovers_then_allocates() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    carried = (["10.60.1.21/30"], ["10.60.1.22/30"])
    assert pool.request("c1", *carried) == (P2PAddresses("10.60.1.21/30", "10.60.1.22/30"),)
    assert pool.request("c1", ["10.60.1.1/30"], ["10.60.1.2/30"])[0].src_ip == "10.60.1.21/30"
    assert pool.request("c2", *carried)[0].src_ip == "10.60.1.1/30"


def test_seed_request_moves_a_held_block_that_became_excluded() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    pool.allocate("c1")
    moved = pool.request("c1", ["10.60.1.1/30"], ["10.60.1.2/30"], excluded=["10.60.1.0/30"])
    assert moved == (P2PAddresses("10.60.1.5/30", "10.60.1.6/30"),)


# --- NSM point2pointipam -------------------------------------------------------------------------


def nsm_pair(src: str, dst: str) -> P2PAddresses:
    return P2PAddresses(src_ip=src, dst_ip=dst, src_routes=(dst,), dst_routes=(src,))


def test_nsm_first_address_goes_to_the_endpoint_second_to_the_client() -> None:
    pool = NsmP2PAllocator([["169.254.0.0/16"]])
    assert pool.allocate("c1") == (nsm_pair("169.254.0.1/32", "169.254.0.0/32"),)
    assert pool.allocate("c2") == (nsm_pair("169.254.0.3/32", "169.254.0.2/32"),)


def test_nsm_slash31_serves_exactly_one_connection() -> None:
    pool = NsmP2PAllocator([["172.16.1.100/31"]])
    assert pool.allocate("c1") == (nsm_pair("172.16.1.101/32", "172.16.1.100/32"),)
    with pytest.raises(PoolExhausted):
        pool.allocate("c2")


def test_nsm_moves_to_the_next_prefix_of_a_group_when_one_is_full() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/31", "10.1.0.0/24"]])
    pool.allocate("c1")
    assert pool.allocate("c2") == (nsm_pair("10.1.0.1/32", "10.1.0.0/32"),)


def test_nsm_groups_give_one_pair_each_with_128_for_ipv6() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/24"], ["fd00::/120"]])
    assert pool.allocate("c1") == (
        nsm_pair("10.0.0.1/32", "10.0.0.0/32"),
        nsm_pair("fd00::1/128", "fd00::/128"),
    )


def test_nsm_allocation_is_idempotent_and_release_reuses() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/24"]])
    first = pool.allocate("c1")
    assert pool.allocate("c1") == first
    pool.allocate("c2")
    assert pool.release("c1") == first
    assert pool.allocate("c3") == first


def test_nsm_skips_excluded_addresses() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/24"]])
    assert pool.allocate("c1", excluded=["10.0.0.0/31", "10.0.0.3/32"]) == (
        nsm_pair("10.0.0.4/32", "10.0.0.2/32"),
    )


def test_nsm_failing_group_changes_nothing() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/24"], ["10.9.0.0/31"]])
    pool.allocate("c1")
    with pytest.raises(PoolExhausted):
        pool.allocate("c2")
    assert pool.held("c2") == ()
    pool.release("c1")
    assert pool.allocate("c3")[0] == nsm_pair("10.0.0.1/32", "10.0.0.0/32")


@pytest.mark.parametrize("groups", [[], [[]], [["10.0.0.0/33"]]])
def test_nsm_needs_valid_prefixes_in_every_group(groups: list[list[str]]) -> None:
    with pytest.raises(ConfigError, match="NSM_CIDR_PREFIX"):
        NsmP2PAllocator(groups)


def test_nsm_recover_takes_carried_addresses_politely() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/24"]])
    assert pool.recover("c1", ["10.0.0.7/32"], ["10.0.0.9/32"]) == (nsm_pair("10.0.0.7/32", "10.0.0.9/32"),)
    assert pool.allocate("c2") == (nsm_pair("10.0.0.1/32", "10.0.0.0/32"),)


def test_nsm_recover_picks_first_usable_addresses_per_group() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/24"], ["fd00::/64"]])
    pool.allocate("other", excluded=[])
    recovered = pool.recover(
        "c1", ["10.0.0.0/32", "10.0.0.5/32", "fd00::5/128"], ["10.9.9.9/32", "10.0.0.6/32", "fd00::4/128"]
    )
    assert recovered == (nsm_pair("10.0.0.5/32", "10.0.0.6/32"), nsm_pair("fd00::5/128", "fd00::4/128"))


def test_nsm_recover_fails_without_changes_when_a_group_cannot_be_recovered() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/24"], ["fd00::/64"]])
    assert pool.recover("c1", ["10.0.0.5/32"], ["10.0.0.6/32"]) is None
    assert pool.held("c1") == ()
    assert pool.allocate("c2")[0] == nsm_pair("10.0.0.1/32", "10.0.0.0/32")


def test_nsm_recover_refuses_excluded_taken_and_identical_addresses() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/24"]])
    pool.allocate("c1")
    assert pool.recover("c2", ["10.0.0.1/32"], ["10.0.0.5/32"]) is None
    assert pool.recover("c2", ["10.0.0.5/32"], ["10.0.0.5/32"]) is None
    assert pool.recover("c2", ["10.0.0.5/32"], ["10.0.0.6/32"], excluded=["10.0.0.6/32"]) is None


def test_nsm_recover_is_idempotent_through_request() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/24"]])
    first = pool.request("c1", ["10.0.0.7/32"], ["10.0.0.9/32"])
    assert pool.request("c1", ["10.0.0.7/32"], ["10.0.0.9/32"]) == first
    assert pool.recover("c1", ["10.0.0.7/32"], ["10.0.0.9/32"]) is None
    assert pool.held("c1") == first


def test_nsm_request_reallocates_a_pair_that_became_excluded() -> None:
    pool = NsmP2PAllocator([["169.254.0.0/16"]])
    pool.request("c1")
    moved = pool.request("c1", ["169.254.0.1/32"], ["169.254.0.0/32"], excluded=["169.254.0.0/32"])
    assert moved == (nsm_pair("169.254.0.2/32", "169.254.0.1/32"),)


def test_parse_excluded_ignores_garbage_and_host_bits() -> None:
    assert [str(n) for n in parse_excluded(["10.0.0.1/24", "bad", " fd00::/8 "])] == [
        "10.0.0.0/24",
        "fd00::/8",
    ]


# --- IPContext -----------------------------------------------------------------------------------


def test_apply_to_ip_context_adds_addresses_and_routes_once() -> None:
    ctx = IPContext(excluded_prefixes=["10.96.0.0/12"])
    addrs = (nsm_pair("169.254.0.1/32", "169.254.0.0/32"),)
    apply_to_ip_context(ctx, addrs)
    apply_to_ip_context(ctx, addrs)
    assert list(ctx.src_ip_addrs) == ["169.254.0.1/32"]
    assert list(ctx.dst_ip_addrs) == ["169.254.0.0/32"]
    assert [r.prefix for r in ctx.src_routes] == ["169.254.0.0/32"]
    assert [r.prefix for r in ctx.dst_routes] == ["169.254.0.1/32"]
    assert list(ctx.excluded_prefixes) == ["10.96.0.0/12"]


def test_apply_seed_addresses_adds_no_routes() -> None:
    ctx = IPContext()
    apply_to_ip_context(ctx, [P2PAddresses("10.60.1.1/30", "10.60.1.2/30")])
    assert (list(ctx.src_ip_addrs), list(ctx.dst_ip_addrs)) == (["10.60.1.1/30"], ["10.60.1.2/30"])
    assert (len(ctx.src_routes), len(ctx.dst_routes)) == (0, 0)


def test_remove_from_ip_context_undoes_apply_and_keeps_the_rest() -> None:
    ctx = IPContext(src_ip_addrs=["192.0.2.1/32"])
    old = nsm_pair("169.254.0.1/32", "169.254.0.0/32")
    apply_to_ip_context(ctx, [old])
    remove_from_ip_context(ctx, [old])
    assert list(ctx.src_ip_addrs) == ["192.0.2.1/32"]
    assert (len(ctx.dst_ip_addrs), len(ctx.src_routes), len(ctx.dst_routes)) == (0, 0, 0)


# --- properties ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    kind: str
    conn: int
    excluded: tuple[str, ...]


def ops(excludable: list[str]) -> st.SearchStrategy[list[Op]]:
    one = st.builds(
        Op,
        st.sampled_from(["allocate", "release", "request"]),
        st.integers(0, 9),
        st.lists(st.sampled_from(excludable), max_size=2).map(tuple),
    )
    return st.lists(one, max_size=40)


def addresses_of(result: tuple[P2PAddresses, ...]) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return {ipaddress.ip_interface(a).ip for pair in result for a in (pair.src_ip, pair.dst_ip)}


def run_ops(pool: SeedP2PAllocator | NsmP2PAllocator, program: list[Op]) -> None:
    live: dict[str, tuple[P2PAddresses, ...]] = {}
    for op in program:
        conn = f"c{op.conn}"
        if op.kind == "release":
            assert pool.release(conn) == live.pop(conn, ())
            continue
        try:
            if op.kind == "allocate":
                result = pool.allocate(conn, op.excluded)
                result = result if isinstance(result, tuple) else (result,)
            else:
                result = pool.request(conn, excluded=op.excluded)
        except PoolExhausted:
            assert pool.held(conn) == live.get(conn, ())
            continue
        if op.kind == "request" or conn not in live:
            excluded = parse_excluded(op.excluded)
            for address in addresses_of(result):
                assert not any(address.version == n.version and address in n for n in excluded)
        if op.kind == "allocate" and conn in live:
            assert result == live[conn]
        live[conn] = result
        assert pool.held(conn) == result
        seen: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        for held in live.values():
            mine = addresses_of(held)
            assert not (mine & seen), "two live connections share an address"
            seen |= mine


@given(ops(["10.60.1.0/30", "10.60.1.6/32", "10.60.1.8/29", "10.0.0.0/8"]))
def test_seed_never_shares_addresses_and_respects_exclusions(program: list[Op]) -> None:
    run_ops(SeedP2PAllocator("10.60.1.0/27"), program)


@given(ops(["10.0.0.0/32", "10.0.0.3/32", "10.0.0.4/30", "fd00::/127", "::/0"]))
def test_nsm_never_shares_addresses_and_respects_exclusions(program: list[Op]) -> None:
    run_ops(NsmP2PAllocator([["10.0.0.0/28", "10.0.1.0/30"], ["fd00::/124"]]), program)


@given(st.integers(0, 7))
def test_seed_release_then_allocate_reuses_the_freed_block_in_a_full_pool(victim: int) -> None:
    pool = SeedP2PAllocator("10.60.1.0/27")
    for n in range(8):
        pool.allocate(f"c{n}")
    freed = pool.release(f"c{victim}")
    assert pool.allocate("new") == freed[0]


@given(st.integers(0, 7))
def test_nsm_release_then_allocate_reuses_the_freed_pair_in_a_full_pool(victim: int) -> None:
    pool = NsmP2PAllocator([["10.0.0.0/28"]])
    for n in range(8):
        pool.allocate(f"c{n}")
    freed = pool.release(f"c{victim}")
    assert pool.allocate("new") == freed


@given(block=st.integers(0, 7), repeats=st.integers(1, 4))
def test_seed_recover_is_idempotent(block: int, repeats: int) -> None:
    pool = SeedP2PAllocator("10.60.1.0/27")
    src, dst = f"10.60.1.{4 * block + 1}/30", f"10.60.1.{4 * block + 2}/30"
    results = {pool.recover("c1", src, dst) for _ in range(repeats)}
    assert results == {P2PAddresses(src, dst)}


@given(
    src=st.integers(0, 15).map(lambda n: f"10.0.0.{n}/32"),
    dst=st.integers(0, 15).map(lambda n: f"10.0.0.{n}/32"),
    repeats=st.integers(1, 4),
)
def test_nsm_recovering_request_is_idempotent(src: str, dst: str, repeats: int) -> None:
    pool = NsmP2PAllocator([["10.0.0.0/28"]])
    results = {pool.request("c1", [src], [dst]) for _ in range(repeats)}
    assert len(results) == 1
    if src != dst:
        assert results == {(nsm_pair(src, dst),)}


# --- after an endpoint restart: what live links carry is kept for them ------------------------------


def test_seed_block_kept_for_an_interface_is_never_allocated() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    assert pool.keep_for_interface("eth21", ["10.60.1.2/30"]) == {"10.60.1.2/30"}
    assert pool.request("new")[0].src_ip == "10.60.1.5/30"


def test_seed_refresh_for_the_same_interface_recovers_its_kept_block() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    pool.keep_for_interface("eth21", ["10.60.1.2/30"])
    got = pool.request("old", ["10.60.1.1/30"], ["10.60.1.2/30"], interface="eth21")
    assert got == (P2PAddresses("10.60.1.1/30", "10.60.1.2/30"),)
    assert pool.kept() == {}, "claimed: no longer kept, held by the connection"
    assert pool.release("old") == got


def test_seed_kept_block_is_not_recovered_by_a_refresh_for_another_interface() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    pool.keep_for_interface("eth21", ["10.60.1.2/30"])
    got = pool.request("other", ["10.60.1.1/30"], ["10.60.1.2/30"], interface="eth31")
    assert got == (P2PAddresses("10.60.1.5/30", "10.60.1.6/30"),)
    assert pool.kept() == {"eth21": frozenset({"10.60.1.2/30"})}


def test_seed_reserved_block_kept_for_its_link_is_not_given_to_a_second_connection_of_the_key() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24", reserved=("net-0", "net-1"))
    pool.keep_for_interface("eth21", ["10.60.1.2/30"])
    assert pool.request("stranger", key="net-0")[0].src_ip == "10.60.1.9/30"
    again = pool.request("old", ["10.60.1.1/30"], ["10.60.1.2/30"], key="net-0", interface="eth21")
    assert again[0].src_ip == "10.60.1.1/30"


def test_seed_released_interface_frees_its_block_for_new_connections() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    pool.keep_for_interface("eth21", ["10.60.1.2/30", "10.60.1.0/30"])  # address and prefix route
    assert pool.release_interface("eth21") == {"10.60.1.2/30"}
    assert pool.release_interface("eth21") == frozenset()
    assert pool.request("new")[0].src_ip == "10.60.1.1/30"


@pytest.mark.parametrize(
    "carried", ["10.61.1.2/30", "10.60.1.2/24", "10.60.1.2/32", "fd00::2/126", "garbage", "127.0.0.1/8"]
)
def test_seed_keeps_only_block_addresses_of_its_pool(carried: str) -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    assert pool.keep_for_interface("eth21", [carried]) == frozenset()
    assert pool.request("new")[0].src_ip == "10.60.1.1/30"


def test_seed_does_not_keep_a_block_a_connection_holds() -> None:
    pool = SeedP2PAllocator("10.60.1.0/24")
    pool.request("live")
    assert pool.keep_for_interface("eth21", ["10.60.1.2/30"]) == frozenset()
    assert pool.release("live") == (P2PAddresses("10.60.1.1/30", "10.60.1.2/30"),)


def test_nsm_addresses_kept_for_an_interface_are_never_allocated() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/29"]])
    kept = pool.keep_for_interface("nsm-1", ["10.0.0.0/32", "10.0.0.1/32"])
    assert kept == {"10.0.0.0/32", "10.0.0.1/32"}
    assert pool.request("new") == (nsm_pair("10.0.0.3/32", "10.0.0.2/32"),)


def test_nsm_refresh_for_the_same_interface_recovers_its_kept_pair() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/29"]])
    pool.keep_for_interface("nsm-1", ["10.0.0.0/32", "10.0.0.1/32"])
    got = pool.request("old", ["10.0.0.1/32"], ["10.0.0.0/32"], interface="nsm-1")
    assert got == (nsm_pair("10.0.0.1/32", "10.0.0.0/32"),)
    assert pool.kept() == {}
    assert pool.release("old") == got
    assert pool.request("next") == got


def test_nsm_kept_pair_is_not_recovered_by_a_refresh_for_another_interface() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/29"]])
    pool.keep_for_interface("nsm-1", ["10.0.0.0/32", "10.0.0.1/32"])
    got = pool.request("other", ["10.0.0.1/32"], ["10.0.0.0/32"], interface="nsm-2")
    assert got == (nsm_pair("10.0.0.3/32", "10.0.0.2/32"),)


def test_nsm_keeps_only_host_addresses_of_its_pools_and_release_frees_them() -> None:
    pool = NsmP2PAllocator([["10.0.0.0/30"]])
    kept = pool.keep_for_interface("nsm-1", ["10.0.0.0/32", "10.0.0.0/30", "0.0.0.0/0", "10.9.0.1/32", "x"])
    assert kept == {"10.0.0.0/32"}
    assert pool.release_interface("nsm-1") == {"10.0.0.0/32"}
    assert pool.request("new") == (nsm_pair("10.0.0.1/32", "10.0.0.0/32"),)


@dataclass(frozen=True)
class Restart:
    """A fresh pool after an endpoint restart: links made before, and the order Requests arrive in."""

    live: int
    order: list[str]


def restarts(max_live: int) -> st.SearchStrategy[Restart]:
    def build(live: int, newcomers: int, seed: st.DataObject) -> Restart:
        names = [f"old{i}" for i in range(live)] + [f"new{i}" for i in range(newcomers)]
        return Restart(live, seed.draw(st.permutations(names)))

    return st.builds(build, st.integers(0, max_live), st.integers(0, 4), st.data())


def replay_restart(
    before: SeedP2PAllocator | NsmP2PAllocator,
    after: SeedP2PAllocator | NsmP2PAllocator,
    restart: Restart,
    carried_by_endpoint: Callable[[P2PAddresses], list[str]],
) -> None:
    """Links made on `before`; `after` keeps what each endpoint side carries, then serves refreshes (each
    carrying its pair, for its interface) and new connections in `restart.order`."""
    old = {f"old{i}": before.request(f"old{i}") for i in range(restart.live)}
    for name, pairs in old.items():
        after.keep_for_interface(f"if-{name}", [a for pair in pairs for a in carried_by_endpoint(pair)])
    live_addresses = {a for pairs in old.values() for a in addresses_of(pairs)}
    for name in restart.order:
        if name in old:
            src = [pair.src_ip for pair in old[name]]
            dst = [pair.dst_ip for pair in old[name]]
            assert after.request(name, src, dst, interface=f"if-{name}") == old[name], "a link kept its pair"
        else:
            try:
                got = after.request(name, interface=f"if-{name}")
            except PoolExhausted:
                continue
            assert not addresses_of(got) & live_addresses, f"{name} got an address a live link uses"
    assert after.kept() == {}


@given(restarts(max_live=6))
def test_seed_after_a_restart_links_keep_their_blocks_and_newcomers_never_get_them(restart: Restart) -> None:
    replay_restart(
        SeedP2PAllocator("10.60.1.0/27"),
        SeedP2PAllocator("10.60.1.0/27"),
        restart,
        lambda pair: [pair.dst_ip],
    )


@given(restarts(max_live=6))
def test_nsm_after_a_restart_links_keep_their_pairs_and_newcomers_never_get_them(restart: Restart) -> None:
    groups = [["10.0.0.0/28"], ["fd00::/124"]]
    replay_restart(
        NsmP2PAllocator(groups),
        NsmP2PAllocator(groups),
        restart,
        lambda pair: [pair.dst_ip, *pair.dst_routes],
    )
