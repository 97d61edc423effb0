"""`nsm-topo manifest` / `apply` / `delete` on the command line: what they write, and bad input as one line
(exit 2 for arguments and files, exit 1 for a cluster that cannot be used)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nsm_topo.__main__ import main

TRIANGLE = Path(__file__).resolve().parents[2] / "examples" / "triangle" / "topology.yml"


def _one_line_exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nsm-topo: "), err
    return exited.value.code, err


def test_manifest_writes_one_yaml_stream_to_stdout_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    main(["manifest", str(TRIANGLE), "--namespace", "labs", "--tag", "7.7"])
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("NetworkService", "triangle"),
        ("ConfigMap", "frr-a-config"),
        ("Pod", "frr-a"),
        ("ConfigMap", "frr-b-config"),
        ("Pod", "frr-b"),
        ("ConfigMap", "frr-c-config"),
        ("Pod", "frr-c"),
    ]
    assert {o["metadata"]["namespace"] for o in objects} == {"labs"}
    assert objects[2]["spec"]["initContainers"][0]["image"] == "nse-sidecar:7.7"


def _pod(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    main(["manifest", str(TRIANGLE), *argv])
    pod: dict[str, Any] = list(yaml.safe_load_all(capsys.readouterr().out))[2]
    return pod


def _workload_api(pod: dict[str, Any]) -> dict[str, Any]:
    volume: dict[str, Any] = next(v for v in pod["spec"]["volumes"] if v["name"] == "spire-agent-socket")
    return volume


def test_manifest_defaults_to_nsm_with_the_spiffe_csi_driver_and_native_sidecars(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pod = _pod([], capsys)
    assert _workload_api(pod)["csi"] == {"driver": "csi.spiffe.io", "readOnly": True}
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["nse-sidecar", "nsc-sidecar"]
    assert {c["imagePullPolicy"] for c in pod["spec"]["initContainers"]} == {"IfNotPresent"}


def test_control_plane_nsm_local_takes_the_workload_api_from_the_node_and_local_images_are_never_pulled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pod = _pod(
        ["--control-plane", "nsm-local", "--pull-policy", "Never", "--image-prefix", "localhost/"], capsys
    )
    assert _workload_api(pod)["hostPath"] == {"path": "/run/spire/sockets", "type": "Directory"}
    containers = [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]
    assert {c["imagePullPolicy"] for c in containers} == {"Never"}
    assert pod["spec"]["initContainers"][0]["image"].startswith("localhost/nse-sidecar:")


def test_spire_volume_with_the_nsm_local_control_plane_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["manifest", str(TRIANGLE), "--control-plane", "nsm-local", "--spire-volume", "csi"]
    code, err = _one_line_exit(argv, capsys)
    assert code == 2 and "--spire-volume is for --control-plane nsm" in err


def test_spire_volume_hostpath_still_chooses_spires_socket_directory_for_nsm(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pod = _pod(["--spire-volume", "hostpath"], capsys)
    assert _workload_api(pod)["hostPath"] == {"path": "/run/spire/sockets", "type": "Directory"}


def test_sidecars_classic_puts_them_beside_the_router_for_older_clusters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pod = _pod(["--sidecars", "classic"], capsys)
    assert "initContainers" not in pod["spec"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["router", "nse-sidecar", "nsc-sidecar"]


def test_manifest_into_a_directory_writes_one_numbered_file_per_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["manifest", str(TRIANGLE), "-o", str(tmp_path / "out")])
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert (
        files[0] == "000-networkservice-triangle.yaml"
        and files[-1] == "006-pod-frr-c.yaml"
        and len(files) == 7
    )
    pod = yaml.safe_load((tmp_path / "out" / "002-pod-frr-a.yaml").read_text())
    assert pod["kind"] == "Pod" and pod["metadata"]["labels"]["topo"] == "triangle"
    assert "7 objects" in capsys.readouterr().out


def test_manifest_of_a_bad_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yml"
    path.write_text('links:\n  - endpoints: ["r1:eth1", "r1:eth2"]\n')
    code, err = _one_line_exit(["manifest", str(path)], capsys)
    assert code == 2 and "both ends are on device r1" in err


def test_a_bad_namespace_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _one_line_exit(["manifest", str(TRIANGLE), "-n", "Not_A_Namespace"], capsys)
    assert code == 2 and "--namespace 'Not_A_Namespace'" in err


def test_apply_without_a_usable_kubeconfig_says_how_to_point_at_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, err = _one_line_exit(["apply", str(TRIANGLE), "--kubeconfig", str(tmp_path / "none")], capsys)
    assert code == 1 and "--kubeconfig FILE" in err


def test_delete_against_an_unreachable_cluster_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    code, err = _one_line_exit(["delete", str(TRIANGLE), "--kubeconfig", str(config)], capsys)
    assert code == 1 and "cannot reach the cluster at https://127.0.0.1:9" in err


def test_manifest_does_not_import_the_kubernetes_client(tmp_path: Path) -> None:
    script = (
        "import sys\nfrom nsm_topo.__main__ import main\n"
        f"main(['manifest', {str(TRIANGLE)!r}, '-o', {str(tmp_path)!r}])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
