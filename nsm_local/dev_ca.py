"""A development certificate authority: nsm-local's stand-in for a SPIRE server.

It signs the X.509-SVIDs that nsm-local's Workload API hands to the workloads of one host, so that the
sidecars get real SPIFFE identities (mTLS, ES256 path tokens) without SPIRE. The certificates look like
SPIRE's: an EC P-256 CA whose URI SAN is the trust domain, and leaves with exactly one URI SAN (the
workload's SPIFFE id), usable as TLS server and client (protocol doc §3.1, §3.2).

The CA persists in a directory (`ca.pem`, `ca-key.pem`) so that identities stay verifiable across
restarts of nsm-local. Files that are there but unusable are never replaced: a new CA would silently
invalidate every SVID and bundle in use, so the operator decides (the error says how).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from spiffe import SpiffeId, TrustDomain

from nsm_sdk.identity.x509 import X509Material
from nsm_sdk.protocol.errors import NsmError

CERT_FILE = "ca.pem"
KEY_FILE = "ca-key.pem"
CA_VALIDITY = 10 * 365 * 24 * 3600.0
CLOCK_SKEW = 30.0
"""SVIDs are valid from this long before they are issued, for peers whose clock is a little behind."""


class DevCAError(NsmError):
    """The development CA cannot be loaded, created, or cannot issue the SVID asked for."""


_Unusable = Callable[[Path, str], DevCAError]


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)


def _is_p256(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)


@dataclass(frozen=True, eq=False)
class DevCA:
    """A self-signed CA for one trust domain; `issue` makes X.509-SVIDs."""

    trust_domain: str
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:
        fingerprint = self.certificate.fingerprint(hashes.SHA256()).hex()[:16]
        return (
            f"DevCA({self.trust_domain}, sha256={fingerprint}, "
            f"expires={self.certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
        )

    @property
    def not_after(self) -> float:
        return self.certificate.not_valid_after_utc.timestamp()

    @property
    def bundle(self) -> tuple[x509.Certificate, ...]:
        """The X.509 authorities of the trust domain: what every workload must trust."""
        return (self.certificate,)

    @classmethod
    def generate(
        cls, trust_domain: str = "nsm.local", *, validity: float = CA_VALIDITY, now: float | None = None
    ) -> DevCA:
        """A new CA in memory (`load_or_create` persists one)."""
        domain = _trust_domain(trust_domain)
        now = time.time() if now is None else now
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nsm-local"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"nsm-local development CA {domain}"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - CLOCK_SKEW))
            .not_valid_after(_utc(now + validity))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{domain}")]),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(domain, certificate, key)

    @classmethod
    def load_or_create(cls, directory: Path, trust_domain: str = "nsm.local") -> DevCA:
        """The CA kept in `directory` (`ca.pem`, `ca-key.pem`); made and saved there if neither exists.

        The directory is created 0700 if missing. Under an exclusive lock on it, so two nsm-local
        processes starting together end up with one CA. DevCAError if the files cannot be used.
        """
        domain = _trust_domain(trust_domain)
        directory = Path(directory)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DevCAError(f"cannot create the CA directory {directory}: {exc.strerror}") from exc
        cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
        with _locked(directory):
            _remove_stale_temporaries(directory)
            if not os.path.lexists(cert_path) and not os.path.lexists(key_path):
                ca = cls.generate(domain)
                ca._save(cert_path, key_path)
                return ca
            return _load(cert_path, key_path, domain)

    def issue(self, spiffe_id: str, ttl: float, now: float | None = None) -> X509Material:
        """A fresh X.509-SVID (new EC P-256 key) for `spiffe_id`, valid for `ttl` seconds from `now`.

        Valid from CLOCK_SKEW before `now`; never beyond the CA's own NotAfter.
        """
        workload = self._workload_id(spiffe_id)
        if not ttl > 0:
            raise DevCAError(f"SVID lifetime must be positive, not {ttl}")
        now = time.time() if now is None else now
        not_before = max(now - CLOCK_SKEW, self.certificate.not_valid_before_utc.timestamp())
        not_after = min(now + ttl, self.not_after)
        if not_after <= now:
            raise DevCAError(f"{self!r} has expired; it can issue no more SVIDs")
        key = ec.generate_private_key(ec.SECP256R1())
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_LEAF_SUBJECT)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(not_before))
            .not_valid_after(_utc(not_after))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(workload)]), critical=False
            )
            .sign(self.private_key, hashes.SHA256())
        )
        return X509Material(workload, (leaf,), key, {self.trust_domain: self.bundle})

    def _workload_id(self, spiffe_id: str) -> str:
        try:
            parsed = SpiffeId(spiffe_id)
        except Exception as exc:  # py-spiffe's ArgumentError family
            raise DevCAError(str(exc)) from None
        if not parsed.path:
            raise DevCAError(f"{spiffe_id!r} names a trust domain, not a workload")
        if parsed.trust_domain.name != self.trust_domain:
            raise DevCAError(f"{spiffe_id!r} is outside this CA's trust domain {self.trust_domain!r}")
        return str(parsed)

    def _save(self, cert_path: Path, key_path: Path) -> None:
        """Key first: a `ca.pem` on disk always means its key was written completely before it."""
        key_pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            _write_atomically(key_path, key_pem, 0o600)
            _write_atomically(cert_path, self.certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        except OSError as exc:
            raise DevCAError(f"cannot save the development CA in {cert_path.parent}: {exc}") from exc


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
# What SPIRE puts in X.509-SVIDs.
_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=True,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_SUBJECT = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nsm-local"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "workload"),
    ]
)


def _trust_domain(name: str) -> str:
    try:
        domain = TrustDomain(name)
    except Exception as exc:  # py-spiffe's ArgumentError family
        raise DevCAError(str(exc)) from None
    if "://" in name:
        raise DevCAError(f"trust domain must be a name such as 'nsm.local', not {name!r}")
    return domain.name


def _load(cert_path: Path, key_path: Path, trust_domain: str) -> DevCA:
    def unusable(path: Path, problem: str) -> DevCAError:
        return DevCAError(
            f"development CA file {path}: {problem}. Remove both {cert_path} and {key_path} to make a new "
            "CA (workloads get the new bundle from the Workload API; SVIDs of the old one stop verifying)"
        )

    cert_pem = _read(cert_path, unusable)
    key_pem = _read(key_path, unusable)
    try:
        certificates = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise unusable(cert_path, "not a PEM certificate (damaged?)") from None
    if len(certificates) != 1:
        raise unusable(cert_path, f"holds {len(certificates)} certificates, expected 1")
    certificate = certificates[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise unusable(key_path, "not an unencrypted PEM private key (damaged?)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _is_p256(key):
        raise unusable(key_path, "not an EC P-256 key")
    if key.public_key() != certificate.public_key():
        raise unusable(key_path, f"does not match the certificate in {cert_path}")
    _check_ca_certificate(certificate, cert_path, trust_domain, unusable)
    return DevCA(trust_domain, certificate, key)


def _check_ca_certificate(
    certificate: x509.Certificate, path: Path, trust_domain: str, unusable: _Unusable
) -> None:
    extensions = certificate.extensions
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
        extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise unusable(
            path, f"not a development CA certificate (extension {exc.oid.dotted_string} missing)"
        ) from None
    if not constraints.ca or not usage.key_cert_sign:
        raise unusable(path, "not a CA certificate")
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    if uris != [f"spiffe://{trust_domain}"]:
        raise unusable(path, f"the CA is for {', '.join(uris) or 'no trust domain'}, not {trust_domain!r}")
    if certificate.not_valid_after_utc.timestamp() <= time.time():
        raise unusable(path, f"the CA expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}")


def _read(path: Path, unusable: _Unusable) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        other = KEY_FILE if path.name == CERT_FILE else CERT_FILE
        raise unusable(path, f"missing, but {other} exists") from None
    except OSError as exc:
        raise unusable(path, f"cannot be read ({exc.strerror})") from None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise DevCAError(f"cannot open the CA directory {directory}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _temporary_prefix(name: str) -> str:
    return f".{name}.tmp-"


def _remove_stale_temporaries(directory: Path) -> None:
    """Temporary files a crash left (never the real ones; we hold the lock, nobody is writing)."""
    for name in (CERT_FILE, KEY_FILE):
        for stale in directory.glob(_temporary_prefix(name) + "*"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write a temporary file with its final mode, fsync, rename over `path`, fsync the directory."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path.name))
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
