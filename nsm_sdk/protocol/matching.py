"""Endpoint selection: Go `matchutils.MatchEndpoint` plus expiry filter and round robin (protocol doc §10).

Inputs are plain data so this stays pure; the caller converts registry protobufs into `ServiceView`,
`Match` and any objects shaped like `EndpointView` (a `registry.NetworkServiceEndpoint` becomes
`EndpointView(nse.name, nse.network_service_labels[ns.name].labels, expiration or None)`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from nsm_sdk.protocol.template import render

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Match:
    """One `registry.Match`. `metadata_labels` is None when the match has no `metadata` message at all;
    Go only tests the message's presence, so an empty mapping still counts as "has metadata"."""

    source_selector: Labels = field(default_factory=dict)
    routes: Sequence[Labels] = ()
    fallthrough: bool = False
    metadata_labels: Labels | None = None


@dataclass(frozen=True)
class ServiceView:
    """A `registry.NetworkService` reduced to what selection needs."""

    name: str
    matches: Sequence[Match] = ()


class EndpointLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def labels_for_service(self) -> Labels: ...

    @property
    def expires(self) -> float | None: ...


@dataclass(frozen=True)
class EndpointView:
    """An NSE as selection sees it: its labels for this one service and its expiry (None = never)."""

    name: str
    labels_for_service: Labels = field(default_factory=dict)
    expires: float | None = None


E = TypeVar("E", bound=EndpointLike)
T = TypeVar("T")


def is_subset(labels: Labels, selector: Labels, values: Labels) -> bool:
    """Go `IsSubset(a=labels, b=selector, values)`: every selector entry equals the label, literally or
    after rendering the selector value as a template over `values`.

    Faithful to Go, including its quirks: `len(labels) < len(selector)` is False outright, and a missing
    label reads as "" (so a selector value "" matches an absent key).
    """
    if len(labels) < len(selector):
        return False
    for key, wanted in selector.items():
        have = labels.get(key, "")
        if have != wanted and have != render(wanted, values):
            return False
    return True


def match_endpoints(service: ServiceView, client_labels: Labels, endpoints: Sequence[E]) -> list[E]:
    """Go `MatchEndpoint` on already unexpired endpoints (§10.2).

    No matches → all endpoints. Otherwise the first match whose source_selector ⊆ client labels decides:
    endpoints whose labels ⊇ a route's destination_selector, route by route (an endpoint may appear more
    than once); with `fallthrough` and no candidates the next match is tried; a match with metadata, no
    routes and no candidates gives all endpoints. No applicable match → [].
    """
    if not service.matches:
        return list(endpoints)
    for match in service.matches:
        if not is_subset(client_labels, match.source_selector, client_labels):
            continue
        candidates = [
            endpoint
            for selector in match.routes
            for endpoint in endpoints
            if is_subset(endpoint.labels_for_service, selector, client_labels)
        ]
        if match.fallthrough and not candidates:
            continue
        if match.metadata_labels is not None and not match.routes and not candidates:
            return list(endpoints)
        return candidates
    return []


def unexpired(endpoints: Sequence[E], now: float) -> list[E]:
    """Drop endpoints whose expiry is not after `now` (Go discover `validateExpirationTime`)."""
    return [endpoint for endpoint in endpoints if endpoint.expires is None or endpoint.expires > now]


def select_endpoints(
    service: ServiceView, client_labels: Labels, endpoints: Sequence[E], now: float
) -> list[E]:
    """Candidates for a Request, in registry order: unexpired endpoints filtered by MatchEndpoint.

    An empty result is Go's "network service endpoint candidates not found" (§7, §10.1).
    """
    return match_endpoints(service, client_labels, unexpired(endpoints, now))


class RoundRobin:
    """Per-service rotation of candidates (Go `roundrobin` selector, §10.1).

    Go keeps one counter per service name, picks `candidates[counter % len]` and bumps the counter on every
    pick. `order()` returns the whole try-order for one Request (start at counter % len, then wrap around)
    and bumps the counter once, which is what Go does when the first candidate succeeds; call `skip()` for
    every further candidate actually tried to stay in step with Go after failures.
    """

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}

    def order(self, service: str, candidates: Sequence[T]) -> list[T]:
        if not candidates:
            return []
        start = self._counters.get(service, 0) % len(candidates)
        self._counters[service] = self._counters.get(service, 0) + 1
        return [*candidates[start:], *candidates[:start]]

    def skip(self, service: str) -> None:
        self._counters[service] = self._counters.get(service, 0) + 1

    def __repr__(self) -> str:
        return f"RoundRobin({self._counters!r})"
