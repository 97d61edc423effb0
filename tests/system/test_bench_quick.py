"""`bench/run.py --quick`: every benchmark still runs end to end and prints its tables (issue 10, item 6).

Nothing here judges a time or a figure: the quick workloads are too small for that, and speed goals live
in the benchmarks' full runs (docs/performance.md). What must hold is that each one exits 0, prints at
least one table, and that the JSON names the machine and every benchmark run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]
QUICK = ["startup", "kernel", "rpc", "accept", "links", "lab_scale", "security", "pod_resources", "versus_go"]


def test_every_benchmark_runs_in_quick_mode_and_prints_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["machine"]["mode"] == "quick" and results["machine"]["cpus (nproc)"].isdigit()
    assert [r["name"] for r in results["results"]] == QUICK
    for result in results["results"]:
        assert result["exit_code"] == 0, result["output"][-3000:]
        assert "|---" in result["output"] or "| ---" in result["output"], (result["name"], result["output"])
    assert "| benchmark" in done.stdout and "not run (quick mode or --only): soak" in done.stdout


def test_an_unknown_benchmark_name_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--only",
            "kernel,nope",
            "--json",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "unknown nope" in done.stderr
    assert not (tmp_path / "x").exists()
