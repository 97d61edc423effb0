"""Ensure a link's configuration: MTU, alias, IPv6 enabled, addresses, up, routes (protocol §9)."""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Sequence

from nsm_sdk.kernel._netns import call_in_netns
from nsm_sdk.kernel.addresses import IPInterface, Route, parse_interface
from nsm_sdk.kernel.errors import KernelError, LinkNotFound, kernel_errors
from nsm_sdk.kernel.links import get_link
from nsm_sdk.kernel.names import check_ifname
from nsm_sdk.kernel.netlink import netlink_in
from nsm_sdk.kernel.rtnl import IFF_UP, Rtnl


def configure_link(
    ns_fd: int | None,
    ifname: str,
    addresses: Sequence[str] = (),
    routes: Sequence[Route] = (),
    mtu: int | None = None,
    alias: str | None = None,
) -> int:
    """Ensure `ifname` in the netns is configured as given, and return its index.

    As NSM's kernel mechanism does: IPv6 enabled on the link (disable_ipv6=0), addresses added
    (permanent; IPv6 with NODAD, so no duplicate-detection delay), link up, then routes replaced,
    on-link routes first so that next hops are reachable. Traffic, IPv6 above all, flows only once
    both ends are operational (`state.operational`); this function does not wait for the peer.
    Idempotent: present addresses and routes are kept, and nothing that is not listed is removed.
    `mtu`/`alias` None leave those untouched.
    """
    with netlink_in(ns_fd) as ipr:
        return configure_link_in(ipr, ns_fd, ifname, addresses, routes, mtu, alias)


def configure_link_in(
    ipr: Rtnl,
    ns_fd: int | None,
    ifname: str,
    addresses: Sequence[str] = (),
    routes: Sequence[Route] = (),
    mtu: int | None = None,
    alias: str | None = None,
) -> int:
    """`configure_link` through a session already open in the netns `ns_fd`.

    MTU, alias and up are set only when the link differs, and IPv6 is read from the link's own
    message (IFLA_AF_SPEC), so the sysctl is only written, from a thread in the netns, when the link
    has IPv6 disabled.
    """
    check_ifname(ifname)
    wanted = [parse_interface(cidr) for cidr in addresses]
    link = get_link(ipr, ifname)
    if link is None:
        raise LinkNotFound(f"cannot configure {ifname!r}: no such link in netns fd={ns_fd}")
    index = link.index
    new_mtu = mtu if mtu is not None and link.mtu != mtu else None
    new_alias = alias if alias is not None and link.alias != alias else None
    if new_mtu is not None or new_alias is not None:
        changes = [name for name, value in (("mtu", new_mtu), ("alias", new_alias)) if value is not None]
        with kernel_errors(f"set {', '.join(changes)} of {ifname}"):
            ipr.set_link(index, mtu=new_mtu, alias=new_alias)
    disabled = link.ipv6_disabled
    has_ipv6 = disabled is not None and (not disabled or ensure_ipv6_enabled(ns_fd, ifname))
    if not has_ipv6 and any(address.version == 6 for address in wanted):
        raise KernelError(f"cannot add IPv6 addresses to {ifname}: no IPv6 in netns", errno.EAFNOSUPPORT)
    for address in wanted:
        _ensure_address(ipr, index, ifname, address)
    if not link.flags & IFF_UP:
        with kernel_errors(f"set {ifname} up"):
            ipr.set_link(index, up=True)
    for route in sorted(routes, key=lambda route: route.via is not None):
        _ensure_route(ipr, index, ifname, route)
    return index


def _ensure_address(ipr: Rtnl, index: int, ifname: str, address: IPInterface) -> None:
    try:
        with kernel_errors(f"add address {address} to {ifname}"):
            ipr.add_address(index, address)
    except KernelError as exc:
        if exc.errno != errno.EEXIST:
            raise


def _ensure_route(ipr: Rtnl, index: int, ifname: str, route: Route) -> None:
    with kernel_errors(f"replace route {route} dev {ifname}"):
        ipr.replace_route(ipaddress.ip_network(route.prefix), index, route.via)


def announce_addresses(ns_fd: int | None, ifname: str, addresses: Sequence[str]) -> int:
    """Set each of `addresses` on `ifname` again as it is: nothing changes in the kernel, but every netlink
    listener of the namespace is told of the address anew. Returns how many were announced (0 when the
    link is gone). Why a sidecar does this: `nsm_sdk.agent.link_check.announce_later`."""
    parsed = [parse_interface(address) for address in addresses]
    with kernel_errors(f"announce the addresses of {ifname}"), netlink_in(ns_fd) as ipr:
        link = get_link(ipr, ifname)
        if link is None:
            return 0
        for address in parsed:
            ipr.add_address(link.index, address, replace=True)
    return len(parsed)


def ensure_ipv6_enabled(ns_fd: int | None, ifname: str) -> bool:
    """Ensure net.ipv6.conf.<ifname>.disable_ipv6 is 0 in the netns; False if it has no IPv6 at all.

    /proc/sys/net shows the sysctls of the netns of the thread that opens the file, so the file is
    opened (and written) by the helper thread inside the netns. Writes only when needed, so an
    already-enabled link works even where /proc/sys is read-only.
    """
    check_ifname(ifname)
    path = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"

    def enable() -> bool:
        try:
            with open(path, "rb") as current:
                if current.read().strip() == b"0":
                    return True
        except FileNotFoundError:
            return False
        with open(path, "wb") as setting:
            setting.write(b"0")
        return True

    with kernel_errors(f"enable IPv6 on {ifname}"):
        return call_in_netns(ns_fd, enable)
