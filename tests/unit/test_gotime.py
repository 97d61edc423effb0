"""Go RFC3339Nano text and protobuf Timestamps <-> epoch seconds (nsm_sdk.protocol.gotime)."""

from __future__ import annotations

import pytest
from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from nsm_sdk.protocol.errors import ProtocolError
from nsm_sdk.protocol.gotime import (
    epoch_to_timestamp,
    format_rfc3339nano,
    format_rfc3339nano_ns,
    parse_rfc3339nano,
    parse_rfc3339nano_ns,
    set_timestamp,
    timestamp_to_epoch,
)

# 2026-04-07T10:24:14Z
BASE = 1775557454


def test_format_writes_utc_with_z_and_all_nine_fraction_digits_when_needed() -> None:
    assert format_rfc3339nano_ns(BASE * 10**9 + 123456789) == "2026-04-07T10:24:14.123456789Z"


def test_format_drops_trailing_zeros_of_the_fraction_like_go() -> None:
    assert format_rfc3339nano_ns(BASE * 10**9 + 120_000_000) == "2026-04-07T10:24:14.12Z"


def test_format_omits_a_zero_fraction_entirely() -> None:
    assert format_rfc3339nano(float(BASE)) == "2026-04-07T10:24:14Z"


def test_format_of_float_rounds_to_microseconds() -> None:
    assert format_rfc3339nano(BASE + 0.25) == "2026-04-07T10:24:14.25Z"
    assert format_rfc3339nano(BASE + 0.1234564) == "2026-04-07T10:24:14.123456Z"


def test_parse_reads_z_with_nine_digit_fraction() -> None:
    assert parse_rfc3339nano_ns("2026-04-07T10:24:14.123456789Z") == BASE * 10**9 + 123456789


def test_parse_reads_a_time_without_fraction() -> None:
    assert parse_rfc3339nano("2026-04-07T10:24:14Z") == float(BASE)


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("2026-04-07T10:24:14.1Z", 100_000_000),
        ("2026-04-07T10:24:14.000001Z", 1_000),
        ("2026-04-07T10:24:14.1234567891Z", 123_456_789),
    ],
)
def test_parse_accepts_any_fraction_length_and_drops_digits_past_nine(text: str, nanos: int) -> None:
    assert parse_rfc3339nano_ns(text) == BASE * 10**9 + nanos


def test_parse_applies_positive_and_negative_offsets() -> None:
    assert parse_rfc3339nano("2026-04-07T12:24:14+02:00") == float(BASE)
    assert parse_rfc3339nano("2026-04-07T05:54:14.5-04:30") == BASE + 0.5
    assert parse_rfc3339nano("2026-04-07T10:24:14+00:00") == float(BASE)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-04-07 10:24:14Z",
        "2026-04-07T10:24:14",
        "2026-04-07T10:24:14.Z",
        "2026-04-07T10:24:14+0200",
        "2026-13-07T10:24:14Z",
        "2026-02-30T10:24:14Z",
        "2026-04-07T24:00:00Z",
        "2026-04-07T10:24:14+24:00",
        "2026-04-07T10:24:14Z trailing",
    ],
)
def test_parse_rejects_text_go_would_reject(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_rfc3339nano(text)


@given(st.integers(min_value=0, max_value=253402300799 * 10**9 + 999_999_999))
def test_format_then_parse_round_trips_every_nanosecond(epoch_ns: int) -> None:
    assert parse_rfc3339nano_ns(format_rfc3339nano_ns(epoch_ns)) == epoch_ns


def test_timestamp_helpers_round_trip_seconds_and_nanos() -> None:
    stamp = epoch_to_timestamp(BASE + 0.75)
    assert (stamp.seconds, stamp.nanos) == (BASE, 750_000_000)
    assert timestamp_to_epoch(stamp) == BASE + 0.75


def test_set_timestamp_keeps_nanos_non_negative_before_1970() -> None:
    stamp = timestamp_pb2.Timestamp()
    set_timestamp(stamp, -1.25)
    assert (stamp.seconds, stamp.nanos) == (-2, 750_000_000)


def test_unset_timestamp_reads_as_epoch_zero() -> None:
    assert timestamp_to_epoch(timestamp_pb2.Timestamp()) == 0.0
