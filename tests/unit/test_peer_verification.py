"""SPIFFE verification of a TLS peer's chain, as go-spiffe's `x509svid.Verify` does it (protocol doc §3.2).

`verify_peer` gets a chain OpenSSL has already verified against ALL our bundles (leaf first, anchor last),
so these tests hand it chains whose signatures are right and check only the SPIFFE rules: exactly one
URI SAN holding a workload id, a leaf that is no CA, and an anchor from the PEER's own trust domain.
Proper SVIDs come from in-memory development CAs; certificates a CA would refuse to issue are built
with `cryptography` directly.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nsm_local.dev_ca import DevCA
from nsm_sdk.identity.peer import PeerIdentity, PeerRejected, spiffe_id_of, verify_peer

TD_A = "a.example"
TD_B = "b.example"
WORKLOAD = f"spiffe://{TD_A}/ns/default/pod/nsc"


@pytest.fixture(scope="module")
def ca_a() -> DevCA:
    return DevCA.generate(TD_A)


@pytest.fixture(scope="module")
def ca_b() -> DevCA:
    return DevCA.generate(TD_B)


def usage(*, key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=True,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def certificate(
    issuer: DevCA,
    names: Sequence[x509.GeneralName] | None,
    *,
    is_ca: bool = False,
    key_usage: x509.KeyUsage | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    """A certificate signed by `issuer` with these SANs (None: no SAN extension at all) for `key`."""
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer.private_key, hashes.SHA256())


def uri(value: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(value)


def test_a_proper_svid_gives_the_peer_its_spiffe_id_and_leaf(ca_a: DevCA) -> None:
    svid = ca_a.issue(WORKLOAD, 600.0)
    peer = verify_peer([svid.leaf, ca_a.certificate], {TD_A: ca_a.bundle})
    assert isinstance(peer, PeerIdentity)
    assert (peer.spiffe_id, peer.trust_domain) == (WORKLOAD, TD_A)
    assert peer.certificate == svid.leaf
    assert peer.public_key == svid.private_key.public_key()
    assert peer.not_after == svid.not_after
    assert repr(peer) == f"PeerIdentity({WORKLOAD})"


def test_a_chain_through_an_intermediate_of_the_peers_trust_domain_is_accepted(ca_a: DevCA) -> None:
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate = DevCA(
        TD_A,
        certificate(
            ca_a, [uri(f"spiffe://{TD_A}")], is_ca=True, key_usage=usage(key_cert_sign=True),
            key=intermediate_key,
        ),
        intermediate_key,
    )
    leaf = certificate(intermediate, [uri(WORKLOAD)], key_usage=usage())
    leaf.verify_directly_issued_by(intermediate.certificate)
    peer = verify_peer([leaf, intermediate.certificate, ca_a.certificate], {TD_A: ca_a.bundle})
    assert peer.spiffe_id == WORKLOAD


def test_dns_names_beside_the_one_uri_san_are_allowed(ca_a: DevCA) -> None:
    leaf = certificate(ca_a, [x509.DNSName("nsmgr.example"), uri(WORKLOAD)], key_usage=usage())
    assert verify_peer([leaf, ca_a.certificate], {TD_A: ca_a.bundle}).spiffe_id == WORKLOAD


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        pytest.param(None, "no subject alternative names", id="no-san"),
        pytest.param([x509.DNSName("nsc.example")], "exactly one URI SAN.*it has 0", id="dns-only"),
        pytest.param(
            [uri(WORKLOAD), uri(f"spiffe://{TD_A}/other")], "exactly one URI SAN.*it has 2", id="two-uris"
        ),
        pytest.param([uri(f"https://{TD_A}/nsc")], "not a valid SPIFFE id", id="not-spiffe"),
        pytest.param([uri(f"spiffe://{TD_A}")], "names a trust domain, not a workload", id="domain-only"),
    ],
)
def test_a_leaf_without_exactly_one_workload_id_is_refused(
    ca_a: DevCA, names: list[x509.GeneralName] | None, problem: str
) -> None:
    leaf = certificate(ca_a, names, key_usage=usage())
    with pytest.raises(PeerRejected, match=problem):
        verify_peer([leaf, ca_a.certificate], {TD_A: ca_a.bundle})
    with pytest.raises(PeerRejected, match=problem):
        spiffe_id_of(leaf)


@pytest.mark.parametrize(
    "value",
    [f"spiffe://{TD_A.upper()}/nsc", f"SPIFFE://{TD_A}/nsc"],
    ids=["uppercase-domain", "uppercase-scheme"],
)
def test_an_id_that_go_spiffe_refuses_is_refused(ca_a: DevCA, value: str) -> None:
    leaf = certificate(ca_a, [uri(value)], key_usage=usage())
    with pytest.raises(PeerRejected, match="not a valid SPIFFE id"):
        verify_peer([leaf, ca_a.certificate], {TD_A: ca_a.bundle})


@pytest.mark.parametrize(
    ("is_ca", "key_usage", "problem"),
    [
        pytest.param(True, usage(), "leaf certificate is a CA", id="ca"),
        pytest.param(False, usage(key_cert_sign=True), "may sign certificates or CRLs", id="keyCertSign"),
        pytest.param(False, usage(crl_sign=True), "may sign certificates or CRLs", id="cRLSign"),
    ],
)
def test_a_leaf_that_can_act_as_a_ca_is_refused(
    ca_a: DevCA, is_ca: bool, key_usage: x509.KeyUsage, problem: str
) -> None:
    leaf = certificate(ca_a, [uri(WORKLOAD)], is_ca=is_ca, key_usage=key_usage)
    with pytest.raises(PeerRejected, match=problem):
        verify_peer([leaf, ca_a.certificate], {TD_A: ca_a.bundle})


def test_the_ca_certificate_itself_is_refused_as_a_peer(ca_a: DevCA) -> None:
    with pytest.raises(PeerRejected, match="names a trust domain"):
        verify_peer([ca_a.certificate], {TD_A: ca_a.bundle})


def test_a_chain_anchored_in_another_trust_domains_bundle_is_refused(ca_a: DevCA, ca_b: DevCA) -> None:
    # OpenSSL trusts the union of the bundles, so it accepts this chain: trust domain B's CA signed a leaf
    # claiming an identity of trust domain A. Only the per-trust-domain anchor check stops it.
    leaf = certificate(ca_b, [uri(WORKLOAD)], key_usage=usage())
    bundles = {TD_A: ca_a.bundle, TD_B: ca_b.bundle}
    with pytest.raises(PeerRejected, match=f"does not lead to a CA of trust domain '{TD_A}'"):
        verify_peer([leaf, ca_b.certificate], bundles)
    # The same bundles accept each trust domain's own SVIDs.
    assert verify_peer([ca_a.issue(WORKLOAD, 60.0).leaf, ca_a.certificate], bundles).trust_domain == TD_A
    b_workload = f"spiffe://{TD_B}/nse"
    assert verify_peer([ca_b.issue(b_workload, 60.0).leaf, ca_b.certificate], bundles).trust_domain == TD_B


def test_a_peer_of_a_trust_domain_without_a_bundle_is_refused(ca_a: DevCA, ca_b: DevCA) -> None:
    svid = ca_b.issue(f"spiffe://{TD_B}/nse", 600.0)
    with pytest.raises(PeerRejected, match=f"no bundle for trust domain '{TD_B}'"):
        verify_peer([svid.leaf, ca_b.certificate], {TD_A: ca_a.bundle})
    with pytest.raises(PeerRejected, match=f"no bundle for trust domain '{TD_B}'"):
        verify_peer([svid.leaf, ca_b.certificate], {TD_A: ca_a.bundle, TD_B: ()})


def test_an_empty_chain_is_refused(ca_a: DevCA) -> None:
    with pytest.raises(PeerRejected, match="no certificate"):
        verify_peer([], {TD_A: ca_a.bundle})
