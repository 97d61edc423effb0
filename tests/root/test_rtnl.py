"""The rtnetlink client's own promises (nsm_sdk/kernel/rtnl.py), against the real kernel: refusals carry
the kernel's errno and explanation, and the link attributes we read are read right."""

from __future__ import annotations

import errno

import pytest
from kernel_lab import Netns

from nsm_sdk.kernel.netlink import netlink_in
from nsm_sdk.kernel.rtnl import NetlinkError

pytestmark = pytest.mark.root


def test_a_refused_request_carries_the_kernels_errno_and_explanation(netns_a: Netns) -> None:
    netns_a.ip("link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
    with netlink_in(netns_a.fd) as ipr:
        link = ipr.get_link("probe0")
        assert link is not None
        with pytest.raises(NetlinkError) as refused:
            ipr.set_link(link.index, mtu=10)  # below the minimum a veth takes
    assert refused.value.errno == errno.EINVAL
    assert "mtu" in str(refused.value).lower()


def test_a_missing_link_is_none_and_its_deletion_enodev(netns_a: Netns) -> None:
    with netlink_in(netns_a.fd) as ipr:
        assert ipr.get_link("nothere0") is None
        with pytest.raises(NetlinkError) as refused:
            ipr.delete_link(4242)
    assert refused.value.errno == errno.ENODEV


def test_link_attributes_are_read_as_the_kernel_reports_them(netns_a: Netns, netns_b: Netns) -> None:
    with netlink_in(netns_a.fd) as ipr:
        ipr.add_veth("left0", None, "right0", netns_b.fd)
        left = ipr.get_link("left0")
        assert left is not None
        ipr.set_link(left.index, mtu=1400, alias="server-x", up=True)
        netns_a.exec("sysctl", "-qw", "net.ipv6.conf.left0.disable_ipv6=1")
        left = ipr.get_link("left0")
    assert left is not None
    right = netns_b.link_json("right0")
    shown = netns_a.link_json("left0")
    assert (left.ifname, left.index, left.mtu, left.alias, left.kind) == (
        "left0",
        shown["ifindex"],
        1400,
        "server-x",
        "veth",
    )
    assert left.peer_index == right["ifindex"]
    assert left.peer_netnsid == shown["link_netnsid"]
    assert left.ipv6_disabled is True
    assert left.operstate in {"DOWN", "LOWERLAYERDOWN"}  # the peer is down: no carrier
