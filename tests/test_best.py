"""best: picking the best run of an MLflow experiment (SQLite and HTTP stores) and pulling
its checkpoint."""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import nearly_full_tmpfs, smoke_checkpoint
from varnext_ray import tracking
from varnext_ray.artifacts import ARTIFACT_FIX
from varnext_ray.best import download_best, find_best_run
from varnext_ray.checkpoint_load import load_checkpoint
from varnext_ray.cli import build_parser, main
from varnext_ray.errors import UserError
from varnext_ray.registry import register_best
from varnext_ray.search_space import SearchSpace
from varnext_ray.settings import TrainSettings
from varnext_ray.synth import write_synthetic

EXPERIMENT = "best-test"
# name: (varnext.kind, best_extrap_psnr, best_val_loss, has a checkpoint, final status)
RUNS = {
    "train-low": ("train", 12.0, 0.5, True, "FINISHED"),
    "trial-best": ("trial", 20.0, 0.9, True, "FINISHED"),
    "trial-failed": ("trial", 30.0, 0.1, True, "FAILED"),
    "trial-no-checkpoint": ("trial", 25.0, 0.2, False, "FINISHED"),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite MLflow store: the runs of RUNS nested under a sweep parent, and an experiment
    whose only run logged no best_ metric."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = tracking.resolve_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = tracking.client(uri)
    for name in (EXPERIMENT, "no-metric"):
        client.create_experiment(name, artifact_location=str(root / "artifacts" / name))
    # The sweep parent logs a better value and even a checkpoint: it must still never be picked.
    parent = tracking.start_run(uri, EXPERIMENT, run_name="sweep", tags={"varnext.kind": "sweep"})
    tracking.log_metrics(uri, parent, {"best_extrap_psnr": 40.0}, step=1)
    tracking.log_artifact(uri, parent, smoke_checkpoint(root, "sweep", 9), "checkpoint")
    for seed, (name, (kind, psnr, loss, has_ckpt, status)) in enumerate(RUNS.items()):
        run_id = tracking.start_run(
            uri,
            EXPERIMENT,
            run_name=name,
            tags={"varnext.kind": kind},
            parent_run_id=parent if kind == "trial" else None,
        )
        for step in range(2):  # best_* only improves; the latest is the best
            metrics = {"best_extrap_psnr": psnr - 1 + step, "best_val_loss": loss + 1 - step}
            tracking.log_metrics(uri, run_id, metrics, step=step)
        if has_ckpt:
            tracking.log_artifact(uri, run_id, smoke_checkpoint(root, name, seed), "checkpoint")
        tracking.end_run(uri, run_id, status)
    tracking.end_run(uri, parent)
    other = tracking.start_run(uri, "no-metric", run_name="bare", tags={"varnext.kind": "train"})
    tracking.log_metrics(uri, other, {"val_loss": 1.0}, step=0)
    return uri


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_find_best_run_skips_failed_uncheckpointed_and_sweep_runs(store: str) -> None:
    best = find_best_run(store, EXPERIMENT, "extrap_psnr")
    assert (best["run_name"], best["value"], best["status"]) == ("trial-best", 20.0, "FINISHED")
    assert (best["metric"], best["kind"], best["tracking_uri"]) == (
        "best_extrap_psnr",
        "trial",
        store,
    )
    # val_loss is minimised; the FAILED run's 0.1 and the checkpoint-less 0.2 do not count
    low = find_best_run(store, EXPERIMENT, "best_val_loss")
    assert (low["run_name"], low["value"]) == ("train-low", 0.5)


def test_download_best_writes_a_loadable_checkpoint(store: str, tmp_path: Path) -> None:
    out = download_best(store, EXPERIMENT, tmp_path / "best", "extrap_psnr")
    ckpt = load_checkpoint(out)
    assert ckpt.meta["extra"]["name"] == "trial-best"
    run = json.loads((out / "run.json").read_text())
    assert run["run_id"] == find_best_run(store, EXPERIMENT, "extrap_psnr")["run_id"]
    assert (run["metric"], run["value"], run["experiment"]) == (
        "best_extrap_psnr",
        20.0,
        EXPERIMENT,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temp dir left behind


def test_cli_best_then_predict_two_frames(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_synthetic(tmp_path / "png", clips=1, frames=3, size=(96, 54), seed=5, fmt="png")
    a, b = sorted((tmp_path / "png" / "clip_000").glob("*.png"))[:2]
    best = tmp_path / "best"
    code, out, _ = _run(
        ["best", "--experiment", EXPERIMENT, "--out", best, "--tracking-uri", store,
         "--metric", "extrap_psnr"],  # the default is extrap_psnr_motion (issue #15)
        capsys,
    )  # fmt: skip
    assert code == 0, out
    assert "trial-best" in out and "best_extrap_psnr 20.0000" in out and str(best) in out
    pred = tmp_path / "pred.png"
    code, out, _ = _run(["predict", "--checkpoint", best, "--out", pred, a, b], capsys)
    assert code == 0 and str(pred) in out
    with Image.open(pred) as image:
        assert (image.size, image.mode) == ((96, 54), "RGB")
    code, out, _ = _run(
        ["predict", "--checkpoint", best, "--out", pred, a, b, "--steps", "3"],
        capsys,
    )
    assert code == 0
    for k in (1, 2, 3):
        with Image.open(tmp_path / f"pred_k{k}.png") as image:
            assert image.size == (96, 54)
        assert f"pred_k{k}.png" in out


BAD = [  # (argv with {placeholders}, text the error line must contain)
    ("best --experiment nope --out {tmp}/o --tracking-uri {store}", "no experiment named 'nope'"),
    ("best --experiment nope --out {tmp}/o --tracking-uri {store}", EXPERIMENT),
    ("best --experiment no-metric --out {tmp}/o --tracking-uri {store}", "no train/trial run"),
    (
        f"best --experiment {EXPERIMENT} --metric psnr --out {{tmp}}/o --tracking-uri {{store}}",
        "unknown metric 'psnr'",
    ),
    (f"best --experiment {EXPERIMENT} --out {{tmp}} --tracking-uri {{store}}", "is not empty"),
    (
        f"best --experiment {EXPERIMENT} --out {{tmp}}/o --tracking-uri sqlite:///{{tmp}}/x.db",
        "no MLflow database",
    ),
]


@pytest.mark.parametrize(("argv", "expected"), BAD, ids=[f"{i:02d}" for i in range(len(BAD))])
def test_bad_inputs_exit_2_with_one_line(
    argv: str, expected: str, store: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "occupied").write_text("x")  # makes {tmp} a non-empty directory
    code, _, err = _run(argv.format(tmp=tmp_path, store=store).split(), capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0] and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written


def test_find_best_run_errors_name_the_fix(store: str) -> None:
    with pytest.raises(UserError, match=r"use one of .*extrap_psnr.*val_loss"):
        find_best_run(store, EXPERIMENT, "bogus")
    with pytest.raises(UserError, match=r"one of: Default, best-test, no-metric"):
        find_best_run(store, "missing")
    with pytest.raises(UserError, match=r"runs log no best_ metric|no run logged"):
        find_best_run(store, "no-metric")


@pytest.mark.slow  # starts an mlflow server unless another test module already did
def test_best_over_an_http_tracking_server(mlflow_server: str, tmp_path: Path) -> None:
    run_id = tracking.start_run(
        mlflow_server, "predict-http", run_name="only", tags={"varnext.kind": "train"}
    )
    tracking.log_metrics(mlflow_server, run_id, {"best_extrap_ssim": 0.5}, step=0)
    ckpt = smoke_checkpoint(tmp_path, "http", 3)
    tracking.log_artifact(mlflow_server, run_id, ckpt, "checkpoint")
    out = download_best(mlflow_server, "predict-http", tmp_path / "best", "extrap_ssim")
    assert load_checkpoint(out).meta["extra"]["name"] == "http"
    assert json.loads((out / "run.json").read_text())["tracking_uri"] == mlflow_server


def test_best_ranks_by_what_train_and_sweep_optimise_unless_told() -> None:
    # the Python API, the CLI and the training defaults agree on the one default objective
    api = {
        inspect.signature(f).parameters["metric"].default
        for f in (find_best_run, download_best, register_best)
    }
    cli = build_parser().parse_args(["best", "--experiment", "e", "--out", "o"]).metric
    train = build_parser().parse_args(["train", "--data", "d", "--config", "a.json"]).objective
    space = SearchSpace.model_fields["objective"].default
    assert api == {cli} == {train} == {space} == {TrainSettings().objective}


def _store_with(root: Path, name: str, edit: Any) -> str:
    """A SQLite store whose one train run logged a smoke checkpoint changed by ``edit(dir)``."""
    uri = tracking.resolve_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    tracking.client(uri).create_experiment(name, artifact_location=str(root / "artifacts"))
    run_id = tracking.start_run(uri, name, run_name="only", tags={"varnext.kind": "train"})
    tracking.log_metrics(uri, run_id, {"best_extrap_psnr": 10.0}, step=0)
    checkpoint = smoke_checkpoint(root, "ckpt", 0, background=np.zeros((36, 64, 3), np.uint8))
    edit(checkpoint)
    tracking.log_artifact(uri, run_id, checkpoint, "checkpoint")
    tracking.end_run(uri, run_id)
    return uri


def test_best_downloads_only_the_files_meta_lists(tmp_path: Path) -> None:
    """A stray file in the run's checkpoint folder (a 2 GB leftover, say) stays in the store."""
    uri = _store_with(tmp_path, "stray", lambda d: (d / "stray.bin").write_bytes(b"x" * 4096))
    out = download_best(uri, "stray", tmp_path / "best", "extrap_psnr")
    listed = json.loads((out / "meta.json").read_text())["files"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*listed, "meta.json", "run.json"])
    assert "background.png" in listed


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_best_refuses_a_checkpoint_missing_or_altering_a_listed_file(
    tmp_path: Path, damage: str
) -> None:
    def edit(checkpoint: Path) -> None:
        if damage == "missing":
            (checkpoint / "background.png").unlink()
        else:
            (checkpoint / "background.png").write_bytes(b"not the png meta.json hashed")

    uri = _store_with(tmp_path, "damaged", edit)
    with pytest.raises(UserError) as err:
        download_best(uri, "damaged", tmp_path / "best", "extrap_psnr")
    assert "does not load" in err.value.what and "background.png" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "ckpt", "mlflow.db"]


def test_best_refuses_a_symlinked_out_before_searching(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    argv = ["best", "--experiment", "nope", "--out", tmp_path / "link", "--tracking-uri", store]
    code, _, err = _run(argv, capsys)  # no such experiment: the folder is refused first
    assert code == 2 and "output is a symlink (to " in err and "nope" not in err
    assert list((tmp_path / "real").iterdir()) == []


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with nearly_full_tmpfs(tmp_path / "tiny") as mount:
        yield mount


def test_best_on_a_full_disk_says_so(
    store: str, full_disk: Path, capsys: pytest.CaptureFixture
) -> None:
    out = full_disk / "best"
    argv = ["best", "--experiment", EXPERIMENT, "--out", out, "--tracking-uri", store]
    argv += ["--metric", "extrap_psnr"]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "cannot write the download (the checkpoint needs " in err
    assert "are free there) (" in err and err.count("\n") == 1
    assert sorted(p.name for p in full_disk.iterdir()) == ["fill"]  # no staging folder left


def test_a_better_run_without_its_checkpoint_is_named_in_a_warning(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """trial-no-checkpoint (25.0) ranks above trial-best (20.0) but holds no checkpoint/ (never
    uploaded, or its artifact folder removed): best picked trial-best without a word."""
    argv = ["best", "--experiment", EXPERIMENT, "--tracking-uri", store, "--out"]
    code, out, _ = _run([*argv, tmp_path / "best", "--metric", "extrap_psnr"], capsys)
    assert code == 0 and "best run: trial-best " in out
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("trial-no-checkpoint ("), warnings
    assert "best_extrap_psnr 25.0000" in warnings[0] and "skipped for trial-best" in warnings[0]


def test_a_run_name_with_a_newline_is_printed_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    uri = _store_with(tmp_path, "odd", lambda d: None)
    client = tracking.client(uri)
    run = client.search_runs([client.get_experiment_by_name("odd").experiment_id])[0]
    client.set_tag(run.info.run_id, "mlflow.runName", "two\nlines\x1b[31m")
    argv = ["best", "--experiment", "odd", "--out", tmp_path / "best", "--tracking-uri", uri]
    code, out, _ = _run([*argv, "--metric", "extrap_psnr"], capsys)
    assert code == 0 and "best run: two\\nlines\\x1b[31m (" in out
    assert "\x1b" not in out and not any(line.startswith("lines") for line in out.splitlines())


@pytest.mark.parametrize("value", [math.inf, 1e308])
def test_an_infinite_metric_is_never_the_best(tmp_path: Path, value: float) -> None:
    """MLflow's SQLite store keeps inf as the largest float, which passed ``isfinite``: best
    picked the run and printed its value as a 309-digit number."""
    uri = _store_with(tmp_path, "inf", lambda d: None)
    client = tracking.client(uri)
    good = client.search_runs([client.get_experiment_by_name("inf").experiment_id])[0]
    odd = tracking.start_run(uri, "inf", run_name="odd", tags={"varnext.kind": "train"})
    client.log_metric(odd, "best_extrap_psnr", value)  # as edited by hand: varnext logs no inf
    tracking.log_artifact(uri, odd, smoke_checkpoint(tmp_path, "odd", 3), "checkpoint")
    tracking.end_run(uri, odd)
    best = find_best_run(uri, "inf", "extrap_psnr")
    if value == math.inf:
        assert best["run_id"] == good.info.run_id
    else:  # a large finite value is a value
        assert best["run_id"] == odd


def test_a_checkpoint_file_larger_than_its_architecture_allows_is_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A 50 GB file in the store was copied and hashed (3 minutes) before it was refused."""
    uri = _store_with(tmp_path, "big", lambda d: None)
    (stored,) = (tmp_path / "artifacts").rglob("checkpoint/model.safetensors")
    os.truncate(stored, 4 * 2**30)  # sparse: nothing is written
    out = tmp_path / "best"
    argv = ["best", "--experiment", "big", "--out", out, "--tracking-uri", uri]
    code, _, err = _run([*argv, "--metric", "extrap_psnr"], capsys)
    assert code == 2 and "does not load: model.safetensors: 4 GiB, more than" in err, err
    assert "more than a checkpoint of its architecture holds" in err and not out.exists()


def test_a_run_still_running_is_picked_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``best`` during a sweep: the leading trial's checkpoint is its best so far (it may still
    improve), which was picked without a word."""
    uri = _store_with(tmp_path, "live", lambda d: None)
    client = tracking.client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("live").experiment_id])
    assert find_best_run(uri, "live", "extrap_psnr")["status"] == "FINISHED"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    client.update_run(run.info.run_id, status="RUNNING")
    best = find_best_run(uri, "live", "extrap_psnr")
    assert best["run_id"] == run.info.run_id and best["status"] == "RUNNING"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"({run.info.run_id}) is still RUNNING: its checkpoint is its best so far" in warning


def test_an_unreadable_artifact_in_the_store_is_one_line_naming_both_causes(
    tmp_path: Path,
) -> None:
    """The run's ``meta.json`` in the artifact store is a FIFO (or any file that cannot be
    read): the fix named only "the artifact store is reachable", which it was."""
    uri = _store_with(tmp_path, "fifo", lambda d: None)
    (meta,) = (tmp_path / "artifacts").rglob("checkpoint/meta.json")
    meta.unlink()
    os.mkfifo(meta)
    with pytest.raises(UserError) as err:
        download_best(uri, "fifo", tmp_path / "best", "extrap_psnr")
    assert err.value.fix == ARTIFACT_FIX and "run's checkpoint files are intact" in err.value.fix
    assert not (tmp_path / "best").exists()


def test_best_works_when_the_environment_turns_warnings_into_errors(
    store: str, tmp_path: Path
) -> None:
    """``PYTHONWARNINGS=error`` made SQLAlchemy's deprecation note inside MLflow an exception
    ("unexpected SADeprecationWarning", exit 1): the console script shows warnings, never
    raises them, and says so to the processes it starts."""
    import subprocess
    import sys

    script = "from varnext_ray.entry import main; import sys; sys.exit(main())"
    argv = ["best", "--experiment", EXPERIMENT, "--tracking-uri", store, "--out", "b"]
    argv += ["--metric", "extrap_psnr"]
    env = os.environ | {"PYTHONWARNINGS": "error"}
    ended = subprocess.run(
        [sys.executable, "-c", script, *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ended.returncode == 0, ended.stderr
    assert (tmp_path / "b" / "run.json").is_file()
