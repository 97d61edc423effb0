"""The matrix {Go NSC, Python NSC} x {Go NSE, Python NSE} through NSM's real Go control plane (the sdk's
registry and nsmgr chains plus a kernel forwarder), with strict fd passing on: every netns and endpoint
socket travels as an fd over grpcfd. Go <-> Go is the baseline that validates the harness itself.

Each class builds one link per pair and checks it step by step, in order; a step failing makes the
later ones of that pair fail too.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest
from interop_lab import (
    CONN_ID,
    IFNAME,
    NSC_ADDRESS,
    NSC_NAME,
    NSE_ADDRESS,
    NSE_NAME,
    REGISTRATION_EXPIRY,
    SERVICE,
    TOKEN_LIFETIME,
    Link,
    wait_until,
)

pytestmark = pytest.mark.timeout(600)


def netns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def check_connection(conn: dict[str, Any]) -> None:
    mechanism = conn["mechanism"]
    assert (mechanism["cls"], mechanism["type"]) == ("LOCAL", "KERNEL")
    assert mechanism["parameters"]["name"] == IFNAME
    segments = conn["path"]["path_segments"]
    assert [s["name"] for s in segments] == [NSC_NAME, "nsmgr-harness", "forwarder-harness", NSE_NAME]
    assert segments[0]["id"] == CONN_ID
    assert all(s.get("token") and s.get("expires") for s in segments), segments
    assert conn["network_service_endpoint_name"] == NSE_NAME
    ip = conn["context"]["ip_context"]
    assert (ip["src_ip_addrs"], ip["dst_ip_addrs"]) == ([NSC_ADDRESS], [NSE_ADDRESS])
    assert ip["src_routes"] == [{"prefix": NSE_ADDRESS}]
    assert ip["dst_routes"] == [{"prefix": NSC_ADDRESS}]


class TestLink:
    def test_returned_connection_is_kernel_with_our_name_four_segments_and_ip_context(
        self, link: Link
    ) -> None:
        # the harness logs the reply after sending it: the client may have its link a moment before
        replies = wait_until(
            lambda: link.lab.events("nsmgr.request", id=CONN_ID), 10, "the nsmgr's reply to the client"
        )
        sent = replies[0]["request"]
        assert sent["mechanism_preferences"][0]["parameters"]["inodeURL"].startswith("inode://")
        check_connection(replies[-1]["connection"])
        assert replies[-1]["connection"]["id"] == CONN_ID
        if link.nsc_kind == "go":  # what the Go client itself got back
            # written once the Go client's Request returned, which may be just after its link is up
            reply = link.lab.connection_file(NSC_NAME)
            wait_until(reply.exists, 10, "the Go client's connection file")
            check_connection(json.loads(reply.read_text()))
        else:  # the Python client logs what it got back
            line = f"event=link.established name={NSC_NAME} link={IFNAME} service={SERVICE} conn={CONN_ID}"
            wait_until(lambda: line in link.nsc.log, 10, "the client's link.established line")
            assert f"endpoint={NSE_NAME} src={NSC_ADDRESS} dst={NSE_ADDRESS}" in link.nsc.log
        assert link.lab.events("strict.rejected") == []

    def test_interfaces_have_the_requested_names_and_addresses_on_both_sides(self, link: Link) -> None:
        endpoint_if = link.endpoint_ifname()
        assert link.lab.addresses(link.nsc_ns, IFNAME) == [NSC_ADDRESS]
        assert link.lab.addresses(link.nse_ns, endpoint_if) == [NSE_ADDRESS]
        assert list(link.lab.links(link.nsc_ns)) == [IFNAME]
        assert list(link.lab.links(link.nse_ns)) == [endpoint_if]
        for netns, ifname in ((link.nsc_ns, IFNAME), (link.nse_ns, endpoint_if)):
            assert "UP" in link.lab.links(netns)[ifname]["flags"]
        created = link.lab.events("veth.created")
        assert len(created) == 1
        assert (created[0]["client_if"], created[0]["endpoint_if"]) == (IFNAME, endpoint_if)
        assert created[0]["client_netns_ino"] == netns_inode(link.nsc_ns)
        assert created[0]["endpoint_netns_ino"] == netns_inode(link.nse_ns)

    def test_ping_crosses_the_link_both_ways(self, link: Link) -> None:
        assert link.lab.ping(link.nsc_ns, NSE_ADDRESS)
        assert link.lab.ping(link.nse_ns, NSC_ADDRESS)

    def test_link_survives_twice_the_token_lifetime_and_the_registration_expiry(self, link: Link) -> None:
        lab = link.lab
        refreshes = len(lab.events("nsmgr.request", id=CONN_ID))
        registrations = len(lab.events("registry.register", name=NSE_NAME))
        time.sleep(2 * max(TOKEN_LIFETIME, REGISTRATION_EXPIRY) + 1)
        # the client refreshed (at 0.2 x token lifetime) and the endpoint re-registered (at 2/3 expiry)
        assert len(lab.events("nsmgr.request", id=CONN_ID)) - refreshes >= 6
        assert len(lab.events("registry.register", name=NSE_NAME)) - registrations >= 2
        assert lab.events("nsmgr.request_failed", id=CONN_ID) == []
        assert lab.events("registry.unregister") == []
        assert lab.events("veth.deleted") == []
        assert len(lab.events("veth.created")) == 1
        # nothing reported the connection down on the way (a monitor stream breaking would)
        assert "event=link.healing" not in link.nsc.log and "Control plane is down" not in link.nsc.log
        assert lab.link_up(link.nsc_ns, IFNAME, NSC_ADDRESS)
        assert lab.ping(link.nsc_ns, NSE_ADDRESS)

    def test_sigterm_on_the_client_closes_and_removes_both_interfaces(self, link: Link) -> None:
        endpoint_if = link.endpoint_ifname()
        assert link.nsc.stop(signal.SIGTERM) == 0, link.nsc.log
        # the harness logs a call after answering it: wait for the lines, then check them exactly
        closes = wait_until(lambda: link.lab.events("nsmgr.close", id=CONN_ID), 10, "the nsmgr's Close")
        assert len(closes) == 1 and "error" not in closes[0], closes
        wait_until(lambda: link.lab.events("veth.deleted"), 10, "the veth deleted")
        assert [e["why"] for e in link.lab.events("veth.deleted")] == ["close"]
        assert wait_until(lambda: link.lab.events("endpoint.close"), 10, "the Close at the endpoint")
        assert IFNAME not in link.lab.links(link.nsc_ns)
        assert endpoint_if not in link.lab.links(link.nse_ns)


class TestSecureLink(TestLink):
    """The same steps with SPIFFE security as the cmd-* apps run it (spire_lab: a real SPIRE server and
    agent): mTLS on every hop, ES256 path tokens signed with the SVID keys, the sdk's default policies in
    the nsmgr, registry, forwarder, reference NSE and NSC. Pairs: interop_lab.SECURE_PAIRS."""

    @pytest.fixture(scope="class")
    @classmethod
    def link(cls, secure_link: Link) -> Link:
        return secure_link
