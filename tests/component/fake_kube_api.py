"""A stub Kubernetes API server over plain HTTP, for nsm-local's Kubernetes mode with the real client.

It serves what nsm-local asks of a cluster, with the API server's semantics where they matter:

* `GET /api/v1/pods` (with `fieldSelector=spec.nodeName=<node>`), `GET /apis/networkservicemesh.io/v1/
  networkservices` and `.../namespaces/<ns>/networkservices`: a list (`limit`/`continue` pagination, the
  collection's resourceVersion) or, with `watch=true`, a chunked stream of JSON events after the given
  resourceVersion, with BOOKMARKs when asked, ended after `timeoutSeconds`; a resourceVersion older than
  the compacted history gets an ERROR event with a 410 Status, as etcd compaction causes;
* `GET`/`POST` `/apis/apiextensions.k8s.io/v1/customresourcedefinitions[/<name>]`; without the
  NetworkService CRD, its paths answer 404;
* every request is recorded (`requests`).

The test changes objects with `put`/`delete` (each a new resourceVersion, as the API server numbers them),
forgets history with `compact`, and ends open watches with `end_watches`. No authentication is checked:
it listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
NS_PREFIX = "/apis/networkservicemesh.io/v1"
NS_CRD = "networkservices.networkservicemesh.io"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]


@dataclass
class _Collection:
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    history: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


class FakeKubeApi:
    def __init__(self, crd_installed: bool = True, page_size: int = 2) -> None:
        self._lock = threading.Condition()
        self._version = 100
        self._compacted = 0  # history at or below this resourceVersion is gone
        self._generation = 0  # bumped by end_watches
        self._stopping = False
        self._kinds = {"pods": _Collection(), "networkservices": _Collection()}
        self.crds: dict[str, dict[str, Any]] = {}
        if crd_installed:
            self.crds[NS_CRD] = {"metadata": {"name": NS_CRD}}
        self.page_size = page_size
        self.requests: list[Request] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake kube api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeKubeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "test", "user": {"token": "not-checked"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "test"}}],
                    "current-context": "fake",
                }
            )
        )
        return path

    # -- what the test does to the cluster -------------------------------------------------------------------

    def put(self, kind: str, obj: dict[str, Any]) -> int:
        with self._lock:
            self._version += 1
            stored = json.loads(json.dumps(obj))
            metadata = stored.setdefault("metadata", {})
            metadata["resourceVersion"] = str(self._version)
            metadata.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            collection = self._kinds[kind]
            change = "MODIFIED" if _key(stored) in collection.objects else "ADDED"
            collection.objects[_key(stored)] = stored
            collection.history.append((self._version, change, stored))
            self._lock.notify_all()
            return self._version

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._version += 1
            stored = self._kinds[kind].objects.pop((namespace, name))
            gone = {**stored, "metadata": {**stored["metadata"], "resourceVersion": str(self._version)}}
            self._kinds[kind].history.append((self._version, "DELETED", gone))
            self._lock.notify_all()

    def compact(self) -> None:
        """Forget the history so far: a watch from any earlier resourceVersion gets 410 Gone."""
        with self._lock:
            self._compacted = self._version

    def end_watches(self) -> None:
        """End every open watch cleanly (as the API server does at its timeout or on a restart)."""
        with self._lock:
            self._generation += 1
            self._lock.notify_all()

    def seen(self, path: str, **query: str) -> list[Request]:
        return [
            r
            for r in list(self.requests)
            if r.path == path and all(r.query.get(k) == v for k, v in query.items())
        ]

    # -- serving ------------------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api._get(self)

            def do_POST(self) -> None:
                api._post(self)

        return Handler

    def _record(self, handler: BaseHTTPRequestHandler) -> tuple[str, dict[str, str]]:
        url = urlparse(handler.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.requests.append(Request(handler.command, url.path, query))
        return url.path, query

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _status(self, handler: BaseHTTPRequestHandler, code: int, message: str) -> None:
        reason = {404: "NotFound", 409: "AlreadyExists", 410: "Expired"}.get(code, "Unknown")
        self._send(
            handler,
            code,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": message,
                "reason": reason,
                "code": code,
            },
        )

    def _post(self, handler: BaseHTTPRequestHandler) -> None:
        path, _ = self._record(handler)
        body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length") or 0)) or b"{}")
        if path != CRD_PATH:
            self._status(handler, 404, f"no POST here: {path}")
            return
        name = body["metadata"]["name"]
        with self._lock:
            if name in self.crds:
                self._status(handler, 409, f"customresourcedefinitions {name!r} already exists")
                return
            self.crds[name] = body
        self._send(handler, 201, body)

    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        path, query = self._record(handler)
        if path.startswith(CRD_PATH + "/"):
            name = path.rsplit("/", 1)[-1]
            crd = self.crds.get(name)
            if crd is None:
                self._status(
                    handler, 404, f'customresourcedefinitions.apiextensions.k8s.io "{name}" not found'
                )
            else:
                self._send(handler, 200, crd)
            return
        if path == "/api/v1/pods":
            kind, namespace = "pods", None
        elif path == f"{NS_PREFIX}/networkservices":
            kind, namespace = "networkservices", None
        elif path.startswith(f"{NS_PREFIX}/namespaces/") and path.endswith("/networkservices"):
            kind, namespace = "networkservices", path.split("/")[5]
        else:
            self._status(handler, 404, "the server could not find the requested resource")
            return
        if kind == "networkservices" and NS_CRD not in self.crds:
            self._status(handler, 404, "the server could not find the requested resource")
            return
        wanted = _Filter(namespace, query.get("fieldSelector"))
        if query.get("watch", "").lower() in ("true", "1"):
            self._watch(handler, kind, wanted, query)
        else:
            self._list(handler, kind, wanted, query)

    def _list(
        self, handler: BaseHTTPRequestHandler, kind: str, wanted: _Filter, query: dict[str, str]
    ) -> None:
        with self._lock:
            items = [o for _, o in sorted(self._kinds[kind].objects.items()) if wanted(o)]
            version = self._version
        start = int(query.get("continue") or 0)
        size = min(int(query.get("limit") or len(items) or 1), self.page_size)
        page = items[start : start + size]
        metadata: dict[str, Any] = {"resourceVersion": str(version)}
        if start + size < len(items):
            metadata["continue"] = str(start + size)
        self._send(handler, 200, {"kind": "List", "apiVersion": "v1", "metadata": metadata, "items": page})

    def _watch(
        self, handler: BaseHTTPRequestHandler, kind: str, wanted: _Filter, query: dict[str, str]
    ) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def chunk(event: dict[str, Any]) -> None:
            data = json.dumps(event).encode() + b"\n"
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            handler.wfile.flush()

        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + int(query.get("timeoutSeconds") or 60)
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        try:
            with self._lock:
                generation = self._generation
                if since and since < self._compacted:
                    event = {
                        "type": "ERROR",
                        "object": {
                            "kind": "Status",
                            "code": 410,
                            "reason": "Expired",
                            "message": f"too old resource version: {since}",
                        },
                    }
                    chunk(event)
                    handler.wfile.write(b"0\r\n\r\n")
                    return
                if bookmarks:
                    chunk(
                        {
                            "type": "BOOKMARK",
                            "object": {"metadata": {"resourceVersion": str(max(since, self._version))}},
                        }
                    )
                while not self._stopping and generation == self._generation:
                    for version, change, obj in self._kinds[kind].history:
                        if version > since and wanted(obj):
                            chunk({"type": change, "object": obj})
                    since = max(since, self._version)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
            handler.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away
            pass


@dataclass(frozen=True)
class _Filter:
    namespace: str | None
    field_selector: str | None

    def __call__(self, obj: dict[str, Any]) -> bool:
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        if self.field_selector:
            key, _, value = self.field_selector.partition("=")
            assert key == "spec.nodeName", f"unexpected field selector {self.field_selector}"
            return bool(obj.get("spec", {}).get("nodeName") == value)
        return True
