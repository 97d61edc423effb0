"""The seam where TLS goes: a sans-IO byte transformation between grpcio's plaintext and the wire.

fds ride on the raw socket (`FdSocket`), so whatever this layer emits (TLS records, or the same bytes in
plaintext) is what the queued fds are attached to. `tls.TlsSession` implements it over `ssl.SSLObject` +
`MemoryBIO`: `feed_wire` writes the incoming BIO and reads plaintext, `feed_plaintext` writes the
SSLObject, `wire_to_send` drains the outgoing BIO (handshake records included, so a client session has its
ClientHello ready right after creation). `established` and `peer` tell the relay when the peer is
authenticated and who it is: the relay sends no fd before that.
"""

from __future__ import annotations

from typing import Protocol

from nsm_sdk.identity.peer import PeerIdentity
from nsm_sdk.identity.x509 import X509Material


class SecureSession(Protocol):
    """One connection's security state. Raise an `OSError` subclass (e.g. `ssl.SSLError`) to abort."""

    def feed_plaintext(self, data: bytes) -> None:
        """Accept bytes from grpcio for the peer (buffered until the handshake allows sending)."""

    def feed_wire(self, data: bytes) -> bytes:
        """Accept bytes from the peer; return the plaintext for grpcio (may be empty)."""

    def wire_to_send(self) -> bytes:
        """Bytes that must go to the peer now (handshake, records, close_notify); may be empty."""

    def close(self) -> None:
        """grpcio finished writing: prepare whatever ends the stream (e.g. close_notify)."""

    @property
    def established(self) -> bool:
        """True once application data may flow and the peer is authenticated (at once in plaintext)."""

    @property
    def peer(self) -> PeerIdentity | None:
        """The authenticated peer; None in plaintext or before the handshake completes."""

    @property
    def material(self) -> X509Material | None:
        """The SVID we present on this connection (None in plaintext): tokens used on the connection are
        signed with its key, so that the peer can verify them against the certificate it saw."""


class StreamSecurity(Protocol):
    """Makes one session per relayed connection."""

    def new_session(self, *, server_side: bool) -> SecureSession:
        """A session for a connection we accepted (`server_side`) or dialled."""

    def is_current(self, material: X509Material) -> bool:
        """Whether `material` is still the SVID new connections would present (False once rotated)."""


class PlaintextSession:
    """Pass-through session: wire bytes are the plaintext."""

    def __init__(self) -> None:
        self._outgoing: list[bytes] = []

    def feed_plaintext(self, data: bytes) -> None:
        self._outgoing.append(data)

    def feed_wire(self, data: bytes) -> bytes:
        return data

    def wire_to_send(self) -> bytes:
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    def close(self) -> None:
        """Nothing ends a plaintext stream but the socket's half-close."""

    established = True
    peer = None
    material = None


class PlaintextSecurity:
    """No security: today's default, and what tests use."""

    def new_session(self, *, server_side: bool) -> SecureSession:
        return PlaintextSession()

    def is_current(self, material: X509Material) -> bool:
        return True


PLAINTEXT: StreamSecurity = PlaintextSecurity()
