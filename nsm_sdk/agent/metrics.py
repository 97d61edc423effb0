"""An optional Prometheus endpoint for every agent, fed by the agent's own events.

Each component already logs one structured event per thing that happens to a link or connection
(`link.established`, `request.failed code=...`, `connection.up`, ...). Rather than a second set of calls
spread through the code, `EventMetrics` is a logging handler that turns those events into metrics, so a
metric can never disagree with the log line next to it:

- `nsm_events_total{event}`: every event by name (requests, refreshes, heals, failures, closes, ...);
- `nsm_request_failures_total{code}`: failed Requests by gRPC status code;
- `nsm_links{state}`: the agent's links by state (`requesting`, `established`, `healing`, ...), from the
  `link.<state>` transitions;
- `nsm_connections`: connections an endpoint or nsm-local holds (`request.accepted` / `connection.up`
  until `close.done` / `connection.closed` / `connection.expired`);
- `nsm_link_request_duration_seconds{kind}`: from a link entering `requesting` / `refreshing` /
  `healing` to its next `link.established`;
- `nsm_asyncio_tasks`, plus the standard `process_open_fds`, `process_resident_memory_bytes`, ... from
  prometheus-client's process collector.

The endpoint is off unless an address is given (`NSM_PROMETHEUS_LISTEN_ON`, the name NSM's Go
components use); prometheus-client serves it from its own thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nsm_sdk.protocol.errors import ConfigError

if TYPE_CHECKING:  # prometheus-client costs ~45 ms to import: only agents that serve metrics load it
    from prometheus_client import CollectorRegistry

LISTEN_VARIABLE = "NSM_PROMETHEUS_LISTEN_ON"
LINK_STATES = ("requesting", "established", "refreshing", "healing", "closed")
_TIMED = {"requesting": "request", "refreshing": "refresh", "healing": "heal"}
_CONNECTION_UP = frozenset({"request.accepted", "connection.up"})
_CONNECTION_GONE = frozenset({"close.done", "connection.closed", "connection.expired"})
OWN_LOGGERS = ("nsm_sdk", "nsc_sidecar", "nse_sidecar", "nsm_local")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen_address(variable: str, value: str) -> ListenAddress:
    """`host:port`, `[v6]:port` or `:port` (every address); port 0 picks a free one (logged)."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(variable, value, "expected host:port, [ipv6]:port or :port with a port 0-65535")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                raise ConfigError(variable, value, "the host must be an IP address or localhost") from None
    return ListenAddress(host or "0.0.0.0", int(port_text))


def listen_address_from_env(env: Mapping[str, str]) -> ListenAddress | None:
    value = env.get(LISTEN_VARIABLE, "").strip()
    return parse_listen_address(LISTEN_VARIABLE, value) if value else None


class EventMetrics(logging.Handler):
    """Counts the events that go through logging into `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        super().__init__(level=logging.DEBUG)  # routine events (a refresh at an endpoint) are DEBUG lines
        self.events = Counter("nsm_events", "Events logged, by name.", ["event"], registry=registry)
        self.failures = Counter(
            "nsm_request_failures", "Failed Requests by gRPC status code.", ["code"], registry=registry
        )
        self.links = Gauge("nsm_links", "This agent's links by state.", ["state"], registry=registry)
        self.connections = Gauge(
            "nsm_connections", "Connections held (endpoints, nsm-local).", registry=registry
        )
        self._held: set[str] = set()
        self.durations = Histogram(
            "nsm_link_request_duration_seconds",
            "From a link asking (request, refresh or heal) to the link established.",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        for state in LINK_STATES:
            self.links.labels(state)
        self._states: dict[str, tuple[str, float]] = {}  # link -> (state, since)
        # links announced by `agent.start links=N` that have not logged a transition yet: requesting
        self._unseen: tuple[int, float] = (0, 0.0)
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if not isinstance(fields, Mapping):
            return
        try:
            event = record.getMessage()
            with self._lock:
                self._count(event, fields, record.created)
        except Exception:  # a metric must never break the agent it measures
            self.handleError(record)

    def _count(self, event: str, fields: Mapping[str, Any], when: float) -> None:
        self.events.labels(event).inc()
        if event == "agent.start" and str(fields.get("links", "")).isdigit():
            self._unseen = (int(fields["links"]), when)
            self.links.labels("requesting").inc(self._unseen[0])
        if event == "request.failed" and "code" in fields:
            self.failures.labels(str(fields["code"])).inc()
        link = fields.get("conn") or fields.get("link")
        if event in _CONNECTION_UP | _CONNECTION_GONE and "conn" in fields:
            (self._held.add if event in _CONNECTION_UP else self._held.discard)(str(fields["conn"]))
            self.connections.set(len(self._held))
        if not event.startswith("link.") or link is None:
            return
        state = event.removeprefix("link.")
        if state == "removed":
            self._leave(str(link))
        elif state in LINK_STATES:
            self._enter(str(link), state, when)

    def _enter(self, link: str, state: str, when: float) -> None:
        previous = self._states.get(link)
        if previous is None and self._unseen[0] > 0:  # its first request began at the agent's start
            previous = ("requesting", self._unseen[1])
            self._unseen = (self._unseen[0] - 1, self._unseen[1])
        if previous is not None:
            self.links.labels(previous[0]).dec()
            if state == "established" and previous[0] in _TIMED:
                self.durations.labels(_TIMED[previous[0]]).observe(max(0.0, when - previous[1]))
        self._states[link] = (state, when)
        self.links.labels(state).inc()

    def _leave(self, link: str) -> None:
        previous = self._states.pop(link, None)
        if previous is not None:
            self.links.labels(previous[0]).dec()


class MetricsEndpoint:
    """/metrics on one address, served by prometheus-client's thread until `close`."""

    def __init__(self, address: ListenAddress, variable: str = LISTEN_VARIABLE) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Gauge,
            PlatformCollector,
            ProcessCollector,
            start_http_server,
        )

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.events = EventMetrics(self.registry)
        self._loop: asyncio.AbstractEventLoop | None = None
        tasks = Gauge("nsm_asyncio_tasks", "Tasks alive on the agent's event loop.", registry=self.registry)
        tasks.set_function(lambda: len(asyncio.all_tasks(self._loop)) if self._loop is not None else 0)
        try:
            self._server, self._thread = start_http_server(address.port, address.host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(variable, str(address), f"cannot listen there: {exc.strerror}") from None
        self.address = ListenAddress(address.host, int(self._server.server_address[1]))

    def watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count the tasks of `loop` (the agent's)."""
        self._loop = loop

    def count_events(self) -> None:
        """Feed our loggers' events (call after logging is set up). Events below the log level count
        too: the level the user chose moves to the output handlers, and our loggers pass everything."""
        root = logging.getLogger()
        for handler in root.handlers:
            handler.setLevel(max(handler.level, root.level))
        for name in OWN_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
        root.addHandler(self.events)
        _log.info("metrics.serving", extra={"fields": {"address": str(self.address), "path": "/metrics"}})

    def close(self) -> None:
        logging.getLogger().removeHandler(self.events)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def open_metrics(env: Mapping[str, str]) -> MetricsEndpoint | None:
    """The endpoint `NSM_PROMETHEUS_LISTEN_ON` asks for, listening; None when unset. ConfigError when the
    value is wrong or the address cannot be bound."""
    address = listen_address_from_env(env)
    return MetricsEndpoint(address) if address is not None else None
