"""The Kubernetes objects of a topology for NSM v1, as plain dicts (no client, no I/O but config files).

What k8s-topo's `--create` made in NSM mode (legacy-contract.md §4.3), with our sidecars and NSM v1:

* the `networkservicemesh.io/v1` NetworkService of `Wiring.network_service()` (one match per link);
* per device a ConfigMap `<dev>-config` (k8s-topo's name) when its container takes a configuration: a
  router's `frr.conf`, the FRR `daemons` file that starts what that configuration needs, `vtysh.conf`; a
  `custom_image` device's file from conf_dir as k8s-topo's `startup-config`;
* per device a Pod named after the device, labels `app=<dev>`, `topo=<topology>` (k8s-topo's) and
  `spiffe.io/spiffe-id=true` (what NSM's SPIRE setup selects workloads by), with the containers `router`,
  `nse-sidecar` and, for a device that owns links, `nsc-sidecar`; the sidecars' environment is exactly the
  wiring's plus `POD_NAME`/`NODE_NAME` from the downward API.

Every object carries an annotation `nsm-topo/spec-hash` over what it asks for (a Pod's includes its
ConfigMap's data, which a subPath mount does not follow), so `apply` can tell unchanged from changed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

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
HASH_ANNOTATION = "nsm-topo/spec-hash"
SPIFFE_LABEL = "spiffe.io/spiffe-id"
READY_FILE = "/run/nsm/ready"
"""Where the sidecar images point NSM_READY_FILE (images/Dockerfile)."""
NSM_SOCKET_DIR = "/var/lib/networkservicemesh"
"""The NSM manager's socket directory on every node (nsmgr's hostPath), the sidecars' default."""
SPIRE_SOCKET_DIR = "/run/spire/sockets"
"""Where the SPIRE agent's Workload API socket (agent.sock) is mounted, the sidecars' default."""
GRACE_SECONDS = 30
"""A sidecar closes its links after SIGTERM and exits at the latest 20 s later (request timeout + 5 s)."""
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

_SIDECAR_RESOURCES = {
    # docs/performance.md: ~35 MiB PSS, 56-63 MiB RSS per sidecar, up to ~100 MiB with many links checked
    "requests": {"cpu": "50m", "memory": "96Mi"},
    "limits": {"cpu": "500m", "memory": "256Mi"},
}
_FRR_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
_HOST_RESOURCES = {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}}
_CUSTOM_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}}
"""An image we know nothing about: a request so it is scheduled sensibly, no limit that could starve it."""


def namespace_problem(name: str) -> str | None:
    """Why `name` cannot be a namespace (a DNS-1123 label), or None."""
    if len(name) > 63 or not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", name):
        return "lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit"
    return None


def project_version() -> str:
    """The version images/build.sh tags the sidecar images with (the project's)."""
    try:
        return importlib.metadata.version("nsm-topology-sidecars")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "latest"


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
    spire_volume: Literal["csi", "hostpath"] = "csi"
    """How the SPIRE agent socket reaches the pod: the SPIFFE CSI driver, or a hostPath of its directory."""

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


def _labels(wiring: Wiring, device: str) -> dict[str, str]:
    return {"app": device, "topo": wiring.service_name}


def network_service(wiring: Wiring, options: KubeOptions) -> Manifest:
    service = wiring.network_service(f"{NSM_GROUP}/{NSM_VERSION}")
    service["metadata"] = {
        **service["metadata"],
        "namespace": options.namespace,
        "labels": {"topo": wiring.service_name},
        "annotations": {HASH_ANNOTATION: _digest(service["spec"])},
    }
    return service


def config_map(wiring: Wiring, device: str, shape: DeviceShape, options: KubeOptions) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{device}-config",
            "namespace": options.namespace,
            "labels": _labels(wiring, device),
            "annotations": {HASH_ANNOTATION: _digest(shape.files)},
        },
        "data": dict(shape.files),
    }


def _downward(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def sidecar_container(program: str, env: dict[str, str], options: KubeOptions) -> Manifest:
    """nsc-sidecar or nse-sidecar: the wiring's env, the pod's name (the NSM name and `podName` label) and
    node (`nodeName` label) from the downward API; NET_ADMIN only; ready while its file exists."""
    return {
        "name": program,
        "image": options.sidecar_image(program),
        "imagePullPolicy": options.pull_policy,
        "env": [
            *({"name": key, "value": value} for key, value in env.items()),
            _downward("POD_NAME", "metadata.name"),
            _downward("NODE_NAME", "spec.nodeName"),
        ],
        "securityContext": {
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
            "allowPrivilegeEscalation": False,
        },
        "readinessProbe": {
            "exec": {"command": ["test", "-f", READY_FILE]},
            "periodSeconds": 2,
            "failureThreshold": 1,
        },
        "resources": _SIDECAR_RESOURCES,
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
        # zebra sets addresses and routes, ospfd/isisd need raw sockets; FRR's image starts watchfrr
        # with the daemons file and drops to user frr (the runtime's default capabilities cover that)
        container["securityContext"] = {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}
        container["resources"] = _FRR_RESOURCES
    elif shape.kind == "custom":
        container["securityContext"] = {"capabilities": {"add": ["NET_ADMIN"]}}  # as k8s-topo gave it
        container["resources"] = _CUSTOM_RESOURCES
    else:
        container["resources"] = _HOST_RESOURCES
    if shape.mounts:
        container["volumeMounts"] = [
            {"name": "config", "mountPath": path, "subPath": key, "readOnly": True}
            for key, path in shape.mounts.items()
        ]
    return container


def _volumes(device: str, shape: DeviceShape, options: KubeOptions) -> list[Manifest]:
    spire: Manifest = (
        {"csi": {"driver": "csi.spiffe.io", "readOnly": True}}
        if options.spire_volume == "csi"
        else {"hostPath": {"path": SPIRE_SOCKET_DIR, "type": "Directory"}}
    )
    volumes = [
        {"name": "nsm-socket", "hostPath": {"path": NSM_SOCKET_DIR, "type": "DirectoryOrCreate"}},
        {"name": "spire-agent-socket", **spire},
    ]
    if shape.files:
        volumes.append({"name": "config", "configMap": {"name": f"{device}-config"}})
    return volumes


def pod(wiring: Wiring, device: DeviceWiring, shape: DeviceShape, options: KubeOptions) -> Manifest:
    containers = [
        router_container(shape, options.pull_policy),
        sidecar_container("nse-sidecar", device.nse_env, options),
    ]
    if device.nsc_env is not None:
        containers.append(sidecar_container("nsc-sidecar", device.nsc_env, options))
    spec = {
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": containers,
        "volumes": _volumes(device.name, shape, options),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": device.name,
            "namespace": options.namespace,
            "labels": {**_labels(wiring, device.name), SPIFFE_LABEL: "true"},
            "annotations": {HASH_ANNOTATION: _digest(spec, shape.files)},
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
    """Configuration files as literal blocks (`|`), readable in the YAML as they are in conf_dir."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(objects: Iterable[Manifest]) -> str:
    """One multi-document YAML stream, in order (what `kubectl apply -f -` takes)."""
    return yaml.dump_all(list(objects), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
