"""Containers for the system tests: the project's images built (once per session, and only when their
sources changed) and podman run for real. Needs podman; scripts/setup.sh installs it, writes its
configuration and builds the images, so in CI the build here is a check that takes a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
TAG = version("nsm-topology-sidecars")
BUSYBOX = "localhost/nsm-busybox:latest"
_built: list[str] = []


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def require_podman() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: scripts/setup.sh installs it")


def build_images() -> str:
    """nsc-sidecar, nse-sidecar, nsm-agent and nsm-local from this tree (`images/build.sh --local-base
    --if-changed`) and the busybox device image; returns the tag."""
    require_podman()
    if not _built:
        for script, args in (("build.sh", ["--local-base", "--if-changed"]), ("busybox.sh", [])):
            done = subprocess.run(
                ["bash", str(ROOT / "images" / script), *args],
                env={**os.environ, "PYTHON": sys.executable},
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert done.returncode == 0, f"images/{script}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
        _built.append(TAG)
    return TAG


def labelled(label: str) -> list[str]:
    """Names of the containers (any state) that carry this label (`key=value`)."""
    out = podman("ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}").stdout
    return sorted(out.split())


def remove_labelled(label: str) -> None:
    names = labelled(label)
    if names:
        podman("rm", "--force", "--time", "0", *names, check=False)
