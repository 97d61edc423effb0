"""The Workload API tells workloads apart by network namespace and uid, as the kernel reports them.

The server runs in this process (host netns); each client is a separate process running py-spiffe, in the
host netns, in a throwaway netns (`ip netns exec`), or as another uid. The socket is a file, so it is
reachable from every namespace; only the attestation differs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from kernel_lab import Netns

from nsm_local.dev_ca import DevCA
from nsm_local.workload_api import serve_workload_api

pytestmark = pytest.mark.root

TD = "nsm.local"
TIMEOUT = 30.0
# py-spiffe's own client, as a sidecar would use it; optionally drops to another uid after the imports
# (SO_PEERCRED records who connected, at connect time).
FETCH = textwrap.dedent("""
    import os, sys
    from spiffe import WorkloadApiClient
    if len(sys.argv) > 2:
        os.setgid(int(sys.argv[2]))
        os.setuid(int(sys.argv[2]))
    with WorkloadApiClient(socket_path=sys.argv[1]) as client:
        print(client.fetch_x509_svid(timeout=20).spiffe_id)
""")


async def fetch_id(url: str, *prefix: str, uid: int | None = None) -> str:
    argv = [*prefix, sys.executable, "-c", FETCH, url, *([str(uid)] if uid is not None else [])]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    return out.decode().strip()


def expected_id(netns_inode: int, uid: int) -> str:
    return f"spiffe://{TD}/netns/{netns_inode}/uid/{uid}"


def run_checked(main: Callable[[], Awaitable[None]]) -> None:
    async def checked() -> None:
        await main()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if others:  # grpc.aio ends the tasks of cancelled calls a moment after server.stop()
            await asyncio.wait(others, timeout=5)
        leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert not leftover, f"tasks left behind: {leftover}"

    asyncio.run(checked())


def test_each_netns_and_uid_is_its_own_identity(make_netns: Callable[[], Netns]) -> None:
    netns = make_netns()
    host_netns = os.stat("/proc/self/ns/net").st_ino
    lab_netns = os.stat(f"/run/netns/{netns.name}").st_ino
    directory = Path(tempfile.mkdtemp(prefix="nsmt-", dir="/tmp"))
    directory.chmod(0o755)  # the unprivileged client must reach the (0666) socket
    ca = DevCA.load_or_create(directory / "ca", TD)

    async def main() -> None:
        async with serve_workload_api(str(directory / "api.sock"), ca, ttl=600.0) as handle:
            host, in_netns, nobody, in_netns_again = await asyncio.gather(
                fetch_id(handle.url),
                fetch_id(handle.url, "ip", "netns", "exec", netns.name),
                fetch_id(handle.url, uid=65534),
                fetch_id(handle.url, "ip", "netns", "exec", netns.name),
            )
        assert host == expected_id(host_netns, 0)
        assert in_netns == expected_id(lab_netns, 0)
        assert nobody == expected_id(host_netns, 65534)
        assert in_netns_again == in_netns, "the same netns and uid is the same identity"
        assert len({host, in_netns, nobody}) == 3

    try:
        run_checked(main)
    finally:
        shutil.rmtree(directory)
