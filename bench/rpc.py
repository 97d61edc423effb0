"""What the transport and the endpoint logic cost per call.

1. Unary call latency and throughput of a raw-bytes echo over a unix socket, five ways:
     direct        grpc.aio channel `unix:PATH` -> grpc.aio server `unix:PATH` (no relay)
     client relay  `nsm_sdk.transport.dial` (ClientRelay) -> plain grpc.aio server
     server relay  plain grpc.aio channel -> `nsm_sdk.transport.serve` (ServerRelay + relay-only guard)
     both relays   dial -> serve, in plaintext (`--insecure` / NSM_INSECURE=true)
     both relays + mTLS
                   dial -> serve with `TlsSecurity` on both sides (X.509-SVIDs of two SPIFFE ids from one
                   in-memory development CA), as every sidecar and nsm-local talk by default
   each with the server in this process (one event loop, as the architecture doc's figure) and in a
   separate process (as the programs really run), for a small and an NSM-sized payload. The connect
   column (new channel + first call) holds the TLS handshake for the mTLS variant. What mTLS adds is
   measured once more with the plain and the mTLS relays interleaved (both servers up, connects and
   batches of calls alternating), so that load changing during the run cannot pose as a difference.
2. Per-call cost of the endpoint's logic (`nse_sidecar.endpoint.EndpointCore`), free of gRPC: a first
   Request with a real ES256 signer and with a constant token, a refresh, a Close, and the pieces
   (token signing, protobuf round trip of the request) that explain the totals.
3. The identity work of the secure mode, free of sockets: a token signed with a real SVID and addressed
   to the TLS peer, NSM's server and client policies on a 4-segment path (nsc, nsmgr, forwarder, nse),
   SPIFFE verification of a peer's chain, a full TLS handshake in memory, the TLS contexts built once
   per SVID (rotation), and `EndpointCore.request` with the caller's identity (policies on) and without.

Bounded: `--calls` per measurement (default 2000), no sockets or files outside a fresh temp directory
(the child server's SVID is handed over in a 0600 file there), the child server is killed on exit.
Needs no root.

    python bench/rpc.py
    python bench/rpc.py --calls 5000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from benchlib import machine_busy_seconds, median, own_cpu_seconds, percentile, print_machine, table
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nse_sidecar.endpoint import EndpointCore
from nsm_local.dev_ca import DevCA
from nsm_sdk._proto.networkservice.connection_pb2 import Connection, State
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk.agent.credentials import CallTokens, caller_token, signer_for
from nsm_sdk.agent.security import material_signer
from nsm_sdk.identity.peer import PeerIdentity, spiffe_id_of, verify_peer
from nsm_sdk.identity.policies import check_client, check_server
from nsm_sdk.identity.tokens import TokenSigner, decode_unverified, signature_valid
from nsm_sdk.identity.x509 import X509Material, certificates_pem
from nsm_sdk.protocol.gotime import set_timestamp
from nsm_sdk.protocol.ipam import SeedP2PAllocator
from nsm_sdk.protocol.requests import kernel_preference
from nsm_sdk.transport import CHANNEL_OPTIONS, dial, serve
from nsm_sdk.transport.client import ClientRelay
from nsm_sdk.transport.security import PLAINTEXT, StreamSecurity
from nsm_sdk.transport.tls import TlsSecurity, TlsSession, make_context

SERVICE = "nsmbench.Echo"
METHOD = f"/{SERVICE}/Echo"
CALL_TIMEOUT = 10.0
WARMUP = 200
CONNECT_REPEATS = 10
PAIR_ROUNDS = 20
TRUST_DOMAIN = "nsm.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/bench/echo-client"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/bench/echo-server"
SVID_TTL = 3600.0


@dataclass(frozen=True)
class Variant:
    name: str
    client_relay: bool
    server_relay: bool
    tls: bool = False


VARIANTS = (
    Variant("direct", False, False),
    Variant("client relay", True, False),
    Variant("server relay", False, True),
    Variant("both relays", True, True),
    Variant("both relays + mTLS", True, True, tls=True),
)
PLAIN_RELAYS = "both relays"
MTLS = "both relays + mTLS"


@dataclass(frozen=True)
class Svids:
    """Two X.509-SVIDs from one development CA: the echo client's and the echo server's."""

    client: X509Material
    server: X509Material

    @classmethod
    def issue(cls) -> Svids:
        ca = DevCA.generate(TRUST_DOMAIN)
        return cls(ca.issue(CLIENT_ID, SVID_TTL), ca.issue(SERVER_ID, SVID_TTL))


def save_material(material: X509Material, path: Path) -> None:
    """SVID, key and bundle for the child server: PEM blocks in a 0600 file of the bench's temp directory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(material.key_pem())
        out.write(certificates_pem(material.chain))
        out.write(b"# bundle\n")
        out.write(certificates_pem(material.bundles[material.trust_domain]))


def load_material(path: Path) -> X509Material:
    text = path.read_bytes()
    own, bundle = text.split(b"# bundle\n")
    key = serialization.load_pem_private_key(own, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    chain = tuple(x509.load_pem_x509_certificates(own))
    bundles = {TRUST_DOMAIN: tuple(x509.load_pem_x509_certificates(bundle))}
    return X509Material(spiffe_id_of(chain[0]), chain, key, bundles)


def tls_security(material: X509Material) -> TlsSecurity:
    return TlsSecurity(lambda: material)


# --- the echo server -------------------------------------------------------------------------------------


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def register(server: grpc.aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(_echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler}),))


@asynccontextmanager
async def echo_server(path: str, relay: bool, security: StreamSecurity = PLAINTEXT) -> AsyncIterator[None]:
    if relay:
        async with serve(path, register, security=security):
            yield
        return
    server = grpc.aio.server()
    register(server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    try:
        yield
    finally:
        await server.stop(None)


async def child_main(path: str, relay: bool, svid_file: str | None) -> None:
    """The server of the two-process placement: serve until stdin closes (the bench ended or died)."""
    security = tls_security(load_material(Path(svid_file))) if svid_file else PLAINTEXT
    async with echo_server(path, relay, security):
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


@asynccontextmanager
async def server_in_child(path: str, relay: bool, svid_file: Path | None) -> AsyncIterator[None]:
    svid_args = ["--child-svid", str(svid_file)] if svid_file is not None else []
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child", path, "1" if relay else "0", *svid_args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"echo server did not start (exit {child.returncode})")
        yield
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 5)
        except TimeoutError:
            child.kill()
            await child.wait()


@asynccontextmanager
async def echo_channel(path: str, relay: bool, security: StreamSecurity = PLAINTEXT
                       ) -> AsyncIterator[tuple[grpc.aio.Channel, ClientRelay | None]]:
    if relay:
        async with dial(f"unix://{path}", security=security) as (channel, client_relay):
            yield channel, client_relay
        return
    channel = grpc.aio.insecure_channel(f"unix:{path}", options=list(CHANNEL_OPTIONS))
    try:
        yield channel, None
    finally:
        await channel.close(None)


# --- measuring calls ------------------------------------------------------------------------------------


@dataclass
class CallFigures:
    variant: str
    placement: str
    payload: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    sequential_per_s: float
    concurrent_per_s: float
    connect_ms: float


async def sequential(call: Callable[[bytes], Any], payload: bytes, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        await call(payload)
        times.append((time.perf_counter_ns() - start) / 1000)
    return times


async def concurrent(call: Callable[[bytes], Any], payload: bytes, calls: int, width: int) -> float:
    """Calls per second with `width` callers sharing one channel."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await call(payload)

    share, extra = divmod(calls, width)
    start = time.perf_counter()
    await asyncio.gather(*(worker(share + (1 if i < extra else 0)) for i in range(width)))
    return calls / (time.perf_counter() - start)


async def connect_and_first_call(path: str, relay: bool, payload: bytes, security: StreamSecurity) -> float:
    start = time.perf_counter()
    async with echo_channel(path, relay, security) as (channel, _relay):
        await channel.unary_unary(METHOD, None, None)(payload, timeout=CALL_TIMEOUT, wait_for_ready=True)
        return (time.perf_counter() - start) * 1000


def check_peer(variant: Variant, client_relay: ClientRelay | None) -> None:
    """The mTLS variant really ran mTLS: the call went over a connection whose server is the echo server."""
    if not variant.tls:
        return
    connection = client_relay.current_connection() if client_relay is not None else None
    peer = connection.peer if connection is not None else None
    if peer is None or peer.spiffe_id != SERVER_ID:
        raise RuntimeError(f"{variant.name}: the server was not authenticated as {SERVER_ID} ({peer})")


def fresh_path(directory: Path) -> str:
    return str(directory / f"echo-{os.getpid()}-{time.monotonic_ns()}.sock")


def server_for(variant: Variant, separate: bool, path: str, svids: Svids
               ) -> AbstractAsyncContextManager[None]:
    if separate:
        svid_file = None
        if variant.tls:
            svid_file = Path(path + ".svid.pem")
            save_material(svids.server, svid_file)
        return server_in_child(path, variant.server_relay, svid_file)
    return echo_server(path, variant.server_relay, tls_security(svids.server) if variant.tls else PLAINTEXT)


async def measure(variant: Variant, separate: bool, payload_size: int, calls: int, width: int,
                  directory: Path, svids: Svids) -> CallFigures:
    path = fresh_path(directory)
    payload = os.urandom(payload_size)
    client_security = tls_security(svids.client) if variant.tls else PLAINTEXT
    async with server_for(variant, separate, path, svids):
        # one connect before the timed ones: TLS contexts are built once per SVID (measured on their own)
        await connect_and_first_call(path, variant.client_relay, payload, client_security)
        connects = [await connect_and_first_call(path, variant.client_relay, payload, client_security)
                    for _ in range(CONNECT_REPEATS)]
        async with echo_channel(path, variant.client_relay, client_security) as (channel, client_relay):
            multicallable = channel.unary_unary(METHOD, None, None)

            async def call(body: bytes) -> bytes:
                reply: bytes = await multicallable(body, timeout=CALL_TIMEOUT, wait_for_ready=True)
                return reply

            if await call(payload) != payload:
                raise RuntimeError(f"{variant.name}: echo returned something else")
            check_peer(variant, client_relay)
            await sequential(call, payload, WARMUP)
            start = time.perf_counter()
            times = sorted(await sequential(call, payload, calls))
            elapsed = time.perf_counter() - start
            throughput = await concurrent(call, payload, calls, width)
    return CallFigures(
        variant.name,
        "2 processes" if separate else "1 process",
        payload_size,
        percentile(times, 0.5),
        percentile(times, 0.9),
        percentile(times, 0.99),
        sum(times) / len(times),
        calls / elapsed,
        throughput,
        median(connects),
    )


@dataclass
class PairFigures:
    """'both relays' (plain) and 'both relays + mTLS' measured interleaved."""

    placement: str
    payload: int
    p50_us: tuple[float, float]
    p90_us: tuple[float, float]
    connect_ms: tuple[float, float]


async def paired(separate: bool, payload_size: int, calls: int, directory: Path, svids: Svids) -> PairFigures:
    """Plain and mTLS relays side by side: both servers run at once, connects alternate, and the calls go
    in PAIR_ROUNDS batches alternating between the two channels (who goes first alternates too), so load
    that comes and goes during the run hits both alike. The difference of the two is what mTLS adds."""
    variants = [v for v in VARIANTS if v.name in (PLAIN_RELAYS, MTLS)]
    payload = os.urandom(payload_size)
    paths = [fresh_path(directory) for _ in variants]
    securities = [tls_security(svids.client) if v.tls else PLAINTEXT for v in variants]
    times: list[list[float]] = [[], []]
    connects: list[list[float]] = [[], []]
    async with AsyncExitStack() as stack:
        for variant, path in zip(variants, paths, strict=True):
            await stack.enter_async_context(server_for(variant, separate, path, svids))
        for i in range(CONNECT_REPEATS + 1):  # the first round untimed (TLS contexts, warm caches)
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                elapsed = await connect_and_first_call(paths[k], True, payload, securities[k])
                if i:
                    connects[k].append(elapsed)
        callers = []
        for variant, path, security in zip(variants, paths, securities, strict=True):
            channel, client_relay = await stack.enter_async_context(echo_channel(path, True, security))
            multicallable = channel.unary_unary(METHOD, None, None)

            async def call(body: bytes, multicallable: Any = multicallable) -> bytes:
                reply: bytes = await multicallable(body, timeout=CALL_TIMEOUT, wait_for_ready=True)
                return reply

            if await call(payload) != payload:
                raise RuntimeError(f"{variant.name}: echo returned something else")
            check_peer(variant, client_relay)
            await sequential(call, payload, WARMUP)
            callers.append(call)
        batch = max(1, calls // PAIR_ROUNDS)
        for i in range(PAIR_ROUNDS):
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                times[k].extend(await sequential(callers[k], payload, batch))
    ordered = [sorted(t) for t in times]
    return PairFigures(
        "2 processes" if separate else "1 process",
        payload_size,
        (percentile(ordered[0], 0.5), percentile(ordered[1], 0.5)),
        (percentile(ordered[0], 0.9), percentile(ordered[1], 0.9)),
        (median(connects[0]), median(connects[1])),
    )


# --- the endpoint's logic -------------------------------------------------------------------------------


def forwarder_request(signer: TokenSigner, conn_id: str, now: float) -> NetworkServiceRequest:
    """A Request as nsm-local's forwarder sends it: path [nsc, nsmgr, fwd] with real tokens, k8s-topo
    labels, a KERNEL preference naming the interface and a netns."""
    conn = Connection(id=conn_id, network_service="topo", network_service_endpoint_name="r2-nse",
                      payload="IP", labels={"link": "net-0", "peerif": "eth1"}, state=State.UP)
    for name, seg_id in (("r1-nsc", "r1-nsc-0"), ("nsmgr", "mgr-" + conn_id), ("forwarder", conn_id)):
        token, expires = signer.sign(None, 600, now)
        segment = conn.path.path_segments.add(name=name, id=seg_id, token=token)
        set_timestamp(segment.expires, expires)
    conn.path.index = 2
    conn.context.ip_context.SetInParent()
    request = NetworkServiceRequest(connection=conn)
    request.mechanism_preferences.append(kernel_preference("eth1", "inode://4/4026532999"))
    return request


def per_call_us(operation: Callable[[int], object], count: int) -> tuple[float, float]:
    """Median and mean microseconds of `operation(i)` over `count` runs (after a short warm-up)."""
    for i in range(min(50, count)):
        operation(-1 - i)
    times = []
    for i in range(count):
        start = time.perf_counter_ns()
        operation(i)
        times.append((time.perf_counter_ns() - start) / 1000)
    return median(times), sum(times) / len(times)


Signer = Callable[[PeerIdentity | None, X509Material | None], tuple[str, float]]


def endpoint(sign: Signer) -> EndpointCore:
    return EndpointCore("r2-nse", SeedP2PAllocator("10.60.2.0/24"), "inode://4/4026532001", sign)


def first_request_us(core: EndpointCore, requests: Sequence[NetworkServiceRequest], token: str | None,
                     expires: float | None, count: int, peer: PeerIdentity | None = None,
                     own: X509Material | None = None) -> tuple[float, float]:
    """A first Request per run; the pool has 64 /30s, so each connection is released right after, outside
    the timed call (the warm-up runs use the same requests)."""
    def operation(i: int) -> None:
        accepted = core.request(requests[i % len(requests)], token, expires, peer, own)
        core.allocator.release(accepted.own_view.id)

    return per_call_us(operation, count)


def endpoint_figures(count: int) -> list[tuple[str, float, float]]:
    now = time.time()
    peer_signer = TokenSigner("forwarder")
    metadata = CallTokens(peer_signer, 600).metadata()
    token, expires = caller_token(metadata)
    own_tokens = CallTokens(TokenSigner("r2-nse"), 600)
    requests = [forwarder_request(peer_signer, f"fwd-{i}", now) for i in range(64)]
    serialized = requests[0].SerializeToString()

    def constant_token(peer: PeerIdentity | None, own: X509Material | None) -> tuple[str, float]:
        return "token", now + 600

    results: list[tuple[str, float, float]] = [
        ("EndpointCore.request, first (ES256 signer)",
         *first_request_us(endpoint(own_tokens.sign), requests, token, expires, count)),
        ("EndpointCore.request, first (constant token)",
         *first_request_us(endpoint(constant_token), requests, token, expires, count)),
    ]
    core = endpoint(own_tokens.sign)
    reply = core.request(requests[0], token, expires).reply
    refresh = NetworkServiceRequest(connection=reply)
    refresh.mechanism_preferences.append(kernel_preference("eth1", "inode://4/4026532999"))
    results.append(("EndpointCore.request, refresh (ES256 signer)",
                    *per_call_us(lambda i: core.request(refresh, token, expires), count)))

    results.append(("EndpointCore.close",
                    *per_call_us(lambda i: core.close(reply, token, expires), count)))
    results.append(("TokenSigner.sign (ES256 JWT)", *per_call_us(lambda i: own_tokens.sign(), count)))
    results.append((f"request protobuf serialize + parse ({len(serialized)} B)",
                    *per_call_us(lambda i: NetworkServiceRequest.FromString(requests[0].SerializeToString()),
                                 count)))
    results.append(("caller_token (metadata -> token, expiry)",
                    *per_call_us(lambda i: caller_token(metadata), count)))
    return results


# --- the identity work of the secure mode ---------------------------------------------------------------


@dataclass(frozen=True)
class PathIdentities:
    """X.509-SVIDs of the four hops of a link's Request, from one development CA."""

    nsc: X509Material
    nsmgr: X509Material
    forwarder: X509Material
    nse: X509Material

    @classmethod
    def issue(cls) -> PathIdentities:
        ca = DevCA.generate(TRUST_DOMAIN)
        nsc, nsmgr, forwarder, nse = (ca.issue(f"spiffe://{TRUST_DOMAIN}/bench/{role}", SVID_TTL)
                                      for role in ("nsc", "nsmgr", "forwarder", "nse"))
        return cls(nsc, nsmgr, forwarder, nse)


def peer_of(material: X509Material) -> PeerIdentity:
    """The identity the other side's TLS session gives for `material`'s SVID."""
    return PeerIdentity(material.spiffe_id, material.leaf)


def secure_forwarder_request(ids: PathIdentities, conn_id: str, now: float) -> NetworkServiceRequest:
    """A Request as the forwarder sends it in the secure mode: path [nsc, nsmgr, fwd], each of the first two
    segments holding its hop's token addressed to the next hop (as the next hop's updatetoken left it), the
    forwarder's own segment its token to nsmgr (the endpoint replaces it with the metadata token)."""
    conn = Connection(id=conn_id, network_service="topo", network_service_endpoint_name="r2-nse",
                      payload="IP", labels={"link": "net-0", "peerif": "eth1"}, state=State.UP)
    hops = (("r1-nsc", "r1-nsc-0", ids.nsc, ids.nsmgr), ("nsmgr", "mgr-" + conn_id, ids.nsmgr, ids.forwarder),
            ("forwarder", conn_id, ids.forwarder, ids.nsmgr))
    for name, seg_id, own, next_hop in hops:
        token, expires = signer_for(own).sign(next_hop.spiffe_id, 600, now, next_hop.not_after)
        segment = conn.path.path_segments.add(name=name, id=seg_id, token=token)
        set_timestamp(segment.expires, expires)
    conn.path.index = 2
    conn.context.ip_context.SetInParent()
    request = NetworkServiceRequest(connection=conn)
    request.mechanism_preferences.append(kernel_preference("eth1", "inode://4/4026532999"))
    return request


def tls_handshake(client_security: TlsSecurity, server_security: TlsSecurity
                  ) -> tuple[TlsSession, TlsSession]:
    """A full mTLS handshake between two sessions in memory (what both relays' sessions do, minus I/O)."""
    client = client_security.new_session(server_side=False)
    server = server_security.new_session(server_side=True)
    for _ in range(8):
        server.feed_wire(client.wire_to_send())
        client.feed_wire(server.wire_to_send())
        if client.established and server.established:
            return client, server
    raise RuntimeError("in-memory TLS handshake did not complete")


def tls_echo(client: TlsSession, server: TlsSession, data: bytes) -> None:
    """`data` from client to server and back through established sessions: one record encrypted and
    decrypted each way, what the two relays add to a call's bytes (a unary call is a few such writes)."""
    client.feed_plaintext(data)
    if server.feed_wire(client.wire_to_send()) != data:
        raise RuntimeError("in-memory TLS: the server read something else")
    server.feed_plaintext(data)
    if client.feed_wire(server.wire_to_send()) != data:
        raise RuntimeError("in-memory TLS: the client read something else")


def identity_figures(count: int) -> list[tuple[str, float, float]]:
    """Per-call and per-connection identity work, each on real SVIDs (µs)."""
    ids = PathIdentities.issue()
    now = time.time()
    nse_tokens = CallTokens(material_signer(lambda: ids.nse), 600)
    forwarder, nsmgr = peer_of(ids.forwarder), peer_of(ids.nsmgr)
    forwarder_tokens = CallTokens(material_signer(lambda: ids.forwarder), 600)
    token, expires = forwarder_tokens.sign(peer_of(ids.nse), ids.forwarder)  # the metadata token
    requests = [secure_forwarder_request(ids, f"fwd-{i}", now) for i in range(64)]

    with_peer = endpoint(nse_tokens.sign)
    accepted = with_peer.request(requests[0], token, expires, forwarder, ids.nse)
    path_tokens = [segment.token for segment in accepted.own_view.path.path_segments]
    if len(path_tokens) != 4:
        raise RuntimeError(f"expected a 4-segment path, got {len(path_tokens)}")
    check_server(path_tokens, 3, forwarder.public_key, now)  # the policies accept it: we time a pass
    check_client(path_tokens, 0, nsmgr.public_key, now)
    refresh = NetworkServiceRequest(connection=accepted.reply)
    refresh.mechanism_preferences.append(kernel_preference("eth1", "inode://4/4026532999"))
    forwarder_key, nsmgr_key = forwarder.public_key, nsmgr.public_key

    chain = [ids.nsmgr.leaf, *ids.nsmgr.bundles[TRUST_DOMAIN]]
    bundles = dict(ids.nsc.bundles)
    client_security, server_security = tls_security(ids.nsc), tls_security(ids.nsmgr)
    client_session, server_session = tls_handshake(client_security, server_security)
    seen = (getattr(client_session.peer, "spiffe_id", None), getattr(server_session.peer, "spiffe_id", None))
    if seen != (ids.nsmgr.spiffe_id, ids.nsc.spiffe_id):
        raise RuntimeError(f"in-memory handshake: unexpected identities {seen}")
    slow = max(1, min(count, 300))  # the handshake and the contexts take milliseconds
    client_session.feed_wire(server_session.wire_to_send())  # what the server still had (session tickets)
    small, large = os.urandom(200), os.urandom(2200)  # an echo call's HTTP/2 bytes, roughly, each way

    results: list[tuple[str, float, float]] = [
        ("CallTokens.sign(peer, own): ES256 with the SVID's key, aud = TLS peer",
         *per_call_us(lambda i: nse_tokens.sign(forwarder, ids.nse), count)),
        ("signature_valid: ES256 verify of one token",
         *per_call_us(lambda i: signature_valid(token, forwarder_key), count)),
        ("decode_unverified: claims of one token",
         *per_call_us(lambda i: decode_unverified(token), count)),
        ("check_server, 4-segment path (nse: valid, chained, expired, forwarder signed)",
         *per_call_us(lambda i: check_server(path_tokens, 3, forwarder_key, now), count)),
        ("check_client, 4-segment path (nsc: valid, chained, expired, nsmgr signed)",
         *per_call_us(lambda i: check_client(path_tokens, 0, nsmgr_key, now), count)),
        ("PeerIdentity.public_key (from the peer's leaf)",
         *per_call_us(lambda i: forwarder.public_key, count)),
        ("verify_peer: SPIFFE checks of a verified chain (leaf + CA)",
         *per_call_us(lambda i: verify_peer(chain, bundles), count)),
        ("mTLS handshake in memory, both sides (ECDHE, 2 ECDSA signatures + chain checks each way)",
         *per_call_us(lambda i: tls_handshake(client_security, server_security), slow)),
        (f"{len(small)} B each way through established TLS sessions in memory (encrypt + decrypt x2)",
         *per_call_us(lambda i: tls_echo(client_session, server_session, small), count)),
        (f"{len(large)} B each way through established TLS sessions in memory",
         *per_call_us(lambda i: tls_echo(client_session, server_session, large), count)),
        ("TlsSecurity contexts for a new SVID (client + server make_context; once per rotation)",
         *per_call_us(lambda i: (make_context(ids.nse, server_side=False),
                                 make_context(ids.nse, server_side=True)), slow)),
        ("EndpointCore.request, first, no peer (plaintext: no policies)",
         *first_request_us(endpoint(nse_tokens.sign), requests, token, expires, count)),
        ("EndpointCore.request, first, mTLS peer (server policies)",
         *first_request_us(endpoint(nse_tokens.sign), requests, token, expires, count, forwarder, ids.nse)),
        ("EndpointCore.request, refresh, no peer",
         *per_call_us(lambda i: with_peer.request(refresh, token, expires), count)),
        ("EndpointCore.request, refresh, mTLS peer",
         *per_call_us(lambda i: with_peer.request(refresh, token, expires, forwarder, ids.nse), count)),
        ("EndpointCore.close, no peer",
         *per_call_us(lambda i: with_peer.close(accepted.reply, token, expires), count)),
        ("EndpointCore.close, mTLS peer",
         *per_call_us(lambda i: with_peer.close(accepted.reply, token, expires, forwarder, ids.nse), count)),
    ]
    return results


# --- main -----------------------------------------------------------------------------------------------


async def call_figures(calls: int, payloads: Sequence[int], width: int, directory: Path
                       ) -> tuple[list[CallFigures], list[PairFigures]]:
    svids = Svids.issue()
    figures, pairs = [], []
    for separate in (False, True):
        for payload in payloads:
            for variant in VARIANTS:
                figures.append(await measure(variant, separate, payload, calls, width, directory, svids))
            pairs.append(await paired(separate, payload, calls, directory, svids))
    return figures, pairs


def operation_table(rows: Sequence[tuple[str, float, float]]) -> str:
    return table(["operation", "median", "mean"],
                 [[name, f"{med:.0f}", f"{mean:.0f}"] for name, med, mean in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement (default %(default)s)")
    parser.add_argument("--payloads", default="64,2048", help="payload sizes in bytes (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="callers for the throughput figure")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "RELAY"), help=argparse.SUPPRESS)
    parser.add_argument("--child-svid", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop (stdin EOF)
        asyncio.run(child_main(args.child[0], args.child[1] == "1", args.child_svid))
        return 0
    if not 1 <= args.calls <= 100_000 or not 1 <= args.concurrency <= 256:
        parser.error("--calls must be 1..100000 and --concurrency 1..256")
    payloads = [int(p) for p in args.payloads.split(",")]
    print_machine()
    directory = Path(tempfile.mkdtemp(prefix="nsmb-rpc-", dir="/tmp"))
    busy_start, own_start, wall_start = machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
    try:
        figures, pairs = asyncio.run(call_figures(args.calls, payloads, args.concurrency, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    others = max(0.0, (machine_busy_seconds() - busy_start) - (own_cpu_seconds() - own_start))
    print(f"Other load during the call measurements: {others / (time.monotonic() - wall_start):.2f} "
          "cores (machine busy time minus this process and its echo servers; high values make the figures "
          "below unreliable)")
    print()
    print(f"Unary echo over a unix socket: {args.calls} sequential calls after {WARMUP} warm-up "
          f"(latency in µs), then {args.calls} calls from {args.concurrency} concurrent callers on one "
          "channel;")
    print(f"connect = new channel + first call, median of {CONNECT_REPEATS} after one untimed (ms)")
    print()
    print(table(
        ["placement", "payload B", "variant", "p50", "p90", "p99", "mean", "calls/s seq",
         f"calls/s x{args.concurrency}", "connect ms"],
        [[f.placement, f.payload, f.variant, f"{f.p50_us:.0f}", f"{f.p90_us:.0f}", f"{f.p99_us:.0f}",
          f"{f.mean_us:.0f}", f"{f.sequential_per_s:.0f}", f"{f.concurrent_per_s:.0f}", f"{f.connect_ms:.1f}"]
         for f in figures],
    ))
    print()
    by_key = {(f.placement, f.payload, f.variant): f for f in figures}
    keys = sorted({(f.placement, f.payload) for f in figures})
    relays = [v.name for v in VARIANTS if v.name not in ("direct", MTLS)]
    print("Added by the relays (p50 minus the direct p50, µs):")
    print()
    print(table(
        ["placement", "payload B", *relays],
        [[placement, payload,
          *(f"{by_key[placement, payload, name].p50_us - by_key[placement, payload, 'direct'].p50_us:+.0f}"
            for name in relays)]
         for placement, payload in keys],
    ))
    print()
    print(f"Added by mTLS ({MTLS!r} minus {PLAIN_RELAYS!r}), measured again interleaved: both servers up,")
    print(f"connects alternating ({CONNECT_REPEATS} each), calls in {PAIR_ROUNDS} alternating batches "
          f"({args.calls} each; µs)")
    print()
    rows = []
    for pair in pairs:
        (plain, tls), (plain90, tls90), (plain_c, tls_c) = pair.p50_us, pair.p90_us, pair.connect_ms
        rows.append([pair.placement, pair.payload, f"{plain:.0f}", f"{tls:.0f}", f"{tls - plain:+.0f}",
                     f"{plain90:.0f}", f"{tls90:.0f}", f"{tls90 - plain90:+.0f}",
                     f"{plain_c:.1f}", f"{tls_c:.1f}", f"{tls_c - plain_c:+.1f}"])
    print(table(["placement", "payload B", "p50 plain", "p50 mTLS", "p50 added", "p90 plain", "p90 mTLS",
                 "p90 added", "connect ms plain", "connect ms mTLS", "connect added"], rows))
    print()
    count = min(args.calls, 2000)
    print(f"Endpoint logic per call, no gRPC ({count} runs each, µs)")
    print()
    print(operation_table(endpoint_figures(count)))
    print()
    print(f"Identity work of the secure mode, no sockets ({count} runs each, {min(count, 300)} for the "
          "handshake and the contexts; µs)")
    print()
    print(operation_table(identity_figures(count)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
