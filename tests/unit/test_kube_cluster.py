"""`nsm-topo apply` / `delete` logic at the client boundary, against FAKES of the kubernetes client's
`CoreV1Api` and `CustomObjectsApi` (an in-memory API server: real `kubernetes` model objects and
`ApiException`s, pods that take a few polls to terminate); and once through the REAL client over HTTP to a
stub of a few API server paths, for what the client sends and how it reads answers back. No cluster is
involved: a real API server test is issue 8's, and it drives the same `Cluster`, `apply` and `delete`."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from kubernetes.client import V1ObjectMeta, V1Pod
from kubernetes.client.exceptions import ApiException

from nsm_topo.kube.cluster import Cluster, KubeError, apply, delete
from nsm_topo.kube.manifests import HASH_ANNOTATION, KubeOptions, Manifest, manifests
from nsm_topo.topology import load_topology
from nsm_topo.wiring import wire

TRIANGLE = Path(__file__).resolve().parents[2] / "examples" / "triangle" / "topology.yml"


def _missing(what: str) -> ApiException:
    exc = ApiException(status=404, reason="Not Found")
    exc.body = json.dumps({"kind": "Status", "message": f"{what} not found", "reason": "NotFound"})
    return exc


class FakeApiServer:
    """What both fake APIs share: objects by (kind, namespace, name), calls in order, a pod grace model."""

    def __init__(self, *, crd: bool = True, namespaces: tuple[str, ...] = ("default",), polls_to_go: int = 2):
        self.crd = crd
        self.namespaces = set(namespaces)
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.polls_to_go = polls_to_go
        self.terminating: dict[tuple[str, str, str], int] = {}
        self.versions = 0
        self.stuck = False
        """Pods being deleted never go (a sidecar that hangs past its grace period, say)."""

    def record(self, verb: str, kind: str, name: str) -> None:
        self.calls.append((verb, kind, name))

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        key = (kind, namespace, name)
        if key in self.terminating and not self.stuck:
            self.terminating[key] -= 1
            if self.terminating[key] < 0:
                del self.terminating[key]
                del self.objects[key]
        if key not in self.objects:
            raise _missing(f"{kind} {name}")
        return self.objects[key]

    def put(self, kind: str, namespace: str, body: dict[str, Any], *, replace: bool) -> dict[str, Any]:
        assert isinstance(body, dict), "bodies are sent as plain dicts"
        if namespace not in self.namespaces:
            raise _missing(f"namespaces {namespace}")
        name = body["metadata"]["name"]
        key = (kind, namespace, name)
        if replace:
            current = self.get(kind, namespace, name)
            sent = body["metadata"].get("resourceVersion")
            if sent != current["metadata"]["resourceVersion"]:
                raise ApiException(status=409, reason="Conflict")
        elif key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self.versions += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.versions)
        self.objects[key] = stored
        self.record("replace" if replace else "create", kind, name)
        return stored

    def remove(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        key = (kind, namespace, name)
        found = self.get(kind, namespace, name)
        self.record("delete", kind, name)
        if kind == "Pod":  # graceful: it stays, terminating, for a few reads
            found["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            self.terminating.setdefault(key, self.polls_to_go)
        else:
            del self.objects[key]
        return {"kind": "Status", "status": "Success"}


def _v1(stored: dict[str, Any]) -> V1Pod:
    meta = stored["metadata"]
    return V1Pod(
        metadata=V1ObjectMeta(
            name=meta["name"],
            labels=meta.get("labels"),
            annotations=meta.get("annotations"),
            resource_version=meta["resourceVersion"],
            deletion_timestamp=meta.get("deletionTimestamp"),
        )
    )


class FakeCoreV1Api:
    """The methods of kubernetes.client.CoreV1Api that Cluster calls, same signatures, model objects back."""

    def __init__(self, server: FakeApiServer) -> None:
        self.server = server

    def read_namespace(self, name: str, **_: Any) -> Any:
        if name not in self.server.namespaces:
            raise _missing(f"namespaces {name}")
        return V1ObjectMeta(name=name)

    def read_namespaced_pod(self, name: str, namespace: str, **_: Any) -> V1Pod:
        return _v1(self.server.get("Pod", namespace, name))

    def read_namespaced_config_map(self, name: str, namespace: str, **_: Any) -> V1Pod:
        return _v1(self.server.get("ConfigMap", namespace, name))

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any], **_: Any) -> V1Pod:
        return _v1(self.server.put("Pod", namespace, body, replace=False))

    def create_namespaced_config_map(self, namespace: str, body: dict[str, Any], **_: Any) -> V1Pod:
        return _v1(self.server.put("ConfigMap", namespace, body, replace=False))

    def replace_namespaced_config_map(
        self, name: str, namespace: str, body: dict[str, Any], **_: Any
    ) -> V1Pod:
        assert body["metadata"]["name"] == name
        return _v1(self.server.put("ConfigMap", namespace, body, replace=True))

    def delete_namespaced_pod(self, name: str, namespace: str, **_: Any) -> Any:
        return self.server.remove("Pod", namespace, name)

    def delete_namespaced_config_map(self, name: str, namespace: str, **_: Any) -> Any:
        return self.server.remove("ConfigMap", namespace, name)


class FakeCustomObjectsApi:
    """The methods of kubernetes.client.CustomObjectsApi that Cluster calls; dicts back, as the real one."""

    def __init__(self, server: FakeApiServer) -> None:
        self.server = server

    def _check(self, group: str, version: str, plural: str) -> None:
        assert (group, version, plural) == ("networkservicemesh.io", "v1", "networkservices")
        if not self.server.crd:
            raise _missing("the server could not find the requested resource")

    def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, **_: Any
    ) -> Any:
        self._check(group, version, plural)
        return {"items": []}

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, **_: Any
    ) -> Any:
        self._check(group, version, plural)
        return copy.deepcopy(self.server.get("NetworkService", namespace, name))

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any], **_: Any
    ) -> Any:
        self._check(group, version, plural)
        return self.server.put("NetworkService", namespace, body, replace=False)

    def replace_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: dict[str, Any], **_: Any
    ) -> Any:
        self._check(group, version, plural)
        return self.server.put("NetworkService", namespace, body, replace=True)

    def delete_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, **_: Any
    ) -> Any:
        self._check(group, version, plural)
        return self.server.remove("NetworkService", namespace, name)


def _cluster(server: FakeApiServer, namespace: str = "default") -> Cluster:
    return Cluster(FakeCoreV1Api(server), FakeCustomObjectsApi(server), namespace, "the fake cluster")


def _objects(**options: Any) -> list[Manifest]:
    return manifests(wire(load_topology(TRIANGLE)), KubeOptions(**options))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def _quiet(event: str, done: int, total: int) -> None:
    pass


def test_apply_creates_the_network_service_first_then_config_maps_then_pods() -> None:
    server = FakeApiServer()
    report = apply(_cluster(server), _objects(), _quiet)
    created = [(kind, name) for verb, kind, name in server.calls if verb == "create"]
    assert created[0] == ("NetworkService", "triangle")
    assert [k for k, _ in created[1:4]] == ["ConfigMap"] * 3 and [k for k, _ in created[4:]] == ["Pod"] * 3
    assert len(report.created) == 7 and not report.updated and not report.recreated


def test_apply_twice_changes_nothing_the_second_time() -> None:
    server = FakeApiServer()
    apply(_cluster(server), _objects(), _quiet)
    calls = len(server.calls)
    report = apply(_cluster(server), _objects(), _quiet)
    assert server.calls[calls:] == [] and len(report.unchanged) == 7
    assert report.summary() == "7 unchanged"


def test_apply_with_a_new_image_recreates_the_pods_waiting_until_the_old_ones_are_gone() -> None:
    server = FakeApiServer(polls_to_go=3)
    apply(_cluster(server), _objects(), _quiet)
    calls = len(server.calls)
    events: list[tuple[str, int, int]] = []
    clock = Clock()
    report = apply(
        _cluster(server),
        _objects(image_tag="0.2.0"),
        lambda *event: events.append(event),
        sleep=clock.sleep,
        clock=clock,
    )
    later = server.calls[calls:]
    assert [verb for verb, _, _ in later] == ["delete"] * 3 + ["create"] * 3
    assert sorted(report.recreated) == ["Pod frr-a", "Pod frr-b", "Pod frr-c"] and len(report.unchanged) == 4
    assert ("pods.gone", 3, 3) in events and clock.now > 0  # it polled until they were gone
    pod = server.objects[("Pod", "default", "frr-a")]
    assert pod["spec"]["initContainers"][0]["image"] == "nse-sidecar:0.2.0"


def test_apply_replaces_a_changed_config_map_and_network_service_with_their_resource_version() -> None:
    server = FakeApiServer()
    objects = _objects()
    apply(_cluster(server), objects, _quiet)
    changed = copy.deepcopy(objects)
    for obj in changed:
        if obj["kind"] != "Pod":
            obj["metadata"]["annotations"] = {HASH_ANNOTATION: "something-else"}
    calls = len(server.calls)
    report = apply(_cluster(server), changed, _quiet)
    assert {(v, k) for v, k, _ in server.calls[calls:]} == {
        ("replace", "ConfigMap"),
        ("replace", "NetworkService"),
    }
    assert len(report.updated) == 4


def test_apply_without_nsms_crd_says_install_nsm_first_and_creates_nothing() -> None:
    server = FakeApiServer(crd=False)
    with pytest.raises(KubeError, match="install NSM v1 first") as raised:
        apply(_cluster(server), _objects(), _quiet)
    assert "networkservices.networkservicemesh.io" in str(raised.value) and "\n" not in str(raised.value)
    assert server.calls == []


def test_apply_into_a_missing_namespace_says_how_to_create_it() -> None:
    server = FakeApiServer()
    with pytest.raises(KubeError, match="kubectl create namespace labs"):
        apply(_cluster(server, "labs"), _objects(namespace="labs"), _quiet)
    assert server.calls == []


def test_apply_refuses_to_touch_a_pod_of_the_same_name_that_is_not_this_topologys() -> None:
    server = FakeApiServer()
    server.put(
        "Pod",
        "default",
        {"metadata": {"name": "frr-b", "labels": {"app": "frr-b", "topo": "other"}}},
        replace=False,
    )
    calls = len(server.calls)
    with pytest.raises(KubeError, match=r"Pod frr-b exists .* not part of topology triangle"):
        apply(_cluster(server), _objects(), _quiet)
    assert server.calls[calls:] == []


def test_delete_removes_pods_first_waits_until_they_are_gone_then_the_rest() -> None:
    server = FakeApiServer(polls_to_go=2)
    apply(_cluster(server), _objects(), _quiet)
    calls = len(server.calls)
    events: list[tuple[str, int, int]] = []
    clock = Clock()
    report = delete(_cluster(server), _objects(), lambda *e: events.append(e), sleep=clock.sleep, clock=clock)
    deleted = [kind for verb, kind, _ in server.calls[calls:] if verb == "delete"]
    assert deleted == ["Pod"] * 3 + ["ConfigMap"] * 3 + ["NetworkService"]
    gone = [e for e in events if e[0] == "pods.gone"]
    assert gone[-1] == ("pods.gone", 3, 3) and gone[0][1] < 3  # progress while they terminate
    first_config_map = next(i for i, e in enumerate(events) if e[0] == "configs.delete")
    assert events.index(gone[-1]) < first_config_map  # nothing else goes before the pods are gone
    assert server.objects == {} and len(report.deleted) == 7


def test_delete_twice_is_fine_and_says_everything_is_already_gone() -> None:
    server = FakeApiServer()
    apply(_cluster(server), _objects(), _quiet)
    delete(_cluster(server), _objects(), _quiet, sleep=lambda _: None)
    report = delete(_cluster(server), _objects(), _quiet, sleep=lambda _: None)
    assert report.summary() == "7 already gone"


def test_delete_gives_up_after_its_timeout_naming_the_pods_still_terminating() -> None:
    server = FakeApiServer()
    apply(_cluster(server), _objects(), _quiet)
    server.stuck = True
    clock = Clock()
    with pytest.raises(KubeError, match=r"still terminating after 10s: frr-a, frr-b, frr-c") as raised:
        delete(_cluster(server), _objects(), _quiet, timeout=10, sleep=clock.sleep, clock=clock)
    assert 10 <= clock.now <= 12 and "\n" not in str(raised.value)
    assert ("ConfigMap", "default", "frr-a-config") in server.objects  # the rest waits for the pods


def test_delete_leaves_objects_of_another_topology_alone() -> None:
    server = FakeApiServer()
    server.put("Pod", "default", {"metadata": {"name": "frr-a", "labels": {"topo": "other"}}}, replace=False)
    report = delete(_cluster(server), _objects(), _quiet, sleep=lambda _: None)
    assert report.foreign == ["Pod frr-a"] and ("Pod", "default", "frr-a") in server.objects


def test_a_refusal_by_the_api_server_is_one_line_that_names_the_rights_needed() -> None:
    class Forbidding(FakeCoreV1Api):
        def create_namespaced_config_map(self, namespace: str, body: dict[str, Any], **_: Any) -> V1Pod:
            raise ApiException(status=403, reason="Forbidden")

    server = FakeApiServer()
    cluster = Cluster(Forbidding(server), FakeCustomObjectsApi(server), "default", "the fake cluster")
    with pytest.raises(
        KubeError, match=r"refused to create ConfigMap frr-a-config .*403 Forbidden.*configmaps"
    ):
        apply(cluster, _objects(), _quiet)


def test_an_unreachable_api_server_says_to_check_the_cluster_and_kubeconfig() -> None:
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    class Unreachable(FakeCoreV1Api):
        def read_namespace(self, name: str, **_: Any) -> Any:
            cause = NewConnectionError(
                None, "Failed to establish a new connection: [Errno 111] Connection refused"
            )
            raise MaxRetryError(None, "/api/v1/namespaces/default", cause)  # type: ignore[arg-type]

    server = FakeApiServer()
    cluster = Cluster(
        Unreachable(server), FakeCustomObjectsApi(server), "default", "the cluster at https://x:6443"
    )
    with pytest.raises(
        KubeError, match=r"cannot reach the cluster at https://x:6443 .*Connection refused.*--kubeconfig"
    ):
        apply(cluster, _objects(), _quiet)


# -- the real client over HTTP, against a stub API server (what it sends and how it reads the answers) -------


class _StubApiServer(BaseHTTPRequestHandler):
    """A few REST paths of an API server, in memory: enough for apply/delete through the real client."""

    store: ClassVar[dict[str, dict[str, Any]]] = {}
    log: ClassVar[list[tuple[str, str]]] = []

    def _reply(self, code: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _missing(self) -> None:
        self._reply(
            404,
            {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404},
        )

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self.log.append(("GET", path))
        if path == "/api/v1/namespaces/default":
            self._reply(200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        elif path.endswith("/networkservices"):
            self._reply(
                200, {"apiVersion": "networkservicemesh.io/v1", "kind": "NetworkServiceList", "items": []}
            )
        elif path in self.store:
            self._reply(200, self.store[path])
        else:
            self._missing()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        path = f"{self.path.split('?')[0]}/{body['metadata']['name']}"
        self.log.append(("POST", path))
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = "1"
        self.store[path] = stored
        self._reply(201, stored)

    def do_DELETE(self) -> None:
        path = self.path.split("?")[0]
        self.log.append(("DELETE", path))
        if path in self.store:
            self._reply(200, self.store.pop(path))
        else:
            self._missing()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def real_client_cluster() -> Iterator[tuple[Cluster, type[_StubApiServer]]]:
    from kubernetes import client

    handler = type("Stub", (_StubApiServer,), {"store": {}, "log": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{server.server_port}"))
    yield Cluster(client.CoreV1Api(api), client.CustomObjectsApi(api), "default", "the stub"), handler
    server.shutdown()
    api.close()
    server.server_close()


def test_the_real_client_sends_each_object_unchanged_and_apply_twice_is_idempotent(
    real_client_cluster: tuple[Cluster, type[_StubApiServer]],
) -> None:
    cluster, stub = real_client_cluster
    objects = _objects()
    assert len(apply(cluster, objects, _quiet).created) == 7
    stored = [
        {**o, "metadata": {k: v for k, v in o["metadata"].items() if k != "resourceVersion"}}
        for o in stub.store.values()
    ]

    def key(obj: Manifest) -> tuple[str, str]:
        return (obj["kind"], obj["metadata"]["name"])

    assert sorted(stored, key=key) == sorted(
        objects, key=key
    )  # the client's models dropped or renamed nothing
    assert [m for m, _ in stub.log].count("POST") == 7
    assert apply(cluster, objects, _quiet).summary() == "7 unchanged"  # read back through the client's models
    report = delete(cluster, objects, _quiet, sleep=lambda _: None)
    assert len(report.deleted) == 7 and stub.store == {}
