"""Kube tier: nsm-topo's pods on a real one-node Kubernetes cluster (scripts/kube-up.sh), nsm-local as the
node's NSM. Needs root, Go (scripts/build-kube.sh builds Kubernetes once) and podman (the images); the
README's setup command installs and builds all of it. Never skipped: without root every test fails.

The cluster is started once per session (or reused if one is already up in NSM_KUBE_STATE_DIR, default
/var/lib/nsm-kube, and then left up), and stopped at the end; kube-down.sh must then find nothing left.
A failed test gets the cluster's state and every container's and component's log as a report section.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest
from kubelab import KubeCluster

_cluster: KubeCluster | None = None
_namespaces: dict[str, str] = {}
"""test node id -> the Kubernetes namespace it works in (for its diagnostics)."""


@pytest.fixture(scope="session")
def cluster() -> Iterator[KubeCluster]:
    global _cluster
    assert os.geteuid() == 0, "the kube tier needs root (it starts a Kubernetes node on this host)"
    found = KubeCluster()
    _cluster = found  # a failed start attaches the components' logs too
    found.up()
    try:
        found.install_nsm_local()
        yield found
    finally:
        _cluster = None
        print(found.down())


@pytest.fixture
def namespace(cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh Kubernetes namespace named after the test, deleted afterwards."""
    name = "t-" + request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:50].rstrip("-")
    cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true", timeout=300)
    cluster.kubectl("create", "namespace", name)
    _namespaces[request.node.nodeid] = name
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=true", timeout=300)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and _cluster is not None and report.when in ("setup", "call"):
        try:
            report.sections.append(("kube cluster", _cluster.diagnostics(_namespaces.get(item.nodeid))))
        except Exception as exc:  # diagnostics must never hide the failure itself
            report.sections.append(("kube cluster", f"(diagnostics failed: {exc!r})"))
