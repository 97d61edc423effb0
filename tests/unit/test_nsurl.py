"""Network-service URL list grammars and socket URLs (nsm_sdk.protocol.nsurl)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.protocol.ifname import interface_name_problem
from nsm_sdk.protocol.labels import FrozenLabels
from nsm_sdk.protocol.nsurl import (
    DEFAULT_NSMGR_URL,
    LinkSpec,
    SocketUrl,
    format_nsm_services,
    format_nsm_url,
    format_seed_services,
    format_seed_url,
    network_service_problem,
    parse_nsm_services,
    parse_seed_services,
    parse_socket_url,
)

K8S_TOPO = "nsm-5node/eth41?link=net-3&peerif=eth14,nsm-5node/eth45?link=net-5&peerif=eth54"


def link(service: str, ifname: str, index: int = 0, **labels: str) -> LinkSpec:
    return LinkSpec(network_service=service, interface_name=ifname, labels=labels, index=index)


def assert_config_error(error: ConfigError, variable: str, value: str, problem: str) -> None:
    assert error.variable == variable
    assert error.value == value
    assert problem in error.problem
    assert str(error) == f"{variable}={value!r}: {error.problem}"


# --- seed grammar ----------------------------------------------------------------------------------------


def test_k8s_topo_value_parses_into_two_links_in_order() -> None:
    assert parse_seed_services("NS_NETWORKSERVICEMESH_IO", K8S_TOPO) == (
        link("nsm-5node", "eth41", 0, link="net-3", peerif="eth14"),
        link("nsm-5node", "eth45", 1, link="net-5", peerif="eth54"),
    )


def test_k8s_topo_value_renders_back_identically() -> None:
    assert format_seed_services(parse_seed_services("NS_NETWORKSERVICEMESH_IO", K8S_TOPO)) == K8S_TOPO


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("p2p", [link("p2p", "nsm0")]),
        ("p2p/eth1", [link("p2p", "eth1")]),
        ("p2p/", [link("p2p", "nsm0")]),
        ("p2p?link=net-0", [link("p2p", "nsm0", link="net-0")]),
        ("a/eth1, b/eth2 ,c", [link("a", "eth1", 0), link("b", "eth2", 1), link("c", "nsm2", 2)]),
        ("a?k=first&k=second", [link("a", "nsm0", k="first")]),
        ("a?k=a%2Cb%3Dc&sp=x+y%20z", [link("a", "nsm0", k="a,b=c", sp="x y z")]),
        ("a?k=", [link("a", "nsm0", k="")]),
        ("a/eth%2D1?k=v=w", [link("a", "eth-1", k="v=w")]),
        ("a/eth1,a/eth2", [link("a", "eth1", 0), link("a", "eth2", 1)]),
        ("ns@domain/eth1", [link("ns@domain", "eth1")]),
        ("a?x=1,a?x=1", [link("a", "nsm0", 0, x="1"), link("a", "nsm1", 1, x="1")]),
    ],
)
def test_seed_items_parse(text: str, expected: list[LinkSpec]) -> None:
    assert parse_seed_services("NS_NETWORKSERVICEMESH_IO", text) == tuple(expected)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no network service given"),
        ("  ", "no network service given"),
        ("a/b/c", "entry 0 ('a/b/c'): more than one '/'"),
        ("a,,b", "entry 1 is empty (stray ',')"),
        ("a,", "entry 1 is empty (stray ',')"),
        ("kernel://a/b", "no scheme allowed"),
        ("/eth1", "network service name is empty"),
        ("?k=v", "network service name is empty"),
        ("a b/eth1", "network service 'a b' may only contain"),
        ("a:1/eth1", "network service 'a:1' may only contain"),
        ("a/way-too-long-name", "interface name 'way-too-long-name' is 17 bytes long"),
        ("a/e%3A1", "interface name 'e:1' contains the forbidden character ':'"),
        ("a/..", "interface name '..' is not allowed"),
        ("a/eth1,b/eth1", "interface name 'eth1' is used by entries 0 and 1"),
        ("a/eth1,b,c/nsm1", "interface name 'nsm1' is used by entries 1 and 2"),
        ("a?k", "query parameter 'k' has no '='"),
        ("a?=v", "query parameter '=v' has an empty key"),
        ("a?k=1&&j=2", "empty query parameter (stray '&')"),
        ("a?k=%zz", "invalid percent-escape '%zz'"),
        ("a/eth1#frag", "'#' is not allowed"),
    ],
)
def test_bad_seed_values_name_variable_value_and_problem(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_seed_services("NS_NETWORKSERVICEMESH_IO", text)
    assert_config_error(caught.value, "NS_NETWORKSERVICEMESH_IO", text, problem)


# --- NSM v1 grammar --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kernel://p2p", [link("p2p", "nsm0")]),
        ("kernel://p2p/eth1", [link("p2p", "eth1")]),
        ("KERNEL://p2p/eth1", [link("p2p", "eth1")]),
        ("Kernel://p2p/", [link("p2p", "nsm0")]),
        ("kernel://p2p/dir/eth1", [link("p2p", "eth1")]),
        ("kernel://p2p?link=net-0", [link("p2p", "nsm0", link="net-0")]),
        ("kernel://vpn@my.domain/if-vpn", [link("vpn@my.domain", "if-vpn")]),
        ("kernel://a?k=1&k=2&j=3", [link("a", "nsm0", k="1,2", j="3")]),
        ("kernel://a?k=%2C+x", [link("a", "nsm0", k=", x")]),
        (
            " kernel://a/eth1?x=1 , kernel://b ",
            [link("a", "eth1", 0, x="1"), link("b", "nsm1", 1)],
        ),
        (
            "kernel://nsm-5node/eth41?link=net-3&peerif=eth14,kernel://nsm-5node/eth45?link=net-5&peerif=eth54",
            [
                link("nsm-5node", "eth41", 0, link="net-3", peerif="eth14"),
                link("nsm-5node", "eth45", 1, link="net-5", peerif="eth54"),
            ],
        ),
    ],
)
def test_nsm_items_parse(text: str, expected: list[LinkSpec]) -> None:
    assert parse_nsm_services("NSM_NETWORK_SERVICES", text) == tuple(expected)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no network service given"),
        ("p2p/eth1", "entry 0 ('p2p/eth1'): missing scheme; expected kernel://"),
        ("memif://p2p/eth1", "unsupported mechanism scheme 'memif'; only kernel:// is supported"),
        ("vfio://p2p", "unsupported mechanism scheme 'vfio'"),
        ("kernel:///eth1", "network service name is empty"),
        ("kernel://p2p:5000/eth1", "network service 'p2p:5000' may only contain"),
        ("kernel://a@b@c/eth1", "network service 'a@b@c' has more than one '@'"),
        ("kernel://@b/eth1", "network service '@b' has an empty part around '@'"),
        ("kernel://p2p/abcdefghijklmnop", "interface name 'abcdefghijklmnop' is 16 bytes long"),
        ("kernel://p2p/eth%20x", "interface name 'eth x' contains the forbidden character ' '"),
        ("kernel://a/eth1,kernel://b/eth1", "interface name 'eth1' is used by entries 0 and 1"),
        ("kernel://a/eth1,,kernel://b", "entry 1 is empty"),
        ("kernel://a?flag", "query parameter 'flag' has no '='"),
        ("kernel://a?%zz=1", "invalid percent-escape '%zz'"),
        ("kernel://a#x", "'#' is not allowed"),
    ],
)
def test_bad_nsm_values_name_variable_value_and_problem(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_nsm_services("NSM_NETWORK_SERVICES", text)
    assert_config_error(caught.value, "NSM_NETWORK_SERVICES", text, problem)


def test_format_nsm_url_percent_encodes_labels_and_interface_name() -> None:
    spec = link("p2p", "e&1", link="net 0", peerif="a,b")
    assert format_nsm_url(spec) == "kernel://p2p/e%261?link=net%200&peerif=a%2Cb"
    assert format_seed_url(spec) == "p2p/e%261?link=net%200&peerif=a%2Cb"


# --- LinkSpec ---------------------------------------------------------------------------------------------


def test_link_spec_is_frozen_and_its_labels_are_immutable() -> None:
    spec = link("p2p", "eth1", link="net-0")
    assert isinstance(spec.labels, FrozenLabels)
    assert spec.mechanism == "KERNEL"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.interface_name = "eth2"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.labels["link"] = "other"  # type: ignore[index]
    assert hash(spec) == hash(link("p2p", "eth1", link="net-0"))


# --- round trips ------------------------------------------------------------------------------------------

_SERVICE = st.from_regex(r"[A-Za-z0-9._-]{1,12}(@[A-Za-z0-9._-]{1,12})?", fullmatch=True)
_IFNAME = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=15).filter(
    lambda name: interface_name_problem(name) is None
)
_LABEL_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=10)
_LABELS = st.dictionaries(_LABEL_TEXT.filter(bool), _LABEL_TEXT, max_size=4)


@st.composite
def link_lists(draw: st.DrawFn) -> list[LinkSpec]:
    names = draw(st.lists(_IFNAME, min_size=1, max_size=5, unique=True))
    return [
        LinkSpec(network_service=draw(_SERVICE), interface_name=name, labels=draw(_LABELS), index=index)
        for index, name in enumerate(names)
    ]


@given(link_lists())
def test_link_lists_round_trip_through_the_seed_grammar(specs: list[LinkSpec]) -> None:
    assert parse_seed_services("NS_NETWORKSERVICEMESH_IO", format_seed_services(specs)) == tuple(specs)


@given(link_lists())
def test_link_lists_round_trip_through_the_nsm_grammar(specs: list[LinkSpec]) -> None:
    assert parse_nsm_services("NSM_NETWORK_SERVICES", format_nsm_services(specs)) == tuple(specs)


# --- network service names --------------------------------------------------------------------------------


def test_network_service_names_accept_domain_only_when_asked() -> None:
    assert network_service_problem("vpn@dc.example.com", allow_domain=True) is None
    assert network_service_problem("vpn@dc.example.com") is not None
    assert network_service_problem("icmp-responder") is None


# --- socket URLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "url", "target"),
    [
        (
            "unix:///var/lib/networkservicemesh/nsm.io.sock",
            DEFAULT_NSMGR_URL,
            "unix:///var/lib/networkservicemesh/nsm.io.sock",
        ),
        ("UNIX:///tmp/x.sock", SocketUrl("unix", "/tmp/x.sock"), "unix:///tmp/x.sock"),
        (" unix:///tmp/x.sock ", SocketUrl("unix", "/tmp/x.sock"), "unix:///tmp/x.sock"),
        ("tcp://nsmgr:5001", SocketUrl("tcp", "", "nsmgr", 5001), "nsmgr:5001"),
        ("tcp://10.0.0.1:5001", SocketUrl("tcp", "", "10.0.0.1", 5001), "10.0.0.1:5001"),
        ("tcp://[fd00::1]:5001", SocketUrl("tcp", "", "[fd00::1]", 5001), "[fd00::1]:5001"),
    ],
)
def test_socket_urls_parse_and_give_grpc_targets(text: str, url: SocketUrl, target: str) -> None:
    parsed = parse_socket_url("NSM_CONNECT_TO", text)
    assert parsed == url
    assert parsed.grpc_target == target
    assert str(parsed) == text.strip().replace("UNIX", "unix")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("/var/lib/nsm.sock", "expected unix:///absolute/path or tcp://host:port"),
        ("http://x:80", "scheme must be unix or tcp"),
        ("unix://relative/x.sock", "unix socket path must be absolute"),
        ("unix:///tmp/", "must name a file, not a directory"),
        ("unix:///tmp/x?y", "must not contain '?'"),
        ("unix:///" + "x" * 107, "longer than 107 bytes"),
        ("tcp://nsmgr", "needs a port from 1 to 65535"),
        ("tcp://nsmgr:0", "needs a port from 1 to 65535"),
        ("tcp://nsmgr:65536", "needs a port from 1 to 65535"),
        ("tcp://nsmgr:5001/path", "needs a port from 1 to 65535"),
        ("tcp://:5001", "invalid tcp host ''"),
        ("tcp://[nothex]:5001", "invalid tcp host '[nothex]'"),
        ("tcp://a b:5001", "invalid tcp host 'a b'"),
    ],
)
def test_bad_socket_urls_name_variable_value_and_problem(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_socket_url("NSM_CONNECT_TO", text)
    assert_config_error(caught.value, "NSM_CONNECT_TO", text, problem)


def test_socket_url_can_be_restricted_to_unix() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_socket_url("NSM_LISTEN_ON", "tcp://host:1", allow_tcp=False)
    assert_config_error(caught.value, "NSM_LISTEN_ON", "tcp://host:1", "scheme must be unix")
