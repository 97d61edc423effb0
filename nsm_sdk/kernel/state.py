"""What a link looks like in the kernel, checking it against expectations, and waiting for it.

Used by the sidecars inside their own netns to see and verify the interface the forwarder made.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from nsm_sdk.kernel.addresses import Route, canonical_interface
from nsm_sdk.kernel.errors import LinkNotFound, LinkWaitCancelled, LinkWaitTimeout, kernel_errors
from nsm_sdk.kernel.links import get_link
from nsm_sdk.kernel.names import check_ifname
from nsm_sdk.kernel.netlink import dump, netlink_in
from nsm_sdk.kernel.rtnl import (
    IFF_LOWER_UP,
    IFF_UP,
    RT_SCOPE_LINK,
    RT_TABLE_MAIN,
    RTN_UNICAST,
    Address,
    Link,
    RouteEntry,
    Rtnl,
)


@dataclass(frozen=True)
class LinkState:
    """One link as the kernel reports it.

    `addresses` holds the global/site-scope addresses (IPv6 link-local ones are left out) as
    `addr/len`; `routes` holds the main-table unicast routes leaving through this link, including the
    kernel's own prefix routes. `operstate` is the kernel's RFC 2863 state ("UP", "DOWN",
    "LOWERLAYERDOWN", ...), which lags `up`/`carrier` (see `operational`). `peer_index` and
    `peer_netnsid` are IFLA_LINK and IFLA_LINK_NETNSID (for a veth: the peer's index, and the id of
    the peer's netns if it is another one).
    """

    ifname: str
    index: int
    up: bool
    carrier: bool
    operstate: str
    mtu: int
    alias: str | None
    kind: str | None
    peer_index: int | None
    peer_netnsid: int | None
    addresses: frozenset[str]
    routes: frozenset[Route]


def read_link_states(ipr: Rtnl, ifname: str | None = None, *, with_routes: bool = True) -> list[LinkState]:
    """States of all links in `ipr`'s netns, or of the one called `ifname` (empty list if absent).

    For one link the cost does not grow with the namespace: see `state_of` (and `with_routes`).
    """
    if ifname is not None:
        link = get_link(ipr, ifname)
        return [] if link is None else [state_of(ipr, link, with_routes=with_routes)]
    with kernel_errors("dump links"):
        links = dump(ipr.links)
    if not links:
        return []
    indexes = {link.index for link in links}
    with kernel_errors("dump addresses"):
        addresses = _addresses_by_index(dump(ipr.addresses), indexes)
    with kernel_errors("dump routes"):
        routes = _routes_by_index(dump(ipr.routes), indexes)
    return [_state(link, addresses, routes) for link in links]


def state_of(ipr: Rtnl, link: Link, *, with_routes: bool = True) -> LinkState:
    """The state of `link`: the kernel sends only its addresses and its main-table routes (a dump
    filtered by the kernel), whatever else the namespace holds.

    `with_routes=False` leaves `routes` empty without asking the kernel (a check that expects none).
    """
    index = link.index
    with kernel_errors("dump addresses"):
        addresses = _addresses_by_index(dump(lambda: ipr.addresses(index)), {index})
    if not with_routes:
        return _state(link, addresses, {})
    with kernel_errors("dump routes"):
        routes = _routes_by_index(dump(lambda: ipr.routes(oif=index, table=RT_TABLE_MAIN)), {index})
    return _state(link, addresses, routes)


def _state(link: Link, addresses: dict[int, set[str]], routes: dict[int, set[Route]]) -> LinkState:
    return LinkState(
        ifname=link.ifname,
        index=link.index,
        up=bool(link.flags & IFF_UP),
        carrier=bool(link.flags & IFF_LOWER_UP),
        operstate=link.operstate,
        mtu=link.mtu,
        alias=link.alias,
        kind=link.kind,
        peer_index=link.peer_index,
        peer_netnsid=link.peer_netnsid,
        addresses=frozenset(addresses.get(link.index, ())),
        routes=frozenset(routes.get(link.index, ())),
    )


def _addresses_by_index(messages: Iterable[Address], indexes: set[int]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for msg in messages:
        if msg.index not in indexes or msg.scope >= RT_SCOPE_LINK:
            continue
        found.setdefault(msg.index, set()).add(canonical_interface(f"{msg.address}/{msg.prefixlen}"))
    return found


def _routes_by_index(messages: Iterable[RouteEntry], indexes: set[int]) -> dict[int, set[Route]]:
    found: dict[int, set[Route]] = {}
    for msg in messages:
        if msg.table != RT_TABLE_MAIN or msg.type != RTN_UNICAST or msg.oif not in indexes:
            continue
        if msg.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        default = "0.0.0.0" if msg.family == socket.AF_INET else "::"
        route = Route(f"{msg.dst or default}/{msg.dst_len}", msg.gateway)
        found.setdefault(msg.oif, set()).add(route)
    return found


def inspect_link(ns_fd: int | None, ifname: str) -> LinkState:
    """The state of link `ifname` in the netns; LinkNotFound if there is no such link."""
    check_ifname(ifname)
    with netlink_in(ns_fd) as ipr:
        states = read_link_states(ipr, ifname)
    if not states:
        raise LinkNotFound(f"no link {ifname!r} in netns fd={ns_fd}")
    return states[0]


def link_problems(
    state: LinkState | None,
    ifname: str,
    expected_addresses: Sequence[str] = (),
    expected_routes: Sequence[Route] = (),
    mtu: int | None = None,
    carrier: bool = False,
) -> list[str]:
    """What is wrong with `state` (None: the link is missing) compared to the expectation; [] if nothing.

    Extra addresses and routes are not problems: the expectation is what must be there. With `carrier`,
    a link without carrier (its veth peer is down or gone) is a problem too.
    """
    if state is None:
        return [f"link {ifname} not found"]
    problems = []
    if not state.up:
        problems.append(f"link {ifname} is down")
    elif carrier and not state.carrier:
        problems.append(f"link {ifname} has no carrier")
    if mtu is not None and state.mtu != mtu:
        problems.append(f"link {ifname} has mtu {state.mtu}, expected {mtu}")
    for address in sorted({canonical_interface(cidr) for cidr in expected_addresses}):
        if address not in state.addresses:
            problems.append(f"link {ifname} lacks address {address}")
    for route in sorted(set(expected_routes), key=str):
        if route not in state.routes:
            problems.append(f"link {ifname} lacks route {route}")
    return problems


def verify_link(
    ns_fd: int | None,
    ifname: str,
    expected_addresses: Sequence[str] = (),
    expected_routes: Sequence[Route] = (),
    mtu: int | None = None,
    carrier: bool = False,
) -> list[str]:
    """Problems of link `ifname` in the netns against the expectation (see link_problems); [] means OK."""
    check_ifname(ifname)
    with netlink_in(ns_fd) as ipr:
        states = read_link_states(ipr, ifname)
    state = states[0] if states else None
    return link_problems(state, ifname, expected_addresses, expected_routes, mtu, carrier)


LinkPredicate = Callable[[LinkState], bool]


def exists(state: LinkState) -> bool:
    """The default `until` of wait_for_link: the link is there."""
    return True


def operational(state: LinkState) -> bool:
    """The link is up with carrier and the kernel has finished bringing it up (operstate UP).

    The kernel processes carrier changes asynchronously (linkwatch, up to about a second for veth),
    and IPv6 on the link only starts working after that; wait for this before relying on traffic.
    """
    return state.up and state.operstate == "UP"


def wait_for_link(
    ns_fd: int | None,
    ifname: str | None,
    timeout: float,
    interval: float = 0.1,
    stop: threading.Event | None = None,
    *,
    until: LinkPredicate = exists,
) -> LinkState:
    """Poll the netns until link `ifname` (None: any link) satisfies `until`, and return its state.

    For example `wait_for_link(fd, "eth1", 10, until=operational)`. Gives up with LinkWaitTimeout after
    `timeout` seconds in all, or with LinkWaitCancelled as soon as `stop` is set.
    """
    if ifname is not None:
        check_ifname(ifname)
    wanted = f"link {ifname or '(any)'} satisfying {getattr(until, '__name__', 'predicate')}"
    deadline = time.monotonic() + timeout
    pause = stop if stop is not None else threading.Event()
    with netlink_in(ns_fd) as ipr:
        while True:
            found = next((state for state in read_link_states(ipr, ifname) if until(state)), None)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkWaitTimeout(f"no {wanted} in netns fd={ns_fd} within {timeout}s")
            if pause.wait(min(interval, remaining)):
                raise LinkWaitCancelled(f"stopped waiting for {wanted} in netns fd={ns_fd}")
