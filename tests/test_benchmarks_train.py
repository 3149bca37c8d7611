"""Smoke test of benchmarks/train_overhead.py: its --quick mode writes well-formed results.

The script runs in a child process: it starts (and shuts down) its own local Ray instance, which
must not meet the session's ``ray_local`` instance in this process. No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "train_overhead.py"

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and value > 0


def test_quick_run_writes_results_and_replaces_only_its_section(tmp_path: Path) -> None:
    out, docs = tmp_path / "results" / "train_overhead.json", tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Data path\n\nkept\n\n## Training overhead\n\nstale\n")
    args = ["--quick", "--out", str(out), "--docs", str(docs)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,  # 80-150 s measured on a 2-core machine shared with other jobs
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    report = json.loads(out.read_text())
    assert {"machine", "command", "timestamp", "settings", "summary", "rounds"} <= report.keys()
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"]
    assert {"ray", "torch"} <= machine["versions"].keys()
    assert report["command"] == "python benchmarks/train_overhead.py " + " ".join(args)
    settings = report["settings"]
    assert settings["quick"] is True and settings["torch_threads"] == 1
    assert settings["train_settings"]["torch_threads"] == 1  # the workers' threads, too

    runs = report["summary"]["runs"]
    assert set(runs) == {"plain", "ray_1", "ray_2"}
    for name, run in runs.items():
        for key in ("steps_per_s", "frames_per_s", "timed_epochs"):
            assert _positive(run[key]), (name, key, run[key])
    assert runs["ray_1"]["steps_per_epoch"] == runs["plain"]["steps_per_epoch"]
    overhead, scaling = report["summary"]["overhead"], report["summary"]["scaling"]
    assert _positive(overhead["ratio"]) and overhead["goal_ratio"] == 0.95
    assert overhead["same_steps"] is True and isinstance(overhead["met"], bool)
    assert _positive(scaling["speedup_2_vs_1"]) and _positive(scaling["efficiency"])

    (only_round,) = report["rounds"]
    assert only_round["ray_2"]["workers"] == 2
    for run in ("plain", "ray_1", "ray_2"):
        epochs = only_round[run]["epochs"]
        assert [e["epoch"] for e in epochs] == [1, 2], run
        assert all(_positive(e["seconds"]) and _positive(e["steps"]) for e in epochs), run
        assert only_round[run]["cpu"]["wall_s"] > 0

    page = docs.read_text()
    assert "stale" not in page and page.count("## Training overhead") == 1
    assert "## Data path\n\nkept" in page and "| Ray Train, 1 worker" in page
    assert "| Ray Train, 1 worker" in proc.stdout  # the section is printed too
