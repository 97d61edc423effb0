"""Checking one side of a kernel link against its Connection, in the agent's netns (§9).

The netns is the caller's own (`ns_fd=None`: a sidecar runs in its router's namespace) or, in an agent
host that acts for many routers, the router's namespace given by its fd.

A check reads only its own interface, in one netlink session (a lookup by name, then the kernel's
filtered dumps of that link's addresses and routes), so its cost does not grow with the number of links
in the namespace. Only when the lookup by name misses does it read every link, to find the interface
to rename (`adopt`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk.kernel.addresses import Route
from nsm_sdk.kernel.configure import announce_addresses
from nsm_sdk.kernel.errors import KernelError
from nsm_sdk.kernel.links import rename_link_in
from nsm_sdk.kernel.netlink import netlink_in
from nsm_sdk.kernel.state import LinkState, link_problems, read_link_states, wait_for_link
from nsm_sdk.protocol.sides import Side, SideConfig, side_config

RECHECK_AFTER = 5.0
"""Seconds a clean check of a link stays good for a refresh whose reply changes nothing for that side: with
short tokens a link is refreshed every second, and reading the kernel each time was about a tenth of a
busy client's CPU. Anything that says the link is in trouble (the manager's monitor, a failing refresh)
checks at once."""

Adopt = Callable[[Sequence[LinkState]], LinkState | None]
"""Picks, among every link of the namespace, the one that arrived under another name (None: none)."""


@dataclass(frozen=True)
class SideCheck:
    problems: list[str] = field(default_factory=list)
    renamed_from: str | None = None
    rename_error: str | None = None


def expected_side(conn: Connection, side: Side) -> SideConfig:
    return side_config(conn.context.ip_context, side)


def _kernel_routes(config: SideConfig) -> list[Route]:
    return [Route(prefix=r.prefix, via=r.via) for r in config.routes]


async def wait_link(ifname: str, timeout: float, ns_fd: int | None = None) -> LinkState:
    """Wait (in a worker thread) until `ifname` exists in the netns; cancelling the task stops the wait."""
    cancel = threading.Event()
    try:
        return await asyncio.to_thread(wait_for_link, ns_fd, ifname, timeout, 0.05, cancel)
    finally:
        cancel.set()


async def check_side(
    ifname: str,
    conn: Connection,
    side: Side,
    *,
    carrier: bool = False,
    adopt: Adopt | None = None,
    ns_fd: int | None = None,
) -> SideCheck:
    """Our side of the link against the connection: problems ([] when it matches), and a rename made.

    With `carrier`, a link whose peer is down or gone is a problem. With `adopt`, an interface missing
    under `ifname` is looked for among all links and renamed to it (nsc-sidecar: the forwarder may use
    another name).
    """
    config = expected_side(conn, side)
    mtu = conn.context.MTU or None
    try:
        return await asyncio.to_thread(_check_in_kernel, ns_fd, ifname, config, mtu, carrier, adopt)
    except KernelError as exc:
        return SideCheck([f"cannot inspect {ifname}: {exc}"])


def _check_in_kernel(
    ns_fd: int | None, ifname: str, config: SideConfig, mtu: int | None, carrier: bool, adopt: Adopt | None
) -> SideCheck:
    renamed_from = rename_error = None
    routes = _kernel_routes(config)
    with netlink_in(ns_fd) as ipr:
        states = read_link_states(ipr, ifname, with_routes=bool(routes))
        if not states and adopt is not None:
            candidate = adopt(read_link_states(ipr))
            if candidate is not None:
                try:
                    rename_link_in(ipr, candidate.ifname, ifname)
                    renamed_from = candidate.ifname
                except KernelError as exc:
                    rename_error = f"{candidate.ifname}: {exc}"
                states = read_link_states(ipr, ifname, with_routes=bool(routes))
    problems = link_problems(
        states[0] if states else None,
        ifname,
        list(config.addresses),
        routes,
        mtu,
        carrier,
    )
    return SideCheck(problems, renamed_from, rename_error)


ANNOUNCE_AFTER = (1.0, 5.0)
"""Seconds after a link is verified at which its addresses are announced again (`announce_later`)."""


async def announce_later(ifname: str, addresses: Sequence[str], ns_fd: int | None = None) -> None:
    """Announce a newly verified link's addresses to its namespace again, `ANNOUNCE_AFTER` the check.

    Routing daemons learn addresses from netlink notifications, and FRR 8.4's zebra (Debian 12's) can drop
    one: it reads address events on its data-plane thread and link events on its main thread, and an
    address handled before its link is known is discarded (its debug log: "zebra_if_dplane_result: can't
    find ifp"). OSPF then never runs on that interface; a ten-router lab lost a loopback about once in
    six runs on a busy machine. Setting an address again as it is changes nothing in the kernel but
    sends RTM_NEWADDR anew: a daemon that missed it learns it (it knows the link by then), and one that
    had it ignores it. A link gone meanwhile is left alone.
    """
    waited = 0.0
    for at in ANNOUNCE_AFTER:
        await asyncio.sleep(at - waited)
        waited = at
        try:
            if await asyncio.to_thread(announce_addresses, ns_fd, ifname, addresses) == 0:
                return
        except KernelError:
            return
