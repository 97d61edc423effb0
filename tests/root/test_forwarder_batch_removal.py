"""nsm-local's forwarder removes pairs asked for together in one kernel batch (issue 10, item 2): every
pair goes from both namespaces, nothing else in them is touched (not even a link already in the device
group a batch would have picked), a pair whose client end is gone goes through its endpoint end, and no
fd is left open."""

from __future__ import annotations

import asyncio
import os
import subprocess

from kernel_lab import Netns

from nsm_local.forwarder import GROUP_BASE, CrossConnect, remove_cross_connect
from nsm_sdk.kernel.links import End, create_veth_pair_in
from nsm_sdk.kernel.netlink import netlink_in

PAIRS = 40


def make_pairs(a: Netns, b: Netns, count: int) -> list[CrossConnect]:
    with netlink_in(a.fd) as ipr_a, netlink_in(b.fd) as ipr_b:
        for n in range(count):
            create_veth_pair_in(ipr_a, ipr_b, End(a.fd, f"nsm{n}"), End(b.fd, f"ep{n}"))
    return [CrossConnect(a.fd, f"nsm{n}", b.fd, f"ep{n}") for n in range(count)]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_pairs_removed_together_leave_both_namespaces_and_nothing_else(
    netns_a: Netns, netns_b: Netns
) -> None:
    pairs = make_pairs(netns_a, netns_b, PAIRS)
    # Bystanders, a veth pair of the namespace's own: one end in the group a batch would pick first.
    netns_a.ip("link", "add", "keep-grouped", "type", "veth", "peer", "name", "keep-plain")
    netns_a.ip("link", "set", "keep-grouped", "group", str(GROUP_BASE))
    fds_before = open_fds()

    async def main() -> list[bool]:
        return await asyncio.gather(*(remove_cross_connect(xc) for xc in pairs))

    assert asyncio.run(main()) == [True] * PAIRS
    assert netns_a.link_names() == {"lo", "keep-grouped", "keep-plain"}
    assert netns_b.link_names() == {"lo"}
    assert open_fds() == fds_before


def test_a_pair_whose_client_end_is_gone_goes_through_its_endpoint_end(
    netns_a: Netns, netns_b: Netns
) -> None:
    pairs = make_pairs(netns_a, netns_b, 3)
    # Move one client end away (into the test's own netns), as if the client's namespace lost it.
    netns_a.ip("link", "set", "nsm1", "netns", "1")

    async def main() -> list[bool]:
        return await asyncio.gather(*(remove_cross_connect(xc) for xc in pairs))

    try:
        assert asyncio.run(main()) == [True, True, True]
        assert netns_a.link_names() == {"lo"} and netns_b.link_names() == {"lo"}
    finally:
        subprocess.run(["ip", "link", "del", "nsm1"], capture_output=True, check=False)


def test_removing_what_is_not_there_says_so(netns_a: Netns, netns_b: Netns) -> None:
    gone = CrossConnect(netns_a.fd, "nothere0", netns_b.fd, "nothere1")
    assert asyncio.run(remove_cross_connect(gone)) is False
