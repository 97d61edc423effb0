"""The Kubernetes objects of a topology for NSM v1, as plain dicts (no client, no I/O but config files).

What k8s-topo's `--create` made in NSM mode (legacy-contract.md §4.3), with our sidecars and NSM v1:

* the `networkservicemesh.io/v1` NetworkService of `Wiring.network_service()` (one match per link);
* per device a ConfigMap `<dev>-config` (k8s-topo's name) when its container takes a configuration: a
  router's `frr.conf`, the FRR `daemons` file that starts what that configuration needs, `vtysh.conf`; a
  `custom_image` device's file from conf_dir as k8s-topo's `startup-config`;
* per device a Pod named after the device with the container `router` and, as native sidecars
  (`initContainers` with `restartPolicy: Always`, Kubernetes >= 1.29), `nse-sidecar` and then, for a device
  that owns links, `nsc-sidecar`: the kubelet starts each only once the one before has started (its
  startupProbe on the sidecar's ready file passed), so FRR starts after the device's own links exist and
  were verified; it stops them after the router, in reverse order. `sidecars="classic"` puts them beside the
  router as plain containers instead, for clusters older than 1.29. The sidecars' environment is exactly
  the wiring's plus `POD_NAME`/`NODE_NAME` from the downward API.

Labels: Kubernetes' recommended `app.kubernetes.io/*` (name: the device, or the topology for the
NetworkService; instance and part-of: the topology; component: `router` or `network-service`; managed-by:
`nsm-topo`), k8s-topo's `topo=<topology>` (and `app=<device>` on a device's objects) on every object, and
`spiffe.io/spiffe-id=true` on Pods (what NSM's SPIRE setup selects workloads by). None of them depends on
images, versions or options, so `selector()` finds every object of a topology whatever made it.

Capabilities: every container drops ALL and adds back what it needs, except a `custom_image` device's
(an image we know nothing about keeps the runtime's defaults, plus NET_ADMIN as k8s-topo gave it); none is
privileged. See `_FRR_CAPABILITIES` for why FRR needs SYS_ADMIN.

Two flavours of control plane (`control_plane`): NSM v1 in the cluster (`nsm`: the Workload API from
SPIRE through the SPIFFE CSI driver, or a hostPath of SPIRE's socket directory), or `nsm-local serve
--kubernetes` on a one-node cluster (`nsm-local`: its Workload API in the same hostPath directory as
SPIRE's, `nsm_local.kube.manifests.SPIRE_SOCKET_DIR`). Everything else is the same.

Every object carries an annotation `nsm-topo/spec-hash` over what it asks for and its labels (a Pod's
includes its ConfigMap's data, which a subPath mount does not follow), so `apply` can tell unchanged from
changed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from nsm_sdk.version import package_version
from nsm_topo.wiring import DeviceWiring, Wiring, frr_daemons, is_router, router_config

Manifest = dict[str, Any]

NSM_GROUP = "networkservicemesh.io"
NSM_VERSION = "v1"
NSM_PLURAL = "networkservices"
DEFAULT_FRR_IMAGE = "quay.io/frrouting/frr:10.2.6"
DEFAULT_HOST_IMAGE = "alpine:3.20"
HOST_COMMAND = ["sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]
PULL_POLICIES = ("IfNotPresent", "Always", "Never")
SPIRE_VOLUMES = ("csi", "hostpath")
CONTROL_PLANES = ("nsm", "nsm-local")
SIDECAR_LAYOUTS = ("native", "classic")
HASH_ANNOTATION = "nsm-topo/spec-hash"
SPIFFE_LABEL = "spiffe.io/spiffe-id"
MANAGED_BY = "nsm-topo"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
TOPOLOGY_LABEL = "topo"
"""k8s-topo's; `nsm_topo.kube.cluster` tells our objects from others' by it."""
READY_FILE = "/run/nsm/ready"
"""Where the sidecar images point NSM_READY_FILE (images/Dockerfile): present exactly while the nse is
registered / every link of the nsc is verified (nsm_sdk.agent.readiness)."""
NSM_SOCKET_DIR = "/var/lib/networkservicemesh"
"""The NSM manager's socket directory on every node (nsmgr's hostPath, and nsm-local's in Kubernetes mode:
nsm.io.sock), the sidecars' default."""
SPIRE_SOCKET_DIR = "/run/spire/sockets"
"""Where the Workload API socket (agent.sock) is mounted, the sidecars' default; on the node, SPIRE's agent
socket directory, and the one `nsm-local serve --kubernetes` serves its Workload API in."""
STARTUP_SECONDS = 600
"""How long a sidecar may take to become ready before the kubelet restarts it: the nsc waits for its peers'
endpoints, which may still be pulling images. A restart is harmless but starts the wait again."""
GRACE_SECONDS = 45
"""A sidecar closes its links after SIGTERM and exits at the latest 20 s later (request timeout + 5 s); native
sidecars stop one after the other once the router has stopped (router, then nsc, then nse): 2 x 20 s and
a few seconds for FRR."""
FRR_ALL_DAEMONS = (
    "bgpd",
    "ospfd",
    "ospf6d",
    "ripd",
    "ripngd",
    "isisd",
    "pimd",
    "ldpd",
    "nhrpd",
    "eigrpd",
    "babeld",
    "sharpd",
    "pbrd",
    "bfdd",
    "fabricd",
    "vrrpd",
    "pathd",
)
"""The switchable daemons of FRR's `daemons` file (zebra, staticd and, from 9.x, mgmtd always run)."""

# Requests ~ steady use with headroom, limits ~ peak with a margin, measured with bench/pod_resources.py (a
# 10-router lab on one host: each router's processes are what its Pod's containers run, and one sidecar
# restarted alone) and bench/links.py (one client with 60 links). Figures, machine and reasoning:
# docs/performance.md, "Pod resources". Memory is RSS: the most a container is charged for its processes.
_SIDECAR_RESOURCES = {
    # idle 0.5-1.3 mCPU, steady 70-71 MiB; restarted alone ~0.4-0.7 CPU s until ready at ~1 core (0.1 s
    # peak 0.93-1.07); 98 MiB for a client checking 60 links
    "requests": {"cpu": "10m", "memory": "96Mi"},
    "limits": {"cpu": "1", "memory": "192Mi"},
}
_FRR_RESOURCES = {
    # zebra + ospfd + staticd + watchfrr (FRR 8.4): idle 1.3-5 mCPU, 28 MiB; 0.19 cores at most over 0.1 s
    # while links flap and OSPF converges again; the memory limit leaves room for what the lab did not run
    # (FRR 10's mgmtd, bgpd, larger link-state databases)
    "requests": {"cpu": "10m", "memory": "48Mi"},
    "limits": {"cpu": "500m", "memory": "128Mi"},
}
_HOST_RESOURCES = {
    # busybox sh idling: 3 MiB, no CPU; the rest for what someone runs in it (ping, traceroute)
    "requests": {"cpu": "10m", "memory": "16Mi"},
    "limits": {"cpu": "100m", "memory": "64Mi"},
}
_CUSTOM_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}}
"""An image we know nothing about: a request so it is scheduled sensibly, no limit that could starve it."""

_SIDECAR_CAPABILITIES = ["NET_ADMIN"]
"""To rename an interface that arrived under another name and remove the endpoint's side of its links on
SIGTERM. Under exactly this set (bounding set, no_new_privs) both sidecars came up against nsm-local,
verified their link and took it down on SIGTERM: they never enter another namespace (no SYS_ADMIN)."""
_FRR_CAPABILITIES = [
    "NET_ADMIN",  # zebra: addresses, routes, interfaces
    "NET_RAW",  # ospfd/isisd raw sockets; ping
    # zebra, ospfd, bgpd, pimd... put SYS_ADMIN (for FRR's netns VRFs) into their permitted set at start
    # and exit when they cannot ("privs_init: initial cap_set_proc failed"): FRR does not start without it
    "SYS_ADMIN",
    "NET_BIND_SERVICE",  # ospfd, bgpd ask for it the same way (bgpd's port 179)
    "SETUID",  # the daemons drop from root to user frr
    "SETGID",
    "CHOWN",  # frrinit.sh / watchfrr give /var/run/frr and the vty sockets to frr
    "FOWNER",
    "DAC_OVERRIDE",  # root's watchfrr and vtysh use frr's run directory and sockets
    "KILL",  # root stops and restarts the daemons that run as frr
]
"""What FRR needs, and nothing it does not: without any one of these FRR (Debian's 8.4 and its frrinit.sh,
under exactly this set as the bounding set) does not start, or cannot be stopped or reached by vtysh;
checked in docs/topologies.md, "Kubernetes". The daemons of FRR 10 ask for the same (lib/privs.c).
Not `allowPrivilegeEscalation: false`: Kubernetes treats SYS_ADMIN as privilege escalation."""
_HOST_CAPABILITIES = ["NET_ADMIN", "NET_RAW"]
"""A shell that idles needs none; someone may `kubectl exec` ping or change a route in it."""


def namespace_problem(name: str) -> str | None:
    """Why `name` cannot be a namespace (a DNS-1123 label), or None."""
    if len(name) > 63 or not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", name):
        return "lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit"
    return None


def project_version() -> str:
    """The version images/build.sh tags the sidecar images with (the project's)."""
    return package_version(unknown="latest")


@dataclass(frozen=True, slots=True)
class KubeOptions:
    namespace: str = "default"
    image_prefix: str = ""
    """Registry and path before the image names, e.g. `registry.example.com/nsm/` (build.sh --prefix)."""
    image_tag: str = field(default_factory=project_version)
    frr_image: str = DEFAULT_FRR_IMAGE
    host_image: str = DEFAULT_HOST_IMAGE
    """Devices that are neither routers nor custom images (k8s-topo's `host`): a shell that idles."""
    pull_policy: str = "IfNotPresent"
    """`Never` for images imported into the node's runtime (a one-node lab), never pulled."""
    control_plane: Literal["nsm", "nsm-local"] = "nsm"
    """`nsm`: NSM v1 and SPIRE in the cluster; `nsm-local`: `nsm-local serve --kubernetes` on the node."""
    spire_volume: Literal["csi", "hostpath"] = "csi"
    """With `nsm`: how the SPIRE agent socket reaches the pod, the SPIFFE CSI driver or a hostPath of its
    directory. With `nsm-local` always nsm-local's hostPath."""
    sidecars: Literal["native", "classic"] = "native"
    """`native`: init containers with restartPolicy Always (Kubernetes >= 1.29), started in order before the
    router; `classic`: plain containers beside the router (older clusters; no order, no gate)."""

    def sidecar_image(self, program: str) -> str:
        return f"{self.image_prefix}{program}:{self.image_tag}"


@dataclass(frozen=True, slots=True)
class DeviceShape:
    """What a device's `router` container is: its image, command, capabilities, configuration files."""

    kind: Literal["frr", "custom", "host"]
    image: str
    files: dict[str, str]
    """ConfigMap key -> content; empty: no ConfigMap."""
    mounts: dict[str, str]
    """ConfigMap key -> absolute path in the router container (one subPath mount each)."""


def daemons_file(config: str) -> str:
    """FRR's /etc/frr/daemons enabling exactly the daemons `config` needs (the local lab starts the same)."""
    wanted = set(frr_daemons(config))
    lines = [f"{daemon}={'yes' if daemon in wanted else 'no'}" for daemon in FRR_ALL_DAEMONS]
    lines += ["vtysh_enable=yes", 'zebra_options="  -A 127.0.0.1 -s 90000000"']
    lines += [f'{daemon}_options="-A 127.0.0.1"' for daemon in FRR_ALL_DAEMONS if daemon in wanted]
    lines.append('staticd_options="-A 127.0.0.1"')
    return "\n".join(lines) + "\n"


def device_shape(wiring: Wiring, device: str, options: KubeOptions) -> DeviceShape:
    """custom_image first (the file's explicit choice, k8s-topo's substring rule), then routers (FRR), else
    a host. k8s-topo checked `qrtr`/`frr` before custom_image; we run FRR for those names anyway, so an
    explicit image is the only way to give such a device another one."""
    topology = wiring.topology
    image = topology.image_of(device)
    if image is not None:
        given = topology.config_file(device)
        if given is None:
            return DeviceShape("custom", image, {}, {})
        # k8s-topo's Generic devices read their startup configuration there
        return DeviceShape(
            "custom",
            image,
            {"startup-config": given.read_text()},
            {"startup-config": "/mnt/flash/startup-config"},
        )
    if is_router(topology, device):
        config = router_config(topology, device)
        files = {
            "frr.conf": config,
            "daemons": daemons_file(config),
            "vtysh.conf": "service integrated-vtysh-config\n",
        }
        return DeviceShape("frr", options.frr_image, files, {key: f"/etc/frr/{key}" for key in files})
    return DeviceShape("host", options.host_image, {}, {})


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def labels(topology: str, name: str, component: str) -> dict[str, str]:
    """Kubernetes' recommended labels and k8s-topo's `topo`; stable: the same file gives the same labels
    whatever the options, images or version (plus `app=<device>` on a device's objects, k8s-topo's)."""
    return {
        NAME_LABEL: name,
        INSTANCE_LABEL: topology,
        COMPONENT_LABEL: component,
        PART_OF_LABEL: topology,
        MANAGED_BY_LABEL: MANAGED_BY,
        TOPOLOGY_LABEL: topology,
    }


def selector(topology: str) -> str:
    """The label selector of every object of `topology` that nsm-topo made (`kubectl get ... -l`)."""
    return f"{INSTANCE_LABEL}={topology},{MANAGED_BY_LABEL}={MANAGED_BY}"


def _device_labels(wiring: Wiring, device: str) -> dict[str, str]:
    return {**labels(wiring.service_name, device, "router"), "app": device}


def network_service(wiring: Wiring, options: KubeOptions) -> Manifest:
    service = wiring.network_service(f"{NSM_GROUP}/{NSM_VERSION}")
    tags = labels(wiring.service_name, wiring.service_name, "network-service")
    service["metadata"] = {
        **service["metadata"],
        "namespace": options.namespace,
        "labels": tags,
        "annotations": {HASH_ANNOTATION: _digest(service["spec"], tags)},
    }
    return service


def config_map(wiring: Wiring, device: str, shape: DeviceShape, options: KubeOptions) -> Manifest:
    tags = _device_labels(wiring, device)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{device}-config",
            "namespace": options.namespace,
            "labels": tags,
            "annotations": {HASH_ANNOTATION: _digest(shape.files, tags)},
        },
        "data": dict(shape.files),
    }


def _downward(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _ready_file_probe(period: int, failures: int) -> Manifest:
    return {
        "exec": {"command": ["test", "-f", READY_FILE]},
        "periodSeconds": period,
        "failureThreshold": failures,
    }


def sidecar_container(program: str, env: dict[str, str], options: KubeOptions) -> Manifest:
    """nsc-sidecar or nse-sidecar: the wiring's env, the pod's name (the NSM name and `podName` label) and
    node (`nodeName` label) from the downward API; NET_ADMIN only. Started when its ready file exists (the
    nse registered, or every link of the nsc verified: a native sidecar holds back what comes after it
    until then), ready while it exists."""
    container: Manifest = {
        "name": program,
        "image": options.sidecar_image(program),
        "imagePullPolicy": options.pull_policy,
    }
    if options.sidecars == "native":
        container["restartPolicy"] = "Always"
    return {
        **container,
        "env": [
            *({"name": key, "value": value} for key, value in env.items()),
            _downward("POD_NAME", "metadata.name"),
            _downward("NODE_NAME", "spec.nodeName"),
        ],
        "securityContext": {
            "capabilities": {"drop": ["ALL"], "add": list(_SIDECAR_CAPABILITIES)},
            "allowPrivilegeEscalation": False,
        },
        "startupProbe": _ready_file_probe(1, STARTUP_SECONDS),
        "readinessProbe": _ready_file_probe(2, 1),
        "resources": copy.deepcopy(_SIDECAR_RESOURCES),
        "volumeMounts": [
            {"name": "nsm-socket", "mountPath": NSM_SOCKET_DIR, "readOnly": True},
            {"name": "spire-agent-socket", "mountPath": SPIRE_SOCKET_DIR, "readOnly": True},
        ],
    }


def router_container(shape: DeviceShape, pull_policy: str) -> Manifest:
    container: Manifest = {"name": "router", "image": shape.image, "imagePullPolicy": pull_policy}
    if shape.kind == "host":
        # a shell that idles but, unlike a bare `sleep` as PID 1, leaves at once on SIGTERM
        container["command"] = HOST_COMMAND
    if shape.kind == "frr":
        # FRR's image starts watchfrr with the daemons file; they drop to user frr and keep only the
        # capabilities each asks for (see _FRR_CAPABILITIES)
        container["securityContext"] = {"capabilities": {"drop": ["ALL"], "add": list(_FRR_CAPABILITIES)}}
        container["resources"] = copy.deepcopy(_FRR_RESOURCES)
    elif shape.kind == "custom":
        # an image we know nothing about: the runtime's defaults, and NET_ADMIN as k8s-topo gave it
        container["securityContext"] = {"capabilities": {"add": ["NET_ADMIN"]}}
        container["resources"] = copy.deepcopy(_CUSTOM_RESOURCES)
    else:
        container["securityContext"] = {
            "capabilities": {"drop": ["ALL"], "add": list(_HOST_CAPABILITIES)},
            "allowPrivilegeEscalation": False,
        }
        container["resources"] = copy.deepcopy(_HOST_RESOURCES)
    if shape.mounts:
        container["volumeMounts"] = [
            {"name": "config", "mountPath": path, "subPath": key, "readOnly": True}
            for key, path in shape.mounts.items()
        ]
    return container


def _workload_api_volume(options: KubeOptions) -> Manifest:
    """SPIRE's agent socket through the SPIFFE CSI driver or a hostPath, or nsm-local's Workload API (which
    `nsm-local serve --kubernetes` serves in the same directory of the node; it must be running first: the
    pod waits in ContainerCreating until that directory exists)."""
    if options.control_plane == "nsm" and options.spire_volume == "csi":
        return {"csi": {"driver": "csi.spiffe.io", "readOnly": True}}
    return {"hostPath": {"path": SPIRE_SOCKET_DIR, "type": "Directory"}}


def _volumes(device: str, shape: DeviceShape, options: KubeOptions) -> list[Manifest]:
    spire = _workload_api_volume(options)
    volumes = [
        {"name": "nsm-socket", "hostPath": {"path": NSM_SOCKET_DIR, "type": "DirectoryOrCreate"}},
        {"name": "spire-agent-socket", **spire},
    ]
    if shape.files:
        volumes.append({"name": "config", "configMap": {"name": f"{device}-config"}})
    return volumes


def pod(wiring: Wiring, device: DeviceWiring, shape: DeviceShape, options: KubeOptions) -> Manifest:
    router = router_container(shape, options.pull_policy)
    sidecars = [sidecar_container("nse-sidecar", device.nse_env, options)]  # endpoint first
    if device.nsc_env is not None:
        sidecars.append(sidecar_container("nsc-sidecar", device.nsc_env, options))
    containers: dict[str, list[Manifest]] = (
        {"initContainers": sidecars, "containers": [router]}
        if options.sidecars == "native"
        else {"containers": [router, *sidecars]}
    )
    spec = {
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        **containers,
        "volumes": _volumes(device.name, shape, options),
    }
    tags = {**_device_labels(wiring, device.name), SPIFFE_LABEL: "true"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": device.name,
            "namespace": options.namespace,
            "labels": tags,
            "annotations": {HASH_ANNOTATION: _digest(spec, shape.files, tags)},
        },
        "spec": spec,
    }


def manifests(wiring: Wiring, options: KubeOptions | None = None) -> list[Manifest]:
    """Every object, in the order to create them: the NetworkService (so the endpoints find its matches
    and never register one of their own), then per device its ConfigMap (if any) and its Pod."""
    options = options or KubeOptions()
    objects = [network_service(wiring, options)]
    for device in wiring.devices:
        shape = device_shape(wiring, device.name, options)
        if shape.files:
            objects.append(config_map(wiring, device.name, shape, options))
        objects.append(pod(wiring, device, shape, options))
    return objects


def file_name(index: int, manifest: Manifest) -> str:
    """`-o DIR`: one file per object, numbered so `kubectl apply -f DIR` keeps the order."""
    return f"{index:03d}-{manifest['kind'].lower()}-{manifest['metadata']['name']}.yaml"


class _Dumper(yaml.SafeDumper):
    """Configuration files as literal blocks (`|`), readable in the YAML as they are in conf_dir; no
    anchors and aliases (`&id001`) where two containers carry equal values: every object reads alone."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(objects: Iterable[Manifest]) -> str:
    """One multi-document YAML stream, in order (what `kubectl apply -f -` takes)."""
    return yaml.dump_all(list(objects), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
