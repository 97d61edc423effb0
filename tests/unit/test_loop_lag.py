"""nsm-local's overload gauge: the worst event-loop lag over a sliding window."""

from __future__ import annotations

import asyncio
import time

from nsm_local.overload import OVERLOADED_LAG, WINDOW, LoopLag


def test_the_worst_lag_counts_until_it_leaves_the_window() -> None:
    now = [10.0]
    lag = LoopLag(clock=lambda: now[0])
    assert lag.recent() == 0.0 and not lag.overloaded()
    lag.record(OVERLOADED_LAG)
    now[0] += 0.5
    lag.record(0.001)
    assert lag.recent() == OVERLOADED_LAG and lag.overloaded()
    now[0] += WINDOW  # the slow probe is older than the window now
    assert not lag.overloaded()
    now[0] += 1.0
    lag.record(0.002)
    assert lag.recent() == 0.002 and len(lag._samples) == 1, "old samples are dropped"


def test_the_probe_sees_a_loop_blocked_by_synchronous_work() -> None:
    async def main() -> float:
        lag = LoopLag()
        probe = asyncio.create_task(lag.run())
        await asyncio.sleep(0.15)  # one quiet probe
        quiet = lag.recent()
        time.sleep(0.3)  # noqa: ASYNC251  (on purpose: the loop cannot run the probe meanwhile)
        await asyncio.sleep(0.15)
        probe.cancel()
        assert quiet < OVERLOADED_LAG
        return lag.recent()

    assert asyncio.run(main()) >= 0.2
