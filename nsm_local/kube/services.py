"""NetworkService objects (`networkservicemesh.io/v1`) -> nsm-local's registry, as registry-k8s serves them.

**Decoding** is what NSM does with such an object (sdk-k8s `pkg/tools/k8s/apis/networkservicemesh.io/v1`:
`NetworkServiceSpec` *is* the Go `registry.NetworkService`, decoded from the object's JSON by Go's
`encoding/json`; its CRD keeps any spec, `x-kubernetes-preserve-unknown-fields`). So the spec's keys are the
protobuf field names of the Go structs' json tags (snake_case: `payload`, `matches`, `source_selector`,
`routes`, `destination_selector`, `weight`, `fallthrough`, `metadata.labels`, `path_ids`, `name`), with Go's
rules:

* a key matches its field exactly or, failing that, ignoring case (`Payload` works, `sourceSelector` does
  not: the underscore is part of the name); unknown keys are ignored (we log them once, since a camelCase
  key silently selecting nothing is the classic mistake);
* `null` leaves a string, bool or number at its zero value, and makes a map, list or message absent
  (`metadata: null` is no metadata, `metadata: {}` is an empty one, which matters to endpoint selection);
* a value of the wrong type (a number as a label value, a negative or fractional weight, a string for
  `fallthrough`) fails the whole object, as it fails Go's decoder; we skip such an object and say which
  field is wrong. A `null` entry in `matches` or `routes` (a nil message Go would not send) fails too.
* the service's name is `spec.name` if set, else the object's name (registry-k8s: `if item.Name == ""`).
  `payload` is taken as written (NSM neither defaults nor upper-cases it).

What nsm-topo's `manifest` writes (`nsm_topo.kube.manifests`) is exactly this form.

**Serving** (`ClusterServices`, a reflector handler): every object seen (one namespace or all, as
registry-k8s lists all) is decoded; per service name one object wins (the oldest, then by
namespace/name, with a warning naming the others: registry-k8s leaves such a clash undefined); the result
replaces the registry's cluster-managed set (`Registry.replace_cluster_services`). Each service records its
object as `path_ids = ["k8s://<namespace>/<name>"]`: no SPIFFE identity owns it, and a local Register or
Unregister of its name is refused (`ClusterManaged`). nsm-local never writes NetworkService objects
(registry-k8s creates one when an endpoint registers a service; here such a registration stays local to
the node, in nsm-local's state file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nsm_local.kube.reflector import KubeObject, WatchEvent
from nsm_local.registry import CLUSTER_ORIGIN, Registry
from nsm_sdk._proto.registry.registry_pb2 import Destination, Match, NetworkService
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.protocol.errors import NsmError

NSM_GROUP = "networkservicemesh.io"
NSM_VERSION = "v1"
NSM_PLURAL = "networkservices"
CRD_NAME = f"{NSM_PLURAL}.{NSM_GROUP}"
UINT32_MAX = 2**32 - 1

_SERVICE_FIELDS = ("name", "payload", "matches", "path_ids")
_MATCH_FIELDS = ("source_selector", "routes", "fallthrough", "metadata")
_DESTINATION_FIELDS = ("destination_selector", "weight")
_METADATA_FIELDS = ("labels",)


class DecodeError(NsmError):
    """An object NSM's Go decoder would refuse; the message names the field."""


def _fields(obj: Mapping[str, Any], known: tuple[str, ...], where: str, unknown: list[str]) -> dict[str, Any]:
    """Go's encoding/json key matching: exact, else case-insensitive; in document order, the last wins."""
    folded = {name.lower(): name for name in known}
    found: dict[str, Any] = {}
    for key, value in obj.items():
        field = key if key in known else folded.get(str(key).lower())
        if field is None:
            unknown.append(f"{where}.{key}")
            continue
        found[field] = value
    return found


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DecodeError(f"{where}: expected a string, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DecodeError(f"{where}: expected an object, got {_kind(value)}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DecodeError(f"{where}: expected a list, got {_kind(value)}")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    """Go's map[string]string: an object whose values are strings (null: "")."""
    if value is None:
        return {}
    return {str(key): _string(item, f"{where}.{key}") for key, item in _object(value, where).items()}


def _bool(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise DecodeError(f"{where}: expected true or false, got {_kind(value)}")
    return value


def _uint32(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT32_MAX:
        raise DecodeError(f"{where}: expected an integer from 0 to {UINT32_MAX}, got {value!r}")
    return value


def _element(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        raise DecodeError(f"{where}: null (NSM cannot send an empty entry)")
    return _object(value, where)


def _match(raw: Any, where: str, unknown: list[str]) -> Match:
    fields = _fields(_element(raw, where), _MATCH_FIELDS, where, unknown)
    match = Match(fallthrough=_bool(fields.get("fallthrough"), f"{where}.fallthrough"))
    match.source_selector.update(_string_map(fields.get("source_selector"), f"{where}.source_selector"))
    for i, route in enumerate(_list(fields.get("routes"), f"{where}.routes")):
        at = f"{where}.routes[{i}]"
        route_fields = _fields(_element(route, at), _DESTINATION_FIELDS, at, unknown)
        match.routes.append(
            Destination(
                destination_selector=_string_map(
                    route_fields.get("destination_selector"), f"{at}.destination_selector"
                ),
                weight=_uint32(route_fields.get("weight"), f"{at}.weight"),
            )
        )
    metadata = fields.get("metadata")
    if metadata is not None:
        at = f"{where}.metadata"
        metadata_fields = _fields(_object(metadata, at), _METADATA_FIELDS, at, unknown)
        match.metadata.SetInParent()  # present, even empty: MatchEndpoint tells the two apart (§10.2)
        match.metadata.labels.update(_string_map(metadata_fields.get("labels"), f"{at}.labels"))
    return match


@dataclass(frozen=True, slots=True)
class Decoded:
    """One object's service, where it came from, and what Go would have ignored in it."""

    service: NetworkService
    namespace: str
    object_name: str
    created: str
    unknown_fields: tuple[str, ...]

    @property
    def origin(self) -> str:
        return f"{CLUSTER_ORIGIN}{self.namespace}/{self.object_name}"


def object_key(obj: KubeObject) -> tuple[str, str]:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return ("", "")
    return (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))


def decode_network_service(obj: KubeObject) -> Decoded:
    """The registry.NetworkService an object stands for, as registry-k8s decodes it; `DecodeError` if Go's
    decoder would refuse it."""
    namespace, object_name = object_key(obj)
    if not object_name:
        raise DecodeError("metadata.name: missing")
    metadata = obj["metadata"]
    unknown: list[str] = []
    raw_spec = obj.get("spec")
    spec = {} if raw_spec is None else _fields(_object(raw_spec, "spec"), _SERVICE_FIELDS, "spec", unknown)
    service = NetworkService(
        name=_string(spec.get("name"), "spec.name") or object_name,
        payload=_string(spec.get("payload"), "spec.payload"),
    )
    for i, raw in enumerate(_list(spec.get("matches"), "spec.matches")):
        service.matches.append(_match(raw, f"spec.matches[{i}]", unknown))
    for i, path_id in enumerate(_list(spec.get("path_ids"), "spec.path_ids")):
        _string(path_id, f"spec.path_ids[{i}]")  # checked as Go would; replaced by the origin below
    decoded = Decoded(
        service=service,
        namespace=namespace,
        object_name=object_name,
        created=str(metadata.get("creationTimestamp") or ""),
        unknown_fields=tuple(unknown),
    )
    service.path_ids.append(decoded.origin)
    return decoded


class ClusterServices:
    """A reflector handler: the NetworkService objects it is shown become the registry's cluster services."""

    def __init__(self, registry: Registry, log: EventLog) -> None:
        self._registry = registry
        self._log = log
        self._objects: dict[tuple[str, str], Decoded] = {}
        self._said: dict[tuple[str, str], str] = {}
        """What we last warned about per object (to say it once, not on every resync)."""
        self._clashes: set[tuple[str, str]] = set()
        """(service name, ignored object) pairs already warned about."""

    def __repr__(self) -> str:
        return f"<ClusterServices objects={len(self._objects)}>"

    def replace(self, items: list[KubeObject]) -> None:
        self._objects = {}
        for obj in items:
            self._take(obj)
        self._publish()

    def apply(self, event: WatchEvent) -> None:
        key = object_key(event.object)
        if event.type == "DELETED":
            self._objects.pop(key, None)
            self._said.pop(key, None)
        elif event.type in ("ADDED", "MODIFIED"):
            self._objects.pop(key, None)
            self._take(event.object)
        else:
            return
        self._publish()

    def _take(self, obj: KubeObject) -> None:
        key = object_key(obj)
        where = f"{key[0]}/{key[1]}"
        try:
            decoded = decode_network_service(obj)
        except DecodeError as exc:
            self._say(key, "service.invalid", f"{exc}", object=where)
            return
        if decoded.unknown_fields:
            self._say(
                key,
                "service.unknown_fields",
                ",".join(decoded.unknown_fields),
                object=where,
                hint="NSM ignores them: spec keys are protobuf names (source_selector, destination_selector)",
            )
        else:
            self._said.pop(key, None)
        self._objects[key] = decoded

    def _say(self, key: tuple[str, str], event: str, detail: str, **fields: object) -> None:
        if self._said.get(key) == f"{event} {detail}":
            return
        self._said[key] = f"{event} {detail}"
        self._log.warning(event, detail=detail, **fields)

    def _publish(self) -> None:
        chosen: dict[str, Decoded] = {}
        clashes: set[tuple[str, str]] = set()
        for decoded in sorted(self._objects.values(), key=lambda d: (d.created, d.namespace, d.object_name)):
            name = decoded.service.name
            if name in chosen:
                clashes.add((name, decoded.origin))
                if (name, decoded.origin) not in self._clashes:
                    self._log.warning(
                        "service.conflict",
                        name=name,
                        used=chosen[name].origin,
                        ignored=decoded.origin,
                        detail="two NetworkService objects define one service; the older one is used",
                    )
                continue
            chosen[name] = decoded
        self._clashes = clashes
        changed = self._registry.replace_cluster_services({n: d.service for n, d in chosen.items()})
        for name in changed:
            decoded_or_none = chosen.get(name)
            if decoded_or_none is None:
                self._log.info("service.removed", name=name, source="kubernetes")
            else:
                self._log.info(
                    "service.synced",
                    name=name,
                    object=decoded_or_none.origin,
                    payload=decoded_or_none.service.payload,
                    matches=len(decoded_or_none.service.matches),
                )
