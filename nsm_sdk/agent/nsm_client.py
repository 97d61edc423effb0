"""Typed calls to an NSM manager (or an endpoint) over one grpc.aio channel.

Every call has a deadline and `wait_for_ready=True` like the Go clients (§12 item 6), so a call rides out
a manager restart until its deadline instead of failing fast. grpc errors are translated here, once, into
`RpcFailed`, which carries the status code and is always temporary: callers retry, they never exit.

Tokens are signed per call for the server we authenticated on the relay's live connection (`aud`, and
`exp` capped by its certificate, §3.3), so before the first call of a secure channel we wait (within the
call's deadline) for grpcio to connect and the TLS handshake to finish. Like cmd-nsc, a Request's reply is
checked with NSM's client policies (`check_reply`): a path that does not chain to the server we talk to
is closed again and refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from nsm_sdk._proto.networkservice import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_sdk._proto.networkservice.connection_pb2 import (
    Connection,
    ConnectionEvent,
    ConnectionEventType,
    MonitorScopeSelector,
)
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
from nsm_sdk.agent.credentials import CallTokens, Metadata
from nsm_sdk.identity.peer import PeerIdentity
from nsm_sdk.identity.policies import PermissionDenied, check_client
from nsm_sdk.protocol.errors import TemporaryError
from nsm_sdk.protocol.registry_path import PATH_METADATA_KEY, RegistryPath
from nsm_sdk.transport.client import ClientRelay
from nsm_sdk.transport.relay import RelayConnection
from nsm_sdk.transport.security import PlaintextSecurity

CONNECT_POLL = 0.05
RequestT = TypeVar("RequestT", bound=Message)
ReplyT = TypeVar("ReplyT", bound=Message)


class RpcFailed(TemporaryError):
    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"{method}: {code.name}: {details}")


@contextlib.contextmanager
def translate_errors(method: str, relay: ClientRelay | None = None) -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        details = exc.details() or ""
        failure = relay.recent_failure() if relay is not None else None
        if failure and exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            details += f" (last connection to {relay.target_url if relay else '?'} broke: {failure})"
        raise RpcFailed(method, exc.code(), details) from exc
    except grpc.aio.UsageError as exc:  # the channel was closed under the call (its endpoint went away)
        raise RpcFailed(method, grpc.StatusCode.UNAVAILABLE, f"channel closed: {exc}") from exc


class NsmClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        tokens: CallTokens,
        relay: ClientRelay | None = None,
        admission: asyncio.Semaphore | None = None,
    ) -> None:
        """`admission`: shared by the clients of an agent host, it bounds their Requests, Closes and
        registry writes in flight; a call waits for its turn before its deadline starts, so that a lab
        of a thousand routers starting at once queues here instead of timing out in the manager."""
        self.admission = admission
        self.channel = channel
        self.tokens = tokens
        self.relay = relay
        self._ns = networkservice_pb2_grpc.NetworkServiceStub(channel)
        self._monitor = connection_pb2_grpc.MonitorConnectionStub(channel)
        self._nse_registry = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
        self._ns_registry = registry_pb2_grpc.NetworkServiceRegistryStub(channel)

    def __repr__(self) -> str:
        return f"<NsmClient {self.relay!r} {self.tokens!r}>"

    async def connection(self, method: str, timeout: float | None) -> RelayConnection | None:
        """The relay connection calls go out on, authenticated (None in plaintext), connecting if need be."""
        relay = self.relay
        if relay is None or isinstance(relay.security, PlaintextSecurity):
            return None
        connection = relay.current_connection()
        if connection is not None:
            return connection
        try:
            async with asyncio.timeout(timeout):
                while (connection := relay.current_connection()) is None:
                    # grpcio connects lazily, and after a dropped connection only when asked again
                    self.channel.get_state(try_to_connect=True)
                    with contextlib.suppress(TimeoutError):
                        await relay.wait_peer(CONNECT_POLL)
        except TimeoutError:
            failure = f"; last attempt: {relay.recent_failure()}" if relay.recent_failure() else ""
            raise RpcFailed(
                method,
                grpc.StatusCode.UNAVAILABLE,
                f"no authenticated connection to {relay.target_url} within {timeout:.1f}s{failure}",
            ) from None
        return connection

    async def peer(self, method: str, timeout: float | None) -> PeerIdentity | None:
        """The authenticated server of the channel (None in plaintext)."""
        connection = await self.connection(method, timeout)
        return connection.peer if connection is not None else None

    async def _metadata(
        self, method: str, deadline: float | None, extra: Metadata = ()
    ) -> tuple[Metadata, PeerIdentity | None]:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        connection = await self.connection(method, remaining)
        if connection is None:
            return self.tokens.metadata(None, extra), None
        return self.tokens.metadata(connection.peer, extra, connection.presented), connection.peer

    async def request(
        self,
        request: NetworkServiceRequest,
        timeout: float,
        wait_for_ready: bool = True,
        check_reply: bool = False,
    ) -> Connection:
        """Send a Request; with `check_reply`, apply cmd-nsc's client policies to the reply.

        A reply whose next token is not signed by the certificate the server showed us usually means the
        server rotated its SVID after our connection was made (Go clients dial anew for every Request and
        never see this): we drop the connection and ask once more on a new one. Any other failed check, or
        a second one, refuses the reply; a first Request is then Closed again, as Go's authorize client does.
        """
        async with self._admitted():
            return await self._request(request, timeout, wait_for_ready, check_reply)

    @contextlib.asynccontextmanager
    async def _admitted(self) -> AsyncIterator[None]:
        if self.admission is None:
            yield
            return
        async with self.admission:
            yield

    async def _request(
        self, request: NetworkServiceRequest, timeout: float, wait_for_ready: bool, check_reply: bool
    ) -> Connection:
        method = "NetworkService/Request"
        deadline = time.monotonic() + timeout
        retried = False
        while True:
            connection = await self.connection(method, max(0.0, deadline - time.monotonic()))
            peer = connection.peer if connection is not None else None
            own = connection.presented if connection is not None else None
            metadata = self.tokens.metadata(peer, (), own)
            try:
                with translate_errors(method, self.relay):
                    reply: Connection = await self._ns.Request(
                        request, timeout=_left(deadline), metadata=metadata, wait_for_ready=wait_for_ready
                    )
            except RpcFailed as exc:
                # the call raced the retirement of the connection it went out on: once more, on the next
                if retried and exc.code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                    retried = False
                    continue
                raise
            if not check_reply or connection is None or peer is None:
                return reply
            tokens = [segment.token for segment in reply.path.path_segments]
            try:
                check_client(tokens, reply.path.index, peer.public_key, time.time())
            except PermissionDenied as exc:
                connection.retire("the server's reply did not pass our checks")
                if not retried and exc.policy == "next_token_signed" and self.relay is not None:
                    retried = True
                    await self.relay.wait_retired(connection, max(0.0, deadline - time.monotonic()))
                    # The server made the connection; only its signing key is new to us. Ask again as a
                    # refresh of the reply (its path, at our index): the same first Request once more
                    # would make a Go nsmgr open a second connection beside it (another veth and address).
                    again = NetworkServiceRequest()
                    again.CopyFrom(request)
                    again.connection.CopyFrom(reply)
                    request = again
                    continue
                if not request.connection.network_service_endpoint_name:  # not a refresh: undo it
                    with contextlib.suppress(RpcFailed):
                        await self.close(reply, max(0.1, deadline - time.monotonic()))
                raise RpcFailed(method, grpc.StatusCode.PERMISSION_DENIED, str(exc)) from exc
            return reply

    async def close(self, conn: Connection, timeout: float) -> None:
        method = "NetworkService/Close"
        async with self._admitted():
            deadline = time.monotonic() + timeout
            metadata, _ = await self._metadata(method, deadline)
            with translate_errors(method, self.relay):
                await self._ns.Close(conn, timeout=_left(deadline), metadata=metadata, wait_for_ready=True)

    async def monitor(self, selector: MonitorScopeSelector) -> AsyncIterator[ConnectionEvent]:
        """Events until the stream ends; a broken stream raises RpcFailed (the heal trigger, §5.4)."""
        method = "MonitorConnection/MonitorConnections"
        metadata, _ = await self._metadata(method, None)
        call = self._monitor.MonitorConnections(selector, metadata=metadata, wait_for_ready=True)
        async with contextlib.aclosing(_drain(method, call, self.relay)) as stream:
            async for event in stream:
                yield event

    async def held_connections(self, selector: MonitorScopeSelector, timeout: float) -> list[Connection]:
        """What the server holds for `selector` right now: the INITIAL_STATE_TRANSFER of a monitor stream,
        which is closed again at once. cmd-nsc finds its connections from before a restart this way."""
        method = "MonitorConnection/MonitorConnections"
        deadline = time.monotonic() + timeout
        metadata, _ = await self._metadata(method, deadline)
        call = self._monitor.MonitorConnections(
            selector, timeout=_left(deadline), metadata=metadata, wait_for_ready=True
        )
        async with contextlib.aclosing(_drain(method, call, self.relay)) as stream:
            async for event in stream:
                if event.type == ConnectionEventType.INITIAL_STATE_TRANSFER:
                    return list(event.connections.values())
        raise RpcFailed(method, grpc.StatusCode.UNAVAILABLE, "the stream ended before its initial state")

    async def _registry_write(
        self,
        method: str,
        rpc: grpc.aio.UnaryUnaryMultiCallable[RequestT, ReplyT],
        message: RequestT,
        path: RegistryPath,
        timeout: float,
    ) -> tuple[ReplyT, RegistryPath]:
        async with self._admitted():
            deadline = time.monotonic() + timeout
            metadata, _ = await self._metadata(method, deadline, ((PATH_METADATA_KEY, path.to_json()),))
            with translate_errors(method, self.relay):
                call = rpc(message, timeout=_left(deadline), metadata=metadata, wait_for_ready=True)
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
        method = "NetworkServiceEndpointRegistry/Find"
        deadline = None if timeout is None else time.monotonic() + timeout
        metadata, _ = await self._metadata(method, deadline)
        call = self._nse_registry.Find(query, timeout=_left(deadline), metadata=metadata, wait_for_ready=True)
        async with contextlib.aclosing(_drain(method, call, self.relay)) as stream:
            async for response in stream:
                yield response

    async def find_services(
        self, query: NetworkServiceQuery, timeout: float | None = None
    ) -> AsyncIterator[NetworkServiceResponse]:
        method = "NetworkServiceRegistry/Find"
        deadline = None if timeout is None else time.monotonic() + timeout
        metadata, _ = await self._metadata(method, deadline)
        call = self._ns_registry.Find(query, timeout=_left(deadline), metadata=metadata, wait_for_ready=True)
        async with contextlib.aclosing(_drain(method, call, self.relay)) as stream:
            async for response in stream:
                yield response


def _left(deadline: float | None) -> float | None:
    """Seconds left until a monotonic deadline (at least a sliver, so grpc reports DEADLINE_EXCEEDED)."""
    return None if deadline is None else max(0.001, deadline - time.monotonic())


async def _drain(
    method: str, call: grpc.aio.UnaryStreamCall[Any, ReplyT], relay: ClientRelay | None
) -> AsyncGenerator[ReplyT, None]:
    """The messages of a server stream, with errors translated; the call is cancelled when we stop early."""
    try:
        with translate_errors(method, relay):
            async for message in call:
                yield message
    finally:
        call.cancel()
