"""`nsm-local kube-manifest`: the objects that run nsm-local as the NSM of every node, as plain dicts.

Pure: no client, no I/O. In the order to apply them:

* NSM's NetworkService CRD, as deployments-k8s installs it (`apps/registry-k8s/crd-ns.yaml`: any spec,
  `x-kubernetes-preserve-unknown-fields`), unless nsm-local is to install it itself (`install_crd`);
* the Namespace (`nsm-system`; Pod Security `privileged`, which the DaemonSet needs; none for the
  namespaces Kubernetes makes itself, which are never relabelled);
* a ServiceAccount and the least RBAC that mode needs: get/list/watch `pods` (cluster-wide: a node's pods
  are in every namespace; nsm-local lists them with `fieldSelector=spec.nodeName=<its node>`) and
  get/list/watch `networkservices` (cluster-wide, or a Role in the one namespace it reads); with
  `install_crd` also get (of that one CRD) and create `customresourcedefinitions`. Nothing is written;
* a DaemonSet: `localhost/nsm-local:<version>` (what `images/build.sh` builds with podman; `imagePullPolicy:
  Never`: the image is imported into the node's runtime, not pulled), privileged, `hostNetwork` (the
  forwarder works in the host's namespaces) and `hostPID` (SO_PEERCRED pids, `/proc/<pid>/ns/net` and
  `/proc/<pid>/cgroup` of the callers), tolerating every taint (one-node labs run it on a control-plane
  node), with three hostPaths: NSM's socket directory `/var/lib/networkservicemesh` (nsm.io.sock, what
  nsm-topo's pods mount), the SPIRE-agent socket directory `/run/spire/sockets` (agent.sock, what
  nsm-topo's pods mount with `--spire-volume hostpath`) and the state `/var/lib/nsm-local` (CA, services,
  connection owners; nsm-local keeps them in `kubernetes/`, 0700, which no pod mounts). No `/proc`,
  `/var/run/netns` or runtime socket mount: with hostPID the container's /proc is the host's, network
  namespaces travel as file descriptors, and the runtime is never asked anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from nsm_local.kube.services import CRD_NAME, NSM_GROUP, NSM_PLURAL, NSM_VERSION
from nsm_sdk.version import package_version

Manifest = dict[str, Any]

DEFAULT_NAMESPACE = "nsm-system"
NAME = "nsm-local"
NSM_SOCKET_DIR = "/var/lib/networkservicemesh"
NSM_SOCKET = f"{NSM_SOCKET_DIR}/nsm.io.sock"
SPIRE_SOCKET_DIR = "/run/spire/sockets"
SPIRE_SOCKET = f"{SPIRE_SOCKET_DIR}/agent.sock"
STATE_HOST_DIR = "/var/lib/nsm-local"
STATE_DIR = f"{STATE_HOST_DIR}/kubernetes"
"""nsm-local's state in Kubernetes mode: a directory of its own (0700) inside the hostPath, apart from a
host-mode nsm-local's on the same machine (each keeps its own CA)."""
GRACE_SECONDS = 15
"""nsm-local exits at the latest 10 s after SIGTERM (its backstop); links stay for the next pod."""
PULL_POLICIES = ("IfNotPresent", "Always", "Never")
BUILTIN_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "nsm"}
_READ = ["get", "list", "watch"]


def project_version() -> str:
    """The version images/build.sh tags the images with (the project's)."""
    return package_version(unknown="latest")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a namespace (a DNS-1123 label), or None."""
    if len(name) > 63 or not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", name):
        return "lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit"
    return None


@dataclass(frozen=True, slots=True)
class ManifestOptions:
    namespace: str = DEFAULT_NAMESPACE
    """Where nsm-local's DaemonSet, ServiceAccount (and Role) live."""
    image: str = field(default_factory=lambda: f"localhost/nsm-local:{project_version()}")
    pull_policy: str = "Never"
    services_namespace: str | None = None
    """The one namespace whose NetworkServices nsm-local reads; None: all (as registry-k8s)."""
    install_crd: bool = False
    """nsm-local creates the CRD if absent (and gets the right to); else the CRD is one of the objects."""
    trust_domain: str = "nsm.local"
    log_level: str = "INFO"


def network_service_crd() -> Manifest:
    """NSM's NetworkService CRD (deployments-k8s `apps/registry-k8s/crd-ns.yaml`)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "conversion": {"strategy": "None"},
            "group": NSM_GROUP,
            "names": {
                "kind": "NetworkService",
                "listKind": "NetworkServiceList",
                "plural": NSM_PLURAL,
                "shortNames": ["netsvc", "netsvcs"],
                "singular": "networkservice",
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": NSM_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"x-kubernetes-preserve-unknown-fields": True}},
                        }
                    },
                }
            ],
        },
    }


def _meta(name: str, namespace: str | None = None) -> Manifest:
    meta: Manifest = {"name": name, "labels": dict(_LABELS)}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def _rbac(options: ManifestOptions) -> list[Manifest]:
    subject = {"kind": "ServiceAccount", "name": NAME, "namespace": options.namespace}
    rules: list[Manifest] = [{"apiGroups": [""], "resources": ["pods"], "verbs": list(_READ)}]
    services_rule = {"apiGroups": [NSM_GROUP], "resources": [NSM_PLURAL], "verbs": list(_READ)}
    if options.services_namespace is None:
        rules.append(services_rule)
    if options.install_crd:
        rules += [
            {
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "resourceNames": [CRD_NAME],
                "verbs": ["get"],
            },
            # create cannot be limited by name (the object does not exist yet)
            {
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "verbs": ["create"],
            },
        ]
    objects: list[Manifest] = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta(NAME),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _meta(NAME),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": [subject],
        },
    ]
    if options.services_namespace is not None:
        objects += [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": _meta(NAME, options.services_namespace),
                "rules": [services_rule],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": _meta(NAME, options.services_namespace),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
                "subjects": [subject],
            },
        ]
    return objects


def _downward(name: str, path: str) -> Manifest:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _host_path(name: str, path: str) -> Manifest:
    return {"name": name, "hostPath": {"path": path, "type": "DirectoryOrCreate"}}


def daemon_set(options: ManifestOptions) -> Manifest:
    args = [
        "serve",
        "--kubernetes",
        "--listen",
        f"unix://{NSM_SOCKET}",
        "--workload-api",
        f"unix://{SPIRE_SOCKET}",
        "--state-dir",
        STATE_DIR,
        "--trust-domain",
        options.trust_domain,
        "--log-level",
        options.log_level,
    ]
    if options.services_namespace is not None:
        args += ["--services-namespace", options.services_namespace]
    if options.install_crd:
        args.append("--install-crd")
    container = {
        "name": NAME,
        "image": options.image,
        "imagePullPolicy": options.pull_policy,
        "args": args,
        "env": [
            _downward("NODE_NAME", "spec.nodeName"),
            _downward("POD_NAME", "metadata.name"),
            _downward("POD_NAMESPACE", "metadata.namespace"),
        ],
        # the forwarder enters other pods' network namespaces (setns) and makes veth pairs there
        "securityContext": {"privileged": True},
        "readinessProbe": {
            "exec": {"command": ["test", "-S", NSM_SOCKET]},
            "periodSeconds": 2,
            "failureThreshold": 1,
        },
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "volumeMounts": [
            {"name": "nsm-socket", "mountPath": NSM_SOCKET_DIR},
            {"name": "spire-agent-socket", "mountPath": SPIRE_SOCKET_DIR},
            {"name": "state", "mountPath": STATE_HOST_DIR},
        ],
    }
    selector = {"app.kubernetes.io/name": NAME}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(NAME, options.namespace),
        "spec": {
            "selector": {"matchLabels": selector},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": dict(_LABELS)},
                "spec": {
                    "serviceAccountName": NAME,
                    "hostNetwork": True,
                    "hostPID": True,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [container],
                    "volumes": [
                        _host_path("nsm-socket", NSM_SOCKET_DIR),
                        _host_path("spire-agent-socket", SPIRE_SOCKET_DIR),
                        _host_path("state", STATE_HOST_DIR),
                    ],
                },
            },
        },
    }


def manifests(options: ManifestOptions | None = None) -> list[Manifest]:
    """Every object, in the order to apply them (the CRD and Namespace first)."""
    options = options or ManifestOptions()
    objects = [] if options.install_crd else [network_service_crd()]
    if options.namespace not in BUILTIN_NAMESPACES:  # never relabel those
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": options.namespace,
                    "labels": {**_LABELS, "pod-security.kubernetes.io/enforce": "privileged"},
                },
            }
        )
    objects.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, options.namespace)})
    objects += _rbac(options)
    objects.append(daemon_set(options))
    return objects


def to_yaml(objects: Iterable[Manifest]) -> str:
    """One multi-document YAML stream (what `kubectl apply -f -` takes)."""
    return yaml.safe_dump_all(list(objects), sort_keys=False, default_flow_style=False)
