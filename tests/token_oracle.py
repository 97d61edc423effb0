"""A full ES256 token check for tests: signature, audience and expiry, returning the claims.

The product checks tokens through NSM's policies (`identity/policies.py`: `signature_valid` and the
claims one by one); tests use this to read what a component signed.
"""

from __future__ import annotations

from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from nsm_sdk.identity.tokens import ALGORITHM, TokenError


def verify(
    token: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    audience: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Check the ES256 signature (and, when given, that `audience` is in `aud` and `exp` is after `now`).

    Returns the claims; raises TokenError otherwise. The clock is never read: expiry is only checked
    against an explicit `now`.
    """
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=[ALGORITHM],
            options={"verify_exp": False, "verify_aud": False},
        )
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid token: {exc}") from exc
    if audience is not None:
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if audience not in audiences:
            raise TokenError(f"token audience {aud!r} does not include {audience!r}")
    if now is not None:
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= now:
            raise TokenError(f"token expired or without integer exp: exp={exp!r}, now={now}")
    return claims
