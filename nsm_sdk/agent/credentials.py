"""Per-call token metadata (protocol doc §1.4, §3.3).

Every client call carries `nsm-client-token` (a JWT) and `nsm-client-token-expires` (Go RFC3339Nano);
servers copy them into the caller's path segment. The token is addressed (`aud`) to the peer we
authenticated on the connection the call goes out on, and expires no later than either certificate.
Without TLS there is no peer identity, so `aud` is omitted, exactly as Go does without a TLS peer.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable

from nsm_sdk.identity.peer import PeerIdentity
from nsm_sdk.identity.tokens import TokenSigner
from nsm_sdk.identity.x509 import X509Material
from nsm_sdk.protocol.gotime import format_rfc3339nano, parse_rfc3339nano

TOKEN_KEY = "nsm-client-token"
TOKEN_EXPIRES_KEY = "nsm-client-token-expires"

Metadata = tuple[tuple[str, str], ...]


class CallTokens:
    """Signs tokens for calls and for our own path segment, capped at `lifetime` seconds.

    `signer` is a fixed signer, or a function giving the current one (the SVID rotates: new tokens use
    the new key).
    """

    def __init__(
        self,
        signer: TokenSigner | Callable[[], TokenSigner],
        lifetime: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self.lifetime = lifetime
        self._clock = clock

    def __repr__(self) -> str:
        return f"CallTokens({self.signer!r}, lifetime={self.lifetime})"

    @property
    def signer(self) -> TokenSigner:
        return self._signer if isinstance(self._signer, TokenSigner) else self._signer()

    @property
    def spiffe_id(self) -> str:
        return self.signer.spiffe_id

    def sign(self, peer: PeerIdentity | None = None, own: X509Material | None = None) -> tuple[str, float]:
        """A token for `peer` (aud = its SPIFFE id, exp capped by its certificate); no aud without one.

        `own`: the SVID we presented on the connection the token goes out on; the token is signed with its
        key (the peer checks it against that certificate), else with the current signer's.
        """
        signer = self.signer if own is None else signer_for(own)
        if peer is None:
            return signer.sign(None, self.lifetime, self._clock())
        return signer.sign(peer.spiffe_id, self.lifetime, self._clock(), peer.not_after)

    def metadata(
        self, peer: PeerIdentity | None = None, extra: Metadata = (), own: X509Material | None = None
    ) -> Metadata:
        token, expires = self.sign(peer, own)
        return ((TOKEN_KEY, token), (TOKEN_EXPIRES_KEY, format_rfc3339nano(expires)), *extra)


@functools.lru_cache(maxsize=16)
def signer_for(material: X509Material) -> TokenSigner:
    """The signer of an SVID (materials compare by identity, so a rotated one gets its own), kept for the
    few SVIDs in use so that its last token can be handed out again (`TokenSigner.sign`)."""
    return TokenSigner.from_material(material)


def caller_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[str | None, float | None]:
    """The caller's token and expiry; both must be present and single-valued (Go `token.FromContext`)."""
    pairs = list(metadata or ())
    tokens = [v for k, v in pairs if k == TOKEN_KEY]
    expires = [v for k, v in pairs if k == TOKEN_EXPIRES_KEY]
    if len(tokens) != 1 or len(expires) != 1:
        return None, None
    token, expires_text = tokens[0], expires[0]
    if isinstance(token, bytes) or isinstance(expires_text, bytes):
        return None, None
    try:
        return token, parse_rfc3339nano(expires_text)
    except ValueError:
        return None, None


def metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key and isinstance(v, str):
            return v
    return None
