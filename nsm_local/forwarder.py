"""The kernel forwarder of nsm-local: one veth pair per connection, born in both namespaces (§9).

The client end takes the client's requested name and the endpoint end the endpoint's, each in its own
netns, so the same name on both ends (eth1 <-> eth1) is fine. Addresses, routes and MTU come from the
connection context. Each end carries an alias naming the connection, which is how a restarted nsm-local
recognises (and may replace) a link it made before.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk.kernel.addresses import Route, parse_interface
from nsm_sdk.kernel.configure import configure_link
from nsm_sdk.kernel.errors import InvalidArgument, KernelError, LinkNameTaken, LinkNotFound
from nsm_sdk.kernel.links import End, create_veth_pair, delete_link
from nsm_sdk.kernel.state import inspect_link
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


def _owned_by(ns_fd: int, ifname: str, alias: str) -> bool:
    try:
        return inspect_link(ns_fd, ifname).alias == alias
    except LinkNotFound:
        return False


MTU_RANGE = range(68, 65536)
"""What a veth takes (IPv4's minimum to the kernel's maximum); NSM's field is a uint32."""


@dataclass(frozen=True)
class _Plan:
    """Both ends' configuration, worked out (and checked) before anything is created."""

    client: SideConfig
    endpoint: SideConfig
    mtu: int | None


def _plan(conn: Connection) -> _Plan:
    """ProtocolError for what no kernel would take: a malformed address or route, an impossible MTU."""
    try:
        client, endpoint = (side_config(conn.context.ip_context, side) for side in ("client", "endpoint"))
        for config in (client, endpoint):
            for address in config.addresses:
                parse_interface(address)
            for route in config.routes:
                Route(route.prefix, route.via)
    except (ValueError, InvalidArgument) as exc:
        raise ProtocolError(f"the connection's IP context: {exc}") from None
    mtu = conn.context.MTU or None
    if mtu is not None and mtu not in MTU_RANGE:
        raise ProtocolError(
            f"the connection's MTU {mtu}: a veth takes {MTU_RANGE.start}-{MTU_RANGE.stop - 1}"
        )
    return _Plan(client, endpoint, mtu)


def _configure(ns_fd: int, ifname: str, config: SideConfig, mtu: int | None, alias: str) -> None:
    configure_link(
        ns_fd,
        ifname,
        list(config.addresses),
        [Route(r.prefix, r.via) for r in config.routes],
        mtu=mtu,
        alias=alias,
    )


def _ensure(xc: CrossConnect, conn: Connection) -> None:
    conn_id = conn.path.path_segments[0].id
    assert xc.endpoint_ns_fd is not None, "creating a pair needs both namespaces"
    plan = _plan(conn)
    ends = (End(xc.client_ns_fd, xc.client_ifname), End(xc.endpoint_ns_fd, xc.endpoint_ifname))
    try:
        created = create_veth_pair(*ends)
    except LinkNameTaken:
        # A link of ours from before a restart (or from a reselect to another endpoint) holds a name:
        # replace it, but never touch an interface that our alias does not mark as ours.
        removed = False
        if _owned_by(xc.client_ns_fd, xc.client_ifname, client_alias(conn_id)):
            removed |= delete_link(xc.client_ns_fd, xc.client_ifname)
        if _owned_by(xc.endpoint_ns_fd, xc.endpoint_ifname, endpoint_alias(conn_id)):
            removed |= delete_link(xc.endpoint_ns_fd, xc.endpoint_ifname)
        if not removed:
            raise
        created = create_veth_pair(*ends)
    try:
        _configure(xc.client_ns_fd, xc.client_ifname, plan.client, plan.mtu, client_alias(conn_id))
        _configure(xc.endpoint_ns_fd, xc.endpoint_ifname, plan.endpoint, plan.mtu, endpoint_alias(conn_id))
    except BaseException:
        if created:  # no half-made link: a pair this request made goes with its failure
            _remove(xc)
        raise


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


async def remove_cross_connect(xc: CrossConnect) -> bool:
    return await asyncio.to_thread(_remove, xc)
