"""Smoke tests of benchmarks/sweep_efficiency.py and benchmarks/quality.py, and the arithmetic
that turns a sweep's reports into "compute to reach random search's best".

The scripts run in child processes: each starts (and shuts down) its own local Ray instance,
which must not meet the session's ``ray_local`` instance in this process. No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.sweep_efficiency import (
    ComputeCap,
    asha_replay,
    compare,
    compute_to_reach,
    expected_compute_to_reach,
    replay_grid,
    split_fifo_curves,
    summarise,
)

REPO = Path(__file__).resolve().parent.parent


def _run(script: str, args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,  # 60-110 s measured on a 2-core machine shared with other jobs
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_compute_to_reach_counts_trial_epochs_in_order() -> None:
    assert compute_to_reach([10.0, 12.0, 11.0, 15.0], 12.0, "max") == 2
    assert compute_to_reach([10.0, 12.0], 13.0, "max") is None
    assert compute_to_reach([5.0, 3.0, 1.0], 3.0, "min") == 2


def test_compare_takes_the_target_from_random_search_per_seed() -> None:
    runs = [
        {"method": "random_fifo", "seed": 0, "trial_epochs": 8, "best": 20.0,
         "objective_by_trial_epoch": [10, 12, 14, 15, 16, 18, 19.7, 20]},
        {"method": "tpe_asha", "seed": 0, "trial_epochs": 5, "best": 19.8,
         "objective_by_trial_epoch": [11, 19.8, 13, 14, 15]},
    ]  # fmt: skip
    (row,) = compare(runs, "max")
    assert row["target"] == pytest.approx(19.6)  # 2 % below random search's best
    assert row["compute_to_target"] == {"tpe_asha": 2, "random_fifo": 7}
    assert row["ratio"] == pytest.approx(2 / 7, abs=1e-3)
    runs[1]["objective_by_trial_epoch"] = [11, 12]
    (row,) = compare(runs, "max")
    assert row["compute_to_target"]["tpe_asha"] is None and row["ratio"] is None


def test_random_searchs_compute_averaged_over_every_order_of_its_trials() -> None:
    import itertools
    import statistics

    # two trials reach 20 (at epochs 3 and 1), three never do (4, 4 and 2 epochs long)
    curves = [[10.0, 11.0, 12.0, 13.0], [5.0, 6.0, 20.0], [9.0, 9.0, 9.0, 9.0], [21.0], [1.0, 2.0]]
    brute = statistics.mean(
        compute_to_reach([v for i in order for v in curves[i]], 20.0, "max")
        for order in itertools.permutations(range(len(curves)))
    )
    assert expected_compute_to_reach(curves, 20.0, "max") == pytest.approx(brute)
    assert brute == pytest.approx(10 / 3 + 2)  # the misses' 10 epochs / 3, the hits' mean
    assert expected_compute_to_reach(curves, 99.0, "max") is None
    runs = [
        {"method": "random_fifo", "seed": 0, "trial_epochs": 14, "best": 21.0,
         "objective_by_trial_epoch": [v for c in curves for v in c],
         "objective_by_trial": curves},
        {"method": "tpe_asha", "seed": 0, "trial_epochs": 2, "best": 20.8,
         "objective_by_trial_epoch": [11, 20.8]},
    ]  # fmt: skip
    (row,) = compare(runs, "max", "psnr", epochs=4)  # target 20.58: only the 21 reaches it
    assert row["compute_to_target"]["random_fifo"] == 12 and row["ratio"] == 0.167
    assert row["random_expected"] == pytest.approx(13 / 2 + 1)  # 13 epochs of misses, halved
    assert row["expected_ratio"] == pytest.approx(2 / 7.5, abs=1e-3)
    assert summarise([row], runs)["expected_median_ratio"] == row["expected_ratio"]


def test_older_results_get_random_searchs_curves_only_where_the_split_is_exact() -> None:
    old = {"method": "random_fifo", "trials": 2, "objective_by_trial_epoch": [1, 2, 3, 4, 5, 6]}
    split_fifo_curves(old, 3)
    assert old["objective_by_trial"] == [[1, 2, 3], [4, 5, 6]]
    for run in (
        {"method": "random_fifo", "trials": 3, "objective_by_trial_epoch": [1, 2, 3, 4, 5, 6]},
        {"method": "tpe_asha", "trials": 2, "objective_by_trial_epoch": [1, 2, 3, 4, 5, 6]},
    ):  # a trial cut short (5 of 6 epochs by 3 trials), or ASHA's trials of unknown lengths
        split_fifo_curves(run, 3)
        assert "objective_by_trial" not in run


def test_asha_replay_cuts_random_searchs_trials_where_the_scheduler_stops_them() -> None:
    # varnext's ASHA (grace 1, halving, max_t = epochs + 1): the first trial sets rung 1, the
    # second is below it at epoch 1 and stops there; the third is above and goes on.
    curves = [[10.0, 11.0, 12.0, 13.0], [5.0, 6.0, 7.0, 8.0], [12.0, 14.0, 16.0, 20.0]]
    assert asha_replay(curves, 20.0, "psnr", "max", epochs=4) == 4 + 1 + 4
    assert compute_to_reach([v for c in curves for v in c], 20.0, "max") == 12  # no stopping
    assert asha_replay(curves, 99.0, "psnr", "max", epochs=4) is None
    losses = [[-v for v in c] for c in curves]  # "min": the same decisions
    assert asha_replay(losses, -20.0, "loss", "min", epochs=4) == 9
    runs = [
        {"method": "random_fifo", "seed": 0, "trial_epochs": 12, "best": 20.0,
         "objective_by_trial_epoch": [v for c in curves for v in c],
         "objective_by_trial": curves},
        {"method": "tpe_asha", "seed": 0, "trial_epochs": 3, "best": 19.8,
         "objective_by_trial_epoch": [11, 19.8, 13]},
    ]  # fmt: skip
    (row,) = compare(runs, "max", "psnr", epochs=4)
    assert row["random_asha_replay"] == 9 and row["replay_ratio"] == 0.75
    assert summarise([row], runs)["replay_median_ratio"] == 0.75


def test_the_replay_grid_tries_each_asha_setting_on_every_seed(tmp_path: Path) -> None:
    # seed 0: the second trial reaches 20 at its last epoch; seed 1: the first trial does
    late = [[10.0, 11.0, 12.0, 13.0], [5.0, 6.0, 7.0, 20.0], [12.0, 14.0, 16.0, 17.0]]
    early = [[18.0, 19.0, 19.5, 20.0], [5.0, 6.0, 7.0, 8.0]]
    runs = [
        {"method": "random_fifo", "seed": seed, "trial_epochs": 4 * len(curves), "best": 20.0,
         "objective_by_trial_epoch": [v for c in curves for v in c],
         "objective_by_trial": curves}
        for seed, curves in ((0, late), (1, early))
    ]  # fmt: skip
    grid = {(g["reduction_factor"], g["grace_period"]): g for g in replay_grid(runs, "max", "p", 4)}
    assert len(grid) == 9
    # grace 1, halving: trial 2 is below trial 1 at epoch 1 and stops: 20 is never seen
    assert grid[2, 1]["ratios"] == [None, 1.0] and grid[2, 1]["median_ratio"] is None
    # grace 3: trial 2 runs on to epoch 3 (stopped there too: 7 < 12), never reaching 20
    assert grid[2, 3]["ratios"] == [None, 1.0]
    assert all(g["ratios"][1] == 1.0 for g in grid.values())  # the first trial: 1 at best
    # --from-json analyses saved runs again without training and writes the grid's table
    saved = {
        "benchmark": "sweep_efficiency", "timestamp": "T", "command": "c",
        "machine": {"cores": 2, "cpu_model": "cpu"},
        "settings": {"space": "s.json", "samples": 3, "epochs": 4, "seeds": [0, 1],
                     "objective": "p", "direction": "max", "equal": "compute"},
        "runs": runs + [
            {"method": "tpe_asha", "seed": seed, "trial_epochs": 2, "best": 19.9,
             "objective_by_trial_epoch": [15.0, 19.9]}
            for seed in (0, 1)
        ],
    }  # fmt: skip
    path, docs = tmp_path / "se.json", tmp_path / "bench.md"
    path.write_text(json.dumps(saved))
    docs.write_text("# Benchmarks\n\n## Sweep efficiency\n\nold\n")
    proc = _run("sweep_efficiency.py", ["--from-json", str(path), "--docs", str(docs)])
    again = json.loads(path.read_text())
    assert again["timestamp"] == "T" and again["reanalysed"]["command"].endswith(str(docs))
    assert [r["compute_to_target"]["tpe_asha"] for r in again["comparison"]] == [2, 2]
    assert len(again["replay_grid"]) == 9 and "| 4 | 3 |" in docs.read_text()
    assert "first trial reached the target in seed(s) 1:" in proc.stdout
    # results analysed again into another file are not the page's kept run: docs if asked
    from benchmarks.harness import DOCS
    from benchmarks.sweep_efficiency import parse_args

    assert parse_args(["--from-json", str(path)]).docs is None
    assert parse_args(["--from-json", str(path), "--docs", str(docs)]).docs == docs
    kept = REPO / "benchmarks" / "results" / "sweep_efficiency.json"
    assert parse_args(["--from-json", str(kept)]).docs == DOCS


def test_a_seed_that_never_reaches_the_target_counts_as_the_worst_ratio() -> None:
    def row(ratio: float | None) -> dict:
        return {"ratio": ratio, "compute_to_target": {"tpe_asha": None if ratio is None else 1}}

    runs = [{"method": m, "trial_epochs": 9} for m in ("random_fifo", "tpe_asha")]
    two_never = summarise([row(0.2), row(None), row(None)], runs)
    assert two_never["median_ratio"] is None and two_never["median_is_never"]
    assert two_never["ratios"] == [0.2] and two_never["tpe_asha_reached"] == 1
    one_never = summarise([row(0.2), row(0.5), row(None)], runs)
    assert one_never["median_ratio"] == 0.5 and not one_never["median_is_never"]


def test_compute_cap_ends_the_sweep_at_the_target_or_the_budget() -> None:
    cap = ComputeCap(cap=3, metric="psnr", target=20.0, direction="max")
    assert cap("t1", {"psnr": 19.0}) is False and not cap.stop_all()
    assert cap("t1", {"psnr": float("nan")}) is False and not cap.stop_all()
    cap("t2", {"psnr": 18.0})
    assert cap.stop_all() and cap.spent == 3  # the budget
    early = ComputeCap(cap=100, metric="loss", target=0.5, direction="min")
    early("t1", {"loss": 0.9})
    assert not early.stop_all()
    early("t1", {"loss": 0.4})
    assert early.stop_all() and early.spent == 2  # the target


@pytest.mark.slow
@pytest.mark.cluster
def test_sweep_efficiency_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "se.json"
    proc = _run("sweep_efficiency.py", ["--quick", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] >= 1 and "ray" in report["machine"]["versions"]
    assert report["settings"]["seeds"] == [0] and report["settings"]["samples"] == 4
    runs = {r["method"]: r for r in report["runs"]}
    assert set(runs) == {"tpe_asha", "random_fifo"}
    # random search with FIFO trains every trial to the end; TPE+ASHA (equal compute) may
    # spend as many trial-epochs, and its sweep ends when a trial reaches the target
    assert runs["random_fifo"]["trial_epochs"] == 4 * 2 and runs["random_fifo"]["trials"] == 4
    for run in runs.values():
        assert len(run["objective_by_trial_epoch"]) == run["trial_epochs"]
        assert sum(map(len, run["objective_by_trial"])) == run["trial_epochs"]
    (row,) = report["comparison"]
    replay = row["random_asha_replay"]  # ASHA replayed on random search's 4 trials
    assert replay is None or replay <= row["compute_to_target"]["random_fifo"]
    assert row["compute_to_target"]["random_fifo"] <= 8
    need = row["compute_to_target"]["tpe_asha"]
    assert runs["tpe_asha"]["trial_epochs"] == (4 * 2 if need is None else need)
    assert report["settings"]["equal"] == "compute"
    assert "## Sweep efficiency" in proc.stdout and not (REPO / "se.json").exists()


@pytest.mark.slow
@pytest.mark.cluster
def test_quality_quick_run(tmp_path: Path) -> None:
    out, docs = tmp_path / "q.json", tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Data path\n\nkept\n")
    proc = _run("quality.py", ["--quick", "--out", str(out), "--docs", str(docs)])
    report = json.loads(out.read_text())
    arms = report["arms"]
    assert [(a["dataset"], a["arm"]) for a in arms] == [
        ("demo", "spatial-calibrated-0"),
        ("demo", "flat-mse-1"),
    ]
    assert [a["train_on"] for a in arms] == ["frames", "triplets"]  # lambda > 0 reads triplets
    for arm in arms:
        assert arm["steps"] > 0 and arm["wall_seconds"] > 0
        assert set(arm["by_stride"]) == {"1", "3"} and arm["metrics"] == arm["by_stride"]["1"]
        for m in arm["by_stride"].values():
            assert m["split"] == "test" and m["triplets"] > 0
            for key in ("oracle_psnr", "background_psnr", "latent_copy_psnr", "copy_last_psnr"):
                assert 0 < m[key] <= 100, key
            assert "extrap_gain_db_motion" in m and m["latent_elements"] >= m["active_units"]
    assert arms[0]["latent"]["kind"] == "spatial" and arms[1]["latent"]["kind"] == "flat"
    assert set(report["best"]) == {"demo"} and report["best"]["demo"]["bar_db"] == 3.0
    page = docs.read_text()
    assert "## Data path\n\nkept" in page and "| flat-mse-1 | 3 |" in page
    assert "**Best: `" in page and "## Extrapolation quality" in proc.stdout
    # an arm measured with the same settings is reused, not trained again
    again = tmp_path / "again.json"
    _run(
        "quality.py",
        ["--quick", "--arms", "flat-mse-1", "--keep", str(out), "--out", str(again)],
    )
    assert json.loads(again.read_text())["arms"][0]["kept_from"] == report["timestamp"]


def test_run_all_summary_puts_goals_beside_results_under_the_title(tmp_path: Path) -> None:
    from benchmarks.run_all import summary, write_summary

    results = tmp_path / "results"
    results.mkdir()
    for name in ("train_overhead", "gpu_step"):  # results as the scripts wrote them
        source = REPO / "benchmarks" / "results" / f"{name}.json"
        (results / f"{name}.json").write_text(source.read_text())
    section = summary(results, [{"name": "quality", "exit": 1, "seconds": 3.0}])
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 6
    overhead = json.loads((results / "train_overhead.json").read_text())["summary"]["overhead"]
    assert f"| >= 0.95 | {overhead['ratio']:.2f}x |" in rows[1]
    assert all("not run" in rows[i] for i in (0, 2, 4, 5))
    assert "Failed in the last run: quality." in section
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Data path\n\nkept\n")
    write_summary(docs, section)
    write_summary(docs, section)  # replaced, not added twice
    page = docs.read_text()
    assert page.startswith("# Benchmarks\n\n## Summary\n") and page.count("## Summary") == 1
    assert page.rstrip().endswith("## Data path\n\nkept")


def test_the_sweep_row_says_when_the_median_seed_never_reached_the_target() -> None:
    from benchmarks.run_all import _sweep_efficiency

    rows = [{"ratio": r, "compute_to_target": {"tpe_asha": r and 1}} for r in (0.3, None, None)]
    runs = [{"method": m, "trial_epochs": 9} for m in ("random_fifo", "tpe_asha")]
    settings = {"equal": "compute"}
    result = {"summary": summarise(rows, runs), "comparison": rows, "settings": settings}
    _, goal, figure, verdict = _sweep_efficiency(result)
    assert goal == "<= 0.25" and verdict == "not met"
    assert figure == "never (median seed) (reached in 1 of 3 seeds, 0.30-0.30 where reached)"
    rows[1]["ratio"], rows[1]["compute_to_target"]["tpe_asha"] = 0.2, 1
    result["summary"] = summarise(rows, runs)
    assert _sweep_efficiency(result)[2] == "0.30 (reached in 2 of 3 seeds, 0.20-0.30 where reached)"
