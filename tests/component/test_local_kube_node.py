"""`nsm-local serve --kubernetes` against a stub API server over HTTP, with the real `kubernetes` client.

The control plane runs in this process as `nsm-local serve` runs it (`serve_control_plane` with the node
connected from a kubeconfig, as `__main__` does); the stub (`fake_kube_api`) serves pods and NetworkService
objects as lists and chunked watch streams. The one thing not real is `/proc/<pid>/cgroup`: this test
process is in no pod, so the attestor is handed the cgroup text of a pod's container for it. Everything
after that is: the Workload API's SO_PEERCRED, the pod index fed by the watch, the SVID, mTLS to the
manager, the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from aio_helpers import grpc_calls_settled
from fake_kube_api import NS_PREFIX, FakeKubeApi
from local_plane import Plane
from spiffe._proto import workload_pb2, workload_pb2_grpc

from nsm_local.kube.node import KubeNode, KubeSettings, connect_node
from nsm_local.kube.pods import PodAttestor, read_cgroup
from nsm_local.kube.services import decode_network_service
from nsm_local.server import ServeSettings, serve_control_plane
from nsm_local.workload_api import NO_IDENTITY
from nsm_sdk._proto.registry.registry_pb2 import NetworkService, NetworkServiceQuery
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.protocol.registry_path import RegistryPath
from nsm_topo.kube.manifests import KubeOptions, network_service
from nsm_topo.topology import load_topology
from nsm_topo.wiring import wire

AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TD = "nsm.local"
NODE = "node-1"
UID_A = "11111111-2222-3333-4444-555555555555"
UID_B = "66666666-7777-8888-9999-000000000000"
ROUTER_A = "a1" * 32
SIDECAR_B = "b2" * 32
ELSEWHERE = "c3" * 32
WAIT = 10.0
HEADER = (("workload.spiffe.io", "true"),)


def pod(name: str, uid: str, node: str, *containers: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "labs", "uid": uid},
        "spec": {"nodeName": node},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": f"c{i}", "containerID": f"containerd://{c}"} for i, c in enumerate(containers)
            ],
        },
    }


def triangle() -> dict[str, Any]:
    """The NetworkService object exactly as `nsm-topo manifest` writes it."""
    return network_service(
        wire(load_topology(EXAMPLES / "triangle" / "topology.yml")), KubeOptions(namespace="labs")
    )


class Cgroups:
    """/proc/<pid>/cgroup, except for the pids the test places in a pod's container."""

    def __init__(self) -> None:
        self.placed: dict[int, str] = {}

    def place(self, pid: int, pod_uid: str, container: str) -> None:
        self.placed[pid] = f"0::/kubepods/besteffort/pod{pod_uid}/{container}\n"

    def __call__(self, pid: int) -> str | None:
        return self.placed.get(pid) or read_cgroup(pid)


async def until(condition: Callable[[], Any], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not await condition():  # noqa: ASYNC110 - polling the API under test, no event to wait on
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT}s: {what}") from None


@contextlib.asynccontextmanager
async def kube_plane(
    sock_dir: Path, api: FakeKubeApi, cgroups: Cgroups, **kube: Any
) -> AsyncIterator[tuple[Plane, KubeNode]]:
    settings = ServeSettings(
        socket_path=str(sock_dir / "nsm.sock"),
        workload_api_path=str(sock_dir / "agent.sock"),
        state_dir=str(sock_dir / "state"),
        kubernetes=KubeSettings(
            node_name=NODE, kubeconfig=str(api.kubeconfig(sock_dir)), attest_wait=1.0, sync_wait=5.0, **kube
        ),
    )
    assert settings.kubernetes is not None
    log = EventLog("test.kube")
    node = connect_node(settings.kubernetes, TD, log)
    node.attestor = PodAttestor(node.index, TD, NODE, log, wait=1.0, cgroup_of=cgroups)
    stop, ready = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve_control_plane(settings, stop, ready, node=node))
    started = asyncio.create_task(ready.wait())
    await asyncio.wait([server, started], return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        started.cancel()
        await server
    try:
        yield Plane(settings), node
    finally:
        stop.set()
        await server
        await grpc_calls_settled()


async def services_of(plane: Plane) -> dict[str, NetworkService]:
    async with plane.client() as client:
        return {
            r.network_service.name: r.network_service
            async for r in client.find_services(
                NetworkServiceQuery(network_service=NetworkService()), timeout=5
            )
        }


async def fetch_svid(plane: Plane) -> str:
    """One X.509-SVID from the plane's Workload API, over a raw stub (no client-side retries)."""
    async with grpc.aio.insecure_channel(f"unix:{plane.settings.workload_api_path}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
        try:
            response = await call.read()
        finally:
            call.cancel()
        return str(response.svids[0].spiffe_id)


def test_pods_get_pod_identities_and_network_service_objects_are_served(
    run_async: AsyncRunner, sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cgroups = Cgroups()
    cgroups.place(os.getpid(), UID_A, ROUTER_A)
    with FakeKubeApi(page_size=2) as api:
        api.put("pods", pod("frr-a", UID_A, NODE, ROUTER_A))
        api.put("pods", pod("frr-b", UID_B, NODE))  # created, its container not reported yet
        api.put("pods", pod("far-away", "99999999-2222-3333-4444-555555555555", "node-2", ELSEWHERE))
        api.put("networkservices", triangle())
        api.put(
            "networkservices",
            {"metadata": {"name": "p2p", "namespace": "other"}, "spec": {"payload": "ETHERNET"}},
        )
        api.put(
            "networkservices", {"metadata": {"name": "broken", "namespace": "other"}, "spec": {"payload": 3}}
        )

        async def main() -> None:
            async with kube_plane(sock_dir, api, cgroups) as (plane, node):
                # the node's pods only, listed (in pages) before serving
                assert api.seen("/api/v1/pods", fieldSelector=f"spec.nodeName={NODE}")
                assert all(
                    r.query.get("fieldSelector") == f"spec.nodeName={NODE}" for r in api.seen("/api/v1/pods")
                )
                assert node.index.pod_of(ELSEWHERE) is None and len(node.index) == 2

                # identity: this process is "in" frr-a's container
                async with plane.identity() as identity:
                    assert identity.spiffe_id == "spiffe://nsm.local/ns/labs/pod/frr-a"

                # the objects, decoded as registry-k8s decodes them, are the registry's services
                services = await services_of(plane)
                assert set(services) == {"triangle", "p2p"}, "the invalid object is skipped"
                expected = decode_network_service(json.loads(json.dumps(triangle())))
                assert services["triangle"] == expected.service
                assert len(services["triangle"].matches) == 3

                # a local registration of a cluster service's name is refused
                async with plane.client() as client:
                    with pytest.raises(
                        Exception, match="defined by the Kubernetes NetworkService labs/triangle"
                    ):
                        await client.register_service(NetworkService(name="triangle"), RegistryPath(), 5)
                    await client.register_service(
                        NetworkService(name="local-only", payload="IP"), RegistryPath(), 5
                    )

                # changes follow: modified, deleted, added
                changed = triangle()
                changed["spec"]["payload"] = "ETHERNET"
                api.put("networkservices", changed)
                api.delete("networkservices", "other", "p2p")

                async def followed() -> bool:
                    now = await services_of(plane)
                    return set(now) == {"triangle", "local-only"} and now["triangle"].payload == "ETHERNET"

                await until(followed, "the modification and deletion")

                # history compacted while the watch was down: 410, a fresh list, nothing missed
                lists_before = len(api.seen(f"{NS_PREFIX}/networkservices", limit="500"))
                api.put("networkservices", {"metadata": {"name": "late", "namespace": "labs"}, "spec": {}})
                api.compact()
                api.end_watches()

                async def relisted() -> bool:
                    return "late" in await services_of(plane)

                await until(relisted, "the object created before the compaction")
                assert len(api.seen(f"{NS_PREFIX}/networkservices", limit="500")) > lists_before
                assert "kube.watch_expired" in [r.getMessage() for r in caplog.records]

        run_async(main)


def test_unknown_callers_get_no_identity_and_a_starting_container_is_waited_for(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    cgroups = Cgroups()
    with FakeKubeApi() as api:
        api.put("pods", pod("frr-a", UID_A, NODE, ROUTER_A))
        api.put("pods", pod("frr-b", UID_B, NODE))

        async def main() -> None:
            async with kube_plane(sock_dir, api, cgroups) as (plane, _node):
                # this process outside any container: refused at once, never a netns/uid identity
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await fetch_svid(plane)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert refused.value.details() == NO_IDENTITY

                # a container no pod of this node has: refused after the wait
                cgroups.place(os.getpid(), UID_B, ELSEWHERE)
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await fetch_svid(plane)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert loop.time() - started >= 1.0

                # frr-b's container starts: the kubelet reports it while the caller waits
                cgroups.place(os.getpid(), UID_B, SIDECAR_B)
                fetching = asyncio.create_task(fetch_svid(plane))
                await asyncio.sleep(0.2)
                assert not fetching.done()
                api.put("pods", pod("frr-b", UID_B, NODE, SIDECAR_B))
                assert await fetching == "spiffe://nsm.local/ns/labs/pod/frr-b"

        run_async(main)


def test_the_crd_is_installed_when_asked_and_the_services_follow(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    cgroups = Cgroups()
    cgroups.place(os.getpid(), UID_A, ROUTER_A)
    with FakeKubeApi(crd_installed=False) as api:
        api.put("pods", pod("frr-a", UID_A, NODE, ROUTER_A))
        api.put("networkservices", triangle())  # stored, but not served until the CRD exists

        async def main() -> None:
            async with kube_plane(sock_dir, api, cgroups, install_crd=True, services_namespace="labs") as (
                plane,
                _,
            ):
                assert [r.method for r in api.requests if "customresourcedefinitions" in r.path] == [
                    "GET",
                    "POST",
                ]
                assert "networkservices.networkservicemesh.io" in api.crds
                assert set(await services_of(plane)) == {"triangle"}
                assert api.seen(f"{NS_PREFIX}/namespaces/labs/networkservices")

        run_async(main)
