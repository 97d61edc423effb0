"""Build hook: compile proto/ into nsm_sdk/_proto before the Python files are collected.

Runs for `pip install .` and `pip install -e .` alike, so generated code is never committed and never
edited by hand. Each proto directory becomes one Python sub-package; the generated absolute imports
(`from networkservice import connection_pb2`) are rewritten to package-relative ones, so the modules live
under `nsm_sdk._proto` while the descriptor pool keeps the unique names `networkservice/connection.proto`.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "nsm_sdk" / "_proto"
_ABSOLUTE_IMPORT = re.compile(r"^from (\w+) import (\w+_pb2)( as \w+)?$", re.MULTILINE)


def compile_protos() -> list[str]:
    """Generate the modules and return the dotted names of the generated sub-packages."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    packages = sorted({p.parent.name for p in PROTO_DIR.glob("*/*.proto")})
    if not packages:
        # An sdist has no proto/ (no MANIFEST.in) but may carry code generated when it was made.
        pregenerated = sorted({p.parent.name for p in OUT_DIR.glob("*/*_pb2.py")})
        if not pregenerated:
            raise RuntimeError(f"no .proto files under {PROTO_DIR} and no generated code under {OUT_DIR}")
        return [f"nsm_sdk._proto.{package}" for package in pregenerated]
    for package in packages:
        target = OUT_DIR / package
        target.mkdir(parents=True, exist_ok=True)
        (target / "__init__.py").touch()
        files = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / package).glob("*.proto"))
        args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={OUT_DIR}",
                f"--grpc_python_out={OUT_DIR}", *files]
        args[3:3] = _mypy_stub_args()
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for proto/{package}")
    for generated in OUT_DIR.glob("*/*_pb2*.py*"):
        text = generated.read_text()
        fixed = _ABSOLUTE_IMPORT.sub(_relative_import, text)
        if fixed != text:
            generated.write_text(fixed)
    return [f"nsm_sdk._proto.{package}" for package in packages]


def _mypy_stub_args() -> list[str]:
    """Type stubs too, when mypy-protobuf is installed (the dev extra). Its protoc plugins are scripts
    beside this interpreter, which need not be on PATH (`python -m build --no-isolation` from a venv)."""
    bindirs = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    plugins = {name: shutil.which(f"protoc-gen-{name}", path=bindirs) for name in ("mypy", "mypy_grpc")}
    if not all(plugins.values()):
        return []
    return [
        *(f"--plugin=protoc-gen-{name}={path}" for name, path in plugins.items()),
        f"--mypy_out={OUT_DIR}",
        f"--mypy_grpc_out={OUT_DIR}",
    ]


def _relative_import(match: re.Match[str]) -> str:
    package, module, alias = match.group(1), match.group(2), match.group(3) or ""
    if not (PROTO_DIR / package).is_dir():
        return match.group(0)
    return f"from nsm_sdk._proto.{package} import {module}{alias}"


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        # Package discovery ran before the sub-packages existed (clean checkout), so add them here;
        # without this a non-editable wheel silently lacks the generated modules.
        generated = compile_protos()
        self.packages = _with_packages(self.packages, generated)
        self.distribution.packages = _with_packages(self.distribution.packages, generated)
        self.__dict__.pop("data_files", None)  # recompute package data (*.pyi) for the new packages
        super().run()


def _with_packages(packages: list[str] | None, extra: list[str]) -> list[str]:
    known = list(packages or [])
    return known + [p for p in extra if p not in known]


setup(cmdclass={"build_py": BuildPyWithProtos})
