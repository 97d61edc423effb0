"""Interop tier: the sidecars against NSM's real Go control plane.

`scripts/build-interop.sh` builds the harness (tests/interop/harness: the sdk's registry, nsmgr and a
kernel forwarder, plus reference Go NSC/NSE) once per session. Needs root (network namespaces), `ip`,
`ping` and a Go toolchain (`go` on PATH or /usr/local/go/bin/go). Without root or Go the tests are
skipped with the reason shown; in CI (CI=true) tests/conftest.py turns any skip into a failure.

A failing test gets every log of its lab (control plane, agents, the control plane's event log) attached
to its report.

Secure mode (`secure_lab`, `secure_link`): a real SPIRE server + agent (tests/interop/spire, built by
`scripts/build-spire.sh`, which scripts/setup.sh runs) is started once per session, on first use, and
the lab's processes get their identities from it by gid (spire_lab.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import spire_lab
from interop_lab import BUILD_SCRIPT, HARNESS_BIN, PAIRS, SECURE_PAIRS, Lab, Link, establish, pair_id
from spire_lab import SpireLab


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "interop tests need root for network namespaces (CI runs as root)"
    elif shutil.which("ip") is None or shutil.which("ping") is None:
        reason = "interop tests need `ip` (iproute2) and `ping` (iputils-ping): run scripts/setup.sh"
    if reason is None:
        return
    for item in items:
        if "interop" in str(item.path):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach every log of the lab a failing test used to its report."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            lab = value if isinstance(value, Lab) else getattr(value, "lab", None)
            if isinstance(lab, Lab) and lab.directory.exists():
                report.sections.append(("interop lab logs", lab.report()))
                break
    return report


@pytest.fixture(scope="session")
def harness() -> Path:
    """The harness binary, built (or brought up to date) once per session."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1500, check=False
    )
    if result.returncode == 3:
        pytest.skip(f"no Go toolchain to build the interop harness: {result.stderr.strip()}")
    if result.returncode != 0:
        pytest.fail(f"building the interop harness failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    assert HARNESS_BIN.exists()
    return HARNESS_BIN


@pytest.fixture
def lab(harness: Path) -> Iterator[Lab]:
    """A fresh lab with its own control plane, strict fd passing on."""
    lab = Lab()
    try:
        lab.control_plane(strict=True)
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="class", params=PAIRS, ids=pair_id)
def link(harness: Path, request: pytest.FixtureRequest) -> Iterator[Link]:
    """One client-endpoint pair of the matrix ({go,py} x {go,py}), linked, with its own control plane; shared
    by the tests of a class, which check it step by step."""
    lab = Lab()
    try:
        lab.control_plane(strict=True)
        yield establish(lab, *request.param)
    finally:
        lab.close()


@pytest.fixture(scope="session")
def spire() -> Iterator[SpireLab]:
    """One SPIRE server + agent for the whole session, with the default identities (spire_lab.IDENTITIES)."""
    if not spire_lab.binaries_built():
        pytest.skip(
            "secure interop tests need SPIRE: run scripts/build-spire.sh "
            "(scripts/setup.sh does; about 9 min cold)"
        )
    # up to date: a no-op; stale (go.mod/go.sum changed): rebuilt, usually just a link
    result = subprocess.run(
        ["bash", str(spire_lab.BUILD_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"building SPIRE failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    lab = SpireLab()
    lab.start()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def secure_lab(harness: Path, spire: SpireLab) -> Iterator[Lab]:
    """A fresh lab secured by SPIFFE (mTLS, ES256 tokens, default policies), strict fd passing on."""
    lab = Lab(spire=spire)
    try:
        lab.control_plane(strict=True)
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="class", params=SECURE_PAIRS, ids=pair_id)
def secure_link(harness: Path, spire: SpireLab, request: pytest.FixtureRequest) -> Iterator[Link]:
    """Like `link`, in a secure lab, for the pairs of SECURE_PAIRS."""
    lab = Lab(spire=spire)
    try:
        lab.control_plane(strict=True)
        yield establish(lab, *request.param)
    finally:
        lab.close()
