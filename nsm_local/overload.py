"""Is nsm-local keeping up? The event loop's lag, measured by a probe, decides how strictly it expires.

nsm-local runs on one thread. When refreshes arrive faster than it can serve them (200 links with 5 s
tokens on two cores, docs/performance.md "Soak"), they wait in its queues, and a refresh that arrived in
time can still be served after the connection's close deadline (the caller's expiry minus its request
timeout, Go's `timeout` server). Closing then removes a live link, and the client's reselect adds the work
that makes the next refreshes later still. So while the loop lags, an expiry is put off until just before
the caller's token itself expires (`manager.CLOSE_MARGIN`): the refresh that is queued gets its chance, and
an abandoned connection still goes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

PROBE_INTERVAL = 0.1
"""Seconds between two probes: the lag is how much later than this the probe wakes."""

WINDOW = 2.0
"""Seconds of probes the judgement looks back on: one slow moment keeps it overloaded for that long."""

OVERLOADED_LAG = 0.2
"""A lag this large means requests wait in queues: a healthy nsm-local's is a few ms."""


class LoopLag:
    """The worst lag of the event loop over the last `WINDOW` seconds, from a probe that `run` drives."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque()  # (when, lag)

    def record(self, lag: float) -> None:
        now = self._clock()
        self._samples.append((now, lag))
        while self._samples and self._samples[0][0] < now - WINDOW:
            self._samples.popleft()

    def recent(self) -> float:
        """The largest lag seen in the window (0 before the first probe, or after a quiet window)."""
        cutoff = self._clock() - WINDOW
        return max((lag for when, lag in self._samples if when >= cutoff), default=0.0)

    def overloaded(self) -> bool:
        return self.recent() >= OVERLOADED_LAG

    async def run(self) -> None:
        """Probe until cancelled."""
        while True:
            started = self._clock()
            await asyncio.sleep(PROBE_INTERVAL)
            self.record(max(0.0, self._clock() - started - PROBE_INTERVAL))
