"""A refresh in nsm-local's forwarder (issue 10): a link that already matches its connection is left
alone, and one that does not is brought in line. Watched through the kernel's own change notifications
(rtnetlink multicast groups) in both real namespaces."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kernel_lab import Netns
from test_forwarder_rollback import reply

from nsm_local import forwarder
from nsm_local.forwarder import CrossConnect, ensure_cross_connect
from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk.kernel._netns import call_in_netns

# Links, IPv4/IPv6 addresses and routes (RTMGRP_* of linux/rtnetlink.h).
_GROUPS = 0x1 | 0x10 | 0x40 | 0x100 | 0x400


def ensure(xc: CrossConnect, conn: Connection) -> None:
    asyncio.run(ensure_cross_connect(xc, conn))


@contextmanager
def kernel_changes(*namespaces: Netns) -> Iterator[list[int]]:
    """Counts, per namespace, the rtnetlink notifications sent while the block runs."""
    sockets = [
        call_in_netns(ns.fd, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)) for ns in namespaces
    ]
    counts = [0 for _ in namespaces]
    try:
        for sock in sockets:
            sock.bind((0, _GROUPS))
            sock.setblocking(False)
        yield counts
        for i, sock in enumerate(sockets):
            while True:
                try:
                    sock.recv(65536)
                except BlockingIOError:
                    break
                counts[i] += 1
    finally:
        for sock in sockets:
            sock.close()


def settle(*namespaces: Netns) -> None:
    """Wait until the kernel has finished with a new link on its own (carrier, operstate, IPv6
    link-local addresses and their duplicate detection): a second without notifications."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with kernel_changes(*namespaces) as changes:
            time.sleep(2)
        if not any(changes):
            return
    raise AssertionError("the kernel kept changing the links for 10 s")


def test_a_refresh_of_a_link_that_matches_changes_nothing_in_the_kernel(
    netns_a: Netns, netns_b: Netns
) -> None:
    xc = CrossConnect(netns_a.fd, "eth12", netns_b.fd, "eth21")
    conn = reply(via="10.60.1.2")
    ensure(xc, conn)
    settle(netns_a, netns_b)

    with kernel_changes(netns_a, netns_b) as changes:
        ensure(xc, conn)

    assert changes == [0, 0]


def test_a_refresh_that_brings_a_new_address_configures_it(netns_a: Netns, netns_b: Netns) -> None:
    xc = CrossConnect(netns_a.fd, "eth12", netns_b.fd, "eth21")
    ensure(xc, reply())
    index = netns_a.link_json("eth12")["ifindex"]

    with kernel_changes(netns_a, netns_b) as changes:
        ensure(xc, reply(src="10.60.1.5/30", dst="10.60.1.6/30"))

    assert changes[0] > 0 and changes[1] > 0
    assert netns_a.link_json("eth12")["ifindex"] == index
    assert "10.60.1.5/30" in netns_a.ip("-o", "addr", "show", "dev", "eth12").stdout
    assert "10.60.1.6/30" in netns_b.ip("-o", "addr", "show", "dev", "eth21").stdout


def test_a_refresh_repairs_a_link_someone_set_down(netns_a: Netns, netns_b: Netns) -> None:
    xc = CrossConnect(netns_a.fd, "eth12", netns_b.fd, "eth21")
    ensure(xc, reply())
    netns_b.ip("link", "set", "eth21", "down")

    ensure(xc, reply())

    assert "UP" in netns_b.link_json("eth21")["flags"]


def test_a_refresh_of_a_link_that_matches_only_reads_the_two_links(
    netns_a: Netns, netns_b: Netns, monkeypatch: pytest.MonkeyPatch
) -> None:
    xc = CrossConnect(netns_a.fd, "eth12", netns_b.fd, "eth21")
    conn = reply(via="10.60.1.2")
    ensure(xc, conn)

    def no_write(*_: object, **__: object) -> None:
        raise AssertionError("a refresh of a matching link wrote to the kernel")

    monkeypatch.setattr(forwarder, "create_veth_pair_in", no_write)
    monkeypatch.setattr(forwarder, "configure_link_in", no_write)
    ensure(xc, conn)  # no AssertionError: the link was only read

    netns_b.ip("addr", "flush", "dev", "eth21")
    with pytest.raises(AssertionError, match="wrote to the kernel"):
        ensure(xc, conn)  # the endpoint side lost its address: this one must be repaired
