"""Kubernetes mode of nsm-local: NetworkService objects decoded as NSM's registry-k8s decodes them (Go's
encoding/json into registry.NetworkService), and served from the registry as cluster-managed services."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from nsm_local.kube.reflector import WatchEvent
from nsm_local.kube.services import ClusterServices, DecodeError, decode_network_service
from nsm_local.manifests import network_service_from_document
from nsm_local.registry import ClusterManaged, Registry, service_view
from nsm_sdk._proto.registry.registry_pb2 import Destination, Match, NetworkService, NetworkServiceResponse
from nsm_sdk.agent.logs import EventLog
from nsm_topo.builder import build, write
from nsm_topo.kube.manifests import KubeOptions, network_service
from nsm_topo.topology import load_topology
from nsm_topo.wiring import wire

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOG = EventLog("test.kube")


def ns_object(
    spec: Any, name: str = "p2p", namespace: str = "labs", created: str = "2026-01-01T00:00:00Z"
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "networkservicemesh.io/v1",
        "kind": "NetworkService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": created,
            "resourceVersion": "1",
        },
    }
    if spec is not ...:
        obj["spec"] = spec
    return obj


# --- decoding, as Go's encoding/json into registry.NetworkService ------------------------------------------


def test_snake_case_spec_decodes_to_the_proto() -> None:
    decoded = decode_network_service(
        ns_object(
            {
                "payload": "ETHERNET",
                "matches": [
                    {
                        "source_selector": {"link": "net-0"},
                        "routes": [{"destination_selector": {"device": "b"}, "weight": 7}],
                        "fallthrough": True,
                        "metadata": {"labels": {"ifname": "eth1"}},
                    },
                    {"routes": [{"destination_selector": {"any": ""}}]},
                ],
            }
        )
    )
    expected = NetworkService(name="p2p", payload="ETHERNET", path_ids=["k8s://labs/p2p"])
    first = Match(fallthrough=True, routes=[Destination(destination_selector={"device": "b"}, weight=7)])
    first.source_selector["link"] = "net-0"
    first.metadata.labels["ifname"] = "eth1"
    expected.matches.append(first)
    expected.matches.append(Match(routes=[Destination(destination_selector={"any": ""})]))
    assert decoded.service == expected
    assert decoded.origin == "k8s://labs/p2p"
    assert decoded.unknown_fields == ()


def test_what_nsm_topo_writes_decodes_like_nsm_local_apply_reads_it(tmp_path: Path) -> None:
    """The objects `nsm-topo manifest` writes work unchanged: the same service as the local lab's."""
    for topology in (
        load_topology(EXAMPLES / "triangle" / "topology.yml"),
        load_topology(write(build(10, 4, seed=7), tmp_path)),
    ):
        obj = network_service(wire(topology), KubeOptions(namespace="labs"))
        obj = json.loads(json.dumps(obj))  # as the API server hands it back
        decoded = decode_network_service(obj)
        local = network_service_from_document(obj, "test")
        assert decoded.unknown_fields == ()
        assert list(decoded.service.path_ids) == [f"k8s://labs/{obj['metadata']['name']}"]
        del decoded.service.path_ids[:]
        assert decoded.service == local
        assert len(decoded.service.matches) == len(topology.links)
        assert all(
            m.source_selector["link"] and m.routes[0].destination_selector["device"]
            for m in decoded.service.matches
        )


def test_keys_match_exactly_or_ignoring_case_but_camel_case_is_ignored() -> None:
    decoded = decode_network_service(
        ns_object(
            {"Payload": "IP", "MATCHES": [{"Source_Selector": {"a": "1"}, "sourceSelector": {"b": "2"}}]}
        )
    )
    assert decoded.service.payload == "IP"
    assert dict(decoded.service.matches[0].source_selector) == {"a": "1"}
    assert decoded.unknown_fields == ("spec.matches[0].sourceSelector",)


def test_the_last_of_two_keys_for_one_field_wins_and_exact_names_are_not_special() -> None:
    assert (
        decode_network_service(ns_object({"payload": "IP", "PAYLOAD": "ETHERNET"})).service.payload
        == "ETHERNET"
    )
    assert decode_network_service(ns_object({"PAYLOAD": "ETHERNET", "payload": "IP"})).service.payload == "IP"


def test_the_name_is_spec_name_else_the_object_name_and_payload_is_verbatim() -> None:
    assert decode_network_service(ns_object({"name": "other"})).service.name == "other"
    assert decode_network_service(ns_object({"name": ""})).service.name == "p2p"
    plain = decode_network_service(ns_object({})).service
    assert (plain.name, plain.payload, list(plain.matches)) == ("p2p", "", [])
    assert decode_network_service(ns_object({"payload": "ip"})).service.payload == "ip"
    assert decode_network_service(ns_object(...)).service.name == "p2p", "no spec at all: an empty one"
    assert decode_network_service(ns_object(None)).service.name == "p2p"


def test_null_leaves_scalars_at_zero_and_makes_messages_absent() -> None:
    decoded = decode_network_service(
        ns_object(
            {
                "payload": None,
                "matches": [
                    {"source_selector": None, "routes": None, "fallthrough": None, "metadata": None},
                    {"metadata": {}},
                    {"metadata": {"labels": None}},
                    {"source_selector": {"a": None}},
                ],
            }
        )
    )
    first, second, third, fourth = decoded.service.matches
    assert decoded.service.payload == ""
    assert not first.HasField("metadata") and not first.fallthrough and not first.routes
    assert second.HasField("metadata") and third.HasField("metadata"), "{} is metadata, null is none"
    assert dict(fourth.source_selector) == {"a": ""}
    views = service_view(decoded.service).matches
    assert views[0].metadata_labels is None and views[1].metadata_labels == {}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"payload": 1}, "spec.payload"),
        ({"matches": {}}, "spec.matches"),
        ({"matches": [None]}, "spec.matches[0]"),
        ({"matches": ["x"]}, "spec.matches[0]"),
        ({"matches": [{"source_selector": {"link": 1}}]}, "spec.matches[0].source_selector.link"),
        ({"matches": [{"source_selector": ["a"]}]}, "spec.matches[0].source_selector"),
        ({"matches": [{"fallthrough": "true"}]}, "spec.matches[0].fallthrough"),
        ({"matches": [{"routes": [None]}]}, "spec.matches[0].routes[0]"),
        ({"matches": [{"routes": [{"weight": -1}]}]}, "spec.matches[0].routes[0].weight"),
        ({"matches": [{"routes": [{"weight": 1.5}]}]}, "spec.matches[0].routes[0].weight"),
        ({"matches": [{"routes": [{"weight": 2**32}]}]}, "spec.matches[0].routes[0].weight"),
        ({"matches": [{"routes": [{"weight": True}]}]}, "spec.matches[0].routes[0].weight"),
        ({"matches": [{"metadata": {"labels": {"a": False}}}]}, "spec.matches[0].metadata.labels.a"),
        ({"path_ids": [1]}, "spec.path_ids[0]"),
        ("spec", "spec"),
    ],
)
def test_what_go_refuses_is_refused_naming_the_field(spec: Any, field: str) -> None:
    with pytest.raises(DecodeError) as refused:
        decode_network_service(ns_object(spec))
    assert str(refused.value).startswith(f"{field}: ")


def test_an_object_without_a_name_is_refused() -> None:
    with pytest.raises(DecodeError, match=r"metadata\.name"):
        decode_network_service({"spec": {}})


def test_spec_path_ids_are_replaced_by_the_origin() -> None:
    decoded = decode_network_service(ns_object({"path_ids": ["spiffe://x/y"]}))
    assert list(decoded.service.path_ids) == ["k8s://labs/p2p"]


# --- ClusterServices: objects -> registry -------------------------------------------------------------


def services(registry: Registry) -> dict[str, NetworkService]:
    return dict(registry.services)


def test_list_then_events_keep_the_registry_in_step(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "services.json")
    handler = ClusterServices(registry, LOG)
    handler.replace([ns_object({"payload": "IP"}, "a"), ns_object({"payload": "ETHERNET"}, "b")])
    assert {n: s.payload for n, s in services(registry).items()} == {"a": "IP", "b": "ETHERNET"}
    handler.apply(WatchEvent("MODIFIED", ns_object({"payload": "ETHERNET"}, "a")))
    handler.apply(WatchEvent("ADDED", ns_object({}, "c")))
    handler.apply(WatchEvent("DELETED", ns_object({}, "b")))
    assert {n: s.payload for n, s in services(registry).items()} == {"a": "ETHERNET", "c": ""}
    handler.replace([ns_object({}, "c")])  # a re-list after a 410: a vanished while we were away
    assert set(services(registry)) == {"c"}
    # cluster services are the API server's to keep: never in the state file
    assert json.loads((tmp_path / "services.json").read_text()) == []


def test_an_invalid_object_contributes_nothing_and_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry()
    handler = ClusterServices(registry, LOG)
    caplog.set_level(logging.WARNING)
    handler.replace([ns_object({"payload": "IP"}, "a")])
    broken = ns_object({"matches": [{"fallthrough": "yes"}]}, "a")
    handler.apply(WatchEvent("MODIFIED", broken))
    handler.apply(WatchEvent("MODIFIED", broken))
    assert "a" not in registry.services
    assert [r.getMessage() for r in caplog.records].count("service.invalid") == 1
    handler.apply(WatchEvent("MODIFIED", ns_object({"payload": "IP"}, "a")))
    assert registry.services["a"].payload == "IP"


def test_unknown_fields_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    ClusterServices(Registry(), LOG).replace([ns_object({"matches": [{"sourceSelector": {"a": "1"}}]})])
    record = next(r for r in caplog.records if r.getMessage() == "service.unknown_fields")
    assert "spec.matches[0].sourceSelector" in str(record.fields)  # type: ignore[attr-defined]


def test_two_objects_for_one_service_the_older_wins(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    registry = Registry()
    handler = ClusterServices(registry, LOG)
    old = ns_object({"payload": "IP"}, "p2p", "team-b", created="2026-01-01T00:00:00Z")
    new = ns_object({"payload": "ETHERNET"}, "p2p", "team-a", created="2026-02-01T00:00:00Z")
    handler.replace([new, old])
    assert list(registry.services["p2p"].path_ids) == ["k8s://team-b/p2p"]
    handler.apply(WatchEvent("MODIFIED", new))
    assert [r.getMessage() for r in caplog.records].count("service.conflict") == 1, "said once"
    handler.apply(WatchEvent("DELETED", old))
    assert list(registry.services["p2p"].path_ids) == ["k8s://team-a/p2p"]


def test_bookmarks_and_unknown_event_types_change_nothing() -> None:
    registry = Registry()
    handler = ClusterServices(registry, LOG)
    handler.replace([ns_object({}, "a")])
    handler.apply(WatchEvent("BOOKMARK", {"metadata": {"resourceVersion": "9"}}))
    assert set(registry.services) == {"a"}


# --- the registry's cluster-managed services ----------------------------------------------------------------


def test_cluster_services_win_over_local_ones_and_cannot_be_changed_locally(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "services.json")
    registry.register_service(NetworkService(name="mine", payload="IP"))
    registry.register_service(NetworkService(name="shared", payload="IP"))
    cluster = NetworkService(name="shared", payload="ETHERNET", path_ids=["k8s://labs/shared"])
    assert registry.replace_cluster_services({"shared": cluster}) == ["shared"]
    assert registry.services["shared"] == cluster
    with pytest.raises(ClusterManaged, match="kubectl -n labs edit networkservice shared"):
        registry.register_service(NetworkService(name="shared"))
    with pytest.raises(ClusterManaged):
        registry.unregister_service("shared")
    assert registry.replace_cluster_services({"shared": cluster}) == [], "unchanged: nothing to say"
    saved = json.loads((tmp_path / "services.json").read_text())
    assert [s["name"] for s in saved] == ["mine"], "only local services are persisted"
    assert registry.replace_cluster_services({}) == ["shared"]
    assert "shared" not in registry.services
    registry.register_service(NetworkService(name="shared"))  # a local name again


def test_cluster_changes_reach_registry_watches() -> None:
    async def main() -> list[tuple[str, bool]]:
        registry = Registry()
        seen: list[tuple[str, bool]] = []

        async def watch() -> None:
            async for response in registry.watch_services(NetworkService(), watch=True):
                assert isinstance(response, NetworkServiceResponse)
                seen.append((response.network_service.payload, response.deleted))

        task = asyncio.create_task(watch())
        await asyncio.sleep(0)
        a = NetworkService(name="a", payload="IP", path_ids=["k8s://x/a"])
        registry.replace_cluster_services({"a": a})
        registry.replace_cluster_services({"a": a})  # no change, no event
        changed = copy.deepcopy(a)
        changed.payload = "ETHERNET"
        registry.replace_cluster_services({"a": changed})
        registry.replace_cluster_services({})
        await asyncio.sleep(0.01)
        registry.close()
        await task
        return seen

    assert asyncio.run(main()) == [("IP", False), ("ETHERNET", False), ("ETHERNET", True)]
