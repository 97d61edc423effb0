"""How an agent proves who it is and checks who it talks to (protocol doc §3).

Secure (the default): the X.509-SVID comes from the SPIFFE Workload API; every connection is mTLS
(`TlsSecurity` in the relay) and every token is signed with the SVID's key and addressed to the TLS peer.
Insecure (`NSM_INSECURE=true`, or nsm-local `--insecure`): plaintext and tokens signed with a throwaway
key, which nobody can verify. It exists for quick experiments and says so loudly.

`authorize_server` applies NSM's default server policies to a Request or Close, as nsmgr and the Go NSE do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk.agent.credentials import CallTokens, signer_for
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.identity.peer import PeerIdentity
from nsm_sdk.identity.policies import check_server
from nsm_sdk.identity.tokens import TokenSigner
from nsm_sdk.identity.x509 import X509Material
from nsm_sdk.protocol.envvalues import SecuritySettings
from nsm_sdk.transport.client import dial
from nsm_sdk.transport.probe import socket_problem
from nsm_sdk.transport.security import PLAINTEXT, StreamSecurity
from nsm_sdk.transport.server import ServerHandle
from nsm_sdk.transport.tls import TlsSecurity

if TYPE_CHECKING:  # py-spiffe is loaded in secure mode only (about 60 ms of imports)
    from nsm_sdk.identity.workload import WorkloadApiSource

INSECURE_WARNING = (
    "INSECURE: plaintext gRPC, no peer authentication, tokens nobody can verify; any local process can "
    "act as any other. For quick experiments only"
)


@dataclass
class AgentIdentity:
    """What an agent dials and serves with (`security`) and signs with (`tokens`)."""

    security: StreamSecurity
    tokens: CallTokens
    source: WorkloadApiSource | None = None

    @property
    def secure(self) -> bool:
        return self.source is not None

    @property
    def spiffe_id(self) -> str:
        return self.tokens.spiffe_id


def material_signer(current: Callable[[], X509Material]) -> Callable[[], TokenSigner]:
    """The signer of the current SVID, made once per SVID (a rotation gives a new material object)."""
    return lambda: signer_for(current())


def secure_identity(
    current: Callable[[], X509Material], lifetime: float
) -> tuple[StreamSecurity, CallTokens]:
    """mTLS and tokens from whatever `current()` returns at each handshake and signature."""
    return TlsSecurity(current), CallTokens(material_signer(current), lifetime)


@asynccontextmanager
async def agent_identity(
    settings: SecuritySettings,
    name: str,
    lifetime: float,
    log: EventLog,
    stop: asyncio.Event,
    netns_fd: int | None = None,
) -> AsyncIterator[AgentIdentity | None]:
    """The agent's identity for its whole life; None if `stop` came while waiting for the first SVID.

    With `netns_fd` (an agent host acting for one of its routers) the Workload API is dialled through a
    relay that sends that namespace's fd with its first bytes, so the SVID names the router's namespace
    (`PeerCredentials.acting_in`); without it, the process's own.
    """
    if settings.insecure:
        if netns_fd is None:
            log.warning("security.insecure", detail=INSECURE_WARNING)
        yield AgentIdentity(PLAINTEXT, CallTokens(TokenSigner(name), lifetime))
        return
    from nsm_sdk.identity.workload import WorkloadApiSource

    url = str(settings.spiffe_endpoint)
    async with contextlib.AsyncExitStack() as stack:
        channel = None
        if netns_fd is not None:
            channel, _ = await stack.enter_async_context(dial(url, send_fds=[netns_fd]))
        source = WorkloadApiSource(url, channel, socket_problem)
        stack.push_async_callback(source.aclose)
        if not await source.start(stop):
            yield None
            return
        security, tokens = secure_identity(source.current, lifetime)
        prepare(security)
        yield AgentIdentity(security, tokens, source)


def prepare(security: StreamSecurity) -> None:
    """Build the TLS contexts of the current SVID ahead of the first connection (a few ms each)."""
    if isinstance(security, TlsSecurity):
        security.prepare(server_side=False)
        security.prepare(server_side=True)


def call_peer(handle: ServerHandle, context: grpc.aio.ServicerContext[Any, Any]) -> PeerIdentity | None:
    """The authenticated caller of a servicer call (None in plaintext)."""
    connection = handle.connection_for(context)
    return connection.peer if connection is not None else None


def authorize_server(conn: Connection, peer: PeerIdentity | None, now: float | None = None) -> None:
    """nsmgr's and the Go NSE's default policies on a Request/Close (§3.4): the left side of the path up to
    our own segment (`conn.path.index`), after updatepath and updatetoken. Skipped without a TLS peer (the
    insecure mode has nothing to check against). Raises `PermissionDenied`."""
    if peer is None:
        return
    index = conn.path.index
    tokens = [segment.token for segment in conn.path.path_segments[: index + 1]]
    check_server(tokens, index, peer.public_key, time.time() if now is None else now)
