"""A misbehaving NSM client for the security tests: `python tests/intruder.py ATTACK [options]`.

It speaks the real protocol through the project's transport, but breaks one rule per attack, and prints
one JSON object: {"attack", "code" (gRPC status name, or "OK"), "details"}. The tests run it in a network
namespace of its own (so nsm-local's Workload API gives it an identity of its own) and check that the
control plane refused it and changed nothing.

Attacks:
  foreign-ca        mTLS with an SVID from another CA (--trust-domain: same name or another one)
  wrong-key         our own SVID for TLS, but the token signed with another key
  expired           a token that expired a minute ago
  aud-other         a token addressed to someone other than the server (the chain breaks)
  broken-chain      a path whose earlier segment's token is not addressed to the next one
  foreign-netns     a first Request offering another process's network namespace (--netns-of PID)
  refresh-other     re-send someone else's connection (--victim JSON, from a monitor) as a refresh
  close-other       Close someone else's connection (--victim JSON)
  register-other    register an endpoint under a name someone else owns (--name)
  monitor           watch every connection; details: the connections it was shown (JSON object by id)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf import json_format

from nsm_local.dev_ca import DevCA
from nsm_sdk._proto.networkservice import connection_pb2_grpc, networkservice_pb2_grpc
from nsm_sdk._proto.networkservice.connection_pb2 import Connection, MonitorScopeSelector
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk._proto.registry import registry_pb2_grpc
from nsm_sdk._proto.registry.registry_pb2 import NetworkServiceEndpoint
from nsm_sdk.agent.credentials import TOKEN_EXPIRES_KEY, TOKEN_KEY, CallTokens, Metadata
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.nsm_client import NsmClient, RpcFailed
from nsm_sdk.agent.security import AgentIdentity, agent_identity, secure_identity
from nsm_sdk.identity.peer import PeerIdentity
from nsm_sdk.identity.tokens import TokenSigner
from nsm_sdk.protocol.envvalues import SecuritySettings
from nsm_sdk.protocol.gotime import format_rfc3339nano
from nsm_sdk.protocol.registry_path import PATH_METADATA_KEY, RegistryPath
from nsm_sdk.protocol.requests import first_request, kernel_preference, refresh_request
from nsm_sdk.transport.client import dial
from nsm_sdk.transport.fdpass import open_netns_fd, open_socket_file_fd
from nsm_sdk.transport.urls import inode_url_for_fd, inode_url_for_path

NAME = "intruder"
TIMEOUT = 5.0


@asynccontextmanager
async def own_identity() -> AsyncIterator[AgentIdentity]:
    """Our legitimate SVID from SPIFFE_ENDPOINT_SOCKET."""
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(15, stop.set)
    async with agent_identity(SecuritySettings.from_env(os.environ), NAME, 600, EventLog("x"), stop) as got:
        if got is None:
            raise SystemExit("intruder: no SVID from the Workload API")
        yield got


def token_metadata(
    signer: TokenSigner, peer: PeerIdentity | None, now: float, lifetime: float = 600
) -> Metadata:
    audience = peer.spiffe_id if peer is not None else None
    token, expires = signer.sign(audience, lifetime, now)
    return ((TOKEN_KEY, token), (TOKEN_EXPIRES_KEY, format_rfc3339nano(expires)))


def outcome(attack: str, error: BaseException | None) -> dict[str, str]:
    if error is None:
        return {"attack": attack, "code": "OK", "details": ""}
    if isinstance(error, grpc.aio.AioRpcError):
        return {"attack": attack, "code": error.code().name, "details": error.details() or ""}
    if isinstance(error, RpcFailed):
        return {"attack": attack, "code": error.code.name, "details": error.details}
    return {"attack": attack, "code": type(error).__name__, "details": str(error)}


async def attempt(attack: str, call: Any) -> dict[str, str]:
    try:
        await call
    except (grpc.aio.AioRpcError, RpcFailed) as exc:
        return outcome(attack, exc)
    return outcome(attack, None)


class Intruder:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.netns_fd = open_netns_fd()
        self.netns_url = inode_url_for_fd(self.netns_fd)

    def request(self, conn_id: str = "intruder-0") -> NetworkServiceRequest:
        labels = dict(label.split("=", 1) for label in self.args.label)
        preference = kernel_preference(self.args.ifname, self.netns_url)
        return first_request(NAME, conn_id, self.args.service, labels, preference)

    @asynccontextmanager
    async def client(
        self, identity: AgentIdentity, send_fds: tuple[int, ...] = ()
    ) -> AsyncIterator[NsmClient]:
        fds = send_fds or (self.netns_fd,)
        async with dial(self.args.url, send_fds=fds, security=identity.security) as (channel, relay):
            yield NsmClient(channel, identity.tokens, relay)

    async def run(self, attack: str) -> dict[str, str]:
        handler = getattr(self, "attack_" + attack.replace("-", "_"))
        result: dict[str, str] = await handler()
        result["attack"] = attack
        return result

    async def attack_foreign_ca(self) -> dict[str, str]:
        """A certificate of another CA; we trust the real bundle (bundles are public), so the server is
        the one that must refuse us."""
        async with own_identity() as identity:
            assert identity.source is not None
            real_bundles = identity.source.current().bundles
        ca = DevCA.generate(self.args.trust_domain)
        forged = ca.issue(f"spiffe://{self.args.trust_domain}/{NAME}", 600)
        bundles = dict(real_bundles)
        for domain, authorities in forged.bundles.items():
            bundles[domain] = (*bundles.get(domain, ()), *authorities)
        material = dataclasses.replace(forged, bundles=bundles)
        security, tokens = secure_identity(lambda: material, 600)
        async with self.client(AgentIdentity(security, tokens)) as client:
            return await attempt("", client.request(self.request(), TIMEOUT))

    async def _with_tokens(self, make: Any) -> dict[str, str]:
        async with own_identity() as identity, self.client(identity) as client:
            peer = await client.peer("intruder", TIMEOUT)
            stub = networkservice_pb2_grpc.NetworkServiceStub(client.channel)
            request = self.request()
            make_request = getattr(make, "request", None)
            if make_request is not None:
                request = make_request(identity)
            metadata = make(identity, peer)
            return await attempt("", stub.Request(request, metadata=metadata, timeout=TIMEOUT))

    async def attack_wrong_key(self) -> dict[str, str]:
        def make(identity: AgentIdentity, peer: PeerIdentity | None) -> Metadata:
            other_key = TokenSigner(spiffe_id=identity.spiffe_id)  # our name, a key that is not our TLS key
            return token_metadata(other_key, peer, time.time())

        return await self._with_tokens(make)

    async def attack_expired(self) -> dict[str, str]:
        def make(identity: AgentIdentity, peer: PeerIdentity | None) -> Metadata:
            return CallTokens(identity.tokens.signer, 30, clock=lambda: time.time() - 90).metadata(peer)

        return await self._with_tokens(make)

    async def attack_aud_other(self) -> dict[str, str]:
        def make(identity: AgentIdentity, peer: PeerIdentity | None) -> Metadata:
            token, expires = identity.tokens.signer.sign(
                f"spiffe://{self.args.trust_domain}/somebody-else", 600, time.time()
            )
            return ((TOKEN_KEY, token), (TOKEN_EXPIRES_KEY, format_rfc3339nano(expires)))

        return await self._with_tokens(make)

    async def attack_broken_chain(self) -> dict[str, str]:
        def make(identity: AgentIdentity, peer: PeerIdentity | None) -> Metadata:
            return identity.tokens.metadata(peer)

        def request(identity: AgentIdentity) -> NetworkServiceRequest:
            built = self.request()
            conn = built.connection
            ghost_token, _ = TokenSigner(spiffe_id=f"spiffe://{self.args.trust_domain}/ghost").sign(
                f"spiffe://{self.args.trust_domain}/elsewhere", 600, time.time()
            )
            del conn.path.path_segments[:]
            conn.path.path_segments.add(name="ghost", id="ghost-0", token=ghost_token)
            conn.path.path_segments.add(name=NAME, id="intruder-0")
            conn.path.index = 1
            return built

        make.request = request  # type: ignore[attr-defined]
        return await self._with_tokens(make)

    async def attack_foreign_netns(self) -> dict[str, str]:
        fd = os.open(f"/proc/{self.args.netns_of}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            async with own_identity() as identity, self.client(identity, send_fds=(fd,)) as client:
                preference = kernel_preference(self.args.ifname, inode_url_for_fd(fd))
                labels = dict(label.split("=", 1) for label in self.args.label)
                request = first_request(NAME, "intruder-0", self.args.service, labels, preference)
                return await attempt("", client.request(request, TIMEOUT))
        finally:
            os.close(fd)

    def victim(self) -> Connection:
        return json_format.Parse(self.args.victim, Connection())

    async def attack_refresh_other(self) -> dict[str, str]:
        async with own_identity() as identity, self.client(identity) as client:
            request = refresh_request(self.victim(), kernel_preference(self.args.ifname, self.netns_url))
            return await attempt("", client.request(request, TIMEOUT))

    async def attack_close_other(self) -> dict[str, str]:
        async with own_identity() as identity, self.client(identity) as client:
            victim = self.victim()
            victim.path.index = 0
            victim.id = victim.path.path_segments[0].id
            return await attempt("", client.close(victim, TIMEOUT))

    async def attack_register_other(self) -> dict[str, str]:
        """A well-formed registration (a real socket, passed as an fd, as an NSE sends it) under a name
        another identity holds."""
        directory = tempfile.mkdtemp(prefix="intruder-")
        path = os.path.join(directory, "listen.on")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(1)
            socket_fd = open_socket_file_fd(path)
            try:
                async with own_identity() as identity, self.client(identity, send_fds=(socket_fd,)) as client:
                    url = inode_url_for_path(path)
                    services = [self.args.service]
                    record = NetworkServiceEndpoint(
                        name=self.args.name, url=url, network_service_names=services
                    )
                    stub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(client.channel)
                    peer = await client.peer("intruder", TIMEOUT)
                    extra = ((PATH_METADATA_KEY, RegistryPath().to_json()),)
                    metadata = identity.tokens.metadata(peer, extra)
                    return await attempt("", stub.Register(record, metadata=metadata, timeout=TIMEOUT))
            finally:
                os.close(socket_fd)
        finally:
            listener.close()
            shutil.rmtree(directory, ignore_errors=True)

    async def attack_monitor(self) -> dict[str, str]:
        async with own_identity() as identity, self.client(identity) as client:
            stub = connection_pb2_grpc.MonitorConnectionStub(client.channel)
            peer = await client.peer("intruder", TIMEOUT)
            call = stub.MonitorConnections(MonitorScopeSelector(), metadata=identity.tokens.metadata(peer))
            try:
                async with asyncio.timeout(TIMEOUT):
                    async for event in call:
                        shown = {k: json_format.MessageToDict(c) for k, c in event.connections.items()}
                        return {"code": "OK", "details": json.dumps(shown)}
            except grpc.aio.AioRpcError as exc:
                return outcome("", exc)
            finally:
                call.cancel()
        return {"code": "NO_EVENT", "details": ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attack")
    parser.add_argument("--url", default=os.environ.get("NSM_CONNECT_TO", ""))
    parser.add_argument("--service", default="p2p")
    parser.add_argument("--label", action="append", default=[])
    parser.add_argument("--ifname", default="evil0")
    parser.add_argument("--trust-domain", default="nsm.local")
    parser.add_argument("--netns-of", type=int, default=0)
    parser.add_argument("--victim", default="")
    parser.add_argument("--name", default="")
    args = parser.parse_args()
    result = asyncio.run(Intruder(args).run(args.attack))
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
