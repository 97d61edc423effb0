"""Go ``time.ParseDuration`` syntax, as used by every ``NSM_*_TIMEOUT``/``_LIFETIME`` variable (§2.2, §2.3).

A duration is an optional sign and one or more ``<decimal><unit>`` terms, e.g. ``300ms``, ``1m30s``,
``1.5h``; units are ``ns``, ``us``/``µs``/``μs``, ``ms``, ``s``, ``m`` and ``h``. A lone ``0`` needs no
unit. Like Go we work in whole nanoseconds (fractions of a nanosecond are cut off) and reject anything
beyond ``2**63 - 1`` ns. Surrounding whitespace is ignored; whitespace inside is an error.
"""

from __future__ import annotations

import re
from fractions import Fraction

from nsm_sdk.protocol.errors import ConfigError

#: Nanoseconds per unit, as in Go's ``time`` package.
UNIT_NANOSECONDS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek small letter mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}

_MAX_NANOSECONDS = 2**63 - 1
# ASCII digits only, as Go: `\d` would also take other scripts' digits.
_NUMBER = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)"
_TERM = re.compile(rf"({_NUMBER})([^0-9.]*)")
# More integer digits than this (after leading zeros) is beyond 2**63 ns in any unit; fraction digits past
# this many are below a nanosecond in any unit. Bounding both keeps huge inputs cheap and within int().
_MAX_INTEGER_DIGITS = 20
_MAX_FRACTION_DIGITS = 30
_HINT = "use Go duration syntax, e.g. 300ms, 15s, 1m30s, 10m"


def parse_go_duration(variable: str, text: str) -> float:
    """Seconds in ``text`` (Go duration syntax); zero and negative durations are allowed."""
    body = text.strip()
    sign = 1
    if body[:1] in ("+", "-"):
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise ConfigError(variable, text, f"empty duration; {_HINT}")
    nanoseconds = Fraction(0)
    position = 0
    while position < len(body):
        match = _TERM.match(body, position)
        if match is None:
            raise ConfigError(variable, text, f"invalid duration; {_HINT}")
        number, unit = match.groups()
        if not unit:
            raise ConfigError(variable, text, f"missing unit after {number!r}; {_HINT}")
        if unit not in UNIT_NANOSECONDS:
            raise ConfigError(variable, text, f"unknown unit {unit!r}; {_HINT}")
        value = _decimal(number)
        if value is None:
            raise ConfigError(variable, text, "duration is too large (more than about 292 years)")
        nanoseconds += value * UNIT_NANOSECONDS[unit]
        position = match.end()
    whole = int(nanoseconds)  # truncates like Go
    if whole > _MAX_NANOSECONDS:
        raise ConfigError(variable, text, "duration is too large (more than about 292 years)")
    return sign * whole / 1e9


def _decimal(number: str) -> Fraction | None:
    """``number`` (ASCII digits, at most one ``.``) exactly, or None when it is beyond any duration."""
    whole, _, fraction = number.partition(".")
    whole = whole.lstrip("0")
    if len(whole) > _MAX_INTEGER_DIGITS:
        return None
    fraction = fraction[:_MAX_FRACTION_DIGITS]
    return Fraction(int(whole or "0")) + Fraction(int(fraction or "0"), 10 ** len(fraction))


def parse_positive_duration(variable: str, text: str) -> float:
    """Like `parse_go_duration`, but the result must be greater than zero (timeouts, lifetimes)."""
    seconds = parse_go_duration(variable, text)
    if seconds <= 0:
        raise ConfigError(variable, text, "duration must be greater than 0")
    return seconds


def format_go_duration(seconds: float) -> str:
    """``seconds`` in Go syntax (whole nanoseconds), e.g. ``1m30s``, ``300ms``; for logs and docs."""
    nanoseconds = round(seconds * 1e9)
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    nanoseconds = abs(nanoseconds)
    if nanoseconds < 1_000_000_000:
        for unit in ("ms", "us", "ns"):
            if nanoseconds % UNIT_NANOSECONDS[unit] == 0:
                return f"{sign}{nanoseconds // UNIT_NANOSECONDS[unit]}{unit}"
    hours, rest = divmod(nanoseconds, UNIT_NANOSECONDS["h"])
    minutes, rest = divmod(rest, UNIT_NANOSECONDS["m"])
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or (hours and rest) else "")
    if rest or not text:
        whole, fraction = divmod(rest, UNIT_NANOSECONDS["s"])
        text += f"{whole}.{fraction:09d}".rstrip("0").rstrip(".") + "s"
    return sign + text
