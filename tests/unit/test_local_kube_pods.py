"""Kubernetes mode of nsm-local: a Workload API caller's pod, from its cgroup's container id and the node's
pods; unknown callers are refused, never given a default identity."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from nsm_local.kube.pods import ContainerRef, PodAttestor, PodIndex, container_ids, container_of
from nsm_local.kube.reflector import WatchEvent
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.transport.peercred import PeerCredentials

T = TypeVar("T")
TD = "nsm.local"
NETNS = 4026532300
UID = "6f1c2a3b-1111-2222-3333-444455556666"
OTHER_UID = "0a0b0c0d-1111-2222-3333-444455556666"
ROUTER = "a" * 64
SIDECAR = "b" * 64
INIT = "c" * 64
STRANGER = "d" * 64
NODE_CONTAINER = "e" * 64


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(10):
            return await main()

    return asyncio.run(bounded())


def pod(
    name: str = "frr-a", namespace: str = "labs", uid: str = UID, phase: str = "Running", **status: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": phase, **status},
    }


def running(*ids: str, runtime: str = "containerd") -> list[dict[str, Any]]:
    return [{"name": f"c{i}", "containerID": f"{runtime}://{cid}"} for i, cid in enumerate(ids)]


# --- the container id in /proc/<pid>/cgroup -----------------------------------------------------------------

CGROUPS = {
    "cgroup v2, systemd driver": (
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
        f"cri-containerd-{ROUTER}.scope\n",
        ContainerRef(ROUTER, UID),
    ),
    "cgroup v2, cgroupfs driver": (f"0::/kubepods/burstable/pod{UID}/{ROUTER}\n", ContainerRef(ROUTER, UID)),
    "cgroup v1, every hierarchy": (
        "".join(
            f"{i}:{c}:/kubepods/pod{UID}/{ROUTER}\n"
            for i, c in enumerate(["cpu,cpuacct", "memory", "pids"], 1)
        )
        + "1:name=systemd:/kubepods/pod"
        + UID
        + "/"
        + ROUTER
        + "\n",
        ContainerRef(ROUTER, UID),
    ),
    "seen through a cgroup namespace": (f"0::/../../pod{UID}/{ROUTER}\n", ContainerRef(ROUTER, UID)),
    "cri-o": (
        f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{ROUTER}.scope\n",
        ContainerRef(ROUTER, UID),
    ),
    "kind: a node container around the pod's": (
        f"0::/system.slice/docker-{NODE_CONTAINER}.scope/kubelet.slice/kubelet-kubepods.slice/"
        f"kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
        f"cri-containerd-{ROUTER}.scope\n",
        ContainerRef(ROUTER, UID),
    ),
    "cgroupsPerQOS off: no pod level": (f"0::/{ROUTER}\n", ContainerRef(ROUTER, None)),
    "a sub-cgroup inside the container": (
        f"0::/kubepods/pod{UID}/{ROUTER}/init.scope\n",
        ContainerRef(ROUTER, UID),
    ),
}


@pytest.mark.parametrize("case", list(CGROUPS))
def test_the_container_of_a_process_under_every_runtime_layout(case: str) -> None:
    text, expected = CGROUPS[case]
    assert container_of(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "0::/\n",
        "0::/user.slice/user-0.slice/session-1.scope\n",
        "0::/system.slice/containerd.service\n",
        "4:memory:/process_api/37ad238036074404f85c0bb1df4133bd\n0::/\n",  # a 32-digit id is no container
        f"0::/kubepods.slice/crio-conmon-{ROUTER}.scope\n",  # cri-o's monitor process, not the workload
        f"3:cpu:/kubepods/pod{UID}/{ROUTER}\n4:memory:/kubepods/pod{UID}/{SIDECAR}\n",  # hierarchies disagree
        "",
    ],
)
def test_processes_outside_containers_have_none(text: str) -> None:
    assert container_of(text) is None


def test_container_ids_of_a_pod_cover_init_and_ephemeral_containers() -> None:
    described = pod(
        containerStatuses=[*running(ROUTER, SIDECAR), {"name": "starting"}],
        initContainerStatuses=running(INIT, runtime="cri-o"),
        ephemeralContainerStatuses=running(STRANGER, runtime="docker"),
    )
    assert container_ids(described) == [ROUTER, SIDECAR, INIT, STRANGER]
    assert container_ids({"metadata": {}}) == []


# --- the pod index ------------------------------------------------------------------------------------------


def test_the_index_follows_list_and_events() -> None:
    index = PodIndex()
    index.replace([pod(containerStatuses=running(ROUTER))])
    assert index.synced
    found = index.pod_of(ROUTER)
    assert found is not None and found.spiffe_id(TD) == "spiffe://nsm.local/ns/labs/pod/frr-a"
    index.apply(WatchEvent("MODIFIED", pod(containerStatuses=running(ROUTER, SIDECAR))))
    assert index.pod_of(SIDECAR) == found
    index.apply(WatchEvent("ADDED", pod("frr-b", uid=OTHER_UID, containerStatuses=running(INIT))))
    assert len(index) == 2
    index.apply(WatchEvent("MODIFIED", pod(phase="Succeeded", containerStatuses=running(ROUTER, SIDECAR))))
    assert index.pod_of(ROUTER) is None, "a finished pod's ids name nobody any more"
    index.apply(WatchEvent("DELETED", pod("frr-b", uid=OTHER_UID)))
    assert index.pod_of(INIT) is None and len(index) == 0
    index.apply(WatchEvent("ADDED", {"metadata": {"name": "no-uid"}}))  # ignored, not a crash
    assert len(index) == 0


# --- the attestor -------------------------------------------------------------------------------------------


class Host:
    """What /proc says about pids: their cgroup and network namespace."""

    def __init__(self) -> None:
        self.cgroups: dict[int, str] = {}
        self.netns: dict[int, int] = {}

    def put(
        self, pid: int, container: str | None, uid: str | None = UID, netns: int = NETNS
    ) -> PeerCredentials:
        if container is None:
            self.cgroups[pid] = "0::/system.slice/sshd.service\n"
        else:
            self.cgroups[pid] = f"0::/kubepods/pod{uid}/{container}\n" if uid else f"0::/{container}\n"
        self.netns[pid] = netns
        return PeerCredentials(pid=pid, uid=0, gid=0, netns=netns)


def attestor(index: PodIndex, host: Host, wait: float = 0.5) -> PodAttestor:
    return PodAttestor(
        index,
        TD,
        "node-1",
        EventLog("test.pods"),
        wait=wait,
        cgroup_of=host.cgroups.get,
        netns=host.netns.get,
    )


def test_a_caller_in_a_pod_gets_the_pod_identity() -> None:
    index, host = PodIndex(), Host()
    index.replace([pod(containerStatuses=running(ROUTER, SIDECAR))])
    names = attestor(index, host)
    caller = host.put(100, SIDECAR)
    assert names.attest(caller) == "spiffe://nsm.local/ns/labs/pod/frr-a"
    assert run(lambda: names.attest_waiting(caller)) == "spiffe://nsm.local/ns/labs/pod/frr-a"
    # the two containers of one pod are one identity, as with SPIRE's ns/<ns>/pod/<pod> ids
    assert names.attest(host.put(101, ROUTER)) == names.attest(caller)


def test_unknown_callers_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    index, host = PodIndex(), Host()
    index.replace([pod(containerStatuses=running(ROUTER))])
    names = attestor(index, host, wait=0.2)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await names.attest_waiting(host.put(200, None)) is None
        assert loop.time() - started < 0.1, "a process outside containers is refused at once"
        started = loop.time()
        assert await names.attest_waiting(host.put(201, STRANGER)) is None
        assert loop.time() - started >= 0.2, "an unknown container is waited for, then refused"

    run(main)
    assert names.attest(host.put(202, STRANGER)) is None
    denied = [r for r in caplog.records if r.getMessage() == "kube.attestation_denied"]
    assert len(denied) == 2


def test_a_pid_that_changed_namespace_or_vanished_is_refused() -> None:
    index, host = PodIndex(), Host()
    index.replace([pod(containerStatuses=running(ROUTER))])
    names = attestor(index, host)
    caller = host.put(300, ROUTER)
    host.netns[300] = NETNS + 1  # the pid is someone else's now (or it moved)
    assert names.attest(caller) is None
    del host.netns[300]
    assert names.attest(caller) is None
    assert names.attest(PeerCredentials(pid=301, uid=0, gid=0, netns=None)) is None


def test_a_pod_uid_in_the_cgroup_must_be_the_pods() -> None:
    index, host = PodIndex(), Host()
    index.replace([pod(containerStatuses=running(ROUTER))])
    names = attestor(index, host)
    assert names.attest(host.put(400, ROUTER, uid=OTHER_UID)) is None
    assert names.attest(host.put(401, ROUTER, uid=None)) is not None, "no pod level in the path: fine"


def test_a_container_reported_while_waiting_is_named() -> None:
    index, host = PodIndex(), Host()
    index.replace([pod(containerStatuses=[{"name": "router"}])])  # created, not yet reported running
    names = attestor(index, host, wait=5.0)

    async def main() -> str | None:
        waiting = asyncio.create_task(names.attest_waiting(host.put(500, ROUTER)))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        index.apply(WatchEvent("MODIFIED", pod(containerStatuses=running(ROUTER))))
        return await waiting

    assert run(main) == "spiffe://nsm.local/ns/labs/pod/frr-a"


def test_a_pid_namespace_of_its_own_is_refused_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from nsm_local.kube import node

    def layout(own: str | None, first: str | None) -> None:
        cgroups = {os.getpid(): own, 1: first}
        monkeypatch.setattr(node, "read_cgroup", lambda pid: cgroups.get(pid))

    layout(f"0::/kubepods/pod{UID}/{ROUTER}\n", f"0::/kubepods/pod{UID}/{ROUTER}\n")
    problem = node.host_pid_problem()
    assert problem is not None and "hostPID: true" in problem
    layout(f"0::/kubepods/pod{UID}/{ROUTER}\n", "0::/init.scope\n")  # hostPID: pid 1 is the node's init
    assert node.host_pid_problem() is None
    layout("0::/user.slice/session-1.scope\n", "0::/init.scope\n")  # not in a container at all
    assert node.host_pid_problem() is None
