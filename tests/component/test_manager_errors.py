"""nsm-local's NetworkService Request: the refusals a client sees before any link is made (no root).

Errors are plain Go errors in NSM, so they reach the client as UNKNOWN with the Go text (§7).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aio_helpers import grpc_calls_settled

from nsm_local.server import ServeSettings, serve_control_plane
from nsm_sdk._proto.networkservice import networkservice_pb2_grpc
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk._proto.registry.registry_pb2 import NetworkService
from nsm_sdk.agent.credentials import TOKEN_EXPIRES_KEY, TOKEN_KEY, CallTokens
from nsm_sdk.agent.nsm_client import NsmClient, RpcFailed
from nsm_sdk.identity.tokens import TokenSigner
from nsm_sdk.protocol.registry_path import RegistryPath
from nsm_sdk.protocol.requests import first_request, kernel_preference
from nsm_sdk.transport.client import dial
from nsm_sdk.transport.fdpass import open_netns_fd
from nsm_sdk.transport.urls import inode_url_for_fd

AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]


@contextlib.asynccontextmanager
async def control_plane(sock_dir: Path) -> AsyncIterator[str]:
    settings = ServeSettings(socket_path=str(sock_dir / "nsm.sock"))
    stop, ready = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve_control_plane(settings, stop, ready))
    started = asyncio.create_task(ready.wait())
    await asyncio.wait([server, started], return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        started.cancel()
        await server
    try:
        yield f"unix://{settings.socket_path}"
    finally:
        stop.set()
        await server
        await grpc_calls_settled()


@contextlib.contextmanager
def own_netns_fd() -> Iterator[int]:
    fd = open_netns_fd()
    try:
        yield fd
    finally:
        os.close(fd)


def request_for(service: str, netns_url: str, labels: dict[str, str] | None = None) -> NetworkServiceRequest:
    return first_request("nsc", "nsc-0", service, labels or {}, kernel_preference("eth1", netns_url))


def bounded(main: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        async with asyncio.timeout(30):
            await main()

    return run


async def refused(client: NsmClient, request: NetworkServiceRequest) -> RpcFailed:
    with pytest.raises(RpcFailed) as caught:
        await client.request(request, timeout=5.0)
    return caught.value


def test_request_for_an_unknown_service_is_refused_as_not_found(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        with own_netns_fd() as netns:
            async with control_plane(sock_dir) as url, dial(url, send_fds=[netns]) as (channel, _relay):
                client = NsmClient(channel, CallTokens(TokenSigner("nsc"), 600.0))
                error = await refused(client, request_for("nope", inode_url_for_fd(netns)))
                assert error.code == grpc.StatusCode.UNKNOWN
                assert "network service nope is not found" in error.details

    run_async(bounded(main))


def test_request_with_no_matching_endpoint_is_refused_as_candidates_not_found(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        with own_netns_fd() as netns:
            async with control_plane(sock_dir) as url, dial(url, send_fds=[netns]) as (channel, _relay):
                client = NsmClient(channel, CallTokens(TokenSigner("nsc"), 600.0))
                service = NetworkService(name="p2p", payload="IP")
                match = service.matches.add(source_selector={"link": "net-0"})
                match.routes.add(destination_selector={"device": "device-2"})
                await client.register_service(service, RegistryPath(), 5.0)
                error = await refused(client, request_for("p2p", inode_url_for_fd(netns), {"link": "net-0"}))
                assert error.code == grpc.StatusCode.UNKNOWN
                assert "network service endpoint candidates not found" in error.details

    run_async(bounded(main))


def test_file_netns_url_is_refused_pointing_at_inode_urls(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        async with control_plane(sock_dir) as url, dial(url) as (channel, _relay):
            client = NsmClient(channel, CallTokens(TokenSigner("nsc"), 600.0))
            error = await refused(client, request_for("p2p", "file:///proc/thread-self/ns/net"))
            assert error.code == grpc.StatusCode.UNKNOWN
            assert "file:///proc/thread-self/ns/net" in error.details
            assert "inode://" in error.details

    run_async(bounded(main))


def test_missing_token_expiry_is_refused_like_gos_timeout_server(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        with own_netns_fd() as netns:
            async with control_plane(sock_dir) as url, dial(url, send_fds=[netns]) as (channel, _relay):
                tokens = CallTokens(TokenSigner("nsc"), 600.0)
                request = request_for("p2p", inode_url_for_fd(netns))
                stub = networkservice_pb2_grpc.NetworkServiceStub(channel)
                without_expiry = tuple((k, v) for k, v in tokens.metadata() if k != TOKEN_EXPIRES_KEY)
                assert [k for k, _ in without_expiry] == [TOKEN_KEY]
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Request(request, metadata=without_expiry, timeout=5.0)
                assert caught.value.code() == grpc.StatusCode.UNKNOWN
                details = caught.value.details() or ""
                assert "expiration for the previous path segment cannot be nil" in details
                # With both keys the same request gets past that check (and fails later, on the service).
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Request(request, metadata=tokens.metadata(), timeout=5.0)
                assert "network service p2p is not found" in (caught.value.details() or "")

    run_async(bounded(main))
