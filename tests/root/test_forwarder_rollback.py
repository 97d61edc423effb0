"""No half-made links (issue 9): a Request that fails once the veth pair exists takes the pair with it,
and one that could never be configured fails before anything is made. Injected through the connection
context the endpoint returns, into nsm-local's forwarder, in real namespaces."""

from __future__ import annotations

import asyncio

import pytest
from kernel_lab import Netns

from nsm_local.forwarder import CrossConnect, ensure_cross_connect, remove_cross_connect
from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk.kernel.errors import KernelError
from nsm_sdk.protocol.errors import ProtocolError


def reply(src: str = "10.60.1.1/30", dst: str = "10.60.1.2/30", mtu: int = 0, via: str = "") -> Connection:
    """The connection as the endpoint returns it, with what the forwarder configures."""
    conn = Connection(id="nsc-0")
    conn.path.path_segments.add(name="nsc", id="nsc-0")
    conn.context.ip_context.src_ip_addrs.append(src)
    conn.context.ip_context.dst_ip_addrs.append(dst)
    if via:
        conn.context.ip_context.src_routes.add(prefix="192.168.50.0/24", nextHop=via)
    conn.context.MTU = mtu
    return conn


def ensure(xc: CrossConnect, conn: Connection) -> None:
    asyncio.run(ensure_cross_connect(xc, conn))


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        (reply(src="10.60.1.300/30"), "IP context"),
        (reply(dst="not-an-address"), "IP context"),
        (reply(mtu=20), "MTU 20"),
        (reply(mtu=70000), "MTU 70000"),
    ],
    ids=["malformed-src", "malformed-dst", "mtu-too-small", "mtu-too-large"],
)
def test_a_context_no_kernel_takes_is_refused_before_any_link_exists(
    netns_a: Netns, netns_b: Netns, broken: Connection, problem: str
) -> None:
    xc = CrossConnect(netns_a.fd, "eth12", netns_b.fd, "eth21")
    with pytest.raises(ProtocolError, match=problem):
        ensure(xc, broken)
    assert netns_a.link_names() == netns_b.link_names() == {"lo"}
    ensure(xc, reply())  # the next request for the same names succeeds
    assert "10.60.1.1/30" in netns_a.ip("-o", "addr", "show", "dev", "eth12").stdout


def test_a_pair_whose_configuration_fails_in_the_kernel_is_removed_again(
    netns_a: Netns, netns_b: Netns
) -> None:
    xc = CrossConnect(netns_a.fd, "eth12", netns_b.fd, "eth21")
    with pytest.raises(KernelError):  # a next hop that is not on any link: ENETUNREACH
        ensure(xc, reply(via="172.31.9.9"))
    assert netns_a.link_names() == netns_b.link_names() == {"lo"}
    ensure(xc, reply())
    assert netns_a.link_names() == {"lo", "eth12"} and netns_b.link_names() == {"lo", "eth21"}


def test_a_failed_refresh_of_a_live_pair_leaves_the_pair(netns_a: Netns, netns_b: Netns) -> None:
    xc = CrossConnect(netns_a.fd, "eth12", netns_b.fd, "eth21")
    ensure(xc, reply())
    index = netns_a.link_json("eth12")["ifindex"]
    with pytest.raises(KernelError):
        ensure(xc, reply(via="172.31.9.9"))
    assert netns_a.link_json("eth12")["ifindex"] == index, "a refresh's failure never breaks a live link"
    assert asyncio.run(remove_cross_connect(xc))
    assert netns_a.link_names() == netns_b.link_names() == {"lo"}
