"""Smoke test of benchmarks/data_path.py: its --quick mode writes well-formed results.

The script runs in a child process: it starts (and shuts down) its own local Ray instances, which
must not meet the session's ``ray_local`` instance in this process. No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.data_path import VARIANTS

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "data_path.py"

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and value > 0


def test_quick_run_writes_results_and_replaces_only_its_section(tmp_path: Path) -> None:
    out, docs = tmp_path / "results" / "data_path.json", tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Data path\n\nstale numbers\n\n## Training\n\nkept\n")
    args = ["--quick", "--out", str(out), "--docs", str(docs), "--workdir", str(tmp_path / "w")]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    report = json.loads(out.read_text())
    assert {"machine", "command", "timestamp", "settings", "results", "goal"} <= report.keys()
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"]
    assert {"ray", "torch", "pyarrow"} <= machine["versions"].keys()
    assert report["command"] == "python benchmarks/data_path.py " + " ".join(args)
    assert report["settings"]["quick"] is True

    results = report["results"]
    assert sorted(r["encoding"] for r in results) == ["jpeg", "png", "raw"]
    for res in results:
        for key in ("frames", "bytes_per_frame", "ingest_fps", "baseline_fps"):
            assert _positive(res[key]), (res["encoding"], key, res[key])
        assert [r["cpus"] for r in res["ray"]] == report["settings"]["cpus"]
        for run in res["ray"]:
            for key in ("fps", "fps_per_core", "baseline_fps", "ratio_vs_baseline"):
                assert _positive(run[key]), (res["encoding"], key, run[key])
            assert set(run["variants"]) == set(VARIANTS)
            for variant in run["variants"].values():
                assert variant["frames"] == res["frames"] and _positive(variant["fps"])
    assert {"target_fps_per_core", "met", "best"} <= report["goal"].keys()

    page = docs.read_text()
    assert "stale numbers" not in page and page.count("## Data path") == 1
    assert "## Training\n\nkept" in page and "| 64x36 | raw |" in page
    assert "| 64x36 | raw |" in proc.stdout  # the table is printed too
