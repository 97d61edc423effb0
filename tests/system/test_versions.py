"""Every program answers `--version` with one line: its name, the package version, the NSM API version;
the sidecars answer `--help` with the variables they read."""

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


def _unconfigured(program: str, argument: str) -> subprocess.CompletedProcess[str]:
    """`program ARGUMENT` with no configuration at all in its environment."""
    return subprocess.run(
        [sys.executable, "-m", PROGRAMS[program], argument],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_program_prints_its_version_and_exits_0(program: str) -> None:
    done = _unconfigured(program, "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, version_line(program) + "\n", "")


@pytest.mark.parametrize("program", ["nsc-sidecar", "nse-sidecar"])
def test_sidecar_help_lists_its_environment_and_exits_0(program: str) -> None:
    done = _unconfigured(program, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {program} [--help | --version]")
    for variable in ("NSM_CONNECT_TO", "NSM_REQUEST_TIMEOUT", "SPIFFE_ENDPOINT_SOCKET", "NSM_READY_FILE"):
        assert f"\n  {variable}\n" in done.stdout
    assert "      default: unix:///var/lib/networkservicemesh/nsm.io.sock\n" in done.stdout


@pytest.mark.parametrize("program", ["nsc-sidecar", "nse-sidecar"])
def test_sidecar_refuses_an_argument_and_points_at_help(program: str) -> None:
    done = _unconfigured(program, "--listen")
    assert done.returncode == 2
    assert done.stderr == (
        f"{program}: unexpected argument '--listen': configuration comes from the environment "
        f"(`{program} --help` lists it)\n"
    )
