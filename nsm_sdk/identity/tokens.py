"""ES256 path tokens, as NSM's Go `spiffejwt` generator makes them (protocol doc §3.3, §12 item 4).

Header `{"alg":"ES256","typ":"JWT"}` without `kid`; claims `sub` (own SPIFFE id), `aud` as a JSON array
with the peer's SPIFFE id (omitted without a peer) and `exp` as integer seconds. No iat/nbf/iss.
The key must be the EC P-256 key of the X.509-SVID presented on the same connection
(`TokenSigner.from_material`); only the insecure mode, which has no SVID, signs with a key generated per
signer.
"""

from __future__ import annotations

import math
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from nsm_sdk.identity.x509 import X509Material
from nsm_sdk.protocol.errors import NsmError, ProtocolError

ALGORITHM = "ES256"
DEFAULT_TRUST_DOMAIN = "nsm.local"


class UnsupportedKeyError(NsmError):
    """The signing key is not EC P-256, so ES256 tokens (which the Go components require) are impossible."""


class TokenError(ProtocolError):
    """A token that cannot be decoded or verified."""


def default_spiffe_id(name: str) -> str:
    return f"spiffe://{DEFAULT_TRUST_DOMAIN}/{name}"


RECENT_AUDIENCES = 1024
"""Audiences whose last token a signer keeps for reuse (the least recently used goes first)."""


class TokenSigner:
    """Signs path/metadata tokens for one workload identity."""

    def __init__(
        self,
        name: str = "nsm",
        *,
        spiffe_id: str | None = None,
        private_key: ec.EllipticCurvePrivateKey | None = None,
        not_after: float | None = None,
    ) -> None:
        if private_key is None:
            private_key = ec.generate_private_key(ec.SECP256R1())
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise UnsupportedKeyError("ES256 path tokens need an EC P-256 private key")
        self.spiffe_id = spiffe_id if spiffe_id is not None else default_spiffe_id(name)
        self.not_after = not_after
        """The NotAfter of the certificate of our key (None without one); no token outlives it."""
        self._key = private_key
        self._recent: dict[str | None, tuple[int, str]] = {}  # audience -> its last (exp, token)

    @classmethod
    def from_material(cls, material: X509Material) -> TokenSigner:
        """Sign as the SVID's SPIFFE id with its key, capped by its leaf's NotAfter (§3.3)."""
        return cls(
            spiffe_id=material.spiffe_id, private_key=material.private_key, not_after=material.not_after
        )

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(
        self, audience: str | None, lifetime: float, now: float, not_after: float | None = None
    ) -> tuple[str, float]:
        """A token for `audience` (the peer's SPIFFE id, None without a TLS peer) valid for `lifetime`.

        exp = floor(min(now + lifetime, own NotAfter, not_after)) where `not_after` is the peer leaf's
        NotAfter when there is a peer. Returns (token, exp); send exp as `nsm-client-token-expires` and as
        the path segment's `expires` so both agree with the claim.
        """
        if lifetime <= 0:
            raise ValueError(f"token lifetime must be positive, got {lifetime}")
        caps = [cap for cap in (not_after, self.not_after) if cap is not None]
        expiry = min([now + lifetime, *caps])
        exp = math.floor(expiry)
        # `exp` is whole seconds, so every token for this audience signed within one second has the same
        # claims: the last one is handed out again instead of signing them anew (a busy nsm-local signs
        # three tokens per refresh, ~0.1 ms of ECDSA and ~0.1 ms of PyJWT each). Kept per audience: the
        # calls of a busy nsm-local alternate between its peers.
        recent = self._recent.pop(audience, None)
        if recent is not None and recent[0] == exp:
            token = recent[1]
        else:
            claims: dict[str, Any] = {"sub": self.spiffe_id}
            if audience is not None:
                claims["aud"] = [audience]
            claims["exp"] = exp
            token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"typ": "JWT"})
        self._recent[audience] = (exp, token)  # the most recent audience last
        if len(self._recent) > RECENT_AUDIENCES:
            del self._recent[next(iter(self._recent))]
        return token, float(exp)

    def __repr__(self) -> str:
        return f"TokenSigner(spiffe_id={self.spiffe_id!r})"


def decode_unverified(token: str) -> dict[str, Any]:
    """The claims of a token without checking its signature (for logs and for reading `aud`/`exp`)."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenError(f"cannot decode token: {exc}") from exc
    return claims


def decode_header(token: str) -> dict[str, Any]:
    try:
        header: dict[str, Any] = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenError(f"cannot decode token header: {exc}") from exc
    return header


def signature_valid(token: str, public_key: ec.EllipticCurvePublicKey) -> bool:
    """Whether `token` is an ES256 JWS made with the private key of `public_key` (OPA `verify_es256`)."""
    try:
        jwt.decode(
            token,
            public_key,
            algorithms=[ALGORITHM],
            options={"verify_exp": False, "verify_aud": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.PyJWTError:
        return False
    return True
