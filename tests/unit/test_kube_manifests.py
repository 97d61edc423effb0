"""`nsm-topo manifest`'s objects: valid for the Kubernetes API (strict schemas) and for NSM's own message,
wiring exactly what the local lab wires from the same file, and following Kubernetes' conventions: labels,
native sidecars, least capabilities, requests and limits, in both flavours of control plane."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor

from nsc_sidecar.settings import NscSettings
from nse_sidecar.settings import NseSettings
from nsm_sdk._proto.registry.registry_pb2 import NetworkService
from nsm_sdk.protocol.nsurl import parse_seed_services
from nsm_topo.builder import build, write
from nsm_topo.kube.cluster import Existing, _ours, _topology_of
from nsm_topo.kube.manifests import (
    GRACE_SECONDS,
    HASH_ANNOTATION,
    MANAGED_BY,
    NSM_SOCKET_DIR,
    READY_FILE,
    SPIRE_SOCKET_DIR,
    KubeOptions,
    Manifest,
    daemons_file,
    manifests,
    selector,
    to_yaml,
)
from nsm_topo.topology import Topology, load_topology
from nsm_topo.wiring import frr_daemons, router_config, wire

K8S_VERSION = "1.34.0"
"""The Kubernetes API the objects are checked against: the release issue 8's cluster runs (v1.34)."""

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

CUSTOM = """\
prefix: mixed
custom_image: {ceos: "ceos:4.32.0F", srl: "ghcr.io/nokia/srlinux:24.10"}
links:
  - endpoints: ["qrtr-1:eth1", "ceos-1:eth1"]
  - endpoints: ["ceos-1:eth2", "host-1:eth1"]
  - endpoints: ["srl-1:e1-1", "qrtr-1:eth2"]
"""


def _random_topology(tmp_path: Path) -> Topology:
    return load_topology(write(build(10, 4, seed=7), tmp_path))


def _custom_topology(tmp_path: Path) -> Topology:
    (tmp_path / "mixed.yml").write_text(CUSTOM)
    (tmp_path / "ceos-1").write_text("hostname ceos-1\n")  # conf_dir defaults to the file's directory
    return load_topology(tmp_path / "mixed.yml")


TOPOLOGIES = {
    "random 10 routers": _random_topology,
    "triangle example": lambda _: load_topology(EXAMPLES / "triangle" / "topology.yml"),
    "custom images": _custom_topology,
}


@pytest.fixture(params=list(TOPOLOGIES))
def topology(request: pytest.FixtureRequest, tmp_path: Path) -> Topology:
    made: Topology = TOPOLOGIES[request.param](tmp_path)
    return made


def _pods(objects: list[Manifest]) -> dict[str, Manifest]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "Pod"}


def _all_containers(pod: Manifest) -> list[Manifest]:
    """Init containers (native sidecars) first, then the others, as the kubelet starts them."""
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def _container(pod: Manifest, name: str) -> Manifest | None:
    return next((c for c in _all_containers(pod) if c["name"] == name), None)


def _triangle_pod(name: str = "frr-a", **options: Any) -> Manifest:
    return _pods(
        manifests(wire(load_topology(EXAMPLES / "triangle" / "topology.yml")), KubeOptions(**options))
    )[name]


FLAVOURS = {
    "NSM, SPIFFE CSI driver, native sidecars": KubeOptions(),
    "NSM, SPIRE hostPath, classic sidecars": KubeOptions(spire_volume="hostpath", sidecars="classic"),
    "nsm-local on the node, native sidecars, local images": KubeOptions(
        control_plane="nsm-local", pull_policy="Never", image_prefix="localhost/"
    ),
    "nsm-local on the node, classic sidecars": KubeOptions(control_plane="nsm-local", sidecars="classic"),
}


def _plain_env(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _downward_env(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}


# -- the Kubernetes API's own schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_every_core_object_validates_against_the_kubernetes_schemas_in_strict_mode(
    topology: Topology, flavour: str
) -> None:
    import yaml

    objects = manifests(wire(topology), dataclasses.replace(FLAVOURS[flavour], namespace="lab"))
    core = [obj for obj in yaml.safe_load_all(to_yaml(objects)) if obj["apiVersion"] == "v1"]  # as kubectl
    assert {obj["kind"] for obj in core} == {"Pod", "ConfigMap"}
    for obj in core:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_really_catches_an_unknown_field() -> None:
    pod = next(
        o
        for o in manifests(wire(load_topology(EXAMPLES / "triangle" / "topology.yml")))
        if o["kind"] == "Pod"
    )
    broken = copy.deepcopy(pod)
    broken["spec"]["initContainers"][0]["startupProbe"]["exec"]["cmd"] = ["true"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_yaml_stream_holds_exactly_the_objects_without_anchors(tmp_path: Path) -> None:
    import yaml

    objects = manifests(wire(_random_topology(tmp_path)))
    text = to_yaml(objects)
    assert list(yaml.safe_load_all(text)) == objects
    assert "&id" not in text and "*id" not in text  # equal resources of two sidecars written out twice


# -- the NetworkService: NSM's registry.NetworkService message ---------------------------------------------


def _keys_are_proto_field_names(value: Any, descriptor: Descriptor, where: str) -> None:
    """sdk-k8s decodes the CRD's spec into the Go registry.NetworkService with encoding/json, whose tags
    are the proto field names: every key must be one (a camelCase json_name would be dropped there)."""
    assert isinstance(value, dict), where
    for key, item in value.items():
        field = descriptor.fields_by_name.get(key)
        assert field is not None, f"{where}.{key} is not a field of {descriptor.full_name}"
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            items = item if field.is_repeated else [item]
            for i, sub in enumerate(items):
                _keys_are_proto_field_names(sub, field.message_type, f"{where}.{key}[{i}]")


def test_the_network_service_is_nsm_v1s_own_message_with_one_match_per_link(topology: Topology) -> None:
    service = manifests(wire(topology))[0]
    assert (service["apiVersion"], service["kind"]) == ("networkservicemesh.io/v1", "NetworkService")
    document = {**service["spec"], "name": service["metadata"]["name"]}
    _keys_are_proto_field_names(document, NetworkService.DESCRIPTOR, "spec")
    message = NetworkService()
    json_format.ParseDict(document, message, ignore_unknown_fields=False)
    assert message.name == topology.name and message.payload == "IP"
    assert [
        (dict(m.source_selector), [dict(r.destination_selector) for r in m.routes]) for m in message.matches
    ] == [({"link": link.name}, [{"device": link.endpoint.device}]) for link in topology.links]


def test_nsm_local_reads_the_same_network_service_with_every_selector(topology: Topology) -> None:
    """The local lab hands wiring.network_service() to nsm-local (controlplane.apply_service)."""
    import yaml

    from nsm_local.manifests import load_network_services

    (service,) = load_network_services(yaml.safe_dump(manifests(wire(topology))[0]), "test")
    assert [(dict(m.source_selector), dict(m.routes[0].destination_selector)) for m in service.matches] == [
        ({"link": link.name}, {"device": link.endpoint.device}) for link in topology.links
    ]


# -- the same wiring as the local lab ------------------------------------------------------------------------


def _local_sidecar_envs(
    topology: Topology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[Any, Any]:
    """What `nsm-topo up` hands each sidecar process: its own code path, with spawn() recorded."""
    from nsm_topo.local import lab
    from nsm_topo.local.controlplane import ControlPlane
    from nsm_topo.local.processes import ProcessRecord

    seen: dict[tuple[str, str], dict[str, str]] = {}

    def fake_spawn(role: str, device: str, argv: Any, env: Any, log: Path, netns: str | None = None) -> Any:
        seen[(device, role)] = dict(env)
        return ProcessRecord(role, device, 0, 0, str(log))

    monkeypatch.setattr(lab, "spawn", fake_spawn)
    plane = ControlPlane(run_dir=tmp_path / "run")
    record = lab.LabRecord(topology.name, str(topology.source))
    (tmp_path / "run" / topology.name).mkdir(parents=True)
    lab._start_sidecars(
        topology, wire(topology), plane, record, tmp_path / "run" / topology.name / "lab.json"
    )
    return seen


LOCAL_ONLY = {"PATH", "POD_NAME", "NSM_READY_FILE"}
"""Set by the local lab for a process (in a pod: the image's PATH and NSM_READY_FILE, POD_NAME from the
downward API); everything else must be the same in both."""


def test_every_sidecar_gets_exactly_the_environment_the_local_lab_gives_it(
    topology: Topology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _local_sidecar_envs(topology, tmp_path, monkeypatch)
    pods = _pods(manifests(wire(topology)))
    in_pods = {
        (name, container["name"]): container
        for name, pod in pods.items()
        for container in _all_containers(pod)
        if container["name"].endswith("-sidecar")
    }
    assert set(in_pods) == set(local)
    for key, container in in_pods.items():
        expected = {k: v for k, v in local[key].items() if k not in LOCAL_ONLY}
        assert _plain_env(container) == expected, key
        assert _downward_env(container) == {"POD_NAME": "metadata.name", "NODE_NAME": "spec.nodeName"}
        assert "POD_NAME" in local[key] and "NSM_READY_FILE" in local[key]


def test_the_pods_request_every_link_once_toward_the_device_the_network_service_routes_it_to(
    topology: Topology,
) -> None:
    objects = manifests(wire(topology))
    service, pods = objects[0], _pods(objects)
    routed = {
        m["source_selector"]["link"]: m["routes"][0]["destination_selector"]["device"]
        for m in service["spec"]["matches"]
    }
    served = {
        _plain_env(_container(pod, "nse-sidecar") or {})["ENDPOINT_LABELS"]: name
        for name, pod in pods.items()
    }
    requested = []
    for name, pod in pods.items():
        client = _container(pod, "nsc-sidecar")
        if client is None:
            continue
        for spec in parse_seed_services(
            "NS_NETWORKSERVICEMESH_IO", _plain_env(client)["NS_NETWORKSERVICEMESH_IO"]
        ):
            link = spec.labels["link"]
            requested.append(link)
            endpoint = served[f"device={routed[link]}"]
            index = int(link.removeprefix("net-"))
            assert (name, spec.interface_name) == (
                topology.links[index].client.device,
                topology.links[index].client.interface,
            )
            assert (endpoint, spec.labels["peerif"]) == (
                topology.links[index].endpoint.device,
                topology.links[index].endpoint.interface,
            )
    assert sorted(requested) == sorted(link.name for link in topology.links)


def test_the_sidecars_own_settings_accept_each_containers_environment(topology: Topology) -> None:
    for name, pod in _pods(manifests(wire(topology))).items():
        # the downward API's values and the image's NSM_READY_FILE, as the kubelet and image give them
        for program, settings in (("nse-sidecar", NseSettings), ("nsc-sidecar", NscSettings)):
            container = _container(pod, program)
            if container is None:
                continue
            env = {
                **_plain_env(container),
                "POD_NAME": name,
                "NODE_NAME": "node-1",
                "NSM_READY_FILE": READY_FILE,
            }
            settings.from_env(env)


# -- the pod shape -------------------------------------------------------------------------------------


def test_pods_keep_k8s_topo_names_and_labels_and_carry_the_spiffe_label(tmp_path: Path) -> None:
    topology = _random_topology(tmp_path)
    objects = manifests(wire(topology), KubeOptions(namespace="labs"))
    pods = _pods(objects)
    assert list(pods) == list(topology.devices)
    for name, pod in pods.items():
        assert pod["metadata"]["namespace"] == "labs"
        assert pod["metadata"]["labels"] == {
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/instance": "random",
            "app.kubernetes.io/component": "router",
            "app.kubernetes.io/part-of": "random",
            "app.kubernetes.io/managed-by": "nsm-topo",
            "app": name,
            "topo": "random",
            "spiffe.io/spiffe-id": "true",
        }
        names = [c["name"] for c in _all_containers(pod)]
        assert names in (["nse-sidecar", "nsc-sidecar", "router"], ["nse-sidecar", "router"])
    config_maps = [o for o in objects if o["kind"] == "ConfigMap"]
    assert [o["metadata"]["name"] for o in config_maps] == [f"{device}-config" for device in topology.devices]
    for config in config_maps:
        device = config["metadata"]["name"].removesuffix("-config")
        assert config["metadata"]["labels"] == {
            k: v for k, v in pods[device]["metadata"]["labels"].items() if k != "spiffe.io/spiffe-id"
        }


def test_every_object_carries_the_recommended_labels_and_k8s_topos_topo_label(topology: Topology) -> None:
    for obj in manifests(wire(topology)):
        tags = obj["metadata"]["labels"]
        assert tags["app.kubernetes.io/instance"] == tags["app.kubernetes.io/part-of"] == topology.name
        assert tags["app.kubernetes.io/managed-by"] == MANAGED_BY and tags["topo"] == topology.name
        if obj["kind"] == "NetworkService":
            assert (tags["app.kubernetes.io/name"], tags["app.kubernetes.io/component"]) == (
                topology.name,
                "network-service",
            )
        else:
            device = obj["metadata"]["name"].removesuffix("-config")
            assert tags["app.kubernetes.io/name"] == tags["app"] == device
            assert tags["app.kubernetes.io/component"] == "router"


def _matches(selector_text: str, tags: dict[str, str]) -> bool:
    return all(
        tags.get(key) == value for key, value in (item.split("=") for item in selector_text.split(","))
    )


def test_the_selector_finds_every_object_of_the_topology_and_none_of_another(tmp_path: Path) -> None:
    triangle = manifests(wire(load_topology(EXAMPLES / "triangle" / "topology.yml")))
    other = manifests(wire(_random_topology(tmp_path)))
    assert all(_matches(selector("triangle"), obj["metadata"]["labels"]) for obj in triangle)
    assert not any(_matches(selector("triangle"), obj["metadata"]["labels"]) for obj in other)


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_labels_stay_the_same_whatever_the_options_images_or_version(flavour: str) -> None:
    """Selectors keep finding objects made by another version or with other options (apply replaces them)."""
    topology = load_topology(EXAMPLES / "triangle" / "topology.yml")
    base = {o["metadata"]["name"]: o["metadata"]["labels"] for o in manifests(wire(topology))}
    options = dataclasses.replace(FLAVOURS[flavour], image_tag="9.9", frr_image="frr:other")
    assert {
        o["metadata"]["name"]: o["metadata"]["labels"] for o in manifests(wire(topology), options)
    } == base


def test_apply_and_delete_recognise_every_object_as_this_topologys_by_its_label(tmp_path: Path) -> None:
    """cluster.py tells ours from others' by `topo` (it refuses or leaves alone the others')."""
    objects = manifests(wire(_random_topology(tmp_path)))
    assert _topology_of(objects) == "random"
    for obj in objects:
        found = Existing(dict(obj["metadata"]["labels"]), {}, "1")
        assert _ours(found, obj, "random") and not _ours(found, obj, "triangle")


def test_native_sidecars_start_the_endpoint_then_the_client_before_the_router() -> None:
    pod = _triangle_pod()
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["nse-sidecar", "nsc-sidecar"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["router"]
    for sidecar in pod["spec"]["initContainers"]:
        assert sidecar["restartPolicy"] == "Always"  # a sidecar, not a run-to-completion init container
        # the kubelet starts what follows only once this probe passed: the nse registered, the nsc's links
        # verified; then readiness follows the file (a link that goes down makes the pod not ready)
        for probe in ("startupProbe", "readinessProbe"):
            assert sidecar[probe]["exec"]["command"] == ["test", "-f", READY_FILE]
        assert sidecar["startupProbe"]["periodSeconds"] * sidecar["startupProbe"]["failureThreshold"] >= 300
        assert sidecar["readinessProbe"]["failureThreshold"] == 1
    assert "restartPolicy" not in pod["spec"]["containers"][0]


def test_a_device_that_owns_no_link_has_only_its_endpoint_sidecar(tmp_path: Path) -> None:
    pod = _pods(manifests(wire(_custom_topology(tmp_path))))["host-1"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["nse-sidecar"]


def test_classic_sidecars_run_beside_the_router_for_clusters_before_1_29() -> None:
    native, classic = _triangle_pod(), _triangle_pod(sidecars="classic")
    assert "initContainers" not in classic["spec"]
    assert [c["name"] for c in classic["spec"]["containers"]] == ["router", "nse-sidecar", "nsc-sidecar"]
    assert not any("restartPolicy" in c for c in classic["spec"]["containers"])
    stripped = [
        {k: v for k, v in c.items() if k != "restartPolicy"} for c in native["spec"]["initContainers"]
    ]
    assert classic["spec"]["containers"][1:] == stripped  # the same sidecars otherwise


def test_the_probes_test_the_ready_file_the_sidecar_images_set() -> None:
    dockerfile = (ROOT / "images" / "Dockerfile").read_text()
    stages = {
        part.split("\n", 1)[0].split(" AS ")[-1].strip(): part for part in dockerfile.split("\nFROM ")[1:]
    }
    for image in ("nsc-sidecar", "nse-sidecar", "nsm-agent"):
        assert f"ENV NSM_READY_FILE={READY_FILE}" in stages[image], image


def test_the_grace_period_covers_router_then_client_then_endpoint_closing_in_turn() -> None:
    # each sidecar exits at the latest request timeout (15 s) + 5 s after SIGTERM; native ones stop in turn
    assert _triangle_pod()["spec"]["terminationGracePeriodSeconds"] == GRACE_SECONDS >= 2 * 20 + 5


def test_sidecars_have_net_admin_only_resources_and_nsm_v1s_mounts() -> None:
    pod = _triangle_pod()
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["nsm-socket"]["hostPath"] == {
        "path": "/var/lib/networkservicemesh",
        "type": "DirectoryOrCreate",
    }
    assert volumes["spire-agent-socket"]["csi"] == {"driver": "csi.spiffe.io", "readOnly": True}
    for program in ("nse-sidecar", "nsc-sidecar"):
        container = _container(pod, program)
        assert container is not None
        assert container["image"].endswith(f"/{program}:0.1.0") or container["image"].startswith(
            f"{program}:"
        )
        assert container["securityContext"] == {
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
            "allowPrivilegeEscalation": False,
        }
        assert set(container["resources"]) == {"requests", "limits"}
        assert {(m["name"], m["mountPath"]) for m in container["volumeMounts"]} == {
            ("nsm-socket", "/var/lib/networkservicemesh"),
            ("spire-agent-socket", "/run/spire/sockets"),
        }


FRR_CAPABILITIES = {
    "NET_ADMIN",
    "NET_RAW",
    "SYS_ADMIN",
    "NET_BIND_SERVICE",
    "SETUID",
    "SETGID",
    "CHOWN",
    "FOWNER",
    "DAC_OVERRIDE",
    "KILL",
}
"""FRR's daemons refuse to start without SYS_ADMIN, NET_ADMIN, NET_RAW, NET_BIND_SERVICE (their privs_init),
the frr user needs SETUID/SETGID, its run directory and sockets CHOWN/FOWNER/DAC_OVERRIDE, stopping it
KILL; each was tried away (docs/topologies.md)."""


def test_no_container_is_privileged_and_all_but_a_custom_image_drop_every_capability_they_do_not_need(
    tmp_path: Path,
) -> None:
    pods = _pods(manifests(wire(_custom_topology(tmp_path))))
    for name, pod in pods.items():
        for container in _all_containers(pod):
            context = container["securityContext"]
            assert not context.get("privileged", False), (name, container["name"])
            capabilities = context["capabilities"]
            if container["name"] == "router" and name in ("ceos-1", "srl-1"):  # custom images
                assert capabilities == {"add": ["NET_ADMIN"]}
                continue
            assert capabilities["drop"] == ["ALL"]
            if container["name"].endswith("-sidecar"):
                assert capabilities["add"] == ["NET_ADMIN"]
            elif name == "qrtr-1":  # FRR
                assert set(capabilities["add"]) == FRR_CAPABILITIES
                assert len(capabilities["add"]) == len(FRR_CAPABILITIES)
                assert "allowPrivilegeEscalation" not in context  # Kubernetes: SYS_ADMIN implies it
            else:  # host-1, alpine idling
                assert set(capabilities["add"]) == {"NET_ADMIN", "NET_RAW"}
                assert context["allowPrivilegeEscalation"] is False


_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 0.001, "": 1}


def _quantity(text: str) -> float:
    number = text.rstrip("KMGim")
    return float(number) * _UNITS[text[len(number) :]]


def test_every_container_requests_what_it_needs_and_all_but_a_custom_image_are_limited(
    tmp_path: Path,
) -> None:
    pods = _pods(manifests(wire(_custom_topology(tmp_path))))
    for name, pod in pods.items():
        for container in _all_containers(pod):
            resources = container["resources"]
            requests = {k: _quantity(v) for k, v in resources["requests"].items()}
            assert set(requests) == {"cpu", "memory"} and all(v > 0 for v in requests.values())
            if container["name"] == "router" and name in ("ceos-1", "srl-1"):
                assert "limits" not in resources  # an image we know nothing about
                continue
            limits = {k: _quantity(v) for k, v in resources["limits"].items()}
            assert set(limits) == {"cpu", "memory"}
            assert all(requests[k] < limits[k] for k in limits), (name, container["name"])
    sidecar = _container(pods["qrtr-1"], "nsc-sidecar") or {}
    # docs/performance.md, "Pod resources": ~71 MiB resident when steady, 98 MiB with 60 links to check
    assert _quantity(sidecar["resources"]["requests"]["memory"]) >= 71 * 2**20
    assert _quantity(sidecar["resources"]["limits"]["memory"]) >= 2 * 98 * 2**20 * 0.95


def test_the_nsm_local_flavour_mounts_its_workload_api_from_the_node_and_changes_nothing_else(
    topology: Topology,
) -> None:
    real = manifests(wire(topology))
    local = manifests(wire(topology), KubeOptions(control_plane="nsm-local"))
    assert len(real) == len(local)
    for before, after in zip(real, local, strict=True):
        if before["kind"] != "Pod":
            assert before == after
            continue
        volumes = {v["name"]: v for v in after["spec"]["volumes"]}
        assert volumes["spire-agent-socket"] == {
            "name": "spire-agent-socket",
            "hostPath": {"path": SPIRE_SOCKET_DIR, "type": "Directory"},
        }
        assert volumes["nsm-socket"]["hostPath"]["path"] == NSM_SOCKET_DIR
        same = copy.deepcopy(after)
        same["spec"]["volumes"] = before["spec"]["volumes"]
        same["metadata"]["annotations"] = before["metadata"]["annotations"]
        assert same == before
        assert after["metadata"]["annotations"] != before["metadata"]["annotations"]  # apply recreates it


def test_the_nsm_local_flavour_mounts_the_directories_nsm_locals_daemonset_serves_in() -> None:
    local = pytest.importorskip("nsm_local.kube.manifests")
    pod = _triangle_pod(control_plane="nsm-local")
    paths = {v["name"]: v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v}
    assert f"{paths['nsm-socket']}/nsm.io.sock" == local.NSM_SOCKET
    assert f"{paths['spire-agent-socket']}/agent.sock" == local.SPIRE_SOCKET


def test_routers_run_frr_with_their_configuration_and_exactly_the_daemons_it_needs() -> None:
    topology = load_topology(EXAMPLES / "triangle" / "topology.yml")
    objects = manifests(wire(topology), KubeOptions(frr_image="frr:test"))
    config = next(o for o in objects if o["metadata"]["name"] == "frr-b-config")
    assert config["data"]["frr.conf"] == router_config(topology, "frr-b")
    lines = config["data"]["daemons"].splitlines()
    enabled = [line.split("=")[0] for line in lines if line.endswith("=yes") and line != "vtysh_enable=yes"]
    assert ["zebra", *enabled] == frr_daemons(config["data"]["frr.conf"]) == ["zebra", "ospfd"]
    router = _container(_pods(objects)["frr-b"], "router")
    assert router is not None and router["image"] == "frr:test"
    assert {(m["mountPath"], m["subPath"]) for m in router["volumeMounts"]} == {
        ("/etc/frr/frr.conf", "frr.conf"),
        ("/etc/frr/daemons", "daemons"),
        ("/etc/frr/vtysh.conf", "vtysh.conf"),
    }


def test_daemons_file_turns_on_bgp_and_isis_when_the_configuration_has_them() -> None:
    text = daemons_file("router bgp 65000\n!\nrouter isis core\n!\nip route 10.0.0.0/8 blackhole\n")
    assert {"bgpd=yes", "isisd=yes", "ospfd=no"} <= set(text.splitlines())


def test_custom_image_devices_get_their_image_and_startup_config_other_devices_a_host(tmp_path: Path) -> None:
    topology = _custom_topology(tmp_path)
    objects = manifests(wire(topology))
    pods = _pods(objects)
    images = {name: (_container(pod, "router") or {})["image"] for name, pod in pods.items()}
    assert images == {
        "qrtr-1": KubeOptions().frr_image,
        "ceos-1": "ceos:4.32.0F",
        "host-1": KubeOptions().host_image,
        "srl-1": "ghcr.io/nokia/srlinux:24.10",
    }
    ceos = next(o for o in objects if o["metadata"]["name"] == "ceos-1-config")
    assert ceos["data"] == {"startup-config": "hostname ceos-1\n"}
    mounts = (_container(pods["ceos-1"], "router") or {})["volumeMounts"]
    assert mounts == [
        {
            "name": "config",
            "mountPath": "/mnt/flash/startup-config",
            "subPath": "startup-config",
            "readOnly": True,
        }
    ]
    assert "volumeMounts" not in (_container(pods["srl-1"], "router") or {})  # no file: no ConfigMap
    assert not any(o["metadata"]["name"] == "srl-1-config" for o in objects)
    assert _container(pods["host-1"], "nsc-sidecar") is None  # host-1 owns no link


def test_options_choose_images_namespace_pull_policy_and_a_spire_hostpath() -> None:
    options = KubeOptions(
        namespace="x",
        image_prefix="reg.example/nsm/",
        image_tag="9.9",
        pull_policy="Never",
        spire_volume="hostpath",
    )
    pod = _pods(manifests(wire(load_topology(EXAMPLES / "triangle" / "topology.yml")), options))["frr-c"]
    assert [c["image"] for c in pod["spec"]["initContainers"]] == [
        "reg.example/nsm/nse-sidecar:9.9",
        "reg.example/nsm/nsc-sidecar:9.9",
    ]
    assert {c["imagePullPolicy"] for c in _all_containers(pod)} == {"Never"}
    spire = next(v for v in pod["spec"]["volumes"] if v["name"] == "spire-agent-socket")
    assert spire == {
        "name": "spire-agent-socket",
        "hostPath": {"path": "/run/spire/sockets", "type": "Directory"},
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_the_spec_hash_follows_the_configuration_a_pod_mounts(tmp_path: Path) -> None:
    path = tmp_path / "t.yml"
    path.write_text('links:\n  - endpoints: ["r1:eth1", "r2:eth1"]\n')
    (tmp_path / "r1").write_text("hostname r1\nrouter ospf\n")
    before = _pods(manifests(wire(load_topology(path))))["r1"]["metadata"]["annotations"][HASH_ANNOTATION]
    same = _pods(manifests(wire(load_topology(path))))["r1"]["metadata"]["annotations"][HASH_ANNOTATION]
    (tmp_path / "r1").write_text("hostname r1\nrouter bgp 1\n")
    after = _pods(manifests(wire(load_topology(path))))["r1"]["metadata"]["annotations"][HASH_ANNOTATION]
    assert before == same != after
