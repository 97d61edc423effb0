"""List + watch of one kind of Kubernetes object, kept up to date for a handler (a client-go reflector).

The loop (`reflect`): list (the handler gets the whole set, `replace`), then watch from the list's
resourceVersion (the handler gets each change, `apply`); every event and bookmark moves the
resourceVersion on, so a watch that ends (the server closes it after `watch_timeout`) is resumed where it
stopped, without a new list. A 410 Gone (the resourceVersion is too old) lists again at once. Any other
failure (no answer, an error status) is logged when it first happens or changes, and retried with
exponential backoff; the first success after it logs the recovery. An unexpected exception (a bug) is
logged with its type and treated the same way, followed by a fresh list: a control plane that serves the
node's links must not stop because one event could not be handled. The loop runs until cancelled.

The official client is blocking; `ThreadedSource` runs its calls in daemon threads (never the loop's
default executor: a watch blocks for minutes, and the executor is joined at shutdown) and hands events to
the loop. Closing a watch early shuts its connection down, so the thread ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from nsm_local.kube.errors import KubeError, ResourceExpired
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.protocol.timing import Backoff

KubeObject = dict[str, Any]
"""An API object as JSON (camelCase keys), e.g. a NetworkService or a Pod."""

KUBE_RETRY = Backoff(base=0.5, factor=2.0, cap=30.0, jitter=0.2)
"""Between failed lists or watches: 0.5 s doubling to 30 s, shortened by up to a fifth (no thundering herd
of DaemonSet pods after an API server restart)."""
WATCH_TIMEOUT = 300
"""Seconds the API server keeps one watch open (it then ends it cleanly; we resume from our version)."""
QUICK_END = 1.0
"""A watch that ends sooner than this without an event is treated as a failure (no busy loop)."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Listing:
    items: list[KubeObject]
    resource_version: str


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str
    """ADDED, MODIFIED, DELETED or BOOKMARK (ERROR events are raised as errors by the client)."""
    object: KubeObject

    @property
    def resource_version(self) -> str | None:
        metadata = self.object.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        return str(version) if version else None


class WatchStream(Protocol):
    """A blocking watch: iterate for events; `close` from another thread ends the iteration."""

    def __iter__(self) -> Iterator[WatchEvent]: ...

    def close(self) -> None: ...


class BlockingResource(Protocol):
    """One kind of object through a blocking client (what `client.KubeApi` hands out)."""

    @property
    def what(self) -> str: ...

    def list(self) -> Listing: ...

    def watch(self, resource_version: str, timeout_seconds: int) -> WatchStream: ...


class Source(Protocol):
    """One kind of object, for the event loop."""

    @property
    def what(self) -> str: ...

    async def list(self) -> Listing: ...

    def watch(self, resource_version: str, timeout_seconds: int) -> AsyncGenerator[WatchEvent, None]: ...


class Handler(Protocol):
    """Keeps a view of the objects; must not raise (a bad object is the handler's to log and skip)."""

    def replace(self, items: list[KubeObject]) -> None: ...

    def apply(self, event: WatchEvent) -> None: ...


def _deliver(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(callback, *args)


async def in_daemon_thread(job: Callable[[], T], name: str = "kube") -> T:
    """`job()` in a daemon thread of its own; cancelling the wait abandons the thread (it ends by itself)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)  # type: ignore[arg-type]

    def run() -> None:
        try:
            outcome = job()
        except Exception as exc:  # handed to the waiting coroutine
            _deliver(loop, settle, None, exc)
        else:
            _deliver(loop, settle, outcome, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


class ThreadedSource:
    """A `Source` over a `BlockingResource`: each call in a daemon thread, events through a queue."""

    def __init__(self, blocking: BlockingResource) -> None:
        self._blocking = blocking

    def __repr__(self) -> str:
        return f"<ThreadedSource {self.what}>"

    @property
    def what(self) -> str:
        return self._blocking.what

    async def list(self) -> Listing:
        return await in_daemon_thread(self._blocking.list, f"list {self.what}")

    async def watch(self, resource_version: str, timeout_seconds: int) -> AsyncGenerator[WatchEvent, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[WatchEvent | BaseException | None] = asyncio.Queue()
        lock = threading.Lock()
        state: dict[str, Any] = {"stream": None, "abandoned": False}

        def run() -> None:
            try:
                stream = self._blocking.watch(resource_version, timeout_seconds)
                with lock:
                    if state["abandoned"]:
                        stream.close()
                        return
                    state["stream"] = stream
                for event in stream:
                    if state["abandoned"]:
                        return
                    _deliver(loop, queue.put_nowait, event)
            except Exception as exc:  # handed to the loop
                if not state["abandoned"]:
                    _deliver(loop, queue.put_nowait, exc)
                return
            _deliver(loop, queue.put_nowait, None)

        threading.Thread(target=run, name=f"watch {self.what}", daemon=True).start()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            with lock:
                state["abandoned"] = True
                stream = state["stream"]
            if stream is not None:
                stream.close()


async def reflect(
    source: Source,
    handler: Handler,
    log: EventLog,
    synced: asyncio.Event | None = None,
    *,
    backoff: Backoff = KUBE_RETRY,
    watch_timeout: int = WATCH_TIMEOUT,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Keep `handler` up to date with `source` until cancelled; `synced` is set after the first list."""
    rng = rng if rng is not None else random.Random()
    retry = _Retry(backoff, rng, source.what, log)
    version: str | None = None
    while True:
        try:
            if version is None:
                listing = await source.list()
                handler.replace(listing.items)
                version = listing.resource_version
                log.info(
                    "kube.listed", resource=source.what, items=len(listing.items), resource_version=version
                )
                retry.succeeded()
                if synced is not None:
                    synced.set()
            started, events = clock(), 0
            # closed at once whatever ends the loop (a handler's exception too): that ends the watch's thread
            async with contextlib.aclosing(source.watch(version, watch_timeout)) as stream:
                async for event in stream:
                    version = event.resource_version or version
                    events += 1
                    if event.type != "BOOKMARK":
                        handler.apply(event)
                    retry.succeeded()
            if events == 0 and clock() - started < QUICK_END:
                raise KubeError(f"the watch of {source.what} ended at once")
        except ResourceExpired as exc:
            log.info("kube.watch_expired", resource=source.what, resource_version=version, detail=str(exc))
            version = None
        except KubeError as exc:
            await asyncio.sleep(retry.failed(exc))
        except Exception as exc:  # a bug: log it, start over from a fresh list after a pause
            log.error("kube.failed", resource=source.what, error=f"{type(exc).__name__}: {exc}")
            version = None
            await asyncio.sleep(retry.failed(KubeError(f"{type(exc).__name__}: {exc}")))


class _Retry:
    """Backoff and the logs of one reflector: a failure is logged when it starts or changes, the recovery
    once; the delays start over after a success."""

    def __init__(self, backoff: Backoff, rng: random.Random, what: str, log: EventLog) -> None:
        self._backoff = backoff
        self._rng = rng
        self._what = what
        self._log = log
        self._delays = backoff.delays(rng)
        self.trouble: str | None = None

    def failed(self, exc: KubeError) -> float:
        if str(exc) != self.trouble:
            self._log.warning("kube.unavailable", resource=self._what, error=str(exc))
            self.trouble = str(exc)
        return next(self._delays)

    def succeeded(self) -> None:
        if self.trouble is not None:
            self._log.info("kube.recovered", resource=self._what)
            self.trouble = None
            self._delays = self._backoff.delays(self._rng)
