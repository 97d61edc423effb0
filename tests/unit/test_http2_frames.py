"""The relay's HTTP/2 frame boundaries (transport/http2.py): where a GOAWAY may be slipped in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nsm_sdk.transport.http2 import (
    ACK,
    CLIENT_PREFACE,
    GOAWAY,
    MAX_STREAM_ID,
    PING,
    FrameBoundaries,
    PingAckFilter,
    goaway_frame,
    ping_frame,
)


def frame(payload_length: int, kind: int = 0) -> bytes:
    return (
        payload_length.to_bytes(3, "big") + bytes([kind, 0]) + (1).to_bytes(4, "big") + b"x" * payload_length
    )


frames = st.lists(st.integers(min_value=0, max_value=300).map(frame), min_size=1, max_size=8)


def frame_ends(stream: list[bytes]) -> list[int]:
    ends, position = [], 0
    for one in stream:
        position += len(one)
        ends.append(position)
    return ends


@given(frames, st.lists(st.integers(min_value=1, max_value=400), max_size=10))
def test_the_first_boundary_of_each_chunk_is_the_next_frame_end(stream: list[bytes], cuts: list[int]) -> None:
    data = b"".join(stream)
    ends = frame_ends(stream)
    boundaries = FrameBoundaries()
    position = 0
    for size in [*cuts, len(data)]:
        chunk = data[position : position + size]
        found = boundaries.first_boundary(chunk)
        later = [end - position for end in ends if position < end <= position + len(chunk)]
        if position in ends:
            assert found == 0
        else:
            assert found == (later[0] if later else None)
        boundaries.feed(chunk)
        position += len(chunk)
        assert boundaries.at_boundary == (position in ends)
        if position >= len(data):
            break


def test_feeding_reports_the_type_of_each_frame_begun() -> None:
    boundaries = FrameBoundaries()
    stream = frame(6, kind=4) + goaway_frame("bye") + frame(3, kind=0)
    assert boundaries.feed(stream[:5]) == []
    assert boundaries.feed(stream[5:20]) == [4]  # the GOAWAY's header is not complete yet
    assert boundaries.feed(stream[20:24]) == [GOAWAY]
    assert boundaries.feed(stream[24:]) == [0]


def test_nothing_goes_before_the_servers_first_frame() -> None:
    boundaries = FrameBoundaries()
    assert boundaries.at_boundary
    assert boundaries.first_boundary(b"") is None
    assert boundaries.first_boundary(frame(6, kind=4)) == 15


def test_the_goaway_refuses_no_opened_stream_and_says_no_error() -> None:
    sent = goaway_frame("retired: our SVID rotated")
    length = int.from_bytes(sent[:3], "big")
    assert sent[3] == GOAWAY and int.from_bytes(sent[5:9], "big") == 0
    assert len(sent) == 9 + length
    assert int.from_bytes(sent[9:13], "big") == MAX_STREAM_ID
    assert int.from_bytes(sent[13:17], "big") == 0
    assert sent[17:] == b"retired: our SVID rotated"
    boundaries = FrameBoundaries()
    boundaries.feed(sent)
    assert boundaries.at_boundary


def ping_ack(opaque: bytes) -> bytes:
    return (8).to_bytes(3, "big") + bytes([PING, ACK]) + (0).to_bytes(4, "big") + opaque


OURS = b"relay-01"


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    chunks, position = [], 0
    for size in cuts:
        chunks.append(data[position : position + size])
        position += size
    chunks.append(data[position:])
    return chunks


@given(
    frames,
    frames,
    st.lists(st.integers(min_value=1, max_value=60), max_size=20),
    st.booleans(),
)
def test_only_the_ack_of_our_own_ping_is_taken_out_of_the_client_stream(
    before: list[bytes], after: list[bytes], cuts: list[int], grpcio_pings_too: bool
) -> None:
    theirs = [ping_ack(b"grpcio-1")] if grpcio_pings_too else []
    expected = CLIENT_PREFACE + b"".join([*before, *theirs, *after])
    wire = CLIENT_PREFACE + b"".join([*before, *theirs, ping_ack(OURS), *after])
    ack_filter = PingAckFilter()
    ack_filter.expected = OURS
    passed, acks = b"", 0
    for chunk in chunked(wire, cuts):
        out, acked = ack_filter.filter(chunk)
        passed += out
        acks += acked
    assert passed == expected
    assert acks == 1 and ack_filter.expected is None


def test_an_ack_is_passed_on_when_no_ping_of_ours_is_out() -> None:
    ack_filter = PingAckFilter()
    wire = CLIENT_PREFACE + ping_ack(OURS)
    assert ack_filter.filter(wire) == (wire, False)


def test_our_ping_is_a_ping_without_ack_on_stream_zero() -> None:
    sent = ping_frame(OURS)
    assert sent[:9] == (8).to_bytes(3, "big") + bytes([PING, 0]) + bytes(4)
    assert sent[9:] == OURS
