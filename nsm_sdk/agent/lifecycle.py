"""Process lifecycle shared by the agents: signals only set a flag; one coroutine owns shutdown.

A first SIGTERM/SIGINT/SIGHUP/SIGQUIT sets `stop`; the agent then closes its links in a bounded, fixed
order. A second signal, or the backstop timer, ends the process at once (exit code 1), so a stuck peer can
never keep a pod from terminating.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def _force_exit() -> None:
    os._exit(1)


async def run_agent(main: Callable[[asyncio.Event], Awaitable[None]], backstop: float) -> None:
    """Run `main(stop)` until it returns; `stop` is set by the first stop signal.

    `backstop` bounds the time from the first signal to process exit.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            _force_exit()
        stop.set()
        loop.call_later(backstop, _force_exit)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        await main(stop)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def sleep_or_stop(stop: asyncio.Event, delay: float) -> bool:
    """Wait `delay` seconds; return True early if `stop` was set, so no shutdown waits out a backoff."""
    if delay <= 0:
        return stop.is_set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()


class ReadinessFile:
    """Exists exactly while the agent is ready, for a Kubernetes exec probe (`test -f PATH`)."""

    def __init__(self, path: str | None) -> None:
        self._path = Path(path) if path else None
        self._ready = False
        if self._path is not None:  # left behind by a killed predecessor (e.g. `docker restart`): not ready
            self._path.unlink(missing_ok=True)

    def set(self, ready: bool) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        if self._path is None:
            return
        if ready:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._path.write_text("ready\n")
        else:
            self._path.unlink(missing_ok=True)

    @property
    def ready(self) -> bool:
        return self._ready


@contextlib.contextmanager
def readiness(path: str | None) -> Iterator[ReadinessFile]:
    marker = ReadinessFile(path)
    try:
        yield marker
    finally:
        marker.set(False)
