"""Every program answers `--version` with one line: its name, the package version, the NSM API version."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nsm_sdk.version import version_line

PROGRAMS = {
    "nsc-sidecar": "nsc_sidecar",
    "nse-sidecar": "nse_sidecar",
    "nsm-agent": "nsm_agent",
    "nsm-local": "nsm_local",
    "nsm-topo": "nsm_topo",
}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_program_prints_its_version_and_exits_0(program: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", PROGRAMS[program], "--version"],
        env={"PATH": "/usr/bin:/bin"},  # no configuration at all: --version needs none
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, version_line(program) + "\n", "")
