"""The sidecars' SVID source (`nsm_sdk.identity.workload.WorkloadApiSource`) against nsm-local's development
Workload API over a real unix socket: first SVID, rotation, an agent that goes away and comes back, an agent
that is not there, and SVIDs it cannot use."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from aio_helpers import grpc_calls_settled
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from spiffe._proto import workload_pb2, workload_pb2_grpc

from nsm_local.dev_ca import DevCA
from nsm_local.workload_api import serve_workload_api
from nsm_sdk.identity.workload import IdentityUnavailable, WorkloadApiSource, material_from
from nsm_sdk.identity.x509 import UnusableSvidError
from nsm_sdk.transport.server import serve

AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]
TD = "nsm.local"


def own_id() -> str:
    return f"spiffe://{TD}/netns/{os.stat('/proc/self/ns/net').st_ino}/uid/{os.getuid()}"


@pytest.fixture
def ca() -> DevCA:
    return DevCA.generate(TD)


@contextlib.asynccontextmanager
async def source_of(path: Path) -> AsyncIterator[WorkloadApiSource]:
    source = WorkloadApiSource(f"unix://{path}")
    try:
        yield source
    finally:
        await source.aclose()
        await grpc_calls_settled()


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(400):  # 20 s; the test's own bound stops it sooner
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never held")


def bounded(main: Callable[[], Awaitable[None]], limit: float = 20.0) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        async with asyncio.timeout(limit):
            await main()

    return run


def test_first_svid_is_ours_and_verifies(run_async: AsyncRunner, sock_dir: Path, ca: DevCA) -> None:
    async def main() -> None:
        path = sock_dir / "agent.sock"
        async with serve_workload_api(str(path), ca, ttl=60.0), source_of(path) as source:
            assert await source.start(asyncio.Event())
            material = source.current()
            assert material.spiffe_id == own_id()
            assert material.bundles == {TD: (ca.certificate,)}
            assert material.not_after - material.not_before <= 60.0 + 31

    run_async(bounded(main))


def test_rotations_replace_the_material_and_are_logged(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        caplog.set_level(logging.INFO, logger="nsm_sdk.identity.workload")
        path = sock_dir / "agent.sock"
        async with serve_workload_api(str(path), ca, ttl=3.0), source_of(path) as source:
            assert await source.start()
            first = source.current()
            await until(lambda: source.current() is not first)
            assert source.current().leaf.serial_number != first.leaf.serial_number
            assert source.current().private_key.private_numbers() != first.private_key.private_numbers()
        assert [r.getMessage() for r in caplog.records].count("identity.rotated") >= 1

    run_async(bounded(main))


def test_a_restarted_agent_is_followed_without_a_restart_of_ours(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        caplog.set_level(logging.INFO, logger="nsm_sdk.identity.workload")
        path = sock_dir / "agent.sock"
        async with source_of(path) as source:
            async with serve_workload_api(str(path), ca, ttl=60.0):
                assert await source.start()
            before = source.current()
            assert source.current() is before, "the last SVID stays usable while the agent is away"
            async with serve_workload_api(str(path), ca, ttl=60.0):
                await until(lambda: source.current() is not before)
        messages = [r.getMessage() for r in caplog.records]
        assert "identity.stream_lost" in messages and "identity.rotated" in messages

    run_async(bounded(main))


def test_start_waits_for_an_absent_agent_and_gives_up_on_stop(run_async: AsyncRunner, sock_dir: Path) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        async with source_of(sock_dir / "nowhere.sock") as source:
            asyncio.get_running_loop().call_later(0.5, stop.set)
            assert await source.start(stop) is False
            with pytest.raises(IdentityUnavailable, match=r"no X\.509-SVID"):
                source.current()

    run_async(bounded(main))


def rsa_svid_response(ca: DevCA) -> Any:
    """A well-formed SVID whose key is RSA: ES256 tokens cannot be signed with it."""
    good = ca.issue(own_id(), 60.0)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = good.leaf
    from cryptography import x509

    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(leaf.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
    )
    for extension in leaf.extensions:
        if extension.oid != x509.oid.ExtensionOID.SUBJECT_KEY_IDENTIFIER:
            builder = builder.add_extension(extension.value, extension.critical)
    cert = builder.sign(ca.private_key, hashes.SHA256())
    svid = workload_pb2.X509SVID(
        spiffe_id=own_id(),
        x509_svid=cert.public_bytes(serialization.Encoding.DER),
        x509_svid_key=key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        bundle=ca.certificate.public_bytes(serialization.Encoding.DER),
    )
    return workload_pb2.X509SVIDResponse(svids=[svid])


def test_material_from_refuses_what_nsm_cannot_use(ca: DevCA) -> None:
    with pytest.raises(UnusableSvidError, match="no SVID"):
        material_from(workload_pb2.X509SVIDResponse())
    with pytest.raises(UnusableSvidError, match="EC P-256"):
        material_from(rsa_svid_response(ca))
    garbage = workload_pb2.X509SVIDResponse(svids=[workload_pb2.X509SVID(x509_svid=b"x", x509_svid_key=b"y")])
    with pytest.raises(UnusableSvidError, match="cannot use"):
        material_from(garbage)


def test_an_unusable_svid_is_reported_and_not_used(
    run_async: AsyncRunner, sock_dir: Path, ca: DevCA, caplog: pytest.LogCaptureFixture
) -> None:
    class RsaOnly(workload_pb2_grpc.SpiffeWorkloadAPIServicer):  # type: ignore[misc]
        async def FetchX509SVID(self, request: Any, context: Any) -> AsyncIterator[Any]:
            yield rsa_svid_response(ca)
            await asyncio.Event().wait()

    def register(server: grpc.aio.Server) -> None:
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(RsaOnly(), server)

    async def main() -> None:
        caplog.set_level(logging.INFO, logger="nsm_sdk.identity.workload")
        path = sock_dir / "agent.sock"
        stop = asyncio.Event()
        async with serve(str(path), register, stop_grace=0.1), source_of(path) as source:
            asyncio.get_running_loop().call_later(1.0, stop.set)
            assert await source.start(stop) is False
        unusable = [r for r in caplog.records if r.getMessage() == "identity.unusable"]
        assert unusable and "EC P-256" in str(getattr(unusable[0], "fields", {}).get("reason"))

    run_async(bounded(main))
