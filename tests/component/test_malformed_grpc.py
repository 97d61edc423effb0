"""Malformed gRPC input to nse-sidecar's servicer and to nsm-local's manager and registry, over real gRPC on
unix sockets with mTLS and real tokens: each bad message gets a clear status with the code of its error
class (never grpcio's UNKNOWN "Unexpected <class ...>" of an unhandled exception), the server keeps serving,
and no fd is left behind in this process, where the servers run.

Cases are hand-built families (path, ids, tokens, fds, mechanisms, label maps, size, floods) and messages
generated from the protobuf schema (`proto_strategies`), alone or merged into a good request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from local_plane import Plane, control_plane, own_netns_fd
from proto_strategies import messages
from test_nse_servicer import Endpoint, forwarder_request, running_endpoint

from nsm_local.dev_ca import DevCA
from nsm_sdk._proto.networkservice import networkservice_pb2_grpc
from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk._proto.registry import registry_pb2_grpc
from nsm_sdk._proto.registry.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
)
from nsm_sdk.agent.credentials import CallTokens, Metadata
from nsm_sdk.agent.nsm_client import NsmClient
from nsm_sdk.identity.tokens import TokenSigner
from nsm_sdk.protocol.labels import MAX_LABEL_BYTES, MAX_LABELS
from nsm_sdk.protocol.registry_path import PATH_METADATA_KEY, RegistryPath
from nsm_sdk.protocol.requests import first_request, kernel_preference
from nsm_sdk.transport.client import MAX_MESSAGE_BYTES, dial
from nsm_sdk.transport.tls import TlsSecurity
from nsm_sdk.transport.urls import inode_url_for_fd

AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]
Code = grpc.StatusCode
CALL_TIMEOUT = 3.0
UNLIMITED_SEND = (("grpc.max_send_message_length", -1),)
GENERATED = settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
# Codes a refusal may carry: not UNKNOWN (an unhandled exception, or a plain error), not INTERNAL.
REFUSALS = {
    Code.INVALID_ARGUMENT,
    Code.PERMISSION_DENIED,
    Code.NOT_FOUND,
    Code.RESOURCE_EXHAUSTED,
    Code.DEADLINE_EXCEEDED,
    Code.ALREADY_EXISTS,
    Code.FAILED_PRECONDITION,
}


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.generate("nsm.local")


def bounded(main: Callable[[], Awaitable[None]], limit: float = 120) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        async with asyncio.timeout(limit):
            await main()

    return run


async def outcome(call: Awaitable[Any]) -> tuple[Code, str, Any]:
    """(code, details, reply) of one call; OK with the reply when it succeeded."""
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", None
    return Code.OK, "", reply


def assert_clear_refusal(code: Code, details: str, allowed: set[Code] = REFUSALS) -> None:
    assert code in allowed, (code, details)
    assert details and not details.startswith("Unexpected"), (code, details)


def labels_beyond_the_cap() -> dict[str, str]:
    return {f"k{i}": "v" for i in range(MAX_LABELS * 8)}


# --- nse-sidecar -------------------------------------------------------------------------------------------


def spoiled_forwarder_request(spoil: Callable[[NetworkServiceRequest], None]) -> NetworkServiceRequest:
    request = forwarder_request()
    spoil(request)
    return request


def _only_memif(request: NetworkServiceRequest) -> None:
    del request.mechanism_preferences[:]
    request.mechanism_preferences.add(cls="LOCAL", type="MEMIF")


ENDPOINT_FAMILIES: list[tuple[str, Callable[[NetworkServiceRequest], None], Code]] = [
    ("unknown mechanism", _only_memif, Code.INVALID_ARGUMENT),
    ("no mechanism", lambda r: r.ClearField("mechanism_preferences"), Code.INVALID_ARGUMENT),
    ("bad peerif", lambda r: r.connection.labels.update({"peerif": "x/y"}), Code.INVALID_ARGUMENT),
    ("huge label map", lambda r: r.connection.labels.update(labels_beyond_the_cap()), Code.INVALID_ARGUMENT),
    (
        "huge label",
        lambda r: r.connection.labels.update({"k": "v" * (MAX_LABEL_BYTES + 1)}),
        Code.INVALID_ARGUMENT,
    ),
    ("index beyond the path", lambda r: setattr(r.connection.path, "index", 9), Code.INVALID_ARGUMENT),
    ("id not its segment's", lambda r: setattr(r.connection, "id", "someone-else"), Code.INVALID_ARGUMENT),
    ("no path", lambda r: r.connection.ClearField("path"), Code.PERMISSION_DENIED),
    (
        "unsigned forwarder segment",
        lambda r: r.connection.path.path_segments[1].ClearField("token"),
        Code.PERMISSION_DENIED,
    ),
]


async def endpoint_metadata(nse: Endpoint) -> Metadata:
    peer = await nse.client.peer("test", 5.0)
    return nse.client.tokens.metadata(peer)


@contextlib.asynccontextmanager
async def second_forwarder(nse: Endpoint, sock_dir: Path) -> AsyncIterator[NsmClient]:
    """Another forwarder connection to the endpoint whose channel sends messages of any size."""
    security = TlsSecurity(lambda: nse.forwarder_svid)
    async with dial(f"unix://{sock_dir / 'listen.on'}", security=security, options=UNLIMITED_SEND) as (
        channel,
        relay,
    ):
        yield NsmClient(channel, CallTokens(TokenSigner.from_material(nse.forwarder_svid), 600.0), relay)


async def endpoint_still_serves(nse: Endpoint) -> None:
    reply = await nse.client.request(forwarder_request(), timeout=5.0)
    await nse.client.close(reply, timeout=5.0)


async def warmed_endpoint_fds(nse: Endpoint, fd_count: Callable[[], int]) -> int:
    """fds after one good Request/Close (the netns fd has arrived once; grpcio has its sockets)."""
    await endpoint_still_serves(nse)
    return fd_count()


@pytest.mark.parametrize(
    ("family", "spoil", "code"), ENDPOINT_FAMILIES, ids=[f[0] for f in ENDPOINT_FAMILIES]
)
def test_endpoint_refuses_a_malformed_request_with_its_code_and_holds_nothing(
    run_async: AsyncRunner,
    sock_dir: Path,
    ca: DevCA,
    family: str,
    spoil: Callable[[NetworkServiceRequest], None],
    code: Code,
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse:
            stub = networkservice_pb2_grpc.NetworkServiceStub(nse.client.channel)
            got, details, _ = await outcome(
                stub.Request(
                    spoiled_forwarder_request(spoil),
                    metadata=await endpoint_metadata(nse),
                    timeout=CALL_TIMEOUT,
                )
            )
            assert_clear_refusal(got, details, {code})
            assert (nse.accepted, nse.hub.connections) == ([], {})
            await endpoint_still_serves(nse)

    run_async(bounded(main))


def test_endpoint_refuses_a_garbage_token_as_permission_denied(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse:
            stub = networkservice_pb2_grpc.NetworkServiceStub(nse.client.channel)
            metadata = [
                (k, "garbage" if k == "nsm-client-token" else v) for k, v in await endpoint_metadata(nse)
            ]
            got, details, _ = await outcome(stub.Request(forwarder_request(), metadata=metadata, timeout=5.0))
            assert_clear_refusal(got, details, {Code.PERMISSION_DENIED})

    run_async(bounded(main))


@GENERATED
@given(st.lists(messages(NetworkServiceRequest, forwarder_request()), min_size=12, max_size=12))
def test_endpoint_answers_schema_generated_requests_clearly_and_keeps_serving(
    run_async: AsyncRunner,
    sock_dir: Path,
    ca: DevCA,
    fd_count: Callable[[], int],
    generated: list[NetworkServiceRequest],
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse:
            stub = networkservice_pb2_grpc.NetworkServiceStub(nse.client.channel)
            metadata = await endpoint_metadata(nse)
            before = await warmed_endpoint_fds(nse, fd_count)
            for request in generated:
                code, details, reply = await outcome(
                    stub.Request(request, metadata=metadata, timeout=CALL_TIMEOUT)
                )
                if code == Code.OK:  # a harmless change to a good request: the endpoint may accept it
                    await nse.client.close(reply, timeout=5.0)
                    continue
                assert_clear_refusal(code, details)
            await endpoint_still_serves(nse)
            assert fd_count() == before

    run_async(bounded(main))


def test_endpoint_refuses_an_oversized_message_as_resource_exhausted_and_keeps_serving(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA, fd_count: Callable[[], int]
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse, second_forwarder(nse, sock_dir) as big:
            metadata = big.tokens.metadata(await big.peer("test", 5.0))  # connected before counting
            before = await warmed_endpoint_fds(nse, fd_count)
            request = forwarder_request({"link": "x" * (MAX_MESSAGE_BYTES + 1)})
            stub = networkservice_pb2_grpc.NetworkServiceStub(big.channel)
            code, details, _ = await outcome(stub.Request(request, metadata=metadata, timeout=5.0))
            assert_clear_refusal(code, details, {Code.RESOURCE_EXHAUSTED})
            assert len(nse.accepted) == 1, "only the warm-up Request"
            await endpoint_still_serves(nse)
            assert fd_count() == before

    run_async(bounded(main))


def test_endpoint_serves_a_flood_of_requests_and_closes_them_all(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA, fd_count: Callable[[], int]
) -> None:
    async def main() -> None:
        async with running_endpoint(sock_dir, ca) as nse:
            before = await warmed_endpoint_fds(nse, fd_count)
            requests = []
            for number in range(100):
                request = forwarder_request({"link": f"net-{number}"})
                request.connection.id = request.connection.path.path_segments[2].id = f"fwd-{number}"
                requests.append(request)
            replies = await asyncio.gather(*(nse.client.request(r, timeout=20.0) for r in requests))
            assert len({reply.context.ip_context.src_ip_addrs[0] for reply in replies}) == 100
            await asyncio.gather(*(nse.client.close(reply, timeout=20.0) for reply in replies))
            assert nse.hub.connections == {}
            await endpoint_still_serves(nse)
            assert fd_count() == before

    run_async(bounded(main))


# --- nsm-local: manager ------------------------------------------------------------------------------------


def client_request(netns_url: str, service: str = "p2p") -> NetworkServiceRequest:
    return first_request("nsc", "nsc-0", service, {"link": "net-0"}, kernel_preference("eth1", netns_url))


def _set_parameter(key: str, value: str) -> Callable[[NetworkServiceRequest], None]:
    def spoil(request: NetworkServiceRequest) -> None:
        request.mechanism_preferences[0].parameters[key] = value

    return spoil


def _drop_parameter(key: str) -> Callable[[NetworkServiceRequest], None]:
    def spoil(request: NetworkServiceRequest) -> None:
        del request.mechanism_preferences[0].parameters[key]

    return spoil


MANAGER_FAMILIES: list[tuple[str, Callable[[NetworkServiceRequest], None], Code]] = [
    ("unknown mechanism", _only_memif, Code.INVALID_ARGUMENT),
    ("bad interface name", _set_parameter("name", "much-too-long-a-name"), Code.INVALID_ARGUMENT),
    ("unsplittable inode url", _set_parameter("inodeURL", "inode://[x/1"), Code.INVALID_ARGUMENT),
    ("non-numeric inode url", _set_parameter("inodeURL", "inode://a/b"), Code.INVALID_ARGUMENT),
    ("file netns url", _set_parameter("inodeURL", "file:///proc/self/ns/net"), Code.INVALID_ARGUMENT),
    ("no netns url", _drop_parameter("inodeURL"), Code.INVALID_ARGUMENT),
    ("someone else's netns", _set_parameter("inodeURL", "inode://1/2"), Code.PERMISSION_DENIED),
    ("huge label map", lambda r: r.connection.labels.update(labels_beyond_the_cap()), Code.INVALID_ARGUMENT),
    ("index beyond the path", lambda r: setattr(r.connection.path, "index", 9), Code.INVALID_ARGUMENT),
    ("id not its segment's", lambda r: setattr(r.connection, "id", "someone-else"), Code.INVALID_ARGUMENT),
    ("unknown service", lambda r: setattr(r.connection, "network_service", "nope"), Code.NOT_FOUND),
    (
        "unknown endpoint",
        lambda r: setattr(r.connection, "network_service_endpoint_name", "nse-x"),
        Code.NOT_FOUND,
    ),
]


async def manager_metadata(client: NsmClient, extra: Metadata = ()) -> Metadata:
    return client.tokens.metadata(await client.peer("test", 5.0), extra)


async def manager_still_serves(client: NsmClient) -> None:
    """A registry write and a refused Request still get their answers."""
    await client.register_service(NetworkService(name="p2p", payload="ETHERNET"), RegistryPath(), 5.0)
    stub = networkservice_pb2_grpc.NetworkServiceStub(client.channel)
    with own_netns_fd() as netns:
        code, details, _ = await outcome(
            stub.Request(
                client_request(inode_url_for_fd(netns), "nope"),
                metadata=await manager_metadata(client),
                timeout=5.0,
            )
        )
    assert (code, "not found" in details) == (Code.NOT_FOUND, True), details


@pytest.mark.parametrize(("family", "spoil", "code"), MANAGER_FAMILIES, ids=[f[0] for f in MANAGER_FAMILIES])
def test_manager_refuses_a_malformed_request_with_its_code(
    run_async: AsyncRunner,
    sock_dir: Path,
    family: str,
    spoil: Callable[[NetworkServiceRequest], None],
    code: Code,
) -> None:
    async def main() -> None:
        with own_netns_fd() as netns:
            async with control_plane(sock_dir) as plane, plane.client(send_fds=[netns]) as client:
                await client.register_service(
                    NetworkService(name="p2p", payload="ETHERNET"), RegistryPath(), 5.0
                )
                request = client_request(inode_url_for_fd(netns))
                spoil(request)
                stub = networkservice_pb2_grpc.NetworkServiceStub(client.channel)
                got, details, _ = await outcome(
                    stub.Request(request, metadata=await manager_metadata(client), timeout=CALL_TIMEOUT)
                )
                assert_clear_refusal(got, details, {code})
                await manager_still_serves(client)

    run_async(bounded(main))


@GENERATED
@given(st.lists(messages(NetworkServiceRequest, client_request("inode://0/0")), min_size=12, max_size=12))
def test_manager_answers_schema_generated_requests_clearly_and_keeps_serving(
    run_async: AsyncRunner,
    sock_dir: Path,
    fd_count: Callable[[], int],
    generated: list[NetworkServiceRequest],
) -> None:
    async def main() -> None:
        with own_netns_fd() as netns:
            async with control_plane(sock_dir) as plane, plane.client(send_fds=[netns]) as client:
                await manager_still_serves(client)
                before = fd_count()
                stub = networkservice_pb2_grpc.NetworkServiceStub(client.channel)
                metadata = await manager_metadata(client)
                for request in generated:
                    for preference in request.mechanism_preferences:  # point the good ones at our netns
                        if preference.parameters.get("inodeURL") == "inode://0/0":
                            preference.parameters["inodeURL"] = inode_url_for_fd(netns)
                    code, details, _ = await outcome(
                        stub.Request(request, metadata=metadata, timeout=CALL_TIMEOUT)
                    )
                    assert_clear_refusal(code, details)  # no endpoint is registered: nothing can succeed
                await manager_still_serves(client)
                assert fd_count() == before

    run_async(bounded(main))


@contextlib.asynccontextmanager
async def unlimited_client(plane: Plane, send_fds: Sequence[int]) -> AsyncIterator[NsmClient]:
    async with (
        plane.identity() as identity,
        dial(plane.url, send_fds=send_fds, security=identity.security, options=UNLIMITED_SEND) as (
            channel,
            relay,
        ),
    ):
        yield NsmClient(channel, identity.tokens, relay)


def test_manager_refuses_an_oversized_message_as_resource_exhausted_and_keeps_serving(
    run_async: AsyncRunner, sock_dir: Path, fd_count: Callable[[], int]
) -> None:
    async def main() -> None:
        with own_netns_fd() as netns:
            async with (
                control_plane(sock_dir) as plane,
                plane.client(send_fds=[netns]) as client,
                unlimited_client(plane, [netns]) as big,
            ):
                metadata = await manager_metadata(big)  # connected before counting
                await manager_still_serves(client)
                before = fd_count()
                request = client_request(inode_url_for_fd(netns))
                request.connection.labels["link"] = "x" * (MAX_MESSAGE_BYTES + 1)
                stub = networkservice_pb2_grpc.NetworkServiceStub(big.channel)
                code, details, _ = await outcome(stub.Request(request, metadata=metadata, timeout=5.0))
                assert_clear_refusal(code, details, {Code.RESOURCE_EXHAUSTED})
                await manager_still_serves(client)
                assert fd_count() == before

    run_async(bounded(main))


def test_our_client_refuses_to_send_an_oversized_message(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        async with control_plane(sock_dir) as plane, plane.client() as client:
            request = client_request("inode://1/2")
            request.connection.labels["link"] = "x" * (MAX_MESSAGE_BYTES + 1)
            stub = networkservice_pb2_grpc.NetworkServiceStub(client.channel)
            code, _, _ = await outcome(
                stub.Request(request, metadata=await manager_metadata(client), timeout=5.0)
            )
            assert code == Code.RESOURCE_EXHAUSTED

    run_async(bounded(main))


def test_manager_answers_a_flood_of_requests_and_keeps_serving(
    run_async: AsyncRunner, sock_dir: Path, fd_count: Callable[[], int]
) -> None:
    async def main() -> None:
        with own_netns_fd() as netns:
            async with control_plane(sock_dir) as plane, plane.client(send_fds=[netns]) as client:
                await manager_still_serves(client)
                before = fd_count()
                stub = networkservice_pb2_grpc.NetworkServiceStub(client.channel)
                metadata = await manager_metadata(client)
                requests = []
                for number in range(200):
                    request = client_request(inode_url_for_fd(netns), "nope")
                    request.connection.id = request.connection.path.path_segments[0].id = f"nsc-{number}"
                    requests.append(request)
                answers = await asyncio.gather(
                    *(outcome(stub.Request(r, metadata=metadata, timeout=20.0)) for r in requests)
                )
                assert {code for code, _, _ in answers} == {Code.NOT_FOUND}
                await manager_still_serves(client)
                assert fd_count() == before

    run_async(bounded(main))


# --- nsm-local: registry ------------------------------------------------------------------------------------


def _endpoint(**fields: Any) -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(
        **{"name": "nse-a", "url": "unix:///tmp/nse-a.sock", "network_service_names": ["p2p"], **fields}
    )


def _huge_endpoint_labels() -> NetworkServiceEndpoint:
    nse = _endpoint()
    nse.network_service_labels["p2p"].labels.update(labels_beyond_the_cap())
    return nse


def _huge_selector() -> NetworkService:
    service = NetworkService(name="p2p")
    service.matches.add().source_selector.update(labels_beyond_the_cap())
    return service


REGISTRY_FAMILIES: list[tuple[str, NetworkServiceEndpoint | NetworkService, Code]] = [
    ("endpoint without name", _endpoint(name=""), Code.INVALID_ARGUMENT),
    ("endpoint without url", _endpoint(url=""), Code.INVALID_ARGUMENT),
    ("tcp endpoint url", _endpoint(url="tcp://10.0.0.1:5000"), Code.INVALID_ARGUMENT),
    ("unsplittable endpoint url", _endpoint(url="inode://[x/1"), Code.INVALID_ARGUMENT),
    ("non-numeric inode url", _endpoint(url="inode://a/b"), Code.INVALID_ARGUMENT),
    ("huge endpoint labels", _huge_endpoint_labels(), Code.INVALID_ARGUMENT),
    ("service without name", NetworkService(name=""), Code.INVALID_ARGUMENT),
    ("huge service selector", _huge_selector(), Code.INVALID_ARGUMENT),
]


async def registry_register(
    client: NsmClient, message: NetworkServiceEndpoint | NetworkService, metadata: Metadata
) -> tuple[Code, str, Any]:
    if isinstance(message, NetworkService):
        service_stub = registry_pb2_grpc.NetworkServiceRegistryStub(client.channel)
        return await outcome(service_stub.Register(message, metadata=metadata, timeout=CALL_TIMEOUT))
    endpoint_stub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(client.channel)
    return await outcome(endpoint_stub.Register(message, metadata=metadata, timeout=CALL_TIMEOUT))


@contextlib.asynccontextmanager
async def serving_client(sock_dir: Path) -> AsyncIterator[NsmClient]:
    """nsm-local and a client of it that passes its netns (what `manager_still_serves` asks with)."""
    with own_netns_fd() as netns:
        async with control_plane(sock_dir) as plane, plane.client(send_fds=[netns]) as client:
            yield client


def path_metadata() -> Metadata:
    return ((PATH_METADATA_KEY, RegistryPath().to_json()),)


@pytest.mark.parametrize(
    ("family", "message", "code"), REGISTRY_FAMILIES, ids=[f[0] for f in REGISTRY_FAMILIES]
)
def test_registry_refuses_a_malformed_registration_with_its_code(
    run_async: AsyncRunner,
    sock_dir: Path,
    family: str,
    message: NetworkServiceEndpoint | NetworkService,
    code: Code,
) -> None:
    async def main() -> None:
        async with serving_client(sock_dir) as client:
            got, details, _ = await registry_register(
                client, message, await manager_metadata(client, path_metadata())
            )
            assert_clear_refusal(got, details, {code})
            await manager_still_serves(client)

    run_async(bounded(main))


def test_registry_refuses_broken_path_metadata_as_invalid_argument(
    run_async: AsyncRunner, sock_dir: Path
) -> None:
    async def main() -> None:
        async with control_plane(sock_dir) as plane, plane.client() as client:
            metadata = await manager_metadata(client, ((PATH_METADATA_KEY, "{not json"),))
            got, details, _ = await registry_register(client, NetworkService(name="p2p"), metadata)
            assert_clear_refusal(got, details, {Code.INVALID_ARGUMENT})

    run_async(bounded(main))


def undialled(nse: NetworkServiceEndpoint) -> NetworkServiceEndpoint:
    """An endpoint nsm-local would dial (unix://) gets a tcp:// url instead: refused after every other check,
    so no channel of nsm-local's, with its connection attempts, comes and goes while we count fds."""
    if nse.url.startswith("unix:"):
        nse.url = "tcp://10.0.0.1:1"
    return nse


registrations = st.one_of(
    messages(NetworkServiceEndpoint, _endpoint()).map(undialled),
    messages(NetworkService, NetworkService(name="p2p")),
)


@GENERATED
@given(
    st.lists(registrations, min_size=12, max_size=12),
    st.lists(messages(NetworkServiceEndpointQuery), min_size=3, max_size=3),
)
def test_registry_answers_schema_generated_messages_clearly_and_keeps_serving(
    run_async: AsyncRunner,
    sock_dir: Path,
    fd_count: Callable[[], int],
    generated: list[NetworkServiceEndpoint | NetworkService],
    queries: list[NetworkServiceEndpointQuery],
) -> None:
    async def main() -> None:
        async with serving_client(sock_dir) as client:
            metadata = await manager_metadata(client, path_metadata())
            await manager_still_serves(client)
            before = fd_count()
            for message in generated:
                code, details, _ = await registry_register(client, message, metadata)
                if code != Code.OK:  # a good NetworkService registers fine
                    assert_clear_refusal(code, details)
            finder = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(client.channel)
            for query in queries:
                query.watch = False
                call = finder.Find(query, timeout=CALL_TIMEOUT)
                code, details, _ = await outcome(_drain(call))
                assert code == Code.OK, details
            await manager_still_serves(client)
            assert fd_count() == before

    run_async(bounded(main))


async def _drain(call: Any) -> int:
    return len([item async for item in call])


def test_connection_proto_is_what_the_generated_requests_nest() -> None:
    assert NetworkServiceRequest.DESCRIPTOR.fields_by_name["connection"].message_type is Connection.DESCRIPTOR
