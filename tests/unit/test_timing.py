"""Refresh, auto-close and retry timing (protocol doc §4.4, §5.3, §8.3, §11)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk.protocol.errors import ProtocolError
from nsm_sdk.protocol.gotime import set_timestamp
from nsm_sdk.protocol.timing import (
    MIN_DELAY,
    NSM_RETRY,
    Backoff,
    client_refresh_delay,
    registration_refresh_delay,
    server_close_deadline,
)

NOW = 1_000_000.0


def connection(expiries: list[float | None], index: int = 0) -> Connection:
    conn = Connection()
    for n, expires in enumerate(expiries):
        segment = conn.path.path_segments.add(name=f"hop{n}", id=f"id{n}")
        if expires is not None:
            set_timestamp(segment.expires, expires)
    conn.path.index = index
    return conn


def test_single_segment_refreshes_at_one_third_of_remaining() -> None:
    assert client_refresh_delay(connection([NOW + 600]), NOW) == pytest.approx(200.0)


def test_nsc_at_index_zero_refreshes_at_one_fifth_of_the_earliest_expiry() -> None:
    conn = connection([NOW + 600, NOW + 500, NOW + 600, NOW + 600])
    assert client_refresh_delay(conn, NOW) == pytest.approx(100.0)


def test_outer_hops_scale_with_index_over_length() -> None:
    conn = connection([NOW + 600] * 4, index=2)
    assert client_refresh_delay(conn, NOW) == pytest.approx(600 * (0.2 + 0.2 * 2 / 4))


def test_segment_without_expires_counts_as_expired() -> None:
    assert client_refresh_delay(connection([NOW + 600, None]), NOW) == MIN_DELAY


def test_already_expired_path_refreshes_immediately() -> None:
    assert client_refresh_delay(connection([NOW - 5, NOW + 600]), NOW) == MIN_DELAY


def test_empty_path_refreshes_immediately() -> None:
    assert client_refresh_delay(Connection(), NOW) == MIN_DELAY


@given(
    offsets_ms=st.lists(st.one_of(st.none(), st.integers(-(10**9), 10**9)), min_size=0, max_size=6),
    index=st.integers(0, 5),
)
def test_refresh_delay_is_positive_and_at_most_two_fifths_of_remaining(
    offsets_ms: list[int | None], index: int
) -> None:
    expiries = [None if o is None else NOW + o / 1000 for o in offsets_ms]
    conn = connection(expiries, index=min(index, max(len(expiries) - 1, 0)))
    delay = client_refresh_delay(conn, NOW)
    assert delay >= MIN_DELAY
    known = [o / 1000 for o in offsets_ms if o is not None]
    if known and len(known) == len(offsets_ms) and min(known) > 0:
        assert delay <= 0.4 * min(known)
    else:
        assert delay == MIN_DELAY


def test_registration_refreshes_at_two_thirds_of_remaining() -> None:
    assert registration_refresh_delay(NOW + 60, NOW) == pytest.approx(40.0)


def test_registration_without_expiration_is_never_refreshed() -> None:
    assert registration_refresh_delay(None, NOW) is None


def test_expired_registration_refreshes_now() -> None:
    assert registration_refresh_delay(NOW - 10, NOW) == 0.0


def test_server_closes_at_callers_expiry_minus_request_timeout() -> None:
    assert server_close_deadline(NOW + 600, 15.0) == NOW + 585


def test_server_close_without_deadline_uses_expiry_itself() -> None:
    assert server_close_deadline(NOW + 600, 0.0) == NOW + 600


def test_server_close_needs_previous_segment_expiry() -> None:
    with pytest.raises(ProtocolError, match="expiration for the previous path segment cannot be nil"):
        server_close_deadline(None, 15.0)


def test_nsm_retry_is_a_fixed_200ms() -> None:
    assert list(itertools.islice(NSM_RETRY.delays(random.Random(1)), 4)) == [0.2, 0.2, 0.2, 0.2]


def test_backoff_grows_by_factor_up_to_the_cap() -> None:
    policy = Backoff(base=0.1, factor=2.0, cap=0.5)
    assert list(itertools.islice(policy.delays(random.Random(1)), 5)) == pytest.approx(
        [0.1, 0.2, 0.4, 0.5, 0.5]
    )


@given(seed=st.integers(), jitter=st.floats(0.0, 1.0))
def test_backoff_jitter_stays_within_its_fraction_below_the_undelayed_value(seed: int, jitter: float) -> None:
    policy = Backoff(base=1.0, factor=3.0, cap=20.0, jitter=jitter)
    undelayed = [1.0, 3.0, 9.0, 20.0, 20.0]
    delays = list(itertools.islice(policy.delays(random.Random(seed)), 5))
    for delay, full in zip(delays, undelayed, strict=True):
        assert full * (1 - jitter) - 1e-9 <= delay <= full


def test_backoff_with_jitter_is_deterministic_for_a_seeded_rng() -> None:
    policy = Backoff(base=1.0, jitter=0.5)
    first = list(itertools.islice(policy.delays(random.Random(7)), 6))
    assert first == list(itertools.islice(policy.delays(random.Random(7)), 6))
    assert len(set(first)) > 1


@pytest.mark.parametrize(
    "kwargs",
    [{"base": -1.0}, {"base": 1.0, "factor": 0.5}, {"base": 1.0, "jitter": 1.5}, {"base": 1.0, "cap": -1.0}],
)
def test_backoff_rejects_nonsense_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
