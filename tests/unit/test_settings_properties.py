"""Hostile environments: loading either succeeds with settings that hold together, or raises the one
ConfigError whose single line names the variable, shows its value and says what is wrong. Never anything
else (a ValueError from int(), a UnicodeEncodeError, ...)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from settings_strategies import NSC_VARIABLES, NSE_VARIABLES, hostile_env, hostile_value

from nsc_sidecar.settings import NscSettings
from nse_sidecar.settings import NseSettings
from nsm_sdk.protocol.durations import parse_go_duration
from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.protocol.ifname import interface_name_problem
from nsm_sdk.protocol.ipam import NsmP2PAllocator, SeedP2PAllocator
from nsm_sdk.protocol.labels import (
    MAX_LABEL_BYTES,
    MAX_LABELS,
    label_map_problem,
    parse_colon_labels,
    parse_equals_labels,
)
from nsm_sdk.protocol.nsurl import (
    SocketUrl,
    format_nsm_services,
    network_service_problem,
    parse_nsm_services,
    parse_seed_services,
    parse_socket_url,
)

NSC_BASE = {"NSM_NETWORK_SERVICES": "kernel://p2p/eth1?link=net-0"}
NSE_BASE = {"NSM_SERVICE_NAMES": "p2p"}
EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A ConfigError may name a variable other than the one we spoiled when the two are a pair (set at most one).
PARTNERS = {
    "NS_NETWORKSERVICEMESH_IO": {"NSM_NETWORK_SERVICES"},
    "NSM_SERVICE_NAMES": {"ENDPOINT_NETWORK_SERVICE", "ADVERTISE_NSE_NAME"},
    "ADVERTISE_NSE_NAME": {"ENDPOINT_NETWORK_SERVICE"},
    "NSM_LABELS": {
        "ENDPOINT_LABELS",
        "ADVERTISE_NSE_LABELS",
        "NSM_NETWORK_SERVICES",
        "NS_NETWORKSERVICEMESH_IO",
    },
    "ADVERTISE_NSE_LABELS": {"ENDPOINT_LABELS"},
    "NSM_CIDR_PREFIX": {"IP_ADDRESS"},
    "ENDPOINT_LINKS": {"IP_ADDRESS"},
    # clientinfo labels are merged into the link/endpoint labels, whose variable then names the map
    "POD_NAME": {"NSM_NETWORK_SERVICES", "NSM_LABELS"},
    "NODE_NAME": {"NSM_NETWORK_SERVICES", "NSM_LABELS"},
    "CLUSTER_NAME": {"NSM_NETWORK_SERVICES", "NSM_LABELS"},
}


def assert_one_clear_line(error: ConfigError, spoiled: Mapping[str, str], base: Mapping[str, str]) -> None:
    """One line naming a variable we set (or its pair), showing its value and saying what is wrong."""
    allowed = set(spoiled) | {p for name in spoiled for p in PARTNERS.get(name, ())} | set(base)
    assert error.variable in allowed, (error.variable, spoiled)
    env = {**base, **spoiled}
    assert error.value is None or error.value == env.get(error.variable), error
    text = str(error)
    shown = "<unset>" if error.value is None else repr(error.value)
    assert text == f"{error.variable}={shown}: {error.problem}"
    assert "\n" not in text and "\r" not in text
    assert error.problem.strip()


def assert_sane_socket(url: SocketUrl) -> None:
    if url.scheme == "unix":
        assert url.path.startswith("/") and not url.path.endswith("/")
        assert len(os.fsencode(url.path)) <= 107
    else:
        assert 0 < url.port < 65536 and url.host


def assert_sane_duration(seconds: float) -> None:
    assert math.isfinite(seconds) and seconds > 0


def assert_sane_nsc(loaded: NscSettings) -> None:
    assert loaded.links
    names = [link.interface_name for link in loaded.links]
    assert len(set(names)) == len(names)
    for link in loaded.links:
        assert interface_name_problem(link.interface_name) is None
        assert network_service_problem(link.network_service, allow_domain=True) is None
        assert label_map_problem(link.labels) is None
    assert_sane_socket(loaded.connect_to)
    assert_sane_socket(loaded.security.spiffe_endpoint)
    for seconds in (loaded.request_timeout, loaded.dial_timeout, loaded.max_token_lifetime):
        assert_sane_duration(seconds)
    assert loaded.readiness_file is None or loaded.readiness_file.startswith("/")


def assert_sane_nse(loaded: NseSettings) -> None:
    assert loaded.services
    for service in loaded.services:
        assert network_service_problem(service) is None
    assert label_map_problem(loaded.labels) is None
    addressing = loaded.addressing
    if addressing.mode == "seed":  # the agent builds its allocator from these; it must accept them
        SeedP2PAllocator(addressing.pools[0][0], reserved=addressing.reserved)
    else:
        NsmP2PAllocator(addressing.pools)
    assert_sane_socket(loaded.connect_to)
    if loaded.listen_on is not None:
        assert loaded.listen_on.scheme == "unix"
        assert_sane_socket(loaded.listen_on)
    for seconds in (loaded.request_timeout, loaded.max_token_lifetime):
        assert_sane_duration(seconds)


@EXAMPLES
@given(hostile_env(NSC_VARIABLES))
def test_nsc_settings_load_sanely_or_fail_with_one_line_naming_the_variable(spoiled: dict[str, str]) -> None:
    try:
        loaded = NscSettings.from_env({**NSC_BASE, **spoiled})
    except ConfigError as error:
        assert_one_clear_line(error, spoiled, NSC_BASE)
        return
    assert_sane_nsc(loaded)
    assert NscSettings.from_env({**NSC_BASE, **spoiled}) == loaded


@EXAMPLES
@given(hostile_env(NSE_VARIABLES))
def test_nse_settings_load_sanely_or_fail_with_one_line_naming_the_variable(spoiled: dict[str, str]) -> None:
    try:
        loaded = NseSettings.from_env({**NSE_BASE, **spoiled})
    except ConfigError as error:
        assert_one_clear_line(error, spoiled, NSE_BASE)
        return
    assert_sane_nse(loaded)


@EXAMPLES
@given(
    st.sampled_from(["NSM_NETWORK_SERVICES", "NS_NETWORKSERVICEMESH_IO"]).flatmap(
        lambda name: st.tuples(st.just(name), hostile_value(name))
    )
)
def test_parsed_link_lists_survive_a_round_trip_through_their_text(case: tuple[str, str]) -> None:
    variable, text = case
    parse = parse_nsm_services if variable == "NSM_NETWORK_SERVICES" else parse_seed_services
    try:
        links = parse(variable, text)
    except ConfigError as error:
        assert_one_clear_line(error, {variable: text}, {})
        return
    assert parse_nsm_services(variable, format_nsm_services(links)) == links


@EXAMPLES
@given(hostile_value("NSM_REQUEST_TIMEOUT"))
def test_durations_parse_to_a_finite_number_or_a_config_error(text: str) -> None:
    try:
        seconds = parse_go_duration("D", text)
    except ConfigError as error:
        assert_one_clear_line(error, {"D": text}, {})
        return
    assert math.isfinite(seconds) and abs(seconds) < 2**63 / 1e9 + 1


@EXAMPLES
@given(hostile_value("NSM_CONNECT_TO"), st.booleans())
def test_socket_urls_parse_to_a_usable_address_or_a_config_error(text: str, allow_tcp: bool) -> None:
    try:
        url = parse_socket_url("U", text, allow_tcp=allow_tcp)
    except ConfigError as error:
        assert_one_clear_line(error, {"U": text}, {})
        return
    assert_sane_socket(url)
    assert allow_tcp or url.scheme == "unix"


@EXAMPLES
@given(hostile_value("NSM_LABELS"), st.sampled_from([parse_equals_labels, parse_colon_labels]))
def test_label_lists_parse_to_a_sane_map_or_a_config_error(text: str, parse: object) -> None:
    assert callable(parse)
    try:
        labels = parse("L", text)
    except ConfigError as error:
        assert_one_clear_line(error, {"L": text}, {})
        return
    assert label_map_problem(labels) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("9" * 5000 + "s", "too large"),
        ("0." + "9" * 5000 + "s", None),  # a long fraction is cut below a nanosecond, like Go
        ("\u0663s", "invalid duration"),  # Arabic-Indic three: Go takes ASCII digits only
    ],
)
def test_duration_digits_are_ascii_and_their_count_is_bounded(text: str, problem: str | None) -> None:
    if problem is None:
        assert parse_go_duration("D", text) == pytest.approx(1.0)
        return
    with pytest.raises(ConfigError, match=problem):
        parse_go_duration("D", text)


@pytest.mark.parametrize("text", ["tcp://h:\u00b2", "tcp://h:" + "9" * 5000, "tcp://h:\u0661"])
def test_tcp_port_must_be_ascii_digits(text: str) -> None:
    with pytest.raises(ConfigError, match="needs a port"):
        parse_socket_url("NSM_CONNECT_TO", text)


def test_unix_path_that_is_no_file_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a valid file name"):
        parse_socket_url("NSM_CONNECT_TO", "unix:///run/\ud800")
    # an undecodable byte from os.environ counts as the one byte the kernel gets
    assert parse_socket_url("NSM_CONNECT_TO", "unix:///run/\udcff").path == "/run/\udcff"


@pytest.mark.parametrize(
    ("env", "variable", "problem"),
    [
        ({"NSM_LABELS": "a=\udcff"}, "NSM_LABELS", "not valid UTF-8"),
        ({"NSM_NETWORK_SERVICES": "kernel://p2p/eth1?a=\udcff"}, "NSM_NETWORK_SERVICES", "not valid UTF-8"),
        ({"NODE_NAME": "node-\udcff"}, "NODE_NAME", "not valid UTF-8"),
        ({"NSM_LABELS": f"a={'v' * (MAX_LABEL_BYTES + 1)}"}, "NSM_LABELS", "bytes long"),
        ({"NSM_LABELS": ",".join(f"k{i}=v" for i in range(MAX_LABELS + 1))}, "NSM_LABELS", "at most"),
    ],
)
def test_labels_that_cannot_go_on_the_wire_are_config_errors(
    env: dict[str, str], variable: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        NscSettings.from_env({**NSC_BASE, **env})
    assert caught.value.variable == variable


def test_merged_labels_over_the_cap_name_the_link_list() -> None:
    half = MAX_LABELS // 2 + 1
    query = "&".join(f"q{i}=v" for i in range(half))
    env = {
        "NSM_NETWORK_SERVICES": f"kernel://p2p/eth1?{query}",
        "NSM_LABELS": ",".join(f"n{i}=v" for i in range(half)),
    }
    with pytest.raises(ConfigError, match="at most") as caught:
        NscSettings.from_env(env)
    assert caught.value.variable == "NSM_NETWORK_SERVICES"


@pytest.mark.parametrize(
    ("env", "variable", "problem"),
    [
        ({"IP_ADDRESS": "fe80::%eth0/64"}, "IP_ADDRESS", "zone"),
        ({"NSM_CIDR_PREFIX": "fe80::%eth0/64"}, "NSM_CIDR_PREFIX", "zone"),
        ({"IP_ADDRESS": "10.0.0.0/24", "ENDPOINT_LINKS": "net-\udcff"}, "ENDPOINT_LINKS", "not valid UTF-8"),
        ({"POD_NAME": "p\udcff", "NSM_NAME": "nse"}, "POD_NAME", "not valid UTF-8"),
    ],
)
def test_endpoint_values_that_cannot_be_used_are_config_errors(
    env: dict[str, str], variable: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        NseSettings.from_env({**NSE_BASE, **env})
    assert caught.value.variable == variable
