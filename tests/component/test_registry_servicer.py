"""nsm-local's registry API over real grpc.aio and unix sockets (protocol doc §3.5, §6, §8.1-§8.3).

The control plane runs exactly as `nsm-local serve` does (`serve_control_plane`) on a socket in a temp
directory; clients go through the project's transport (`dial`), so socket-file fds ride on the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from local_plane import MANAGER_ID, control_plane, own_workload_id

from nsm_local import registry as registry_module
from nsm_local.manager import MANAGER_NAME
from nsm_local.server import ServeSettings
from nsm_sdk._proto.registry import registry_pb2_grpc
from nsm_sdk._proto.registry.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceQuery,
)
from nsm_sdk.agent.nsm_client import NsmClient, RpcFailed
from nsm_sdk.identity.tokens import decode_unverified
from nsm_sdk.protocol.gotime import parse_rfc3339nano, timestamp_to_epoch
from nsm_sdk.protocol.registry_path import PATH_METADATA_KEY, RegistryPath
from nsm_sdk.transport.fdpass import open_socket_file_fd
from nsm_sdk.transport.urls import inode_url_for_path

AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]
NSE_ID = own_workload_id()  # the registering process: this test, attested by nsm-local's Workload API


@contextlib.contextmanager
def endpoint_socket_file(sock_dir: Path, name: str = "nse.sock") -> Iterator[tuple[str, int]]:
    """A real listening socket file, as an NSE has, and an O_PATH fd of it (what the NSE sends)."""
    path = str(sock_dir / name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        fd = open_socket_file_fd(path)
        try:
            yield path, fd
        finally:
            os.close(fd)


def endpoint(url: str, name: str = "nse-a") -> NetworkServiceEndpoint:
    record = NetworkServiceEndpoint(name=name, url=url, network_service_names=["p2p"])
    record.network_service_labels["p2p"].labels["device"] = "device-2"
    return record


async def metadata_for(client: NsmClient, path: str) -> tuple[tuple[str, str], ...]:
    """Token metadata addressed to nsm-local (as NsmClient makes it) plus a raw `path` value."""
    peer = await client.peer("test", 5.0)
    return client.tokens.metadata(peer, extra=((PATH_METADATA_KEY, path),))


def bounded(main: Callable[[], Awaitable[Any]], limit: float = 30.0) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        async with asyncio.timeout(limit):  # a hang is a failure, not a stuck run
            return await main()

    return run


# --- endpoint registration ------------------------------------------------------------------------------


def test_endpoint_registers_with_an_inode_url_whose_socket_fd_rides_on_the_connection(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        with endpoint_socket_file(sock_dir) as (path, fd):
            url = inode_url_for_path(path)
            async with (
                control_plane(sock_dir, registration_expiry=30.0) as plane,
                plane.client(send_fds=[fd]) as client,
            ):
                before = time.time()
                reply, returned = await client.register_endpoint(endpoint(url), RegistryPath(), 5.0)
                after = time.time()

                assert (reply.name, reply.url, list(reply.network_service_names)) == ("nse-a", url, ["p2p"])
                expires = timestamp_to_epoch(reply.expiration_time)
                assert before + 30.0 - 1.0 <= expires <= after + 30.0
                assert list(reply.path_ids) == [NSE_ID, MANAGER_ID]
                assert reply.HasField("initial_registration_time")

                assert returned.index == 0
                assert len(returned.segments) == 2
                assert decode_unverified(returned.segments[0].token)["sub"] == NSE_ID
                own = returned.segments[1]
                assert own.name == MANAGER_NAME
                assert decode_unverified(own.token)["sub"] == MANAGER_ID
                assert parse_rfc3339nano(own.expires) > after

                found = [
                    r.network_service_endpoint
                    async for r in client.find_endpoints(
                        NetworkServiceEndpointQuery(
                            network_service_endpoint=NetworkServiceEndpoint(name="nse-a")
                        ),
                        timeout=5.0,
                    )
                ]
                assert [f.name for f in found] == ["nse-a"]

    run_async(bounded(main))


def test_granted_expiry_never_outlives_the_callers_token(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        with endpoint_socket_file(sock_dir) as (path, fd):
            async with (
                control_plane(sock_dir, registration_expiry=60.0) as plane,
                plane.client(send_fds=[fd], lifetime=5.0) as short,
            ):
                record = endpoint(inode_url_for_path(path))
                reply, _ = await short.register_endpoint(record, RegistryPath(), 5.0)
                # The token of that call expired at floor(sent + 5); a later token can only expire later.
                _, later_token_expiry = short.tokens.sign(await short.peer("test", 5.0))
                assert timestamp_to_epoch(reply.expiration_time) <= later_token_expiry
                assert timestamp_to_epoch(reply.expiration_time) < time.time() + 6.0

    run_async(bounded(main))


def test_path_response_header_has_gos_json_shape_with_the_callers_index(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        with endpoint_socket_file(sock_dir) as (path, fd):
            async with control_plane(sock_dir) as plane, plane.client(send_fds=[fd]) as client:
                metadata = await metadata_for(client, '{"Index":0,"PathSegments":null}')
                sent_token = dict(metadata)["nsm-client-token"]
                stub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(client.channel)
                call = stub.Register(endpoint(inode_url_for_path(path)), metadata=metadata, timeout=5.0)
                await call
                header = dict(await call.initial_metadata())
                raw = json.loads(header[PATH_METADATA_KEY])
                assert set(raw) == {"Index", "PathSegments"}
                assert raw["Index"] == 0
                caller_segment, own_segment = raw["PathSegments"]
                assert caller_segment == {"token": sent_token}
                assert set(own_segment) == {"name", "token", "expires"}
                assert all(key == key.lower() for key in own_segment)

    run_async(bounded(main))


def test_refresh_with_the_returned_path_replaces_both_tokens(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        with endpoint_socket_file(sock_dir) as (path, fd):
            async with control_plane(sock_dir) as plane, plane.client(send_fds=[fd]) as client:
                record = endpoint(inode_url_for_path(path))
                first, path_back = await client.register_endpoint(record, RegistryPath(), 5.0)
                # tokens carry whole-second expiries, and one signed within the same second is reused
                await asyncio.sleep(1.1)
                again, path_again = await client.register_endpoint(record, path_back, 5.0)
                assert (path_again.index, len(path_again.segments)) == (0, 2)
                for old, new in zip(path_back.segments, path_again.segments, strict=True):
                    assert new.token != old.token
                    assert decode_unverified(new.token)["exp"] > decode_unverified(old.token)["exp"]
                assert again.initial_registration_time == first.initial_registration_time

    run_async(bounded(main))


def test_register_without_the_socket_fd_fails_naming_the_missing_inode(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        with endpoint_socket_file(sock_dir) as (path, _fd):
            url = inode_url_for_path(path)
            async with control_plane(sock_dir) as plane, plane.client() as client:
                with pytest.raises(RpcFailed) as caught:
                    await client.register_endpoint(endpoint(url), RegistryPath(), 3.0)
                assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
                assert f"timeout in recvfd waiting for {url}" in caught.value.details

    run_async(bounded(main))


@pytest.mark.parametrize(
    ("record", "code", "message"),
    [
        (NetworkServiceEndpoint(url="unix:///x"), grpc.StatusCode.INVALID_ARGUMENT, "name is required"),
        (NetworkServiceEndpoint(name="nse-a"), grpc.StatusCode.INVALID_ARGUMENT, "url is required"),
        (
            NetworkServiceEndpoint(name="nse-a", url="tcp://10.0.0.1:5000"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "must be unix:// or inode://",
        ),
    ],
)
def test_unusable_registrations_are_refused_with_the_reason(
    run_async: AsyncRunner,
    sock_dir: Path,
    record: NetworkServiceEndpoint,
    code: grpc.StatusCode,
    message: str,
) -> None:
    async def main() -> None:
        async with control_plane(sock_dir) as plane, plane.client() as client:
            with pytest.raises(RpcFailed) as caught:
                await client.register_endpoint(record, RegistryPath(), 5.0)
            assert caught.value.code == code
            assert message in caught.value.details

    run_async(bounded(main))


def test_malformed_path_metadata_is_refused_as_invalid_argument(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        async with control_plane(sock_dir) as plane, plane.client() as client:
            stub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(client.channel)
            for bad in ('{"Index":3,"PathSegments":[{"token":"a"}]}', "[]", '{"PathSegments":[1]}'):
                metadata = await metadata_for(client, bad)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Register(endpoint("unix:///x"), metadata=metadata, timeout=5.0)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "bad registry path metadata" in (caught.value.details() or "")

    run_async(bounded(main))


def test_find_with_watch_streams_a_later_unregister_as_deleted(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        with endpoint_socket_file(sock_dir) as (path, fd):
            async with (
                control_plane(sock_dir) as plane,
                plane.client(send_fds=[fd]) as nse_client,
                plane.client() as watcher,
            ):
                record = endpoint(inode_url_for_path(path))
                _, path_back = await nse_client.register_endpoint(record, RegistryPath(), 5.0)

                query = NetworkServiceEndpointQuery(
                    network_service_endpoint=NetworkServiceEndpoint(name="nse-a"), watch=True
                )
                stream = watcher.find_endpoints(query)
                try:
                    current = await anext(stream)
                    assert (current.network_service_endpoint.name, current.deleted) == ("nse-a", False)
                    await nse_client.unregister_endpoint(record, path_back, 5.0)
                    gone = await anext(stream)
                    assert (gone.network_service_endpoint.name, gone.deleted) == ("nse-a", True)
                finally:
                    await stream.aclose()  # type: ignore[attr-defined]

    run_async(bounded(main))


# --- NetworkServices ------------------------------------------------------------------------------------


def test_network_service_register_find_unregister(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        async with control_plane(sock_dir) as plane, plane.client() as client:
            service = NetworkService(name="p2p", payload="IP")
            match = service.matches.add(source_selector={"link": "net-0"})
            match.routes.add(destination_selector={"device": "d2"})
            stored = await client.register_service(service, RegistryPath(), 5.0)
            assert (stored.name, stored.payload, list(stored.path_ids)) == ("p2p", "IP", [NSE_ID, MANAGER_ID])
            assert stored.matches == service.matches

            async def names() -> list[str]:
                query = NetworkServiceQuery(network_service=NetworkService(payload="IP"))
                return [r.network_service.name async for r in client.find_services(query, timeout=5.0)]

            assert await names() == ["p2p"]
            stub = registry_pb2_grpc.NetworkServiceRegistryStub(client.channel)
            metadata = await metadata_for(client, RegistryPath().to_json())
            await stub.Unregister(NetworkService(name="p2p"), metadata=metadata, timeout=5.0)
            assert await names() == []

    run_async(bounded(main))


def test_a_service_over_the_cap_is_refused_as_resource_exhausted_and_the_rest_stay(
    run_async: AsyncRunner, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "MAX_SERVICES", 1)

    async def main() -> None:
        async with control_plane(sock_dir) as plane, plane.client() as client:
            await client.register_service(NetworkService(name="p2p"), RegistryPath(), 5.0)
            with pytest.raises(RpcFailed) as refused:
                await client.register_service(NetworkService(name="more"), RegistryPath(), 5.0)
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at most 1 network services" in refused.value.details
            query = NetworkServiceQuery(network_service=NetworkService())
            assert [r.network_service.name async for r in client.find_services(query, timeout=5.0)] == ["p2p"]

    run_async(bounded(main))


def test_registered_network_service_survives_a_control_plane_restart(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        async with control_plane(sock_dir) as plane, plane.client() as client:
            await client.register_service(NetworkService(name="p2p"), RegistryPath(), 5.0)
        async with control_plane(sock_dir) as plane, plane.client() as client:
            query = NetworkServiceQuery(network_service=NetworkService(name="p2p"))
            found = [r async for r in client.find_services(query, timeout=5.0)]
            assert [r.network_service.name for r in found] == ["p2p"]

    run_async(bounded(main))


def test_state_and_the_ca_key_stay_out_of_the_socket_directory(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    """The socket's directory is mounted into every sidecar container: nothing secret may be in it."""
    assert ServeSettings().directory != Path(ServeSettings().socket_path).parent

    async def main() -> None:
        async with control_plane(sock_dir) as plane, plane.client() as client:
            await client.register_service(NetworkService(name="p2p"), RegistryPath(), 5.0)

    run_async(bounded(main))
    state = sock_dir / "state"
    assert (state / "nsm-local-ca" / "ca-key.pem").is_file() and (state / "nsm-local-services.json").is_file()
    assert state.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in sock_dir.iterdir()) == ["state"], "only sockets (now closed) and state"


def test_a_registration_whose_socket_file_was_deleted_is_not_dialled_again(sock_dir: Path) -> None:
    from nsm_local.registry_servicer import _unlinked

    path = sock_dir / "gone.sock"
    path.write_text("")
    fd = os.open(path, os.O_PATH)
    try:
        assert not _unlinked(fd) and not _unlinked(None)
        path.unlink()
        assert _unlinked(fd), "a new socket with the same inode number must be dialled through its own fd"
    finally:
        os.close(fd)


def test_a_service_with_a_match_per_link_of_a_big_topology_is_accepted(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        async with control_plane(sock_dir) as plane, plane.client() as client:
            service = NetworkService(name="topo", payload="IP")
            for link in range(1500):  # what nsm-topo writes for a topology of 1500 links
                match = service.matches.add(source_selector={"link": f"net-{link}"})
                match.routes.add(destination_selector={"device": f"r{link % 1000}"})
            stored = await client.register_service(service, RegistryPath(), 10.0)
            assert len(stored.matches) == 1500

    run_async(bounded(main))
