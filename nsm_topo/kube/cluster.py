"""`nsm-topo apply` / `delete`: a topology's objects in a cluster, with the official client (`kubernetes`).

Like k8s-topo's `--create` / `--destroy`, but:

* **apply** is create-or-update and can be repeated: it first checks that the namespace exists and that
  NSM's NetworkService CRD is installed (nothing is created otherwise), then creates or replaces the
  NetworkService, then the ConfigMaps, then the Pods. An object that is already as the file wants it
  (annotation `nsm-topo/spec-hash`) is left alone; a changed ConfigMap or NetworkService is replaced; a
  changed Pod (most of a Pod's spec cannot be updated) is deleted, waited for, and created again.
* **delete** deletes the Pods first, with their grace period, so the sidecars close their links while
  NSM and the NetworkService are still there, waits (bounded, with progress) until they are gone, then
  deletes the ConfigMaps and the NetworkService. Deleting what is not there is fine.
* Objects of the same name that do not carry the topology's label (`topo=<name>`) belong to someone else:
  apply refuses to touch them and delete leaves them (a NetworkService is the exception when it has no
  `topo` label at all: NSM's registry may have rewritten it).

`Cluster` is the only code that touches the untyped client objects (a `CoreV1Api` and a
`CustomObjectsApi`); `apply` and `delete` work on it, so a test can drive them with fakes of those two
objects, or, later, with a real API server. Every failure is a `KubeError` with one line that says what to
do next.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nsm_topo.kube.manifests import HASH_ANNOTATION, NSM_GROUP, NSM_PLURAL, NSM_VERSION, Manifest

Progress = Callable[[str, int, int], None]
"""progress(event, done, total), the same shape as the local lab's."""

REQUEST_TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for each API call: an unreachable cluster fails fast instead of hanging."""
POLL_SECONDS = 1.0
_CORE_KINDS = {"Pod": "namespaced_pod", "ConfigMap": "namespaced_config_map"}


class KubeError(RuntimeError):
    """The cluster cannot do what was asked; the message says what to do next."""


class ApiStatusError(KubeError):
    """The API server answered with an error status (`status`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Existing:
    """What apply and delete need to know of an object already in the cluster."""

    labels: dict[str, str]
    annotations: dict[str, str]
    resource_version: str | None
    terminating: bool = False


def _ref(manifest: Manifest) -> str:
    return f"{manifest['kind']} {manifest['metadata']['name']}"


class Cluster:
    """A namespace of one cluster, through the client's `CoreV1Api` and `CustomObjectsApi` (or fakes)."""

    def __init__(self, core: Any, custom: Any, namespace: str, where: str = "the cluster") -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        self.core = core
        self.custom = custom
        self.namespace = namespace
        self.where = where
        self._api_exception: type[Exception] = ApiException
        self._transport_errors: tuple[type[Exception], ...] = (HTTPError, OSError)

    # -- the client boundary: every call goes through here ------------------------------------------------

    def _call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the client; an error status is an ApiStatusError, no answer a KubeError, naming `what`."""
        try:
            return method(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except self._api_exception as exc:
            status = int(getattr(exc, "status", 0) or 0)
            raise ApiStatusError(status, self._refused(what, status, exc)) from None
        except self._transport_errors as exc:
            text = str(getattr(exc, "reason", None) or exc)  # urllib3 wraps the socket error in `reason`
            reason = text[text.find("[Errno") :] if "[Errno" in text else (text or type(exc).__name__)
            raise KubeError(
                f"cannot reach {self.where} ({what}): {reason}: is the cluster running, and are --kubeconfig "
                "and --context the right ones?"
            ) from None

    def _refused(self, what: str, status: int, exc: Exception) -> str:
        reason = str(getattr(exc, "reason", "") or "")
        body = str(getattr(exc, "body", "") or "")
        detail = _message_of(body) or reason
        if status in (401, 403):
            return (
                f"{self.where} refused to {what} in namespace {self.namespace} ({status} {reason}): your "
                "credentials need rights on pods, configmaps and networkservices.networkservicemesh.io there"
            )
        return f"{self.where} refused to {what} in namespace {self.namespace}: {status} {detail}".rstrip()

    def _get(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`_call`, but None when the object (or its kind, or the namespace) is not there (404)."""
        try:
            return self._call(what, method, *args, **kwargs)
        except ApiStatusError as exc:
            if exc.status == 404:
                return None
            raise

    def _custom_args(self) -> tuple[str, str, str, str]:
        return (NSM_GROUP, NSM_VERSION, self.namespace, NSM_PLURAL)

    def namespace_exists(self) -> bool | None:
        """True, False, or None when we may not read namespaces (then the creates will tell)."""
        try:
            self._call(f"read namespace {self.namespace}", self.core.read_namespace, self.namespace)
        except ApiStatusError as exc:
            if exc.status in (401, 403):
                return None
            if exc.status == 404:
                return False
            raise
        return True

    def network_service_crd_installed(self) -> bool:
        listed = self._get(
            "list networkservices.networkservicemesh.io",
            self.custom.list_namespaced_custom_object,
            *self._custom_args(),
            limit=1,
        )
        return listed is not None

    def read(self, manifest: Manifest) -> Existing | None:
        name = manifest["metadata"]["name"]
        what = f"read {_ref(manifest)}"
        if manifest["kind"] == "NetworkService":
            found = self._get(what, self.custom.get_namespaced_custom_object, *self._custom_args(), name)
            if found is None:
                return None
            metadata = found.get("metadata") or {}
            return Existing(
                dict(metadata.get("labels") or {}),
                dict(metadata.get("annotations") or {}),
                metadata.get("resourceVersion"),
                metadata.get("deletionTimestamp") is not None,
            )
        method = getattr(self.core, f"read_{_CORE_KINDS[manifest['kind']]}")
        found = self._get(what, method, name, self.namespace)
        if found is None:
            return None
        metadata = found.metadata
        return Existing(
            dict(metadata.labels or {}),
            dict(metadata.annotations or {}),
            metadata.resource_version,
            metadata.deletion_timestamp is not None,
        )

    def create(self, manifest: Manifest) -> None:
        what = f"create {_ref(manifest)}"
        if manifest["kind"] == "NetworkService":
            self._must(what, self.custom.create_namespaced_custom_object, *self._custom_args(), manifest)
        else:
            method = getattr(self.core, f"create_{_CORE_KINDS[manifest['kind']]}")
            self._must(what, method, self.namespace, manifest)

    def replace(self, manifest: Manifest, resource_version: str | None) -> None:
        name = manifest["metadata"]["name"]
        body = {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": resource_version}}
        what = f"replace {_ref(manifest)}"
        if manifest["kind"] == "NetworkService":
            self._must(what, self.custom.replace_namespaced_custom_object, *self._custom_args(), name, body)
        else:
            method = getattr(self.core, f"replace_{_CORE_KINDS[manifest['kind']]}")
            self._must(what, method, name, self.namespace, body)

    def delete(self, manifest: Manifest) -> bool:
        """Ask for the deletion (a Pod keeps its grace period); False if it was not there."""
        name = manifest["metadata"]["name"]
        what = f"delete {_ref(manifest)}"
        if manifest["kind"] == "NetworkService":
            done = self._get(what, self.custom.delete_namespaced_custom_object, *self._custom_args(), name)
        else:
            method = getattr(self.core, f"delete_{_CORE_KINDS[manifest['kind']]}")
            done = self._get(what, method, name, self.namespace)
        return done is not None

    def _must(self, what: str, method: Callable[..., Any], *args: Any) -> None:
        if self._get(what, method, *args) is None:  # a 404 on create/replace: the namespace went away
            raise KubeError(
                f"{self.where} refused to {what}: namespace {self.namespace} not found: create it "
                f"(kubectl create namespace {self.namespace}) or pass --namespace"
            )


def _message_of(body: str) -> str:
    """The `message` of a Kubernetes Status body, if the body is one."""
    try:
        status = json.loads(body)
    except ValueError:
        return ""
    message = status.get("message") if isinstance(status, dict) else None
    return str(message) if message else ""


def connect(kubeconfig: str | None, context: str | None, namespace: str) -> Cluster:
    """A Cluster from a kubeconfig (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`), or the in-cluster
    service account when there is no kubeconfig and we run in a pod. Imports the client only now."""
    from kubernetes import client, config

    in_pod = "KUBERNETES_SERVICE_HOST" in os.environ
    explicit = kubeconfig is not None or context is not None
    try:
        if explicit or not in_pod:
            config.load_kube_config(config_file=kubeconfig, context=context)
        else:
            config.load_incluster_config()
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        source = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise KubeError(
            f"no usable Kubernetes configuration ({source}: {reason}): pass --kubeconfig FILE (and --context "
            "NAME), set KUBECONFIG, or run inside a pod"
        ) from None
    configuration = client.Configuration.get_default_copy()
    configuration.retries = 1
    api = client.ApiClient(configuration)
    where = f"the cluster at {configuration.host}"
    return Cluster(client.CoreV1Api(api), client.CustomObjectsApi(api), namespace, where)


@dataclass
class Report:
    """What apply or delete did, object by object (`kind name`)."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    """Objects with our names that another topology (or nobody of ours) owns: left alone."""

    def summary(self) -> str:
        parts = [
            f"{len(items)} {label}"
            for label, items in (
                ("created", self.created),
                ("updated", self.updated),
                ("recreated", self.recreated),
                ("unchanged", self.unchanged),
                ("deleted", self.deleted),
                ("already gone", self.absent),
                ("not ours, left alone", self.foreign),
            )
            if items
        ]
        return ", ".join(parts) or "nothing to do"


def _topology_of(objects: Sequence[Manifest]) -> str:
    return str(objects[0]["metadata"]["labels"]["topo"])


def _ours(existing: Existing, manifest: Manifest, topology: str) -> bool:
    label = existing.labels.get("topo")
    if manifest["kind"] == "NetworkService" and label is None:
        return True
    return label == topology


def _wait_gone(
    cluster: Cluster,
    pods: Sequence[Manifest],
    progress: Progress,
    timeout: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> None:
    """Until none of `pods` exists any more; KubeError naming those left after `timeout` seconds."""
    deadline = clock() + timeout
    left = list(pods)
    while True:
        left = [pod for pod in left if cluster.read(pod) is not None]
        progress("pods.gone", len(pods) - len(left), len(pods))
        if not left:
            return
        if clock() >= deadline:
            names = ", ".join(pod["metadata"]["name"] for pod in left)
            raise KubeError(
                f"pods still terminating after {timeout:.0f}s: {names}: see kubectl describe pod -n "
                f"{cluster.namespace} {left[0]['metadata']['name']}; run the command again to keep waiting, "
                "or add --grace-period=0 --force to a kubectl delete"
            )
        sleep(POLL_SECONDS)


def _check_ready(cluster: Cluster) -> None:
    if cluster.namespace_exists() is False:
        raise KubeError(
            f"namespace {cluster.namespace} does not exist: create it (kubectl create namespace "
            f"{cluster.namespace}) or pass --namespace"
        )
    if not cluster.network_service_crd_installed():
        raise KubeError(
            f"{cluster.where} has no NetworkService CRD ({NSM_PLURAL}.{NSM_GROUP}/{NSM_VERSION}): install "
            "NSM v1 first (its registry-k8s brings the CRD, nsmgr and a forwarder the links), then apply"
        )


def apply(
    cluster: Cluster,
    objects: Sequence[Manifest],
    progress: Progress,
    timeout: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Report:
    """Create or update `objects` (manifests' order: NetworkService, then ConfigMaps and Pods)."""
    _check_ready(cluster)
    topology = _topology_of(objects)
    report = Report()
    existing = {id(obj): cluster.read(obj) for obj in objects}
    for obj in objects:  # refuse before changing anything
        found = existing[id(obj)]
        if found is not None and not _ours(found, obj, topology):
            raise KubeError(
                f"{_ref(obj)} exists in namespace {cluster.namespace} and is not part of topology {topology} "
                f"(label topo={found.labels.get('topo', '<none>')}): delete it, or use another --namespace"
            )
    pods = [obj for obj in objects if obj["kind"] == "Pod"]
    others = [obj for obj in objects if obj["kind"] != "Pod"]
    total = len(objects)
    done = 0
    for obj in others:
        found = existing[id(obj)]
        if found is None:
            cluster.create(obj)
            report.created.append(_ref(obj))
        elif _same(found, obj) and not found.terminating:
            report.unchanged.append(_ref(obj))
        else:
            cluster.replace(obj, found.resource_version)
            report.updated.append(_ref(obj))
        done += 1
        progress(f"apply {obj['kind'].lower()}", done, total)
    # most of a Pod cannot be updated in place: delete every changed one, wait once, create them again
    replaced = []
    for pod in pods:
        found = existing[id(pod)]
        if found is not None and (found.terminating or not _same(found, pod)):
            if not found.terminating:
                cluster.delete(pod)
            replaced.append(pod)
    if replaced:
        _wait_gone(cluster, replaced, progress, timeout, sleep, clock)
    for pod in pods:
        if existing[id(pod)] is None:
            cluster.create(pod)
            report.created.append(_ref(pod))
        elif pod in replaced:
            cluster.create(pod)
            report.recreated.append(_ref(pod))
        else:
            report.unchanged.append(_ref(pod))
        done += 1
        progress("apply pod", done, total)
    return report


def _same(found: Existing, manifest: Manifest) -> bool:
    wanted = (manifest["metadata"].get("annotations") or {}).get(HASH_ANNOTATION)
    return wanted is not None and found.annotations.get(HASH_ANNOTATION) == wanted


def delete(
    cluster: Cluster,
    objects: Sequence[Manifest],
    progress: Progress,
    timeout: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Report:
    """Delete the Pods, wait until they are gone, then the ConfigMaps and the NetworkService."""
    topology = _topology_of(objects)
    report = Report()
    pods = [obj for obj in objects if obj["kind"] == "Pod"]
    rest = [obj for obj in objects if obj["kind"] == "ConfigMap"] + [
        obj for obj in objects if obj["kind"] == "NetworkService"
    ]
    deleting = []
    for done, pod in enumerate(pods, 1):
        found = cluster.read(pod)
        if found is None:
            report.absent.append(_ref(pod))
        elif not _ours(found, pod, topology):
            report.foreign.append(_ref(pod))
        else:
            if not found.terminating:
                cluster.delete(pod)
            deleting.append(pod)
            report.deleted.append(_ref(pod))
        progress("pods.delete", done, len(pods))
    if deleting:
        _wait_gone(cluster, deleting, progress, timeout, sleep, clock)
    for done, obj in enumerate(rest, 1):
        found = cluster.read(obj)
        if found is None:
            report.absent.append(_ref(obj))
        elif not _ours(found, obj, topology):
            report.foreign.append(_ref(obj))
        elif cluster.delete(obj):
            report.deleted.append(_ref(obj))
        else:
            report.absent.append(_ref(obj))
        progress("configs.delete", done, len(rest))
    return report
