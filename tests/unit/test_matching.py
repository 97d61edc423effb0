"""Endpoint selection (Go MatchEndpoint, protocol doc §10.2), selector templates and round robin."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsm_sdk.protocol.matching import (
    EndpointView,
    Match,
    RoundRobin,
    Selection,
    ServiceView,
    is_subset,
    match_endpoints,
    select_endpoints,
)
from nsm_sdk.protocol.template import NO_VALUE, render

NOW = 1000.0

A = EndpointView("nse-a", {"app": "responder", "nodeName": "node-1"})
B = EndpointView("nse-b", {"app": "responder", "nodeName": "node-2"})
SUPPLIER = EndpointView("supplier", {"app": "icmp-responder-supplier"})


def names(endpoints: list[EndpointView]) -> list[str]:
    return [endpoint.name for endpoint in endpoints]


# --- templates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{.nodeName}}", "node-1"),
        ("{{ .nodeName }}", "node-1"),
        ("pre-{{.nodeName}}-post", "pre-node-1-post"),
        ("{{.nodeName}}/{{.podName}}", "node-1/pod-x"),
        ("a  {{- .nodeName -}}  b", "anode-1b"),
        ("{{.missing}}", NO_VALUE),
        ("plain", "plain"),
        ("}} alone", "}} alone"),
    ],
)
def test_template_renders_key_lookups_like_go(text: str, expected: str) -> None:
    assert render(text, {"nodeName": "node-1", "podName": "pod-x"}) == expected


@pytest.mark.parametrize(
    "text",
    [
        "{{.nodeName",
        "{{.node-name}}",
        "{{.}}",
        '{{ printf "%s" .nodeName }}',
        "{{.a.b}}",
        "x {{.nodeName}} {{if}}",
    ],
)
def test_template_with_unsupported_or_bad_syntax_stays_literal(text: str) -> None:
    assert render(text, {"nodeName": "node-1", "a": "b"}) == text


@given(st.text().filter(lambda t: "{{" not in t))
def test_text_without_actions_renders_unchanged(text: str) -> None:
    assert render(text, {"k": "v"}) == text


# --- is_subset -----------------------------------------------------------------------------------


def test_empty_selector_is_a_subset_of_anything() -> None:
    assert is_subset({}, {}, {})
    assert is_subset({"a": "1"}, {}, {})


def test_selector_longer_than_labels_never_matches() -> None:
    assert not is_subset({"a": "1"}, {"a": "1", "b": ""}, {})


def test_empty_selector_value_matches_a_missing_label_like_go() -> None:
    assert is_subset({"a": "1", "x": "2"}, {"b": ""}, {})


def test_selector_value_rendered_with_client_labels() -> None:
    assert is_subset({"nodeName": "node-1"}, {"nodeName": "{{.nodeName}}"}, {"nodeName": "node-1"})
    assert not is_subset({"nodeName": "node-2"}, {"nodeName": "{{.nodeName}}"}, {"nodeName": "node-1"})


# --- MatchEndpoint -------------------------------------------------------------------------------


def test_service_without_matches_offers_all_unexpired_endpoints() -> None:
    expired = EndpointView("old", {}, expires=NOW)
    fresh = EndpointView("fresh", {}, expires=NOW + 1)
    result = select_endpoints(ServiceView("svc"), {}, [A, expired, fresh, B], NOW)
    assert names(result) == ["nse-a", "fresh", "nse-b"]


def test_first_match_whose_source_selector_fits_the_client_decides() -> None:
    service = ServiceView(
        "svc",
        [
            Match(source_selector={"link": "net-1"}, routes=[{"nodeName": "node-1"}]),
            Match(source_selector={"link": "net-0"}, routes=[{"nodeName": "node-2"}]),
        ],
    )
    assert names(select_endpoints(service, {"link": "net-0", "other": "x"}, [A, B], NOW)) == ["nse-b"]


def test_endpoint_matching_several_routes_appears_once_per_route() -> None:
    service = ServiceView("svc", [Match(routes=[{"app": "responder"}, {"nodeName": "node-1"}])])
    assert names(match_endpoints(service, {}, [A, B])) == ["nse-a", "nse-b", "nse-a"]


def test_match_without_candidates_returns_none_unless_fallthrough() -> None:
    service = ServiceView("svc", [Match(routes=[{"app": "nobody"}]), Match(routes=[{"app": "responder"}])])
    assert match_endpoints(service, {}, [A, B]) == []


def test_fallthrough_tries_the_next_match() -> None:
    service = ServiceView(
        "svc",
        [
            Match(routes=[{"app": "nobody"}], fallthrough=True),
            Match(routes=[{"app": "responder"}]),
        ],
    )
    assert names(match_endpoints(service, {}, [A, B])) == ["nse-a", "nse-b"]


def test_match_with_metadata_and_no_routes_offers_all_endpoints() -> None:
    service = ServiceView("svc", [Match(metadata_labels={})])
    assert names(match_endpoints(service, {}, [A, B])) == ["nse-a", "nse-b"]


def test_match_without_metadata_and_without_routes_offers_nothing() -> None:
    service = ServiceView("svc", [Match()])
    assert match_endpoints(service, {}, [A, B]) == []


def test_no_applicable_match_offers_nothing() -> None:
    service = ServiceView("svc", [Match(source_selector={"link": "net-9"}, routes=[{}])])
    assert select_endpoints(service, {"link": "net-0"}, [A, B], NOW) == []


def test_scale_from_zero_example_prefers_nse_on_clients_node_then_supplier() -> None:
    service = ServiceView(
        "svc",
        [
            Match(routes=[{"app": "responder", "nodeName": "{{.nodeName}}"}], fallthrough=True),
            Match(routes=[{"app": "icmp-responder-supplier"}]),
        ],
    )
    endpoints = [A, B, SUPPLIER]
    assert names(select_endpoints(service, {"nodeName": "node-2"}, endpoints, NOW)) == ["nse-b"]
    assert names(select_endpoints(service, {"nodeName": "node-3"}, endpoints, NOW)) == ["supplier"]


def test_source_selector_values_are_templates_too() -> None:
    service = ServiceView("svc", [Match(source_selector={"peer": "{{.self}}"}, routes=[{}])])
    assert names(match_endpoints(service, {"self": "x", "peer": "x"}, [A])) == ["nse-a"]
    assert match_endpoints(service, {"self": "x", "peer": "y"}, [A]) == []


def test_expired_endpoints_are_dropped_before_matching() -> None:
    service = ServiceView("svc", [Match(metadata_labels={"p2p": "true"})])
    gone = EndpointView("gone", {}, expires=NOW - 1)
    assert names(select_endpoints(service, {}, [gone, A], NOW)) == ["nse-a"]


@given(
    client=st.dictionaries(st.sampled_from("abc"), st.sampled_from("xy"), max_size=3),
    endpoint_labels=st.lists(
        st.dictionaries(st.sampled_from("abc"), st.sampled_from("xy"), max_size=3), max_size=4
    ),
    selector=st.dictionaries(st.sampled_from("abc"), st.sampled_from("xy"), max_size=2),
)
def test_candidates_always_carry_the_destination_selector(
    client: dict[str, str], endpoint_labels: list[dict[str, str]], selector: dict[str, str]
) -> None:
    endpoints = [EndpointView(f"e{i}", labels) for i, labels in enumerate(endpoint_labels)]
    result = match_endpoints(ServiceView("svc", [Match(routes=[selector])]), client, endpoints)
    assert all(all(e.labels_for_service.get(k) == v for k, v in selector.items()) for e in result)
    assert len(result) == sum(
        1 for e in endpoints if all(e.labels_for_service.get(k) == v for k, v in selector.items())
    )


# --- round robin ---------------------------------------------------------------------------------


def test_round_robin_rotates_per_service() -> None:
    rr = RoundRobin()
    candidates = ["a", "b", "c"]
    assert rr.order("svc", candidates) == ["a", "b", "c"]
    assert rr.order("svc", candidates) == ["b", "c", "a"]
    assert rr.order("other", candidates) == ["a", "b", "c"]
    assert rr.order("svc", candidates) == ["c", "a", "b"]
    assert rr.order("svc", candidates) == ["a", "b", "c"]


def test_round_robin_skip_accounts_for_a_failed_first_candidate() -> None:
    rr = RoundRobin()
    assert rr.order("svc", ["a", "b", "c"])[0] == "a"
    rr.skip("svc")
    assert rr.order("svc", ["a", "b", "c"])[0] == "c"


def test_round_robin_of_nothing_is_empty_and_keeps_the_counter() -> None:
    rr = RoundRobin()
    assert rr.order("svc", []) == []
    assert rr.order("svc", ["a", "b"]) == ["a", "b"]


# --- the indexed selection ----------------------------------------------------------------------

_KEYS = st.sampled_from(["link", "device", "app"])
_VALUES = st.sampled_from(["", "a", "b", "c", "{{.link}}", "{{.app}}-x"])
_LABELS = st.dictionaries(_KEYS, _VALUES, max_size=3)
_MATCHES = st.builds(
    Match,
    source_selector=_LABELS,
    routes=st.lists(_LABELS, max_size=3).map(tuple),
    fallthrough=st.booleans(),
    metadata_labels=st.one_of(st.none(), _LABELS),
)
_ENDPOINTS = st.lists(
    st.builds(
        EndpointView,
        name=st.sampled_from(["e1", "e2", "e3", "e4"]),
        labels_for_service=_LABELS,
        expires=st.one_of(st.none(), st.sampled_from([NOW - 1, NOW + 1])),
    ),
    max_size=6,
)


@given(st.lists(_MATCHES, max_size=5), _ENDPOINTS, _LABELS, st.lists(_ENDPOINTS, max_size=2))
def test_the_indexed_selection_answers_as_select_endpoints_does(
    matches: list[Match],
    endpoints: list[EndpointView],
    client: dict[str, str],
    later: list[list[EndpointView]],
) -> None:
    service = ServiceView("svc", tuple(matches))
    selection = Selection(service, endpoints)
    assert selection.select(client, NOW) == select_endpoints(service, client, endpoints, NOW)
    for other in later:  # the same matches with other endpoints (a registration came or went)
        selection = selection.with_endpoints(other)
        assert selection.select(client, NOW) == select_endpoints(service, client, other, NOW)


def test_a_lab_service_selects_the_one_endpoint_of_the_links_device() -> None:
    matches = tuple(Match({"link": f"net-{i}"}, ({"device": f"d{i + 1}"},)) for i in range(100))
    endpoints = [EndpointView(f"nse-{i}", {"device": f"d{i}"}) for i in range(101)]
    selection = Selection(ServiceView("lab", matches), endpoints)
    assert names(selection.select({"link": "net-41", "peerif": "eth1"}, NOW)) == ["nse-42"]
    assert selection.select({"link": "net-999"}, NOW) == []
