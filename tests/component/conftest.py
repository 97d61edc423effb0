"""Component tier: real sockets and real grpc.aio servers in one process; no root needed.

Fixtures here are generic: running a coroutine on a fresh loop that must leave no tasks behind,
counting this process's open fds, and a short directory for unix socket paths (108-byte limit).
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

AsyncRunner = Callable[[Callable[[], Awaitable[Any]]], Any]


def _run_checked(main: Callable[[], Awaitable[Any]]) -> Any:
    async def checked() -> Any:
        result = await main()
        await asyncio.sleep(0)  # let done-callbacks of finished tasks run
        leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert not leftover, f"tasks left behind: {leftover}"
        return result

    return asyncio.run(checked())


@pytest.fixture
def run_async() -> AsyncRunner:
    """`run_async(main)` runs `main()` on a new event loop and fails if tasks are left behind."""
    return _run_checked


def _open_fds() -> int:
    gc.collect()  # unreachable sockets of earlier tests would otherwise close at a random moment
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def fd_count() -> Callable[[], int]:
    """Number of fds this process has open right now (after a garbage collection)."""
    return _open_fds


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A fresh, short directory for unix socket files."""
    path = Path(tempfile.mkdtemp(prefix="nsmt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
