"""The forwarder's side of a Request: which endpoints may serve it (the NetworkService's matches, round
robin, §10), calling them in turn, and the endpoint's netns fd from its reply."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import grpc

from nsm_local.endpoint_dialer import EndpointChannel, EndpointDialer
from nsm_local.ownership import check_own_namespace
from nsm_local.registry import Registry, endpoint_view, service_view
from nsm_local.request_rules import KERNEL, inode_of
from nsm_local.sessions import Session
from nsm_sdk._proto.networkservice.connection_pb2 import Connection, Mechanism, State
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk._proto.registry.registry_pb2 import NetworkService
from nsm_sdk.agent.nsm_client import RpcFailed
from nsm_sdk.protocol.errors import DeadlineError, NotFoundError, TemporaryError
from nsm_sdk.protocol.matching import EndpointView, RoundRobin, Selection
from nsm_sdk.transport.errors import FdNotReceivedError

ENDPOINT_CALL_TIMEOUT = 10.0


class NotFound(NotFoundError):
    """No service, endpoint or candidate yet: it may be registered later, so the client retries."""


class EndpointsFailed(TemporaryError):
    """Every candidate endpoint failed. Its status is theirs when they agree on one a client can act on
    (unreachable: UNAVAILABLE; malformed request: INVALID_ARGUMENT; no addresses: RESOURCE_EXHAUSTED),
    else UNKNOWN (Go's "all forwarders have failed")."""

    def __init__(self, failures: list[str], codes: set[grpc.StatusCode]) -> None:
        super().__init__("all endpoints failed: " + "; ".join(failures))
        reached = {_UNREACHABLE.get(code, code) for code in codes}
        if len(reached) == 1 and (code := reached.pop()) in _RELAYED:
            self.grpc_status = code.name


_UNREACHABLE = {grpc.StatusCode.DEADLINE_EXCEEDED: grpc.StatusCode.UNAVAILABLE}
_RELAYED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}


class EndpointCaller:
    def __init__(self, registry: Registry, dialer: EndpointDialer, clock: Callable[[], float]) -> None:
        self.registry = registry
        self.dialer = dialer
        self._clock = clock
        self._round_robin = RoundRobin()
        self._selections: dict[str, tuple[NetworkService, int, Selection[EndpointView]]] = {}

    def candidates(self, conn: Connection) -> list[str]:
        """The endpoint a refresh names, else the matches' choice in round-robin order; NotFound if none."""
        if conn.network_service_endpoint_name and conn.state != State.RESELECT_REQUESTED:
            name = conn.network_service_endpoint_name
            if name not in self.registry.endpoints:
                raise NotFound(f"network service endpoint {name} is not found")
            return [name]
        service = self.registry.services.get(conn.network_service)
        if service is None:
            raise NotFound(f"network service {conn.network_service} is not found")
        chosen = self._selection(service).select(dict(conn.labels), self._clock())
        if not chosen:
            raise NotFound(
                f"network service endpoint candidates not found for {service.name} "
                f"(client labels {dict(sorted(conn.labels.items()))})"
            )
        return [view.name for view in self._round_robin.order(service.name, chosen)]

    def _selection(self, service: NetworkService) -> Selection[EndpointView]:
        """The service's indexed selection, made again only when the registry holds another object for
        the service (a registered service is replaced, never changed in place) or its endpoints changed."""
        version = self.registry.endpoints_version
        cached = self._selections.get(service.name)
        if cached is not None and cached[0] is service and cached[1] == version:
            return cached[2]
        views = [endpoint_view(entry, service.name) for entry in self.registry.endpoints_of(service.name)]
        if cached is not None and cached[0] is service:
            selection = cached[2].with_endpoints(views)  # the matches' index stays good
        else:
            selection = Selection(service_view(service), views)
        self._selections[service.name] = (service, version, selection)
        return selection

    async def call(
        self, conn: Connection, forwarded: Connection, session: Session | None, time_left: float | None
    ) -> tuple[str, EndpointChannel, Connection]:
        """The first candidate that accepts `forwarded`: its name, our channel to it and its reply."""
        failures: list[str] = []
        codes: set[grpc.StatusCode] = set()
        service = self.registry.services.get(conn.network_service)
        for name in self.candidates(conn):
            entry = self.registry.endpoints.get(name)
            if entry is None:
                continue
            outgoing = NetworkServiceRequest()
            outgoing.connection.CopyFrom(forwarded)
            outgoing.connection.network_service_endpoint_name = name
            if service is not None:
                outgoing.connection.payload = service.payload
            outgoing.mechanism_preferences.append(Mechanism(cls="LOCAL", type=KERNEL))
            if session is not None and session.endpoint_name != name:
                outgoing.connection.ClearField("mechanism")
            channel = await self.dialer.get(entry)
            timeout = min(ENDPOINT_CALL_TIMEOUT, max(0.1, (time_left or ENDPOINT_CALL_TIMEOUT) - 0.5))
            try:
                reply = await channel.client.request(outgoing, timeout, wait_for_ready=False)
            except RpcFailed as exc:
                failures.append(f"{name}: {exc}")
                codes.add(exc.code)
                if exc.code == grpc.StatusCode.UNAVAILABLE:
                    await self.dialer.drop(channel.key)
                continue
            if reply.mechanism.type != KERNEL or not reply.mechanism.parameters.get("name"):
                failures.append(f"{name}: reply has no KERNEL mechanism with an interface name")
                codes.add(grpc.StatusCode.UNKNOWN)
                with contextlib.suppress(RpcFailed):
                    await channel.client.close(reply, ENDPOINT_CALL_TIMEOUT)
                continue
            return name, channel, reply
        raise EndpointsFailed(failures, codes)

    async def netns_fd(
        self, name: str, reply: Connection, channel: EndpointChannel, time_left: float | None
    ) -> tuple[int, int]:
        """A dup of the endpoint's netns fd, sent with its reply, and that netns's inode."""
        url = reply.mechanism.parameters.get("inodeURL", "")
        dev, ino = inode_of(url, "endpoint")
        entry = self.registry.endpoints.get(name)
        check_own_namespace(f"endpoint {name}", ino, entry.netns if entry is not None else None)
        try:
            fd = await channel.relay.wait_fd(dev, ino, min(5.0, time_left or 5.0))
        except FdNotReceivedError as exc:
            raise DeadlineError(f"timeout in recvfd waiting for the endpoint's {url}") from exc
        return fd, ino

    async def close_at(self, endpoint_name: str, endpoint_conn: Connection) -> str | None:
        """Close `endpoint_conn` at its endpoint if it is still registered; why it failed, if it did."""
        entry = self.registry.endpoints.get(endpoint_name)
        if entry is None:
            return None
        try:
            channel = await self.dialer.get(entry)
            await channel.client.close(endpoint_conn, ENDPOINT_CALL_TIMEOUT)
        except RpcFailed as exc:
            return str(exc)
        return None
