"""The X.509 material of one workload: its X.509-SVID (chain and key) and the bundles it trusts.

One `X509Material` is an immutable snapshot. A rotation produces a new object, so whoever holds one (a
TLS context, a token signer) keeps a coherent chain, key and bundle set until it asks for the current
one again (§3.1: new SVIDs for new handshakes and new tokens).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nsm_sdk.protocol.errors import NsmError

if TYPE_CHECKING:
    from spiffe.workloadapi.x509_context import X509Context


class UnusableSvidError(NsmError):
    """The Workload API gave an SVID the NSM components cannot use (e.g. not an EC P-256 key)."""


def trust_domain_of(spiffe_id: str) -> str:
    """`example.org` of `spiffe://example.org/path` (the id is assumed valid)."""
    return spiffe_id.removeprefix("spiffe://").split("/", 1)[0]


def not_after_of(certificate: x509.Certificate) -> float:
    return certificate.not_valid_after_utc.timestamp()


def certificates_pem(certificates: Iterable[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certificates)


@dataclass(frozen=True, eq=False)
class X509Material:
    """An X.509-SVID with its key, and the CA certificates trusted per trust domain."""

    spiffe_id: str
    chain: tuple[x509.Certificate, ...]
    """Leaf first, then intermediates (if any), as the Workload API delivers it."""
    private_key: ec.EllipticCurvePrivateKey
    bundles: Mapping[str, tuple[x509.Certificate, ...]] = field(default_factory=dict)
    """Trust domain name -> its X.509 authorities (our own trust domain and federated ones)."""

    def __post_init__(self) -> None:
        if not self.chain:
            raise UnusableSvidError(f"SVID {self.spiffe_id}: empty certificate chain")
        if not isinstance(self.private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            self.private_key.curve, ec.SECP256R1
        ):
            raise UnusableSvidError(
                f"SVID {self.spiffe_id}: the key is not EC P-256, so the ES256 path tokens NSM requires "
                "cannot be signed (configure the SPIRE server with key type ec-p256)"
            )

    def __repr__(self) -> str:
        return (
            f"X509Material({self.spiffe_id}, expires={self.leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, "
            f"trust_domains={sorted(self.bundles)})"
        )

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> float:
        """The leaf's NotAfter as epoch seconds: no token we sign outlives it (§3.3)."""
        return not_after_of(self.leaf)

    @property
    def not_before(self) -> float:
        return self.leaf.not_valid_before_utc.timestamp()

    @property
    def retire_at(self) -> float:
        """When connections that presented this SVID should make way for new ones (3/4 of its life):
        after a rotation at half-life there is time to move, and tokens never outlive the old one."""
        return self.not_before + 0.75 * (self.not_after - self.not_before)

    @property
    def trust_domain(self) -> str:
        return trust_domain_of(self.spiffe_id)

    def chain_pem(self) -> bytes:
        return certificates_pem(self.chain)

    def key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def authorities(self) -> tuple[x509.Certificate, ...]:
        """Every trusted CA certificate, all trust domains together."""
        return tuple(cert for certs in self.bundles.values() for cert in certs)

    @classmethod
    def from_context(cls, context: X509Context) -> X509Material:
        """The default SVID and the bundle set of a py-spiffe X509Context."""
        svid = context.default_svid
        key = svid.private_key
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise UnusableSvidError(
                f"SVID {svid.spiffe_id}: {type(key).__name__} key; NSM path tokens need EC P-256 (ES256)"
            )
        bundles = {
            bundle.trust_domain.name: tuple(bundle.x509_authorities)
            for bundle in context.x509_bundle_set.bundles
        }
        return cls(str(svid.spiffe_id), tuple(svid.cert_chain), key, bundles)
