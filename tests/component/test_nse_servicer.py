"""The endpoint's gRPC face, called like a forwarder calls it (protocol doc §8.4-§8.6), no root needed.

EndpointServicer + MonitorServicer are wired as nse_sidecar/agent.py does, behind the project's `serve()`,
with mTLS on both sides: the forwarder and the endpoint hold X.509-SVIDs (different SPIFFE ids) from an
in-memory development CA, sign their tokens with those keys, and the endpoint applies NSM's server
policies (§3.4) to what the forwarder sends. The endpoint's netns fd goes back with each Request reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aio_helpers import grpc_calls_settled
from relay_helpers import eventually
from token_oracle import verify

from nse_sidecar.endpoint import Accepted, EndpointCore
from nse_sidecar.servicer import EndpointServicer
from nsm_local.dev_ca import DevCA
from nsm_sdk._proto.networkservice import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_sdk._proto.networkservice.connection_pb2 import (
    Connection,
    ConnectionEvent,
    ConnectionEventType,
    MonitorScopeSelector,
    PathSegment,
    State,
)
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk.agent.credentials import CallTokens, Metadata
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.monitor_hub import MonitorHub, MonitorServicer
from nsm_sdk.agent.nsm_client import NsmClient, RpcFailed
from nsm_sdk.agent.security import secure_identity
from nsm_sdk.identity.peer import PeerIdentity
from nsm_sdk.identity.policies import check_client
from nsm_sdk.identity.tokens import TokenSigner
from nsm_sdk.identity.x509 import X509Material
from nsm_sdk.protocol.gotime import timestamp_to_epoch
from nsm_sdk.protocol.ipam import NsmP2PAllocator
from nsm_sdk.transport.client import ClientRelay, dial
from nsm_sdk.transport.fdpass import open_netns_fd
from nsm_sdk.transport.fdstore import inode_key_of
from nsm_sdk.transport.relay import RelayConnection
from nsm_sdk.transport.server import ServerHandle, serve
from nsm_sdk.transport.tls import TlsSecurity
from nsm_sdk.transport.urls import inode_url_for_fd, parse_inode_url

AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]
TD = "nsm.local"
FORWARDER = "forwarder-local"
FWD_ID = "fwd-uuid-1"
NSE_SPIFFE_ID = f"spiffe://{TD}/ns/default/pod/nse-a"
FWD_SPIFFE_ID = f"spiffe://{TD}/ns/nsm-system/pod/forwarder-local"
NSC_SPIFFE_ID = f"spiffe://{TD}/ns/default/pod/nsc"
NSMGR_SPIFFE_ID = f"spiffe://{TD}/ns/nsm-system/pod/nsmgr"
SVID_TTL = 3600.0


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.generate(TD)


@dataclass
class Endpoint:
    """A running endpoint and a forwarder-side client connected to it over mTLS."""

    client: NsmClient
    relay: ClientRelay
    handle: ServerHandle
    netns_fd: int
    allocator: NsmP2PAllocator
    hub: MonitorHub
    servicer: EndpointServicer
    nse_svid: X509Material
    forwarder_svid: X509Material
    accepted: list[Accepted] = field(default_factory=list)
    closed: list[Connection] = field(default_factory=list)

    def forwarder_signer(self) -> TokenSigner:
        return TokenSigner.from_material(self.forwarder_svid)

    async def impostor_metadata(self) -> Metadata:
        """Call metadata with the forwarder's claims (sub, aud, exp) but signed by a key that is not the
        one of the SVID the forwarder presented on the connection."""
        peer = await self.client.peer("probe", 5.0)
        return CallTokens(TokenSigner(spiffe_id=FWD_SPIFFE_ID), 600.0).metadata(peer)


@contextlib.asynccontextmanager
async def running_endpoint(
    sock_dir: Path,
    ca: DevCA,
    caller_token_lifetime: float = 600.0,
    nse_token_signer: TokenSigner | None = None,
) -> AsyncIterator[Endpoint]:
    """`nse_token_signer` signs the endpoint's own tokens instead of the SVID it presented."""
    netns_fd = open_netns_fd()
    try:
        nse_svid = ca.issue(NSE_SPIFFE_ID, SVID_TTL)
        forwarder_svid = ca.issue(FWD_SPIFFE_ID, SVID_TTL)
        hub = MonitorHub()
        allocator = NsmP2PAllocator([["169.254.0.0/16"]])
        nse_security, nse_tokens = secure_identity(lambda: nse_svid, 600.0)

        def sign(peer: PeerIdentity | None, own: X509Material | None) -> tuple[str, float]:
            if nse_token_signer is None:
                return nse_tokens.sign(peer, own)
            return nse_token_signer.sign(peer.spiffe_id if peer else None, 600.0, time.time())

        core = EndpointCore("nse-a", allocator, inode_url_for_fd(netns_fd), sign)
        accepted: list[Accepted] = []
        closed: list[Connection] = []
        served: list[ServerHandle] = []

        def connection_for(context: grpc.aio.ServicerContext[Any, Any]) -> RelayConnection | None:
            return served[0].connection_for(context)

        servicer = EndpointServicer(
            core, hub, accepted.append, closed.append, EventLog("test.nse"), connection_for, netns_fd
        )

        def register(server: grpc.aio.Server) -> None:
            networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(servicer, server)
            connection_pb2_grpc.add_MonitorConnectionServicer_to_server(MonitorServicer(hub), server)

        path = str(sock_dir / "listen.on")
        forwarder_security = TlsSecurity(lambda: forwarder_svid)
        async with serve(path, register, security=nse_security, stop_grace=0.5) as handle, \
                dial(f"unix://{path}", security=forwarder_security) as (channel, relay):
            served.append(handle)
            forwarder_tokens = CallTokens(TokenSigner.from_material(forwarder_svid), caller_token_lifetime)
            try:
                client = NsmClient(channel, forwarder_tokens, relay)
                yield Endpoint(
                    client, relay, handle, netns_fd, allocator, hub, servicer, nse_svid, forwarder_svid,
                    accepted, closed,
                )
            finally:
                servicer.close_all()
                hub.close()
        await grpc_calls_settled()
    finally:
        os.close(netns_fd)


def upstream_token(subject: str, audience: str) -> str:
    """A token of a hop before the forwarder (its own key: only the TLS peer's token is verified)."""
    token, _ = TokenSigner(spiffe_id=subject).sign(audience, 600.0, time.time())
    return token


def forwarder_request(
    labels: dict[str, str] | None = None, nsmgr_audience: str = FWD_SPIFFE_ID
) -> NetworkServiceRequest:
    """What nsm-local's forwarder hop (or forwarder-vpp) sends: path at index 2, MEMIF listed first.

    The NSC's and nsmgr's tokens chain to the forwarder; the forwarder's own segment gets the token of
    the call's metadata at the endpoint.
    """
    request = NetworkServiceRequest()
    conn = request.connection
    conn.id = FWD_ID
    conn.network_service = "p2p"
    conn.network_service_endpoint_name = "nse-a"
    conn.payload = "ETHERNET"
    conn.labels.update(labels if labels is not None else {"link": "net-0", "peerif": "eth7"})
    tokens = (
        upstream_token(NSC_SPIFFE_ID, NSMGR_SPIFFE_ID),
        upstream_token(NSMGR_SPIFFE_ID, nsmgr_audience),
        "old-forwarder",
    )
    for (name, seg_id), token in zip(
        (("nsc", "nsc-0"), ("nsmgr-local", "mgr-uuid"), (FORWARDER, FWD_ID)), tokens, strict=True
    ):
        conn.path.path_segments.add(name=name, id=seg_id, token=token)
    conn.path.index = 2
    request.mechanism_preferences.add(cls="LOCAL", type="MEMIF")
    request.mechanism_preferences.add(cls="LOCAL", type="KERNEL")
    return request


def forwarder_selector() -> MonitorScopeSelector:
    return MonitorScopeSelector(path_segments=[PathSegment(id=FWD_ID, name=FORWARDER)])


def bounded(main: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        async with asyncio.timeout(30):
            await main()

    return run


def test_reply_to_a_forwarder_request_is_complete_chains_and_its_netns_fd_arrives(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse:
            reply = await nse.client.request(forwarder_request(), timeout=5.0, check_reply=True)

            segments = reply.path.path_segments
            assert [s.name for s in segments] == ["nsc", "nsmgr-local", FORWARDER, "nse-a"]
            assert (reply.path.index, reply.id, reply.state) == (2, FWD_ID, State.UP)
            # The forwarder's call token, addressed to the endpoint it authenticated over mTLS ...
            forwarder_claims = verify(segments[2].token, nse.forwarder_svid.private_key.public_key())
            assert (forwarder_claims["sub"], forwarder_claims["aud"]) == (FWD_SPIFFE_ID, [NSE_SPIFFE_ID])
            assert timestamp_to_epoch(segments[2].expires) == forwarder_claims["exp"]
            # ... and the endpoint's own, signed with its SVID key and addressed back to the forwarder.
            own_claims = verify(segments[3].token, nse.nse_svid.private_key.public_key())
            assert (own_claims["sub"], own_claims["aud"]) == (NSE_SPIFFE_ID, [FWD_SPIFFE_ID])
            assert timestamp_to_epoch(segments[3].expires) == own_claims["exp"]
            assert segments[3].id and segments[3].id != FWD_ID
            tokens = [segment.token for segment in segments]
            check_client(tokens, reply.path.index, nse.nse_svid.private_key.public_key(), time.time())

            # Each side saw the other's SPIFFE id on the connection.
            connection = nse.relay.current_connection()
            assert connection is not None and connection.peer is not None
            assert connection.peer.spiffe_id == NSE_SPIFFE_ID
            assert [c.peer.spiffe_id for c in nse.handle.relay.connections if c.peer] == [FWD_SPIFFE_ID]

            mechanism = reply.mechanism
            assert (mechanism.cls, mechanism.type) == ("LOCAL", "KERNEL")
            assert mechanism.parameters["name"] == "eth7"
            dev, ino = parse_inode_url(mechanism.parameters["inodeURL"])
            fd = await nse.relay.wait_fd(dev, ino, 5.0)
            try:
                assert inode_key_of(fd) == inode_key_of(nse.netns_fd)
            finally:
                os.close(fd)

            ctx = reply.context.ip_context
            assert list(ctx.src_ip_addrs) == ["169.254.0.1/32"]
            assert list(ctx.dst_ip_addrs) == ["169.254.0.0/32"]
            assert [a.interface_name for a in nse.accepted] == ["eth7"]

    run_async(bounded(main))


def test_malformed_request_reaches_the_forwarder_as_invalid_argument_with_the_reason(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse:
            with pytest.raises(RpcFailed) as caught:
                await nse.client.request(forwarder_request({"peerif": "name-much-too-long"}), timeout=5.0)
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "label peerif='name-much-too-long'" in caught.value.details
            assert nse.allocator.allocate("probe")[0].dst_ip == "169.254.0.0/32"  # nothing was held
            assert nse.accepted == []

    run_async(bounded(main))


def test_request_whose_path_does_not_chain_is_permission_denied_and_holds_nothing(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse:
            request = forwarder_request(nsmgr_audience=f"spiffe://{TD}/someone-else")
            with pytest.raises(RpcFailed) as caught:
                await nse.client.request(request, timeout=5.0)
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert "tokens_chained" in caught.value.details
            assert nse.allocator.allocate("probe")[0].dst_ip == "169.254.0.0/32"  # nothing was held
            assert (nse.accepted, nse.hub.connections) == ([], {})

    run_async(bounded(main))


def test_call_token_not_signed_by_the_tls_peer_is_permission_denied(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse:
            stub = networkservice_pb2_grpc.NetworkServiceStub(nse.client.channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Request(forwarder_request(), metadata=await nse.impostor_metadata(), timeout=5.0)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "prev_token_signed" in (caught.value.details() or "")
            assert (nse.accepted, nse.hub.connections) == ([], {})

    run_async(bounded(main))


def test_close_refused_by_the_policies_keeps_the_connection(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse:
            reply = await nse.client.request(forwarder_request(), timeout=5.0)
            own_id = reply.path.path_segments[3].id
            stub = networkservice_pb2_grpc.NetworkServiceStub(nse.client.channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Close(reply, metadata=await nse.impostor_metadata(), timeout=5.0)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert nse.closed == []
            assert list(nse.hub.connections) == [own_id]
            assert nse.allocator.held(own_id) != ()

            await nse.client.close(reply, timeout=5.0)  # the forwarder itself may
            assert [c.id for c in nse.closed] == [own_id]

    run_async(bounded(main))


def test_caller_refuses_a_reply_whose_endpoint_token_is_not_signed_by_the_endpoint(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        # The endpoint signs its own segment with a key other than its SVID's: the client policy
        # (next_token_signed, cmd-nsc's check) refuses the reply.
        forged = TokenSigner(spiffe_id=NSE_SPIFFE_ID)
        async with running_endpoint(sock_dir, ca, nse_token_signer=forged) as nse:
            connection = await nse.client.connection("probe", 5.0)
            with pytest.raises(RpcFailed) as caught:
                await nse.client.request(forwarder_request(), timeout=5.0, check_reply=True)
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert "next_token_signed" in caught.value.details
            # asked twice: a server that rotated its SVID since our handshake gets one more try on a
            # new connection; this one signs with a foreign key every time
            assert [a.interface_name for a in nse.accepted] == ["eth7", "eth7"]
            # the second time as a refresh of what the first made, not as a second connection
            assert len({a.own_view.id for a in nse.accepted}) == 1
            # The connection is dropped, so that a retry sees the server's certificate afresh.
            assert connection is not None
            async with asyncio.timeout(5.0):
                await eventually(lambda: connection.closed)

    run_async(bounded(main))


async def next_event(events: AsyncIterator[ConnectionEvent]) -> ConnectionEvent:
    return await anext(events)


def test_monitor_sends_initial_then_update_then_delete_after_close(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse:
            events = nse.client.monitor(forwarder_selector())
            try:
                initial = await next_event(events)
                assert initial.type == ConnectionEventType.INITIAL_STATE_TRANSFER
                assert len(initial.connections) == 0
                (connection,) = nse.relay.connections
                assert connection.received.keys() == [], "the netns fd goes only with a Request reply"

                reply = await nse.client.request(forwarder_request(), timeout=5.0)
                assert connection.received.keys() == [inode_key_of(nse.netns_fd)]
                own_id = reply.path.path_segments[3].id
                update = await next_event(events)
                assert update.type == ConnectionEventType.UPDATE
                assert list(update.connections) == [own_id]
                seen = update.connections[own_id]
                assert (seen.path.index, seen.id, seen.state) == (3, own_id, State.UP)

                await nse.client.close(reply, timeout=5.0)
                delete = await next_event(events)
                assert delete.type == ConnectionEventType.DELETE
                assert list(delete.connections) == [own_id]
                assert delete.connections[own_id].state == State.DOWN
                assert [c.id for c in nse.closed] == [own_id]
                assert nse.allocator.held(own_id) == ()
                assert len(nse.servicer._locks) == 0  # internal bookkeeping: nothing kept for a closed id
            finally:
                await events.aclose()  # type: ignore[attr-defined]

    run_async(bounded(main))


def test_monitor_initial_state_lists_connections_already_open(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse:
            reply = await nse.client.request(forwarder_request(), timeout=5.0)
            events = nse.client.monitor(forwarder_selector())
            try:
                initial = await next_event(events)
                assert initial.type == ConnectionEventType.INITIAL_STATE_TRANSFER
                assert list(initial.connections) == [reply.path.path_segments[3].id]
            finally:
                await events.aclose()  # type: ignore[attr-defined]

    run_async(bounded(main))


def test_refresh_keeps_id_name_and_addresses_and_is_an_update(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse:
            first = await nse.client.request(forwarder_request(), timeout=5.0)
            events = nse.client.monitor(forwarder_selector())
            try:
                await next_event(events)  # initial
                refresh = forwarder_request()
                refresh.connection.CopyFrom(first)
                again = await nse.client.request(refresh, timeout=5.0)
                assert again.path.path_segments[3].id == first.path.path_segments[3].id
                assert again.mechanism.parameters["name"] == first.mechanism.parameters["name"]
                assert again.context == first.context
                assert (await next_event(events)).type == ConnectionEventType.UPDATE
            finally:
                await events.aclose()  # type: ignore[attr-defined]

    run_async(bounded(main))


def test_connection_is_closed_by_the_endpoint_at_the_callers_expiry(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca, caller_token_lifetime=2.0) as nse:
            events = nse.client.monitor(forwarder_selector())
            try:
                await next_event(events)  # initial
                reply = await nse.client.request(forwarder_request(), timeout=1.0)
                own_id = reply.path.path_segments[3].id
                assert (await next_event(events)).type == ConnectionEventType.UPDATE
                # No refresh: the endpoint closes by itself at the forwarder token's expiry.
                delete = await next_event(events)
                assert delete.type == ConnectionEventType.DELETE
                assert list(delete.connections) == [own_id]
                assert [c.id for c in nse.closed] == [own_id]
                assert nse.allocator.held(own_id) == ()
                assert nse.hub.connections == {}
                assert len(nse.servicer._locks) == 0
            finally:
                await events.aclose()  # type: ignore[attr-defined]

    run_async(bounded(main))


def test_request_without_any_caller_expiry_is_refused_and_holds_nothing(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse:
            request = forwarder_request()
            # The forwarder's own token in its segment satisfies the policies, but nothing says when it
            # expires: no `expires` in the path and no token metadata on the call.
            forwarder_token, _ = nse.forwarder_signer().sign(NSE_SPIFFE_ID, 600.0, time.time())
            request.connection.path.path_segments[2].token = forwarder_token
            stub = networkservice_pb2_grpc.NetworkServiceStub(nse.client.channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Request(request, timeout=5.0)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "expiration for the previous path segment cannot be nil" in (caught.value.details() or "")
            assert nse.allocator.allocate("probe")[0].dst_ip == "169.254.0.0/32"
            assert nse.hub.connections == {}

    run_async(bounded(main))
