"""Saying once, in words a person can act on, that the manager cannot be reached.

Requests keep waiting for the manager (wait-for-ready, bounded by each request's deadline) and are
retried, so `manager.unreachable` is only a diagnosis: which socket, what is wrong with it
(`socket_problem`), and what to start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from nsm_sdk.agent.logs import EventLog
from nsm_sdk.transport.probe import socket_problem

REPORT_AFTER = 5.0
"""Seconds without a connection before an agent that has no NSM_DIAL_TIMEOUT of its own reports."""

MANAGER_HINT = (
    "start a manager: `nsm-local serve` on this host, or NSM's nsmgr on a cluster node; "
    "or set NSM_CONNECT_TO to the socket of one that runs"
)
NO_GRPC = "it accepts connections but gives no gRPC answer (a TLS or protocol mismatch?)"


@contextlib.asynccontextmanager
async def reporting_unreachable_manager(
    channel: grpc.aio.Channel, url: str, log: EventLog, after: float = REPORT_AFTER
) -> AsyncIterator[None]:
    """While inside: log `manager.unreachable` once if `channel` (to the manager at `url`) is not ready
    within `after` seconds."""
    report = asyncio.create_task(_report_unless_ready(channel, url, log, after))
    try:
        yield
    finally:
        report.cancel()


async def _report_unless_ready(channel: grpc.aio.Channel, url: str, log: EventLog, after: float) -> None:
    try:
        await asyncio.wait_for(channel.channel_ready(), after)
    except TimeoutError:
        problem = await asyncio.to_thread(socket_problem, url)
        log.warning(
            "manager.unreachable",
            after=f"{after}s",
            socket=url,
            problem=problem or NO_GRPC,
            hint=MANAGER_HINT,
        )
