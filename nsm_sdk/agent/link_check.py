"""Checking one side of a kernel link against its Connection, in the caller's own netns (§9)."""

from __future__ import annotations

import asyncio
import threading

from nsm_sdk._proto.networkservice.connection_pb2 import Connection
from nsm_sdk.kernel.addresses import Route
from nsm_sdk.kernel.errors import KernelError
from nsm_sdk.kernel.state import LinkState, verify_link, wait_for_link
from nsm_sdk.protocol.sides import Side, SideConfig, side_config


def expected_side(conn: Connection, side: Side) -> SideConfig:
    return side_config(conn.context.ip_context, side)


def _kernel_routes(config: SideConfig) -> list[Route]:
    return [Route(prefix=r.prefix, via=r.via) for r in config.routes]


async def wait_link(ifname: str, timeout: float) -> LinkState:
    """Wait (in a worker thread) until `ifname` exists in our netns; cancelling the task stops the wait."""
    cancel = threading.Event()
    try:
        return await asyncio.to_thread(wait_for_link, None, ifname, timeout, 0.05, cancel)
    finally:
        cancel.set()


async def link_problems(ifname: str, conn: Connection, side: Side) -> list[str]:
    """What is wrong with our side of the link right now; [] when it matches the connection."""
    config = expected_side(conn, side)
    mtu = conn.context.MTU or None
    try:
        return await asyncio.to_thread(
            verify_link, None, ifname, list(config.addresses), _kernel_routes(config), mtu
        )
    except KernelError as exc:
        return [f"cannot inspect {ifname}: {exc}"]
