"""Keeping the endpoint registered with the manager (protocol doc §8.1-§8.3).

Register (with the `path` metadata and our socket as `inode://` + fd), refresh at 2/3 of the expiry the
manager grants, re-register at once when the watch on our own registration breaks (manager restart), and
unregister on shutdown. Failures are retried with backoff forever; only shutdown ends the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping

from nsm_sdk._proto.registry.registry_pb2 import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceLabels,
    NetworkServiceQuery,
)
from nsm_sdk.agent.lifecycle import ABANDONED_GRACE, Stopped, sleep_or_stop, unless_stopped
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.nsm_client import NsmClient, RpcFailed
from nsm_sdk.protocol.gotime import timestamp_to_epoch
from nsm_sdk.protocol.registry_path import RegistryPath
from nsm_sdk.protocol.timing import Backoff, registration_refresh_delay

RETRY = Backoff(base=0.2, factor=2.0, cap=5.0, jitter=0.1)


def endpoint_record(
    name: str, services: tuple[str, ...], labels: Mapping[str, str], url: str
) -> NetworkServiceEndpoint:
    nse = NetworkServiceEndpoint(name=name, url=url)
    nse.network_service_names.extend(services)
    for service in services:
        nse.network_service_labels[service].CopyFrom(NetworkServiceLabels(labels=dict(labels)))
    return nse


class Registrar:
    def __init__(
        self,
        client: NsmClient,
        record: NetworkServiceEndpoint,
        payload: str,
        register_service: bool,
        timeout: float,
        log: EventLog,
        on_registered: Callable[[bool], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.record = record
        self.payload = payload
        self.register_service = register_service
        self.timeout = timeout
        self._log = log
        self._on_registered = on_registered
        self._clock = clock
        self._path = RegistryPath()
        self._registered: NetworkServiceEndpoint | None = None
        self._announced = False

    async def _ensure_services(self) -> None:
        """Create each NetworkService that does not exist yet (the seed's nsmd did the same), so a service
        applied with matches is never overwritten by a bare one (protocol doc §8.7)."""
        for name in self.record.network_service_names:
            query = NetworkServiceQuery(network_service=NetworkService(name=name))
            found = False
            async for response in self.client.find_services(query, timeout=self.timeout):
                if response.network_service.name == name and not response.deleted:
                    found = True
            if not found:
                await self.client.register_service(
                    NetworkService(name=name, payload=self.payload), RegistryPath(), self.timeout
                )
                self._log.info("service.registered", service=name, payload=self.payload)

    async def _register_once(self) -> float:
        """One Register (first time or refresh); returns the delay until the next refresh."""
        if self.register_service:
            await self._ensure_services()
        message = NetworkServiceEndpoint()
        message.CopyFrom(self._registered if self._registered is not None else self.record)
        message.url = self.record.url
        message.ClearField("expiration_time")
        reply, self._path = await self.client.register_endpoint(message, self._path, self.timeout)
        self._registered = reply
        expires = timestamp_to_epoch(reply.expiration_time) if reply.HasField("expiration_time") else None
        delay = registration_refresh_delay(expires, self._clock())
        return delay if delay is not None else 20.0

    async def _watch(self, stop: asyncio.Event) -> None:
        """Return when our registration watch breaks (the manager went away) or stop is set."""
        query = NetworkServiceEndpointQuery(
            network_service_endpoint=NetworkServiceEndpoint(name=self.record.name), watch=True
        )
        with contextlib.suppress(RpcFailed):
            async for response in self.client.find_endpoints(query):
                if response.deleted and response.network_service_endpoint.name == self.record.name:
                    return
                if stop.is_set():
                    return

    async def run(self, stop: asyncio.Event) -> None:
        delays = RETRY.delays(random.Random())
        while not stop.is_set():
            try:
                refresh_in = await unless_stopped(stop, self._register_once())
            except Stopped:
                return
            except RpcFailed as exc:
                self._on_registered(False)
                self._log.warning("registration.failed", name=self.record.name, reason=str(exc))
                await sleep_or_stop(stop, next(delays))
                continue
            first, self._announced = not self._announced, True
            delays = RETRY.delays(random.Random())
            self._on_registered(True)
            if first:
                self._log.info(
                    "registration.done",
                    name=self.record.name,
                    url=self.record.url,
                    services=",".join(self.record.network_service_names),
                    refresh_in=round(refresh_in, 1),
                )
            watch = asyncio.create_task(self._watch(stop))
            stopped = asyncio.create_task(stop.wait())
            try:
                done, _ = await asyncio.wait(
                    {watch, stopped}, timeout=refresh_in, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in (watch, stopped):
                    task.cancel()
                await asyncio.gather(watch, stopped, return_exceptions=True)
            if watch in done and not stop.is_set():
                self._log.warning("registration.watch_lost", name=self.record.name)
                self._on_registered(False)

    async def unregister(self) -> None:
        """Remove our registration; when none was ever confirmed, only a bounded try (ABANDONED_GRACE): an
        attempt cut short or failed may still have reached the manager, and it expires by itself."""
        record = self._registered or self.record
        timeout = self.timeout if self._registered is not None else ABANDONED_GRACE
        try:
            await self.client.unregister_endpoint(record, self._path, timeout)
            self._log.info("registration.removed", name=self.record.name)
        except RpcFailed as exc:
            report = self._log.warning if self._registered is not None else self._log.info
            report("registration.remove_failed", name=self.record.name, reason=str(exc))
