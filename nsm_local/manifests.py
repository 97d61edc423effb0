"""NetworkService objects from Kubernetes-style YAML, for `nsm-local apply -f FILE`.

Two shapes are accepted, in one or many YAML documents:

* the seed's `networkservicemesh.io/v1alpha1` (NSM v0): `spec.matches[].sourceSelector`,
  `spec.matches[].route[].destinationSelector` (the `match:` / `destination:` null keys k8s-topo emits are
  ignored);
* NSM v1's `networkservicemesh.io/v1` CRD, whose spec is the registry.NetworkService message in JSON form:
  `matches[].source_selector` (or `sourceSelector`), `routes[].destination_selector`, `fallthrough`,
  `metadata.labels`, `payload`.

Anything else is a `ManifestError` naming the document and field, so a typo never registers half a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from nsm_sdk._proto.registry.registry_pb2 import Destination, Match, NetworkService
from nsm_sdk.protocol.errors import NsmError

API_VERSIONS = ("networkservicemesh.io/v1alpha1", "networkservicemesh.io/v1")
PAYLOADS = ("ETHERNET", "IP")


class ManifestError(NsmError):
    """A manifest that cannot be applied; the message names the document and the field."""


def _pick(obj: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in obj:
            return obj[name]
    return None


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ManifestError(f"{where}: expected a mapping of labels, got {type(value).__name__}")
    result = {}
    for key, item in value.items():
        if isinstance(item, (Mapping, list)):
            raise ManifestError(f"{where}.{key}: label values must be scalars")
        result[str(key)] = "" if item is None else str(item)
    return result


def _match(raw: Any, where: str) -> Match:
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{where}: expected a mapping")
    fallthrough = raw.get("fallthrough")
    if fallthrough is not None and not isinstance(fallthrough, bool):
        raise ManifestError(f"{where}.fallthrough: expected true or false, got {fallthrough!r}")
    match = Match(fallthrough=bool(fallthrough))
    match.source_selector.update(
        _string_map(_pick(raw, "sourceSelector", "source_selector"), f"{where}.sourceSelector"))
    routes = _pick(raw, "routes", "route") or []
    if not isinstance(routes, list):
        raise ManifestError(f"{where}.routes: expected a list")
    for i, route in enumerate(routes):
        if not isinstance(route, Mapping):
            raise ManifestError(f"{where}.routes[{i}]: expected a mapping")
        selector = _string_map(_pick(route, "destinationSelector", "destination_selector"),
                               f"{where}.routes[{i}].destinationSelector")
        weight = route.get("weight") or 0
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight < 2**32:
            raise ManifestError(f"{where}.routes[{i}].weight: expected an unsigned integer, got {weight!r}")
        match.routes.append(Destination(destination_selector=selector, weight=weight))
    metadata = raw.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise ManifestError(f"{where}.metadata: expected a mapping")
        match.metadata.SetInParent()  # present, even empty, matters to MatchEndpoint (§10.2)
        match.metadata.labels.update(_string_map(metadata.get("labels"), f"{where}.metadata.labels"))
    return match


def network_service_from_document(doc: Mapping[str, Any], where: str) -> NetworkService:
    api_version = doc.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise ManifestError(f"{where}: apiVersion {api_version!r} is not one of {', '.join(API_VERSIONS)}")
    if doc.get("kind") != "NetworkService":
        raise ManifestError(f"{where}: kind {doc.get('kind')!r} is not NetworkService")
    metadata = doc.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not name or not isinstance(name, str):
        raise ManifestError(f"{where}: metadata.name is required")
    where = f"{where} ({name})"
    spec = doc.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise ManifestError(f"{where}: spec must be a mapping")
    payload = str(spec.get("payload") or "ETHERNET").upper()
    if payload not in PAYLOADS:
        raise ManifestError(f"{where}: spec.payload {payload!r} is not one of {', '.join(PAYLOADS)}")
    service = NetworkService(name=name, payload=payload)
    matches = spec.get("matches") or []
    if not isinstance(matches, list):
        raise ManifestError(f"{where}: spec.matches must be a list")
    for i, raw in enumerate(matches):
        service.matches.append(_match(raw, f"{where}: spec.matches[{i}]"))
    return service


def load_network_services(text: str, source: str) -> list[NetworkService]:
    """Parse every document of a YAML stream; all must be valid NetworkService objects."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML: {exc}".splitlines()[0]) from exc
    services = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, Mapping):
            raise ManifestError(f"{source} document {i + 1}: expected a mapping")
        services.append(network_service_from_document(doc, f"{source} document {i + 1}"))
    if not services:
        raise ManifestError(f"{source}: no NetworkService documents found")
    return services
