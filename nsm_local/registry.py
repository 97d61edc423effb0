"""The registry nsm-local keeps: NetworkServices and NetworkServiceEndpoints, with expiry and watches.

Semantics follow NSM's memory registry and nsmgr's registry chain (protocol doc §8.2, §10): a Register
replaces the stored object; an endpoint expires at `expiration_time` unless refreshed; `Find` matches a
pattern (empty fields match anything) and, with `watch`, streams later changes. NetworkServices are also
written to a state file, so that `nsm-local apply` survives a restart of the control plane (endpoints
re-register by themselves, clients refresh).

In Kubernetes mode (`nsm_local.kube`) some services come from `networkservicemesh.io/v1` NetworkService
objects instead (`replace_cluster_services`): per name, the object wins. Such a service is not written to
the state file (the API server keeps it), a local registration of its name is refused
(`ClusterManaged`), and it goes when its object goes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from google.protobuf import json_format

from nsm_sdk._proto.registry.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointResponse,
    NetworkServiceResponse,
)
from nsm_sdk.agent.feed import Feed
from nsm_sdk.agent.statefile import write_atomically
from nsm_sdk.protocol.errors import ExhaustedError, NsmError
from nsm_sdk.protocol.gotime import timestamp_to_epoch
from nsm_sdk.protocol.matching import EndpointView, Match, ServiceView

CLUSTER_ORIGIN = "k8s://"
# Bounds (RESOURCE_EXHAUSTED beyond them): far above a lab of a thousand routers, well below what would
# make one process slow or large; a registry that needs more is not a local one.
MAX_SERVICES = 10_000
MAX_ENDPOINTS = 10_000
MAX_WATCHES = MAX_ENDPOINTS + 1_000
"""Of each kind: every endpoint watches its own registration (nse-sidecar's Registrar), plus room for
managers' and operators' watches."""
MAX_WATCH_BACKLOG = 1_000
"""`path_ids[0]` of a service that a Kubernetes object defines: `k8s://<namespace>/<object name>`."""


class ClusterManaged(NsmError):
    """A service name that a Kubernetes NetworkService object defines: change it through the API."""

    grpc_status = "FAILED_PRECONDITION"

    def __init__(self, name: str, origin: str) -> None:
        where = origin.removeprefix(CLUSTER_ORIGIN)
        super().__init__(
            f"network service {name} is defined by the Kubernetes NetworkService {where}: change or delete "
            f"it there (kubectl -n {where.split('/')[0]} edit networkservice {where.split('/')[-1]})"
        )
        self.name = name
        self.origin = origin


def cluster_origin(service: NetworkService) -> str | None:
    """`k8s://<namespace>/<name>` if a Kubernetes object defines `service`, else None."""
    if service.path_ids and service.path_ids[0].startswith(CLUSTER_ORIGIN):
        return service.path_ids[0]
    return None


@dataclass
class EndpointEntry:
    """A registered endpoint: the record as clients see it, and how we reach it."""

    record: NetworkServiceEndpoint
    dial_url: str
    socket_fd: int | None = None  # our dup of the socket file fd it sent, closed when the entry goes
    netns: int | None = None  # the namespace the endpoint runs in: the only one it may offer for links
    views: dict[str, EndpointView] = field(default_factory=dict, repr=False, compare=False)
    """Its selection view per service (`endpoint_view`), made once: an entry never changes, a
    re-registration makes a new one."""

    @property
    def owner(self) -> str | None:
        """The identity that registered it (`path_ids[0]`, as NSM's registry records it)."""
        return self.record.path_ids[0] if self.record.path_ids else None

    @property
    def expires(self) -> float | None:
        if not self.record.HasField("expiration_time"):
            return None
        return timestamp_to_epoch(self.record.expiration_time)

    def close(self) -> None:
        if self.socket_fd is not None:
            os.close(self.socket_fd)
            self.socket_fd = None


_P = TypeVar("_P", NetworkService, NetworkServiceEndpoint)


_Watch = Feed[tuple[object, bool]]


def endpoint_matches(pattern: NetworkServiceEndpoint, record: NetworkServiceEndpoint) -> bool:
    if pattern.name and pattern.name != record.name:
        return False
    if pattern.url and pattern.url != record.url:
        return False
    return all(name in record.network_service_names for name in pattern.network_service_names)


def service_matches(pattern: NetworkService, record: NetworkService) -> bool:
    if pattern.name and pattern.name != record.name:
        return False
    return not (pattern.payload and pattern.payload != record.payload)


def service_view(service: NetworkService) -> ServiceView:
    return ServiceView(
        name=service.name,
        matches=tuple(
            Match(
                source_selector=dict(m.source_selector),
                routes=tuple(dict(r.destination_selector) for r in m.routes),
                fallthrough=m.fallthrough,
                metadata_labels=dict(m.metadata.labels) if m.HasField("metadata") else None,
            )
            for m in service.matches
        ),
    )


def endpoint_view(entry: EndpointEntry, service: str) -> EndpointView:
    view = entry.views.get(service)
    if view is None:
        labels = entry.record.network_service_labels.get(service)
        view = entry.views[service] = EndpointView(
            name=entry.record.name,
            labels_for_service=dict(labels.labels) if labels is not None else {},
            expires=entry.expires,
        )
    return view


class Registry:
    def __init__(self, state_file: Path | None = None) -> None:
        self.services: dict[str, NetworkService] = {}
        self.endpoints: dict[str, EndpointEntry] = {}
        self._urls: dict[str, int] = {}  # registered endpoint URL -> how many endpoints have it
        self.endpoints_version = 0
        """Changes with every endpoint registered, refreshed or gone (for caches of `endpoints_of`)."""
        self._by_service: dict[str, dict[str, EndpointEntry]] = {}
        """service -> its endpoints by name, in `endpoints`' order (a Request's candidates, without a scan
        of every endpoint: a lab of a thousand routers has a thousand)."""
        self._state_file = state_file
        self._cluster_names: set[str] = set()
        self.load_problem: str | None = None
        self._service_watches: _Watches[NetworkService] = _Watches()
        self._endpoint_watches: _Watches[NetworkServiceEndpoint] = _Watches()
        self.on_endpoint_gone: Callable[[EndpointEntry, str], None] | None = None
        """Called with an entry whose socket is no longer registered, and why: "unregistered", "expired"
        or "replaced" (the same name registered another socket)."""
        self._load()

    def __repr__(self) -> str:
        return f"<Registry services={len(self.services)} endpoints={len(self.endpoints)}>"

    # --- persistence of NetworkServices -------------------------------------------------------------

    def _load(self) -> None:
        """Read the state file; a damaged one is moved aside (`load_problem` says so) so that the control
        plane still starts: endpoints re-register by themselves, only applied services must be re-applied."""
        if self._state_file is None or not self._state_file.exists():
            return
        try:
            loaded = [
                json_format.ParseDict(item, NetworkService())
                for item in json_format_list(self._state_file.read_text())
            ]
        except (ValueError, json_format.ParseError) as exc:
            aside = self._state_file.with_name(self._state_file.name + ".damaged")
            os.replace(self._state_file, aside)
            self.load_problem = f"{self._state_file} could not be read ({exc}); moved to {aside}"
            return
        for service in loaded:
            self.services[service.name] = service

    def _save(self) -> None:
        if self._state_file is None:
            return
        items = [
            json_format.MessageToJson(s, indent=None)
            for name, s in self.services.items()
            if name not in self._cluster_names
        ]
        write_atomically(self._state_file, "[" + ",".join(items) + "]\n")

    # --- NetworkServices ------------------------------------------------------------------------------

    def register_service(self, service: NetworkService) -> NetworkService:
        """Store (and persist) a locally registered service; `ClusterManaged` if an object defines it."""
        self.check_local(service.name)
        if service.name not in self.services and len(self.services) >= MAX_SERVICES:
            raise ExhaustedError(f"at most {MAX_SERVICES} network services; delete some first")
        stored = NetworkService()
        stored.CopyFrom(service)
        self.services[service.name] = stored
        self._save()
        self._notify_services(stored, deleted=False)
        return stored

    def unregister_service(self, name: str) -> None:
        self.check_local(name)
        stored = self.services.pop(name, None)
        if stored is not None:
            self._save()
            self._notify_services(stored, deleted=True)

    def check_local(self, name: str) -> None:
        """`ClusterManaged` if a Kubernetes object defines the service `name`."""
        if name in self._cluster_names:
            service = self.services[name]
            raise ClusterManaged(name, cluster_origin(service) or CLUSTER_ORIGIN)

    def replace_cluster_services(self, services: dict[str, NetworkService]) -> list[str]:
        """Make `services` (by name, from Kubernetes objects) the cluster's whole set: new and changed ones
        replace whatever had their name (a local registration included), vanished ones are unregistered.
        Watches see only what changed. Returns the names that changed."""
        changed = []
        for name in sorted(self._cluster_names - services.keys()):
            stored = self.services.pop(name)
            self._cluster_names.discard(name)
            self._notify_services(stored, deleted=True)
            changed.append(name)
        for name, service in sorted(services.items()):
            if name in self._cluster_names and self.services.get(name) == service:
                continue
            stored = NetworkService()
            stored.CopyFrom(service)
            self.services[name] = stored
            self._cluster_names.add(name)
            self._notify_services(stored, deleted=False)
            changed.append(name)
        if changed:
            self._save()
        return changed

    def find_services(self, pattern: NetworkService) -> list[NetworkService]:
        return [s for s in self.services.values() if service_matches(pattern, s)]

    # --- endpoints ------------------------------------------------------------------------------------

    def register_endpoint(self, entry: EndpointEntry) -> None:
        """Store an endpoint (replacing one of the same name); ExhaustedError over `MAX_ENDPOINTS`."""
        old = self.endpoints.get(entry.record.name)
        if old is None and len(self.endpoints) >= MAX_ENDPOINTS:
            entry.close()  # its socket fd is ours now
            raise ExhaustedError(f"at most {MAX_ENDPOINTS} endpoints are registered at a time")
        if old is not None and old.socket_fd != entry.socket_fd:
            old.close()
        if old is not None and (old.record.url != entry.record.url or old.socket_fd != entry.socket_fd):
            self._gone(old, "replaced")  # another socket now, even when its inode number came back
        self.endpoints[entry.record.name] = entry
        self._index(entry.record.name, old, entry)
        self._notify_endpoints(entry.record, deleted=False)

    def unregister_endpoint(self, name: str, why: str = "unregistered") -> EndpointEntry | None:
        entry = self.endpoints.pop(name, None)
        if entry is not None:
            self._index(name, entry, None)
            self._notify_endpoints(entry.record, deleted=True)
            entry.close()
            self._gone(entry, why)
        return entry

    def _gone(self, entry: EndpointEntry, why: str) -> None:
        if self.on_endpoint_gone is not None:
            self.on_endpoint_gone(entry, why)

    def _index(self, name: str, old: EndpointEntry | None, new: EndpointEntry | None) -> None:
        """Keep `_by_service` in step when `name` goes from `old` to `new` (either may be None). A name
        keeps its place in a service it stays in, as it does in `endpoints`."""
        self.endpoints_version += 1
        for entry, step in ((old, -1), (new, 1)):
            if entry is not None:
                count = self._urls.get(entry.record.url, 0) + step
                if count > 0:
                    self._urls[entry.record.url] = count
                else:
                    self._urls.pop(entry.record.url, None)
        before = set(old.record.network_service_names) if old is not None else set()
        after = list(dict.fromkeys(new.record.network_service_names)) if new is not None else []
        for service in before.difference(after):
            members = self._by_service.get(service, {})
            members.pop(name, None)
            if not members:
                self._by_service.pop(service, None)
        if new is not None:
            for service in after:
                self._by_service.setdefault(service, {})[name] = new

    def has_url(self, url: str) -> bool:
        """Whether a registered endpoint has this URL."""
        return url in self._urls

    def endpoints_of(self, service: str) -> list[EndpointEntry]:
        """The endpoints that serve `service`, in registry order (what `find_endpoints` would give for a
        pattern naming only that service)."""
        return list(self._by_service.get(service, {}).values())

    def find_endpoints(self, pattern: NetworkServiceEndpoint) -> list[EndpointEntry]:
        if pattern.name:  # an endpoint watching its own registration: no scan of every endpoint
            named = self.endpoints.get(pattern.name)
            return [named] if named is not None and endpoint_matches(pattern, named.record) else []
        return [e for e in self.endpoints.values() if endpoint_matches(pattern, e.record)]

    def expire(self, now: float) -> list[str]:
        """Drop endpoints whose registration ran out; returns their names."""
        gone = [name for name, e in self.endpoints.items() if e.expires is not None and e.expires <= now]
        for name in gone:
            self.unregister_endpoint(name, "expired")
        return gone

    def close(self) -> None:
        for entry in self.endpoints.values():
            entry.close()
        self.endpoints.clear()
        self._by_service.clear()
        self._urls.clear()
        for _, watch in [*self._service_watches.all(), *self._endpoint_watches.all()]:
            watch.close()

    # --- watches --------------------------------------------------------------------------------------

    def _notify_services(self, service: NetworkService, deleted: bool) -> None:
        for pattern, watch in self._service_watches.for_name(service.name):
            if service_matches(pattern, service):
                watch.offer((service, deleted))

    def _notify_endpoints(self, record: NetworkServiceEndpoint, deleted: bool) -> None:
        for pattern, watch in self._endpoint_watches.for_name(record.name):
            if endpoint_matches(pattern, record):
                watch.offer((record, deleted))

    async def watch_services(
        self, pattern: NetworkService, watch: bool
    ) -> AsyncGenerator[NetworkServiceResponse, None]:
        if not watch:
            for service in self.find_services(pattern):
                yield NetworkServiceResponse(network_service=service)
            return
        with _subscription(self._service_watches, pattern) as subscription:
            for service in self.find_services(pattern):
                yield NetworkServiceResponse(network_service=service)
            while (item := await subscription.next()) is not None:
                changed, deleted = item
                assert isinstance(changed, NetworkService)
                yield NetworkServiceResponse(network_service=changed, deleted=deleted)

    async def watch_endpoints(
        self, pattern: NetworkServiceEndpoint, watch: bool
    ) -> AsyncGenerator[NetworkServiceEndpointResponse, None]:
        if not watch:
            for entry in self.find_endpoints(pattern):
                yield NetworkServiceEndpointResponse(network_service_endpoint=entry.record)
            return
        with _subscription(self._endpoint_watches, pattern) as subscription:
            for entry in self.find_endpoints(pattern):
                yield NetworkServiceEndpointResponse(network_service_endpoint=entry.record)
            while (item := await subscription.next()) is not None:
                changed, deleted = item
                assert isinstance(changed, NetworkServiceEndpoint)
                yield NetworkServiceEndpointResponse(network_service_endpoint=changed, deleted=deleted)


class _Watches(Generic[_P]):
    """The watches of one kind, those whose pattern names an object kept apart by that name: a change
    is offered to the watches of its name and to the unnamed ones, not to every endpoint's own watch."""

    def __init__(self) -> None:
        self._unnamed: dict[_Watch, _P] = {}
        self._named: dict[str, dict[_Watch, _P]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, pattern: _P, watch: _Watch) -> None:
        (self._named.setdefault(pattern.name, {}) if pattern.name else self._unnamed)[watch] = pattern
        self._count += 1

    def remove(self, pattern: _P, watch: _Watch) -> None:
        group = self._named.get(pattern.name, {}) if pattern.name else self._unnamed
        if group.pop(watch, None) is not None:
            self._count -= 1
        if pattern.name and not group:
            self._named.pop(pattern.name, None)

    def for_name(self, name: str) -> list[tuple[_P, _Watch]]:
        """The watches a change of the object `name` may concern."""
        groups: list[dict[_Watch, _P]] = [self._unnamed, self._named.get(name, {})]
        return [(pattern, watch) for group in groups for watch, pattern in group.items()]

    def all(self) -> list[tuple[_P, _Watch]]:
        groups: list[dict[_Watch, _P]] = [self._unnamed]
        groups.extend(self._named.values())
        return [(pattern, watch) for group in groups for watch, pattern in group.items()]


@contextlib.contextmanager
def _subscription(watches: _Watches[_P], pattern: _P) -> Iterator[_Watch]:
    """Subscribe BEFORE listing the current objects, so that a change made while they are being sent
    is queued instead of lost; unsubscribe as soon as the stream is closed (not when it is collected)."""
    if len(watches) >= MAX_WATCHES:
        raise ExhaustedError(f"at most {MAX_WATCHES} watches of one kind at a time")
    watch = _Watch(MAX_WATCH_BACKLOG, f"the watch fell {MAX_WATCH_BACKLOG} changes behind: watch again")
    watches.add(pattern, watch)
    try:
        yield watch
    finally:
        watches.remove(pattern, watch)


def json_format_list(text: str) -> Iterable[dict[str, object]]:
    data = json.loads(text) if text.strip() else []
    return [item for item in data if isinstance(item, dict)]
