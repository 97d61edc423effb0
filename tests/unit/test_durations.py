"""Go duration syntax (nsm_sdk.protocol.durations)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsm_sdk.protocol.durations import (
    UNIT_NANOSECONDS,
    format_go_duration,
    parse_go_duration,
    parse_positive_duration,
)
from nsm_sdk.protocol.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300ms", 0.3),
        ("5s", 5.0),
        ("1m30s", 90.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("2h45m", 9900.0),
        ("1h1m1s1ms", 3661.001),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("100ns", 1e-7),
        ("7us", 7e-6),
        ("7\u00b5s", 7e-6),
        ("7\u03bcs", 7e-6),
        ("0", 0.0),
        ("0s", 0.0),
        ("+2s", 2.0),
        ("-2s", -2.0),
        ("  15s  ", 15.0),
        ("1.0000000009s", 1.0),
    ],
)
def test_go_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_go_duration("NSM_DIAL_TIMEOUT", text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty duration"),
        ("-", "empty duration"),
        ("15", "missing unit after '15'"),
        ("1s5", "missing unit after '5'"),
        ("5sec", "unknown unit 'sec'"),
        ("1d", "unknown unit 'd'"),
        ("1 s", "unknown unit ' s'"),
        ("s", "invalid duration"),
        (".s", "invalid duration"),
        ("ten seconds", "invalid duration"),
        ("3000000h", "too large"),
    ],
)
def test_bad_durations_name_variable_value_and_problem(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_go_duration("NSM_REQUEST_TIMEOUT", text)
    error = caught.value
    assert (error.variable, error.value) == ("NSM_REQUEST_TIMEOUT", text)
    assert problem in error.problem
    assert str(error) == f"NSM_REQUEST_TIMEOUT={text!r}: {error.problem}"


@pytest.mark.parametrize("text", ["0", "0s", "-1s", "0.0000000001s"])
def test_positive_duration_rejects_zero_and_negative(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_positive_duration("NSM_REQUEST_TIMEOUT", text)
    assert caught.value.problem == "duration must be greater than 0"
    assert caught.value.value == text


def test_positive_duration_accepts_one_nanosecond() -> None:
    assert parse_positive_duration("NSM_REQUEST_TIMEOUT", "1ns") == pytest.approx(1e-9)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.3, "300ms"),
        (90.0, "1m30s"),
        (600.0, "10m"),
        (3600.0, "1h"),
        (3605.0, "1h0m5s"),
        (1.5, "1.5s"),
        (-2.0, "-2s"),
        (7e-6, "7us"),
    ],
)
def test_format_go_duration_renders_readable_go_syntax(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


_UNITS = sorted(UNIT_NANOSECONDS)


@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(_UNITS)), min_size=1, max_size=5))
def test_sum_of_integer_terms_is_parsed_exactly(terms: list[tuple[int, str]]) -> None:
    text = "".join(f"{number}{unit}" for number, unit in terms)
    expected_ns = sum(number * UNIT_NANOSECONDS[unit] for number, unit in terms)
    assert parse_go_duration("D", text) == expected_ns / 1e9


@given(st.integers(-(10**15), 10**15))
def test_formatted_durations_parse_back_to_the_same_nanoseconds(nanoseconds: int) -> None:
    seconds = nanoseconds / 1e9
    assert round(parse_go_duration("D", format_go_duration(seconds)) * 1e9) == round(seconds * 1e9)
