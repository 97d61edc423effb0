"""mTLS inside the relay (protocol doc §3.2, §6): ClientRelay and ServerRelay with TlsSecurity on both ends.

Real unix sockets, real grpc.aio, X.509-SVIDs from in-memory development CAs. Where a test needs a peer
that misbehaves (a foreign or silent server, a client without h2, a plaintext or TLS 1.1 client), that peer
is made by hand from the stdlib: a raw socket that reads with recvmsg, so that every fd reaching it is
counted with the bytes it came on, driving an `ssl.SSLObject`; or a blocking `ssl` client in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import grpc
import pytest
from aio_helpers import grpc_calls_settled
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from relay_helpers import (
    CALL_TIMEOUT,
    SERVICE,
    Servicer,
    as_keys,
    call,
    eventually,
    fd_census,
    no_leaks_since,
    pipe_read_ends,
    relay_socket_names,
    serving,
)

from nsm_local.dev_ca import DevCA
from nsm_sdk.identity.x509 import X509Material
from nsm_sdk.transport import relay
from nsm_sdk.transport.client import dial
from nsm_sdk.transport.fdpass import FdSocket, open_netns_fd
from nsm_sdk.transport.fdstore import FdStore, inode_key_of
from nsm_sdk.transport.relay import RelayConnection
from nsm_sdk.transport.tls import TlsSecurity, make_context
from nsm_sdk.transport.urls import inode_url_for_fd, parse_inode_url, path_to_unix_url

AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]
TD = "nsm.local"
OTHER_TD = "other.example"
CLIENT_ID = f"spiffe://{TD}/ns/default/pod/nsc"
SERVER_ID = f"spiffe://{TD}/ns/nsm-system/pod/nsmgr"
TTL = 3600.0
WAIT = 5.0
SHORT_HANDSHAKE = 0.3
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.generate(TD)


@pytest.fixture(scope="module")
def other_ca() -> DevCA:
    return DevCA.generate(OTHER_TD)


@pytest.fixture
def tls_log(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[dict[str, Any]]]:
    """`tls_log(event)`: the fields of every transport log record of that event so far."""
    caplog.set_level(logging.DEBUG, logger="nsm_sdk.transport")

    def fields(event: str) -> list[dict[str, Any]]:
        return [record.fields for record in caplog.records if record.getMessage() == event]  # type: ignore[attr-defined]

    return fields


def tls(material: X509Material) -> TlsSecurity:
    return TlsSecurity(lambda: material)


def trusting(material: X509Material, *cas: DevCA) -> X509Material:
    """`material` with the bundles of `cas` added (federation)."""
    bundles = {**material.bundles, **{ca.trust_domain: ca.bundle for ca in cas}}
    return dataclasses.replace(material, bundles=bundles)


def bare_svid(
    issuer: DevCA, spiffe_id: str, bundles: Mapping[str, tuple[x509.Certificate, ...]]
) -> X509Material:
    """An SVID with an empty subject and nothing but its URI SAN, signed by `issuer` whatever the id's
    trust domain (DevCA.issue refuses that)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
        )
        .sign(issuer.private_key, hashes.SHA256())
    )
    return X509Material(spiffe_id, (leaf,), key, bundles)


async def within(condition: Callable[[], bool], seconds: float = WAIT) -> None:
    async with asyncio.timeout(seconds):
        await eventually(condition)


@asynccontextmanager
async def connecting(channel: grpc.aio.Channel) -> AsyncIterator[None]:
    """grpcio connects (through the relay) while the block runs."""
    ready = asyncio.ensure_future(channel.channel_ready())
    try:
        yield
    finally:
        ready.cancel()
        with suppress(asyncio.CancelledError):
            await ready


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One recvmsg at the hand-made server."""

    size: int
    fds: int
    server_flights: int
    """How many handshake flights the server had sent when these bytes arrived."""


class HandServer:
    """The server end of ONE connection, by hand: an FdSocket (recvmsg, fds counted per chunk) driving an
    `ssl.SSLObject` made from `context`; with no context it reads and never answers."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self._context = context
        self.chunks: list[Chunk] = []
        self.ended = False

    @property
    def fds(self) -> int:
        return sum(chunk.fds for chunk in self.chunks)

    async def serve_one(self, listener: socket.socket) -> None:
        sock, _ = await asyncio.get_running_loop().sock_accept(listener)
        store = FdStore()
        peer = FdSocket(sock, store)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        session = None
        if self._context is not None:
            session = self._context.wrap_bio(incoming, outgoing, server_side=True)
        flights = 0
        try:
            while True:
                held = len(store)
                try:
                    data = await peer.recv()
                except ConnectionResetError:  # the client closed with our answer unread
                    return
                if not data:
                    return
                self.chunks.append(Chunk(len(data), len(store) - held, flights))
                if session is None:
                    continue
                incoming.write(data)
                try:
                    session.do_handshake()
                    while session.read(1 << 16):  # the client's HTTP/2: not ours to answer
                        pass
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:  # e.g. the client's alert: keep counting what still comes
                    session = None
                if answer := outgoing.read():
                    flights += 1
                    await peer.send(answer)
        finally:
            self.ended = True
            peer.close()


@asynccontextmanager
async def hand_server(path: Path, context: ssl.SSLContext | None) -> AsyncIterator[HandServer]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.setblocking(False)
    try:
        listener.bind(str(path))
        listener.listen(8)
        server = HandServer(context)
        task = asyncio.create_task(server.serve_one(listener))
        try:
            yield server
        finally:
            await asyncio.wait([task], timeout=WAIT)
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task  # re-raises what failed in the hand server
    finally:
        listener.close()


def tls_exchange(path: Path, context: ssl.SSLContext) -> bytes:
    """A blocking `ssl` client: handshake, send an HTTP/2 preface, return what comes back before EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(path))
        with context.wrap_socket(sock) as connection:
            with suppress(BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):  # the server was quicker
                connection.sendall(PREFACE)
            return connection.recv(1024)


async def raw_exchange(path: Path, send: bytes) -> tuple[bytes, float]:
    """A plain unix socket client: send `send`, return what came back before EOF and after how long."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, str(path))
        started = time.monotonic()
        if send:
            await loop.sock_sendall(sock, send)
        received = b""
        async with asyncio.timeout(WAIT):
            while chunk := await loop.sock_recv(sock, 1024):
                received += chunk
        return received, time.monotonic() - started


async def unanswered_call(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """The status of a call that is not allowed to wait for a connection."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/Echo", None, None)(b"x", timeout=WAIT, wait_for_ready=False)
    return caught.value.code()


# --- a working mTLS connection --------------------------------------------------------------------------


def test_call_over_mtls_where_each_side_sees_the_others_spiffe_id(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    client_svid, server_svid = ca.issue(CLIENT_ID, TTL), ca.issue(SERVER_ID, TTL)

    async def main() -> None:
        servicer = Servicer()
        async with serving(sock_dir / "s.sock", servicer, security=tls(server_svid)) as handle:
            servicer.handle = handle
            async with dial(handle.url, security=tls(client_svid)) as (channel, client_relay):
                seen = json.loads(await call(channel, "Whoami", b""))
                assert seen == {"peer": CLIENT_ID, "pid": os.getpid(), "uid": os.getuid()}

                (client_side,) = client_relay.connections
                assert client_side.established and client_side.peer is not None
                assert client_side.peer.spiffe_id == SERVER_ID
                assert client_side.peer.certificate == server_svid.leaf
                assert await client_relay.wait_peer(WAIT) is client_side.peer
                assert client_side.credentials is None  # only accepted connections have SO_PEERCRED

                (server_side,) = handle.relay.connections
                assert server_side.peer is not None
                assert server_side.peer.certificate == client_svid.leaf

    run_async(main)


def test_one_mib_messages_cross_mtls_intact_both_ways(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    client_svid, server_svid = ca.issue(CLIENT_ID, TTL), ca.issue(SERVER_ID, TTL)

    async def main() -> None:
        payload = os.urandom(1 << 20)  # 64 TLS records each way
        servicer = Servicer()
        async with serving(sock_dir / "s.sock", servicer, security=tls(server_svid)) as handle:
            servicer.handle = handle
            async with dial(handle.url, security=tls(client_svid)) as (channel, _relay):
                for _ in range(2):
                    assert await call(channel, "Echo", payload) == payload

    run_async(main)


def test_no_host_name_is_checked_a_server_known_only_by_its_uri_san_is_accepted(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    # Like go-spiffe: the server certificate has no subject and no DNS name, only its SPIFFE id, and the
    # client dials a socket path, so there is no host name to compare with anyway.
    server_svid = bare_svid(ca, SERVER_ID, {TD: ca.bundle})
    assert list(server_svid.leaf.subject) == []
    names = server_svid.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [type(name) for name in names] == [x509.UniformResourceIdentifier]

    async def main() -> None:
        servicer = Servicer()
        async with serving(sock_dir / "s.sock", servicer, security=tls(server_svid)) as handle:
            servicer.handle = handle
            async with dial(handle.url, security=tls(ca.issue(CLIENT_ID, TTL))) as (channel, client_relay):
                assert await call(channel, "Echo", b"hello") == b"hello"
                peer = await client_relay.wait_peer(WAIT)
                assert peer is not None and peer.spiffe_id == SERVER_ID

    run_async(main)


# --- fds go only to an authenticated server ---------------------------------------------------------------

# The server flight that carries its Finished: TLS 1.3 sends ServerHello ... Finished at once; TLS 1.2
# sends ServerHelloDone first and ChangeCipherSpec + Finished after the client's Finished. The client has
# authenticated the server once it has that flight, and its held fds go with its very next bytes: in
# TLS 1.2 its first application data, in TLS 1.3 its second flight (so before the server has checked the
# client's certificate; the client's trust in the server is what lets the fds go).
FINISHED_FLIGHT = {ssl.TLSVersion.TLSv1_3: 1, ssl.TLSVersion.TLSv1_2: 2}


@pytest.mark.parametrize("version", list(FINISHED_FLIGHT), ids=["TLSv1.3", "TLSv1.2"])
def test_fds_queued_before_the_handshake_ride_on_the_first_bytes_after_it(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA, version: ssl.TLSVersion
) -> None:
    client_svid, server_svid = ca.issue(CLIENT_ID, TTL), ca.issue(SERVER_ID, TTL)
    context = make_context(server_svid, server_side=True)
    context.maximum_version = version

    async def main() -> None:
        path = sock_dir / "s.sock"
        with pipe_read_ends(1) as (fd,):
            async with hand_server(path, context) as server, dial(
                path_to_unix_url(str(path)), send_fds=[fd], security=tls(client_svid)
            ) as (channel, client_relay), connecting(channel):
                await within(lambda: server.fds > 0)
                connection = client_relay.current_connection()
                assert connection is not None and connection.peer is not None
                assert connection.peer.spiffe_id == SERVER_ID
            with_fd = [index for index, chunk in enumerate(server.chunks) if chunk.fds]
            assert [server.chunks[index].fds for index in with_fd] == [1]
            assert with_fd[0] > 0, "nothing rides on the ClientHello"
            assert server.chunks[with_fd[0]].server_flights == FINISHED_FLIGHT[version]

    run_async(main)


@pytest.mark.parametrize(
    "case", ["another-trust-domain", "anchored-in-another-bundle", "no-h2", "never-answers"]
)
def test_a_server_the_client_refuses_gets_no_fd(
    run_async: AsyncRunner,
    sock_dir: Path,
    ca: DevCA,
    other_ca: DevCA,
    tls_log: Callable[[str], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    monkeypatch.setattr(relay, "HANDSHAKE_TIMEOUT", SHORT_HANDSHAKE)
    client_svid = ca.issue(CLIENT_ID, TTL)
    context: ssl.SSLContext | None
    if case == "another-trust-domain":
        server_svid = trusting(other_ca.issue(f"spiffe://{OTHER_TD}/nsmgr", TTL), ca)
        context, reason = make_context(server_svid, server_side=True), "CERTIFICATE_VERIFY_FAILED"
    elif case == "anchored-in-another-bundle":
        # The client trusts both CAs (federation), so OpenSSL accepts the chain; but this leaf claims an
        # id of nsm.local while other.example's CA signed it.
        client_svid = trusting(client_svid, other_ca)
        server_svid = bare_svid(other_ca, SERVER_ID, {TD: ca.bundle})
        context, reason = make_context(server_svid, server_side=True), "does not lead to a CA of trust domain"
    elif case == "no-h2":
        context = make_context(ca.issue(SERVER_ID, TTL), server_side=True)
        context.set_alpn_protocols(["http/1.1"])
        reason = "did not negotiate ALPN 'h2'"
    else:
        context, reason = None, ""

    async def main() -> None:
        path = sock_dir / "s.sock"
        with pipe_read_ends(1) as (fd,):
            async with hand_server(path, context) as server, dial(
                path_to_unix_url(str(path)), send_fds=[fd], security=tls(client_svid)
            ) as (channel, client_relay):
                async with connecting(channel):
                    await within(lambda: server.ended)  # the client dropped the connection
                assert client_relay.current_connection() is None
            assert server.chunks and server.chunks[0].size > 0, "the ClientHello arrived"
            assert server.fds == 0

    run_async(main)
    if case == "never-answers":
        assert tls_log("relay.handshake_timeout")
    else:
        failure = tls_log("tls.handshake_failed")[0]
        assert failure["side"] == "client"
        assert reason in failure["reason"]


# --- who may connect: the server refuses ----------------------------------------------------------------


def test_server_refuses_a_client_whose_svid_is_from_another_trust_domain(
    run_async: AsyncRunner,
    sock_dir: Path,
    ca: DevCA,
    other_ca: DevCA,
    tls_log: Callable[[str], list[dict[str, Any]]],
) -> None:
    # The client trusts the server's CA, so only the server has a reason to refuse.
    client_svid = trusting(other_ca.issue(f"spiffe://{OTHER_TD}/nsc", TTL), ca)
    server_svid = ca.issue(SERVER_ID, TTL)

    async def main() -> None:
        servicer = Servicer()
        with pipe_read_ends(1) as (fd,):
            before = fd_census()
            async with serving(sock_dir / "s.sock", servicer, security=tls(server_svid)) as handle:
                servicer.handle = handle
                async with dial(handle.url, send_fds=[fd], security=tls(client_svid)) as (channel, _relay):
                    assert await unanswered_call(channel) == grpc.StatusCode.UNAVAILABLE
            await grpc_calls_settled()
            assert servicer.connections == [], "no call reached the server"
            # Whatever the refused connection carried was closed with it (grpcio's own sockets aside).
            after = fd_census()
            assert (after.passed, after.memfds) == (before.passed, before.memfds)
            assert relay_socket_names() == []

    run_async(main)
    failures = tls_log("tls.handshake_failed")
    assert failures and {failure["side"] for failure in failures} == {"server"}
    assert "CERTIFICATE_VERIFY_FAILED" in failures[0]["reason"]


def test_client_refuses_a_server_whose_svid_is_from_another_trust_domain(
    run_async: AsyncRunner,
    sock_dir: Path,
    ca: DevCA,
    other_ca: DevCA,
    tls_log: Callable[[str], list[dict[str, Any]]],
) -> None:
    # The server trusts the client's CA, so only the client has a reason to refuse.
    server_svid = trusting(other_ca.issue(f"spiffe://{OTHER_TD}/nsmgr", TTL), ca)

    async def main() -> None:
        servicer = Servicer()
        async with serving(sock_dir / "s.sock", servicer, security=tls(server_svid)) as handle:
            servicer.handle = handle
            async with dial(handle.url, security=tls(ca.issue(CLIENT_ID, TTL))) as (channel, client_relay):
                assert await unanswered_call(channel) == grpc.StatusCode.UNAVAILABLE
                assert client_relay.current_connection() is None
        assert servicer.connections == []

    run_async(main)
    failures = tls_log("tls.handshake_failed")
    assert failures and failures[0]["side"] == "client"
    assert "CERTIFICATE_VERIFY_FAILED" in failures[0]["reason"]


@pytest.mark.parametrize("alpn", [[], ["http/1.1"]], ids=["no-alpn", "http/1.1"])
def test_server_refuses_a_client_that_does_not_negotiate_h2(
    run_async: AsyncRunner,
    sock_dir: Path,
    ca: DevCA,
    tls_log: Callable[[str], list[dict[str, Any]]],
    alpn: list[str],
) -> None:
    # A proper SVID and TLS 1.3: the missing h2 is the only fault (grpc-go refuses it too, §3.2).
    context = make_context(ca.issue(CLIENT_ID, TTL), server_side=False)
    context.set_alpn_protocols(alpn)

    async def main() -> None:
        servicer = Servicer()
        async with serving(sock_dir / "s.sock", servicer, security=tls(ca.issue(SERVER_ID, TTL))) as handle:
            servicer.handle = handle
            assert await asyncio.to_thread(tls_exchange, sock_dir / "s.sock", context) == b""
        assert servicer.connections == []

    run_async(main)
    (failure,) = tls_log("tls.handshake_failed")
    assert (failure["side"], failure["reason"]) == ("server", "peer did not negotiate ALPN 'h2'")


def test_server_refuses_a_tls_1_1_client(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA, tls_log: Callable[[str], list[dict[str, Any]]]
) -> None:
    server_svid = ca.issue(SERVER_ID, TTL)
    # Our own floor, whatever the system's OpenSSL configuration would allow.
    assert make_context(server_svid, server_side=True).minimum_version == ssl.TLSVersion.TLSv1_2
    assert make_context(server_svid, server_side=False).minimum_version == ssl.TLSVersion.TLSv1_2
    context = make_context(ca.issue(CLIENT_ID, TTL), server_side=False)
    with pytest.warns(DeprecationWarning, match="TLSv1_1"):
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # else OpenSSL 3 will not even offer TLS 1.1

    async def main() -> None:
        servicer = Servicer()
        async with serving(sock_dir / "s.sock", servicer, security=tls(server_svid)) as handle:
            servicer.handle = handle
            with pytest.raises(ssl.SSLError):
                await asyncio.to_thread(tls_exchange, sock_dir / "s.sock", context)
        assert servicer.connections == []

    run_async(main)
    (failure,) = tls_log("tls.handshake_failed")
    assert failure["side"] == "server"
    assert "PROTOCOL" in failure["reason"]


def test_a_plaintext_client_gets_nothing_and_is_dropped_at_once(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA, tls_log: Callable[[str], list[dict[str, Any]]]
) -> None:
    async def main() -> None:
        servicer = Servicer()
        path = sock_dir / "s.sock"
        async with serving(path, servicer, security=tls(ca.issue(SERVER_ID, TTL))) as handle:
            servicer.handle = handle
            received, after = await raw_exchange(path, PREFACE)
            assert received == b""
            assert after < relay.HANDSHAKE_TIMEOUT / 2
            async with grpc.aio.insecure_channel(f"unix:{path}") as plaintext:
                assert await unanswered_call(plaintext) == grpc.StatusCode.UNAVAILABLE
        assert servicer.connections == []

    run_async(main)
    failures = tls_log("tls.handshake_failed")
    assert len(failures) >= 2
    assert all(failure["side"] == "server" for failure in failures)


@pytest.mark.parametrize("sent", ["nothing", "half-a-client-hello"])
def test_a_client_that_does_not_finish_its_hello_is_dropped_at_the_handshake_timeout(
    run_async: AsyncRunner,
    sock_dir: Path,
    ca: DevCA,
    tls_log: Callable[[str], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    sent: str,
) -> None:
    monkeypatch.setattr(relay, "HANDSHAKE_TIMEOUT", SHORT_HANDSHAKE)
    send = b""
    if sent == "half-a-client-hello":
        outgoing = ssl.MemoryBIO()
        hello = make_context(ca.issue(CLIENT_ID, TTL), server_side=False).wrap_bio(ssl.MemoryBIO(), outgoing)
        with pytest.raises(ssl.SSLWantReadError):
            hello.do_handshake()
        client_hello = outgoing.read()
        send = client_hello[: len(client_hello) // 2]

    async def main() -> None:
        servicer = Servicer()
        path = sock_dir / "s.sock"
        async with serving(path, servicer, security=tls(ca.issue(SERVER_ID, TTL))) as handle:
            servicer.handle = handle
            received, after = await raw_exchange(path, send)
            assert received == b""
            assert SHORT_HANDSHAKE - 0.05 <= after < SHORT_HANDSHAKE + 1.0
        assert servicer.connections == []

    run_async(main)
    assert len(tls_log("relay.handshake_timeout")) == 1
    assert tls_log("tls.handshake_failed") == []


# --- rotation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["server", "client"])
def test_a_rotated_svid_is_presented_on_new_connections_while_live_ones_keep_working(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA, side: str
) -> None:
    svids = {"server": [ca.issue(SERVER_ID, TTL)], "client": [ca.issue(CLIENT_ID, TTL)]}
    server_security = TlsSecurity(lambda: svids["server"][-1])
    client_security = TlsSecurity(lambda: svids["client"][-1])
    rotating = svids[side]

    async def main() -> None:
        servicer = Servicer()
        async with serving(sock_dir / "s.sock", servicer, security=server_security) as handle:
            servicer.handle = handle

            def presented(client_side: RelayConnection) -> x509.Certificate:
                """What the rotating side presented on one connection (seen from the other side)."""
                if side == "client":  # the server's end of the newest connection saw it
                    (server_side,) = [c for c in handle.relay.connections if c not in seen]
                    seen.append(server_side)
                    client_side = server_side
                assert client_side.peer is not None
                return client_side.peer.certificate

            seen: list[RelayConnection] = []
            async with dial(handle.url, security=client_security) as (first_channel, first_relay):
                await call(first_channel, "Whoami", b"")
                (first,) = first_relay.connections
                assert presented(first) == rotating[0].leaf

                rotating.append(ca.issue(rotating[0].spiffe_id, TTL))
                async with dial(handle.url, security=client_security) as (second_channel, second_relay):
                    await call(second_channel, "Whoami", b"")
                    (second,) = second_relay.connections
                    assert presented(second) == rotating[1].leaf

                assert await call(first_channel, "Echo", b"still here") == b"still here"
                assert first_relay.connections == (first,)
                assert first.peer is not None and not first.closed

    run_async(main)


def test_a_connection_still_presenting_a_rotated_svid_retires_and_grpc_reconnects_with_the_new_one(
    run_async: AsyncRunner,
    sock_dir: Path,
    ca: DevCA,
    monkeypatch: pytest.MonkeyPatch,
    tls_log: Callable[[str], list[dict[str, Any]]],
) -> None:
    monkeypatch.setattr(relay, "RETIRE_POLL", 0.05)
    # Valid for a few more seconds, but already past three quarters of its life (it started CLOCK_SKEW ago).
    svids = [ca.issue(SERVER_ID, 5.0)]
    assert svids[0].retire_at < time.time() < svids[0].not_after - 3.0

    async def main() -> None:
        servicer = Servicer()
        security = TlsSecurity(lambda: svids[-1])
        async with serving(sock_dir / "s.sock", servicer, security=security) as handle:
            servicer.handle = handle
            async with dial(handle.url, security=tls(ca.issue(CLIENT_ID, TTL))) as (channel, client_relay):
                await call(channel, "Echo", b"first")
                (first,) = client_relay.connections
                await asyncio.sleep(0.2)  # polled a few times: still our current SVID, so it stays
                assert not first.closed

                svids.append(ca.issue(SERVER_ID, TTL))
                await within(lambda: first.closed)
                assert await call(channel, "Echo", b"again") == b"again"
                (second,) = client_relay.connections
                assert second.peer is not None and second.peer.certificate == svids[1].leaf

    run_async(main)
    assert [fields["reason"] for fields in tls_log("relay.retired")] == ["our SVID rotated"]


# --- leaks ----------------------------------------------------------------------------------------------


def test_no_fds_or_tasks_leak_across_mtls_sessions(run_async: AsyncRunner, sock_dir: Path, ca: DevCA) -> None:
    client_svid, server_svid = ca.issue(CLIENT_ID, TTL), ca.issue(SERVER_ID, TTL)

    async def session(path: Path, netns: int, give: int) -> None:
        servicer = Servicer(give_fd=give)
        async with serving(path, servicer, security=tls(server_svid)) as handle:
            servicer.handle = handle
            async with dial(
                handle.url, send_fds=[netns], security=tls(client_svid)
            ) as (channel, client_relay):
                keys = as_keys(await call(channel, "Keys", inode_url_for_fd(netns).encode()))
                assert keys == [inode_key_of(netns)]
                dev, ino = parse_inode_url((await call(channel, "SendBack", b"")).decode())
                os.close(await client_relay.wait_fd(dev, ino, timeout=CALL_TIMEOUT))

    async def main() -> None:
        netns = open_netns_fd()
        try:
            with pipe_read_ends(1) as (give,):
                await session(sock_dir / "warm.sock", netns, give)  # grpcio opens its own fds lazily
                before = fd_census()
                for number in range(3):
                    await session(sock_dir / f"s{number}.sock", netns, give)
                await no_leaks_since(before)
        finally:
            os.close(netns)

    run_async(main)
    assert not list(sock_dir.iterdir()), "socket files left behind"
