"""A caller acts in the network namespace whose fd it sends with its first bytes (how an agent host acts
for each router it hosts), and nsm-local's Workload API names it by that namespace.

The server runs in this process (host netns). The caller is this process too, but it sends the fd of a
throwaway namespace (`make_netns`), which it holds, as root holds every /run/netns file. Only the first fd
counts: one that is not a network namespace changes nothing, and neither does a netns fd after it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from kernel_lab import Netns

from nsm_local.dev_ca import DevCA
from nsm_local.workload_api import serve_workload_api
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.security import agent_identity
from nsm_sdk.protocol.envvalues import SecuritySettings
from nsm_sdk.protocol.nsurl import parse_socket_url
from nsm_sdk.transport import ServerHandle, dial, serve

pytestmark = pytest.mark.root

TD = "nsm.local"
SERVICE = "test.Delegation"


class Whoami:
    def __init__(self) -> None:
        self.handle: ServerHandle | None = None

    def register(self, server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(self.whoami)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Whoami": handler}),))

    async def whoami(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        assert self.handle is not None
        connection = self.handle.connection_for(context)
        assert connection is not None and connection.credentials is not None
        credentials = connection.credentials
        return json.dumps(
            {
                "netns": credentials.netns,
                "process": credentials.process_netns,
                "delegated": credentials.delegated,
            }
        ).encode()


async def whoami(url: str, send_fds: list[int]) -> dict[str, Any]:
    async with dial(url, send_fds=send_fds) as (channel, _):
        call = channel.unary_unary(f"/{SERVICE}/Whoami")
        answer: dict[str, Any] = json.loads(await call(b"", timeout=10, wait_for_ready=True))
        return answer


def test_a_caller_acts_in_the_namespace_it_sends_with_its_first_bytes(
    make_netns: Callable[[], Netns], tmp_path: Path
) -> None:
    router = make_netns()
    own = os.stat("/proc/self/ns/net").st_ino
    routers = os.fstat(router.fd).st_ino
    read_end, write_end = os.pipe()

    async def main() -> None:
        servicer = Whoami()
        async with serve(str(tmp_path / "who.sock"), servicer.register) as handle:
            servicer.handle = handle
            url = f"unix://{tmp_path / 'who.sock'}"
            assert await whoami(url, [router.fd]) == {"netns": routers, "process": own, "delegated": True}
            assert await whoami(url, []) == {"netns": own, "process": own, "delegated": False}
            assert await whoami(url, [read_end]) == {"netns": own, "process": own, "delegated": False}, (
                "a fd that is not a network namespace names none"
            )
            assert await whoami(url, [router.fd, read_end]) == {
                "netns": routers,
                "process": own,
                "delegated": True,
            }, "the first fd is the one that counts (an agent host sends a router's netns, then its socket)"
            assert await whoami(url, [read_end, router.fd]) == {
                "netns": own,
                "process": own,
                "delegated": False,
            }

    try:
        asyncio.run(main())
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_workload_api_gives_a_router_the_identity_of_its_namespace(
    make_netns: Callable[[], Netns],
) -> None:
    router, other = make_netns(), make_netns()
    directory = Path(tempfile.mkdtemp(prefix="nsmt-", dir="/tmp"))
    ca = DevCA.load_or_create(directory / "ca", TD)
    socket_path = directory / "api.sock"
    settings = SecuritySettings(
        insecure=False, spiffe_endpoint=parse_socket_url("SPIFFE_ENDPOINT_SOCKET", f"unix://{socket_path}")
    )

    async def identity_of(netns_fd: int | None) -> str:
        async with agent_identity(
            settings, "r", 600.0, EventLog("test"), asyncio.Event(), netns_fd
        ) as identity:
            assert identity is not None
            return identity.spiffe_id

    async def main() -> None:
        async with serve_workload_api(str(socket_path), ca, ttl=600.0):
            ids = await asyncio.gather(identity_of(router.fd), identity_of(other.fd), identity_of(None))
        inode = {name: os.fstat(ns.fd).st_ino for name, ns in (("router", router), ("other", other))}
        host = os.stat("/proc/self/ns/net").st_ino
        assert ids == [
            f"spiffe://{TD}/netns/{inode['router']}/uid/0",
            f"spiffe://{TD}/netns/{inode['other']}/uid/0",
            f"spiffe://{TD}/netns/{host}/uid/0",
        ]

    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(directory)
