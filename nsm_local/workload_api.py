"""A development SPIFFE Workload API: X.509-SVIDs for the workloads of one host, signed by a `DevCA`.

What SPIRE's agent does on its socket, reduced to what NSM needs (protocol doc §3.1): plaintext gRPC on a
unix socket anyone may connect to; every call must carry the `workload.spiffe.io: true` header; the
caller is attested from what the kernel says about the connecting process (`PeerCredentials`, read by
the relay at accept). The default attestation gives every (network namespace, uid) pair its own
identity, `spiffe://<trust domain>/netns/<netns inode>/uid/<uid>`: each device of a lab is a netns, and a
restarted sidecar in the same netns gets the same identity back. In Kubernetes mode the attestor names the
caller's pod, and may wait a little for the API to report a container that has just started (an
`AsyncAttestor`); a caller it cannot name gets PERMISSION_DENIED, never a default identity.

`FetchX509SVID` streams: an SVID at once, then a new one (new key) at half of each SVID's lifetime, like
SPIRE's rotation, until the client goes away. Bundles are keyed by the trust domain's id
(`spiffe://nsm.local`) as SPIRE sends them; py-spiffe and go-spiffe accept that and the bare name.
JWT-SVIDs are not served.

Served through `nsm_sdk.transport.serve` (the relay is what knows the caller's credentials); the generated
messages are py-spiffe's (`spiffe._proto`), so the descriptor pool has exactly one `workload.proto`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2, workload_pb2_grpc

from nsm_local.attestation import DEFAULT_SVID_TTL, AsyncAttestor, Attestor, netns_uid_attestor
from nsm_local.dev_ca import DevCA, DevCAError
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.identity.x509 import X509Material
from nsm_sdk.transport.peercred import PeerCredentials

__all__ = [
    "DEFAULT_SVID_TTL",
    "AsyncAttestor",
    "Attestor",
    "WorkloadApiServicer",
    "netns_uid_attestor",
    "serve_workload_api",
]
from nsm_sdk.transport.server import ServerHandle, serve

if TYPE_CHECKING:  # the stubs' generics are not subscriptable at run time
    _Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

SOCKET_MODE = 0o666
"""Anyone may connect, as to SPIRE's agent socket: callers are attested, not trusted."""
SECURITY_HEADER = "workload.spiffe.io"
HEADER_MISSING = "security header missing from request"
NO_IDENTITY = "no identity issued"
JWT_UNIMPLEMENTED = "nsm-local's development Workload API issues X.509-SVIDs only; JWT-SVIDs are not served"


def bundle_key(trust_domain: str) -> str:
    """How SPIRE keys bundle maps: the trust domain's SPIFFE id."""
    return f"spiffe://{trust_domain}"


def _der(material: X509Material) -> tuple[bytes, bytes, bytes]:
    """Chain (leaf first), PKCS#8 key and own-trust-domain bundle, each as the Workload API wants DER."""
    chain = b"".join(cert.public_bytes(serialization.Encoding.DER) for cert in material.chain)
    key = material.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    bundle = b"".join(
        cert.public_bytes(serialization.Encoding.DER) for cert in material.bundles[material.trust_domain]
    )
    return chain, key, bundle


def svid_response(material: X509Material) -> Any:
    chain, key, bundle = _der(material)
    svid = workload_pb2.X509SVID(
        spiffe_id=material.spiffe_id, x509_svid=chain, x509_svid_key=key, bundle=bundle
    )
    return workload_pb2.X509SVIDResponse(svids=[svid])


def bundles_response(ca: DevCA) -> Any:
    bundle = b"".join(cert.public_bytes(serialization.Encoding.DER) for cert in ca.bundle)
    return workload_pb2.X509BundlesResponse(bundles={bundle_key(ca.trust_domain): bundle})


def has_security_header(metadata: Any) -> bool:
    """Exactly one `workload.spiffe.io` value, and it is `true` (SPIRE's check)."""
    values = [value for key, value in metadata or () if key == SECURITY_HEADER]
    return values == ["true"]


class WorkloadApiServicer:
    """The SpiffeWorkloadAPI service over a `DevCA`. Serve it with `serve(path)`."""

    def __init__(
        self,
        ca: DevCA,
        ttl: float = DEFAULT_SVID_TTL,
        attest: Attestor | AsyncAttestor | None = None,
        *,
        log: EventLog | None = None,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"SVID lifetime must be positive, not {ttl}")
        self._ca = ca
        self._ttl = ttl
        self._attest: Attestor | AsyncAttestor = (
            attest if attest is not None else netns_uid_attestor(ca.trust_domain)
        )
        self._log = log if log is not None else EventLog("nsm_local.workload_api")
        self._ca_changed = asyncio.Event()
        self._handle: ServerHandle | None = None
        self._streams = 0

    def __repr__(self) -> str:
        where = self._handle.relay.listen_path if self._handle else "not serving"
        return f"<WorkloadApiServicer {where} {self._ca!r} ttl={self._ttl}s streams={self._streams}>"

    @property
    def ca(self) -> DevCA:
        return self._ca

    @property
    def active_streams(self) -> int:
        """Fetch streams running right now."""
        return self._streams

    def replace_ca(self, ca: DevCA) -> None:
        """Issue from `ca` from now on; every open stream gets the new bundle (and a new SVID) at once."""
        self._ca = ca
        changed, self._ca_changed = self._ca_changed, asyncio.Event()
        changed.set()

    def register(self, server: grpc.aio.Server) -> None:
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self, server)

    @asynccontextmanager
    async def serve(self, path: str) -> AsyncIterator[ServerHandle]:
        """Serve on the unix socket `path` (mode 0666, plaintext) until the context exits."""
        async with serve(path, self.register, socket_mode=SOCKET_MODE) as handle:
            self._handle = handle
            try:
                yield handle
            finally:
                self._handle = None

    async def FetchX509SVID(self, request: Any, context: _Context) -> AsyncIterator[Any]:
        spiffe_id, credentials = await self._admit(context)
        log = self._log.bind(spiffe_id=spiffe_id, pid=credentials.pid)
        if credentials.delegated:  # an agent host, for one of its routers (`PeerCredentials.acting_in`)
            log = log.bind(process_netns=credentials.process_netns)
        with self._stream():
            first = True
            while True:
                ca, changed = self._ca, self._ca_changed
                now = time.time()
                try:
                    material = ca.issue(spiffe_id, self._ttl, now)
                except DevCAError as exc:
                    log.error("workload.svid_failed", error=str(exc))
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                lifetime = material.not_after - now
                (log.info if first else log.debug)("workload.svid_issued", expires_in=round(lifetime, 1))
                first = False
                yield svid_response(material)
                await _changed_or_timeout(changed, lifetime / 2)

    async def FetchX509Bundles(self, request: Any, context: _Context) -> AsyncIterator[Any]:
        await self._admit(context)
        with self._stream():
            while True:
                ca, changed = self._ca, self._ca_changed
                yield bundles_response(ca)
                await changed.wait()

    async def FetchJWTSVID(self, request: Any, context: _Context) -> Any:
        await self._refuse_jwt(context)

    async def FetchJWTBundles(self, request: Any, context: _Context) -> Any:
        await self._refuse_jwt(context)

    async def ValidateJWTSVID(self, request: Any, context: _Context) -> Any:
        await self._refuse_jwt(context)

    async def _refuse_jwt(self, context: _Context) -> None:
        await _check_header(context)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, JWT_UNIMPLEMENTED)

    async def _admit(self, context: _Context) -> tuple[str, PeerCredentials]:
        """The caller's SPIFFE id and credentials, or the call is aborted as SPIRE would."""
        await _check_header(context)
        connection = self._handle.connection_for(context) if self._handle is not None else None
        credentials = connection.credentials if connection is not None else None
        spiffe_id = await self._attested(credentials) if credentials is not None else None
        if credentials is None or spiffe_id is None:
            self._log.warning(
                "workload.attestation_denied",
                pid=getattr(credentials, "pid", None),
                uid=getattr(credentials, "uid", None),
                netns=getattr(credentials, "netns", None),
            )
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, NO_IDENTITY)
        return spiffe_id, credentials

    async def _attested(self, credentials: PeerCredentials) -> str | None:
        answer = self._attest(credentials)
        if inspect.isawaitable(answer):
            return await answer
        return answer

    @contextlib.contextmanager
    def _stream(self) -> Iterator[None]:
        self._streams += 1
        try:
            yield
        finally:
            self._streams -= 1


async def _check_header(context: _Context) -> None:
    if not has_security_header(context.invocation_metadata()):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, HEADER_MISSING)


async def _changed_or_timeout(changed: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await changed.wait()


@asynccontextmanager
async def serve_workload_api(
    path: str, ca: DevCA, ttl: float = DEFAULT_SVID_TTL, attest: Attestor | AsyncAttestor | None = None
) -> AsyncIterator[ServerHandle]:
    """Serve a development Workload API for `ca` on the unix socket `path` (what nsm-local runs)."""
    async with WorkloadApiServicer(ca, ttl, attest).serve(path) as handle:
        yield handle
