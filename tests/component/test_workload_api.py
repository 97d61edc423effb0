"""nsm-local's development CA and Workload API, against py-spiffe's real client over a real unix socket.

py-spiffe's `X509Source` and `WorkloadApiClient` are synchronous and run their own threads, so they run in
worker threads (`asyncio.to_thread`) while the test's loop serves; every one is closed, and the
`no_new_threads` fixture checks that their threads are gone after each test.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from aio_helpers import grpc_calls_settled
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store
from spiffe import TrustDomain, WorkloadApiClient, X509Source, X509Svid
from spiffe._proto import workload_pb2, workload_pb2_grpc
from spiffe.workloadapi.errors import FetchX509SvidError

from nsm_local.dev_ca import CERT_FILE, CLOCK_SKEW, KEY_FILE, DevCA, DevCAError
from nsm_local.workload_api import (
    HEADER_MISSING,
    NO_IDENTITY,
    Attestor,
    WorkloadApiServicer,
    netns_uid_attestor,
    serve_workload_api,
)
from nsm_sdk.identity.peer import verify_peer
from nsm_sdk.identity.x509 import X509Material
from nsm_sdk.transport.peercred import PeerCredentials

AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]
TD = "nsm.local"
HEADER = (("workload.spiffe.io", "true"),)
WAIT = 10.0


def this_process_id() -> str:
    """The default attestation of this test process: its netns and uid."""
    return f"spiffe://{TD}/netns/{os.stat('/proc/self/ns/net').st_ino}/uid/{os.getuid()}"


@pytest.fixture(autouse=True)
def no_new_threads() -> Iterator[None]:
    """py-spiffe's watcher and grpc's channel threads end once sources and clients are closed.

    grpc.aio's poller thread ends when its last server or channel object is freed, hence the collection
    (a caught AioRpcError's traceback keeps the channel's frame alive).
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + WAIT
    while (left := [t for t in threading.enumerate() if t not in before]) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert not left, f"threads left behind: {left}"


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA.generate(TD)


@asynccontextmanager
async def workload_api(
    sock_dir: Path, ca: DevCA, ttl: float = 3600.0, attest: Attestor | None = None
) -> AsyncIterator[tuple[WorkloadApiServicer, str]]:
    """A served WorkloadApiServicer and the socket URL py-spiffe takes (`unix:///...`)."""
    servicer = WorkloadApiServicer(ca, ttl, attest)
    async with servicer.serve(str(sock_dir / "api.sock")) as handle:
        yield servicer, handle.url
    await grpc_calls_settled()


@asynccontextmanager
async def raw_stub(url: str) -> AsyncIterator[Any]:
    """A grpc.aio stub without py-spiffe (so without its header interceptor)."""
    async with grpc.aio.insecure_channel(url.replace("unix://", "unix:", 1)) as channel:
        yield workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


def material_of(source: X509Source) -> X509Material:
    return X509Material.from_context(source.get_x509_context())


def key_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --- the Workload API, through py-spiffe --------------------------------------------------------------


def test_svid_is_this_process_default_identity_and_verifies_to_the_bundle(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    def fetch(url: str) -> X509Material:
        with X509Source(socket_path=url, timeout_in_seconds=WAIT) as source:
            return material_of(source)

    async def main() -> None:
        async with serve_workload_api(str(sock_dir / "api.sock"), ca, ttl=600.0) as handle:
            assert stat.S_IMODE(os.stat(sock_dir / "api.sock").st_mode) == 0o666
            material = await asyncio.to_thread(fetch, handle.url)
        await grpc_calls_settled()
        assert material.spiffe_id == this_process_id()
        assert material.bundles == {TD: (ca.certificate,)}
        assert verify_peer([material.leaf, ca.certificate], material.bundles).spiffe_id == this_process_id()
        material.leaf.verify_directly_issued_by(ca.certificate)
        assert material.private_key.public_key() == material.leaf.public_key()
        # RFC 5280 path validation as cryptography does it (client profile: no host name needed)
        verifier = PolicyBuilder().store(Store([ca.certificate])).build_client_verifier()
        assert verifier.verify(material.leaf, []).chain == [material.leaf, ca.certificate]

    run_async(main)


def test_svid_rotates_at_half_its_lifetime_with_a_new_key(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA, caplog: pytest.LogCaptureFixture
) -> None:
    def first_and_rotated(url: str) -> tuple[X509Material, X509Material, float]:
        with X509Source(socket_path=url, timeout_in_seconds=WAIT) as source:
            first = material_of(source)
            rotated = threading.Event()
            source.subscribe_for_updates(rotated.set)
            assert rotated.wait(WAIT), "no rotation"
            return first, material_of(source), time.time()

    async def main() -> None:
        async with workload_api(sock_dir, ca, ttl=2.0) as (_servicer, url):
            first, second, rotated_at = await asyncio.to_thread(first_and_rotated, url)
        assert second.spiffe_id == first.spiffe_id == this_process_id()
        assert second.leaf != first.leaf
        assert second.leaf.serial_number != first.leaf.serial_number
        assert key_der(second.private_key) != key_der(first.private_key)
        assert second.not_after >= first.not_after
        assert rotated_at < first.not_after, "the new SVID arrives before the old one expires"
        verify_peer([second.leaf, ca.certificate], second.bundles)

    caplog.set_level(logging.DEBUG, logger="nsm_local.workload_api")
    run_async(main)
    issued = [r for r in caplog.records if r.getMessage() == "workload.svid_issued"]
    assert [r.levelno for r in issued[:2]] == [logging.INFO, logging.DEBUG]
    fields = issued[0].fields  # type: ignore[attr-defined]
    assert fields["spiffe_id"] == this_process_id()
    assert fields["pid"] == os.getpid()
    assert 0 < fields["expires_in"] <= 2.0


def test_bundles_are_keyed_by_trust_domain_id_and_parse_in_py_spiffe(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    def fetch_bundle(url: str) -> set[x509.Certificate]:
        with WorkloadApiClient(socket_path=url) as client:
            bundle = client.fetch_x509_bundles(timeout=WAIT).get_bundle_for_trust_domain(TrustDomain(TD))
            assert bundle is not None
            return set(bundle.x509_authorities)

    async def main() -> None:
        async with workload_api(sock_dir, ca) as (_servicer, url):
            assert await asyncio.to_thread(fetch_bundle, url) == {ca.certificate}
            async with raw_stub(url) as stub:
                call = stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER)
                response = await call.read()
                call.cancel()
        assert dict(response.bundles) == {
            f"spiffe://{TD}": ca.certificate.public_bytes(serialization.Encoding.DER)
        }

    run_async(main)


def test_wire_svid_is_der_chain_leaf_first_with_pkcs8_key_and_der_bundle(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with workload_api(sock_dir, ca) as (_servicer, url), raw_stub(url) as stub:
            call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
            response = await call.read()
            call.cancel()
        (svid,) = response.svids
        assert svid.spiffe_id == this_process_id()
        assert svid.bundle == ca.certificate.public_bytes(serialization.Encoding.DER)
        parsed = X509Svid.parse_raw(svid.x509_svid, svid.x509_svid_key)
        assert str(parsed.spiffe_id) == this_process_id()
        assert len(response.federated_bundles) == 0

    run_async(main)


def test_call_without_the_security_header_is_refused(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with workload_api(sock_dir, ca) as (_servicer, url), raw_stub(url) as stub:
            calls = {
                "FetchX509SVID": stub.FetchX509SVID(workload_pb2.X509SVIDRequest()),
                "FetchX509Bundles": stub.FetchX509Bundles(workload_pb2.X509BundlesRequest()),
                "FetchJWTSVID": stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["a"])),
                "wrong value": stub.FetchX509SVID(
                    workload_pb2.X509SVIDRequest(), metadata=(("workload.spiffe.io", "yes"),)
                ),
            }
            for name, call in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await (call.read() if hasattr(call, "read") else call)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
                assert refused.value.details() == HEADER_MISSING, name

    run_async(main)


def test_jwt_methods_are_unimplemented(run_async: AsyncRunner, sock_dir: Path, ca: DevCA) -> None:
    async def main() -> None:
        async with workload_api(sock_dir, ca) as (_servicer, url), raw_stub(url) as stub:
            for call in (
                stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["a"]), metadata=HEADER),
                stub.ValidateJWTSVID(
                    workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="x"), metadata=HEADER
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
                assert "X.509-SVIDs only" in (refused.value.details() or "")
            stream = stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stream.read()
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED

    run_async(main)


def test_caller_without_identity_is_denied(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA, caplog: pytest.LogCaptureFixture
) -> None:
    asked: list[PeerCredentials] = []

    def nobody(credentials: PeerCredentials) -> str | None:
        asked.append(credentials)
        return None

    def fetch(url: str) -> None:
        with WorkloadApiClient(socket_path=url) as client:
            client.fetch_x509_svid(timeout=WAIT)

    async def main() -> None:
        async with workload_api(sock_dir, ca, attest=nobody) as (_servicer, url):
            with pytest.raises(FetchX509SvidError, match=NO_IDENTITY):
                await asyncio.to_thread(fetch, url)
            async with raw_stub(url) as stub:
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER).read()
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert denied.value.details() == NO_IDENTITY

    run_async(main)
    assert asked and all(c.pid == os.getpid() and c.uid == os.getuid() for c in asked)
    assert asked[0].netns == os.stat("/proc/self/ns/net").st_ino
    assert "workload.attestation_denied" in [r.getMessage() for r in caplog.records]


def test_default_attestation_is_netns_and_uid() -> None:
    attest = netns_uid_attestor("example.org")
    assert attest(PeerCredentials(pid=7, uid=1000, gid=1000, netns=4026531840)) == (
        "spiffe://example.org/netns/4026531840/uid/1000"
    )
    assert attest(PeerCredentials(pid=8, uid=1000, gid=5, netns=4026531840)) == (
        "spiffe://example.org/netns/4026531840/uid/1000"
    ), "pid and gid are not part of the identity: a restarted workload gets its identity back"
    assert attest(PeerCredentials(pid=7, uid=1000, gid=1000, netns=None)) is None


def test_stream_ends_on_the_server_when_the_client_cancels(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA
) -> None:
    async def main() -> None:
        async with workload_api(sock_dir, ca) as (servicer, url):
            async with raw_stub(url) as stub:
                svids = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
                bundles = stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER)
                await svids.read()
                await bundles.read()
                assert servicer.active_streams == 2
                svids.cancel()
                bundles.cancel()
                await until(lambda: servicer.active_streams == 0)
            # and a client that just goes away (channel closed mid-stream)
            async with raw_stub(url) as stub:
                await stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER).read()
                assert servicer.active_streams == 1
            await until(lambda: servicer.active_streams == 0)

    run_async(main)


def test_new_ca_reaches_open_streams_at_once(run_async: AsyncRunner, sock_dir: Path, ca: DevCA) -> None:
    async def main() -> None:
        new_ca = DevCA.generate(TD)
        async with workload_api(sock_dir, ca) as (servicer, url), raw_stub(url) as stub:
            svids = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
            bundles = stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER)
            await svids.read()
            await bundles.read()
            servicer.replace_ca(new_ca)
            async with asyncio.timeout(WAIT):
                svid = (await svids.read()).svids[0]
                bundle = (await bundles.read()).bundles[f"spiffe://{TD}"]
            svids.cancel()
            bundles.cancel()
        new_der = new_ca.certificate.public_bytes(serialization.Encoding.DER)
        assert svid.bundle == bundle == new_der
        x509.load_der_x509_certificate(svid.x509_svid).verify_directly_issued_by(new_ca.certificate)

    run_async(main)


def test_svid_never_outlives_the_ca(run_async: AsyncRunner, sock_dir: Path) -> None:
    short_ca = DevCA.generate(TD, validity=120.0)

    def fetch(url: str) -> X509Material:
        with WorkloadApiClient(socket_path=url) as client:
            return X509Material.from_context(client.fetch_x509_context(timeout=WAIT))

    async def main() -> None:
        async with workload_api(sock_dir, short_ca, ttl=3600.0) as (_servicer, url):
            material = await asyncio.to_thread(fetch, url)
        assert material.leaf.not_valid_after_utc == short_ca.certificate.not_valid_after_utc

    run_async(main)


# --- the development CA -------------------------------------------------------------------------------


def test_ca_is_persisted_with_private_modes_and_reused(sock_dir: Path) -> None:
    directory = sock_dir / "state" / "ca"
    created = DevCA.load_or_create(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / CERT_FILE).stat().st_mode) == 0o644
    assert stat.S_IMODE((directory / KEY_FILE).stat().st_mode) == 0o600
    assert sorted(os.listdir(directory)) == sorted([CERT_FILE, KEY_FILE])
    assert b"BEGIN PRIVATE KEY" in (directory / KEY_FILE).read_bytes()  # PKCS#8
    reloaded = DevCA.load_or_create(directory)
    assert reloaded.certificate == created.certificate
    assert key_der(reloaded.private_key) == key_der(created.private_key)
    reloaded.issue("spiffe://nsm.local/w", 60).leaf.verify_directly_issued_by(created.certificate)


def test_ca_certificate_profile(ca: DevCA) -> None:
    cert = ca.certificate
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert constraints.critical and constraints.value.ca
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://nsm.local"]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.days >= 10 * 365


def test_svid_profile(ca: DevCA) -> None:
    now = time.time()
    material = ca.issue("spiffe://nsm.local/netns/1/uid/0", 600, now=now)
    leaf = material.leaf
    extensions = leaf.extensions
    assert material.chain == (leaf,)
    assert material.bundles == {TD: (ca.certificate,)}
    names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(names) == [x509.UniformResourceIdentifier("spiffe://nsm.local/netns/1/uid/0")]
    constraints = extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert (usage.value.digital_signature, usage.value.key_encipherment, usage.value.key_agreement) == (
        True,
        True,
        True,
    )
    assert not usage.value.key_cert_sign and not usage.value.crl_sign
    assert set(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert leaf.not_valid_before_utc.timestamp() == pytest.approx(now - CLOCK_SKEW, abs=1)
    assert leaf.not_valid_after_utc.timestamp() == pytest.approx(now + 600, abs=1)
    assert leaf.not_valid_after_utc.timestamp() <= now + 600
    assert isinstance(material.private_key.curve, ec.SECP256R1)
    other = ca.issue("spiffe://nsm.local/netns/1/uid/0", 600, now=now)
    assert key_der(other.private_key) != key_der(material.private_key), "a fresh key per SVID"


def test_svid_expiry_is_capped_at_the_ca_expiry(ca: DevCA) -> None:
    late = ca.not_after - 10
    material = ca.issue("spiffe://nsm.local/w", 3600, now=late)
    assert material.leaf.not_valid_after_utc == ca.certificate.not_valid_after_utc
    with pytest.raises(DevCAError, match="expired"):
        ca.issue("spiffe://nsm.local/w", 3600, now=ca.not_after + 1)


@pytest.mark.parametrize(
    ("spiffe_id", "problem"),
    [
        ("spiffe://other.org/w", "outside this CA's trust domain"),
        ("spiffe://nsm.local", "names a trust domain, not a workload"),
        ("https://nsm.local/w", "spiffe://"),
        ("spiffe://nsm.local/a//b", "empty segments"),
    ],
)
def test_issue_refuses_ids_that_are_not_workloads_of_the_trust_domain(
    ca: DevCA, spiffe_id: str, problem: str
) -> None:
    with pytest.raises(DevCAError, match=problem):
        ca.issue(spiffe_id, 60)


def test_issue_refuses_a_lifetime_that_is_not_positive(ca: DevCA) -> None:
    with pytest.raises(DevCAError, match="positive"):
        ca.issue("spiffe://nsm.local/w", 0)


def _write(directory: Path, name: str, data: bytes) -> None:
    (directory / name).write_bytes(data)


def _garbage_cert(d: Path) -> None:
    _write(d, CERT_FILE, b"-----BEGIN CERTIFICATE-----\nnot base64\n")


def _garbage_key(d: Path) -> None:
    _write(d, KEY_FILE, (d / KEY_FILE).read_bytes()[:40])


def _other_key(d: Path) -> None:
    other = DevCA.generate(TD).private_key
    _write(d, KEY_FILE, other.private_bytes(*_PEM_PKCS8))


def _no_cert(d: Path) -> None:
    (d / CERT_FILE).unlink()


def _no_key(d: Path) -> None:
    (d / KEY_FILE).unlink()


def _leaf_as_ca(d: Path) -> None:
    ca = DevCA.load_or_create(d)
    material = ca.issue("spiffe://nsm.local/w", 60)
    _write(d, CERT_FILE, material.chain_pem())
    _write(d, KEY_FILE, material.key_pem())


_PEM_PKCS8 = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.mark.parametrize(
    ("damage", "file", "problem"),
    [
        (_garbage_cert, CERT_FILE, "not a PEM certificate"),
        (_garbage_key, KEY_FILE, "not an unencrypted PEM private key"),
        (_other_key, KEY_FILE, "does not match the certificate"),
        (_no_cert, CERT_FILE, f"missing, but {KEY_FILE} exists"),
        (_no_key, KEY_FILE, f"missing, but {CERT_FILE} exists"),
        (_leaf_as_ca, CERT_FILE, "not a CA certificate"),
    ],
    ids=["garbage-cert", "truncated-key", "other-key", "no-cert", "no-key", "leaf-instead-of-ca"],
)
def test_unusable_ca_files_are_a_clear_error_and_are_never_replaced(
    sock_dir: Path, damage: Callable[[Path], None], file: str, problem: str
) -> None:
    directory = sock_dir / "ca"
    DevCA.load_or_create(directory)
    damage(directory)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    with pytest.raises(DevCAError) as error:
        DevCA.load_or_create(directory)
    message = str(error.value)
    assert str(directory / file) in message
    assert problem in message
    assert f"Remove both {directory / CERT_FILE} and {directory / KEY_FILE}" in message
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


def test_ca_of_another_trust_domain_is_refused(sock_dir: Path) -> None:
    DevCA.load_or_create(sock_dir, "example.org")
    with pytest.raises(DevCAError, match=r"the CA is for spiffe://example.org, not 'nsm.local'"):
        DevCA.load_or_create(sock_dir, "nsm.local")


def test_temporaries_of_an_interrupted_write_are_removed(sock_dir: Path) -> None:
    """A crash mid-write leaves only a temporary (the rename never happened); the next start cleans it."""
    (sock_dir / f".{KEY_FILE}.tmp-abc").write_bytes(b"-----BEGIN PRIV")
    DevCA.load_or_create(sock_dir)
    assert sorted(os.listdir(sock_dir)) == sorted([CERT_FILE, KEY_FILE])


def test_trust_domain_must_be_a_name() -> None:
    with pytest.raises(DevCAError, match="must be a name"):
        DevCA.generate("spiffe://nsm.local")
    with pytest.raises(DevCAError, match="disallowed characters"):
        DevCA.generate("NSM local")
