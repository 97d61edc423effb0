"""A sidecar announces a new link's addresses again (`announce_later`), for routing daemons that missed
the first notification (FRR 8.4's zebra can). Checked with a real listener on the namespace's rtnetlink
address groups: the address is announced anew, and nothing in the kernel changes."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from kernel_lab import Netns
from test_forwarder_refresh import ensure, settle
from test_forwarder_rollback import reply

from nsm_local.forwarder import CrossConnect
from nsm_sdk.kernel._netns import call_in_netns
from nsm_sdk.kernel.configure import announce_addresses
from nsm_sdk.kernel.links import get_link
from nsm_sdk.kernel.netlink import netlink_in

_RTMGRP_IPV4_IFADDR, _RTMGRP_IPV6_IFADDR = 0x10, 0x100
_RTM_NEWADDR, _RTM_DELADDR = 20, 21
_IFA_LOCAL, _IFA_ADDRESS = 2, 1


def address_events(sock: socket.socket) -> list[tuple[int, str]]:
    """(message type, address) of each RTM_NEWADDR/RTM_DELADDR waiting on `sock`."""
    events = []
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return events
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind in (_RTM_NEWADDR, _RTM_DELADDR):
                family = data[offset + 16]
                position = offset + 16 + 8  # nlmsghdr, ifaddrmsg
                while position + 4 <= offset + length:
                    attr_len, attr_type = struct.unpack_from("=HH", data, position)
                    if attr_type == (_IFA_LOCAL if family == socket.AF_INET else _IFA_ADDRESS):
                        raw = data[position + 4 : position + attr_len]
                        events.append((kind, str(ipaddress.ip_address(raw))))
                    position += (attr_len + 3) & ~3
            offset += (length + 3) & ~3


def addresses(ns: Netns, ifname: str) -> list[str]:
    with netlink_in(ns.fd) as ipr:
        link = get_link(ipr, ifname)
        assert link is not None
        return sorted(f"{a.address}/{a.prefixlen}" for a in ipr.addresses(link.index))


@pytest.mark.parametrize(
    ("src", "dst"), [("10.60.1.1/30", "10.60.1.2/30"), ("fd00:60::1/64", "fd00:60::2/64")], ids=["v4", "v6"]
)
def test_announcing_a_links_addresses_tells_listeners_again_and_changes_nothing(
    netns_a: Netns, netns_b: Netns, src: str, dst: str
) -> None:
    ensure(CrossConnect(netns_a.fd, "eth12", netns_b.fd, "eth21"), reply(src=src, dst=dst))
    settle(netns_a, netns_b)
    before = addresses(netns_a, "eth12")
    listener = call_in_netns(netns_a.fd, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))
    try:
        listener.bind((0, _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
        listener.setblocking(False)
        assert announce_addresses(netns_a.fd, "eth12", [src]) == 1
        events = address_events(listener)
    finally:
        listener.close()
    assert events == [(_RTM_NEWADDR, src.split("/")[0])]
    assert addresses(netns_a, "eth12") == before


def test_announcing_for_a_link_that_is_gone_does_nothing(netns_a: Netns) -> None:
    assert announce_addresses(netns_a.fd, "eth99", ["10.60.1.1/30"]) == 0
