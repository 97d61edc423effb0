"""NSE sidecar settings built from the environment (nse_sidecar.settings)."""

from __future__ import annotations

import dataclasses
import ipaddress
from ipaddress import IPv4Network, IPv6Network
from types import MappingProxyType

import pytest

from nse_sidecar.settings import (
    DEFAULT_NSM_POOL,
    AddressingSettings,
    NseSettings,
    parse_cidr_groups,
    parse_seed_pool,
)
from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.protocol.labels import FrozenLabels
from nsm_sdk.protocol.nsurl import DEFAULT_NSMGR_URL, SocketUrl

K8S_TOPO_NSE = {
    "ENDPOINT_NETWORK_SERVICE": "nsm-5node",
    "ENDPOINT_LABELS": "device=qrtr-4",
    "IP_ADDRESS": "10.60.5.0/24",
}
NSM_NSE = {"NSM_SERVICE_NAMES": "p2p"}


def assert_config_error(error: ConfigError, variable: str, value: str | None, problem: str) -> None:
    assert (error.variable, error.value) == (variable, value)
    assert problem in error.problem
    shown = "<unset>" if value is None else repr(value)
    assert str(error) == f"{variable}={shown}: {error.problem}"


def test_k8s_topo_environment_gives_seed_addressing() -> None:
    settings = NseSettings.from_env(K8S_TOPO_NSE)
    assert settings.services == ("nsm-5node",)
    assert settings.labels == {"device": "qrtr-4"}
    assert settings.addressing == AddressingSettings(mode="seed", pools=((IPv4Network("10.60.5.0/24"),),))


def test_nsm_environment_and_defaults() -> None:
    settings = NseSettings.from_env(NSM_NSE)
    assert settings.services == ("p2p",)
    assert settings.labels == {}
    assert settings.addressing == AddressingSettings(mode="nsm", pools=((IPv4Network("169.254.0.0/16"),),))
    assert settings.name is None  # derived from the netns at start: unique per pod
    assert settings.connect_to == DEFAULT_NSMGR_URL
    assert settings.listen_on is None
    assert settings.register_service is True
    assert settings.payload == "ETHERNET"
    assert (settings.max_token_lifetime, settings.request_timeout) == (600.0, 15.0)
    assert settings.readiness_file is None
    assert settings.log_level == "INFO"
    assert settings.warnings == ()


def test_defaults_of_the_dataclass_match_the_documented_defaults() -> None:
    assert dataclasses.replace(NseSettings.from_env(NSM_NSE), services=()) == NseSettings()
    assert NseSettings().addressing.pools == ((DEFAULT_NSM_POOL,),)


def test_every_nsm_variable_is_read() -> None:
    settings = NseSettings.from_env(
        {
            "NSM_SERVICE_NAMES": "p2p, icmp-responder",
            "NSM_LABELS": "device:r1, app:topo",
            "NSM_CIDR_PREFIX": "[172.16.0.0/24, fd00::/64], 10.0.0.0/31",
            "NSM_NAME": "r1-nse",
            "NSM_CONNECT_TO": "tcp://127.0.0.1:5001",
            "NSM_LISTEN_ON": "unix:///run/nse/listen.on",
            "NSM_REGISTER_SERVICE": "No",
            "NSM_PAYLOAD": "ip",
            "NSM_MAX_TOKEN_LIFETIME": "1h",
            "NSM_REQUEST_TIMEOUT": "2s",
            "NSM_READY_FILE": "/run/nse/ready",
            "NSM_LOG_LEVEL": "warn",
        }
    )
    assert settings.services == ("p2p", "icmp-responder")
    assert settings.labels == {"device": "r1", "app": "topo"}
    assert settings.addressing == AddressingSettings(
        mode="nsm",
        pools=((IPv4Network("172.16.0.0/24"), IPv6Network("fd00::/64")), (IPv4Network("10.0.0.0/31"),)),
    )
    assert settings.name == "r1-nse"
    assert settings.connect_to == SocketUrl("tcp", "", "127.0.0.1", 5001)
    assert settings.listen_on == SocketUrl("unix", "/run/nse/listen.on")
    assert settings.register_service is False
    assert settings.payload == "IP"
    assert (settings.max_token_lifetime, settings.request_timeout) == (3600.0, 2.0)
    assert settings.readiness_file == "/run/nse/ready"
    assert settings.log_level == "WARNING"


def test_legacy_aliases_are_read_when_the_new_names_are_unset() -> None:
    settings = NseSettings.from_env({"ADVERTISE_NSE_NAME": "topo", "ADVERTISE_NSE_LABELS": "device=r2"})
    assert settings.services == ("topo",)
    assert settings.labels == {"device": "r2"}
    assert settings.warnings == ()


def test_new_names_win_over_legacy_aliases_with_a_warning() -> None:
    settings = NseSettings.from_env(
        {
            "ENDPOINT_NETWORK_SERVICE": "new",
            "ADVERTISE_NSE_NAME": "old",
            "ENDPOINT_LABELS": "v=new",
            "ADVERTISE_NSE_LABELS": "v=old",
        }
    )
    assert settings.services == ("new",)
    assert settings.labels == {"v": "new"}
    assert settings.warnings == (
        "ADVERTISE_NSE_NAME is set but ignored: ENDPOINT_NETWORK_SERVICE takes precedence",
        "ADVERTISE_NSE_LABELS is set but ignored: ENDPOINT_LABELS takes precedence",
    )


def test_ignored_legacy_variables_are_reported_as_warnings() -> None:
    settings = NseSettings.from_env({**K8S_TOPO_NSE, "NSM_CLIENT_SOCKET": "/x", "ROUTES": "10.0.0.0/8"})
    assert [warning.split(" ")[0] for warning in settings.warnings] == ["NSM_CLIENT_SOCKET", "ROUTES"]


def test_clientinfo_labels_are_added_unless_present() -> None:
    settings = NseSettings.from_env(
        {
            **K8S_TOPO_NSE,
            "ENDPOINT_LABELS": "device=r1,podName=mine",
            "POD_NAME": "r1",
            "NODE_NAME": "n1",
            "CLUSTER_NAME": "kind",
        }
    )
    assert settings.labels == {"device": "r1", "podName": "mine", "nodeName": "n1", "clusterName": "kind"}
    assert isinstance(settings.labels, FrozenLabels)


def test_name_defaults_to_pod_name_and_nsm_name_wins_over_it() -> None:
    assert NseSettings.from_env({**NSM_NSE, "POD_NAME": "r1"}).name == "r1"
    assert NseSettings.from_env({**NSM_NSE, "POD_NAME": "r1", "NSM_NAME": "nse-a"}).name == "nse-a"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("0", False),
        ("No", False),
    ],
)
def test_register_service_accepts_common_booleans(text: str, expected: bool) -> None:
    assert NseSettings.from_env({**NSM_NSE, "NSM_REGISTER_SERVICE": text}).register_service is expected


def test_ipv6_seed_pool_is_accepted_down_to_a_126() -> None:
    settings = NseSettings.from_env({**K8S_TOPO_NSE, "IP_ADDRESS": "fd00:60::/126"})
    assert settings.addressing.pools == ((IPv6Network("fd00:60::/126"),),)


def test_dict_labels_are_frozen_on_construction() -> None:
    assert isinstance(NseSettings(labels={"a": "1"}).labels, FrozenLabels)


def test_settings_are_frozen_and_hashable() -> None:
    settings = NseSettings.from_env(K8S_TOPO_NSE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.payload = "IP"  # type: ignore[misc]
    assert hash(settings) == hash(NseSettings.from_env(MappingProxyType(K8S_TOPO_NSE)))


# --- NSM_CIDR_PREFIX groups and IP_ADDRESS ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "groups"),
    [
        ("10.0.0.0/24", [["10.0.0.0/24"]]),
        ("10.0.0.0/24,10.1.0.0/24", [["10.0.0.0/24"], ["10.1.0.0/24"]]),
        ("[10.0.0.0/24,10.1.0.0/24],10.2.0.0/24", [["10.0.0.0/24", "10.1.0.0/24"], ["10.2.0.0/24"]]),
        ("[10.0.0.0/24], [fd00::/64]", [["10.0.0.0/24"], ["fd00::/64"]]),
        (" [ 10.0.0.0/24 , fd00::/127 ] ", [["10.0.0.0/24", "fd00::/127"]]),
        ("10.0.0.0/31", [["10.0.0.0/31"]]),
        (
            "10.0.0.0/24,[10.1.0.0/24,10.2.0.0/24,10.3.0.0/24]",
            [["10.0.0.0/24"], ["10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"]],
        ),
    ],
)
def test_cidr_groups_parse(text: str, groups: list[list[str]]) -> None:
    expected = tuple(tuple(ipaddress.ip_network(cidr) for cidr in group) for group in groups)
    assert parse_cidr_groups("NSM_CIDR_PREFIX", text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (",", "entry 0 is empty"),
        ("10.0.0.0/24,", "entry 1 is empty"),
        ("[]", "entry 0 is empty"),
        ("[10.0.0.0/24", "a '[' group is not closed with ']'"),
        ("10.0.0.0/24]", "entry 0 ('10.0.0.0/24]') closes a group never opened"),
        ("[10.0.0.0/24,[10.1.0.0/24]]", "misplaced bracket in entry 1"),
        ("[10.0.0.0/24,[10.1.0.0/24],10.2.0.0/24]", "entry 1 ('[10.1.0.0/24]') opens a group inside a group"),
        ("10.0.0.0/24[", "misplaced bracket"),
        ("10.0.0.0", "'10.0.0.0' has no prefix length"),
        ("10.0.0.0/33", "'10.0.0.0/33' is not a CIDR"),
        ("banana/24", "'banana/24' is not a CIDR"),
        ("10.0.0.1/24", "'10.0.0.1/24' has host bits set; did you mean 10.0.0.0/24?"),
        ("10.0.0.1/32", "pool too small: 10.0.0.1/32 must hold at least two addresses"),
        ("fd00::/128", "pool too small"),
    ],
)
def test_bad_cidr_groups_name_variable_value_and_problem(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_cidr_groups("NSM_CIDR_PREFIX", text)
    assert_config_error(caught.value, "NSM_CIDR_PREFIX", text, problem)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("10.60.1.1/24", "'10.60.1.1/24' has host bits set; did you mean 10.60.1.0/24?"),
        ("10.60.1.0/31", "pool too small: 10.60.1.0/31 must hold at least one /30"),
        ("fd00::/127", "pool too small"),
        ("10.60.1.0/24,10.60.2.0/24", "is not a CIDR"),
        ("10.60.256.0/24", "is not a CIDR"),
        ("10.60.1.0", "has no prefix length"),
    ],
)
def test_bad_seed_pools_name_variable_value_and_problem(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_seed_pool("IP_ADDRESS", text)
    assert_config_error(caught.value, "IP_ADDRESS", text, problem)


def test_seed_pool_accepts_exactly_one_30() -> None:
    assert parse_seed_pool("IP_ADDRESS", " 10.60.1.4/30 ") == IPv4Network("10.60.1.4/30")


# --- whole-environment errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "variable", "value", "problem"),
    [
        ({}, "ENDPOINT_NETWORK_SERVICE", None, "required: set ENDPOINT_NETWORK_SERVICE"),
        ({"ENDPOINT_NETWORK_SERVICE": "  "}, "ENDPOINT_NETWORK_SERVICE", None, "or NSM_SERVICE_NAMES"),
        (
            {"ENDPOINT_NETWORK_SERVICE": "a", "NSM_SERVICE_NAMES": "b"},
            "ENDPOINT_NETWORK_SERVICE",
            "a",
            "NSM_SERVICE_NAMES is also set; set only one of ENDPOINT_NETWORK_SERVICE and NSM_SERVICE_NAMES",
        ),
        (
            {"ADVERTISE_NSE_NAME": "a", "NSM_SERVICE_NAMES": "b"},
            "ADVERTISE_NSE_NAME",
            "a",
            "set only one of ADVERTISE_NSE_NAME and NSM_SERVICE_NAMES",
        ),
        ({"ENDPOINT_NETWORK_SERVICE": "a,b"}, "ENDPOINT_NETWORK_SERVICE", "a,b", "may only contain"),
        ({"ENDPOINT_NETWORK_SERVICE": "a@b"}, "ENDPOINT_NETWORK_SERVICE", "a@b", "may only contain"),
        ({"NSM_SERVICE_NAMES": "a,,b"}, "NSM_SERVICE_NAMES", "a,,b", "entry 1 is empty"),
        ({"NSM_SERVICE_NAMES": "a, a"}, "NSM_SERVICE_NAMES", "a, a", "network service 'a' is listed twice"),
        ({"NSM_SERVICE_NAMES": "a,b c"}, "NSM_SERVICE_NAMES", "a,b c", "network service 'b c' may only"),
        (
            {**K8S_TOPO_NSE, "NSM_LABELS": "a:1"},
            "ENDPOINT_LABELS",
            "device=qrtr-4",
            "NSM_LABELS is also set; set only one of ENDPOINT_LABELS and NSM_LABELS",
        ),
        ({**K8S_TOPO_NSE, "ENDPOINT_LABELS": "device"}, "ENDPOINT_LABELS", "device", "has no '='"),
        (
            {**K8S_TOPO_NSE, "ADVERTISE_NSE_LABELS": "x", "ENDPOINT_LABELS": ""},
            "ADVERTISE_NSE_LABELS",
            "x",
            "has no '='",
        ),
        ({**NSM_NSE, "NSM_LABELS": "device=r1"}, "NSM_LABELS", "device=r1", "has no ':'"),
        (
            {**K8S_TOPO_NSE, "NSM_CIDR_PREFIX": "10.0.0.0/24"},
            "IP_ADDRESS",
            "10.60.5.0/24",
            "NSM_CIDR_PREFIX is also set; set only one of them",
        ),
        ({**K8S_TOPO_NSE, "IP_ADDRESS": "10.60.5.1/24"}, "IP_ADDRESS", "10.60.5.1/24", "host bits set"),
        ({**K8S_TOPO_NSE, "IP_ADDRESS": "10.60.5.0/31"}, "IP_ADDRESS", "10.60.5.0/31", "pool too small"),
        ({**NSM_NSE, "NSM_CIDR_PREFIX": "[10.0.0.0/8"}, "NSM_CIDR_PREFIX", "[10.0.0.0/8", "not closed"),
        ({**NSM_NSE, "NSM_NAME": "a b"}, "NSM_NAME", "a b", "must not contain whitespace"),
        (
            {**NSM_NSE, "NSM_CONNECT_TO": "http://x"},
            "NSM_CONNECT_TO",
            "http://x",
            "scheme must be unix or tcp",
        ),
        (
            {**NSM_NSE, "NSM_LISTEN_ON": "tcp://0.0.0.0:5003"},
            "NSM_LISTEN_ON",
            "tcp://0.0.0.0:5003",
            "scheme must be unix",
        ),
        ({**NSM_NSE, "NSM_LISTEN_ON": "unix://x.sock"}, "NSM_LISTEN_ON", "unix://x.sock", "must be absolute"),
        (
            {**NSM_NSE, "NSM_REGISTER_SERVICE": "maybe"},
            "NSM_REGISTER_SERVICE",
            "maybe",
            "expected true/false",
        ),
        ({**NSM_NSE, "NSM_PAYLOAD": "MPLS"}, "NSM_PAYLOAD", "MPLS", "payload must be ETHERNET or IP"),
        ({**NSM_NSE, "NSM_MAX_TOKEN_LIFETIME": "0"}, "NSM_MAX_TOKEN_LIFETIME", "0", "greater than 0"),
        ({**NSM_NSE, "NSM_REQUEST_TIMEOUT": "soon"}, "NSM_REQUEST_TIMEOUT", "soon", "invalid duration"),
        ({**NSM_NSE, "NSM_READY_FILE": "ready"}, "NSM_READY_FILE", "ready", "absolute file path"),
        ({**NSM_NSE, "NSM_LOG_LEVEL": "verbose"}, "NSM_LOG_LEVEL", "verbose", "unknown log level"),
    ],
)
def test_bad_environment_raises_config_error_naming_variable_value_and_problem(
    env: dict[str, str], variable: str, value: str | None, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        NseSettings.from_env(env)
    assert_config_error(caught.value, variable, value, problem)


def test_endpoint_links_fix_each_links_block_in_seed_mode() -> None:
    settings = NseSettings.from_env({**K8S_TOPO_NSE, "ENDPOINT_LINKS": "net-0, net-3"})
    assert settings.addressing.reserved == ("net-0", "net-3")


@pytest.mark.parametrize(
    ("env", "value", "problem"),
    [
        ({**NSM_NSE, "ENDPOINT_LINKS": "net-0"}, "net-0", "needs IP_ADDRESS"),
        ({**K8S_TOPO_NSE, "ENDPOINT_LINKS": "net-0,,net-1"}, "net-0,,net-1", "entry 1 is empty"),
        ({**K8S_TOPO_NSE, "ENDPOINT_LINKS": "net-0,net-0"}, "net-0,net-0", "'net-0' is listed twice"),
        (
            {**K8S_TOPO_NSE, "IP_ADDRESS": "10.60.5.0/29", "ENDPOINT_LINKS": "a,b,c"},
            "a,b,c",
            "3 links; IP_ADDRESS 10.60.5.0/29 holds 2 blocks",
        ),
    ],
)
def test_bad_endpoint_links_are_refused_naming_the_problem(
    env: dict[str, str], value: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        NseSettings.from_env(env)
    assert_config_error(caught.value, "ENDPOINT_LINKS", value, problem)
