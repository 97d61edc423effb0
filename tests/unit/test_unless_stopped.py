"""`unless_stopped`: a stop signal never waits out a call's deadline."""

from __future__ import annotations

import asyncio

import pytest

from nsm_sdk.agent.lifecycle import Stopped, unless_stopped


def test_the_result_of_a_call_that_ends_first_is_returned() -> None:
    async def main() -> int:
        return await unless_stopped(asyncio.Event(), asyncio.sleep(0, result=7))

    assert asyncio.run(main()) == 7


def test_a_stop_cancels_the_call_in_flight_and_raises_stopped() -> None:
    cancelled = []

    async def slow_call() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        with pytest.raises(Stopped):
            await unless_stopped(stop, slow_call())

    asyncio.run(asyncio.wait_for(main(), 5))
    assert cancelled == [True]


def test_a_failing_call_raises_its_own_error() -> None:
    async def failing() -> None:
        raise ValueError("no")

    async def main() -> None:
        await unless_stopped(asyncio.Event(), failing())

    with pytest.raises(ValueError, match="no"):
        asyncio.run(main())


def test_a_stop_already_set_never_lets_a_call_run_on() -> None:
    async def main() -> None:
        stop = asyncio.Event()
        stop.set()
        await unless_stopped(stop, asyncio.sleep(60))

    with pytest.raises(Stopped):
        asyncio.run(asyncio.wait_for(main(), 5))
