"""mTLS with X.509-SVIDs inside the relay (protocol doc §3.2, §12 items 2-3).

Each relayed connection gets a `TlsSession`: an `ssl.SSLObject` over two `MemoryBIO`s, so the relay
moves ciphertext with `sendmsg`/`recvmsg` and fds keep riding on the raw socket underneath. What it
enforces, like go-spiffe's `tlsconfig.MTLSClientConfig`/`MTLSServerConfig` with `AuthorizeAny`:

* TLS 1.2 or newer, a certificate from BOTH sides, ALPN `h2` negotiated (grpc-go refuses anything else);
* the peer chain verifies to one of our bundles (OpenSSL), then `identity.peer.verify_peer` checks the
  SPIFFE rules: exactly one URI SAN, not a CA, anchored in the bundle of the peer's own trust domain;
* no host name check at all.

Contexts are built per `X509Material` object: a rotated SVID (a new object) is used from the next
handshake on, while live connections keep theirs. The key and chain reach OpenSSL through a memfd, so
they never touch a disk.

Python 3.11 exposes the verified chain only through the private `_sslobj.get_verified_chain()` (public
as `SSLObject.get_verified_chain()` from 3.13); `_verified_chain` uses whichever exists.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import threading
from collections.abc import Callable
from typing import Any

from cryptography import x509

from nsm_sdk.identity.peer import PeerIdentity, PeerRejected, verify_peer
from nsm_sdk.identity.x509 import X509Material, certificates_pem

_log = logging.getLogger(__name__)
ALPN_H2 = "h2"
_READ_CHUNK = 256 * 1024


class TlsHandshakeError(ConnectionAbortedError):
    """The TLS handshake failed or the peer is not acceptable; the relay drops the connection."""


def _load_cert_chain(context: ssl.SSLContext, material: X509Material) -> None:
    """`load_cert_chain` wants a path: give it a memfd holding the PEM chain and key."""
    fd = os.memfd_create("nsm-svid", os.MFD_CLOEXEC)
    try:
        os.write(fd, material.chain_pem() + material.key_pem())
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def make_context(material: X509Material, *, server_side: bool) -> ssl.SSLContext:
    """An SSLContext presenting `material`'s SVID and trusting its bundles (all trust domains)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols([ALPN_H2])
    authorities = material.authorities()
    if not authorities:
        raise TlsHandshakeError(f"SVID {material.spiffe_id} comes with no trust bundle")
    context.load_verify_locations(cadata=certificates_pem(authorities).decode())
    _load_cert_chain(context, material)
    return context


def _verified_chain(obj: ssl.SSLObject) -> list[x509.Certificate]:
    getter: Any = getattr(obj, "get_verified_chain", None) or obj._sslobj.get_verified_chain  # type: ignore[attr-defined]
    chain = []
    for cert in getter() or ():
        der = cert if isinstance(cert, bytes) else cert.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
        chain.append(x509.load_der_x509_certificate(der))
    return chain


def material_bundles(material: X509Material | None) -> dict[str, tuple[x509.Certificate, ...]]:
    return dict(material.bundles) if material is not None else {}


class TlsSession:
    """One connection's TLS state; `established` once the peer is authenticated (then `peer` is set)."""

    def __init__(self, context: ssl.SSLContext, material: X509Material, *, server_side: bool) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self.material: X509Material | None = material
        self._server_side = server_side
        self._plaintext_backlog: list[bytes] = []
        self._eof = False
        self.peer: PeerIdentity | None = None
        if not server_side:
            self._handshake()  # the ClientHello is ready for the relay's first flush

    def __repr__(self) -> str:
        side = "server" if self._server_side else "client"
        state = f"peer={self.peer.spiffe_id}" if self.peer else "handshaking"
        return f"<TlsSession {side} {state}>"

    @property
    def established(self) -> bool:
        return self.peer is not None

    def _handshake(self) -> None:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError as exc:
            raise self._failed(f"TLS handshake failed: {exc.reason or exc}") from exc
        if self._obj.selected_alpn_protocol() != ALPN_H2:
            raise self._failed(f"peer did not negotiate ALPN {ALPN_H2!r}")
        try:
            self.peer = verify_peer(_verified_chain(self._obj), material_bundles(self.material))
        except PeerRejected as exc:
            raise self._failed(str(exc)) from exc
        fields = {"peer": self.peer.spiffe_id, "version": self._obj.version(), "side": self._side}
        _log.debug("tls.established", extra={"fields": fields})
        backlog, self._plaintext_backlog = self._plaintext_backlog, []
        for data in backlog:
            self._obj.write(data)

    @property
    def _side(self) -> str:
        return "server" if self._server_side else "client"

    def _failed(self, reason: str) -> TlsHandshakeError:
        _log.warning("tls.handshake_failed", extra={"fields": {"side": self._side, "reason": reason}})
        return TlsHandshakeError(reason)

    def feed_plaintext(self, data: bytes) -> None:
        if not self.established:
            self._plaintext_backlog.append(data)
            return
        view = memoryview(data)
        while view:
            written = self._obj.write(view)
            view = view[written:]

    def feed_wire(self, data: bytes) -> bytes:
        self._incoming.write(data)
        if not self.established:
            self._handshake()
            if not self.established:
                return b""
        chunks: list[bytes] = []
        while not self._eof:
            try:
                chunk = self._obj.read(_READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the peer's close_notify
                self._eof = True
                break
            except ssl.SSLError as exc:  # typically the peer's alert: it refused our certificate
                reason = f"TLS alert from the peer: {exc.reason or exc}"
                _log.warning("tls.peer_error", extra={"fields": {"side": self._side, "reason": reason}})
                raise TlsHandshakeError(reason) from exc
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def wire_to_send(self) -> bytes:
        return self._outgoing.read()

    def close(self) -> None:
        if not self.established:
            return
        with contextlib.suppress(ssl.SSLError):  # close_notify is in the outgoing BIO either way
            self._obj.unwrap()


class TlsSecurity:
    """`StreamSecurity` for the relay: one TlsSession per connection, with the current SVID.

    An SSL context per SVID and side, made when first needed (or ahead, by `prepare`, so that building it
    is not part of the first link's setup)."""

    def __init__(self, material: Callable[[], X509Material]) -> None:
        self._material = material
        self._lock = threading.Lock()
        self._contexts: dict[bool, tuple[X509Material, ssl.SSLContext]] = {}

    def __repr__(self) -> str:
        return f"<TlsSecurity {self._material()!r}>"

    def _context(self, server_side: bool) -> tuple[X509Material, ssl.SSLContext]:
        material = self._material()
        with self._lock:
            cached = self._contexts.get(server_side)
            if cached is None or cached[0] is not material:
                cached = (material, make_context(material, server_side=server_side))
                self._contexts[server_side] = cached
            return cached

    def prepare(self, *, server_side: bool) -> None:
        """Build the context for the current SVID now."""
        self._context(server_side)

    def is_current(self, material: X509Material) -> bool:
        return self._material() is material

    def new_session(self, *, server_side: bool) -> TlsSession:
        material, context = self._context(server_side)
        return TlsSession(context, material, server_side=server_side)
