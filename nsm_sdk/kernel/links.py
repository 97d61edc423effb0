"""Ensure-style link operations: veth pairs across namespaces, lookup, rename, delete (protocol §9).

Every function is idempotent: run it again after success (heal, restart) and it succeeds without
changing anything. Namespaces are open fds (as the forwarder receives them, §6) or None for our own.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from nsm_sdk.kernel._netns import OWN_NETNS_PATH, netns_id
from nsm_sdk.kernel.errors import (
    InvalidArgument,
    KernelError,
    LinkNameTaken,
    LinkNotFound,
    kernel_errors,
)
from nsm_sdk.kernel.names import check_ifname
from nsm_sdk.kernel.netlink import netlink_in
from nsm_sdk.kernel.rtnl import IFF_UP, Link, Rtnl


@dataclass(frozen=True)
class End:
    """One end of a veth pair: the netns holding it (an open fd, None for our own) and its final name."""

    ns_fd: int | None
    ifname: str


def get_link(ipr: Rtnl, name: str) -> Link | None:
    """The link called `name` in `ipr`'s netns, or None if there is none."""
    check_ifname(name)
    with kernel_errors(f"look up link {name}"):
        return ipr.get_link(name)


def find_link(ipr: Rtnl, name: str) -> int | None:
    """The index of the link called `name` in `ipr`'s netns, or None if there is none."""
    link = get_link(ipr, name)
    return None if link is None else link.index


def create_veth_pair(a: End, b: End) -> bool:
    """Ensure that a veth pair joins `a` and `b`, each end under its final name in its own netns.

    Succeeds without change if both ends exist and are each other's peer; raises LinkNameTaken if
    either name is held by anything else. Raises InvalidArgument for a pair that cannot exist. Returns
    whether it created the pair (False: it was there already). See `create_veth_pair_in`.
    """
    with netlink_in(a.ns_fd) as ipr_a, netlink_in(b.ns_fd) as ipr_b:
        return create_veth_pair_in(ipr_a, ipr_b, a, b)


def create_veth_pair_in(ipr_a: Rtnl, ipr_b: Rtnl, a: End, b: End) -> bool:
    """`create_veth_pair` with sessions in a's and b's namespaces already open.

    One RTM_NEWLINK carries IFLA_NET_NS_FD for the link and for the peer, so both ends are born in
    their target namespaces: `eth1` <-> `eth1` works, and nothing ever appears in a third netns under a
    name that could collide there (the v0 forwarder's bug, legacy-contract). It is sent through a's
    session; the kernel places each end by its IFLA_NET_NS_FD, not by the socket's netns.
    """
    check_ifname(a.ifname)
    check_ifname(b.ifname)
    same_netns = netns_id(a.ns_fd) == netns_id(b.ns_fd)
    if same_netns and a.ifname == b.ifname:
        raise InvalidArgument(f"both veth ends are named {a.ifname!r} in the same netns")
    if _existing_pair(ipr_a, ipr_b, a, b, same_netns):
        return False
    try:
        with kernel_errors(f"create veth {a.ifname} <-> {b.ifname}"):
            ipr_a.add_veth(a.ifname, a.ns_fd, b.ifname, b.ns_fd)
    except KernelError as exc:
        if exc.errno != errno.EEXIST:
            raise
        # A name was taken since we looked: fine if a concurrent caller created exactly our pair.
        if _existing_pair(ipr_a, ipr_b, a, b, same_netns):
            return False
        raise LinkNameTaken(f"cannot create veth {a.ifname} <-> {b.ifname}: {exc}") from exc
    return True


def is_pair(ipr_a: Rtnl, ipr_b: Rtnl, link_a: Link, link_b: Link, a: End, b: End) -> bool:
    """Whether the links `link_a` (a's end, seen through ipr_a) and `link_b` are each other's veth peer."""
    same_netns = netns_id(a.ns_fd) == netns_id(b.ns_fd)
    return _is_peer_of(ipr_a, link_a, link_b, b.ns_fd, same_netns) and _is_peer_of(
        ipr_b, link_b, link_a, a.ns_fd, same_netns
    )


def _existing_pair(ipr_a: Rtnl, ipr_b: Rtnl, a: End, b: End, same_netns: bool) -> bool:
    """True if a and b exist as each other's veth peer; False if neither exists; else LinkNameTaken."""
    link_a = get_link(ipr_a, a.ifname)
    link_b = get_link(ipr_b, b.ifname)
    if link_a is None and link_b is None:
        return False
    if (
        link_a is not None
        and link_b is not None
        and _is_peer_of(ipr_a, link_a, link_b, b.ns_fd, same_netns)
        and _is_peer_of(ipr_b, link_b, link_a, a.ns_fd, same_netns)
    ):
        return True
    held = [
        f"{end.ifname!r} (netns fd={end.ns_fd})"
        for end, link in ((a, link_a), (b, link_b))
        if link is not None
    ]
    raise LinkNameTaken(
        f"cannot create veth {a.ifname} <-> {b.ifname}: {' and '.join(held)} exists, not as that pair"
    )


def _is_peer_of(ipr_x: Rtnl, link_x: Link, link_y: Link, ns_fd_y: int | None, same_netns: bool) -> bool:
    """Whether veth `link_x` (in ipr_x's netns) has `link_y` (in netns ns_fd_y) as its peer.

    IFLA_LINK alone is an index in the peer's netns, and fresh namespaces number their links alike,
    so a peer in another netns is also matched by IFLA_LINK_NETNSID against the id that x's netns
    gives to y's netns.
    """
    if link_x.kind != "veth" or link_x.peer_index != link_y.index:
        return False
    nsid = link_x.peer_netnsid
    if same_netns:
        return nsid is None
    return nsid is not None and nsid == _nsid_of(ipr_x, ns_fd_y)


def _nsid_of(ipr: Rtnl, ns_fd: int | None) -> int | None:
    """The id that `ipr`'s netns gives to the netns `ns_fd` (RTM_GETNSID), None if it has none."""
    fd = os.open(OWN_NETNS_PATH, os.O_RDONLY | os.O_CLOEXEC) if ns_fd is None else ns_fd
    try:
        with kernel_errors("query netns id"):
            return ipr.netns_id(fd)
    finally:
        if ns_fd is None:
            os.close(fd)


def delete_link(ns_fd: int | None, ifname: str) -> bool:
    """Ensure no link `ifname` exists in the netns; True if one was deleted, False if there was none.

    Deleting either end of a veth pair removes both.
    """
    with netlink_in(ns_fd) as ipr:
        return delete_link_in(ipr, ifname)


def delete_links(ns_fd: int | None, ifnames: Sequence[str]) -> list[bool]:
    """`delete_link` of each name, in one netlink session (found or not, per name)."""
    with netlink_in(ns_fd) as ipr:
        return [delete_link_in(ipr, ifname) for ifname in ifnames]


def delete_link_in(ipr: Rtnl, ifname: str) -> bool:
    """`delete_link` through a session already open in the link's netns."""
    index = find_link(ipr, ifname)
    if index is None:
        return False
    try:
        with kernel_errors(f"delete link {ifname}"):
            ipr.delete_link(index)
    except LinkNotFound:
        return False
    return True


def rename_link(ns_fd: int | None, old: str, new: str) -> int:
    """Ensure the link `old` in the netns is called `new`; returns its index (see `rename_link_in`)."""
    with netlink_in(ns_fd) as ipr:
        return rename_link_in(ipr, old, new, f"netns fd={ns_fd}")


def rename_link_in(ipr: Rtnl, old: str, new: str, where: str = "our netns") -> int:
    """Ensure the link `old` in `ipr`'s netns is called `new`; returns its index.

    The kernel renames only links that are down, so an up link is set down, renamed and set up again
    (also when the rename fails). If `old` is gone and `new` exists, the rename already happened.
    """
    check_ifname(new)
    link = get_link(ipr, old)
    existing = find_link(ipr, new)
    if link is None:
        if existing is not None:
            return existing
        raise LinkNotFound(f"cannot rename {old!r} to {new!r}: no link {old!r} in {where}")
    index = link.index
    if old == new:
        return index
    if existing is not None:
        raise LinkNameTaken(f"cannot rename {old!r} to {new!r}: {new!r} exists in {where}")
    was_up = bool(link.flags & IFF_UP)
    with kernel_errors(f"rename link {old} to {new}"):
        if was_up:
            ipr.set_link(index, up=False)
        try:
            ipr.set_link(index, ifname=new)
        finally:
            if was_up:
                ipr.set_link(index, up=True)
    return index
