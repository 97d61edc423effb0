"""When to refresh, when a server closes, how long to wait between retries (protocol doc §5.3, §8.3, §11).

Every function takes `now` (epoch seconds) and returns a delay or deadline in seconds; nothing reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk.protocol.errors import ProtocolError
from nsm_sdk.protocol.path import min_expiry

MIN_DELAY = 1e-9
"""What Go's refresh returns (1 ns) when a segment is already expired or has no `expires` (§5.3)."""

RETRY_INTERVAL = 0.2
"""NSM's fixed retry interval for failed refreshes and registry calls (§5.3, §11)."""


def client_refresh_delay(conn: Connection, now: float) -> float:
    """Delay until the client refreshes `conn` (Go refresh `after()`, §5.3).

    scale * (earliest segment expiry - now), scale = 1/3 for a one-segment path, otherwise
    0.2 + 0.2 * index / len(segments). An empty path, an expired segment or one without `expires`
    gives MIN_DELAY; the result is never negative.
    """
    earliest = min_expiry(conn)
    if earliest is None or earliest <= now:
        return MIN_DELAY
    segments = len(conn.path.path_segments)
    scale = 1.0 / 3.0 if segments == 1 else 0.2 + 0.2 * conn.path.index / segments
    return max((earliest - now) * scale, MIN_DELAY)


def registration_refresh_delay(expiration_time: float | None, now: float) -> float | None:
    """Delay until an NSE re-registers: 2/3 of the time left before `expiration_time` (§8.3).

    None when the reply carried no expiration_time (Go then never refreshes); never negative.
    """
    if expiration_time is None:
        return None
    return max(2.0 * (expiration_time - now) / 3.0, 0.0)


def server_close_deadline(prev_expires: float | None, request_timeout: float) -> float:
    """Absolute time at which a server auto-closes a connection (Go `timeout` server, §4.4).

    prev_expires is the caller's segment expiry; request_timeout what was left of the Request's deadline
    (0 without a deadline). A missing expiry is Go's error.
    """
    if prev_expires is None:
        raise ProtocolError("expiration for the previous path segment cannot be nil")
    return prev_expires - max(request_timeout, 0.0)


class UniformSource(Protocol):
    """What Backoff needs of a random generator (`random.Random` fits)."""

    def random(self) -> float: ...


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: base * factor**n, capped, each delay shortened by up to `jitter` (a fraction).

    `Backoff(0.2, 1.0, 0.2, 0.0)` is NSM's fixed 200 ms retry. With jitter j the n-th delay lies in
    [(1 - j) * d, d] for d = min(cap, base * factor**n), so it never exceeds the cap.
    """

    base: float
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError(f"backoff base and cap must not be negative: {self}")
        if self.factor < 1.0:
            raise ValueError(f"backoff factor must be at least 1: {self}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"backoff jitter must lie in [0, 1]: {self}")

    def delays(self, rng: UniformSource) -> Iterator[float]:
        """Endless delays for attempts 1, 2, 3, ...; the caller stops iterating when it gives up."""
        delay = min(self.base, self.cap)
        while True:
            yield delay * (1.0 - self.jitter * rng.random()) if self.jitter else delay
            delay = min(delay * self.factor, self.cap)


NSM_RETRY = Backoff(base=RETRY_INTERVAL, factor=1.0, cap=RETRY_INTERVAL, jitter=0.0)
