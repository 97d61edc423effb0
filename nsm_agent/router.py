"""One router's agents, both roles in one process: the NSC's links and the NSE's endpoint.

The same code as the two sidecars (`nsc_sidecar.agent.run_links`, `nse_sidecar.agent.Endpoint`), sharing
what a router has once: its name, its netns fd, its SVID (one `agent_identity`), and one manager channel
whose connections carry both the netns fd (the client's links go there) and the endpoint's socket file
(its registration names it). A router is ready when every client link is verified and the endpoint is
registered.

`RouterSettings.from_env` reads the two sidecars' variables from one environment. A role is present when
its list variable is: the client's `NS_NETWORKSERVICEMESH_IO` / `NSM_NETWORK_SERVICES`, the endpoint's
`ENDPOINT_NETWORK_SERVICE` / `ADVERTISE_NSE_NAME` / `NSM_SERVICE_NAMES`. Every other variable means the
same to both roles (`NSM_NAME`, `NSM_CONNECT_TO`, `NSM_READY_FILE`, ...), except `NSM_LABELS`, which the
client adds to its links' labels and the endpoint takes as its own labels: in one process that is
ambiguous, so it is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from nsc_sidecar.agent import run_links
from nsc_sidecar.settings import NscSettings
from nse_sidecar.agent import Endpoint
from nse_sidecar.settings import NseSettings
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.nsm_client import NsmClient
from nsm_sdk.agent.reachability import REPORT_AFTER, reporting_unreachable_manager
from nsm_sdk.agent.security import agent_identity
from nsm_sdk.protocol.envvalues import LogLevel, SecuritySettings, env_value
from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.transport.client import dial
from nsm_sdk.transport.urls import inode_url_for_fd

CLIENT_VARIABLES = ("NSM_NETWORK_SERVICES", "NS_NETWORKSERVICEMESH_IO")
ENDPOINT_VARIABLES = ("NSM_SERVICE_NAMES", "ENDPOINT_NETWORK_SERVICE", "ADVERTISE_NSE_NAME")


@dataclass(frozen=True)
class RouterSettings:
    """The roles a router plays (at least one), each parsed as its sidecar parses it."""

    client: NscSettings | None
    endpoint: NseSettings | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RouterSettings:
        labels = env_value(env, "NSM_LABELS")
        if labels is not None:
            raise ConfigError(
                "NSM_LABELS",
                labels,
                "ambiguous when one process plays both roles (the client adds it to its links' labels, the "
                "endpoint takes it as its own): use ENDPOINT_LABELS for the endpoint, and labels in the "
                "link URLs for the client",
            )
        has_client = any(env_value(env, v) is not None for v in CLIENT_VARIABLES)
        has_endpoint = any(env_value(env, v) is not None for v in ENDPOINT_VARIABLES)
        if not has_client and not has_endpoint:
            raise ConfigError(
                "NS_NETWORKSERVICEMESH_IO",
                None,
                "a router needs links to request or a service to serve: set NS_NETWORKSERVICEMESH_IO (or "
                "NSM_NETWORK_SERVICES) for the client, ENDPOINT_NETWORK_SERVICE (or NSM_SERVICE_NAMES) for "
                "the endpoint, or both",
            )
        return cls(
            client=NscSettings.from_env(env) if has_client else None,
            endpoint=NseSettings.from_env(env) if has_endpoint else None,
        )

    @property
    def any_role(self) -> NscSettings | NseSettings:
        """The settings of a role present: the variables both roles read (name, manager, timeouts, token
        lifetime, security, readiness file, log level) come from one environment, so either will do."""
        settings = self.client or self.endpoint
        assert settings is not None
        return settings

    @property
    def name(self) -> str | None:
        return self.any_role.name

    @property
    def security(self) -> SecuritySettings:
        return self.any_role.security

    @property
    def request_timeout(self) -> float:
        return self.any_role.request_timeout

    @property
    def log_level(self) -> LogLevel:
        return self.any_role.log_level

    @property
    def readiness_file(self) -> str | None:
        return self.any_role.readiness_file

    @property
    def present(self) -> tuple[str, ...]:
        """The roles played: "client", "endpoint" or both."""
        return tuple(role for role, s in (("client", self.client), ("endpoint", self.endpoint)) if s)

    @property
    def roles(self) -> str:
        return "+".join(self.present)


class RouterReadiness:
    """Ready while every role present is ready; `report(ready)` is told each change."""

    def __init__(self, settings: RouterSettings, report: Callable[[bool], None]) -> None:
        self._parts = dict.fromkeys(settings.present, False)
        self._report = report
        self.ready = False

    def part(self, role: str) -> Callable[[bool], None]:
        def update(ready: bool) -> None:
            self._parts[role] = ready
            now = all(self._parts.values())
            if now != self.ready:
                self.ready = now
                self._report(now)

        return update


async def run_router(
    settings: RouterSettings,
    netns_fd: int,
    stop: asyncio.Event,
    report_ready: Callable[[bool], None],
    *,
    delegated: bool,
    default_name: str | None = None,
    endpoints_stop: asyncio.Event | None = None,
    on_client_closed: Callable[[], None] | None = None,
    clients_start: asyncio.Event | None = None,
    on_registered: Callable[[], None] | None = None,
    admission: asyncio.Semaphore | None = None,
) -> None:
    """Run the router's roles until `stop`, then close its links and unregister its endpoint.

    `netns_fd` is the router's namespace: our own in a router's process (`delegated=False`), one of many
    in an agent host (`delegated=True`: the SVID, the manager connection and the link checks all act in
    that namespace by its fd).

    The client closes its links first, and the endpoint unregisters and stops only then (`nsm-topo down`
    stops client sidecars before endpoint ones for the same reason): a Close that reaches an endpoint
    already gone waits out its deadline. An agent host passes `endpoints_stop`, which it sets once the
    clients of all its routers are closed (each says so through `on_client_closed`). At start it is the
    other way round: a host holds its clients back (`clients_start`) until its endpoints have registered
    (each says so through `on_registered`), so that a lab's first Requests find the endpoints they ask
    for instead of failing and backing off. `admission` bounds the host's calls in flight (`NsmClient`).
    """
    name = settings.name or default_name or f"router-{os.fstat(netns_fd).st_ino}"
    log = EventLog("nsm_agent.router", name=name)
    for role in (settings.client, settings.endpoint):
        for warning in role.warnings if role is not None else ():
            log.warning("config.warning", detail=warning)
    client_settings, endpoint_settings = settings.client, settings.endpoint
    connect_to = str(settings.any_role.connect_to)
    lifetime = settings.any_role.max_token_lifetime
    readiness = RouterReadiness(settings, report_ready)
    client_closed = asyncio.Event()  # set only once the client has closed its links, after `stop`
    if endpoints_stop is None:
        endpoints_stop = client_closed if client_settings is not None else stop

    def closed() -> None:
        client_closed.set()
        if on_client_closed is not None:
            on_client_closed()

    log.info("agent.start", roles=settings.roles, connect_to=connect_to, netns=inode_url_for_fd(netns_fd))
    identity_fd = netns_fd if delegated else None
    try:
        async with agent_identity(settings.security, name, lifetime, log, stop, identity_fd) as identity:
            if identity is None:  # stopped before the Workload API gave us an SVID
                log.info("shutdown.done")
                return
            async with contextlib.AsyncExitStack() as stack:
                fds = [netns_fd]
                endpoint = None
                if endpoint_settings is not None:
                    endpoint = Endpoint(endpoint_settings, name, identity, netns_fd, log, delegated=delegated)
                    fds.append(await stack.enter_async_context(endpoint.serving()))
                elif on_registered is not None:
                    on_registered()
                channel, relay = await stack.enter_async_context(
                    dial(connect_to, send_fds=fds, security=identity.security)
                )
                client = NsmClient(channel, identity.tokens, relay, admission)
                report_after = client_settings.dial_timeout if client_settings is not None else REPORT_AFTER
                await stack.enter_async_context(
                    reporting_unreachable_manager(channel, connect_to, log, report_after)
                )
                async with asyncio.TaskGroup() as roles:
                    if endpoint is not None:
                        endpoint_ready = readiness.part("endpoint")

                        def registered(ready: bool) -> None:
                            endpoint_ready(ready)
                            if ready and on_registered is not None:
                                on_registered()

                        roles.create_task(
                            endpoint.run(client, stop, registered, close_after=endpoints_stop),
                            name="endpoint",
                        )
                    if client_settings is not None:
                        roles.create_task(
                            _client_role(
                                settings,
                                name,
                                netns_fd,
                                client,
                                log,
                                stop,
                                readiness,
                                delegated,
                                clients_start,
                            ),
                            name="client",
                        ).add_done_callback(lambda _: closed())
        log.info("shutdown.done")
    finally:
        closed()


async def _client_role(
    settings: RouterSettings,
    name: str,
    netns_fd: int,
    client: NsmClient,
    log: EventLog,
    stop: asyncio.Event,
    readiness: RouterReadiness,
    delegated: bool,
    start: asyncio.Event | None,
) -> None:
    assert settings.client is not None
    if start is not None and not start.is_set():
        waiting = asyncio.ensure_future(start.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        stopping.cancel()
        if stop.is_set():
            return
    await run_links(
        settings.client,
        name,
        inode_url_for_fd(netns_fd),
        client,
        log,
        stop,
        readiness.part("client"),
        netns_fd if delegated else None,
    )
