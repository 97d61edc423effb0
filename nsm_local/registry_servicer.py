"""The registry API of nsm-local, as nsmgr serves it to local endpoints (protocol doc §3.5, §8.1-§8.3).

On Register/Unregister: the `path` metadata is updated like nsmgr does and sent back as a response
header; an endpoint's `inode://` URL is resolved to the socket file fd that arrived on the same
connection (we dial it later as /proc/self/fd/N, exactly like nsmgr); the expiry granted is at most the
default expiration and never beyond the caller's token.

Authorization, as nsmgr's registry chain with its default policies (§3.4, §3.5): the registry path must
pass the server policies (valid, chained, unexpired tokens, the caller's signed with its TLS key), and a
name belongs to the identity that registered it (`client_allowed`; recorded as `path_ids[0]`). nsm-local
records the authenticated caller there (not just a token's claim), releases an endpoint's name when its
registration expires, and lets the operator (`identities`) manage any NetworkService. Find is open, as in
nsmgr.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.empty_pb2 import Empty

from nsm_local.identities import ControlPlaneIdentity
from nsm_local.ownership import check_caller_subject
from nsm_local.registry import ClusterManaged, EndpointEntry, Registry
from nsm_sdk._proto.registry import registry_pb2_grpc
from nsm_sdk._proto.registry.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse,
    NetworkServiceQuery,
    NetworkServiceResponse,
)
from nsm_sdk.agent.credentials import caller_token, metadata_value
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.identity.policies import PermissionDenied, check_owner, check_server
from nsm_sdk.protocol.errors import ExhaustedError, ProtocolError
from nsm_sdk.protocol.gotime import epoch_to_timestamp, format_rfc3339nano
from nsm_sdk.protocol.labels import MAX_LABELS, label_map_problem
from nsm_sdk.protocol.registry_path import PATH_METADATA_KEY, RegistryPath, RegistrySegment
from nsm_sdk.transport.errors import FdNotReceivedError, UrlError
from nsm_sdk.transport.relay import RelayConnection
from nsm_sdk.transport.server import ServerHandle
from nsm_sdk.transport.status import abort
from nsm_sdk.transport.urls import is_inode_url, parse_inode_url

Context = grpc.aio.ServicerContext[Any, Any]
FD_WAIT_MARGIN = 0.5


def fd_wait(remaining: float | None) -> float | None:
    """How long to wait for a socket fd: give up a little before the caller's deadline, so that the
    caller gets our "timeout in recvfd" error instead of a bare DEADLINE_EXCEEDED of its own."""
    if remaining is None:
        return None
    return max(0.0, remaining - min(FD_WAIT_MARGIN, remaining / 4))


@dataclass(frozen=True, slots=True)
class RegistryCall:
    """One authorized registry write: the updated path, the longest expiry it allows, and who called."""

    path: RegistryPath
    expiry: float | None
    caller: str | None
    connection: RelayConnection | None
    own_id: str

    @property
    def path_ids(self) -> list[str]:
        """`[caller, us]`: who registered it, as NSM's registry records it (§3.5)."""
        return [self.caller or "", self.own_id]


class RegistryPathKeeper:
    """The registry-path and authorization part of every write (§3.4, §3.5)."""

    def __init__(
        self, name: str, identity: ControlPlaneIdentity, server: Callable[[], ServerHandle]
    ) -> None:
        self.name = name
        self.identity = identity
        self.tokens = identity.manager.tokens
        self._server = server

    async def update(self, context: Context) -> RegistryCall:
        """Update the path, check the policies, answer the header. Aborts the call on a violation."""
        metadata = context.invocation_metadata()
        token, token_expires = caller_token(metadata)
        connection = self._server().connection_for(context)
        peer = connection.peer if connection is not None else None
        caller = self.identity.caller(connection)
        own_token, own_expires = self.tokens.sign(peer, connection.presented if connection else None)
        own = RegistrySegment(name=self.name, token=own_token, expires=format_rfc3339nano(own_expires))
        try:
            path = RegistryPath.from_json(metadata_value(metadata, PATH_METADATA_KEY) or "")
            updated, caller_index = path.server_update(token or "", own)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad registry path metadata: {exc}")
            raise AssertionError("unreachable") from exc
        if peer is not None:
            tokens = [segment.token for segment in updated.segments[: updated.index + 1]]
            try:
                check_server(tokens, updated.index, peer.public_key, time.time())
                check_caller_subject(token or "", caller, secure=True)
            except PermissionDenied as exc:
                await deny(context, exc)
        header = updated.with_index(caller_index).to_json()
        await context.send_initial_metadata(((PATH_METADATA_KEY, header),))
        expiry = min(own_expires, token_expires) if token_expires is not None else own_expires
        return RegistryCall(updated, expiry, caller, connection, self.tokens.spiffe_id)


def _unlinked(fd: int | None) -> bool:
    """The socket file behind a registration's fd was deleted: a restarted endpoint's new socket may
    have got the same inode number (the same `inode://` URL), and must not be dialled through the old."""
    if fd is None:
        return False
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
        return True


async def deny(context: Context, exc: PermissionDenied) -> NoReturn:
    await abort(context, exc, "registry: ")


def endpoint_labels_problem(nse: NetworkServiceEndpoint) -> str | None:
    """Why the endpoint's label maps are absurd (`label_map_problem`, and at most `MAX_LABELS` maps)."""
    maps = nse.network_service_labels
    if len(maps) > MAX_LABELS:
        return f"{len(maps)} network service label maps; at most {MAX_LABELS} are accepted"
    for service, labels in maps.items():
        problem = label_map_problem(labels.labels)
        if problem is not None:
            return f"labels of {service[:40]!r}: {problem}"
    return None


MAX_SELECTORS = 100_000
"""A service's selectors, sources and destinations together: a topology has one match (two selectors) per
link, so a lab of a thousand routers needs thousands; the 4 MiB message limit bounds them anyway."""


def service_labels_problem(service: NetworkService) -> str | None:
    """Why the service's selectors are absurd (`label_map_problem`, and at most `MAX_SELECTORS`)."""
    selectors = [match.source_selector for match in service.matches]
    selectors += [route.destination_selector for match in service.matches for route in match.routes]
    if len(selectors) > MAX_SELECTORS:
        return f"{len(selectors)} selectors; at most {MAX_SELECTORS} are accepted"
    for selector in selectors:
        problem = label_map_problem(selector)
        if problem is not None:
            return f"selector: {problem}"
    return None


async def refuse_if(context: Context, problem: str | None) -> None:
    """A malformed registration (INVALID_ARGUMENT)."""
    if problem is not None:
        await abort(context, ProtocolError(problem))


def _is_inode(url: str) -> bool:
    """`is_inode_url`, False for what urlsplit cannot even split (the url is refused as not unix://)."""
    try:
        return is_inode_url(url)
    except ValueError:
        return False


class EndpointRegistryServicer(registry_pb2_grpc.NetworkServiceEndpointRegistryServicer):
    def __init__(
        self,
        registry: Registry,
        paths: RegistryPathKeeper,
        server: Callable[[], ServerHandle],
        default_expiry: float,
        log: EventLog,
        clock: Callable[[], float] = time.time,
        on_registered: Callable[[EndpointEntry], None] | None = None,
    ) -> None:
        self.registry = registry
        self._on_registered = on_registered
        self.paths = paths
        self._server = server
        self.default_expiry = default_expiry
        self._log = log
        self._clock = clock

    async def _dial_target(self, nse: NetworkServiceEndpoint, context: Context) -> tuple[str, int | None]:
        url = nse.url
        if _is_inode(url):
            try:
                dev, ino = parse_inode_url(url)
            except UrlError as exc:
                await abort(context, exc, "endpoint url: ")
            connection = self._server().connection_for(context)
            if connection is None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no fd passing on this connection")
            assert connection is not None
            try:
                fd = await connection.received.wait(dev, ino, fd_wait(context.time_remaining()))
            except FdNotReceivedError as exc:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"timeout in recvfd waiting for {url}")
                raise AssertionError("unreachable") from exc
            return f"unix:///proc/{os.getpid()}/fd/{fd}", fd
        if url.startswith("unix:///"):
            return url, None
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"endpoint url {url!r}: must be unix:// or inode:// to get KERNEL links")
        raise AssertionError("unreachable")

    async def _owned_by_caller(self, name: str, call: RegistryCall, context: Context) -> EndpointEntry | None:
        """`client_allowed`: the registered entry if the caller may touch it; the call is denied if not."""
        old = self.registry.endpoints.get(name)
        try:
            check_owner("network service endpoint", name, old.owner if old else None, call.caller or "")
        except PermissionDenied as exc:
            self._log.warning("endpoint.denied", name=name, caller=call.caller or "-", reason=str(exc))
            await deny(context, exc)
        return old

    async def Register(self, nse: NetworkServiceEndpoint, context: Context) -> NetworkServiceEndpoint:
        if not nse.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "network service endpoint name is required")
        if not nse.url:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"endpoint {nse.name}: url is required")
        await refuse_if(context, endpoint_labels_problem(nse))
        call = await self.paths.update(context)
        old = await self._owned_by_caller(nse.name, call, context)
        token_expiry = call.expiry
        dial_url, fd = await self._dial_target(nse, context)
        now = self._clock()
        record = NetworkServiceEndpoint()
        record.CopyFrom(nse)
        expiry = min(now + self.default_expiry, token_expiry if token_expiry is not None else math.inf)
        record.expiration_time.CopyFrom(epoch_to_timestamp(expiry))
        if old is not None and old.record.HasField("initial_registration_time"):
            record.initial_registration_time.CopyFrom(old.record.initial_registration_time)
        elif not record.HasField("initial_registration_time"):
            record.initial_registration_time.CopyFrom(epoch_to_timestamp(now))
        del record.path_ids[:]
        record.path_ids.extend(call.path_ids)
        fresh = old is None or old.record.url != nse.url or _unlinked(old.socket_fd)
        if old is not None and not fresh and old.socket_fd is not None and fd is not None:
            os.close(fd)  # same socket file as before: keep the fd (and the /proc path) we already dial
            dial_url, fd = old.dial_url, old.socket_fd
        netns = self.paths.identity.acting_netns(call.connection)
        entry = EndpointEntry(record=record, dial_url=dial_url, socket_fd=fd, netns=netns)
        try:
            self.registry.register_endpoint(entry)
        except ExhaustedError as exc:
            await abort(context, exc, "registry: ")
        if fresh and self._on_registered is not None:
            self._on_registered(entry)
        if fresh:
            self._log.info("endpoint.registered", name=nse.name, services=",".join(nse.network_service_names),
                           url=nse.url, expires_in=round(expiry - now, 1))
        return record

    async def Find(
        self, query: NetworkServiceEndpointQuery, context: Context
    ) -> AsyncIterator[NetworkServiceEndpointResponse]:
        try:
            async for response in self.registry.watch_endpoints(query.network_service_endpoint, query.watch):
                yield response
        except ExhaustedError as exc:
            await abort(context, exc, "registry: ")

    async def Unregister(self, nse: NetworkServiceEndpoint, context: Context) -> Empty:
        if not nse.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "network service endpoint name is required")
        call = await self.paths.update(context)
        await self._owned_by_caller(nse.name, call, context)
        if self.registry.unregister_endpoint(nse.name) is not None:
            self._log.info("endpoint.unregistered", name=nse.name)
        return Empty()


class ServiceRegistryServicer(registry_pb2_grpc.NetworkServiceRegistryServicer):
    def __init__(self, registry: Registry, paths: RegistryPathKeeper, log: EventLog) -> None:
        self.registry = registry
        self.paths = paths
        self._log = log

    async def Register(self, service: NetworkService, context: Context) -> NetworkService:
        if not service.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "network service name is required")
        await refuse_if(context, service_labels_problem(service))
        call = await self.paths.update(context)
        await self._check_local(service.name, context)
        await self._check_owner(service.name, call, context)
        record = NetworkService()
        record.CopyFrom(service)
        del record.path_ids[:]
        record.path_ids.extend(call.path_ids)
        try:
            stored = self.registry.register_service(record)
        except ExhaustedError as exc:
            await abort(context, exc, "registry: ")
        self._log.info("service.registered", name=service.name, payload=service.payload,
                       matches=len(service.matches))
        return stored

    async def Find(
        self, query: NetworkServiceQuery, context: Context
    ) -> AsyncIterator[NetworkServiceResponse]:
        try:
            async for response in self.registry.watch_services(query.network_service, query.watch):
                yield response
        except ExhaustedError as exc:
            await abort(context, exc, "registry: ")

    async def _check_local(self, name: str, context: Context) -> None:
        """A name a Kubernetes NetworkService object defines is changed through the API, not here."""
        try:
            self.registry.check_local(name)
        except ClusterManaged as exc:
            self._log.warning("service.cluster_managed", name=name, origin=exc.origin)
            await abort(context, exc)

    async def _check_owner(self, name: str, call: RegistryCall, context: Context) -> None:
        """`client_allowed`, except for the operator, who manages services on behalf of everyone."""
        old = self.registry.services.get(name)
        owner = old.path_ids[0] if old is not None and old.path_ids and old.path_ids[0] else None
        if self.paths.identity.is_operator(call.caller):
            return
        try:
            check_owner("network service", name, owner, call.caller or "")
        except PermissionDenied as exc:
            self._log.warning("service.denied", name=name, caller=call.caller or "-", reason=str(exc))
            await deny(context, exc)

    async def Unregister(self, service: NetworkService, context: Context) -> Empty:
        call = await self.paths.update(context)
        await self._check_local(service.name, context)
        await self._check_owner(service.name, call, context)
        self.registry.unregister_service(service.name)
        self._log.info("service.unregistered", name=service.name)
        return Empty()
