"""The client's verification of its side, run inside a throwaway netns as the sidecar runs in its pod:
an interface that arrived under another name is renamed to the requested one, and a missing address is
reported instead of declaring the link verified."""

from __future__ import annotations

import sys
import textwrap

import pytest
from kernel_lab import Netns

pytestmark = pytest.mark.root

VERIFY = textwrap.dedent("""
    import asyncio, sys
    from nsm_sdk._proto.networkservice.connection_pb2 import Connection
    from nsm_sdk.agent.logs import EventLog, setup_logging
    from nsm_sdk.protocol.nsurl import LinkSpec
    from nsc_sidecar.link import Link

    setup_logging("test")
    conn = Connection(id="c-0")
    conn.path.path_segments.add(name="c", id="c-0")
    conn.context.ip_context.src_ip_addrs.append("10.60.1.1/30")
    conn.context.ip_context.dst_ip_addrs.append("10.60.1.2/30")
    link = Link(LinkSpec("p2p", "eth12", {}, 0), "c", "inode://1/1", None, 1.0,
                lambda name, ok: None, EventLog("test"))
    problems = asyncio.run(link._verify(conn))
    print("PROBLEMS=" + repr(problems))
""")


def verify_in(netns: Netns) -> str:
    result = netns.exec(sys.executable, "-c", VERIFY)
    return result.stdout + result.stderr


def make_client_end(netns: Netns, peer: Netns, name: str, alias: str | None, address: str | None) -> None:
    netns.ip("link", "add", name, "type", "veth", "peer", "name", "p0", "netns", peer.name)
    if alias:
        netns.ip("link", "set", name, "alias", alias)
    if address:
        netns.ip("addr", "add", address, "dev", name)
    netns.ip("link", "set", name, "up")
    peer.ip("link", "set", "p0", "up")


def test_interface_under_another_name_is_renamed_to_the_requested_one(netns_a: Netns, netns_b: Netns) -> None:
    make_client_end(netns_a, netns_b, "tmp-x1", alias="server-c-0", address="10.60.1.1/30")
    output = verify_in(netns_a)
    assert "PROBLEMS=[]" in output, output
    assert "event=link.renamed" in output and "old=tmp-x1" in output
    assert "eth12" in netns_a.link_names() and "tmp-x1" not in netns_a.link_names()


def test_an_unrelated_interface_is_never_renamed(netns_a: Netns, netns_b: Netns) -> None:
    make_client_end(netns_a, netns_b, "other0", alias="someone-else", address=None)
    output = verify_in(netns_a)
    assert "link eth12 not found" in output, output
    assert "other0" in netns_a.link_names()


def test_missing_address_is_reported_not_verified(netns_a: Netns, netns_b: Netns) -> None:
    make_client_end(netns_a, netns_b, "eth12", alias="server-c-0", address=None)
    output = verify_in(netns_a)
    assert "lacks address 10.60.1.1/30" in output, output
    assert "event=link.unverified" in output and "event=link.verified" not in output
