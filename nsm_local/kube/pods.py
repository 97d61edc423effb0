"""Which pod a Workload API caller belongs to: `spiffe://<trust domain>/ns/<namespace>/pod/<pod name>`.

What SPIRE's k8s workload attestor does, with the API server's pod watch in place of the kubelet:

1. the kernel names the calling process (SO_PEERCRED at accept: pid, uid, network namespace; nsm-local
   runs in the host's PID namespace, so the pid is the host's);
2. `/proc/<pid>/cgroup` names its container: every runtime puts a container's processes in a cgroup named
   after the container id (cgroupfs `.../pod<uid>/<id>`, systemd `.../kubepods-...-pod<uid>.slice/
   cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`; seen through a cgroup namespace
   as `/../..`-relative paths); the id is the last 64-hex-digit component, the pod uid the `pod<uid>`
   component if there is one;
3. the pods of this node (a watch with `fieldSelector=spec.nodeName=<node>`, `PodIndex`) name every
   running container in `status.containerStatuses`, `initContainerStatuses` (native sidecars included)
   and `ephemeralContainerStatuses` as `<runtime>://<id>`: the container's pod is the caller's;
4. the process must still be in the network namespace it connected from (a pid reused in between would
   not be), and a pod uid in the cgroup path must be that pod's.

Why the container id and not the network namespace: every pod's containers share the pod sandbox's netns,
but the API does not name it (only the runtime knows the sandbox's netns path), and hostNetwork pods share
the node's; the cgroup is per container, set by the runtime before the process runs, and cannot be left by
an unprivileged process. The kubelet reports a new container's id a moment after it started, so an
unknown container is waited for (`PodAttestor.attest_waiting`, 30 s like SPIRE's default 60 x 500 ms) while
the pod watch runs; a process outside any container (the node's own) is refused at once. Nothing is ever
given a default identity.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nsm_local.kube.reflector import KubeObject, WatchEvent
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.transport.peercred import PeerCredentials

ATTEST_WAIT = 30.0
"""How long a Workload API caller in an unknown container waits for the pod watch to report it."""
_CONTAINER_ID = re.compile(r"(?:^|[-:])([0-9a-f]{64})(?:\.scope)?$")
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$"
)
_STATUS_LISTS = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
_FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """What a process's cgroup says: its container, and its pod's uid when the path names it."""

    container_id: str
    pod_uid: str | None = None


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str
    name: str
    uid: str

    def spiffe_id(self, trust_domain: str) -> str:
        return f"spiffe://{trust_domain}/ns/{self.namespace}/pod/{self.name}"


def _component_ref(path: str) -> ContainerRef | None:
    parts = [part for part in path.split("/") if part]
    for i in range(len(parts) - 1, -1, -1):
        part = parts[i]
        found = _CONTAINER_ID.search(part)
        if found is None or "conmon" in part:  # cri-o's conmon shares its container's id; it is no workload
            continue
        uid = next(
            (m.group(1).replace("_", "-") for p in parts[:i] if (m := _POD_UID.search(p)) is not None), None
        )
        return ContainerRef(found.group(1), uid)
    return None


def container_of(cgroup: str) -> ContainerRef | None:
    """The container a `/proc/<pid>/cgroup` text places the process in; None if none, or if the
    hierarchies disagree (cgroup v1 lists one line per hierarchy)."""
    refs = set()
    for line in cgroup.splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3:
            ref = _component_ref(fields[2])
            if ref is not None:
                refs.add(ref)
    return refs.pop() if len(refs) == 1 else None


def container_ids(pod: Mapping[str, Any]) -> list[str]:
    """Ids of the pod's containers as its status reports them (`containerd://<id>` -> `<id>`)."""
    status = pod.get("status")
    if not isinstance(status, Mapping):
        return []
    ids = []
    for key in _STATUS_LISTS:
        for entry in status.get(key) or ():
            raw = entry.get("containerID") if isinstance(entry, Mapping) else None
            if isinstance(raw, str) and raw:
                ids.append(raw.rsplit("://", 1)[-1])
    return ids


def pod_ref(pod: Mapping[str, Any]) -> PodRef | None:
    metadata = pod.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    namespace, name, uid = metadata.get("namespace"), metadata.get("name"), metadata.get("uid")
    if not (isinstance(namespace, str) and isinstance(name, str) and isinstance(uid, str)):
        return None
    if not (namespace and name and uid):
        return None
    return PodRef(namespace, name, uid)


class PodIndex:
    """A reflector handler: container id -> pod, for the pods of one node that have not finished."""

    def __init__(self) -> None:
        self._containers: dict[str, list[str]] = {}
        """pod uid -> its container ids"""
        self._pods: dict[str, PodRef] = {}
        self._by_container: dict[str, PodRef] = {}
        self._changed = asyncio.Event()
        self.synced = False

    def __repr__(self) -> str:
        return f"<PodIndex pods={len(self._pods)} containers={len(self._by_container)}>"

    def pod_of(self, container_id: str) -> PodRef | None:
        return self._by_container.get(container_id)

    def __len__(self) -> int:
        return len(self._pods)

    def replace(self, items: list[KubeObject]) -> None:
        self._pods.clear()
        self._containers.clear()
        for pod in items:
            self._put(pod)
        self.synced = True
        self._reindex()

    def apply(self, event: WatchEvent) -> None:
        ref = pod_ref(event.object)
        if ref is None:
            return
        if event.type == "DELETED":
            self._pods.pop(ref.uid, None)
            self._containers.pop(ref.uid, None)
        elif event.type in ("ADDED", "MODIFIED"):
            self._put(event.object)
        else:
            return
        self._reindex()

    def _put(self, pod: KubeObject) -> None:
        ref = pod_ref(pod)
        if ref is None:
            return
        status = pod.get("status")
        phase = status.get("phase") if isinstance(status, Mapping) else None
        if phase in _FINISHED:  # its processes are gone; a reused container id must not find it
            self._pods.pop(ref.uid, None)
            self._containers.pop(ref.uid, None)
            return
        self._pods[ref.uid] = ref
        self._containers[ref.uid] = container_ids(pod)

    def _reindex(self) -> None:
        self._by_container = {
            container: self._pods[uid]
            for uid, containers in self._containers.items()
            for container in containers
        }
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changed(self, timeout: float) -> None:
        """Wait until the index changes, at most `timeout` seconds."""
        event = self._changed
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return


def read_cgroup(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            return handle.read()
    except OSError:
        return None


def netns_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


class PodAttestor:
    """Names callers by their pod. `attest` answers from what is known now (nsm-local's own callers, the
    operator); `attest_waiting` (the Workload API) gives a container the pod watch has not reported yet
    up to `wait` seconds."""

    def __init__(
        self,
        index: PodIndex,
        trust_domain: str,
        node: str,
        log: EventLog,
        *,
        wait: float = ATTEST_WAIT,
        cgroup_of: Callable[[int], str | None] = read_cgroup,
        netns: Callable[[int], int | None] = netns_of,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._index = index
        self._trust_domain = trust_domain
        self._node = node
        self._log = log
        self._wait = wait
        self._cgroup_of = cgroup_of
        self._netns = netns
        self._clock = clock

    def __repr__(self) -> str:
        return f"<PodAttestor {self._trust_domain} node={self._node} {self._index!r}>"

    def container(self, credentials: PeerCredentials) -> ContainerRef | None:
        """The caller's container, or None (no container, or the pid no longer is the caller)."""
        text = self._cgroup_of(credentials.pid)
        ref = container_of(text) if text is not None else None
        if ref is None:
            return None
        # read after the cgroup: the same process still, in the namespace it connected from
        if credentials.netns is None or self._netns(credentials.pid) != credentials.netns:
            return None
        return ref

    def _lookup(self, ref: ContainerRef) -> PodRef | None:
        pod = self._index.pod_of(ref.container_id)
        if pod is None or (ref.pod_uid is not None and ref.pod_uid != pod.uid):
            return None
        return pod

    def attest(self, credentials: PeerCredentials) -> str | None:
        ref = self.container(credentials)
        pod = self._lookup(ref) if ref is not None else None
        return pod.spiffe_id(self._trust_domain) if pod is not None else None

    async def attest_waiting(self, credentials: PeerCredentials) -> str | None:
        ref = self.container(credentials)
        if ref is None:
            self._denied(credentials, None, "not in a container of this node (or it exited)")
            return None
        deadline = self._clock() + self._wait
        while (pod := self._lookup(ref)) is None:
            left = deadline - self._clock()
            if left <= 0:
                self._denied(credentials, ref, f"no running pod on node {self._node} has this container")
                return None
            await self._index.changed(left)
        spiffe_id = pod.spiffe_id(self._trust_domain)
        self._log.debug(
            "kube.attested", pid=credentials.pid, container=ref.container_id[:12], spiffe_id=spiffe_id
        )
        return spiffe_id

    def _denied(self, credentials: PeerCredentials, ref: ContainerRef | None, reason: str) -> None:
        self._log.warning(
            "kube.attestation_denied",
            pid=credentials.pid,
            uid=credentials.uid,
            container=ref.container_id[:12] if ref is not None else "-",
            reason=reason,
        )
