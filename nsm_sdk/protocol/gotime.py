"""Go time formats on the wire: RFC3339Nano text and protobuf Timestamps, as epoch seconds.

`nsm-client-token-expires` carries Go's `time.RFC3339Nano` text (protocol doc §1.4, §12 item 4):
`2026-04-07T10:24:14.123456789Z`. Go writes UTC as `Z`, drops trailing zeros of the fraction and the
whole fraction when it is zero; its parser takes `Z` or `±hh:mm` and any number of fraction digits.

Times are epoch seconds as `float` in the rest of the protocol layer. A float near 2026 only holds
about 0.2 µs, so the float API rounds to microseconds; the `*_ns` variants are exact.
"""

from __future__ import annotations

import datetime as _dt
import re

from google.protobuf import timestamp_pb2

from nsm_sdk.protocol.errors import ProtocolError

NANOS_PER_SECOND = 1_000_000_000
_MICROS_PER_SECOND = 1_000_000

_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})T(?P<hh>\d{2}):(?P<mm>\d{2}):(?P<ss>\d{2})"
    r"(?:\.(?P<frac>\d+))?"
    r"(?:(?P<z>Z)|(?P<sign>[+-])(?P<oh>\d{2}):(?P<om>\d{2}))"
)


def epoch_to_ns(epoch: float) -> int:
    """Epoch seconds → integer nanoseconds, rounded to the microsecond a float can hold."""
    return round(epoch * _MICROS_PER_SECOND) * 1000


def ns_to_epoch(epoch_ns: int) -> float:
    return epoch_ns / NANOS_PER_SECOND


def format_rfc3339nano_ns(epoch_ns: int) -> str:
    """Format like Go's `t.UTC().Format(time.RFC3339Nano)`."""
    seconds, nanos = divmod(epoch_ns, NANOS_PER_SECOND)
    stamp = _dt.datetime.fromtimestamp(seconds, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos:
        stamp += "." + f"{nanos:09d}".rstrip("0")
    return stamp + "Z"


def format_rfc3339nano(epoch: float) -> str:
    return format_rfc3339nano_ns(epoch_to_ns(epoch))


def parse_rfc3339nano_ns(text: str) -> int:
    """Parse Go RFC3339 / RFC3339Nano text into epoch nanoseconds.

    Accepts `Z` or a `±hh:mm` offset and a fraction of any length (digits past the ninth are dropped,
    as Go does). Raises ProtocolError for anything else.
    """
    found = _RFC3339.fullmatch(text)
    if found is None:
        raise ProtocolError(f"cannot parse {text!r} as RFC3339 time")
    try:
        day = _dt.date.fromisoformat(found["date"])
        clock = _dt.time(int(found["hh"]), int(found["mm"]), int(found["ss"]))
        offset = _dt.timedelta(0)
        if found["z"] is None:
            if int(found["oh"]) > 23 or int(found["om"]) > 59:
                raise ValueError("time zone offset out of range")
            offset = _dt.timedelta(hours=int(found["oh"]), minutes=int(found["om"]))
            if found["sign"] == "-":
                offset = -offset
        moment = _dt.datetime.combine(day, clock, tzinfo=_dt.timezone(offset))
    except ValueError as exc:
        raise ProtocolError(f"cannot parse {text!r} as RFC3339 time: {exc}") from exc
    whole = (moment - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)) // _dt.timedelta(seconds=1)
    nanos = int(((found["frac"] or "") + "000000000")[:9])
    return whole * NANOS_PER_SECOND + nanos


def parse_rfc3339nano(text: str) -> float:
    return ns_to_epoch(parse_rfc3339nano_ns(text))


def timestamp_to_epoch(stamp: timestamp_pb2.Timestamp) -> float:
    """Timestamp → epoch seconds (an unset Timestamp reads as 0.0, like Go's `AsTime()` of nil)."""
    return stamp.seconds + stamp.nanos / NANOS_PER_SECOND


def set_timestamp(stamp: timestamp_pb2.Timestamp, epoch: float) -> None:
    """Write epoch seconds into a Timestamp field in place (seconds floored, nanos in [0, 1e9))."""
    seconds, nanos = divmod(epoch_to_ns(epoch), NANOS_PER_SECOND)
    stamp.seconds = seconds
    stamp.nanos = nanos


def epoch_to_timestamp(epoch: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    set_timestamp(stamp, epoch)
    return stamp
