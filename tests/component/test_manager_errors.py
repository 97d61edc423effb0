"""nsm-local's NetworkService Request: the refusals a client sees before any link is made (no root).

Each carries the Go text (§7) and the status of its error class: NOT_FOUND for what is not registered,
INVALID_ARGUMENT for a malformed request, PERMISSION_DENIED for a policy (Go's nsmgr answers UNKNOWN for
all but the last; clients retry whatever the code).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from local_plane import control_plane, own_netns_fd

from nsm_local import manager as manager_module
from nsm_sdk._proto.networkservice import networkservice_pb2_grpc
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk._proto.registry.registry_pb2 import NetworkService
from nsm_sdk.agent.credentials import TOKEN_EXPIRES_KEY, TOKEN_KEY
from nsm_sdk.agent.nsm_client import NsmClient, RpcFailed
from nsm_sdk.protocol.registry_path import RegistryPath
from nsm_sdk.protocol.requests import first_request, kernel_preference
from nsm_sdk.transport.urls import inode_url_for_fd

AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]


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
            async with control_plane(sock_dir) as plane, plane.client(send_fds=[netns]) as client:
                error = await refused(client, request_for("nope", inode_url_for_fd(netns)))
                assert error.code == grpc.StatusCode.NOT_FOUND
                assert "network service nope is not found" in error.details

    run_async(bounded(main))


def test_request_with_no_matching_endpoint_is_refused_as_candidates_not_found(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        with own_netns_fd() as netns:
            async with control_plane(sock_dir) as plane, plane.client(send_fds=[netns]) as client:
                service = NetworkService(name="p2p", payload="IP")
                match = service.matches.add(source_selector={"link": "net-0"})
                match.routes.add(destination_selector={"device": "device-2"})
                await client.register_service(service, RegistryPath(), 5.0)
                error = await refused(client, request_for("p2p", inode_url_for_fd(netns), {"link": "net-0"}))
                assert error.code == grpc.StatusCode.NOT_FOUND
                assert "network service endpoint candidates not found" in error.details

    run_async(bounded(main))


def test_file_netns_url_is_refused_pointing_at_inode_urls(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        async with control_plane(sock_dir) as plane, plane.client() as client:
            error = await refused(client, request_for("p2p", "file:///proc/thread-self/ns/net"))
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "file:///proc/thread-self/ns/net" in error.details
            assert "inode://" in error.details

    run_async(bounded(main))


@pytest.mark.parametrize(
    ("insecure", "code", "reason"),
    [
        # secure: without its expiry the caller's token is ignored (Go `token.FromContext`), so the path has
        # an empty token and nsmgr's tokens_valid policy refuses it before anything else looks at it
        (False, grpc.StatusCode.PERMISSION_DENIED, "policy tokens_valid"),
        # insecure (no policies): Go's timeout server is what refuses it
        (True, grpc.StatusCode.INVALID_ARGUMENT, "expiration for the previous path segment cannot be nil"),
    ],
    ids=["secure", "insecure"],
)
def test_missing_token_expiry_is_refused_like_nsmgr(
    run_async: AsyncRunner, sock_dir: Path, insecure: bool, code: grpc.StatusCode, reason: str
) -> None:
    async def main() -> None:
        with own_netns_fd() as netns:
            async with (
                control_plane(sock_dir, insecure=insecure) as plane,
                plane.client(send_fds=[netns]) as client,
            ):
                request = request_for("p2p", inode_url_for_fd(netns))
                stub = networkservice_pb2_grpc.NetworkServiceStub(client.channel)
                peer = await client.peer("test", 5.0)
                metadata = client.tokens.metadata(peer)
                without_expiry = tuple((k, v) for k, v in metadata if k != TOKEN_EXPIRES_KEY)
                assert [k for k, _ in without_expiry] == [TOKEN_KEY]
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Request(request, metadata=without_expiry, timeout=5.0)
                assert caught.value.code() == code
                assert reason in (caught.value.details() or "")
                # With both keys the same request gets past that check (and fails later, on the service).
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Request(request, metadata=metadata, timeout=5.0)
                assert "network service p2p is not found" in (caught.value.details() or "")

    run_async(bounded(main))


def test_a_new_connection_over_the_cap_is_refused_as_resource_exhausted(
    run_async: AsyncRunner, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_module, "MAX_CONNECTIONS", 0)

    async def main() -> None:
        with own_netns_fd() as netns:
            async with control_plane(sock_dir) as plane, plane.client(send_fds=[netns]) as client:
                error = await refused(client, request_for("p2p", inode_url_for_fd(netns)))
                assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "at most 0 connections" in error.details

    run_async(bounded(main))


def test_nsm_local_lifts_its_soft_open_file_limit_to_the_hard_one() -> None:
    probe = (
        "import resource\n"
        "from nsm_local.__main__ import raise_fd_limit\n"
        "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[1])"
    )
    result = subprocess.run(
        ["bash", "-c", 'ulimit -Sn 256 && exec "$0" -c "$1"', sys.executable, probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    soft, hard = (int(field) for field in result.stdout.split())
    assert soft == min(hard, 1 << 20) and soft > 256
