"""Smoke test of benchmarks/trial_overhead.py: its --quick mode writes well-formed results.

The script runs in a child process with its own local Ray instance (started and shut down by
it). No timing is asserted: only that each arm's trials logged where their time went.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "trial_overhead.py"

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def test_quick_run_records_each_arms_overhead_and_its_parts(tmp_path: Path) -> None:
    out, docs = tmp_path / "trial_overhead.json", tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Trial overhead\n\nstale\n\n## Data path\n\nkept\n")
    args = ["--quick", "--out", str(out), "--docs", str(docs)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=480,  # ~90 s on an idle 2-core machine
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["command"] == "python benchmarks/trial_overhead.py " + " ".join(args)
    arms = {r["arm"] for r in report["runs"]}
    assert arms == {"shared", "per-trial", "empty fit"}
    shared = next(r for r in report["runs"] if r["arm"] == "shared")
    alone = next(r for r in report["runs"] if r["arm"] == "per-trial")
    assert shared["data_prepare_seconds"] > 0 and alone["data_prepare_seconds"] == 0
    assert shared["sweep_seconds"] > 0 and alone["sweep_seconds"] > 0
    (empty,) = [r for r in report["runs"] if r["arm"] == "empty fit"]
    assert len(empty["seconds"]) == 1 and empty["seconds"][0] > 0  # one per trial of a sweep
    assert report["summary"]["empty_fit"]["seconds"] == empty["seconds"][0]
    # the run split where its workers' loop starts and ends: the parts do not overlap, so
    # they fit in the whole (give or take float rounding)
    to_loop, after_loop = empty["to_loop"][0], empty["after_loop"][0]
    assert to_loop > 0 and after_loop > 0
    assert to_loop + after_loop <= empty["seconds"][0] + 1e-6
    for run in (shared, alone):
        (trial,) = run["trials"]  # --quick: one trial per sweep, which ran to its end
        parts = sum(trial[k] for k in ("overhead_setup_seconds", "overhead_workers_seconds",
                                       "overhead_loop_seconds"))  # fmt: skip
        assert trial["overhead_seconds"] == pytest.approx(parts)
    summary = report["summary"]
    assert summary["ratio"] > 0 and summary["goal_s"] == 10 and isinstance(summary["met"], bool)
    assert all(isinstance(summary[arm]["around_s"], float) for arm in ("shared", "per-trial"))
    page = docs.read_text()
    assert "stale" not in page and "## Data path\n\nkept" in page
    assert "| shared | 1 |" in page and "| per-trial | 1 |" in page
    assert "Bound: a Ray Train run of the same worker group whose loop does nothing" in page
    assert f"{to_loop:.1f} s from `fit()` until its workers' loop starts" in page


def test_around_trials_is_the_sweeps_time_no_trial_measured_per_trial() -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.trial_overhead import around_trials

    trials = [
        {"overhead_seconds": 5.0, "epochs_seconds": 2.0},
        {"overhead_seconds": 6.0, "epochs_seconds": 4.0},
    ]
    run = {"sweep_seconds": 30.0, "data_prepare_seconds": 3.0, "trials": trials}
    assert around_trials(run) == pytest.approx((30 - 3 - 17) / 2)
