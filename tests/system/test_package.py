"""The release artefacts, as a user gets them: the sdist and wheel build (`python -m build`) and pass
`twine check`; the wheel carries the generated protobuf code, installs into a fresh venv with no source tree
and no compiler, and its programs answer `--version` and run the two-device example."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nsm_sdk.version import version_line

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ("nsc-sidecar", "nse-sidecar", "nsm-agent", "nsm-local", "nsm-topo")
GENERATED = (
    "nsm_sdk/_proto/networkservice/networkservice_pb2.py",
    "nsm_sdk/_proto/networkservice/networkservice_pb2_grpc.py",
    "nsm_sdk/_proto/registry/registry_pb2.py",
)


def _run(*argv: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # The dev venv has the build requirements (grpcio-tools, mypy-protobuf): no download to build.
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=out)
    return out


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv, outside the source tree, with only the wheel (and its dependencies) installed."""
    venv = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", venv, cwd=venv)
    (wheel,) = dist.glob("*.whl")
    _run(venv / "bin/python", "-m", "pip", "install", "-q", "--only-binary=:all:", wheel, cwd=venv)
    return venv / "bin"


def test_sdist_and_wheel_build_and_pass_twine_check(dist: Path) -> None:
    files = sorted(p.name for p in dist.iterdir())
    assert len(files) == 2 and files[0].endswith(".whl") and files[1].endswith(".tar.gz"), files
    done = _run(sys.executable, "-m", "twine", "check", "--strict", *dist.iterdir(), cwd=dist)
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_wheel_carries_generated_protobuf_code_and_the_licence_and_nothing_of_the_tree(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(GENERATED) <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "bench/", "build/", "proto/", "scripts/"))]
    assert wheel.name.endswith("-py3-none-any.whl"), "pure Python: installing needs no compiler"


def test_installed_programs_answer_version_from_the_venv_not_the_tree(installed: Path) -> None:
    for program in PROGRAMS:
        done = _run(installed / program, "--version", cwd=installed)
        assert done.stdout == version_line(program) + "\n"
    where = _run(installed / "python", "-c", "import nsm_sdk; print(nsm_sdk.__file__)", cwd=installed)
    assert where.stdout.startswith(str(installed.parent)), where.stdout


def test_installed_programs_run_the_two_device_example(installed: Path) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/demo-p2p.sh")],
        env={**os.environ, "NSM_BIN": str(installed)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "demo passed" in done.stdout
    assert "0% packet loss" in done.stdout
