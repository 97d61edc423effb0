"""What the endpoint does with a Request or Close, free of gRPC (protocol doc §8.4).

In order, like the Go endpoint chain: updatepath with our name; the caller's metadata token into its
segment and our own signed token (addressed to the caller) into ours; NSM's server policies on the path up
to our segment (`authorize_server`, §3.4); addresses from the allocator (idempotent per connection id,
recovering what a refresh carries after we restarted); the KERNEL mechanism chosen from the caller's
preferences with our netns as `inodeURL` and our side's name from the `peerif` label; path trimmed to our
segment; reply with the caller's index and id. What our interfaces still carry from before a restart is
kept for them (`EndpointServicer`), and only a refresh for the same interface name recovers it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from nsm_sdk._proto.networkservice.connection_pb2 import Connection, Mechanism, State
from nsm_sdk._proto.networkservice.connectioncontext_pb2 import IPContext
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk.agent.security import authorize_server
from nsm_sdk.identity.peer import PeerIdentity
from nsm_sdk.identity.x509 import X509Material
from nsm_sdk.protocol.errors import ProtocolError
from nsm_sdk.protocol.ifname import generate_interface_name, interface_name_problem
from nsm_sdk.protocol.ipam import P2PAddresses, P2PAllocator, apply_to_ip_context
from nsm_sdk.protocol.path import (
    copy_caller_token,
    new_uuid,
    prev_expires,
    restore_index,
    set_own_token,
    trim_path,
    update_path,
)

KERNEL = "KERNEL"
LOCAL = "LOCAL"
NAME_PARAM = "name"
INODE_URL_PARAM = "inodeURL"
PEER_IFNAME_LABEL = "peerif"
LINK_LABEL = "link"
"""k8s-topo's link label (`link=net-<i>`): the key of the block `ENDPOINT_LINKS` reserves for the link."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A served Request: the reply for the caller and our own view of it (for monitors and state)."""

    reply: Connection
    own_view: Connection
    interface_name: str


def choose_mechanism(request: NetworkServiceRequest) -> Mechanism:
    """Keep a KERNEL mechanism already set (refresh), else take the first KERNEL preference (§8.4 step 6)."""
    current = request.connection.mechanism
    if request.connection.HasField("mechanism") and current.type:
        if current.type != KERNEL:
            raise ProtocolError(f"cannot support mechanism {current.type}: only {KERNEL} is served")
        chosen = Mechanism()
        chosen.CopyFrom(current)
        return chosen
    for preference in request.mechanism_preferences:
        if preference.type == KERNEL:
            chosen = Mechanism()
            chosen.CopyFrom(preference)
            chosen.cls = chosen.cls or LOCAL
            return chosen
    offered = ", ".join(p.type for p in request.mechanism_preferences) or "none"
    raise ProtocolError(
        f"cannot support any of the requested mechanisms ({offered}): only {KERNEL} is served"
    )


def _drop_unheld(ip_context: IPContext, held: tuple[P2PAddresses, ...]) -> None:
    """Drop addresses a previous allocation put there that we no longer hold (e.g. excluded now, or not
    recoverable after a restart), with the routes to them (Go point2pointipam removes both)."""
    wanted_src = {a.src_ip for a in held}
    wanted_dst = {a.dst_ip for a in held}
    dropped_src = {a for a in ip_context.src_ip_addrs if a not in wanted_src}
    dropped_dst = {a for a in ip_context.dst_ip_addrs if a not in wanted_dst}
    for addresses, dropped in (
        (ip_context.src_ip_addrs, dropped_src),
        (ip_context.dst_ip_addrs, dropped_dst),
    ):
        kept = [a for a in addresses if a not in dropped]
        del addresses[:]
        addresses.extend(kept)
    # A route to a peer address that is gone: src_routes lead to dst addresses and vice versa.
    for routes, gone in ((ip_context.src_routes, dropped_dst), (ip_context.dst_routes, dropped_src)):
        kept_routes = [r for r in routes if r.prefix not in gone]
        del routes[:]
        routes.extend(kept_routes)


class EndpointCore:
    """Per-connection endpoint logic; the gRPC servicer feeds it and acts on what it returns."""

    def __init__(
        self,
        name: str,
        allocator: P2PAllocator,
        netns_url: str,
        sign_token: Callable[[PeerIdentity | None, X509Material | None], tuple[str, float]],
        new_id: Callable[[], str] = new_uuid,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.allocator = allocator
        self.netns_url = netns_url
        self._sign = sign_token
        self._new_id = new_id
        self._random_bytes = random_bytes
        self._clock = clock

    def __repr__(self) -> str:
        return f"EndpointCore(name={self.name!r}, allocator={self.allocator!r})"

    def _interface_name(self, conn: Connection, mechanism: Mechanism) -> str:
        wanted = conn.labels.get(PEER_IFNAME_LABEL, "")
        if wanted:
            problem = interface_name_problem(wanted)
            if problem is not None:
                raise ProtocolError(f"label {PEER_IFNAME_LABEL}={wanted!r}: {problem}")
            return wanted
        current = mechanism.parameters.get(NAME_PARAM, "")
        if current:
            return current
        return generate_interface_name(conn.network_service, self._random_bytes)

    def _step_onto_path(
        self,
        conn: Connection,
        token: str | None,
        expires: float | None,
        peer: PeerIdentity | None,
        own: X509Material | None,
    ) -> int:
        """updatepath, updatetoken, authorize (the Go endpoint chain's order); returns the caller's index.
        Our token is signed with the SVID we presented on the caller's connection (`own`)."""
        caller_index = update_path(conn, self.name, self._new_id)
        copy_caller_token(conn, token, expires)
        own_token, own_expires = self._sign(peer, own)
        set_own_token(conn, own_token, own_expires)
        authorize_server(conn, peer, self._clock())
        return caller_index

    def request(
        self,
        request: NetworkServiceRequest,
        token: str | None,
        expires: float | None,
        peer: PeerIdentity | None = None,
        own: X509Material | None = None,
    ) -> Accepted:
        """Serve a Request from `peer` (the authenticated caller; None in plaintext). Raises ProtocolError
        or PermissionDenied without holding anything."""
        conn = Connection()
        conn.CopyFrom(request.connection)
        caller_index = self._step_onto_path(conn, token, expires, peer, own)
        # Everything that can refuse the request comes before the allocation, so a refused request
        # never holds addresses (the caller retries with a new id each time) nor releases a live
        # connection's. The servicer needs the caller's expiry for its auto-close (Go `timeout`, §4.4).
        if prev_expires(conn) is None:
            raise ProtocolError("expiration for the previous path segment cannot be nil")
        mechanism = choose_mechanism(request)
        name = self._interface_name(conn, mechanism)

        ip_context = conn.context.ip_context
        held = self.allocator.request(
            conn.id,
            src_addrs=list(ip_context.src_ip_addrs),
            dst_addrs=list(ip_context.dst_ip_addrs),
            excluded=list(ip_context.excluded_prefixes),
            key=conn.labels.get(LINK_LABEL),
            interface=name,
        )
        _drop_unheld(ip_context, held)
        apply_to_ip_context(ip_context, held)

        mechanism.parameters[NAME_PARAM] = name
        mechanism.parameters[INODE_URL_PARAM] = self.netns_url
        conn.mechanism.CopyFrom(mechanism)
        conn.state = State.UP
        trim_path(conn)

        own_view = Connection()
        own_view.CopyFrom(conn)
        restore_index(conn, caller_index)
        return Accepted(reply=conn, own_view=own_view, interface_name=name)

    def close(
        self,
        conn: Connection,
        token: str | None,
        expires: float | None,
        peer: PeerIdentity | None = None,
        own: X509Material | None = None,
    ) -> Connection:
        """Release what the connection holds; returns our view of it (our index and id). The same policies
        as a Request apply (Go runs the same chain on Close)."""
        mine = Connection()
        mine.CopyFrom(conn)
        self._step_onto_path(mine, token, expires, peer, own)
        self.allocator.release(mine.id)
        return mine
