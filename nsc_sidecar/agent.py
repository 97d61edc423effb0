"""The client agent: one `Link` per requested service, all concurrent, sharing one manager channel.

The channel's relay sends our netns fd with the first bytes of every connection it makes to the manager
(grpcfd keeps it for the connection's lifetime), so every Request, refresh and Close can name it by
`inode://dev/ino`. Readiness (all links verified) is published as a file for a Kubernetes exec probe.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from nsc_sidecar.link import Link
from nsc_sidecar.settings import NscSettings
from nsm_sdk.agent.lifecycle import readiness
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.nsm_client import NsmClient
from nsm_sdk.agent.reachability import reporting_unreachable_manager
from nsm_sdk.agent.security import agent_identity
from nsm_sdk.transport.client import dial
from nsm_sdk.transport.fdpass import open_netns_fd
from nsm_sdk.transport.urls import inode_url_for_fd


class Readiness:
    """Ready exactly while every link is verified; `report(ready)` is told each change."""

    def __init__(self, links: list[str], report: Callable[[bool], None], log: EventLog) -> None:
        self._verified = dict.fromkeys(links, False)
        self._report = report
        self._ready = False
        self._log = log

    def update(self, link: str, verified: bool) -> None:
        self._verified[link] = verified
        ready = all(self._verified.values())
        if ready != self._ready:
            self._ready = ready
            self._report(ready)
            self._log.info(
                "agent.ready" if ready else "agent.not_ready",
                verified=sum(self._verified.values()),
                links=len(self._verified),
            )


async def run(settings: NscSettings, stop: asyncio.Event) -> None:
    netns_fd = open_netns_fd()
    try:
        netns_url = inode_url_for_fd(netns_fd)
        name = settings.name or f"nsc-{os.fstat(netns_fd).st_ino}"
        log = EventLog("nsc_sidecar.agent", name=name)
        for warning in settings.warnings:
            log.warning("config.warning", detail=warning)
        log.info(
            "agent.start", connect_to=str(settings.connect_to), links=len(settings.links), netns=netns_url
        )
        lifetime = settings.max_token_lifetime
        async with agent_identity(settings.security, name, lifetime, log, stop) as identity:
            if identity is None:  # stopped before the Workload API gave us an SVID
                log.info("shutdown.done")
                return
            async with dial(str(settings.connect_to), send_fds=[netns_fd], security=identity.security) as (
                channel,
                relay,
            ):
                client = NsmClient(channel, identity.tokens, relay)
                url = str(settings.connect_to)
                async with reporting_unreachable_manager(channel, url, log, settings.dial_timeout):
                    await _run_links(settings, name, netns_url, client, log, stop)
        log.info("shutdown.done")
    finally:
        os.close(netns_fd)


async def _run_links(
    settings: NscSettings, name: str, netns_url: str, client: NsmClient, log: EventLog, stop: asyncio.Event
) -> None:
    with readiness(settings.readiness_file) as marker:
        await run_links(settings, name, netns_url, client, log, stop, marker.set)


async def run_links(
    settings: NscSettings,
    name: str,
    netns_url: str,
    client: NsmClient,
    log: EventLog,
    stop: asyncio.Event,
    report_ready: Callable[[bool], None],
    netns_fd: int | None = None,
) -> None:
    """Every link of `settings`, each requested, verified, kept and closed by its own `Link`, until `stop`
    and their Closes are done. `netns_fd`: the namespace the links go into when not our own."""
    ready = Readiness([spec.interface_name for spec in settings.links], report_ready, log)
    links = [
        Link(spec, name, netns_url, client, settings.request_timeout, ready.update, log, netns_fd=netns_fd)
        for spec in settings.links
    ]
    async with asyncio.TaskGroup() as group:
        for link in links:
            group.create_task(link.run(stop), name=f"link-{link.spec.interface_name}")
