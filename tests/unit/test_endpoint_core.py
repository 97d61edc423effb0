"""The endpoint's Request/Close logic without gRPC (protocol doc §8.4).

Requests are shaped like the forwarder's: path `[nsc, nsmgr, fwd]` at index 2, id = the forwarder's
segment id, the forwarder's metadata token, preferences `[MEMIF, KERNEL]`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nse_sidecar.endpoint import EndpointCore, choose_mechanism
from nsm_sdk._proto.networkservice.connection_pb2 import Connection, Mechanism, State
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk.protocol.errors import ProtocolError
from nsm_sdk.protocol.gotime import set_timestamp, timestamp_to_epoch
from nsm_sdk.protocol.ifname import interface_name_problem
from nsm_sdk.protocol.ipam import NsmP2PAllocator, P2PAllocator, SeedP2PAllocator

NETNS_URL = "inode://4/4026532000"
FWD_TOKEN, FWD_EXPIRES = "fwd-metadata-jwt", 1_800_000_300.0
OWN_TOKEN, OWN_EXPIRES = "nse-jwt", 1_800_000_600.0


def counter_ids(prefix: str = "nse-id") -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"{prefix}-{next(numbers)}"


def zeros(size: int) -> bytes:
    return bytes(size)


def make_core(allocator: P2PAllocator | None = None, ids: Callable[[], str] | None = None,
              random_bytes: Callable[[int], bytes] = zeros) -> EndpointCore:
    return EndpointCore(
        "nse-a",
        allocator if allocator is not None else NsmP2PAllocator([["169.254.0.0/16"]]),
        NETNS_URL,
        lambda _peer, _own: (OWN_TOKEN, OWN_EXPIRES),
        new_id=ids if ids is not None else counter_ids(),
        random_bytes=random_bytes,
    )


def forwarder_request(fwd_id: str = "fwd-1", labels: dict[str, str] | None = None,
                      preferences: tuple[str, ...] = ("MEMIF", "KERNEL")) -> NetworkServiceRequest:
    conn = Connection(id=fwd_id, network_service="p2p", network_service_endpoint_name="nse-a",
                      payload="ETHERNET", labels=labels or {"link": "net-0"}, state=State.UP)
    for i, (name, seg_id) in enumerate((("nsc", "nsc-0"), ("nsmgr", "mgr-1"), ("fwd", fwd_id))):
        segment = conn.path.path_segments.add(name=name, id=seg_id, token=f"path-jwt-{i}")
        set_timestamp(segment.expires, 1_800_000_000.0 + i)
    conn.path.index = 2
    conn.context.ip_context.SetInParent()
    request = NetworkServiceRequest(connection=conn)
    for kind in preferences:
        request.mechanism_preferences.add(cls="LOCAL", type=kind)
    return request


def refresh_of(reply: Connection) -> NetworkServiceRequest:
    """The forwarder's refresh: our last reply (its view) with our mechanism, same preferences."""
    request = forwarder_request()
    request.connection.CopyFrom(reply)
    return request


# --- path and tokens ---------------------------------------------------------------------------------------


def test_reply_path_is_callers_segments_plus_ours_at_the_callers_index() -> None:
    accepted = make_core().request(forwarder_request(), FWD_TOKEN, FWD_EXPIRES)
    reply = accepted.reply
    assert [(s.name, s.id) for s in reply.path.path_segments] == [
        ("nsc", "nsc-0"), ("nsmgr", "mgr-1"), ("fwd", "fwd-1"), ("nse-a", "nse-id-1")]
    assert (reply.path.index, reply.id) == (2, "fwd-1")
    assert reply.state == State.UP


def test_own_view_is_the_reply_with_our_index_and_id() -> None:
    accepted = make_core().request(forwarder_request(), FWD_TOKEN, FWD_EXPIRES)
    own = accepted.own_view
    assert (own.path.index, own.id) == (3, "nse-id-1")
    own.path.index, own.id = accepted.reply.path.index, accepted.reply.id
    assert own == accepted.reply


def test_callers_metadata_token_goes_into_its_segment_and_ours_into_our_segment() -> None:
    segments = make_core().request(forwarder_request(), FWD_TOKEN, FWD_EXPIRES).reply.path.path_segments
    assert (segments[2].token, timestamp_to_epoch(segments[2].expires)) == (FWD_TOKEN, FWD_EXPIRES)
    assert (segments[3].token, timestamp_to_epoch(segments[3].expires)) == (OWN_TOKEN, OWN_EXPIRES)
    assert [s.token for s in segments[:2]] == ["path-jwt-0", "path-jwt-1"]


def test_without_metadata_token_the_callers_segment_keeps_what_the_path_had() -> None:
    segments = make_core().request(forwarder_request(), None, None).reply.path.path_segments
    assert (segments[2].token, timestamp_to_epoch(segments[2].expires)) == ("path-jwt-2", 1_800_000_002.0)
    assert segments[3].token == OWN_TOKEN


def test_request_without_any_caller_expiry_is_refused_like_gos_timeout_server() -> None:
    allocator = SeedP2PAllocator("10.0.0.0/30")
    request = forwarder_request()
    request.connection.path.path_segments[2].ClearField("expires")
    with pytest.raises(ProtocolError, match="expiration for the previous path segment cannot be nil"):
        make_core(allocator).request(request, None, None)
    assert allocator.allocate("probe").src_ip == "10.0.0.1/30"  # nothing was held


def test_refresh_without_caller_expiry_is_refused_and_keeps_the_live_addresses() -> None:
    allocator = NsmP2PAllocator([["169.254.0.0/16"]])
    core = make_core(allocator)
    first = core.request(forwarder_request(), FWD_TOKEN, FWD_EXPIRES)
    refresh = refresh_of(first.reply)
    refresh.connection.path.path_segments[2].ClearField("expires")
    with pytest.raises(ProtocolError):
        core.request(refresh, None, None)
    assert allocator.held(first.own_view.id) != ()


def test_segments_after_ours_are_trimmed() -> None:
    request = forwarder_request()
    request.connection.path.path_segments.add(name="nse-a", id="old-nse")
    request.connection.path.path_segments.add(name="stale", id="stale-1")
    reply = make_core().request(request, FWD_TOKEN, FWD_EXPIRES).reply
    assert [s.name for s in reply.path.path_segments] == ["nsc", "nsmgr", "fwd", "nse-a"]
    assert reply.path.path_segments[3].id == "old-nse"


def test_request_whose_id_is_not_the_callers_segment_id_is_refused_and_holds_nothing() -> None:
    allocator = NsmP2PAllocator([["169.254.0.0/16"]])
    request = forwarder_request()
    request.connection.id = "someone-else"
    with pytest.raises(ProtocolError, match=r"should be equal Connection\.Id"):
        make_core(allocator).request(request, FWD_TOKEN, FWD_EXPIRES)
    assert allocator.allocate("probe")[0].dst_ip == "169.254.0.0/32"


def test_request_does_not_modify_the_incoming_message() -> None:
    request = forwarder_request()
    make_core().request(request, FWD_TOKEN, FWD_EXPIRES)
    assert request == forwarder_request()


# --- mechanism and interface name --------------------------------------------------------------------------


def test_kernel_is_chosen_even_when_memif_comes_first() -> None:
    mechanism = make_core().request(forwarder_request(preferences=("MEMIF", "KERNEL")), FWD_TOKEN,
                                    FWD_EXPIRES).reply.mechanism
    assert (mechanism.cls, mechanism.type) == ("LOCAL", "KERNEL")
    assert mechanism.parameters["inodeURL"] == NETNS_URL


def test_kernel_preference_without_class_gets_local() -> None:
    request = NetworkServiceRequest(mechanism_preferences=[Mechanism(type="KERNEL")])
    assert choose_mechanism(request).cls == "LOCAL"


def test_no_kernel_preference_is_refused_naming_what_was_offered() -> None:
    message = r"cannot support any of the requested mechanisms \(MEMIF, VFIO\)"
    with pytest.raises(ProtocolError, match=message):
        make_core().request(forwarder_request(preferences=("MEMIF", "VFIO")), FWD_TOKEN, FWD_EXPIRES)


def test_already_set_mechanism_of_another_type_is_refused() -> None:
    request = forwarder_request()
    request.connection.mechanism.CopyFrom(Mechanism(cls="LOCAL", type="MEMIF"))
    with pytest.raises(ProtocolError, match="cannot support mechanism MEMIF"):
        make_core().request(request, FWD_TOKEN, FWD_EXPIRES)


def test_peerif_label_names_our_side_of_the_link() -> None:
    accepted = make_core().request(forwarder_request(labels={"peerif": "eth7"}), FWD_TOKEN, FWD_EXPIRES)
    assert accepted.interface_name == "eth7"
    assert accepted.reply.mechanism.parameters["name"] == "eth7"


def test_without_peerif_a_name_is_generated_from_the_service_name() -> None:
    accepted = make_core().request(forwarder_request(), FWD_TOKEN, FWD_EXPIRES)
    assert accepted.interface_name == "p2p-00000000000"
    assert accepted.reply.mechanism.parameters["name"] == accepted.interface_name


@pytest.mark.parametrize("bad", ["much-too-long-name", "a/b", "eth 1", ".."])
def test_bad_peerif_is_refused_naming_the_label(bad: str) -> None:
    with pytest.raises(ProtocolError, match=r"label peerif="):
        make_core().request(forwarder_request(labels={"peerif": bad}), FWD_TOKEN, FWD_EXPIRES)


@settings(max_examples=60, deadline=None)
@given(name=st.text(max_size=20))
def test_peerif_is_used_verbatim_when_valid_and_refused_without_holding_addresses_when_not(name: str) -> None:
    allocator = SeedP2PAllocator("10.0.0.0/30")  # room for exactly one link
    core = make_core(allocator)
    request = forwarder_request(labels={"peerif": name} if name else {})
    if name and interface_name_problem(name) is not None:
        with pytest.raises(ProtocolError):
            core.request(request, FWD_TOKEN, FWD_EXPIRES)
        assert allocator.allocate("probe").src_ip == "10.0.0.1/30"  # the only block is still free
    else:
        accepted = core.request(request, FWD_TOKEN, FWD_EXPIRES)
        assert accepted.interface_name == (name or "p2p-00000000000")


def test_refused_mechanism_holds_no_addresses() -> None:
    allocator = SeedP2PAllocator("10.0.0.0/30")
    with pytest.raises(ProtocolError):
        make_core(allocator).request(forwarder_request(preferences=("MEMIF",)), FWD_TOKEN, FWD_EXPIRES)
    assert allocator.allocate("probe").src_ip == "10.0.0.1/30"


def test_generated_name_is_kept_on_refresh() -> None:
    draws: list[int] = []

    def counting(size: int) -> bytes:
        draws.append(size)
        return bytes([len(draws)]) * size  # a different name on every draw

    core = make_core(random_bytes=counting)
    first = core.request(forwarder_request(), FWD_TOKEN, FWD_EXPIRES)
    drawn = len(draws)
    again = core.request(refresh_of(first.reply), FWD_TOKEN, FWD_EXPIRES)
    assert len(draws) == drawn
    assert again.interface_name == first.interface_name
    assert again.reply.mechanism == first.reply.mechanism


def test_name_is_kept_on_refresh_after_an_endpoint_restart() -> None:
    first = make_core(random_bytes=zeros).request(forwarder_request(), FWD_TOKEN, FWD_EXPIRES)
    restarted = make_core(random_bytes=lambda n: b"\x01" * n)
    again = restarted.request(refresh_of(first.reply), FWD_TOKEN, FWD_EXPIRES)
    assert again.interface_name == first.interface_name


def test_refresh_keeps_our_netns_url_even_if_the_forwarder_sent_another() -> None:
    core = make_core()
    first = core.request(forwarder_request(), FWD_TOKEN, FWD_EXPIRES)
    request = refresh_of(first.reply)
    request.connection.mechanism.parameters["inodeURL"] = "file:///proc/77/fd/3"
    assert core.request(request, FWD_TOKEN, FWD_EXPIRES).reply.mechanism.parameters["inodeURL"] == NETNS_URL


# --- addresses ---------------------------------------------------------------------------------------------


def test_nsm_mode_gives_slash_32_pair_with_routes_to_each_other() -> None:
    ctx = make_core().request(forwarder_request(), FWD_TOKEN, FWD_EXPIRES).reply.context.ip_context
    assert list(ctx.dst_ip_addrs) == ["169.254.0.0/32"]
    assert list(ctx.src_ip_addrs) == ["169.254.0.1/32"]
    assert [r.prefix for r in ctx.src_routes] == ["169.254.0.0/32"]
    assert [r.prefix for r in ctx.dst_routes] == ["169.254.0.1/32"]


def test_seed_mode_gives_a_slash_30_without_routes() -> None:
    ctx = make_core(SeedP2PAllocator("10.60.1.0/24")).request(
        forwarder_request(), FWD_TOKEN, FWD_EXPIRES).reply.context.ip_context
    assert (list(ctx.src_ip_addrs), list(ctx.dst_ip_addrs)) == (["10.60.1.1/30"], ["10.60.1.2/30"])
    assert (len(ctx.src_routes), len(ctx.dst_routes)) == (0, 0)


def test_two_connections_get_different_addresses() -> None:
    core = make_core()
    first = core.request(forwarder_request("fwd-1"), FWD_TOKEN, FWD_EXPIRES).reply.context.ip_context
    second = core.request(forwarder_request("fwd-2"), FWD_TOKEN, FWD_EXPIRES).reply.context.ip_context
    assert (list(second.dst_ip_addrs), list(second.src_ip_addrs)) == (["169.254.0.2/32"], ["169.254.0.3/32"])
    assert set(first.src_ip_addrs).isdisjoint(second.src_ip_addrs)


@pytest.mark.parametrize("mode", ["seed", "nsm"])
def test_refresh_returns_the_same_context_without_duplicates(mode: str) -> None:
    allocator: P2PAllocator = SeedP2PAllocator("10.60.1.0/24") if mode == "seed" else NsmP2PAllocator(
        [["169.254.0.0/16"]])
    core = make_core(allocator)
    first = core.request(forwarder_request(), FWD_TOKEN, FWD_EXPIRES)
    again = core.request(refresh_of(first.reply), FWD_TOKEN, FWD_EXPIRES)
    twice = core.request(refresh_of(again.reply), FWD_TOKEN, FWD_EXPIRES)
    assert twice.reply.context == first.reply.context
    assert twice.own_view.id == first.own_view.id
    assert len(allocator.held(first.own_view.id)) == 1


@pytest.mark.parametrize("mode", ["seed", "nsm"])
def test_addresses_are_recovered_after_an_endpoint_restart(mode: str) -> None:
    def fresh() -> P2PAllocator:
        return SeedP2PAllocator("10.60.1.0/24") if mode == "seed" else NsmP2PAllocator([["169.254.0.0/16"]])

    before = make_core(fresh())
    before.request(forwarder_request("fwd-0"), FWD_TOKEN, FWD_EXPIRES)  # so ours are not the lowest
    ours = before.request(forwarder_request("fwd-1"), FWD_TOKEN, FWD_EXPIRES)

    restarted = make_core(fresh(), ids=counter_ids("after"))
    recovered = restarted.request(refresh_of(ours.reply), FWD_TOKEN, FWD_EXPIRES)
    assert recovered.reply.context == ours.reply.context
    assert recovered.own_view.id == ours.own_view.id  # our segment (same name) keeps its id
    other = restarted.request(forwarder_request("fwd-9"), FWD_TOKEN, FWD_EXPIRES).reply.context.ip_context
    assert set(other.src_ip_addrs).isdisjoint(ours.reply.context.ip_context.src_ip_addrs)
    assert set(other.dst_ip_addrs).isdisjoint(ours.reply.context.ip_context.dst_ip_addrs)


def test_addresses_that_became_excluded_are_replaced_with_their_routes() -> None:
    core = make_core()
    first = core.request(forwarder_request(), FWD_TOKEN, FWD_EXPIRES)
    request = refresh_of(first.reply)
    request.connection.context.ip_context.excluded_prefixes.append("169.254.0.0/31")
    ctx = core.request(request, FWD_TOKEN, FWD_EXPIRES).reply.context.ip_context
    assert (list(ctx.dst_ip_addrs), list(ctx.src_ip_addrs)) == (["169.254.0.2/32"], ["169.254.0.3/32"])
    assert [r.prefix for r in ctx.src_routes] == ["169.254.0.2/32"]
    assert [r.prefix for r in ctx.dst_routes] == ["169.254.0.3/32"]


# --- close -------------------------------------------------------------------------------------------------


def test_close_releases_the_addresses_and_returns_our_view() -> None:
    allocator = NsmP2PAllocator([["169.254.0.0/16"]])
    core = make_core(allocator)
    accepted = core.request(forwarder_request(), FWD_TOKEN, FWD_EXPIRES)
    mine = core.close(accepted.reply, FWD_TOKEN, FWD_EXPIRES)
    assert (mine.path.index, mine.id) == (3, accepted.own_view.id)
    assert allocator.held(accepted.own_view.id) == ()
    again = core.request(forwarder_request("fwd-2"), FWD_TOKEN, FWD_EXPIRES).reply.context.ip_context
    assert list(again.dst_ip_addrs) == ["169.254.0.0/32"]


def test_close_of_an_unknown_connection_releases_nothing_else() -> None:
    allocator = NsmP2PAllocator([["169.254.0.0/16"]])
    core = make_core(allocator)
    live = core.request(forwarder_request("fwd-1"), FWD_TOKEN, FWD_EXPIRES)
    core.close(forwarder_request("fwd-2").connection, FWD_TOKEN, FWD_EXPIRES)
    assert len(allocator.held(live.own_view.id)) == 1


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["request", "refresh", "close"]), st.integers(0, 3)),
                   max_size=25))
def test_live_connections_always_hold_distinct_stable_addresses(ops: list[tuple[str, int]]) -> None:
    core = make_core(NsmP2PAllocator([["10.0.0.0/28"]]))
    live: dict[int, Connection] = {}
    for op, n in ops:
        if op == "request" and n not in live:
            live[n] = core.request(forwarder_request(f"fwd-{n}"), FWD_TOKEN, FWD_EXPIRES).reply
        elif op == "refresh" and n in live:
            again = core.request(refresh_of(live[n]), FWD_TOKEN, FWD_EXPIRES).reply
            assert again.context == live[n].context
            live[n] = again
        elif op == "close" and n in live:
            core.close(live.pop(n), FWD_TOKEN, FWD_EXPIRES)
        addresses = [a for reply in live.values() for a in (*reply.context.ip_context.src_ip_addrs,
                                                             *reply.context.ip_context.dst_ip_addrs)]
        assert len(addresses) == len(set(addresses)) == 2 * len(live)
