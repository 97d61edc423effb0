"""The endpoint's gRPC face, called like a forwarder calls it (protocol doc §8.4-§8.6), no root needed.

EndpointServicer + MonitorServicer are wired as nse_sidecar/agent.py does, behind the project's `serve()`,
which sends the endpoint's netns fd with the first bytes of every accepted connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aio_helpers import grpc_calls_settled

from nse_sidecar.endpoint import Accepted, EndpointCore
from nse_sidecar.servicer import EndpointServicer
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
from nsm_sdk.agent.credentials import CallTokens
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.monitor_hub import MonitorHub, MonitorServicer
from nsm_sdk.agent.nsm_client import NsmClient, RpcFailed
from nsm_sdk.identity.tokens import TokenSigner, decode_unverified, default_spiffe_id
from nsm_sdk.protocol.gotime import timestamp_to_epoch
from nsm_sdk.protocol.ipam import NsmP2PAllocator
from nsm_sdk.transport.client import ClientRelay, dial
from nsm_sdk.transport.fdpass import open_netns_fd
from nsm_sdk.transport.fdstore import inode_key_of
from nsm_sdk.transport.server import serve
from nsm_sdk.transport.urls import inode_url_for_fd, parse_inode_url

AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]
FORWARDER = "forwarder-local"
FWD_ID = "fwd-uuid-1"


@dataclass
class Endpoint:
    """A running endpoint and a forwarder-side client connected to it."""

    client: NsmClient
    relay: ClientRelay
    netns_fd: int
    allocator: NsmP2PAllocator
    hub: MonitorHub
    servicer: EndpointServicer
    accepted: list[Accepted] = field(default_factory=list)
    closed: list[Connection] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running_endpoint(sock_dir: Path, caller_token_lifetime: float = 600.0) -> AsyncIterator[Endpoint]:
    netns_fd = open_netns_fd()
    try:
        hub = MonitorHub()
        allocator = NsmP2PAllocator([["169.254.0.0/16"]])
        nse_tokens = CallTokens(TokenSigner("nse-a"), 600.0)
        core = EndpointCore("nse-a", allocator, inode_url_for_fd(netns_fd), nse_tokens.sign)
        accepted: list[Accepted] = []
        closed: list[Connection] = []
        servicer = EndpointServicer(core, hub, accepted.append, closed.append, EventLog("test.nse"))

        def register(server: grpc.aio.Server) -> None:
            networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(servicer, server)
            connection_pb2_grpc.add_MonitorConnectionServicer_to_server(MonitorServicer(hub), server)

        path = str(sock_dir / "listen.on")
        async with serve(path, register, send_on_accept=[netns_fd], stop_grace=0.5), \
                dial(f"unix://{path}") as (channel, relay):
            forwarder_tokens = CallTokens(TokenSigner(FORWARDER), caller_token_lifetime)
            try:
                client = NsmClient(channel, forwarder_tokens)
                yield Endpoint(client, relay, netns_fd, allocator, hub, servicer, accepted, closed)
            finally:
                servicer.close_all()
                hub.close()
        await grpc_calls_settled()
    finally:
        os.close(netns_fd)


def forwarder_request(labels: dict[str, str] | None = None) -> NetworkServiceRequest:
    """What nsm-local's forwarder hop (or forwarder-vpp) sends: path at index 2, MEMIF listed first."""
    request = NetworkServiceRequest()
    conn = request.connection
    conn.id = FWD_ID
    conn.network_service = "p2p"
    conn.network_service_endpoint_name = "nse-a"
    conn.payload = "ETHERNET"
    conn.labels.update(labels if labels is not None else {"link": "net-0", "peerif": "eth7"})
    for name, seg_id in (("nsc", "nsc-0"), ("nsmgr-local", "mgr-uuid"), (FORWARDER, FWD_ID)):
        conn.path.path_segments.add(name=name, id=seg_id, token=f"old-{name}")
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


def test_reply_to_a_forwarder_request_is_complete_and_its_netns_fd_arrives(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir) as nse:
            reply = await nse.client.request(forwarder_request(), timeout=5.0)

            segments = reply.path.path_segments
            assert [s.name for s in segments] == ["nsc", "nsmgr-local", FORWARDER, "nse-a"]
            assert (reply.path.index, reply.id, reply.state) == (2, FWD_ID, State.UP)
            forwarder_claims = decode_unverified(segments[2].token)
            assert forwarder_claims["sub"] == default_spiffe_id(FORWARDER)
            assert timestamp_to_epoch(segments[2].expires) == forwarder_claims["exp"]
            own_claims = decode_unverified(segments[3].token)
            assert own_claims["sub"] == default_spiffe_id("nse-a")
            assert timestamp_to_epoch(segments[3].expires) == own_claims["exp"]
            assert segments[3].id and segments[3].id != FWD_ID

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


def test_refused_request_reaches_the_forwarder_as_unknown_with_the_reason(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir) as nse:
            with pytest.raises(RpcFailed) as caught:
                await nse.client.request(forwarder_request({"peerif": "name-much-too-long"}), timeout=5.0)
            assert caught.value.code == grpc.StatusCode.UNKNOWN
            assert "label peerif='name-much-too-long'" in caught.value.details
            assert nse.allocator.allocate("probe")[0].dst_ip == "169.254.0.0/32"  # nothing was held
            assert nse.accepted == []

    run_async(bounded(main))


async def next_event(events: AsyncIterator[ConnectionEvent]) -> ConnectionEvent:
    return await anext(events)


def test_monitor_sends_initial_then_update_then_delete_after_close(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir) as nse:
            events = nse.client.monitor(forwarder_selector())
            try:
                initial = await next_event(events)
                assert initial.type == ConnectionEventType.INITIAL_STATE_TRANSFER
                assert len(initial.connections) == 0

                reply = await nse.client.request(forwarder_request(), timeout=5.0)
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
                assert nse.servicer._locks == {}  # internal bookkeeping: nothing kept for a closed id
            finally:
                await events.aclose()  # type: ignore[attr-defined]

    run_async(bounded(main))


def test_monitor_initial_state_lists_connections_already_open(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir) as nse:
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
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir) as nse:
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
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, caller_token_lifetime=2.0) as nse:
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
                assert nse.servicer._locks == {}
            finally:
                await events.aclose()  # type: ignore[attr-defined]

    run_async(bounded(main))


def test_request_without_any_caller_expiry_is_refused_and_holds_nothing(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir) as nse:
            stub = networkservice_pb2_grpc.NetworkServiceStub(nse.client.channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Request(forwarder_request(), timeout=5.0)  # no token metadata, no expires in path
            assert caught.value.code() == grpc.StatusCode.UNKNOWN
            assert "expiration for the previous path segment cannot be nil" in (caught.value.details() or "")
            assert nse.allocator.allocate("probe")[0].dst_ip == "169.254.0.0/32"
            assert nse.hub.connections == {}

    run_async(bounded(main))
