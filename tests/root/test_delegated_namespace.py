"""A caller acts in the network namespace whose fd it sends with its first bytes (how an agent host acts
for each router it hosts), and nsm-local's Workload API names it by that namespace.

The server runs in this process (host netns). The caller is this process too, but it sends the fd of a
throwaway namespace (`make_netns`), which it holds, as root holds every /run/netns file. Only the first fd
counts: one that is not a network namespace changes nothing, and neither does a netns fd after it. And only
root is trusted so: a process of another uid that was handed the fd still acts in its own namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import textwrap
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


NOT_ROOT_CALLER = textwrap.dedent("""
    import asyncio, json, os, sys
    from nsm_sdk.transport import dial  # before dropping to nobody: the venv may be root's alone
    fd, url = int(sys.argv[1]), sys.argv[2]
    os.setgid(65534)
    os.setuid(65534)  # SO_PEERCRED records who connects, at connect time
    async def main():
        async with dial(url, send_fds=[fd]) as (channel, _):
            call = channel.unary_unary("/test.Delegation/Whoami")
            print((await call(b"", timeout=10, wait_for_ready=True)).decode())
    asyncio.run(main())
""")


def test_a_caller_that_is_not_root_acts_in_its_own_namespace_whatever_it_sends(
    make_netns: Callable[[], Netns],
) -> None:
    router = make_netns()
    own = os.stat("/proc/self/ns/net").st_ino
    directory = Path(tempfile.mkdtemp(prefix="nsmt-", dir="/tmp"))
    directory.chmod(0o755)  # the unprivileged caller must reach the socket
    source_tree = str(Path(__file__).resolve().parents[2])

    async def main() -> dict[str, Any]:
        servicer = Whoami()
        async with serve(str(directory / "who.sock"), servicer.register) as handle:
            servicer.handle = handle
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                NOT_ROOT_CALLER,
                str(router.fd),
                f"unix://{directory / 'who.sock'}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=[router.fd],
                env={**os.environ, "PYTHONPATH": source_tree},
            )
            out, err = await asyncio.wait_for(child.communicate(), 60)
            assert child.returncode == 0, err.decode()
            answer: dict[str, Any] = json.loads(out)
            return answer

    try:
        assert asyncio.run(main()) == {"netns": own, "process": own, "delegated": False}
    finally:
        shutil.rmtree(directory)


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
