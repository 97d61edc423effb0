"""Typed calls to an NSM manager (or an endpoint) over one grpc.aio channel.

Every call has a deadline and `wait_for_ready=True` like the Go clients (§12 item 6), so a call rides out
a manager restart until its deadline instead of failing fast. grpc errors are translated here, once, into
`RpcFailed`, which carries the status code and is always temporary: callers retry, they never exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from nsm_sdk._proto.networkservice import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_sdk._proto.networkservice.connection_pb2 import Connection, ConnectionEvent, MonitorScopeSelector
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk._proto.registry import registry_pb2_grpc
from nsm_sdk._proto.registry.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse,
    NetworkServiceQuery,
    NetworkServiceResponse,
)
from nsm_sdk.agent.credentials import CallTokens
from nsm_sdk.protocol.errors import TemporaryError
from nsm_sdk.protocol.registry_path import PATH_METADATA_KEY, RegistryPath

RequestT = TypeVar("RequestT", bound=Message)
ReplyT = TypeVar("ReplyT", bound=Message)


class RpcFailed(TemporaryError):
    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"{method}: {code.name}: {details}")


@contextlib.contextmanager
def translate_errors(method: str) -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise RpcFailed(method, exc.code(), exc.details() or "") from exc


class NsmClient:
    def __init__(self, channel: grpc.aio.Channel, tokens: CallTokens) -> None:
        self.channel = channel
        self.tokens = tokens
        self._ns = networkservice_pb2_grpc.NetworkServiceStub(channel)
        self._monitor = connection_pb2_grpc.MonitorConnectionStub(channel)
        self._nse_registry = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
        self._ns_registry = registry_pb2_grpc.NetworkServiceRegistryStub(channel)

    async def request(
        self, request: NetworkServiceRequest, timeout: float, wait_for_ready: bool = True
    ) -> Connection:
        with translate_errors("NetworkService/Request"):
            reply: Connection = await self._ns.Request(
                request, timeout=timeout, metadata=self.tokens.metadata(), wait_for_ready=wait_for_ready
            )
        return reply

    async def close(self, conn: Connection, timeout: float) -> None:
        with translate_errors("NetworkService/Close"):
            await self._ns.Close(conn, timeout=timeout, metadata=self.tokens.metadata(), wait_for_ready=True)

    async def monitor(self, selector: MonitorScopeSelector) -> AsyncIterator[ConnectionEvent]:
        """Events until the stream ends; a broken stream raises RpcFailed (the heal trigger, §5.4)."""
        call = self._monitor.MonitorConnections(
            selector, metadata=self.tokens.metadata(), wait_for_ready=True
        )
        async with contextlib.aclosing(_drain("MonitorConnection/MonitorConnections", call)) as stream:
            async for event in stream:
                yield event

    async def _registry_write(
        self,
        method: str,
        rpc: grpc.aio.UnaryUnaryMultiCallable[RequestT, ReplyT],
        message: RequestT,
        path: RegistryPath,
        timeout: float,
    ) -> tuple[ReplyT, RegistryPath]:
        metadata = self.tokens.metadata(extra=((PATH_METADATA_KEY, path.to_json()),))
        with translate_errors(method):
            call = rpc(message, timeout=timeout, metadata=metadata, wait_for_ready=True)
            reply = await call
            header = await call.initial_metadata()
        returned = path
        for key, value in header or ():
            if key == PATH_METADATA_KEY and isinstance(value, str):
                with contextlib.suppress(ValueError):
                    returned = RegistryPath.from_json(value)
        return reply, returned

    async def register_endpoint(
        self, nse: NetworkServiceEndpoint, path: RegistryPath, timeout: float
    ) -> tuple[NetworkServiceEndpoint, RegistryPath]:
        return await self._registry_write(
            "NetworkServiceEndpointRegistry/Register", self._nse_registry.Register, nse, path, timeout
        )

    async def unregister_endpoint(
        self, nse: NetworkServiceEndpoint, path: RegistryPath, timeout: float
    ) -> None:
        await self._registry_write(
            "NetworkServiceEndpointRegistry/Unregister", self._nse_registry.Unregister, nse, path, timeout
        )

    async def register_service(
        self, service: NetworkService, path: RegistryPath, timeout: float
    ) -> NetworkService:
        reply, _ = await self._registry_write(
            "NetworkServiceRegistry/Register", self._ns_registry.Register, service, path, timeout
        )
        return reply

    async def unregister_service(self, service: NetworkService, path: RegistryPath, timeout: float) -> None:
        await self._registry_write(
            "NetworkServiceRegistry/Unregister", self._ns_registry.Unregister, service, path, timeout
        )

    async def find_endpoints(
        self, query: NetworkServiceEndpointQuery, timeout: float | None = None
    ) -> AsyncIterator[NetworkServiceEndpointResponse]:
        call = self._nse_registry.Find(
            query, timeout=timeout, metadata=self.tokens.metadata(), wait_for_ready=True
        )
        async with contextlib.aclosing(_drain("NetworkServiceEndpointRegistry/Find", call)) as stream:
            async for response in stream:
                yield response

    async def find_services(
        self, query: NetworkServiceQuery, timeout: float | None = None
    ) -> AsyncIterator[NetworkServiceResponse]:
        call = self._ns_registry.Find(
            query, timeout=timeout, metadata=self.tokens.metadata(), wait_for_ready=True
        )
        async with contextlib.aclosing(_drain("NetworkServiceRegistry/Find", call)) as stream:
            async for response in stream:
                yield response


async def _drain(method: str, call: grpc.aio.UnaryStreamCall[Any, ReplyT]) -> AsyncGenerator[ReplyT, None]:
    """The messages of a server stream, with errors translated; the call is cancelled when we stop early."""
    try:
        with translate_errors(method):
            async for message in call:
                yield message
    finally:
        call.cancel()
