"""NSM's default authorization policies in Python (protocol doc §3.4), over real ES256 path tokens.

What each policy must accept or refuse is what the sdk's Rego files (v1.18.0, `pkg/tools/opa/policies`)
decide for the same input; the odd shapes (a bare-string `aud`, an `exp` that is not a number, a token
with two audiences) were checked against OPA itself. Tokens are signed like Go's spiffejwt tokens
(`TokenSigner`), or with PyJWT directly where a shape is needed that TokenSigner never makes.
"""

from __future__ import annotations

import base64
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from nsm_sdk.identity.policies import (
    PermissionDenied,
    check_client,
    check_owner,
    check_server,
    tokens_chained,
    tokens_expired,
    tokens_valid,
)
from nsm_sdk.identity.tokens import TokenSigner, decode_unverified

NOW = 1_775_557_454.75
HOPS = ("nsc", "nsmgr", "forwarder", "nse", "nsmgr-remote", "nse-remote")
SIGNERS = {hop: TokenSigner(spiffe_id=f"spiffe://nsm.local/{hop}") for hop in HOPS}
A, B, C = (SIGNERS[hop].spiffe_id for hop in ("nsc", "nsmgr", "forwarder"))
KEY_A = ec.generate_private_key(ec.SECP256R1())


def path_tokens(length: int, now: float = NOW, lifetime: float = 600.0) -> list[str]:
    """A well-formed path of `length` hops: each token addressed to the next hop, the last one back to
    its caller (a server's own token, §3.3)."""
    hops = HOPS[:length]
    tokens = []
    for index, hop in enumerate(hops):
        if index + 1 < length:
            audience: str | None = SIGNERS[hops[index + 1]].spiffe_id
        else:
            audience = SIGNERS[hops[index - 1]].spiffe_id if index else None
        tokens.append(SIGNERS[hop].sign(audience, lifetime, now)[0])
    return tokens


def key_of(index: int) -> ec.EllipticCurvePublicKey:
    return SIGNERS[HOPS[index]].public_key


def es256(claims: dict[str, Any], key: ec.EllipticCurvePrivateKey = KEY_A) -> str:
    """A token with exactly these claims (shapes TokenSigner never produces)."""
    return jwt.encode(claims, key, algorithm="ES256", headers={"typ": "JWT"})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(policy: str) -> Any:
    return pytest.raises(PermissionDenied, match=f"^no sufficient privileges: policy {policy}: ")


# --- tokens_valid ---------------------------------------------------------------------------------------


def test_tokens_valid_accepts_decodable_tokens_and_returns_their_claims() -> None:
    tokens = path_tokens(3)
    assert tokens_valid(tokens) == [decode_unverified(token) for token in tokens]
    assert tokens_valid([]) == []


def test_tokens_valid_only_decodes_so_a_bad_signature_still_passes() -> None:
    header, payload, _ = path_tokens(1)[0].split(".")
    forged = f"{header}.{payload}.{b64(b'not a signature')}"
    assert tokens_valid([forged]) == [{"sub": A, "exp": 1_775_558_054}]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("not.a.jwt", id="garbage"),
        pytest.param("only.two", id="two-parts"),
        pytest.param(f"{b64(b'{}')}.{b64(b'not json')}.c2ln", id="payload-not-json"),
        pytest.param(f"{b64(b'{}')}.{b64(b'[1]')}.c2ln", id="payload-not-an-object"),
        pytest.param(f"{b64(b'no')}.{b64(b'{}')}.c2ln", id="header-not-json"),
    ],
)
def test_tokens_valid_refuses_a_token_that_does_not_decode(token: str) -> None:
    tokens = path_tokens(2)
    with refused("tokens_valid") as caught:
        tokens_valid([*tokens, token])
    assert "path segment 2" in str(caught.value)
    assert caught.value.policy == "tokens_valid"


# --- tokens_chained -------------------------------------------------------------------------------------


def test_tokens_chained_accepts_each_token_addressed_to_the_next_ones_subject() -> None:
    tokens_chained(tokens_valid(path_tokens(4)))


def test_tokens_chained_accepts_paths_shorter_than_two() -> None:
    tokens_chained([])
    tokens_chained([{"sub": A}])  # no aud at all: nothing to chain to


def test_tokens_chained_ignores_the_last_tokens_audience() -> None:
    tokens_chained([{"sub": A, "aud": [B]}, {"sub": B, "aud": ["spiffe://elsewhere/x"]}])


def test_tokens_chained_accepts_an_audience_list_naming_the_next_subject_twice() -> None:
    tokens_chained(tokens_valid([es256({"sub": A, "aud": [B, B]}), es256({"sub": B})]))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param({"sub": A, "aud": B}, {"sub": B}, id="aud-bare-string"),
        pytest.param({"sub": A, "aud": [C]}, {"sub": B}, id="aud-someone-else"),
        pytest.param({"sub": A}, {"sub": B}, id="aud-missing"),
        pytest.param({"sub": A, "aud": []}, {"sub": B}, id="aud-empty"),
        pytest.param({"sub": A, "aud": [B]}, {"aud": [A]}, id="next-without-sub"),
    ],
)
def test_tokens_chained_refuses_a_pair_that_does_not_chain(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    # A bare string is what a signer without golang-jwt's MarshalSingleStringAsArray would send: the Rego
    # iterates `aud[_]`, which a string does not do (§3.3).
    with refused("tokens_chained") as caught:
        tokens_chained(tokens_valid([es256(first), es256(second)]))
    assert "token 0" in str(caught.value)


def test_tokens_chained_names_the_first_pair_that_breaks() -> None:
    tokens = path_tokens(4)
    tokens[2] = SIGNERS["forwarder"].sign("spiffe://nsm.local/not-the-nse", 600.0, NOW)[0]
    with refused("tokens_chained") as caught:
        tokens_chained(tokens_valid(tokens))
    assert "token 2 is for ['spiffe://nsm.local/not-the-nse']" in str(caught.value)


def test_tokens_chained_refuses_an_audience_list_with_another_identity_besides_the_next() -> None:
    with pytest.raises(PermissionDenied):
        tokens_chained(tokens_valid([es256({"sub": A, "aud": [B, C]}), es256({"sub": B})]))


# --- tokens_expired -------------------------------------------------------------------------------------


@pytest.mark.parametrize("exp", [int(NOW) + 1, NOW + 0.5, 10**20], ids=["int", "float", "far"])
def test_tokens_expired_accepts_a_numeric_exp_after_now(exp: float) -> None:
    tokens_expired([{"sub": A, "exp": exp}], NOW)


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"sub": A, "exp": NOW}, id="exp-equals-now"),
        pytest.param({"sub": A, "exp": int(NOW)}, id="exp-in-the-past"),
        pytest.param({"sub": A}, id="exp-missing"),
        pytest.param({"sub": A, "exp": None}, id="exp-null"),
        pytest.param({"sub": A, "exp": True}, id="exp-boolean"),
    ],
)
def test_tokens_expired_refuses_a_token_that_is_not_alive(claims: dict[str, Any]) -> None:
    with refused("tokens_expired"):
        tokens_expired([{"sub": B, "exp": int(NOW) + 600}, claims], NOW)


def test_tokens_expired_accepts_an_empty_path() -> None:
    tokens_expired([], NOW)


def test_tokens_expired_checks_real_tokens_against_the_given_clock() -> None:
    claims = tokens_valid(path_tokens(3, lifetime=60.0))
    tokens_expired(claims, NOW + 59.0)
    with refused("tokens_expired"):
        tokens_expired(claims, NOW + 60.0)


# --- server: prev_token_signed, with the common ones ----------------------------------------------------


def test_server_check_accepts_the_left_side_whose_previous_token_is_the_peers() -> None:
    tokens = path_tokens(4)  # nsc, nsmgr, forwarder, nse; the nse checks, its peer is the forwarder
    check_server(tokens, 3, key_of(2), NOW)
    check_server(tokens[:2], 1, key_of(0), NOW)  # nsmgr, called by the nsc


def test_server_check_refuses_a_previous_token_signed_by_another_key() -> None:
    tokens = path_tokens(4)
    with refused("prev_token_signed") as caught:
        check_server(tokens, 3, key_of(1), NOW)
    assert "path segment 2" in str(caught.value)


def test_server_check_refuses_index_zero_which_has_no_previous_token() -> None:
    with refused("prev_token_signed"):
        check_server(path_tokens(1), 0, key_of(0), NOW)


@pytest.mark.parametrize("algorithm", ["HS256", "none"])
def test_server_check_refuses_a_previous_token_that_is_not_es256(algorithm: str) -> None:
    tokens = path_tokens(2)
    claims = decode_unverified(tokens[0])
    key: Any = "a-shared-secret-of-32-bytes-or-so" if algorithm == "HS256" else None
    tokens[0] = jwt.encode(claims, key, algorithm=algorithm)
    with refused("prev_token_signed"):
        check_server(tokens, 1, key_of(0), NOW)


def test_server_check_applies_the_common_policies_before_the_signature() -> None:
    tokens = path_tokens(3)
    with refused("tokens_valid"):
        check_server(["", *tokens[1:]], 2, key_of(1), NOW)
    with refused("tokens_chained"):
        check_server([tokens[1], *tokens[1:]], 2, key_of(1), NOW)
    with refused("tokens_expired"):
        check_server(tokens, 2, key_of(1), NOW + 600.0)


# --- client: next_token_signed, with the common ones ----------------------------------------------------


def test_client_check_accepts_a_returned_path_whose_next_token_is_the_peers() -> None:
    tokens = path_tokens(4)
    check_client(tokens, 0, key_of(1), NOW)  # cmd-nsc: its peer is nsmgr
    check_client(tokens, 2, key_of(3), NOW)  # a forwarder: its peer is the nse


def test_client_check_refuses_a_next_token_signed_by_another_key() -> None:
    with refused("next_token_signed") as caught:
        check_client(path_tokens(4), 2, key_of(2), NOW)
    assert "path segment 3" in str(caught.value)


def test_client_check_refuses_a_path_that_ends_at_the_client() -> None:
    with refused("next_token_signed"):
        check_client(path_tokens(3), 2, key_of(1), NOW)


# --- registry: client_allowed ---------------------------------------------------------------------------


def test_owner_check_lets_anyone_take_a_free_name_and_the_owner_keep_it() -> None:
    check_owner("NetworkServiceEndpoint", "nse-a", None, A)
    check_owner("NetworkServiceEndpoint", "nse-a", A, A)


def test_owner_check_refuses_a_name_owned_by_another_identity() -> None:
    with refused("client_allowed") as caught:
        check_owner("NetworkService", "p2p", A, B)
    assert f"NetworkService 'p2p' is owned by {A}, not {B}" in str(caught.value)


# --- properties -----------------------------------------------------------------------------------------


@st.composite
def server_views(draw: st.DrawFn) -> tuple[list[str], int]:
    """A well-formed path and the index of a server on it (≥ 1)."""
    length = draw(st.integers(min_value=2, max_value=len(HOPS)))
    index = draw(st.integers(min_value=1, max_value=length - 1))
    return path_tokens(length), index


def corrupt(token: str, part: int, position: int, mask: int) -> str:
    """`token` with one byte of one of its three parts (decoded) changed."""
    parts = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(parts[part] + "=" * (-len(parts[part]) % 4)))
    raw[position % len(raw)] ^= mask
    parts[part] = b64(bytes(raw))
    return ".".join(parts)


@settings(max_examples=60, deadline=None)
@given(server_views())
def test_every_well_formed_left_side_passes_the_server_check(view: tuple[list[str], int]) -> None:
    tokens, index = view
    check_server(tokens[: index + 1], index, key_of(index - 1), NOW)


@settings(max_examples=150, deadline=None)
@given(
    server_views(),
    st.integers(min_value=0, max_value=2),
    st.integers(min_value=0),
    st.integers(min_value=1, max_value=255),
)
def test_any_changed_byte_in_the_peers_token_is_refused(
    view: tuple[list[str], int], part: int, position: int, mask: int
) -> None:
    tokens, index = view
    left = tokens[: index + 1]
    left[index - 1] = corrupt(left[index - 1], part, position, mask)
    with pytest.raises(PermissionDenied):
        check_server(left, index, key_of(index - 1), NOW)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_token_reissued_for_another_identity_breaks_the_chain(data: st.DataObject) -> None:
    """Even properly signed by its own hop: changing who a token is from or for breaks the chain."""
    length = data.draw(st.integers(min_value=2, max_value=len(HOPS)), label="length")
    tokens = path_tokens(length)
    position = data.draw(st.integers(min_value=0, max_value=length - 1), label="position")
    claims = decode_unverified(tokens[position])
    stranger = "spiffe://nsm.local/" + data.draw(st.sampled_from(["stranger", "x", "nse-b"]), label="who")
    changeable = [name for name, ok in (("sub", position > 0), ("aud", position < length - 1)) if ok]
    claim = data.draw(st.sampled_from(changeable), label="claim")
    claims[claim] = stranger if claim == "sub" else [stranger]
    tokens[position] = es256(claims, ec.generate_private_key(ec.SECP256R1()))
    with refused("tokens_chained"):
        tokens_chained(tokens_valid(tokens))


def test_permission_denied_reads_like_go_and_carries_the_policy() -> None:
    detail = "path segment 0: exp=1 is not after 2"
    denied = PermissionDenied("tokens_expired", detail)
    assert str(denied) == f"no sufficient privileges: policy tokens_expired: {detail}"
    assert (denied.policy, denied.detail) == ("tokens_expired", detail)
