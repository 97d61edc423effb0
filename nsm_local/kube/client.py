"""The boundary to the Kubernetes API: the only module that imports the official `kubernetes` client.

The client is untyped and imported only here, only in Kubernetes mode (`pip install '.[kube]'`). Every
call asks for the raw HTTP response (`_preload_content=False`) and decodes the JSON itself, so the rest of
nsm-local sees plain dicts (the API's camelCase JSON, exactly what the API server stores: a
NetworkService's spec is never passed through a generated model that would drop or rename fields),
`Listing`s and `WatchEvent`s; client and transport errors become `errors.KubeError`s naming what was
asked of which server.

* `connect`: a kubeconfig (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`) when one is named or we run
  outside a pod, else the pod's service account (in-cluster).
* `ResourceClient`: list (paginated) and watch (bookmarks on, server-side timeout, a read timeout a little
  beyond it, so a connection that silently died is noticed) of one kind of object.
* `ensure_crd`: create a CustomResourceDefinition unless one of its name exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from nsm_local.kube.errors import KubeApiError, KubeConfigError, KubeError, KubeUnreachable, ResourceExpired
from nsm_local.kube.reflector import KubeObject, Listing, WatchEvent

REQUEST_TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for a list or a get: an unreachable API server fails fast instead of hanging."""
WATCH_READ_SLACK = 30.0
"""A watch's read timeout is its server-side timeout plus this: silence beyond that is a dead connection."""
PAGE_SIZE = 500


@dataclass(frozen=True, slots=True)
class KubeApi:
    """The client's API objects (untyped) and where they point, for messages."""

    core: Any
    custom: Any
    extensions: Any
    where: str


def connect(kubeconfig: str | None = None, context: str | None = None) -> KubeApi:
    """Load a configuration and make the API objects. `KubeConfigError` (one line) if there is none."""
    from kubernetes import client, config

    in_pod = "KUBERNETES_SERVICE_HOST" in os.environ
    explicit = kubeconfig is not None or context is not None
    source = "the pod's service account"
    try:
        if explicit or not in_pod:
            source = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            config.load_kube_config(config_file=kubeconfig, context=context)
        else:
            config.load_incluster_config()
    except (config.ConfigException, OSError, TypeError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KubeConfigError(f"no usable Kubernetes configuration in {source}: {reason}") from None
    configuration = client.Configuration.get_default_copy()
    configuration.retries = 0  # the reflectors retry, with backoff and logs
    api = client.ApiClient(configuration)
    return KubeApi(
        core=client.CoreV1Api(api),
        custom=client.CustomObjectsApi(api),
        extensions=client.ApiextensionsV1Api(api),
        where=f"the Kubernetes API at {configuration.host}",
    )


def _status_message(body: object) -> str:
    """The `message` of a Kubernetes Status body, if it is one."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        status = json.loads(body) if isinstance(body, str) else body
    except ValueError:
        return ""
    message = status.get("message") if isinstance(status, dict) else None
    return str(message) if message else ""


def _call(where: str, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`method(...)` with the client's errors turned into ours."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return method(*args, **kwargs)
    except ApiException as exc:
        status = int(getattr(exc, "status", 0) or 0)
        detail = _status_message(getattr(exc, "body", None)) or str(getattr(exc, "reason", "") or "")
        if status == 0:
            raise KubeUnreachable(f"cannot reach {where} ({what}): {detail}") from None
        if status == 410:
            raise ResourceExpired(f"{where}: {what}: 410 {detail}".rstrip()) from None
        raise KubeApiError(status, f"{where} refused to {what}: {status} {detail}".rstrip()) from None
    except (HTTPError, OSError) as exc:
        text = str(getattr(exc, "reason", None) or exc)  # urllib3 wraps the socket error in `reason`
        reason = text[text.find("[Errno") :] if "[Errno" in text else (text or type(exc).__name__)
        raise KubeUnreachable(f"cannot reach {where} ({what}): {reason}") from None


def _decode(where: str, what: str, data: bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(data)
    except ValueError as exc:
        raise KubeError(f"{where}: {what}: the answer is not JSON ({exc})") from None
    if not isinstance(decoded, dict):
        raise KubeError(f"{where}: {what}: the answer is not a JSON object")
    return decoded


class WatchResponse:
    """One watch: its events, line by line, until the server ends it or `close` is called.

    `close` may come from another thread while one iterates: it then only shuts the socket down for
    reading, which wakes the blocked read at once; the iterating thread disposes of the connection. A
    watch that ended cleanly gives its connection back to the pool, any other is closed.
    """

    def __init__(self, response: Any, where: str, what: str) -> None:
        self._response = response
        self._where = where
        self._what = what
        self._lock = threading.Lock()
        self._closed = False
        self._iterating = False
        self._disposed = False

    def __iter__(self) -> Iterator[WatchEvent]:
        from urllib3.exceptions import HTTPError

        with self._lock:
            if self._closed:
                self._dispose(clean=False)
                return
            self._iterating = True
        clean = False
        try:
            for line in self._response:
                if line.strip():
                    yield self._event(line)
            clean = True
        except (HTTPError, OSError, ValueError) as exc:
            if not self._closed:
                raise KubeUnreachable(f"the watch of {self._what} at {self._where} broke: {exc}") from None
        finally:
            with self._lock:
                self._iterating = False
            self._dispose(clean)

    def _event(self, line: bytes) -> WatchEvent:
        event = _decode(self._where, f"watch {self._what}", line)
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(kind, str) or not isinstance(obj, dict):
            raise KubeError(f"{self._where}: watch {self._what}: an event without type or object")
        if kind == "ERROR":  # a Status: 410 when our resourceVersion is too old
            code = int(obj.get("code") or 0)
            message = f"{self._where}: watch {self._what}: {code} {obj.get('message') or ''}".rstrip()
            if code == 410:
                raise ResourceExpired(message)
            raise KubeApiError(code, message)
        return WatchEvent(kind, obj)

    def close(self) -> None:
        """Stop the watch (from any thread): reads end at once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            iterating = self._iterating
        if iterating:
            with contextlib.suppress(Exception):  # urllib3 >= 2.3; older ones end at the read timeout
                self._response.shutdown()
        else:
            self._dispose(clean=False)

    def _dispose(self, clean: bool) -> None:
        with self._lock:
            if self._disposed:
                return
            self._disposed = True
        with contextlib.suppress(Exception):
            if clean:
                self._response.release_conn()
            else:
                self._response.close()


class ResourceClient:
    """List and watch one kind of object through the client (a `reflector.BlockingResource`).

    `call(**kwargs)` is the client's list method with its path arguments bound (e.g.
    `list_pod_for_all_namespaces`); `query` is added to every call (e.g. a field selector).
    """

    def __init__(
        self, api: KubeApi, what: str, call: Callable[..., Any], missing: str = "", **query: Any
    ) -> None:
        self._api = api
        self._what = what
        self._call = call
        self._missing = missing
        self._query = query

    def __repr__(self) -> str:
        return f"<ResourceClient {self._what} at {self._api.where}>"

    @property
    def what(self) -> str:
        return self._what

    def _request(self, what: str, **kwargs: Any) -> Any:
        try:
            return _call(self._api.where, what, self._call, **self._query, **kwargs)
        except KubeApiError as exc:
            if exc.status == 404 and self._missing:
                raise KubeApiError(404, f"{exc}: {self._missing}") from None
            raise

    def list(self) -> Listing:
        items: list[KubeObject] = []
        token: str | None = None
        while True:
            paging = {"limit": PAGE_SIZE, **({"_continue": token} if token else {})}
            response = self._request(
                f"list {self._what}",
                **paging,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
            page = _decode(self._api.where, f"list {self._what}", response.data)
            items.extend(item for item in page.get("items") or () if isinstance(item, dict))
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") or None
            if token is None:
                return Listing(items, str(metadata.get("resourceVersion") or ""))

    def watch(self, resource_version: str, timeout_seconds: int) -> WatchResponse:
        response = self._request(
            f"watch {self._what}",
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            _preload_content=False,
            _request_timeout=(REQUEST_TIMEOUT[0], timeout_seconds + WATCH_READ_SLACK),
        )
        return WatchResponse(response, self._api.where, self._what)


def network_services(
    api: KubeApi, group: str, version: str, plural: str, namespace: str | None
) -> ResourceClient:
    """NetworkService objects of one namespace, or of all (`namespace` None)."""
    missing = (
        f"is NSM's NetworkService CRD installed? (kubectl get crd {plural}.{group}; "
        "`nsm-local kube-manifest` includes it, `serve --install-crd` creates it)"
    )
    if namespace is None:

        def every(**kwargs: Any) -> Any:
            return api.custom.list_cluster_custom_object(group, version, plural, **kwargs)

        return ResourceClient(api, f"{plural}.{group}", every, missing)

    def one(**kwargs: Any) -> Any:
        return api.custom.list_namespaced_custom_object(group, version, namespace, plural, **kwargs)

    return ResourceClient(api, f"{plural}.{group} in namespace {namespace}", one, missing)


def node_pods(api: KubeApi, node: str) -> ResourceClient:
    """The pods scheduled to `node`, in every namespace (a field selector on spec.nodeName)."""
    return ResourceClient(
        api,
        f"pods on node {node}",
        api.core.list_pod_for_all_namespaces,
        field_selector=f"spec.nodeName={node}",
    )


def ensure_crd(api: KubeApi, crd: dict[str, Any]) -> bool:
    """Create `crd` unless a CustomResourceDefinition of its name exists; True if it was created."""
    name = crd["metadata"]["name"]
    try:
        _call(
            api.where,
            f"read customresourcedefinition {name}",
            api.extensions.read_custom_resource_definition,
            name,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
        return False
    except KubeApiError as exc:
        if exc.status != 404:
            raise
    try:
        _call(
            api.where,
            f"create customresourcedefinition {name}",
            api.extensions.create_custom_resource_definition,
            crd,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
    except KubeApiError as exc:
        if exc.status == 409:  # someone else (another node's nsm-local) was quicker
            return False
        raise
    return True
