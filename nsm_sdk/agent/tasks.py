"""Background tasks with an owner: each is kept until it ends, its failure is logged, and `aclose`
cancels and awaits whatever is still running. `asyncio.create_task` alone keeps only a weak reference,
and an exception in such a task is reported, if at all, when it is garbage collected."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

_log = logging.getLogger(__name__)
T = TypeVar("T")


class OwnedTasks:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(
        self, work: Coroutine[Any, Any, Any], name: str, report_errors: bool = True
    ) -> asyncio.Task[Any]:
        """Run `work` as a task of ours; with `report_errors` False its failure is whoever awaits it's to
        report (it is still retrieved, so asyncio never complains of it)."""
        task = asyncio.get_running_loop().create_task(work, name=f"{self.owner}: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._finished if report_errors else self._forget)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            _log.error("task.failed", extra={"fields": {"task": task.get_name()}}, exc_info=error)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
