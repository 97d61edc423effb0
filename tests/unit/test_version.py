"""One version source: the package's from its metadata, the NSM API's kept equal to what interop runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from nsm_sdk.version import NSM_API_VERSION, package_version, version_line

REPO = Path(__file__).resolve().parents[2]


def test_the_package_version_is_pyprojects() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert package_version() == declared


def test_the_nsm_api_version_is_the_one_the_interop_harness_runs() -> None:
    go_mod = (REPO / "tests/interop/harness/go.mod").read_text()
    pinned = re.search(r"github\.com/networkservicemesh/api (v\S+)", go_mod)
    assert pinned is not None and pinned.group(1) == NSM_API_VERSION


def test_the_version_line_names_program_package_and_api() -> None:
    assert version_line("nsc-sidecar") == f"nsc-sidecar {package_version()} (NSM API {NSM_API_VERSION})"
