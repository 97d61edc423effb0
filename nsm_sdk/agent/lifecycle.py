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
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

from nsm_sdk.agent.logs import EventLog, setup_logging
from nsm_sdk.agent.metrics import MetricsEndpoint, open_metrics
from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.version import NSM_API_VERSION, package_version, version_line

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def _force_exit() -> None:
    os._exit(1)


async def run_agent(
    main: Callable[[asyncio.Event], Awaitable[None]], backstop: float, metrics: MetricsEndpoint | None = None
) -> None:
    """Run `main(stop)` until it returns; `stop` is set by the first stop signal.

    `backstop` bounds the time from the first signal to process exit.
    """
    loop = asyncio.get_running_loop()
    if metrics is not None:
        metrics.watch_loop(loop)
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


ABANDONED_GRACE = 0.3
"""Seconds a stopping agent gives to undoing a call it cut short (`Stopped`), whose outcome it does not
know: a Close of what the manager may have made after all. Enough for a manager that answers; one that
does not would only keep the stop waiting, and what it made ends when its tokens expire."""


class Stopped(Exception):
    """A call was cancelled because the agent is stopping (`unless_stopped`)."""


async def unless_stopped(stop: asyncio.Event, call: Awaitable[T]) -> T:
    """`call`'s result; or, as soon as `stop` is set, `call` cancelled and Stopped raised: a stop signal
    never waits out a request's deadline (a manager that is gone, an endpoint that is slow)."""
    work = asyncio.ensure_future(call)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    if work.cancelled() and stop.is_set():
        raise Stopped
    return work.result()


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


class AgentSettings(Protocol):
    @property
    def log_level(self) -> str: ...

    @property
    def request_timeout(self) -> float: ...


SettingsT = TypeVar("SettingsT", bound=AgentSettings)


def agent_main(
    program: str,
    load: Callable[[Mapping[str, str]], SettingsT],
    agent: Callable[[SettingsT, asyncio.Event], Awaitable[None]],
    backstop: Callable[[SettingsT], float] | None = None,
    usage: str | None = None,
) -> None:
    """Entrypoint of a sidecar: settings from the environment (bad ones: one line, exit 2), the optional
    metrics endpoint (`NSM_PROMETHEUS_LISTEN_ON`, see metrics.py), then the agent until a stop signal; the
    backstop leaves time for closing within the request timeout (`backstop(settings)`: an agent host,
    which closes many routers' links, says how long instead). With `usage` (what `--help` prints) the
    program takes no other argument than `--help` and `--version`; without it, its caller parsed them."""
    arguments = sys.argv[1:]
    if arguments == ["--version"]:
        print(version_line(program))
        sys.exit(0)
    if usage is not None and arguments in (["--help"], ["-h"]):
        print(usage)
        sys.exit(0)
    if usage is not None and arguments:
        print(
            f"{program}: unexpected argument {arguments[0]!r}: configuration comes from the environment "
            f"(`{program} --help` lists it)",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        settings = load(os.environ)
        metrics = open_metrics(os.environ)
    except ConfigError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(program, settings.log_level)
    EventLog("nsm_sdk.agent.lifecycle").info(
        "program.start", version=package_version(), nsm_api=NSM_API_VERSION
    )
    if metrics is not None:
        metrics.count_events()
    try:
        limit = backstop(settings) if backstop is not None else settings.request_timeout + 5
        asyncio.run(run_agent(lambda stop: agent(settings, stop), limit, metrics))
    finally:
        if metrics is not None:
            metrics.close()
