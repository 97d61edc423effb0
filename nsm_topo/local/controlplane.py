"""The lab's control plane: a running nsm-local, or one nsm-topo starts (and stops with the last lab).

nsm-local serves NSM's standard sockets, so one instance serves every lab on the host, each lab its own
NetworkService (named after the topology). Which labs use an nsm-local that nsm-topo started is kept in
`/run/nsm-topo/nsm-local.json`; `down` of the last of them stops it. An nsm-local someone else started is
used and never stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nsm_local import cli_client
from nsm_local.manifests import load_network_services
from nsm_local.server import socket_in_use
from nsm_sdk.protocol.envvalues import DEFAULT_SPIFFE_ENDPOINT, SecuritySettings
from nsm_sdk.protocol.nsurl import DEFAULT_NSMGR_URL, SocketUrl
from nsm_topo.local.processes import ProcessRecord, alive, spawn, stop

RUN_DIR = Path("/run/nsm-topo")
START_TIMEOUT = 30.0


class ControlPlaneError(RuntimeError):
    """nsm-local could not be started or reached."""


@dataclass(frozen=True, slots=True)
class ControlPlane:
    url: SocketUrl = DEFAULT_NSMGR_URL
    workload_api: SocketUrl = DEFAULT_SPIFFE_ENDPOINT
    insecure: bool = False
    run_dir: Path = RUN_DIR
    """Where labs keep what they created (`<run_dir>/<topology>/`) and nsm-topo's nsm-local its record."""

    @property
    def security(self) -> SecuritySettings:
        return SecuritySettings(insecure=self.insecure, spiffe_endpoint=self.workload_api)

    def sidecar_env(self) -> dict[str, str]:
        """What the sidecars need to find this control plane (nothing, at the defaults)."""
        env = {}
        if self.url != DEFAULT_NSMGR_URL:
            env["NSM_CONNECT_TO"] = str(self.url)
        if self.workload_api != DEFAULT_SPIFFE_ENDPOINT:
            env["SPIFFE_ENDPOINT_SOCKET"] = str(self.workload_api)
        if self.insecure:
            env["NSM_INSECURE"] = "true"
        return env

    def running(self) -> bool:
        return socket_in_use(self.url.path)


def _labs(record: dict[str, Any]) -> set[str]:
    labs = record.get("labs", [])
    return {str(lab) for lab in labs} if isinstance(labs, list) else set()


@contextlib.contextmanager
def _locked_record(run_dir: Path) -> Iterator[dict[str, Any]]:
    run_dir.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / "nsm-local.json"
    with (run_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data: dict[str, Any] = json.loads(record_path.read_text()) if record_path.exists() else {}
        except (OSError, ValueError):
            data = {}
        yield data
        if data:
            record_path.write_text(json.dumps(data))
        else:
            record_path.unlink(missing_ok=True)


def acquire(plane: ControlPlane, lab: str) -> bool:
    """Make sure nsm-local runs for `lab`; True if nsm-topo runs it (started now or for another lab)."""
    with _locked_record(plane.run_dir) as record:
        ours = record.get("process")
        started = isinstance(ours, dict) and alive(ProcessRecord.from_json(ours))
        if plane.running():
            if started:
                record["labs"] = sorted(_labs(record) | {lab})
            return started
        argv = [
            sys.executable,
            "-m",
            "nsm_local",
            "serve",
            "--listen",
            str(plane.url),
            "--workload-api",
            str(plane.workload_api),
            "--state-dir",  # its CA and records live and die with the labs that use it
            str(plane.run_dir / "nsm-local"),
        ]
        if plane.insecure:
            argv.append("--insecure")
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        log = plane.run_dir / "nsm-local.log"
        process = spawn("nsm-local", "-", argv, env, log)
        deadline = time.monotonic() + START_TIMEOUT
        while not plane.running():
            if not alive(process) or time.monotonic() > deadline:
                stop([process], 5)
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise ControlPlaneError("nsm-local did not start: " + " | ".join(tail))
            time.sleep(0.05)
        record.clear()
        record.update({"process": process.to_json(), "labs": [lab]})
        return True


def sole_user(plane: ControlPlane, lab: str) -> bool:
    """Whether nsm-topo started this nsm-local and `lab` is the only lab using it (its `release` will
    then stop it and remove everything it knows)."""
    with _locked_record(plane.run_dir) as record:
        ours = record.get("process")
        return isinstance(ours, dict) and alive(ProcessRecord.from_json(ours)) and _labs(record) == {lab}


def release(plane: ControlPlane, lab: str) -> None:
    """`lab` is down: stop nsm-local if nsm-topo started it and no other lab uses it (and then leave no
    trace of nsm-topo in the run directory)."""
    with _locked_record(plane.run_dir) as record:
        users = _labs(record) - {lab}
        ours = record.get("process")
        if users:
            record["labs"] = sorted(users)
            return
        if isinstance(ours, dict):
            stop([ProcessRecord.from_json(ours)], 10)
            (plane.run_dir / "nsm-local.log").unlink(missing_ok=True)
            shutil.rmtree(plane.run_dir / "nsm-local", ignore_errors=True)
        record.clear()
    with contextlib.suppress(OSError):  # only if nothing else is in it
        (plane.run_dir / ".lock").unlink()
        plane.run_dir.rmdir()


def apply_service(plane: ControlPlane, manifest: dict[str, object], delete: bool = False) -> None:
    services = load_network_services(yaml.safe_dump(manifest), "the topology's NetworkService")
    action = cli_client.delete if delete else cli_client.apply
    with open(os.devnull, "w") as quiet:
        asyncio.run(action(str(plane.url), services, plane.security, out=quiet))
