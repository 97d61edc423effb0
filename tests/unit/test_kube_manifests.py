"""`nsm-topo manifest`'s objects: valid for the Kubernetes API (strict schemas) and for NSM's own message,
and wiring exactly what the local lab wires from the same file."""

from __future__ import annotations

import copy
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
from nsm_topo.kube.manifests import (
    HASH_ANNOTATION,
    READY_FILE,
    KubeOptions,
    Manifest,
    daemons_file,
    manifests,
    to_yaml,
)
from nsm_topo.topology import Topology, load_topology
from nsm_topo.wiring import frr_daemons, router_config, wire

K8S_VERSION = "1.34.0"
"""The Kubernetes API the objects are checked against: the release issue 8's cluster runs (v1.34)."""

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

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


def _container(pod: Manifest, name: str) -> Manifest | None:
    return next((c for c in pod["spec"]["containers"] if c["name"] == name), None)


def _plain_env(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _downward_env(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}


# -- the Kubernetes API's own schemas ----------------------------------------------------------------------


def test_every_core_object_validates_against_the_kubernetes_schemas_in_strict_mode(
    topology: Topology,
) -> None:
    objects = manifests(
        wire(topology), KubeOptions(namespace="lab", image_prefix="registry.example.com/nsm/")
    )
    core = [obj for obj in objects if obj["apiVersion"] == "v1"]
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
    broken["spec"]["containers"][1]["readinessProbe"]["exec"]["cmd"] = ["true"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_yaml_stream_holds_exactly_the_objects(tmp_path: Path) -> None:
    import yaml

    objects = manifests(wire(_random_topology(tmp_path)))
    assert list(yaml.safe_load_all(to_yaml(objects))) == objects


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
        for container in pod["spec"]["containers"]
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
        assert pod["metadata"]["labels"] == {"app": name, "topo": "random", "spiffe.io/spiffe-id": "true"}
        assert [c["name"] for c in pod["spec"]["containers"]][:2] == ["router", "nse-sidecar"]
    config_maps = [o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"]
    assert config_maps == [f"{device}-config" for device in topology.devices]


def test_sidecars_have_net_admin_only_readiness_on_their_file_resources_and_nsm_v1s_mounts() -> None:
    pod = _pods(manifests(wire(load_topology(EXAMPLES / "triangle" / "topology.yml"))))["frr-a"]
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
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
        assert "privileged" not in container["securityContext"]
        assert container["readinessProbe"]["exec"]["command"] == ["test", "-f", "/run/nsm/ready"]
        assert set(container["resources"]) == {"requests", "limits"}
        assert {(m["name"], m["mountPath"]) for m in container["volumeMounts"]} == {
            ("nsm-socket", "/var/lib/networkservicemesh"),
            ("spire-agent-socket", "/run/spire/sockets"),
        }
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 25  # time for the sidecars to close their links


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
    assert [c["image"] for c in pod["spec"]["containers"]][1:] == [
        "reg.example/nsm/nse-sidecar:9.9",
        "reg.example/nsm/nsc-sidecar:9.9",
    ]
    assert {c["imagePullPolicy"] for c in pod["spec"]["containers"]} == {"Never"}
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
