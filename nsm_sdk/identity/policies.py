"""NSM's default authorization policies, in Python (protocol doc §3.4).

The Go components evaluate small Rego files from the sdk (`pkg/tools/opa/policies`) with OPA. These are
the same rules written as functions over the path's tokens, so that a Python endpoint and nsm-local refuse
exactly what nsmgr refuses. We do not embed an OPA engine: the rules are a few lines each and fixed.

Which rules apply where (sdk v1.18.0 defaults):

* a server (nsmgr, NSE) on Request/Close, over the LEFT side of the path `[:own index + 1]`, after it has
  copied the caller's token into the caller's segment and signed its own: `tokens_valid`,
  `tokens_chained`, `tokens_expired`, `prev_token_signed` (`check_server`);
* a client on the reply, over the whole returned path: `tokens_valid`, `tokens_chained`,
  `tokens_expired`, `next_token_signed` (`check_client`);
* a registry server on Register/Unregister: the four server rules on the registry path, plus
  `client_allowed` (`check_owner`): a name belongs to the first identity that registered it.

A violation raises `PermissionDenied` (gRPC PERMISSION_DENIED, like Go's "no sufficient privileges").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from nsm_sdk.identity.tokens import TokenError, decode_unverified, signature_valid
from nsm_sdk.protocol.errors import NsmError


class PermissionDenied(NsmError):
    """A call broke an authorization policy; nothing was changed."""

    grpc_status = "PERMISSION_DENIED"

    def __init__(self, policy: str, detail: str) -> None:
        self.policy = policy
        self.detail = detail
        super().__init__(f"no sufficient privileges: policy {policy}: {detail}")


def tokens_valid(tokens: Sequence[str]) -> list[dict[str, Any]]:
    """Every token decodes as a JWT (an empty one does not); returns their claims."""
    claims = []
    for index, token in enumerate(tokens):
        try:
            claims.append(decode_unverified(token))
        except TokenError as exc:
            raise PermissionDenied("tokens_valid", f"path segment {index}: {exc}") from None
    return claims


def _audiences(claims: Mapping[str, Any]) -> list[Any]:
    aud = claims.get("aud")
    return aud if isinstance(aud, list) else []  # a bare string does not iterate in the Rego either


def tokens_chained(claims: Sequence[Mapping[str, Any]]) -> None:
    """Each token is addressed to the next one's subject, and to no one else.

    The Rego's `pair_valid` is `p1.aud[_] == p2.sub`: with an audience besides the next subject it yields
    both true and false, OPA stops with a conflict error, and Go refuses the call; so do we."""
    for index in range(len(claims) - 1):
        subject = claims[index + 1].get("sub")
        audiences = _audiences(claims[index])
        if subject is None or not audiences or any(aud != subject for aud in audiences):
            raise PermissionDenied(
                "tokens_chained",
                f"token {index} is for {_audiences(claims[index])}, token {index + 1} is from {subject!r}",
            )


def tokens_expired(claims: Sequence[Mapping[str, Any]], now: float) -> None:
    """Every token has a numeric `exp` after `now`."""
    for index, claim in enumerate(claims):
        exp = claim.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or not now < exp:
            detail = f"path segment {index}: exp={exp!r} is not after {now:.0f}"
            raise PermissionDenied("tokens_expired", detail)


def _signed_by(policy: str, tokens: Sequence[str], index: int, key: ec.EllipticCurvePublicKey) -> None:
    if not 0 <= index < len(tokens):
        raise PermissionDenied(policy, f"no path segment {index} to check")
    if not signature_valid(tokens[index], key):
        detail = f"the token of path segment {index} is not signed by the TLS peer's key"
        raise PermissionDenied(policy, detail)


def check_server(tokens: Sequence[str], index: int, peer_key: ec.EllipticCurvePublicKey, now: float) -> None:
    """A server's check of the left side `tokens` (= path[:index+1]); `index` is its own segment."""
    claims = tokens_valid(tokens)
    tokens_chained(claims)
    tokens_expired(claims, now)
    _signed_by("prev_token_signed", tokens, index - 1, peer_key)


def check_client(tokens: Sequence[str], index: int, peer_key: ec.EllipticCurvePublicKey, now: float) -> None:
    """A client's check of the returned path; `index` is its own segment (the server's is index + 1)."""
    claims = tokens_valid(tokens)
    tokens_chained(claims)
    tokens_expired(claims, now)
    _signed_by("next_token_signed", tokens, index + 1, peer_key)


def check_owner(kind: str, name: str, owner: str | None, caller: str) -> None:
    """`client_allowed`: an unknown name is free; a known one only for the identity that registered it."""
    if owner is not None and owner != caller:
        raise PermissionDenied("client_allowed", f"{kind} {name!r} is owned by {owner}, not {caller}")
