"""Who is on the other end of a TLS connection: SPIFFE verification of a peer's certificate chain.

What go-spiffe's `x509svid.Verify` checks (protocol doc §3.2), on a chain that OpenSSL has already
verified against the union of all our bundles:

* the leaf carries exactly one URI SAN, a valid `spiffe://` id with a path;
* the leaf is not a CA and may not sign certificates or CRLs;
* the chain ends at an authority of the bundle of the PEER's trust domain (OpenSSL alone would accept
  an authority of any trust domain we know; this is the per-trust-domain part).

No host name is ever checked: SPIFFE certificates of NSM components carry none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from nsm_sdk.identity.x509 import not_after_of, trust_domain_of
from nsm_sdk.protocol.errors import NsmError


class PeerRejected(NsmError):
    """The peer's certificate is not an acceptable X.509-SVID (the handshake is aborted)."""


@dataclass(frozen=True, eq=False)
class PeerIdentity:
    """An authenticated peer: its SPIFFE id and leaf certificate (whose key signs its path tokens)."""

    spiffe_id: str
    certificate: x509.Certificate

    def __repr__(self) -> str:
        return f"PeerIdentity({self.spiffe_id})"

    @property
    def not_after(self) -> float:
        """The peer leaf's NotAfter: tokens we address to this peer expire no later (§3.3)."""
        return not_after_of(self.certificate)

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        key = self.certificate.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise PeerRejected(f"peer {self.spiffe_id}: {type(key).__name__}, not an EC key")
        return key

    @property
    def trust_domain(self) -> str:
        return trust_domain_of(self.spiffe_id)

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def spiffe_id_of(certificate: x509.Certificate) -> str:
    """The one SPIFFE id in a leaf's URI SANs; PeerRejected unless there is exactly one valid one."""
    from spiffe import SpiffeId  # only a secure process verifies peers: the insecure one never loads it

    try:
        san = certificate.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        raise PeerRejected("certificate has no subject alternative names (no SPIFFE id)") from None
    assert isinstance(san, x509.SubjectAlternativeName)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PeerRejected(f"certificate must carry exactly one URI SAN (a SPIFFE id), it has {len(uris)}")
    try:
        spiffe_id = SpiffeId(uris[0])
    except Exception as exc:  # py-spiffe raises its own ArgumentError family
        raise PeerRejected(f"URI SAN {uris[0]!r} is not a valid SPIFFE id: {exc}") from None
    if str(spiffe_id) != uris[0]:  # py-spiffe lower-cases what go-spiffe refuses outright
        raise PeerRejected(f"URI SAN {uris[0]!r} is not a valid SPIFFE id (not in canonical form)")
    if not spiffe_id.path:
        raise PeerRejected(f"URI SAN {uris[0]!r} names a trust domain, not a workload")
    return str(spiffe_id)


def _check_leaf_is_not_a_ca(certificate: x509.Certificate, spiffe_id: str) -> None:
    try:
        constraints = certificate.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        constraints = None
    if isinstance(constraints, x509.BasicConstraints) and constraints.ca:
        raise PeerRejected(f"peer {spiffe_id}: leaf certificate is a CA")
    try:
        usage = certificate.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        return
    if isinstance(usage, x509.KeyUsage) and (usage.key_cert_sign or usage.crl_sign):
        raise PeerRejected(f"peer {spiffe_id}: leaf certificate may sign certificates or CRLs")


def verify_peer(
    verified_chain: Sequence[x509.Certificate], bundles: Mapping[str, Sequence[x509.Certificate]]
) -> PeerIdentity:
    """The identity behind a chain OpenSSL verified (leaf first, trust anchor last)."""
    if not verified_chain:
        raise PeerRejected("peer presented no certificate")
    leaf = verified_chain[0]
    spiffe_id = spiffe_id_of(leaf)
    _check_leaf_is_not_a_ca(leaf, spiffe_id)
    domain = trust_domain_of(spiffe_id)
    authorities = bundles.get(domain)
    if not authorities:
        raise PeerRejected(f"peer {spiffe_id}: no bundle for trust domain {domain!r}")
    anchor = verified_chain[-1]
    if not any(anchor == authority for authority in authorities):
        raise PeerRejected(f"peer {spiffe_id}: chain does not lead to a CA of trust domain {domain!r}")
    return PeerIdentity(spiffe_id, leaf)
