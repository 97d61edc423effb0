"""A real one-node Kubernetes cluster for the kube tier: scripts/kube-up.sh and kube-down.sh, kubectl, and
nsm-local as the node's NSM (`nsm-local kube-manifest`), as docs/kubernetes.md tells a person to do it.

`KubeCluster.up` starts the cluster unless one is already up in the same state directory (then it is
reused and left up: a developer's cluster), `down` stops what `up` started and checks nothing is left.
`diagnostics` gathers what a failed test attaches: pods, events, every container's log (sidecars
included), nsm-local's log and the tail of each component's log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = Path(os.environ.get("NSM_KUBE_STATE_DIR", "/var/lib/nsm-kube"))
NSM_NAMESPACE = "nsm-system"


def run(argv: list[str], timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


@dataclass
class KubeCluster:
    state_dir: Path = STATE_DIR
    started: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def env(self) -> dict[str, str]:
        """KUBECONFIG, and the cluster's own kubectl (the server's version) first on PATH."""
        path = f"{self.state_dir / 'bin'}:{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def _script(self, name: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        argv = ["bash", str(ROOT / "scripts" / name), "--state-dir", str(self.state_dir), *args]
        return run(argv, timeout=timeout, env=self.env)

    def is_up(self) -> bool:
        if not self.kubeconfig.exists():
            return False
        return self.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0

    def up(self) -> None:
        already = self.is_up()
        result = self._script("kube-up.sh", timeout=1800)
        assert result.returncode == 0, f"kube-up.sh failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        self.started = not already

    def down(self) -> str:
        """Stop what `up` started; kube-down.sh's own check of what is left (exit 1 if anything)."""
        if not self.started:
            return ""
        result = self._script("kube-down.sh", timeout=600)
        assert result.returncode == 0, f"kube-down.sh left something:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        kubectl = self.state_dir / "bin" / "kubectl"
        result = run([str(kubectl), *args], timeout=timeout, env=self.env, input=stdin)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr.strip()}"
        return result

    def objects(self, *what: str, namespace: str | None = None) -> list[dict[str, Any]]:
        where = ["-n", namespace] if namespace else ["-A"]
        items: list[dict[str, Any]] = json.loads(self.kubectl("get", *what, *where, "-o", "json").stdout)[
            "items"
        ]
        return items

    def apply_yaml(self, text: str) -> None:
        self.kubectl("apply", "-f", "-", stdin=text)

    # ---- nsm-local as the node's NSM -------------------------------------------------------------------

    def install_nsm_local(self) -> None:
        manifest = run([sys.executable, "-m", "nsm_local", "kube-manifest"], timeout=60)
        assert manifest.returncode == 0, manifest.stderr
        self.apply_yaml(manifest.stdout)
        rollout = self.kubectl(
            "-n", NSM_NAMESPACE, "rollout", "status", "daemonset/nsm-local", "--timeout=180s", timeout=200
        )
        assert rollout.returncode == 0, rollout.stderr

    def nsm_local(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`nsm-local ARGS` inside the DaemonSet's pod: the operator's view (list, ...)."""
        return self.kubectl(
            "-n", NSM_NAMESPACE, "exec", "ds/nsm-local", "--", "nsm-local", *args, check=check
        )

    # ---- pods ---------------------------------------------------------------------------------------------

    def exec(
        self, namespace: str, pod: str, *argv: str, container: str = "router", timeout: float = 60
    ) -> Any:
        return self.kubectl(
            "-n", namespace, "exec", pod, "-c", container, "--", *argv, check=False, timeout=timeout
        )

    def wait_ready(self, namespace: str, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pods = {p["metadata"]["name"]: p for p in self.objects("pods", namespace=namespace)}
            waiting = [name for name in names if not _ready(pods.get(name))]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"pods not Ready after {timeout}s: {', '.join(waiting)}")
            time.sleep(1)

    # ---- what a failed test attaches ----------------------------------------------------------------------

    def diagnostics(self, namespace: str | None) -> str:
        parts: list[str] = []

        def add(title: str, text: str) -> None:
            parts.append(f"===== {title}\n{text.rstrip()}\n")

        for args in (
            ("get", "nodes,pods", "-A", "-o", "wide"),
            ("get", "events", "-A", "--sort-by=.lastTimestamp"),
        ):
            result = self.kubectl(*args, check=False, timeout=30)
            add("kubectl " + " ".join(args), result.stdout + result.stderr)
        for ns in filter(None, (namespace, NSM_NAMESPACE)):
            for pod in self.objects("pods", namespace=ns):
                spec = pod["spec"]
                for container in [*spec.get("initContainers", []), *spec["containers"]]:
                    for previous in ("false", "true"):
                        logs = self.kubectl(
                            "-n", ns, "logs", pod["metadata"]["name"], "-c", container["name"],
                            f"--previous={previous}", "--tail=200", check=False, timeout=30,
                        )  # fmt: skip
                        if logs.stdout.strip():
                            title = f"logs {ns}/{pod['metadata']['name']}/{container['name']}"
                            add(title + (" (previous)" if previous == "true" else ""), logs.stdout)
        for log in sorted((self.state_dir / "logs").glob("*.log")):
            add(str(log), "\n".join(log.read_text(errors="replace").splitlines()[-60:]))
        return "\n".join(parts)


def _ready(pod: dict[str, Any] | None) -> bool:
    if pod is None or pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
