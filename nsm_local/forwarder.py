"""The kernel forwarder of nsm-local: one veth pair per connection, born in both namespaces (§9).

The client end takes the client's requested name and the endpoint end the endpoint's, each in its own
netns, so the same name on both ends (eth1 <-> eth1) is fine. Addresses, routes and MTU come from the
connection context. Each end carries an alias naming the connection, which is how a restarted nsm-local
recognises (and may replace) a link it made before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk.kernel.addresses import Route, parse_interface
from nsm_sdk.kernel.configure import configure_link_in
from nsm_sdk.kernel.errors import InvalidArgument, KernelError, LinkNameTaken, LinkNotFound, kernel_errors
from nsm_sdk.kernel.links import (
    End,
    create_veth_pair_in,
    delete_link,
    delete_link_in,
    find_link,
    get_link,
    is_pair,
)
from nsm_sdk.kernel.netlink import netlink_in
from nsm_sdk.kernel.rtnl import Rtnl
from nsm_sdk.kernel.state import link_problems, state_of
from nsm_sdk.protocol.errors import ProtocolError
from nsm_sdk.protocol.sides import SideConfig, side_config


@dataclass(frozen=True)
class CrossConnect:
    """The two ends of one connection's veth pair. The fds are the caller's (it owns and closes them);
    `endpoint_ns_fd` is only needed to create and configure the pair, and is None afterwards."""

    client_ns_fd: int
    client_ifname: str
    endpoint_ns_fd: int | None
    endpoint_ifname: str


def client_alias(conn_id: str) -> str:
    return f"server-{conn_id}"  # what NSM's kernel mechanism sets on the client side (§9)


def endpoint_alias(conn_id: str) -> str:
    return f"client-{conn_id}"


MTU_RANGE = range(68, 65536)
"""What a veth takes (IPv4's minimum to the kernel's maximum); NSM's field is a uint32."""


@dataclass(frozen=True)
class _Side:
    """One end's addresses and routes, as the kernel layer takes them."""

    addresses: tuple[str, ...]
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class _Plan:
    """Both ends' configuration, worked out (and checked) before anything is created."""

    client: _Side
    endpoint: _Side
    mtu: int | None


def _side(config: SideConfig) -> _Side:
    for address in config.addresses:
        parse_interface(address)
    return _Side(tuple(config.addresses), tuple(Route(r.prefix, r.via) for r in config.routes))


def _plan(conn: Connection) -> _Plan:
    """ProtocolError for what no kernel would take: a malformed address or route, an impossible MTU."""
    try:
        client, endpoint = (
            _side(side_config(conn.context.ip_context, side)) for side in ("client", "endpoint")
        )
    except (ValueError, InvalidArgument) as exc:
        raise ProtocolError(f"the connection's IP context: {exc}") from None
    mtu = conn.context.MTU or None
    if mtu is not None and mtu not in MTU_RANGE:
        raise ProtocolError(
            f"the connection's MTU {mtu}: a veth takes {MTU_RANGE.start}-{MTU_RANGE.stop - 1}"
        )
    return _Plan(client, endpoint, mtu)


def _configure(ipr: Rtnl, ns_fd: int | None, ifname: str, side: _Side, mtu: int | None, alias: str) -> None:
    configure_link_in(ipr, ns_fd, ifname, side.addresses, side.routes, mtu=mtu, alias=alias)


def _ensure(xc: CrossConnect, conn: Connection) -> None:
    """One netlink session per namespace for the whole step (creating, replacing, configuring)."""
    conn_id = conn.path.path_segments[0].id
    assert xc.endpoint_ns_fd is not None, "creating a pair needs both namespaces"
    plan = _plan(conn)
    a, b = End(xc.client_ns_fd, xc.client_ifname), End(xc.endpoint_ns_fd, xc.endpoint_ifname)
    aliases = client_alias(conn_id), endpoint_alias(conn_id)
    with netlink_in(a.ns_fd) as ipr_a, netlink_in(b.ns_fd) as ipr_b:
        if _in_place(ipr_a, ipr_b, a, b, plan, aliases):
            return  # a refresh of a link that matches: nothing to change in the kernel
        try:
            created = create_veth_pair_in(ipr_a, ipr_b, a, b)
        except LinkNameTaken:
            # A link of ours from before a restart (or from a reselect to another endpoint) holds a
            # name: replace it, but never touch an interface that our alias does not mark as ours.
            removed = False
            for ipr, end, alias in ((ipr_a, a, aliases[0]), (ipr_b, b, aliases[1])):
                held = get_link(ipr, end.ifname)
                if held is not None and held.alias == alias:
                    removed |= delete_link_in(ipr, end.ifname)
            if not removed:
                raise
            created = create_veth_pair_in(ipr_a, ipr_b, a, b)
        try:
            _configure(ipr_a, a.ns_fd, a.ifname, plan.client, plan.mtu, aliases[0])
            _configure(ipr_b, b.ns_fd, b.ifname, plan.endpoint, plan.mtu, aliases[1])
        except BaseException:
            if created:  # no half-made link: a pair this request made goes with its failure
                _remove(xc)
            raise


def _in_place(ipr_a: Rtnl, ipr_b: Rtnl, a: End, b: End, plan: _Plan, aliases: tuple[str, str]) -> bool:
    """Both ends exist as each other's peer, carry our aliases and match the plan (up, MTU, addresses,
    routes). Reads only these two links (`state_of`), so a refresh costs the same in any namespace."""
    link_a, link_b = get_link(ipr_a, a.ifname), get_link(ipr_b, b.ifname)
    if link_a is None or link_b is None or not is_pair(ipr_a, ipr_b, link_a, link_b, a, b):
        return False
    for ipr, link, end, side, alias in (
        (ipr_a, link_a, a, plan.client, aliases[0]),
        (ipr_b, link_b, b, plan.endpoint, aliases[1]),
    ):
        state = state_of(ipr, link, with_routes=bool(side.routes))
        if state.alias != alias or link_problems(state, end.ifname, side.addresses, side.routes, plan.mtu):
            return False
    return True


def _remove(xc: CrossConnect) -> bool:
    """Delete the pair (one end takes the other with it); either namespace may already be gone."""
    for ns_fd, ifname in ((xc.client_ns_fd, xc.client_ifname), (xc.endpoint_ns_fd, xc.endpoint_ifname)):
        if ns_fd is None:
            continue
        try:
            if delete_link(ns_fd, ifname):
                return True
        except KernelError:
            continue
    return False


async def ensure_cross_connect(xc: CrossConnect, conn: Connection) -> None:
    """Create (or confirm) and configure the pair for `conn` (a reply carrying the final IP context)."""
    await asyncio.to_thread(_ensure, xc, conn)


def _with_own_fds(xc: CrossConnect) -> CrossConnect:
    """`xc` on dups of its fds: the caller may close its own while the removal works."""
    endpoint = os.dup(xc.endpoint_ns_fd) if xc.endpoint_ns_fd is not None else None
    return CrossConnect(os.dup(xc.client_ns_fd), xc.client_ifname, endpoint, xc.endpoint_ifname)


def _close_fds(xc: CrossConnect) -> None:
    os.close(xc.client_ns_fd)
    if xc.endpoint_ns_fd is not None:
        os.close(xc.endpoint_ns_fd)


GROUP_BASE = 0x4E534D00
"""Device groups nsm-local picks for a batch removal start here ("NSM" and a byte); one in use by any link
of the namespace is never picked."""


def _free_group(ipr: Rtnl) -> int:
    used = {link.group for link in ipr.links()}
    return next(g for g in itertools.count(GROUP_BASE) if g not in used)


REMOVAL_THREADS = 32
"""Namespaces whose pairs are removed at the same time. Most of a removal's ~25 ms is the kernel waiting
(for RCU grace periods, after it has let go of the rtnl lock), so removals in different namespaces
overlap: 200 pairs in 200 namespaces take 4.6 s one after the other, 0.5 s on 16 threads and 0.2 s on 64
(`bench/kernel.py --spread`, docs/performance.md). A lab's teardown closes a link in every namespace."""
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _removal_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(REMOVAL_THREADS, thread_name_prefix="remove-pairs")
    return _pool


def _remove_batch(removals: Sequence[CrossConnect]) -> list[bool]:
    """Remove every pair; those whose client ends share a namespace go in one kernel batch, and the
    namespaces are worked on side by side (`REMOVAL_THREADS`). `removals` hold fds of their own
    (`_with_own_fds`), closed here in any case: nothing else uses them."""
    try:
        by_netns: dict[int, list[int]] = {}
        for number, removal in enumerate(removals):
            by_netns.setdefault(os.fstat(removal.client_ns_fd).st_ino, []).append(number)
        removed = [False] * len(removals)
        groups = list(by_netns.values())
        pool = _removal_pool() if len(groups) > 1 else None
        each = pool.map if pool is not None else map
        for numbers, results in zip(
            groups,
            each(lambda numbers: _remove_in_one_netns([removals[n] for n in numbers]), groups),
            strict=True,
        ):
            for number, done in zip(numbers, results, strict=True):
                removed[number] = done
        return removed
    finally:
        for removal in removals:
            _close_fds(removal)


def _remove_in_one_netns(removals: Sequence[CrossConnect]) -> list[bool]:
    """Pairs whose client ends live in one namespace: found there by name, put in a free device group and
    deleted with it at once (one alone: deleted by index); any not found there, or the whole lot if the
    namespace cannot be read, go one by one (the endpoint's end may still be there)."""
    found: dict[int, int] = {}  # position in `removals` -> link index
    try:
        with netlink_in(removals[0].client_ns_fd) as ipr:
            for number, removal in enumerate(removals):
                index = find_link(ipr, removal.client_ifname)
                if index is not None:
                    found[number] = index
            if len(found) == 1:
                (index,) = found.values()
                with kernel_errors("delete link"):
                    ipr.delete_link(index)
            elif found:
                group = _free_group(ipr)
                for index in found.values():
                    with contextlib.suppress(LinkNotFound), kernel_errors("set a link's group"):
                        ipr.set_group(index, group)
                with kernel_errors(f"delete link group {group}"):
                    ipr.delete_group(group)
    except KernelError:
        found = {}
    return [number in found or _remove(removal) for number, removal in enumerate(removals)]


class _Reaper:
    """Removes pairs in batches: what is asked for while a batch is in the kernel goes in the next one, so
    a lone Close waits for nobody and a thousand at once are a handful of batches."""

    def __init__(self) -> None:
        self._queue: list[tuple[CrossConnect, asyncio.Future[bool]]] = []
        self._worker: asyncio.Task[None] | None = None

    def submit(self, xc: CrossConnect) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._queue.append((_with_own_fds(xc), future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work(), name="forwarder: remove pairs")
        return future

    async def _work(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                results = await asyncio.to_thread(_remove_batch, [removal for removal, _ in batch])
            except Exception as exc:  # each waiting caller gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


_reapers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Reaper] = weakref.WeakKeyDictionary()


async def remove_cross_connect(xc: CrossConnect) -> bool:
    """Remove the pair (True if there was one). Removals asked for together are batched (`_Reaper`); the
    removal goes on even if the caller is cancelled, with fds of its own."""
    loop = asyncio.get_running_loop()
    reaper = _reapers.get(loop)
    if reaper is None:
        reaper = _reapers[loop] = _Reaper()
    return await asyncio.shield(reaper.submit(xc))
