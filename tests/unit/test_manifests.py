"""NetworkService manifests for `nsm-local apply -f` (seed v1alpha1, k8s-topo output, NSM v1 CRD)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from nsm_local.manifests import ManifestError, load_network_services, network_service_from_document
from nsm_sdk._proto.registry.registry_pb2 import Destination, Match, NetworkService

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

K8S_TOPO = """\
apiVersion: networkservicemesh.io/v1alpha1
kind: NetworkService
metadata:
  name: lab
  namespace: default
spec:
  payload: IP
  matches:
  - match: null
    sourceSelector: {link: net-0}
    route:
    - destination: null
      destinationSelector: {device: qrtr-2}
  - match: null
    sourceSelector: {link: net-1}
    route:
    - destination: null
      destinationSelector: {device: qrtr-3}
"""

V1_SNAKE = """\
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata:
  name: icmp
spec:
  payload: ETHERNET
  matches:
  - source_selector: {app: nsc}
    fallthrough: true
    routes:
    - destination_selector: {nodeName: "{{.nodeName}}"}
      weight: 10
  - metadata:
      labels: {p2p: "true"}
    routes:
    - destination_selector: {app: supplier}
"""

V1_CAMEL = """\
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: icmp}
spec:
  payload: ETHERNET
  matches:
  - sourceSelector: {app: nsc}
    fallthrough: true
    routes:
    - destinationSelector: {nodeName: "{{.nodeName}}"}
      weight: 10
  - metadata:
      labels: {p2p: "true"}
    routes:
    - destinationSelector: {app: supplier}
"""


def expected_icmp() -> NetworkService:
    service = NetworkService(name="icmp", payload="ETHERNET")
    service.matches.append(Match(source_selector={"app": "nsc"}, fallthrough=True, routes=[
        Destination(destination_selector={"nodeName": "{{.nodeName}}"}, weight=10)]))
    second = Match(routes=[Destination(destination_selector={"app": "supplier"})])
    second.metadata.labels["p2p"] = "true"
    service.matches.append(second)
    return service


def test_seed_example_p2p_yaml_loads_with_its_match() -> None:
    [service] = load_network_services((EXAMPLES / "p2p.yaml").read_text(), "p2p.yaml")
    assert service.name == "p2p"
    assert service.payload == "IP"
    assert [dict(m.source_selector) for m in service.matches] == [{"link": "net-0"}]
    assert [dict(r.destination_selector) for r in service.matches[0].routes] == [{"device": "device-2"}]
    assert not service.matches[0].fallthrough
    assert not service.matches[0].HasField("metadata")


def test_k8s_topo_shape_with_null_match_and_destination_keys_loads_one_match_per_link() -> None:
    [service] = load_network_services(K8S_TOPO, "lab.yaml")
    assert (service.name, service.payload) == ("lab", "IP")
    loaded = [(dict(m.source_selector), [dict(r.destination_selector) for r in m.routes])
              for m in service.matches]
    assert loaded == [
        ({"link": "net-0"}, [{"device": "qrtr-2"}]),
        ({"link": "net-1"}, [{"device": "qrtr-3"}]),
    ]


def test_nsm_v1_snake_case_spec_loads_every_field() -> None:
    assert load_network_services(V1_SNAKE, "icmp.yaml") == [expected_icmp()]


def test_nsm_v1_camel_case_spec_loads_the_same_service() -> None:
    assert load_network_services(V1_CAMEL, "icmp.yaml") == [expected_icmp()]


def test_every_document_of_a_stream_is_loaded_in_order_and_empty_ones_skipped() -> None:
    services = load_network_services("---\n" + K8S_TOPO + "---\n---\n" + V1_SNAKE, "all.yaml")
    assert [s.name for s in services] == ["lab", "icmp"]


def test_payload_defaults_to_ethernet_and_is_upper_cased() -> None:
    doc = {"apiVersion": "networkservicemesh.io/v1", "kind": "NetworkService", "metadata": {"name": "a"}}
    assert network_service_from_document(doc, "doc").payload == "ETHERNET"
    doc["spec"] = {"payload": "ip"}
    assert network_service_from_document(doc, "doc").payload == "IP"


def test_service_without_matches_has_none() -> None:
    doc = {"apiVersion": "networkservicemesh.io/v1alpha1", "kind": "NetworkService",
           "metadata": {"name": "a"}, "spec": {"matches": None}}
    assert list(network_service_from_document(doc, "doc").matches) == []


def test_label_values_are_turned_into_strings() -> None:
    text = K8S_TOPO.replace("{device: qrtr-2}", "{vlan: 10, up: true, none: null}")
    [service] = load_network_services(text, "lab.yaml")
    assert dict(service.matches[0].routes[0].destination_selector) == {"vlan": "10", "up": "True", "none": ""}


def test_empty_match_metadata_still_marks_the_match_as_having_metadata() -> None:
    """Go's MatchEndpoint treats a present (even empty) metadata differently from an absent one."""
    text = V1_SNAKE.replace('  - metadata:\n      labels: {p2p: "true"}\n', "  - metadata: {}\n")
    assert text != V1_SNAKE
    service = load_network_services(text, "icmp.yaml")[0]
    assert service.matches[1].HasField("metadata")
    assert dict(service.matches[1].metadata.labels) == {}


# --- errors name the document and the field -----------------------------------------------------------------


def doc_text(spec: str, name: str = "lab", api: str = "networkservicemesh.io/v1",
             kind: str = "NetworkService") -> str:
    return f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{spec}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (doc_text("  payload: IP\n", api="networkservicemesh.io/v2"), "f.yaml document 1: apiVersion"),
        (doc_text("  payload: IP\n", kind="Pod"), "f.yaml document 1: kind 'Pod'"),
        ("apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nspec: {}\n",
         "f.yaml document 1: metadata.name is required"),
        (doc_text("  payload: TCP\n"), "f.yaml document 1 (lab): spec.payload 'TCP'"),
        (doc_text("  - 1\n"), "f.yaml document 1 (lab): spec must be a mapping"),
        (doc_text("  matches: {a: b}\n"), "f.yaml document 1 (lab): spec.matches must be a list"),
        (doc_text("  matches: [7]\n"), "f.yaml document 1 (lab): spec.matches[0]: expected a mapping"),
        (doc_text("  matches:\n  - sourceSelector: [a]\n"),
         "f.yaml document 1 (lab): spec.matches[0].sourceSelector: expected a mapping"),
        (doc_text("  matches:\n  - sourceSelector: {a: {b: c}}\n"),
         "f.yaml document 1 (lab): spec.matches[0].sourceSelector.a: label values must be scalars"),
        (doc_text("  matches:\n  - routes: {a: b}\n"),
         "f.yaml document 1 (lab): spec.matches[0].routes: expected a list"),
        (doc_text("  matches:\n  - routes: [x]\n"),
         "f.yaml document 1 (lab): spec.matches[0].routes[0]: expected a mapping"),
        (doc_text("  matches:\n  - routes:\n    - destinationSelector: x\n"),
         "f.yaml document 1 (lab): spec.matches[0].routes[0].destinationSelector: expected a mapping"),
        (doc_text("  matches:\n  - routes:\n    - weight: heavy\n"),
         "f.yaml document 1 (lab): spec.matches[0].routes[0].weight"),
        (doc_text("  matches:\n  - routes:\n    - weight: -1\n"),
         "f.yaml document 1 (lab): spec.matches[0].routes[0].weight"),
        (doc_text('  matches:\n  - fallthrough: "false"\n'),
         "f.yaml document 1 (lab): spec.matches[0].fallthrough"),
        (doc_text("  matches:\n  - metadata: [p2p]\n"), "f.yaml document 1 (lab): spec.matches[0].metadata"),
        (doc_text("  matches:\n  - metadata: {labels: [p2p]}\n"),
         "f.yaml document 1 (lab): spec.matches[0].metadata.labels: expected a mapping"),
        ("- a\n- b\n", "f.yaml document 1: expected a mapping"),
        ("", "f.yaml: no NetworkService documents found"),
        ("a: [\n", "f.yaml: not valid YAML"),
    ],
)
def test_invalid_manifest_error_names_document_and_field(text: str, expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        load_network_services(text, "f.yaml")
    assert str(caught.value).startswith(expected), str(caught.value)


def test_error_in_a_later_document_names_that_document_and_loads_nothing() -> None:
    text = K8S_TOPO + "---\n" + doc_text("  payload: TCP\n", name="second")
    with pytest.raises(ManifestError, match=r"^f\.yaml document 2 \(second\): spec\.payload"):
        load_network_services(text, "f.yaml")


label_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=10)


@settings(deadline=None)
@given(selectors=st.lists(st.dictionaries(label_text, label_text, max_size=3), min_size=1, max_size=4))
def test_any_string_selectors_survive_a_yaml_round_trip(selectors: list[dict[str, str]]) -> None:
    doc = {
        "apiVersion": "networkservicemesh.io/v1alpha1",
        "kind": "NetworkService",
        "metadata": {"name": "lab"},
        "spec": {"matches": [{"match": None, "sourceSelector": s, "route": [{"destinationSelector": s}]}
                             for s in selectors]},
    }
    [service] = load_network_services(yaml.safe_dump(doc), "f.yaml")
    assert [dict(m.source_selector) for m in service.matches] == selectors
    assert [dict(m.routes[0].destination_selector) for m in service.matches] == selectors
