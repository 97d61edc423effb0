"""NSC sidecar settings built from the environment (nsc_sidecar.settings)."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from nsc_sidecar.settings import NscSettings
from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.protocol.labels import FrozenLabels
from nsm_sdk.protocol.nsurl import DEFAULT_NSMGR_URL, LinkSpec, SocketUrl

K8S_TOPO = "nsm-5node/eth41?link=net-3&peerif=eth14,nsm-5node/eth45?link=net-5&peerif=eth54"
ONE_LINK = {"NSM_NETWORK_SERVICES": "kernel://p2p/eth1?link=net-0"}


def test_k8s_topo_environment_gives_its_two_links() -> None:
    settings = NscSettings.from_env({"NS_NETWORKSERVICEMESH_IO": K8S_TOPO})
    assert settings.links == (
        LinkSpec("nsm-5node", "eth41", {"link": "net-3", "peerif": "eth14"}, 0),
        LinkSpec("nsm-5node", "eth45", {"link": "net-5", "peerif": "eth54"}, 1),
    )
    assert settings.links_variable == "NS_NETWORKSERVICEMESH_IO"


def test_nsm_list_is_read_and_every_other_field_takes_its_default() -> None:
    settings = NscSettings.from_env(ONE_LINK)
    assert settings.links == (LinkSpec("p2p", "eth1", {"link": "net-0"}, 0),)
    assert settings.links_variable == "NSM_NETWORK_SERVICES"
    assert settings.name is None  # derived from the netns at start: unique per pod
    assert settings.connect_to == DEFAULT_NSMGR_URL
    assert settings.connect_to.grpc_target == "unix:///var/lib/networkservicemesh/nsm.io.sock"
    assert (settings.request_timeout, settings.dial_timeout, settings.max_token_lifetime) == (
        15.0,
        5.0,
        600.0,
    )
    assert settings.readiness_file is None
    assert settings.log_level == "INFO"
    assert settings.warnings == ()


def test_defaults_of_the_dataclass_match_the_documented_defaults() -> None:
    defaults = NscSettings()
    from_env = NscSettings.from_env(ONE_LINK)
    assert dataclasses.replace(from_env, links=()) == defaults


def test_every_variable_is_read() -> None:
    settings = NscSettings.from_env(
        {
            **ONE_LINK,
            "NSM_NAME": "router-1",
            "NSM_CONNECT_TO": "tcp://nsmgr:5001",
            "NSM_REQUEST_TIMEOUT": "30s",
            "NSM_DIAL_TIMEOUT": "500ms",
            "NSM_MAX_TOKEN_LIFETIME": "1h",
            "NSM_READY_FILE": "/run/nsc/ready",
            "NSM_LOG_LEVEL": "debug",
        }
    )
    assert settings.name == "router-1"
    assert settings.connect_to == SocketUrl("tcp", "", "nsmgr", 5001)
    assert (settings.request_timeout, settings.dial_timeout, settings.max_token_lifetime) == (
        30.0,
        0.5,
        3600.0,
    )
    assert settings.readiness_file == "/run/nsc/ready"
    assert settings.log_level == "DEBUG"


def test_name_defaults_to_pod_name_and_nsm_name_wins_over_it() -> None:
    assert NscSettings.from_env({**ONE_LINK, "POD_NAME": "qrtr-4"}).name == "qrtr-4"
    assert NscSettings.from_env({**ONE_LINK, "POD_NAME": "qrtr-4", "NSM_NAME": "client"}).name == "client"


def test_clientinfo_and_nsm_labels_are_added_to_every_link_without_overriding() -> None:
    env = {
        "NS_NETWORKSERVICEMESH_IO": "topo/eth1?link=net-0&podName=fromurl,topo/eth2?link=net-1",
        "NSM_LABELS": "link=ignored, team=lab, nodeName=fromlabels",
        "POD_NAME": "qrtr-4",
        "NODE_NAME": "node-a",
        "CLUSTER_NAME": "kind",
    }
    first, second = NscSettings.from_env(env).links
    assert first.labels == {
        "link": "net-0",
        "podName": "fromurl",
        "team": "lab",
        "nodeName": "fromlabels",
        "clusterName": "kind",
    }
    assert second.labels == {
        "link": "net-1",
        "team": "lab",
        "nodeName": "fromlabels",
        "podName": "qrtr-4",
        "clusterName": "kind",
    }
    assert isinstance(first.labels, FrozenLabels)


def test_blank_variables_count_as_unset() -> None:
    settings = NscSettings.from_env(
        {
            **ONE_LINK,
            "NS_NETWORKSERVICEMESH_IO": "",
            "NSM_NAME": " ",
            "NSM_CONNECT_TO": "",
            "NSM_REQUEST_TIMEOUT": "",
            "NSM_LABELS": "",
            "POD_NAME": "",
            "NSM_READY_FILE": "",
            "NSM_LOG_LEVEL": "",
        }
    )
    assert settings == NscSettings.from_env(ONE_LINK)
    assert "podName" not in settings.links[0].labels


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("trace", "TRACE"),
        ("Debug", "DEBUG"),
        ("INFO", "INFO"),
        ("warn", "WARNING"),
        ("WARNING", "WARNING"),
        ("error", "ERROR"),
    ],
)
def test_log_levels_are_case_insensitive_and_warn_means_warning(text: str, level: str) -> None:
    assert NscSettings.from_env({**ONE_LINK, "NSM_LOG_LEVEL": text}).log_level == level


def test_ignored_legacy_variables_are_reported_as_warnings() -> None:
    settings = NscSettings.from_env(
        {**ONE_LINK, "CLIENT_NETWORK_SERVICE": "p2p", "NSM_SERVER_SOCKET": "/var/lib/networkservicemesh/x"}
    )
    assert len(settings.warnings) == 2
    assert settings.warnings[0].startswith("CLIENT_NETWORK_SERVICE is set but ignored")
    assert settings.warnings[1].startswith("NSM_SERVER_SOCKET is set but ignored")


def test_settings_are_frozen() -> None:
    settings = NscSettings.from_env(ONE_LINK)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.name = "other"  # type: ignore[misc]


def test_from_env_accepts_any_read_only_mapping() -> None:
    assert NscSettings.from_env(MappingProxyType(ONE_LINK)).links[0].interface_name == "eth1"


@pytest.mark.parametrize(
    ("env", "variable", "value", "problem"),
    [
        ({}, "NSM_NETWORK_SERVICES", None, "required: set NSM_NETWORK_SERVICES"),
        ({"NSM_NETWORK_SERVICES": " "}, "NSM_NETWORK_SERVICES", None, "or NS_NETWORKSERVICEMESH_IO"),
        (
            {"NSM_NETWORK_SERVICES": "kernel://a", "NS_NETWORKSERVICEMESH_IO": "a"},
            "NSM_NETWORK_SERVICES",
            "kernel://a",
            "NS_NETWORKSERVICEMESH_IO is also set; set only one of NSM_NETWORK_SERVICES and NS_NETWORKSERV",
        ),
        ({"NS_NETWORKSERVICEMESH_IO": "a/b/c"}, "NS_NETWORKSERVICEMESH_IO", "a/b/c", "more than one '/'"),
        ({"NSM_NETWORK_SERVICES": "memif://a"}, "NSM_NETWORK_SERVICES", "memif://a", "unsupported mechanism"),
        (
            {"NSM_NETWORK_SERVICES": "kernel://a/eth1,kernel://b/eth1"},
            "NSM_NETWORK_SERVICES",
            "kernel://a/eth1,kernel://b/eth1",
            "interface name 'eth1' is used by entries 0 and 1",
        ),
        # names the kernel layer would refuse later (a template, non-ASCII) are refused at start-up
        (
            {"NS_NETWORKSERVICEMESH_IO": "p2p/eth%25d"},
            "NS_NETWORKSERVICEMESH_IO",
            "p2p/eth%25d",
            "character '%'",
        ),
        (
            {"NSM_NETWORK_SERVICES": "kernel://p2p/\u00e9th"},
            "NSM_NETWORK_SERVICES",
            "kernel://p2p/\u00e9th",
            "'é'",
        ),
        ({**ONE_LINK, "NSM_LABELS": "team"}, "NSM_LABELS", "team", "label 'team' has no '='"),
        ({**ONE_LINK, "NSM_LABELS": "team:lab"}, "NSM_LABELS", "team:lab", "has no '='"),
        ({**ONE_LINK, "NSM_NAME": "a b"}, "NSM_NAME", "a b", "must not contain whitespace"),
        ({**ONE_LINK, "POD_NAME": "a\tb"}, "POD_NAME", "a\tb", "must not contain whitespace"),
        ({**ONE_LINK, "NSM_CONNECT_TO": "/nsm.sock"}, "NSM_CONNECT_TO", "/nsm.sock", "expected unix:///"),
        ({**ONE_LINK, "NSM_CONNECT_TO": "tcp://h"}, "NSM_CONNECT_TO", "tcp://h", "needs a port"),
        ({**ONE_LINK, "NSM_REQUEST_TIMEOUT": "15"}, "NSM_REQUEST_TIMEOUT", "15", "missing unit"),
        ({**ONE_LINK, "NSM_REQUEST_TIMEOUT": "0s"}, "NSM_REQUEST_TIMEOUT", "0s", "must be greater than 0"),
        ({**ONE_LINK, "NSM_DIAL_TIMEOUT": "-1s"}, "NSM_DIAL_TIMEOUT", "-1s", "must be greater than 0"),
        ({**ONE_LINK, "NSM_MAX_TOKEN_LIFETIME": "1d"}, "NSM_MAX_TOKEN_LIFETIME", "1d", "unknown unit 'd'"),
        ({**ONE_LINK, "NSM_READY_FILE": "ready"}, "NSM_READY_FILE", "ready", "must be an absolute file path"),
        ({**ONE_LINK, "NSM_READY_FILE": "/run/"}, "NSM_READY_FILE", "/run/", "must be an absolute file path"),
        ({**ONE_LINK, "NSM_LOG_LEVEL": "loud"}, "NSM_LOG_LEVEL", "loud", "unknown log level"),
    ],
)
def test_bad_environment_raises_config_error_naming_variable_value_and_problem(
    env: dict[str, str], variable: str, value: str | None, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        NscSettings.from_env(env)
    error = caught.value
    assert (error.variable, error.value) == (variable, value)
    assert problem in error.problem
    shown = "<unset>" if value is None else repr(value)
    assert str(error) == f"{variable}={shown}: {error.problem}"


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({"NSM_MAX_TOKEN_LIFETIME": "5s"}, "NSM_MAX_TOKEN_LIFETIME='5s'"),  # default request timeout 15s
        ({"NSM_MAX_TOKEN_LIFETIME": "4s", "NSM_REQUEST_TIMEOUT": "2s"}, "NSM_MAX_TOKEN_LIFETIME='4s'"),
        ({"NSM_REQUEST_TIMEOUT": "5m"}, "NSM_REQUEST_TIMEOUT='5m'"),  # against the default lifetime, 10m
    ],
)
def test_a_token_lifetime_not_above_twice_the_request_timeout_is_refused(
    env: dict[str, str], shown: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        NscSettings.from_env({"NSM_NETWORK_SERVICES": "kernel://p2p/eth1", **env})
    message = str(caught.value)
    assert (
        message.startswith(shown) and "NSM_REQUEST_TIMEOUT" in message and "NSM_MAX_TOKEN_LIFETIME" in message
    )
