"""Per-call token metadata (protocol doc §1.4, §3.3).

Every client call carries `nsm-client-token` (a JWT) and `nsm-client-token-expires` (Go RFC3339Nano);
servers copy them into the caller's path segment. Without TLS there is no peer identity, so `aud` is
omitted, exactly as Go does when the connection has no TLS peer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from nsm_sdk.identity.tokens import TokenSigner
from nsm_sdk.protocol.gotime import format_rfc3339nano, parse_rfc3339nano

TOKEN_KEY = "nsm-client-token"
TOKEN_EXPIRES_KEY = "nsm-client-token-expires"

Metadata = tuple[tuple[str, str], ...]


class CallTokens:
    """Signs tokens for calls and for our own path segment, capped at `lifetime` seconds."""

    def __init__(self, signer: TokenSigner, lifetime: float, clock: Callable[[], float] = time.time) -> None:
        self.signer = signer
        self.lifetime = lifetime
        self._clock = clock

    def sign(self, audience: str | None = None) -> tuple[str, float]:
        return self.signer.sign(audience, self.lifetime, self._clock())

    def metadata(self, audience: str | None = None, extra: Metadata = ()) -> Metadata:
        token, expires = self.sign(audience)
        return ((TOKEN_KEY, token), (TOKEN_EXPIRES_KEY, format_rfc3339nano(expires)), *extra)


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
