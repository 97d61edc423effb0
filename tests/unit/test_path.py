"""Path rules (protocol doc §4): updatepath, index/id restore, token slots, trimming, expiry."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk.protocol.errors import ProtocolError
from nsm_sdk.protocol.gotime import timestamp_to_epoch
from nsm_sdk.protocol.path import (
    copy_caller_token,
    min_expiry,
    new_uuid,
    prev_expires,
    prev_segment,
    restore_index,
    set_own_token,
    trim_path,
    update_path,
)


def counter_ids(prefix: str = "id") -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"{prefix}-{next(numbers)}"


def names(conn: Connection) -> list[str]:
    return [segment.name for segment in conn.path.path_segments]


def ids(conn: Connection) -> list[str]:
    return [segment.id for segment in conn.path.path_segments]


def local_path(index: int) -> Connection:
    """nsc -> nsmgr -> forwarder as the NSE receives it (index = forwarder's)."""
    conn = Connection()
    for name, seg_id in (("nsc", "nsc-0"), ("nsmgr", "mgr-uuid"), ("fwd", "fwd-uuid")):
        conn.path.path_segments.add(name=name, id=seg_id)
    conn.path.index = index
    conn.id = conn.path.path_segments[index].id
    return conn


def test_empty_path_gets_one_segment_with_the_callers_id() -> None:
    conn = Connection(id="nsc-0")
    assert update_path(conn, "nsc", counter_ids()) == 0
    assert (names(conn), ids(conn), conn.path.index, conn.id) == (["nsc"], ["nsc-0"], 0, "nsc-0")


def test_empty_path_without_id_generates_one() -> None:
    conn = Connection()
    assert update_path(conn, "nsc", counter_ids()) == 0
    assert conn.id == "id-1"
    assert ids(conn) == ["id-1"]


def test_default_id_source_is_a_uuid4() -> None:
    conn = Connection()
    update_path(conn, "nsc")
    assert len(conn.id) == 36
    assert conn.id[14] == "4"
    assert new_uuid() != new_uuid()


def test_refresh_at_own_segment_restores_the_segment_id() -> None:
    conn = local_path(2)
    conn.id = "something-else"
    assert update_path(conn, "fwd", counter_ids()) == 2
    assert conn.id == "fwd-uuid"
    assert (conn.path.index, len(conn.path.path_segments)) == (2, 3)


def test_new_hop_appends_a_segment_and_returns_the_callers_index() -> None:
    conn = local_path(2)
    assert update_path(conn, "nse", counter_ids("nse")) == 2
    assert names(conn) == ["nsc", "nsmgr", "fwd", "nse"]
    assert (conn.path.index, conn.id, ids(conn)[3]) == (3, "nse-1", "nse-1")


def test_next_segment_with_our_name_is_reused_with_its_id() -> None:
    conn = local_path(2)
    conn.path.path_segments.add(name="nse", id="nse-old")
    assert update_path(conn, "nse", counter_ids()) == 2
    assert (conn.path.index, conn.id, ids(conn)) == (
        3,
        "nse-old",
        ["nsc-0", "mgr-uuid", "fwd-uuid", "nse-old"],
    )


def test_next_segment_with_another_name_is_renamed_and_gets_a_fresh_id() -> None:
    conn = local_path(1)
    assert update_path(conn, "fwd-2", counter_ids("new")) == 1
    assert names(conn) == ["nsc", "nsmgr", "fwd-2"]
    assert (conn.id, ids(conn)[2], conn.path.index) == ("new-1", "new-1", 2)


def test_index_beyond_the_path_is_go_error_and_leaves_conn_unchanged() -> None:
    conn = local_path(2)
    conn.path.index = 3
    before = conn.SerializeToString()
    with pytest.raises(
        ProtocolError, match=r"^Path.Index\+1==4 should be less or equal len\(Path.PathSegments\)==3$"
    ):
        update_path(conn, "nse", counter_ids())
    assert conn.SerializeToString() == before


def test_id_not_matching_current_segment_is_go_error() -> None:
    conn = local_path(2)
    conn.id = "wrong"
    with pytest.raises(
        ProtocolError, match=r"^Current PathSegment.Id==fwd-uuid should be equal Connection.Id==wrong$"
    ):
        update_path(conn, "nse", counter_ids())
    assert len(conn.path.path_segments) == 3


def test_restore_index_puts_back_callers_index_and_id() -> None:
    conn = local_path(2)
    previous = update_path(conn, "nse", counter_ids())
    restore_index(conn, previous)
    assert (conn.path.index, conn.id) == (2, "fwd-uuid")


def test_restore_index_out_of_range_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        restore_index(local_path(0), 3)


def test_server_copies_callers_token_into_previous_segment() -> None:
    conn = local_path(2)
    update_path(conn, "nse", counter_ids())
    assert copy_caller_token(conn, "fwd-jwt", 1000.5)
    caller = conn.path.path_segments[2]
    assert (caller.token, timestamp_to_epoch(caller.expires)) == ("fwd-jwt", 1000.5)


def test_copy_caller_token_without_metadata_keeps_what_the_caller_sent() -> None:
    conn = local_path(2)
    conn.path.path_segments[2].token = "from-path"
    update_path(conn, "nse", counter_ids())
    assert not copy_caller_token(conn, None, None)
    assert conn.path.path_segments[2].token == "from-path"
    assert not conn.path.path_segments[2].HasField("expires")


def test_copy_caller_token_at_index_zero_does_nothing() -> None:
    conn = Connection(id="a")
    update_path(conn, "nsc", counter_ids())
    assert prev_segment(conn) is None
    assert not copy_caller_token(conn, "tok", 5.0)
    assert conn.path.path_segments[0].token == ""


def test_set_own_token_fills_own_segment_token_and_expires() -> None:
    conn = local_path(2)
    update_path(conn, "nse", counter_ids())
    set_own_token(conn, "nse-jwt", 2000.0)
    own = conn.path.path_segments[3]
    assert (own.token, timestamp_to_epoch(own.expires)) == ("nse-jwt", 2000.0)


def test_set_own_token_with_index_out_of_range_is_go_error() -> None:
    conn = local_path(2)
    conn.path.index = 3
    with pytest.raises(ProtocolError, match=r"Path.Index\(3\) >= len\(NetworkServiceRequest"):
        set_own_token(conn, "t", 1.0)


def test_trim_path_drops_segments_after_own_index() -> None:
    conn = local_path(2)
    conn.path.path_segments.add(name="nse", id="nse-1")
    conn.path.path_segments.add(name="stale", id="x")
    conn.path.index = 3
    trim_path(conn)
    assert names(conn) == ["nsc", "nsmgr", "fwd", "nse"]


def test_min_expiry_is_the_earliest_segment_expiry() -> None:
    conn = local_path(0)
    for segment, expires in zip(conn.path.path_segments, (300, 200.5, 400), strict=True):
        segment.expires.seconds = int(expires)
        segment.expires.nanos = int((expires % 1) * 1e9)
    assert min_expiry(conn) == 200.5


def test_min_expiry_counts_a_segment_without_expires_as_expired() -> None:
    conn = local_path(0)
    conn.path.path_segments[0].expires.seconds = 300
    conn.path.path_segments[1].expires.seconds = 300
    assert min_expiry(conn) == 0.0


def test_min_expiry_of_empty_path_is_none() -> None:
    assert min_expiry(Connection()) is None


def test_prev_expires_reads_callers_segment_or_none() -> None:
    conn = local_path(2)
    update_path(conn, "nse", counter_ids())
    assert prev_expires(conn) is None
    conn.path.path_segments[2].expires.seconds = 77
    assert prev_expires(conn) == 77.0
    assert prev_expires(local_path(0)) is None


def test_full_nse_request_shapes_reply_like_go() -> None:
    conn = local_path(2)
    previous = update_path(conn, "nse", counter_ids("nse"))
    copy_caller_token(conn, "fwd-jwt", 600.0)
    set_own_token(conn, "nse-jwt", 600.0)
    trim_path(conn)
    restore_index(conn, previous)
    assert (conn.id, conn.path.index, names(conn)) == ("fwd-uuid", 2, ["nsc", "nsmgr", "fwd", "nse"])
    assert [s.token for s in conn.path.path_segments[2:]] == ["fwd-jwt", "nse-jwt"]


@given(
    hops=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=6, unique=True),
)
def test_chain_of_hops_then_refresh_reuses_every_id(hops: list[str]) -> None:
    """Walking a request down a chain and back, then refreshing it, keeps all ids and restores index 0."""
    source = counter_ids()
    conn = Connection(id="client-0")
    returned = [update_path(conn, hop, source) for hop in hops]
    assert returned == [0, *range(len(hops) - 1)]
    assert names(conn) == hops
    assert conn.id == conn.path.path_segments[conn.path.index].id
    first_ids = ids(conn)
    restore_index(conn, 0)
    assert conn.id == "client-0"
    again = [update_path(conn, hop, source) for hop in hops]
    assert again == returned
    assert ids(conn) == first_ids


@given(index=st.integers(min_value=0, max_value=5), length=st.integers(min_value=1, max_value=5))
def test_update_then_restore_keeps_id_equal_to_segment_at_index(index: int, length: int) -> None:
    conn = Connection()
    for n in range(length):
        conn.path.path_segments.add(name=f"hop{n}", id=f"seg{n}")
    conn.path.index = index
    conn.id = f"seg{index}" if index < length else "x"
    try:
        previous = update_path(conn, "me", counter_ids())
    except ProtocolError:
        assert index >= length
        return
    assert conn.id == conn.path.path_segments[conn.path.index].id
    restore_index(conn, previous)
    assert (conn.path.index, conn.id) == (index, f"seg{index}")
