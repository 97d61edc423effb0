"""Per-connection locks that do not pile up (agent/keyed_locks.py) and background tasks with an owner
(agent/tasks.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from nsm_sdk.agent.keyed_locks import KeyedLocks
from nsm_sdk.agent.tasks import OwnedTasks


def test_one_key_is_held_by_one_caller_at_a_time_and_other_keys_are_free() -> None:
    async def main() -> None:
        locks, order = KeyedLocks(), []

        async def use(key: str, name: str, pause: float) -> None:
            async with locks.hold(key):
                order.append(f"{name}+")
                await asyncio.sleep(pause)
                order.append(f"{name}-")

        await asyncio.gather(use("c1", "a", 0.05), use("c1", "b", 0.0), use("c2", "x", 0.0))
        assert order.index("a-") < order.index("b+"), order
        assert order.index("x-") < order.index("a-"), "another key does not wait"
        assert len(locks) == 0

    asyncio.run(main())


def test_no_key_stays_behind_after_failures_cancellations_or_a_flood_of_ids() -> None:
    async def main() -> None:
        locks = KeyedLocks()
        for number in range(1000):
            with pytest.raises(ValueError):
                async with locks.hold(f"first-request-{number}"):
                    raise ValueError("refused")
        holder_entered = asyncio.Event()

        async def hold_long() -> None:
            async with locks.hold("busy"):
                holder_entered.set()
                await asyncio.sleep(10)

        async def wait_for_it() -> None:
            async with locks.hold("busy"):
                pass

        holder = asyncio.create_task(hold_long())
        await holder_entered.wait()
        waiter = asyncio.create_task(wait_for_it())
        await asyncio.sleep(0.01)
        assert len(locks) == 1
        waiter.cancel()
        holder.cancel()
        await asyncio.gather(holder, waiter, return_exceptions=True)
        assert len(locks) == 0

    asyncio.run(main())


def test_an_owned_task_that_fails_is_logged_and_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        tasks = OwnedTasks("test owner")

        async def broken() -> None:
            raise RuntimeError("boom")

        tasks.spawn(broken(), "expire c1")
        await asyncio.sleep(0.01)
        assert len(tasks) == 0

    caplog.set_level(logging.ERROR, logger="nsm_sdk.agent.tasks")
    asyncio.run(main())
    (record,) = [r for r in caplog.records if r.getMessage() == "task.failed"]
    assert record.fields == {"task": "test owner: expire c1"}  # type: ignore[attr-defined]
    assert record.exc_info is not None and "boom" in str(record.exc_info[1])


def test_closing_the_owner_cancels_and_awaits_what_still_runs() -> None:
    async def main() -> None:
        tasks, cleaned = OwnedTasks("test owner"), asyncio.Event()

        async def long_running() -> None:
            try:
                await asyncio.sleep(10)
            finally:
                cleaned.set()

        task = tasks.spawn(long_running(), "watch c1")
        await asyncio.sleep(0)
        await tasks.aclose()
        assert task.cancelled() and cleaned.is_set() and len(tasks) == 0

    asyncio.run(main())
