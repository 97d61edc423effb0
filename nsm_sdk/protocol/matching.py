"""Endpoint selection: Go `matchutils.MatchEndpoint` plus expiry filter and round robin (protocol doc §10).

Inputs are plain data so this stays pure; the caller converts registry protobufs into `ServiceView`,
`Match` and any objects shaped like `EndpointView` (a `registry.NetworkServiceEndpoint` becomes
`EndpointView(nse.name, nse.network_service_labels[ns.name].labels, expiration or None)`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

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
    return _match(service, client_labels, endpoints, lambda _selector: endpoints)


def _match(
    service: ServiceView,
    client_labels: Labels,
    endpoints: Sequence[E],
    tested: Callable[[Labels], Iterable[E]],
) -> list[E]:
    """`match_endpoints`, testing for each route selector only `tested(selector)` (a subsequence of
    `endpoints`, in their order, holding every endpoint that can pass)."""
    if not service.matches:
        return list(endpoints)
    for match in service.matches:
        if not is_subset(client_labels, match.source_selector, client_labels):
            continue
        candidates = [
            endpoint
            for selector in match.routes
            for endpoint in tested(selector)
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


def _literal(selector: Labels) -> bool:
    """Whether only labels equal to the selector's own values can pass it (no template, no empty value,
    which Go matches against an absent label), so that an index by label finds everything that can."""
    return bool(selector) and all(value and "{{" not in value for value in selector.values())


class Selection(Generic[E]):
    """`select_endpoints` for one service and one set of endpoints, indexed by label so that a Request
    tests only the matches and endpoints that can pass. A topology's service has a match per link
    (`link=net-<i>`) routing to the one endpoint labelled `device=<name>`; a lab of a thousand routers
    has two thousand matches and a thousand endpoints. Same answers, same order: the index only skips
    what cannot pass, and selectors it cannot index (templates, empty values) are tested as before."""

    def __init__(self, service: ServiceView, endpoints: Sequence[E]) -> None:
        self.service = service
        self.endpoints = list(endpoints)
        self._matches_by_label: dict[tuple[str, str], list[int]] = {}
        self._matches_always: list[int] = []
        for position, match in enumerate(service.matches):
            if _literal(match.source_selector):
                label = next(iter(match.source_selector.items()))
                self._matches_by_label.setdefault(label, []).append(position)
            else:
                self._matches_always.append(position)
        self._endpoints_by_label: dict[tuple[str, str], list[E]] | None = None

    def with_endpoints(self, endpoints: Sequence[E]) -> Selection[E]:
        """The same service with other endpoints, reusing the index of its matches."""
        other = copy.copy(self)
        other.endpoints = list(endpoints)
        other._endpoints_by_label = None
        return other

    def _endpoints_having(self, selector: Labels) -> Iterable[E]:
        if not _literal(selector):
            return self.endpoints
        if self._endpoints_by_label is None:
            self._endpoints_by_label = {}
            for endpoint in self.endpoints:
                for label in endpoint.labels_for_service.items():
                    self._endpoints_by_label.setdefault(label, []).append(endpoint)
        return self._endpoints_by_label.get(next(iter(selector.items())), [])

    def _matches_for(self, client_labels: Labels) -> ServiceView:
        positions = set(self._matches_always)
        for label in client_labels.items():
            positions.update(self._matches_by_label.get(label, ()))
        return ServiceView(self.service.name, tuple(self.service.matches[p] for p in sorted(positions)))

    def select(self, client_labels: Labels, now: float) -> list[E]:
        live = unexpired(self.endpoints, now)
        if len(live) != len(self.endpoints):  # rare (an endpoint past its expiry): the plain way
            return match_endpoints(self.service, client_labels, live)
        if not self.service.matches:
            return list(self.endpoints)
        applicable = self._matches_for(client_labels)
        if not applicable.matches:  # the service has matches, and none can apply to these labels
            return []
        return _match(applicable, client_labels, self.endpoints, self._endpoints_having)


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
