"""System tier: the three programs as separate processes in throwaway network namespaces.

Needs root, iproute2 (`ip`) and iputils-ping (`ping`); the README's setup command installs both.
Each test gets its own nsm-local on a socket under its tmp_path, so tests never share state.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from lab import Lab

LOG_TAIL = 60


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    for item in items:
        if "system" in str(item.path):
            item.add_marker(pytest.mark.skip(reason="system tests need root for network namespaces"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the end of every process log of a failing test's lab to its report."""
    report = yield
    lab = getattr(item, "funcargs", {}).get("lab")
    if report.failed and isinstance(lab, Lab):
        for process in lab.processes:
            lines = process.log.splitlines()[-LOG_TAIL:] if process.log_path.exists() else ["(no log)"]
            report.sections.append((f"{process.log_path.name} (last {LOG_TAIL} lines)", "\n".join(lines)))
    return report


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    # unix socket paths are limited to 107 bytes: keep the directory short
    lab = Lab(Path(tmp_path))
    try:
        yield lab
    finally:
        lab.close()
