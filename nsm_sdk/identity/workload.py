"""Our X.509-SVID from the SPIFFE Workload API, kept current (protocol doc §3.1).

py-spiffe's `X509Source` does the Workload API work: the `workload.spiffe.io` header, the streaming
`FetchX509SVID` call, reconnecting with backoff when the agent restarts, parsing chains and bundles.
It is thread-based (sync grpcio), which suits us: the relay only needs a snapshot of the current
material at each handshake and token, and rotations arrive as callbacks that we hand to the event loop.

What this wrapper adds:

* an asyncio start that waits for the first SVID without blocking the loop, can be interrupted by a stop
  signal, and says once (then every `WAIT_REPORT_EVERY` seconds) that it is still waiting;
* `current()`, an immutable `X509Material` replaced on every rotation (new handshakes and new tokens use
  the new SVID, live connections keep theirs);
* recovery when py-spiffe gives up (it closes the source after a non-retryable error): a new source is
  made and the last good material is used until it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from spiffe import WorkloadApiClient, X509Source

from nsm_sdk.identity.x509 import X509Material
from nsm_sdk.protocol.errors import TemporaryError

_log = logging.getLogger(__name__)
FIRST_FETCH_SLICE = 2.0
"""Each blocking attempt to get the first SVID lasts this long, so a stop signal is seen promptly."""
WAIT_REPORT_EVERY = 30.0
WATCH_EVERY = 1.0


class IdentityUnavailable(TemporaryError):
    """No SVID yet from the Workload API."""


def _log_event(level: int, event: str, **fields: object) -> None:
    _log.log(level, event, extra={"fields": fields})


class WorkloadApiSource:
    """The current X.509 material of this workload, from the Workload API at `socket_url`."""

    def __init__(self, socket_url: str) -> None:
        self.socket_url = socket_url
        self._client: WorkloadApiClient | None = None
        self._source: X509Source | None = None
        self._material: X509Material | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<WorkloadApiSource {self.socket_url} {self._material!r}>"

    def current(self) -> X509Material:
        if self._material is None:
            raise IdentityUnavailable(f"no X.509-SVID from the Workload API at {self.socket_url} yet")
        return self._material

    async def start(self, stop: asyncio.Event | None = None) -> bool:
        """Wait for the first SVID; False if `stop` was set first. Then follow rotations until `aclose`."""
        self._loop = asyncio.get_running_loop()
        self._client = await asyncio.to_thread(WorkloadApiClient, self.socket_url)
        if not await self._open_source(stop):
            return False
        assert self._material is not None
        _log_event(
            logging.INFO,
            "identity.ready",
            spiffe_id=self._material.spiffe_id,
            expires_in=f"{self._material.not_after - time.time():.0f}s",
            workload_api=self.socket_url,
        )
        self._watch = asyncio.create_task(self._watch_source(), name="workload-api-watch")
        return True

    async def _open_source(self, stop: asyncio.Event | None) -> bool:
        """Make an X509Source, retrying in short blocking slices until it has an SVID or `stop` is set."""
        started = time.monotonic()
        reported = -WAIT_REPORT_EVERY
        while stop is None or not stop.is_set():
            try:
                source = await asyncio.to_thread(X509Source, self._client, None, FIRST_FETCH_SLICE)
            except Exception as exc:  # py-spiffe: X509SourceError on timeout or a fatal stream error
                waited = time.monotonic() - started
                if waited - reported >= WAIT_REPORT_EVERY:
                    reported = waited
                    _log_event(
                        logging.WARNING,
                        "identity.waiting",
                        workload_api=self.socket_url,
                        waited=f"{waited:.0f}s",
                        reason=str(exc),
                        hint="is the SPIFFE agent (or nsm-local) running, and SPIFFE_ENDPOINT_SOCKET right?",
                    )
                continue
            self._source = source
            self._take(source)
            source.subscribe_for_updates(self._updated_from_thread)
            return True
        return False

    def _updated_from_thread(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._updated)

    def _updated(self) -> None:
        source = self._source
        if source is None or self._closed:
            return
        previous = self._material
        try:
            self._take(source)
        except Exception as exc:  # a closed source or unusable SVID: keep the last good one
            _log_event(logging.WARNING, "identity.update_failed", reason=str(exc))
            return
        if previous is not None and self._material is not previous:
            assert self._material is not None
            _log_event(
                logging.INFO,
                "identity.rotated",
                spiffe_id=self._material.spiffe_id,
                expires_in=f"{self._material.not_after - time.time():.0f}s",
            )

    def _take(self, source: X509Source) -> None:
        material = X509Material.from_context(source.get_x509_context())
        if self._material is None or material.leaf != self._material.leaf or (
            dict(material.bundles) != dict(self._material.bundles)
        ):
            self._material = material

    async def _watch_source(self) -> None:
        """py-spiffe closes its source for good after a non-retryable error: make a new one."""
        while not self._closed:
            await asyncio.sleep(WATCH_EVERY)
            source = self._source
            if source is None or not source.is_closed() or self._closed:
                continue
            _log_event(logging.WARNING, "identity.source_lost", workload_api=self.socket_url)
            self._source = None
            await self._open_source(None)

    async def aclose(self) -> None:
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        source, client = self._source, self._client
        self._source = self._client = None
        if source is not None:
            await asyncio.to_thread(source.close)
        if client is not None:
            await asyncio.to_thread(client.close)
