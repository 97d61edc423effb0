"""MonitorConnections selector matching and per-subscriber events (protocol doc §5.4, §8.6).

The rule is networkservicemesh/api `MatchesMonitorScopeSelector`: the selector's segments must appear as a
contiguous run of the connection's path, an empty name/id/token in the selector matches anything, and an
empty selector matches every connection.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nsm_sdk._proto.networkservice.connection_pb2 import (
    Connection,
    ConnectionEventType,
    MonitorScopeSelector,
    PathSegment,
)
from nsm_sdk.protocol.monitor import build_event, selector_matches


def connection(conn_id: str, *segments: tuple[str, str], token: str = "") -> Connection:
    conn = Connection(id=conn_id, network_service="p2p")
    for name, seg_id in segments:
        conn.path.path_segments.add(name=name, id=seg_id, token=token)
    return conn


def selector(*segments: dict[str, str]) -> MonitorScopeSelector:
    return MonitorScopeSelector(path_segments=[
        PathSegment(name=fields.get("name", ""), id=fields.get("id", ""), token=fields.get("token", ""))
        for fields in segments
    ])


LOCAL = connection("mgr-1", ("nsc", "nsc-0"), ("nsmgr", "mgr-1"), ("fwd", "fwd-1"), ("nse", "nse-1"))


def test_empty_selector_matches_every_connection_even_one_without_path() -> None:
    assert selector_matches(MonitorScopeSelector(), LOCAL)
    assert selector_matches(MonitorScopeSelector(), Connection(id="bare"))


def test_empty_selector_ignores_network_services_like_go() -> None:
    only_other_service = MonitorScopeSelector(network_services=["something-else"])
    assert selector_matches(only_other_service, LOCAL)


def test_single_segment_matches_anywhere_in_the_path() -> None:
    for name, seg_id in (("nsc", "nsc-0"), ("nsmgr", "mgr-1"), ("nse", "nse-1")):
        assert selector_matches(selector({"name": name, "id": seg_id}), LOCAL)


def test_forwarder_selector_matches_the_endpoints_view() -> None:
    """What the forwarder sends an NSE (§8.6): its own segment's id and name."""
    assert selector_matches(selector({"id": "fwd-1", "name": "fwd"}), LOCAL)


def test_mismatching_id_with_matching_name_does_not_match() -> None:
    assert not selector_matches(selector({"name": "fwd", "id": "fwd-2"}), LOCAL)


def test_empty_fields_are_wildcards() -> None:
    assert selector_matches(selector({"id": "nse-1"}), LOCAL)
    assert selector_matches(selector({"name": "nsmgr"}), LOCAL)
    assert selector_matches(selector({}), LOCAL)
    assert selector_matches(selector({}, {"name": "fwd"}), LOCAL)


def test_token_is_compared_when_set() -> None:
    with_token = connection("c", ("nsc", "nsc-0"), token="jwt-a")
    assert selector_matches(selector({"id": "nsc-0", "token": "jwt-a"}), with_token)
    assert not selector_matches(selector({"id": "nsc-0", "token": "jwt-b"}), with_token)


def test_run_of_segments_must_be_contiguous() -> None:
    assert selector_matches(selector({"name": "nsmgr"}, {"name": "fwd"}), LOCAL)
    assert not selector_matches(selector({"name": "nsc"}, {"name": "fwd"}), LOCAL)


def test_run_of_segments_must_be_in_path_order() -> None:
    assert not selector_matches(selector({"name": "fwd"}, {"name": "nsmgr"}), LOCAL)


def test_selector_longer_than_the_path_never_matches() -> None:
    short = connection("c", ("nsc", "nsc-0"))
    assert not selector_matches(selector({}, {}), short)
    assert not selector_matches(selector({"id": "nsc-0"}), Connection(id="bare"))


def test_run_at_the_very_end_of_the_path_matches() -> None:
    assert selector_matches(selector({"name": "fwd"}, {"name": "nse", "id": "nse-1"}), LOCAL)


names = st.sampled_from(["a", "b", "c"])


@given(
    path=st.lists(st.tuples(names, names), max_size=6),
    start=st.integers(min_value=0, max_value=5),
    length=st.integers(min_value=1, max_value=4),
    blank=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_any_contiguous_slice_of_the_path_matches_also_with_blanked_fields(
    path: list[tuple[str, str]], start: int, length: int, blank: list[bool]
) -> None:
    conn = connection("c", *path)
    piece = path[start : start + length]
    if not piece:
        return
    patterns = [
        {"id": seg_id} if blank[i] else {"name": name, "id": seg_id} for i, (name, seg_id) in enumerate(piece)
    ]
    assert selector_matches(selector(*patterns), conn)


@given(
    path=st.lists(st.tuples(names, names), max_size=5),
    wanted=st.lists(st.tuples(names, names), min_size=1, max_size=3),
)
def test_matching_equals_a_brute_force_search_for_the_run(
    path: list[tuple[str, str]], wanted: list[tuple[str, str]]
) -> None:
    expected = any(path[i : i + len(wanted)] == wanted for i in range(len(path) - len(wanted) + 1))
    patterns = [{"name": name, "id": seg_id} for name, seg_id in wanted]
    assert selector_matches(selector(*patterns), connection("c", *path)) == expected


# --- build_event ---------------------------------------------------------------------------------------


def test_event_keeps_only_matching_connections_keyed_by_id() -> None:
    other = connection("mgr-2", ("nsc", "nsc-1"), ("nsmgr", "mgr-2"))
    event = build_event(ConnectionEventType.UPDATE, selector({"id": "nsc-0"}), [LOCAL, other])
    assert event is not None
    assert event.type == ConnectionEventType.UPDATE
    assert list(event.connections) == ["mgr-1"]
    assert event.connections["mgr-1"] == LOCAL


def test_event_with_nothing_matching_is_skipped_for_update_and_delete() -> None:
    unrelated = selector({"id": "nobody"})
    assert build_event(ConnectionEventType.UPDATE, unrelated, [LOCAL]) is None
    assert build_event(ConnectionEventType.DELETE, unrelated, [LOCAL]) is None


def test_initial_state_transfer_is_sent_even_when_empty() -> None:
    event = build_event(ConnectionEventType.INITIAL_STATE_TRANSFER, selector({"id": "nobody"}), [LOCAL])
    assert event is not None
    assert event.type == ConnectionEventType.INITIAL_STATE_TRANSFER
    assert len(event.connections) == 0


def test_empty_selector_event_carries_every_connection() -> None:
    other = connection("mgr-2", ("nsc", "nsc-1"), ("nsmgr", "mgr-2"))
    event = build_event(ConnectionEventType.INITIAL_STATE_TRANSFER, MonitorScopeSelector(), [LOCAL, other])
    assert event is not None
    assert set(event.connections) == {"mgr-1", "mgr-2"}


def test_event_holds_copies_not_the_callers_connections() -> None:
    conn = connection("mgr-1", ("nsc", "nsc-0"))
    event = build_event(ConnectionEventType.UPDATE, MonitorScopeSelector(), [conn])
    assert event is not None
    conn.network_service = "changed"
    assert event.connections["mgr-1"].network_service == "p2p"
