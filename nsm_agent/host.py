"""An agent host: the agents of many routers in one process (nsm-topo's agent mode for big local labs).

Each router is still its own NSM client and endpoint: its own name, its own SVID, manager connection,
links, refreshes and registration, run by `run_router` exactly as in a router's own process. What the host
shares is the interpreter, the event loop and the imports, which are most of an agent's memory and start-up
(docs/performance.md). It acts for each router through the router's netns fd (`delegated`): nsm-local
attests the fd the host sends with its first bytes, so every router gets the identity its namespace would
give a sidecar running in it, and no router can touch another's connections.

The routers file (JSON, written by `nsm-topo up --agents`):

    {"routers": [{"netns": "/run/netns/lab-r1", "env": {"NSM_NAME": "lab-r1", ...}}, ...]}

`env` is a router's sidecar environment, laid over the host's own. A router whose agents fail is started
again after a backoff, so one router's fault never takes the others down. `--status FILE` keeps a small
JSON summary (routers, ready, the first few not ready) for whoever waits for the lab.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nsm_agent.router import RouterSettings, run_router
from nsm_sdk.agent.lifecycle import ReadinessFile, sleep_or_stop
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.statefile import write_atomically
from nsm_sdk.protocol.envvalues import LogLevel
from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.protocol.timing import Backoff
from nsm_sdk.transport.peercred import is_network_namespace

RESTART = Backoff(base=1.0, factor=2.0, cap=30.0, jitter=0.1)
STATUS_EVERY = 0.25
"""Seconds between rewrites of the status file at most (it changes with every router that gets ready)."""
SHOWN_NOT_READY = 10


@dataclass(frozen=True)
class HostedRouter:
    netns: str
    settings: RouterSettings

    @property
    def name(self) -> str:
        return self.settings.name or Path(self.netns).name


@dataclass(frozen=True)
class HostSettings:
    routers: tuple[HostedRouter, ...]
    status_file: str | None

    @classmethod
    def load(cls, routers_file: str, status_file: str | None, base: Mapping[str, str]) -> HostSettings:
        """Every router's settings, checked before anything starts; ConfigError names the router."""
        try:
            data = json.loads(Path(routers_file).read_text())
            entries = data["routers"]
            if not isinstance(entries, list) or not entries:
                raise ValueError("'routers' must be a non-empty list")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError("--routers", routers_file, f"not a routers file: {exc}") from None
        routers = []
        for position, entry in enumerate(entries):
            where = f"router #{position}"
            if not isinstance(entry, dict) or not isinstance(entry.get("netns"), str):
                raise ConfigError("--routers", routers_file, f"{where}: needs a 'netns' path")
            env = entry.get("env", {})
            if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
                raise ConfigError("--routers", routers_file, f"{where}: 'env' must map names to strings")
            try:
                settings = RouterSettings.from_env({**base, **env})
            except ConfigError as exc:
                raise ConfigError(
                    exc.variable, exc.value, f"{exc.problem} ({where}, {entry['netns']})"
                ) from None
            routers.append(HostedRouter(entry["netns"], settings))
        names = [router.name for router in routers]
        if len(set(names)) != len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise ConfigError("--routers", routers_file, f"router name {twice!r} appears twice")
        ready_files = [r.settings.readiness_file for r in routers if r.settings.readiness_file is not None]
        if len(set(ready_files)) != len(ready_files):
            shared = next(path for path in ready_files if ready_files.count(path) > 1)
            raise ConfigError(
                "NSM_READY_FILE", shared, "several routers would share this file: give each its own"
            )
        return cls(tuple(routers), status_file)

    @property
    def log_level(self) -> LogLevel:
        return self.routers[0].settings.log_level

    @property
    def request_timeout(self) -> float:
        return max(router.settings.request_timeout for router in self.routers)

    @property
    def links(self) -> int:
        return sum(len(r.settings.client.links) for r in self.routers if r.settings.client is not None)

    @property
    def shutdown_backstop(self) -> float:
        """From SIGTERM to forced exit: a sidecar's request timeout + 5 s, plus `CLOSE_ALLOWANCE` per link,
        since the host closes its links `IN_FLIGHT` at a time."""
        return self.request_timeout + 5 + CLOSE_ALLOWANCE * self.links


class HostStatus:
    """Which routers are ready, written (atomically, throttled) to the status file if there is one."""

    def __init__(self, names: list[str], path: str | None) -> None:
        self._ready = dict.fromkeys(names, False)
        self._path = Path(path) if path else None
        self._dirty = asyncio.Event()

    def update(self, name: str, ready: bool) -> None:
        if self._ready[name] != ready:
            self._ready[name] = ready
            self._dirty.set()

    def summary(self) -> dict[str, object]:
        not_ready = [name for name, ready in self._ready.items() if not ready]
        return {
            "routers": len(self._ready),
            "ready": len(self._ready) - len(not_ready),
            "not_ready": not_ready[:SHOWN_NOT_READY],
            "pid": os.getpid(),
            "time": time.time(),
        }

    def write(self) -> None:
        if self._path is None:
            return
        write_atomically(self._path, json.dumps(self.summary()))

    async def keep_written(self) -> None:
        self.write()
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self.write()
            await asyncio.sleep(STATUS_EVERY)

    def remove(self) -> None:
        if self._path is not None:
            self._path.unlink(missing_ok=True)


def open_router_netns(path: str) -> int:
    """An fd of the router's namespace file (OSError if it is gone or is no network namespace)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if not is_network_namespace(fd):
        os.close(fd)
        raise OSError(f"{path} is not a network namespace")
    return fd


IN_FLIGHT = 32
"""Requests, Closes and registrations the host's routers have in flight at most, together: nsm-local
answers about a hundred a second on 2 cores, and a call that waits in its queue past its deadline is work
thrown away (and retried). With 32 in flight a call waits well under a second there."""
CLOSE_ALLOWANCE = 0.02
"""Seconds of shutdown allowed per link: nsm-local closes about 130 links a second at a lab's teardown (2
cores, docs/performance.md), so a host's thousand links may take 8 s and get 20."""
HOST_THREADS = 32
"""Worker threads of an agent host (kernel checks and removals of its routers' links)."""
CLIENTS_WAIT = 5.0
"""Seconds a host holds its clients back at most while its endpoints register."""


class Countdown:
    """`event` is set once each of `names` has said so (`done`), at once if there are none. A host holds
    its clients back until its endpoints have registered, and its endpoints until its clients have closed
    their links; `set_later` bounds each wait."""

    def __init__(self, names: Iterable[str]) -> None:
        self.event = asyncio.Event()
        self._left = set(names)
        if not self._left:
            self.event.set()

    def done(self, name: str) -> None:
        self._left.discard(name)
        if not self._left:
            self.event.set()


def playing(routers: Iterable[HostedRouter], role: str) -> list[str]:
    """The names of the routers that play `role` ("client" or "endpoint")."""
    return [router.name for router in routers if role in router.settings.present]


async def set_later(event: asyncio.Event, seconds: float, after: asyncio.Event | None = None) -> None:
    """Set `event` `seconds` from now, or from when `after` is set: a slow router must not hold up all."""
    if after is not None:
        await after.wait()
    await asyncio.sleep(seconds)
    event.set()


async def _supervise(
    router: HostedRouter,
    stop: asyncio.Event,
    status: HostStatus,
    registered: Countdown,
    clients_closed: Countdown,
    admission: asyncio.Semaphore,
    log: EventLog,
) -> None:
    """Run one router until `stop`; if its agents fail, say why and start them again after a backoff."""
    delays = RESTART.delays(random.Random())
    marker = ReadinessFile(router.settings.readiness_file)

    def report(ready: bool) -> None:
        marker.set(ready)
        status.update(router.name, ready)

    while not stop.is_set():
        try:
            netns_fd = open_router_netns(router.netns)
        except OSError as exc:
            log.error("router.netns_unavailable", router=router.name, netns=router.netns, reason=str(exc))
        else:
            try:
                await run_router(
                    router.settings,
                    netns_fd,
                    stop,
                    report,
                    delegated=True,
                    default_name=router.name,
                    endpoints_stop=clients_closed.event,
                    on_client_closed=lambda: clients_closed.done(router.name) if stop.is_set() else None,
                    clients_start=registered.event,
                    on_registered=lambda: registered.done(router.name),
                    admission=admission,
                )
                delays = RESTART.delays(random.Random())
            except Exception as exc:  # one router's fault must not stop the others
                log.error("router.failed", router=router.name, error=repr(exc))
            finally:
                report(False)
                os.close(netns_fd)
        if stop.is_set():
            clients_closed.done(router.name)
            return
        delay = next(delays)
        log.warning("router.restarting", router=router.name, after=f"{delay:.1f}s")
        if await sleep_or_stop(stop, delay):
            return


async def run_host(settings: HostSettings, stop: asyncio.Event) -> None:
    log = EventLog("nsm_agent.host")
    # Link checks and removals run in worker threads, and most of a removal is the kernel waiting: with
    # asyncio's default of a few threads, a host closing thousands of links would do them nearly in turn.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(HOST_THREADS, thread_name_prefix="kernel")
    )
    status = HostStatus([router.name for router in settings.routers], settings.status_file)
    log.info("host.start", routers=len(settings.routers))
    registered = Countdown(playing(settings.routers, "endpoint"))
    clients_closed = Countdown(playing(settings.routers, "client"))
    admission = asyncio.Semaphore(IN_FLIGHT)
    grace = settings.shutdown_backstop - 4.0  # the endpoints get the last 4 s
    helpers = [
        asyncio.create_task(status.keep_written(), name="status"),
        asyncio.create_task(set_later(registered.event, CLIENTS_WAIT), name="clients-start"),
        asyncio.create_task(set_later(clients_closed.event, grace, after=stop), name="endpoints-stop"),
    ]
    try:
        async with asyncio.TaskGroup() as group:
            for router in settings.routers:
                group.create_task(
                    _supervise(router, stop, status, registered, clients_closed, admission, log),
                    name=f"router-{router.name}",
                )
    finally:
        for helper in helpers:
            helper.cancel()
        for helper in helpers:
            with contextlib.suppress(asyncio.CancelledError):
                await helper
        status.remove()
    log.info("host.stopped", routers=len(settings.routers))
