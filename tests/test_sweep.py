"""Sweeps on a local loopback Ray: trials in MLflow, an invalid point, best -> predict, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from varnext_ray.cli import main
from varnext_ray.search_space import load_space
from varnext_ray.settings import TrainSettings
from varnext_ray.sweep import STATE_LIMIT, SweepOptions, run_sweep
from varnext_ray.sweep_results import summary_table

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SMOKE = REPO / "search_spaces" / "smoke.json"
TRAIN = TrainSettings(epochs=2, batch_size=8, val_triplets=24)


def _runs(uri: str, experiment: str) -> list:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


@pytest.fixture(scope="module")
def sweep(ray_local, dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    space, base = load_space(SMOKE)
    outcome = run_sweep(
        space=space,
        base=base,
        data=dataset_dir,
        options=SweepOptions(samples=4, workers_per_trial=2, train=TRAIN),
        experiment="smoke-sweep",
        tracking_uri=uri,
        storage=tmp / "ray",
    )
    return tmp, uri, outcome


def test_four_trials_are_child_runs_with_metrics_and_artifacts(sweep) -> None:
    _, uri, outcome = sweep
    runs = _runs(uri, "smoke-sweep")
    parents = [r for r in runs if r.data.tags.get("varnext.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("varnext.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 4 and len(outcome.rows) == 4
    parent = parents[0]
    assert parent.info.run_id == outcome.parent_run_id and parent.info.status == "FINISHED"
    assert "best_extrap_psnr_motion" in parent.data.metrics
    client = mlflow.MlflowClient(uri)
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        for key in (
            "extrap_psnr",
            "copy_last_psnr",
            "oracle_psnr",
            "latent_linearity",
            "best_extrap_psnr_motion",
            "val_loss",
            "extrap_psnr_h1",
            "extrap_psnr_h2",
            "copy_last_psnr_h2",
        ):
            assert key in run.data.metrics, key
        assert "arch.latent_dim" in run.data.params and "point.lr" in run.data.params
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"arch", "strips", "checkpoint", "rollouts"} <= artifacts
        gifs = [a.path for a in client.list_artifacts(run.info.run_id, "rollouts")]
        assert gifs and all(g.endswith(".gif") for g in gifs)
        contexts = {  # the frame dataset, as MLflow dataset inputs
            i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"]
            for i in client.get_run(run.info.run_id).inputs.dataset_inputs
        }
        assert contexts == {"ds/train": "training", "ds/val": "validation"}
        assert "system/cpu_utilization_percentage" in run.data.metrics  # rank 0's monitor
    experiment = client.get_experiment_by_name("smoke-sweep")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    trial_ids = [r.data.tags["varnext.trial_id"] for r in children]
    assert sorted(trial_ids) == sorted(row["trial_id"] for row in outcome.rows)
    best = max(r.data.metrics["best_extrap_psnr_motion"] for r in children)
    assert parent.data.metrics["best_extrap_psnr_motion"] == pytest.approx(best)
    table = summary_table(outcome, "extrap_psnr")
    assert table.count("\n") == 5 and "conv " in table


def test_best_then_predict_writes_the_input_size(
    sweep, synth_dir: Path, tmp_path: Path, capsys
) -> None:
    _, uri, _ = sweep
    assert (
        main(
            [
                "best",
                "--experiment",
                "smoke-sweep",
                "--out",
                str(tmp_path / "best"),
                "--tracking-uri",
                uri,
            ]
        )
        == 0
    )
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in (0, 1):  # 96x54 frames, larger than the 64x36 model
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (54, 96, 3), np.uint8)).save(
            frames / f"{i}.png"
        )
    out = tmp_path / "pred.png"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tmp_path / "best"),
                "--out",
                str(out),
                str(frames / "0.png"),
                str(frames / "1.png"),
            ]
        )
        == 0
    )
    assert Image.open(out).size == (96, 54)
    capsys.readouterr()


def test_the_sweeps_best_trial_is_registered_and_predicts_from_the_registry(
    sweep, tmp_path: Path, capsys
) -> None:
    from varnext_ray.registry import register_sweep_best

    _, uri, outcome = sweep
    objective = load_space(SMOKE)[0].objective
    version = register_sweep_best(uri, "smoke-sweep", outcome.parent_run_id, "smoke-vae", objective)
    assert version is not None and version["model_uri"] == "models:/smoke-vae@champion"
    run = mlflow.MlflowClient(uri).get_run(version["run_id"])
    assert run.data.tags["varnext.trial_id"] == outcome.best["trial_id"]
    frames = []
    for i in (0, 1):
        frames.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (54, 96, 3), np.uint8)).save(
            frames[-1]
        )
    out = tmp_path / "pred.png"
    argv = ["predict", "--model", version["model_uri"], "--tracking-uri", uri, "--out", str(out)]
    assert main([*argv, *map(str, frames)]) == 0
    assert Image.open(out).size == (96, 54)
    capsys.readouterr()


def test_an_invalid_point_ends_only_that_trial(
    ray_local, dataset_dir: Path, tmp_path: Path
) -> None:
    # Every point of this space is invalid (latent_dim 0), whatever Optuna draws: each trial
    # fails alone with the validation message in its MLflow run, and the sweep goes on to the
    # next trial and finishes instead of raising. The space's own checks refuse latent_dim 0
    # when it is loaded; the loaded space is changed afterwards to stand for a point that no
    # check before the sweep can foresee.
    space_file = tmp_path / "space.json"
    space_file.write_text(
        json.dumps(
            {
                "name": "invalid",
                "base": str(REPO / "configs" / "smoke_64x36.json"),
                "latent_dim": [16],
                "lr": {"low": 0.002, "high": 0.01, "log": True},
            }
        )
    )
    space, base = load_space(space_file)
    space = space.model_copy(update={"latent_dim": [0]})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_sweep(
        space=space,
        base=base,
        data=dataset_dir,
        options=SweepOptions(
            samples=2, scheduler="fifo", workers_per_trial=2, train=replace(TRAIN, epochs=1)
        ),
        experiment="invalid",
        tracking_uri=uri,
        storage=tmp_path / "ray",
    )
    assert len(outcome.rows) == 2 and outcome.best is None
    assert all("latent_dim: must be >= 1 (got 0)" in r["error"] for r in outcome.rows)
    trials = [r for r in _runs(uri, "invalid") if r.data.tags.get("varnext.kind") == "trial"]
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FAILED"}
    for run in trials:
        assert "latent_dim: must be >= 1" in run.data.tags["failure_reason"]
        assert "epoch" not in run.data.metrics  # no training started
    parent = mlflow.MlflowClient(uri).get_run(outcome.parent_run_id)  # FINISHED before
    assert parent.info.status == "FAILED"
    reason = parent.data.tags["failure_reason"]
    assert (
        reason.startswith("no trial finished: 2 of 2 failed (the first: ")
        and "latent_dim" in reason
    )


def _sweep_cmd(data: Path, tmp: Path, head: dict) -> list[str]:
    return [
        sys.executable,
        "-m",
        "varnext_ray.cli",
        "sweep",
        "--space",
        str(SMOKE),
        "--data",
        str(data),
        "--samples",
        "2",
        "--epochs",
        "2",
        "--scheduler",
        "fifo",
        "--batch-size",
        "8",
        "--val-triplets",
        "24",
        "--experiment",
        "resume",
        "--tracking-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
        "--storage",
        str(tmp / "ray"),
        "--address",
        head["address"],
    ]


def test_killed_driver_resumes_without_duplicate_runs(
    ray_head, dataset_dir: Path, tmp_path: Path
) -> None:
    cmd = _sweep_cmd(dataset_dir, tmp_path, ray_head)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, env=ray_head["env"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
    )
    deadline = time.monotonic() + 400
    while not any(
        r.info.status == "FINISHED" and r.data.tags.get("varnext.kind") == "trial"
        for r in _runs(uri, "resume")
    ):
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(2)
    os.kill(proc.pid, signal.SIGKILL)  # mid-sweep: one trial done, the next one running
    proc.wait()
    log.close()
    # Another --samples (Tune restores its own count: the sweep looked cut short, exit 130 and
    # its run KILLED) or another store (a new database, then exit 1) is refused before Ray.
    state = sorted(p.name for p in (tmp_path / "ray").rglob("*"))
    for flag, value, said in [
        ("--samples", "3", "--samples 3 (was 2)"),
        ("--tracking-uri", f"sqlite:///{tmp_path / 'other.db'}", "--tracking-uri sqlite:///"),
    ]:
        changed = [*cmd]
        changed[changed.index(flag) + 1] = value
        refused = subprocess.run(
            [*changed, "--resume", "--address", "127.0.0.1:1"],  # Ray is never reached
            env=ray_head["env"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("error: --resume continues a sweep with the options")
        assert said in refused.stderr and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert not (tmp_path / "other.db").exists()
    assert sorted(p.name for p in (tmp_path / "ray").rglob("*")) == state
    done = subprocess.run(
        [*cmd, "--resume"],
        env=ray_head["env"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Notes of Ray, Ray Data, Tune and Optuna about what varnext chose; shown with -v only.
    for note in ("Progress bars disabled", "A new study created", "Wrote the latest version"):
        assert note not in done.stdout + done.stderr, done.stderr[-3000:]
    runs = _runs(uri, "resume")
    parents = [r for r in runs if r.data.tags.get("varnext.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("varnext.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [r.data.tags["varnext.trial_id"] for r in children]
    assert len(trial_ids) == len(set(trial_ids)) == 2  # one run per trial, none duplicated
    assert all(r.info.status == "FINISHED" and r.data.metrics["epoch"] == 2 for r in children)


@pytest.mark.parametrize("damaged", ["tuner.pkl", "experiment_state-2026-11-30_00-00-00.json"])
def test_a_sweep_whose_tune_state_is_cut_short_is_refused(tmp_path: Path, damaged: str) -> None:
    """A truncated ``tuner.pkl`` failed unpickling after Ray started (exit 1, the parent run
    left RUNNING); a truncated ``experiment_state`` made Tune start the sweep over."""
    import pickle

    from varnext_ray.errors import UserError
    from varnext_ray.sweep import check_resumable

    folder = tmp_path / "sweep-e-smoke"
    folder.mkdir()
    state = {"trials": [{"id": str(i), "config": {"lr": 0.001 * i}} for i in range(50)]}
    (folder / "tuner.pkl").write_bytes(pickle.dumps(state))
    (folder / "experiment_state-2026-11-30_00-00-00.json").write_text(json.dumps(state))
    check_resumable(str(folder))  # whole: taken
    whole = (folder / damaged).read_bytes()
    (folder / damaged).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match=r"the sweep's Tune state is damaged \("):
        check_resumable(str(folder))
    (folder / damaged).unlink()
    os.mkfifo(folder / damaged)  # its read blocked until the sweep was killed
    with pytest.raises(UserError, match=r"Tune state is a named pipe \(FIFO\), not a regular"):
        check_resumable(str(folder))
    (folder / damaged).unlink()
    with open(folder / damaged, "wb") as f:  # sparse: read whole, it filled the memory
        f.truncate(STATE_LIMIT + 1)
    with pytest.raises(UserError, match=r"Tune state is larger than the 256 MiB limit"):
        check_resumable(str(folder))


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_run_record_that_is_not_a_file_is_refused_not_ignored(tmp_path: Path, kind: str) -> None:
    """A named pipe or a folder at ``varnext_sweep.json`` read as no record: a resume skipped
    every check of its options, and would have written a new record over it."""
    import os

    from varnext_ray import run_records
    from varnext_ray.errors import UserError

    record = tmp_path / "varnext_sweep.json"
    record.mkdir() if kind == "folder" else os.mkfifo(record)
    with pytest.raises(UserError, match=r"the run record is (a folder|not a regular file)"):
        run_records.read_json_record(tmp_path, "varnext_sweep.json")
    assert run_records.read_json_record(tmp_path, "absent.json") is None


def test_a_resume_with_other_options_names_each_difference(tmp_path: Path) -> None:
    """The record beside Tune's state is compared field by field: a flag by its name, a setting
    without a flag (a default of another varnext version) as a setting, the space by its digest."""
    from varnext_ray import run_records
    from varnext_ray.errors import UserError
    from varnext_ray.sweep import SWEEP_FILE, check_resume_matches, started_with

    space, base = load_space(REPO / "search_spaces" / "smoke.json")
    first = started_with(space, base, SweepOptions(samples=3), tmp_path / "ds", "sqlite:///a.db")
    run_records.write_record(tmp_path, {"run_id": "r1", **first}, SWEEP_FILE)
    check_resume_matches(str(tmp_path), first)  # the same command: taken
    edited = dict(base, latent_dim=base["latent_dim"] + 1)
    train = replace(SweepOptions(samples=3).settings(space), torch_threads=2)
    now = started_with(
        space, edited, SweepOptions(samples=4, train=train), tmp_path / "other", "sqlite:///a.db"
    )
    with pytest.raises(UserError) as refused:
        check_resume_matches(str(tmp_path), now)
    said = str(refused.value)
    assert "4 differ: --data " in said and f"(was {tmp_path / 'ds'})" in said
    assert "--space (the search space or its base architecture changed)" in said
    assert "--samples 4 (was 3)" in said and "the setting torch_threads 2 (was 1)" in said
    assert "--tracking-uri" not in said


def test_every_recorded_sweep_flag_is_a_flag_of_varnext_sweep() -> None:
    import argparse

    from varnext_ray.cli import build_parser
    from varnext_ray.sweep import _SWEEP_FLAGS

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    flags = {s for a in commands.choices["sweep"]._actions for s in a.option_strings}
    assert {f"--{key.replace('_', '-')}" for key in _SWEEP_FLAGS} <= flags
