"""Helpers shared by the component tests."""

from __future__ import annotations

import asyncio


async def grpc_calls_settled(limit: float = 5.0) -> None:
    """grpc.aio finishes the tasks of cancelled calls a moment after `server.stop()` returns; let them end
    so that the leftover-task check of `run_async` only sees tasks we leaked ourselves."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=limit)
