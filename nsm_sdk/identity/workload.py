"""Our X.509-SVID from the SPIFFE Workload API, kept current (protocol doc §3.1).

The stream runs on the agent's own event loop with grpc.aio: `FetchX509SVID` with the `workload.spiffe.io`
header, one message now and one after every rotation, reconnecting with backoff when the agent goes away
or has no identity for us yet. py-spiffe does the SPIFFE part: the generated Workload API messages, and
parsing and validating the SVID chain, its key and the bundles (`X509Svid.parse_raw`,
`X509Bundle.parse_raw`).

Why not py-spiffe's own `X509Source`: it runs the same stream on a synchronous grpcio channel in a thread
of its own, which costs each process about 3 ms of CPU per second while idle (its channel's polling, on
top of the agent's asyncio channel) and about 30 ms to the first SVID; with two sidecars per router and
hundreds of routers on one host that adds up. Measured in docs/performance.md.

What this adds:

* `start` waits for the first SVID without blocking the loop, can be interrupted by a stop signal, and says
  (then every `WAIT_REPORT_EVERY` seconds) that it is still waiting and why;
* `current()` is an immutable `X509Material` replaced on every rotation (new handshakes and new tokens use
  the new SVID, live connections keep theirs);
* an SVID the NSM components cannot use (not EC P-256) is reported and the old one kept until a usable one
  arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

import grpc
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import TrustDomain, X509Bundle, X509Svid
from spiffe._proto import workload_pb2, workload_pb2_grpc

from nsm_sdk.identity.x509 import UnusableSvidError, X509Material
from nsm_sdk.protocol.errors import TemporaryError
from nsm_sdk.protocol.timing import Backoff

_log = logging.getLogger(__name__)
WAIT_REPORT_FIRST = 5.0
WAIT_REPORT_EVERY = 30.0
WORKLOAD_API_HINT = (
    "start one: `nsm-local serve` serves it on this host (SPIRE's agent on a cluster node); "
    "or set SPIFFE_ENDPOINT_SOCKET to the socket of one that runs"
)
RECONNECT = Backoff(base=0.1, factor=2.0, cap=5.0, jitter=0.1)
HEADER = (("workload.spiffe.io", "true"),)


class IdentityUnavailable(TemporaryError):
    """No SVID yet from the Workload API."""


def _log_event(level: int, event: str, **fields: object) -> None:
    _log.log(level, event, extra={"fields": fields})


def grpc_target(socket_url: str) -> str:
    """`unix:///path` as it is, `tcp://host:port` as `host:port` (go-spiffe's address forms)."""
    return socket_url.removeprefix("tcp://")


def material_from(response: object) -> X509Material:
    """The first (default) SVID of an X509SVIDResponse, with its own and the federated bundles."""
    svids = getattr(response, "svids", ())
    if not svids:
        raise UnusableSvidError("the Workload API answered with no SVID")
    first = svids[0]
    try:
        svid = X509Svid.parse_raw(first.x509_svid, first.x509_svid_key)
        own_domain = svid.spiffe_id.trust_domain
        bundles = {own_domain.name: tuple(X509Bundle.parse_raw(own_domain, first.bundle).x509_authorities)}
        for domain, der in getattr(response, "federated_bundles", {}).items():
            federated = TrustDomain(domain)
            bundles[federated.name] = tuple(X509Bundle.parse_raw(federated, der).x509_authorities)
    except Exception as exc:  # py-spiffe's parse errors have no common root we could name
        raise UnusableSvidError(f"cannot use the SVID the Workload API sent: {exc}") from exc
    key = svid.private_key
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UnusableSvidError(
            f"SVID {svid.spiffe_id}: {type(key).__name__} key; NSM path tokens need EC P-256 (ES256)"
        )
    return X509Material(str(svid.spiffe_id), tuple(svid.cert_chain), key, bundles)


class WorkloadApiSource:
    """The current X.509 material of this workload, from the Workload API at `socket_url`."""

    def __init__(
        self,
        socket_url: str,
        channel: grpc.aio.Channel | None = None,
        diagnose: Callable[[str], str | None] | None = None,
    ) -> None:
        """`channel`: one already dialled to `socket_url` (and closed by its owner), e.g. one that sends a
        router's netns fd so that the SVID is the router's; by default our own plain channel. `diagnose`
        says why nothing answers at a URL (the transport layer's `socket_problem`, passed in from above)."""
        self.socket_url = socket_url
        self._diagnose = diagnose
        self._material: X509Material | None = None
        self._first = asyncio.Event()
        self._given_channel = channel
        self._channel: grpc.aio.Channel | None = None
        self._watch: asyncio.Task[None] | None = None
        self._problem = "no answer yet"

    def __repr__(self) -> str:
        return f"<WorkloadApiSource {self.socket_url} {self._material!r}>"

    def current(self) -> X509Material:
        if self._material is None:
            raise IdentityUnavailable(f"no X.509-SVID from the Workload API at {self.socket_url} yet")
        return self._material

    async def start(self, stop: asyncio.Event | None = None) -> bool:
        """Wait for the first SVID; False if `stop` was set first. Then follow rotations until `aclose`."""
        self._channel = self._given_channel or grpc.aio.insecure_channel(grpc_target(self.socket_url))
        self._watch = asyncio.create_task(self._watch_forever(), name="workload-api-watch")
        started = time.monotonic()
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stopping = asyncio.ensure_future(stop.wait()) if stop is not None else never
        try:
            report_in = WAIT_REPORT_FIRST
            while not self._first.is_set():
                first = asyncio.ensure_future(self._first.wait())
                await asyncio.wait([first, stopping], timeout=report_in, return_when=asyncio.FIRST_COMPLETED)
                report_in = WAIT_REPORT_EVERY
                first.cancel()
                if stopping.done():
                    return False
                if not self._first.is_set():
                    _log_event(
                        logging.WARNING,
                        "identity.waiting",
                        workload_api=self.socket_url,
                        waited=f"{time.monotonic() - started:.0f}s",
                        reason=await asyncio.to_thread(self._why_waiting),
                        hint=WORKLOAD_API_HINT,
                    )
        finally:
            stopping.cancel()
        assert self._material is not None
        _log_event(
            logging.INFO,
            "identity.ready",
            spiffe_id=self._material.spiffe_id,
            expires_in=f"{self._material.not_after - time.time():.0f}s",
            workload_api=self.socket_url,
        )
        return True

    def _why_waiting(self) -> str:
        problem = self._diagnose(self.socket_url) if self._diagnose is not None else None
        return problem or self._problem

    async def _watch_forever(self) -> None:
        assert self._channel is not None
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(self._channel)
        delays = RECONNECT.delays(random.Random())
        while True:
            call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, wait_for_ready=True)
            try:
                async for response in call:
                    self._take(response)
                    delays = RECONNECT.delays(random.Random())
                self._note("the Workload API ended the stream")
            except grpc.aio.AioRpcError as exc:
                self._note(f"{exc.code().name}: {exc.details() or ''}")
            finally:
                call.cancel()
            await asyncio.sleep(next(delays))

    def _note(self, problem: str) -> None:
        """A broken stream: retried at once (with backoff); said once per new reason after the first SVID."""
        if problem != self._problem and self._material is not None:
            _log_event(logging.WARNING, "identity.stream_lost", workload_api=self.socket_url, reason=problem)
        self._problem = problem

    def _take(self, response: object) -> None:
        try:
            material = material_from(response)
        except UnusableSvidError as exc:
            self._problem = str(exc)
            _log_event(logging.ERROR, "identity.unusable", workload_api=self.socket_url, reason=str(exc))
            return
        previous, self._material = self._material, material
        self._problem = "no answer yet"
        if not self._first.is_set():
            self._first.set()
        elif previous is None or material.leaf != previous.leaf:
            _log_event(
                logging.INFO,
                "identity.rotated",
                spiffe_id=material.spiffe_id,
                expires_in=f"{material.not_after - time.time():.0f}s",
            )

    async def aclose(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._channel is not None:
            if self._channel is not self._given_channel:
                await self._channel.close(None)
            self._channel = None
