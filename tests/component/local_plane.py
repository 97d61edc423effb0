"""nsm-local in-process for component tests, secure as users run it, and clients of it.

`control_plane` runs `serve_control_plane` (what `nsm-local serve` runs) with its development Workload API
in the test's socket directory; `Plane.client` is an NsmClient whose SVID comes from that Workload API
(py-spiffe, over the real socket), so tokens, mTLS and ownership are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aio_helpers import grpc_calls_settled

from nsm_local.identities import FORWARDER_PATH, MANAGER_PATH
from nsm_local.server import ServeSettings, serve_control_plane
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.nsm_client import NsmClient
from nsm_sdk.agent.security import AgentIdentity, agent_identity
from nsm_sdk.protocol.envvalues import SecuritySettings
from nsm_sdk.protocol.nsurl import parse_socket_url
from nsm_sdk.transport.client import dial
from nsm_sdk.transport.fdpass import open_netns_fd

TRUST_DOMAIN = "nsm.local"
MANAGER_ID = f"spiffe://{TRUST_DOMAIN}/{MANAGER_PATH}"
FORWARDER_ID = f"spiffe://{TRUST_DOMAIN}/{FORWARDER_PATH}"


def own_workload_id() -> str:
    """The SPIFFE id nsm-local's Workload API gives this test process (its netns and uid)."""
    return f"spiffe://{TRUST_DOMAIN}/netns/{os.stat('/proc/self/ns/net').st_ino}/uid/{os.getuid()}"


@dataclass
class Plane:
    settings: ServeSettings

    @property
    def url(self) -> str:
        return f"unix://{self.settings.socket_path}"

    @property
    def security(self) -> SecuritySettings:
        endpoint = parse_socket_url("test", f"unix://{self.settings.workload_api_path}")
        return SecuritySettings(insecure=self.settings.insecure, spiffe_endpoint=endpoint)

    @contextlib.asynccontextmanager
    async def identity(self, lifetime: float = 600.0) -> AsyncIterator[AgentIdentity]:
        """This process's identity from the plane's Workload API (insecure planes: a throwaway one)."""
        async with agent_identity(self.security, "test", lifetime, EventLog("test"), asyncio.Event()) as got:
            assert got is not None
            yield got

    @contextlib.asynccontextmanager
    async def client(
        self, send_fds: Sequence[int] = (), lifetime: float = 600.0, identity: AgentIdentity | None = None
    ) -> AsyncIterator[NsmClient]:
        async with contextlib.AsyncExitStack() as stack:
            if identity is None:
                identity = await stack.enter_async_context(self.identity(lifetime))
            channel, relay = await stack.enter_async_context(
                dial(self.url, send_fds=send_fds, security=identity.security)
            )
            yield NsmClient(channel, identity.tokens, relay)


@contextlib.asynccontextmanager
async def control_plane(sock_dir: Path, **overrides: Any) -> AsyncIterator[Plane]:
    """`nsm-local serve` on `<sock_dir>/nsm.sock` with its Workload API at `<sock_dir>/agent.sock`."""
    settings = ServeSettings(
        **{
            "socket_path": str(sock_dir / "nsm.sock"),
            "workload_api_path": str(sock_dir / "agent.sock"),
            "state_dir": str(sock_dir / "state"),
            **overrides,
        }
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve_control_plane(settings, stop, ready))
    started = asyncio.create_task(ready.wait())
    await asyncio.wait([server, started], return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        started.cancel()
        await server  # raises what made it fail
    try:
        yield Plane(settings)
    finally:
        stop.set()
        await server
        await grpc_calls_settled()


@contextlib.contextmanager
def own_netns_fd() -> Iterator[int]:
    """An fd on this process's own netns, closed afterwards (what a client passes with its Request)."""
    fd = open_netns_fd()
    try:
        yield fd
    finally:
        os.close(fd)
