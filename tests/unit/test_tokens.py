"""ES256 path tokens shaped like NSM's Go spiffejwt tokens (protocol doc §3.3)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from token_oracle import verify

from nsm_local.dev_ca import DevCA
from nsm_sdk.agent.credentials import TOKEN_KEY, CallTokens, caller_token
from nsm_sdk.agent.security import material_signer
from nsm_sdk.identity.peer import PeerIdentity
from nsm_sdk.identity.tokens import (
    RECENT_AUDIENCES,
    TokenError,
    TokenSigner,
    UnsupportedKeyError,
    decode_header,
    decode_unverified,
    signature_valid,
)
from nsm_sdk.identity.x509 import X509Material

NOW = 1_775_557_454.75
PEER = "spiffe://example.org/ns/nsm-system/sa/nsmgr"


def raw_part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def test_header_is_es256_jwt_without_kid() -> None:
    token, _ = TokenSigner("nsc").sign(PEER, 600, NOW)
    assert raw_part(token, 0) == {"alg": "ES256", "typ": "JWT"}
    assert decode_header(token) == {"alg": "ES256", "typ": "JWT"}


def test_claims_are_sub_aud_array_and_integer_exp_only() -> None:
    token, exp = TokenSigner("nsc").sign(PEER, 600, NOW)
    claims = raw_part(token, 1)
    assert claims == {"sub": "spiffe://nsm.local/nsc", "aud": [PEER], "exp": 1_775_558_054}
    assert isinstance(claims["exp"], int)
    assert exp == 1_775_558_054.0


def test_audience_is_omitted_without_a_peer() -> None:
    token, _ = TokenSigner("nse").sign(None, 600, NOW)
    assert "aud" not in decode_unverified(token)


def test_expiry_is_capped_by_certificate_not_after() -> None:
    token, exp = TokenSigner("nsc").sign(PEER, 600, NOW, not_after=NOW + 30.9)
    assert exp == float(int(NOW + 30.9))
    assert decode_unverified(token)["exp"] == int(NOW + 30.9)


def test_explicit_spiffe_id_becomes_the_subject() -> None:
    signer = TokenSigner(spiffe_id="spiffe://example.org/nsc-1")
    assert decode_unverified(signer.sign(PEER, 60, NOW)[0])["sub"] == "spiffe://example.org/nsc-1"


def test_signature_verifies_with_the_signers_public_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token, _ = TokenSigner("nsc", private_key=key).sign(PEER, 600, NOW)
    assert verify(token, key.public_key(), audience=PEER, now=NOW)["aud"] == [PEER]


def test_signature_is_raw_r_s_of_64_bytes() -> None:
    token, _ = TokenSigner("nsc").sign(PEER, 600, NOW)
    signature = token.split(".")[2]
    assert len(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))) == 64


def test_verify_rejects_another_key() -> None:
    token, _ = TokenSigner("nsc").sign(PEER, 600, NOW)
    with pytest.raises(TokenError):
        verify(token, TokenSigner("other").public_key)


def test_verify_rejects_a_tampered_token() -> None:
    signer = TokenSigner("nsc")
    token, _ = signer.sign(PEER, 600, NOW)
    header, _, signature = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"sub": "x", "exp": 1}).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenError):
        verify(f"{header}.{forged}.{signature}", signer.public_key)


def test_verify_checks_audience_and_expiry_only_when_asked() -> None:
    signer = TokenSigner("nsc")
    token, exp = signer.sign(PEER, 600, NOW)
    assert verify(token, signer.public_key)["sub"] == "spiffe://nsm.local/nsc"
    with pytest.raises(TokenError, match="audience"):
        verify(token, signer.public_key, audience="spiffe://example.org/other")
    with pytest.raises(TokenError, match="expired"):
        verify(token, signer.public_key, now=exp)


def test_each_signer_without_key_gets_its_own_p256_key() -> None:
    first, second = TokenSigner("a"), TokenSigner("b")
    assert isinstance(first.public_key.curve, ec.SECP256R1)
    assert first.public_key.public_numbers() != second.public_key.public_numbers()


def test_non_p256_key_is_refused() -> None:
    with pytest.raises(UnsupportedKeyError):
        TokenSigner("nsc", private_key=ec.generate_private_key(ec.SECP384R1()))


def test_non_positive_lifetime_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenSigner("nsc").sign(PEER, 0, NOW)


def test_decode_unverified_rejects_garbage() -> None:
    with pytest.raises(TokenError):
        decode_unverified("not.a.jwt")


# --- tokens of an X.509-SVID (§3.3): its key, its id, capped by both certificates ----------------------

TD = "nsm.local"
NSC_ID = f"spiffe://{TD}/ns/default/pod/nsc"
NSMGR_ID = f"spiffe://{TD}/ns/nsm-system/pod/nsmgr"


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.generate(TD, now=NOW - 60)


def peer_of(material: X509Material) -> PeerIdentity:
    return PeerIdentity(material.spiffe_id, material.leaf)


def test_svid_signer_signs_as_the_svid_with_its_key(ca: DevCA) -> None:
    svid = ca.issue(NSC_ID, 3600.0, now=NOW)
    token, _ = TokenSigner.from_material(svid).sign(NSMGR_ID, 600, NOW)
    claims = verify(token, svid.private_key.public_key(), audience=NSMGR_ID, now=NOW)
    assert claims == {"sub": NSC_ID, "aud": [NSMGR_ID], "exp": int(NOW + 600)}


def test_svid_signer_caps_expiry_at_its_own_not_after(ca: DevCA) -> None:
    svid = ca.issue(NSC_ID, 100.5, now=NOW)
    signer = TokenSigner.from_material(svid)
    assert signer.not_after == svid.not_after == svid.leaf.not_valid_after_utc.timestamp()
    token, exp = signer.sign(NSMGR_ID, 600, NOW)
    assert exp == svid.not_after
    assert decode_unverified(token)["exp"] == int(svid.not_after)


def test_svid_signer_caps_expiry_at_the_peers_not_after_when_that_comes_first(ca: DevCA) -> None:
    own = ca.issue(NSC_ID, 3600.0, now=NOW)
    peer = peer_of(ca.issue(NSMGR_ID, 50.0, now=NOW))
    _, exp = TokenSigner.from_material(own).sign(peer.spiffe_id, 600, NOW, not_after=peer.not_after)
    assert exp == peer.not_after
    _, exp = TokenSigner.from_material(own).sign(peer.spiffe_id, 20, NOW, not_after=peer.not_after)
    assert exp == int(NOW + 20)


def test_call_tokens_address_the_peer_and_expire_with_the_earliest_certificate(ca: DevCA) -> None:
    own = ca.issue(NSC_ID, 3600.0, now=NOW)
    peer = peer_of(ca.issue(NSMGR_ID, 30.0, now=NOW))
    tokens = CallTokens(TokenSigner.from_material(own), 600.0, clock=lambda: NOW)
    token, exp = tokens.sign(peer)
    assert verify(token, own.private_key.public_key(), audience=NSMGR_ID) == {
        "sub": NSC_ID,
        "aud": [NSMGR_ID],
        "exp": int(peer.not_after),
    }
    assert exp == peer.not_after
    assert "aud" not in decode_unverified(tokens.sign(None)[0])
    metadata = tokens.metadata(peer)
    read_back, expires = caller_token(metadata)  # what the server reads back
    assert read_back is not None and read_back == dict(metadata)[TOKEN_KEY]
    assert (decode_unverified(read_back)["aud"], expires) == ([NSMGR_ID], exp)


def test_call_tokens_sign_with_the_current_svid_after_a_rotation(ca: DevCA) -> None:
    svids = [ca.issue(NSC_ID, 3600.0, now=NOW)]
    tokens = CallTokens(material_signer(lambda: svids[-1]), 600.0, clock=lambda: NOW)
    first, _ = tokens.sign()
    assert tokens.signer is tokens.signer  # one signer per SVID, not one per token
    svids.append(ca.issue(NSC_ID, 3600.0, now=NOW + 1800))
    second, _ = tokens.sign()
    verify(first, svids[0].private_key.public_key())
    verify(second, svids[1].private_key.public_key())
    with pytest.raises(TokenError):
        verify(second, svids[0].private_key.public_key())


def test_call_tokens_sign_with_the_svid_a_connection_presented_even_after_a_rotation(ca: DevCA) -> None:
    # The peer verifies our token against the certificate it saw on the connection, not our newest one.
    svids = [ca.issue(NSC_ID, 3600.0, now=NOW)]
    tokens = CallTokens(material_signer(lambda: svids[-1]), 600.0, clock=lambda: NOW)
    peer = peer_of(ca.issue(NSMGR_ID, 3600.0, now=NOW))
    svids.append(ca.issue(NSC_ID, 3600.0, now=NOW + 1800))
    token, _ = tokens.sign(peer, svids[0])
    assert verify(token, svids[0].private_key.public_key(), audience=NSMGR_ID)["sub"] == NSC_ID
    with pytest.raises(TokenError):
        verify(token, svids[1].private_key.public_key())


def test_tokens_signed_within_one_second_for_one_audience_are_one_token() -> None:
    """exp is whole seconds, so such tokens have the same claims: the signature is not worked out again."""
    signer = TokenSigner("nsmgr")
    first, exp = signer.sign("spiffe://example.org/nsc", 60, 1000.2)
    again, exp_again = signer.sign("spiffe://example.org/nsc", 60, 1000.9)
    other, _ = signer.sign("spiffe://example.org/nse", 60, 1000.9)
    later, exp_later = signer.sign("spiffe://example.org/nsc", 60, 1001.0)
    assert again == first and exp_again == exp == 1060.0
    assert other != first and decode_unverified(other)["aud"] == ["spiffe://example.org/nse"]
    assert later != first and exp_later == 1061.0
    assert signature_valid(later, signer.public_key) and signature_valid(first, signer.public_key)


def test_a_signer_keeps_the_last_token_of_each_audience_while_calls_alternate_between_them() -> None:
    """nsm-local's calls alternate between its clients and endpoints: each audience's token is reused within
    its second however the calls interleave, and the least recently used audience is dropped first."""
    signer = TokenSigner("nsmgr")
    audiences = [f"spiffe://example.org/peer{n}" for n in range(RECENT_AUDIENCES)]
    first = {aud: signer.sign(aud, 60, 1000.1)[0] for aud in audiences}
    again = {aud: signer.sign(aud, 60, 1000.5)[0] for aud in reversed(audiences)}
    assert again == first and len(set(first.values())) == RECENT_AUDIENCES
    signer.sign("spiffe://example.org/newcomer", 60, 1000.6)  # one too many: the oldest use goes
    assert signer.sign(audiences[-1], 60, 1000.7)[0] != first[audiences[-1]]
    assert signer.sign(audiences[0], 60, 1000.7)[0] == first[audiences[0]]
