"""nsm-local's Kubernetes reflector (list + watch) against a scripted source: resume from resourceVersion,
re-list on 410, backoff and its logs, and the thread bridge over a blocking client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from nsm_local.kube.errors import KubeApiError, KubeUnreachable, ResourceExpired
from nsm_local.kube.reflector import (
    KubeObject,
    Listing,
    ThreadedSource,
    WatchEvent,
    in_daemon_thread,
    reflect,
)
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.protocol.timing import Backoff

T = TypeVar("T")
FAST = Backoff(base=0.001, factor=2.0, cap=0.004)
LOG = EventLog("test.reflector")


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(10):
            return await main()

    return asyncio.run(bounded())


def obj(name: str, version: str) -> KubeObject:
    return {"metadata": {"name": name, "resourceVersion": version}}


def event(kind: str, name: str, version: str) -> WatchEvent:
    return WatchEvent(kind, obj(name, version))


class ScriptedSource:
    """Answers list and watch calls from scripts; once a script is used up, a watch waits forever."""

    what = "things"

    def __init__(self, lists: list[Listing | Exception], watches: list[list[WatchEvent | Exception]]) -> None:
        self.lists = lists
        self.watches = watches
        self.calls: list[tuple[str, str | None]] = []
        self.idle = asyncio.Event()

    async def list(self) -> Listing:
        self.calls.append(("list", None))
        item = self.lists.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async def watch(self, resource_version: str, timeout_seconds: int) -> AsyncGenerator[WatchEvent, None]:
        self.calls.append(("watch", resource_version))
        if not self.watches:
            self.idle.set()
            await asyncio.Event().wait()
        for item in self.watches.pop(0):
            if isinstance(item, Exception):
                raise item
            yield item


class Recorder:
    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self.log: list[str] = []

    def replace(self, items: list[KubeObject]) -> None:
        self.state = {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in items}
        self.log.append(f"replace {sorted(self.state)}")

    def apply(self, e: WatchEvent) -> None:
        name = e.object["metadata"]["name"]
        if e.type == "DELETED":
            self.state.pop(name, None)
        else:
            self.state[name] = e.object["metadata"]["resourceVersion"]
        self.log.append(f"{e.type} {name}")


def ticking() -> Callable[[], float]:
    """A clock that moves 10 s per reading: no watch ever looks like it ended at once."""
    now = [0.0]

    def clock() -> float:
        now[0] += 10.0
        return now[0]

    return clock


async def reflect_until_idle(source: ScriptedSource, handler: Recorder, **kwargs: Any) -> asyncio.Event:
    synced = asyncio.Event()
    kwargs.setdefault("clock", ticking())
    kwargs.setdefault("backoff", FAST)
    task = asyncio.create_task(reflect(source, handler, LOG, synced, rng=random.Random(1), **kwargs))
    await source.idle.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return synced


def test_list_then_watch_from_its_version_and_resume_where_a_watch_stopped() -> None:
    source = ScriptedSource(
        [Listing([obj("a", "5")], "10")],
        [
            [event("ADDED", "b", "11"), event("MODIFIED", "a", "12")],
            [WatchEvent("BOOKMARK", {"metadata": {"resourceVersion": "20"}})],
            [event("DELETED", "b", "21")],
        ],
    )
    handler = Recorder()
    synced = run(lambda: reflect_until_idle(source, handler))
    assert synced.is_set()
    assert source.calls == [
        ("list", None),
        ("watch", "10"),
        ("watch", "12"),
        ("watch", "20"),
        ("watch", "21"),
    ]
    assert handler.log == ["replace ['a']", "ADDED b", "MODIFIED a", "DELETED b"], "bookmarks are not events"
    assert handler.state == {"a": "12"}


def test_410_lists_again_at_once_and_the_list_replaces_everything() -> None:
    source = ScriptedSource(
        [Listing([obj("a", "1")], "1"), Listing([obj("c", "40")], "40")],
        [[event("ADDED", "b", "2"), ResourceExpired("too old")]],
    )
    handler = Recorder()
    run(lambda: reflect_until_idle(source, handler))
    assert source.calls == [("list", None), ("watch", "1"), ("list", None), ("watch", "40")]
    assert handler.state == {"c": "40"}


def test_failures_back_off_are_logged_once_and_the_recovery_too(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    down = KubeUnreachable("cannot reach the API: connection refused")
    source = ScriptedSource(
        [down, down, KubeApiError(403, "forbidden"), Listing([], "3")],
        [[event("ADDED", "a", "4")], [KubeUnreachable("watch broke")], [event("ADDED", "b", "5")]],
    )
    handler = Recorder()
    run(lambda: reflect_until_idle(source, handler))
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("kube.unavailable") == 3, "twice the same error is said once; a new one again"
    assert messages.count("kube.recovered") == 2
    assert source.calls[-3:] == [("watch", "4"), ("watch", "4"), ("watch", "5")], (
        "a broken watch resumes from its version"
    )
    assert handler.state == {"a": "4", "b": "5"}


def test_the_delays_grow_then_start_over_after_a_success(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float) -> None:
        slept.append(delay)
        await real_sleep(0)

    down = KubeUnreachable("down")
    source = ScriptedSource([down, down, down, Listing([], "1")], [[down], [event("ADDED", "a", "2")]])
    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    run(lambda: reflect_until_idle(source, Recorder(), backoff=Backoff(1.0, 2.0, 3.0)))
    assert [d for d in slept if d > 0] == [1.0, 2.0, 3.0, 1.0]


def test_a_watch_that_ends_at_once_is_a_failure_not_a_busy_loop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    source = ScriptedSource([Listing([], "1")], [[], []])
    run(lambda: reflect_until_idle(source, Recorder(), clock=lambda: 0.0))
    assert "kube.unavailable" in [r.getMessage() for r in caplog.records]
    assert source.calls == [("list", None), ("watch", "1"), ("watch", "1"), ("watch", "1")]


def test_a_handler_bug_is_logged_and_followed_by_a_fresh_list(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)

    class Fragile(Recorder):
        def apply(self, e: WatchEvent) -> None:
            if e.object["metadata"]["name"] == "bad":
                raise KeyError("spec")
            super().apply(e)

    source = ScriptedSource([Listing([], "1"), Listing([obj("a", "3")], "3")], [[event("ADDED", "bad", "2")]])
    handler = Fragile()
    run(lambda: reflect_until_idle(source, handler))
    assert "kube.failed" in [r.getMessage() for r in caplog.records]
    assert source.calls == [("list", None), ("watch", "1"), ("list", None), ("watch", "3")]
    assert handler.state == {"a": "3"}


# --- ThreadedSource: the blocking client's calls in daemon threads ---------------------------------------


class BlockingStream:
    def __init__(self, events: list[WatchEvent], then_block: bool) -> None:
        self.events = events
        self.then_block = then_block
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[WatchEvent]:
        yield from self.events
        if self.then_block:
            self.closed.wait(10)

    def close(self) -> None:
        self.closed.set()


class BlockingResource:
    what = "blocking things"

    def __init__(self) -> None:
        self.streams: list[BlockingStream] = []
        self.threads: list[str] = []

    def list(self) -> Listing:
        self.threads.append(threading.current_thread().name)
        return Listing([obj("a", "1")], "1")

    def watch(self, resource_version: str, timeout_seconds: int) -> BlockingStream:
        if resource_version == "bad":
            raise KubeApiError(403, "forbidden")
        stream = BlockingStream([event("ADDED", "b", "2")], then_block=resource_version == "block")
        self.streams.append(stream)
        return stream


def test_threaded_source_lists_and_watches_off_the_loop() -> None:
    blocking = BlockingResource()
    source = ThreadedSource(blocking)

    async def main() -> None:
        listing = await source.list()
        assert listing.resource_version == "1"
        assert blocking.threads == ["list blocking things"]
        assert [e.type async for e in source.watch("1", 5)] == ["ADDED"], "a watch that ends ends"
        with pytest.raises(KubeApiError, match="forbidden"):
            async for _ in source.watch("bad", 5):
                pass
        started = time.monotonic()
        async with contextlib.aclosing(source.watch("block", 5)) as events:
            async for _ in events:
                break  # leaving early closes the blocking stream, which ends its thread
        assert blocking.streams[-1].closed.wait(2)
        assert time.monotonic() - started < 2

    run(main)


def test_in_daemon_thread_hands_back_results_and_errors() -> None:
    async def main() -> None:
        assert await in_daemon_thread(lambda: 42) == 42
        with pytest.raises(ValueError, match="nope"):
            await in_daemon_thread(lambda: int("nope"))

        gate = threading.Event()
        waiting = asyncio.create_task(in_daemon_thread(lambda: gate.wait(5)))
        await asyncio.sleep(0.01)
        waiting.cancel()  # abandoning the wait leaves the thread to end by itself
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gate.set()

    run(main)
