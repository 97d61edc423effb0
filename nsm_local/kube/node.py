"""`nsm-local serve --kubernetes`: what Kubernetes mode adds to the control plane of one node.

* **Pods** of this node (`spec.nodeName=<node>`, every namespace) are listed and watched from the start
  (`PodIndex`); the `PodAttestor` over them names Workload API callers by pod, and the manager's callers
  when plaintext. Serving waits (at most `sync_wait`) for the first list, so that the sidecars that
  reconnect after a restart of nsm-local are named at once.
* **NetworkService** objects (one namespace, or all) become the registry's cluster services
  (`ClusterServices`) once the registry exists (`services_into`); the first list is waited for the same
  way, so a refresh right after a restart finds its service. With `install_crd`, the CRD is created first
  if it is absent.
* An API server that does not answer delays nothing beyond those waits: the reflectors keep retrying with
  backoff (and say so), links already made are kept, and callers the pod index does not know yet wait
  for it (`PodAttestor.attest_waiting`) or are refused.

`KubeNode` takes its two sources as arguments (`reflector.Source`), so the tests drive it with fakes or with
the real client against a stub API server; `connect_node` makes the real ones from the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from nsm_local.kube.errors import KubeError
from nsm_local.kube.pods import ATTEST_WAIT, PodAttestor, PodIndex, container_of, read_cgroup
from nsm_local.kube.reflector import Handler, Source, reflect
from nsm_local.kube.services import NSM_GROUP, NSM_PLURAL, NSM_VERSION, ClusterServices
from nsm_local.registry import Registry
from nsm_sdk.agent.logs import EventLog

SYNC_WAIT = 10.0
"""How long serving waits for the first list of pods, and of NetworkServices, before it starts anyway."""


@dataclass(frozen=True, slots=True)
class KubeSettings:
    node_name: str
    """This node (the pod's spec.nodeName, NODE_NAME): whose pods may get identities."""
    kubeconfig: str | None = None
    """A kubeconfig file; None: KUBECONFIG or ~/.kube/config outside a pod, the service account inside."""
    context: str | None = None
    services_namespace: str | None = None
    """The namespace whose NetworkServices are read; None: every namespace (registry-k8s lists all)."""
    install_crd: bool = False
    """Create NSM's NetworkService CRD if it is absent (needs the right to)."""
    attest_wait: float = ATTEST_WAIT
    sync_wait: float = SYNC_WAIT


def host_pid_problem() -> str | None:
    """Why Kubernetes mode cannot attest callers from here, or None. In a container with a PID namespace of
    its own, pid 1 is that container's (and SO_PEERCRED reports 0 for callers in other pods)."""
    own = container_of(read_cgroup(os.getpid()) or "")
    if own is None:  # not in a container: the host's PID namespace
        return None
    first = container_of(read_cgroup(1) or "")
    if first is not None and first.container_id == own.container_id:
        return (
            "nsm-local runs in a PID namespace of its own; Kubernetes mode needs the host's (hostPID: true, "
            "as `nsm-local kube-manifest` sets it) to know which pod calls it"
        )
    return None


class KubeNode:
    """The pod index and attestor of one node, and the reflectors that keep them (and the registry) fed."""

    def __init__(
        self,
        settings: KubeSettings,
        trust_domain: str,
        pods: Source,
        services: Source,
        log: EventLog,
        prepare: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.index = PodIndex()
        self.attestor = PodAttestor(
            self.index, trust_domain, settings.node_name, log, wait=settings.attest_wait
        )
        self._pods = pods
        self._services = services
        self._log = log
        self._prepare = prepare
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<KubeNode {self.settings.node_name} {self.index!r}>"

    async def _reflect(self, source: Source, handler: Handler, name: str) -> None:
        synced = asyncio.Event()
        task = asyncio.create_task(reflect(source, handler, self._log, synced), name=name)
        self._tasks.append(task)
        waiter = asyncio.create_task(synced.wait())
        try:
            await asyncio.wait(
                {task, waiter}, timeout=self.settings.sync_wait, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            await _cancel(waiter)
        if task.done():  # a bug: the reflector never ends by itself
            task.result()
        if not synced.is_set():
            self._log.warning(
                "kube.not_synced",
                resource=source.what,
                waited=f"{self.settings.sync_wait:.0f}s",
                detail="serving anyway; it follows as soon as the API answers",
            )

    async def start(self) -> None:
        """Start following this node's pods; returns once they are listed (or `sync_wait` passed)."""
        self._log.info(
            "kube.starting",
            node=self.settings.node_name,
            services_namespace=self.settings.services_namespace or "(all)",
        )
        await self._reflect(self._pods, self.index, "kube pods")

    @asynccontextmanager
    async def services_into(self, registry: Registry) -> AsyncIterator[None]:
        """Follow the NetworkService objects into `registry` while the context lasts."""
        if self._prepare is not None:
            try:
                await self._prepare()
            except KubeError as exc:
                self._log.warning("kube.crd_not_installed", error=str(exc))
        handler = ClusterServices(registry, self._log)
        await self._reflect(self._services, handler, "kube networkservices")
        task = self._tasks[-1]
        try:
            yield
        finally:
            await _cancel(task)

    async def aclose(self) -> None:
        for task in self._tasks:
            await _cancel(task)
        self._tasks = []


async def _cancel(task: asyncio.Task[object]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def connect_node(
    settings: KubeSettings, trust_domain: str, log: EventLog, api: object | None = None
) -> KubeNode:
    """A `KubeNode` over the real client (`api`: a `client.KubeApi`, else connected from the settings)."""
    from nsm_local.kube import client
    from nsm_local.kube.manifests import network_service_crd
    from nsm_local.kube.reflector import ThreadedSource, in_daemon_thread

    kube = api if isinstance(api, client.KubeApi) else client.connect(settings.kubeconfig, settings.context)
    pods = ThreadedSource(client.node_pods(kube, settings.node_name))
    services = ThreadedSource(
        client.network_services(kube, NSM_GROUP, NSM_VERSION, NSM_PLURAL, settings.services_namespace)
    )

    async def install() -> None:
        crd = network_service_crd()
        if await in_daemon_thread(lambda: client.ensure_crd(kube, crd), "kube crd"):
            log.info("kube.crd_installed", name=crd["metadata"]["name"])

    return KubeNode(settings, trust_domain, pods, services, log, install if settings.install_crd else None)


@asynccontextmanager
async def running_node(node: KubeNode) -> AsyncIterator[KubeNode]:
    """`node` started (its pods listed or `sync_wait` passed) until the context exits."""
    try:
        await node.start()
        yield node
    finally:
        await node.aclose()
