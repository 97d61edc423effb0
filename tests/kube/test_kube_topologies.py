"""The seed's job on Kubernetes: `nsm-topo apply` a topology to a real cluster whose NSM is nsm-local, FRR
router pods whose links the sidecars request and verify, OSPF over them, pings through real pods; a
deleted router pod comes back (apply again) with the same link names and addresses; `nsm-topo delete`
leaves nothing of the topology, in the API or in NSM."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubelab import ROOT, KubeCluster

from nsm_topo.local.check import loopbacks
from nsm_topo.topology import Topology, load_topology
from nsm_topo.wiring import planned_addresses, wire

pytestmark = pytest.mark.timeout(1200)  # a cluster start, pods, OSPF: minutes, not the default 300 s

FRR_IMAGE = "localhost/nsm-frr:bookworm"
CONVERGE_SECONDS = 180  # a bound for a hung lab, not a speed goal: a loaded machine converges slowly


def nsm_topo(
    cluster: KubeCluster, *args: str, cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nsm_topo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=cluster.env,
    )


def kube_options(namespace: str) -> list[str]:
    """The images this host built (never pulled), the node's nsm-local for NSM and SPIFFE."""
    return [
        "-n",
        namespace,
        "--image-prefix",
        "localhost/",
        "--pull-policy",
        "Never",
        "--frr-image",
        FRR_IMAGE,
        "--control-plane",
        "nsm-local",
    ]


def apply(cluster: KubeCluster, topology_file: Path, namespace: str) -> None:
    applied = nsm_topo(
        cluster, "apply", topology_file.name, *kube_options(namespace), cwd=topology_file.parent
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr


def planned(topology: Topology) -> dict[str, tuple[str, str]]:
    wiring = wire(topology)
    return {
        link.name: planned_addresses(wiring.device(link.endpoint.device), link) for link in topology.links
    }


def pod_addresses(cluster: KubeCluster, namespace: str, topology: Topology) -> dict[str, tuple[str, str]]:
    """Each link's (client, endpoint) interface address as the kernel of the two pods has it."""

    def address(device: str, interface: str) -> str:
        shown = cluster.exec(namespace, device, "ip", "-j", "addr", "show", "dev", interface)
        assert shown.returncode == 0, f"{device}: {interface}: {shown.stderr.strip()}"
        info = [a for a in json.loads(shown.stdout)[0]["addr_info"] if a["family"] == "inet"]
        assert len(info) == 1, (device, interface, info)
        return f"{info[0]['local']}/{info[0]['prefixlen']}"

    return {
        link.name: (
            address(link.client.device, link.client.interface),
            address(link.endpoint.device, link.endpoint.interface),
        )
        for link in topology.links
    }


def ping(cluster: KubeCluster, namespace: str, source: str, target: ipaddress.IPv4Address, count: int) -> str:
    """ping's summary line ("... x% packet loss ...") from the source router pod, or what went wrong."""
    done = cluster.exec(
        namespace, source, "ping", "-c", str(count), "-i", "0.2", "-W", "1", "-q", str(target)
    )
    lines = [line for line in done.stdout.splitlines() if "packet loss" in line]
    return lines[0] if lines else (done.stdout + done.stderr).strip()


def loss(summary: str) -> int | None:
    """The loss in percent that a ping summary reports (None if it is no summary)."""
    found = re.search(r"(\d+)% packet loss", summary)
    return int(found.group(1)) if found else None


def converged(cluster: KubeCluster, namespace: str, topology: Topology, sources: list[str]) -> None:
    """Wait until every loopback answers from each source once (OSPF has converged), then ping each with
    5 packets from each source: 0% loss."""
    targets = loopbacks(topology)
    assert len(targets) == len(topology.devices), targets
    deadline = time.monotonic() + CONVERGE_SECONDS
    for source in sources:
        for device, address in targets.items():
            while loss(ping(cluster, namespace, source, address, 1)) != 0:
                assert time.monotonic() < deadline, (
                    f"{source} -> {device} {address}: no answer in {CONVERGE_SECONDS}s"
                )
                time.sleep(1)
    for source in sources:
        for device, address in targets.items():
            summary = ping(cluster, namespace, source, address, 5)
            assert loss(summary) == 0, f"{source} -> {device} {address}: {summary}"


def nsm_view(cluster: KubeCluster) -> str:
    shown = cluster.nsm_local("list")
    return shown.stdout


def test_three_routers_link_ping_heal_and_go_away(
    cluster: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    work = tmp_path / "triangle"
    shutil.copytree(ROOT / "examples" / "triangle", work)
    topology_file = work / "topology.yml"
    topology = load_topology(topology_file)
    devices = sorted(topology.devices)
    assert ("frr-a", "eth1", "frr-b", "eth1") in [
        (link.client.device, link.client.interface, link.endpoint.device, link.endpoint.interface)
        for link in topology.links
    ]

    apply(cluster, topology_file, namespace)
    cluster.wait_ready(namespace, devices, timeout=300)
    expected = planned(topology)
    assert pod_addresses(cluster, namespace, topology) == expected
    converged(cluster, namespace, topology, sources=["frr-a", "frr-c"])
    view = nsm_view(cluster)
    assert all(link.name in view for link in topology.links), view

    # a router pod is deleted: apply again brings it back, its links with the same names and addresses
    old_uid = cluster.objects("pods", namespace=namespace)
    cluster.kubectl("-n", namespace, "delete", "pod", "frr-b", "--wait=true", timeout=180)
    apply(cluster, topology_file, namespace)
    cluster.wait_ready(namespace, devices, timeout=300)
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.objects("pods", namespace=namespace)}
    assert uids["frr-b"] not in {p["metadata"]["uid"] for p in old_uid}
    assert pod_addresses(cluster, namespace, topology) == expected
    converged(cluster, namespace, topology, sources=["frr-a", "frr-b"])

    # delete: every object of the topology goes, and NSM forgets its service and links
    deleted = nsm_topo(cluster, "delete", topology_file.name, "-n", namespace, cwd=work)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    left = cluster.kubectl(
        "-n", namespace, "get", "pods,configmaps,networkservices", "-l", f"topo={topology.name}", "-o", "name"
    )
    assert left.stdout.strip() == "", left.stdout
    assert cluster.kubectl("-n", namespace, "get", "networkservices", "-o", "name").stdout.strip() == ""
    deadline = time.monotonic() + 60
    while any(link.name in nsm_view(cluster) for link in topology.links) or topology.name in nsm_view(
        cluster
    ):
        assert time.monotonic() < deadline, nsm_view(cluster)
        time.sleep(1)


def test_seed_random_ten_routers_all_loopbacks_answer(
    cluster: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    made = nsm_topo(cluster, "random", "10", "4", "--seed", "7", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    topology_file = tmp_path / "random.yml"
    topology = load_topology(topology_file)
    devices = sorted(topology.devices)
    assert len(devices) == 10 and len(topology.links) == 13

    apply(cluster, topology_file, namespace)
    cluster.wait_ready(namespace, devices, timeout=600)
    assert pod_addresses(cluster, namespace, topology) == planned(topology)
    converged(cluster, namespace, topology, sources=[devices[0], devices[-1]])

    deleted = nsm_topo(cluster, "delete", topology_file.name, "-n", namespace, cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert cluster.kubectl("-n", namespace, "get", "pods,networkservices", "-o", "name").stdout.strip() == ""
