"""`nsm-local kube-manifest`: valid Kubernetes 1.34 objects (strict), least privilege, the DaemonSet's shape,
and its arguments are ones `nsm-local serve` accepts. Plus the command line of Kubernetes mode."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml

from nsm_local.__main__ import _parser, kube_settings
from nsm_local.kube.manifests import (
    NSM_SOCKET,
    SPIRE_SOCKET,
    STATE_DIR,
    ManifestOptions,
    manifests,
    network_service_crd,
    project_version,
    to_yaml,
)
from nsm_local.kube.node import KubeSettings
from nsm_sdk.protocol.errors import ConfigError
from nsm_topo.kube.manifests import NSM_SOCKET_DIR, SPIRE_SOCKET_DIR

K8S_VERSION = "1.34.0"
"""As tests/unit/test_kube_manifests.py: the release of the single-node cluster the e2e tests run."""

VARIANTS = {
    "default": ManifestOptions(),
    "one namespace, installs the CRD": ManifestOptions(
        namespace="kube-system", services_namespace="labs", install_crd=True, image="reg.example/nsm-local:1"
    ),
}


def by_kind(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


def daemon_set(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = by_kind(objects)["DaemonSet"]
    return found


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_object_is_valid_for_kubernetes_strictly(variant: str) -> None:
    objects = yaml.safe_load_all(to_yaml(manifests(VARIANTS[variant])))  # what kubectl gets
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_typo_in_these_objects() -> None:
    broken = daemon_set(manifests())
    broken["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_crd_is_nsms_and_comes_first() -> None:
    objects = manifests()
    assert objects[0] == network_service_crd()
    crd = objects[0]
    assert crd["metadata"]["name"] == "networkservices.networkservicemesh.io"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1" and version["served"] and version["storage"]
    assert version["schema"]["openAPIV3Schema"]["properties"]["spec"] == {
        "x-kubernetes-preserve-unknown-fields": True
    }
    assert [o["kind"] for o in objects] == [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
    ]


def test_least_privilege_read_only_unless_it_installs_the_crd() -> None:
    (role,) = by_kind(manifests())["ClusterRole"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": ["networkservicemesh.io"],
            "resources": ["networkservices"],
            "verbs": ["get", "list", "watch"],
        },
    ]
    kinds = by_kind(manifests(VARIANTS["one namespace, installs the CRD"]))
    assert "CustomResourceDefinition" not in kinds and "Namespace" not in kinds, (
        "kube-system is not relabelled"
    )
    (cluster_role,) = kinds["ClusterRole"]
    assert {
        "apiGroups": ["networkservicemesh.io"],
        "resources": ["networkservices"],
        "verbs": ["get", "list", "watch"],
    } not in cluster_role["rules"]
    crd_rules = [r for r in cluster_role["rules"] if r["resources"] == ["customresourcedefinitions"]]
    assert crd_rules == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": ["networkservices.networkservicemesh.io"],
            "verbs": ["get"],
        },
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["create"],
        },
    ]
    (role,) = kinds["Role"]
    assert role["metadata"]["namespace"] == "labs"
    assert role["rules"] == [
        {
            "apiGroups": ["networkservicemesh.io"],
            "resources": ["networkservices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    (binding,) = kinds["RoleBinding"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "nsm-local", "namespace": "kube-system"}
    ]
    every_verb = {
        v for obj in kinds["ClusterRole"] + kinds["Role"] for rule in obj["rules"] for v in rule["verbs"]
    }
    assert every_verb == {"get", "list", "watch", "create"}


def test_the_daemon_set_is_privileged_on_the_hosts_namespaces_with_the_sockets_pods_mount() -> None:
    spec = daemon_set(manifests())["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["serviceAccountName"] == "nsm-local"
    (container,) = spec["containers"]
    assert container["image"] == f"localhost/nsm-local:{project_version()}"
    assert container["imagePullPolicy"] == "Never"
    assert container["securityContext"] == {"privileged": True}
    paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert paths == mounts, "every host directory at the same path inside"
    # the directories nsm-topo's pods mount (nsm-topo manifest --spire-volume hostpath)
    assert {NSM_SOCKET_DIR, SPIRE_SOCKET_DIR} <= set(paths.values())
    assert NSM_SOCKET.startswith(NSM_SOCKET_DIR + "/") and SPIRE_SOCKET.startswith(SPIRE_SOCKET_DIR + "/")
    assert not any(p in ("/proc", "/var/run/netns", "/run/containerd") for p in paths.values())
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env["NODE_NAME"] == "spec.nodeName"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_daemon_sets_arguments_are_a_valid_serve_command(variant: str) -> None:
    (container,) = daemon_set(manifests(VARIANTS[variant]))["spec"]["template"]["spec"]["containers"]
    args = _parser().parse_args(container["args"])
    assert args.command == "serve" and args.listen == f"unix://{NSM_SOCKET}"
    assert args.workload_api == f"unix://{SPIRE_SOCKET}" and args.state_dir == STATE_DIR
    settings = kube_settings(args, {"NODE_NAME": "node-1"})
    options = VARIANTS[variant]
    assert settings == KubeSettings(
        node_name="node-1", services_namespace=options.services_namespace, install_crd=options.install_crd
    )


# --- the command line -----------------------------------------------------------------------------------


def serve_args(*argv: str) -> Any:
    return _parser().parse_args(["serve", *argv])


def test_kubernetes_mode_from_flags_or_environment() -> None:
    assert kube_settings(serve_args(), {}) is None
    assert kube_settings(serve_args(), {"NODE_NAME": "n1"}) is None, "NODE_NAME alone does not switch it on"
    on = kube_settings(
        serve_args(), {"NSM_KUBERNETES": "true", "NODE_NAME": "n1", "NSM_SERVICES_NAMESPACE": "labs"}
    )
    assert on == KubeSettings(node_name="n1", services_namespace="labs")
    flagged = kube_settings(
        serve_args(
            "--kubernetes", "--node-name", "node-1.example", "--services-namespace", "x", "--install-crd"
        ),
        {"NODE_NAME": "ignored"},
    )
    assert flagged == KubeSettings(node_name="node-1.example", services_namespace="x", install_crd=True)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--kubernetes"], {}, "NODE_NAME=<unset>: required with --kubernetes"),
        (["--kubernetes"], {"NODE_NAME": "Node_1"}, "NODE_NAME='Node_1': not a node name"),
        (["--kubernetes", "--node-name", "n..1"], {}, "--node-name='n..1': not a node name"),
        (["--node-name", "n1"], {}, "--node-name='n1': only with --kubernetes"),
        (["--install-crd"], {}, "--install-crd='True': only with --kubernetes"),
        (
            ["--kubernetes"],
            {"NODE_NAME": "n", "NSM_SERVICES_NAMESPACE": "A"},
            "NSM_SERVICES_NAMESPACE='A': not a namespace",
        ),
        (
            ["--kubernetes", "--node-name", "n", "--kubeconfig", "/nonexistent"],
            {},
            "--kubeconfig='/nonexistent': no such file",
        ),
        ([], {"NSM_KUBERNETES": "maybe"}, "NSM_KUBERNETES='maybe': expected true/false"),
    ],
)
def test_bad_settings_name_the_variable_value_and_problem(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        kube_settings(serve_args(*argv), env)
    assert str(refused.value).startswith(message)


def nsm_local(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nsm_local", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_kube_manifest_prints_the_objects_and_refuses_bad_flags_with_exit_2() -> None:
    printed = nsm_local("kube-manifest", "-n", "labs-nsm", "--pull-policy", "IfNotPresent")
    assert printed.returncode == 0, printed.stderr
    objects = list(yaml.safe_load_all(printed.stdout))
    assert daemon_set(objects)["metadata"]["namespace"] == "labs-nsm"
    for argv, variable in (
        (["-n", "Labs"], "--namespace='Labs'"),
        (["--pull-policy", "Sometimes"], "--pull-policy='Sometimes'"),
        (["--services-namespace", "a_b"], "--services-namespace='a_b'"),
    ):
        refused = nsm_local("kube-manifest", *argv)
        assert refused.returncode == 2
        assert refused.stderr.startswith(f"nsm-local: {variable}: ") and refused.stderr.count("\n") == 1


def test_serve_kubernetes_without_a_node_name_exits_2_before_anything_starts() -> None:
    refused = nsm_local(
        "serve", "--kubernetes", "--listen", "unix:///nonexistent-dir/x.sock", env={"PATH": "/usr/bin"}
    )
    assert refused.returncode == 2
    assert (
        refused.stderr
        == "nsm-local: NODE_NAME=<unset>: required with --kubernetes: the node this nsm-local serves\n"
    )
