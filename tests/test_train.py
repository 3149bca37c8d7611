"""Distributed training on a local loopback Ray: DDP ranks, metrics, MLflow, checkpoints, resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO
from varnext_ray import tracking
from varnext_ray.arch import load_arch, parse_arch
from varnext_ray.background import load_background, training_background
from varnext_ray.checkpoint_load import load_checkpoint
from varnext_ray.cluster import Resources
from varnext_ray.errors import UserError
from varnext_ray.ingest import IngestOptions, ingest
from varnext_ray.manifest import load_manifest, sequence_index, triplet_index
from varnext_ray.settings import TrainSettings
from varnext_ray.train import TrainingFailed, check_dataset, check_same_experiment, train

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SMOKE = REPO / "configs" / "smoke_64x36.json"
CONTRACT = [
    "train_loss",
    "val_loss",
    "val_recon",
    "val_kl",
    "extrap_mse",
    "extrap_psnr",
    "extrap_ssim",
    "copy_last_psnr",
    "pixel_linear_psnr",
    "oracle_psnr",
    "extrap_skill",
    "latent_linearity",
    "extrap_psnr_motion",
    "copy_last_psnr_motion",
    "latent_copy_psnr",
    "latent_copy_psnr_motion",
    "extrap_gain_db",
    "extrap_gain_db_motion",
    "background_psnr",
    "background_psnr_motion",
    "active_units",
    "latent_elements",
    "decoder_sensitivity",
    "steps",
    "best_extrap_psnr_motion",
]


def _horizons(data: Path, most: int = 4) -> int:
    """The rollout horizon the training scores on this dataset's validation clips."""
    manifest = load_manifest(data)
    return next(k for k in range(most, 0, -1) if sequence_index(manifest, "val", 1, k + 2))


def _train(
    data: Path, tmp: Path, uri: str, epochs: int, name: str = "smoke", arch=None, **kw
) -> object:
    return train(
        arch=arch or load_arch(SMOKE),
        data=data,
        settings=TrainSettings(epochs=epochs, batch_size=8, val_triplets=24, **kw),
        resources=Resources(workers=2),
        experiment="test-train",
        tracking_uri=uri,
        storage=tmp / "ray",
        name=name,
    )


@pytest.fixture(scope="module")
def first_run(ray_local, dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("train")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return tmp, uri, _train(dataset_dir, tmp, uri, epochs=2)


def test_a_run_of_another_experiment_is_not_continued_under_its_name(
    first_run, caplog: pytest.LogCaptureFixture
) -> None:
    """Re-running with another --experiment would log into the old run's experiment (and train
    nothing once its epochs are done): refused, naming the experiment that holds it."""
    tmp, uri, outcome = first_run
    uri = tracking.resolve_tracking_uri(uri)
    with pytest.raises(UserError) as err:
        check_same_experiment(tmp / "ray", "smoke", "other", uri, epochs=5)
    assert f"is MLflow run {outcome.run_id} of experiment 'test-train', not 'other'" in str(
        err.value
    )
    assert "pass --experiment test-train to continue it, or another --name" in str(err.value)
    check_same_experiment(tmp / "ray", "new-name", "other", uri, epochs=5)  # a new run
    with caplog.at_level("WARNING", logger="varnext_ray.train"):
        check_same_experiment(tmp / "ray", "smoke", "test-train", uri, epochs=3)
        assert "nothing is left" not in caplog.text  # one more epoch to train
        check_same_experiment(tmp / "ray", "smoke", "test-train", uri, epochs=2)
    assert "already trained 2 epochs (--epochs 2): nothing is left to train" in caplog.text


def test_epochs_done_are_read_from_rays_record_not_folder_names(
    first_run, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint copied into the run's folder under a later epoch's name (``varnext best
    --out runs/ray/smoke/epoch_0009``) made train say 9 epochs were done, while Ray resumes
    from the latest checkpoint it registered (epoch 2)."""
    import shutil

    tmp, uri, _ = first_run
    uri = tracking.resolve_tracking_uri(uri)
    run = tmp / "ray" / "smoke"
    copy = run / "epoch_0009"
    shutil.copytree(run / "epoch_0002", copy)
    try:
        with caplog.at_level("WARNING", logger="varnext_ray.train"):
            check_same_experiment(tmp / "ray", "smoke", "test-train", uri, epochs=3)
        assert "nothing is left" not in caplog.text
    finally:
        shutil.rmtree(copy)


def test_two_ranks_step_and_report_the_contract(first_run, dataset_dir: Path) -> None:
    _, uri, outcome = first_run
    m = outcome.metrics
    assert m["world_size"] == 2 and m["epoch"] == 2
    train_frames = load_manifest(dataset_dir).data["splits"]["train"]
    # Both shards were consumed: all frames but at most one dropped to make the shards equal.
    assert train_frames - 1 <= m["train_frames"] <= train_frames
    assert m["train_steps"] == -(-(m["train_frames"] // 2) // 8)  # ceil(per-rank frames / 8)
    assert m["steps"] == 2 * m["train_steps"] and m["train_passes"] == 1  # no budget: one pass
    run = mlflow.MlflowClient(uri).get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    horizons = _horizons(dataset_dir)
    assert horizons >= 2
    rollout = [f"{m}_h{k}" for m in ("extrap_psnr", "copy_last_psnr") for k in range(1, 5)]
    for key in CONTRACT + rollout[:horizons] + rollout[4 : 4 + horizons]:
        history = mlflow.MlflowClient(uri).get_metric_history(outcome.run_id, key)
        assert [h.step for h in history] == [1, 2], key
    assert f"extrap_psnr_h{horizons + 1}" not in run.data.metrics
    assert "train_curvature" not in run.data.metrics  # trained on frames
    assert run.data.params["arch.latent_dim"] == "160"  # spatial 4x5x8: latent elements
    assert run.data.params["train.batch_size"] == "8"
    o = run.data.metrics  # where the time outside the epochs went: the parts add up
    parts = ("overhead_setup_seconds", "overhead_workers_seconds", "overhead_loop_seconds")
    assert all(o[k] > 0 for k in parts)
    assert o["overhead_seconds"] == pytest.approx(sum(o[k] for k in parts))
    assert o["loop_seconds"] > o["epochs_seconds"] >= m["epoch_seconds"]


def test_a_rank_keeps_every_world_th_row_of_a_whole_dataset() -> None:
    from varnext_ray.train_loop import _every_nth_row

    batches = [{"t": torch.arange(0, 6)}, {"t": torch.arange(6, 12)}, {"t": torch.tensor([12])}]
    rank0 = [b["t"].tolist() for b in _every_nth_row(batches, rank=0, world=2)]
    rank1 = [b["t"].tolist() for b in _every_nth_row(batches, rank=1, world=2)]
    assert rank0 == [[0, 2, 4], [6, 8, 10], [12]]
    assert rank1 == [[1, 3, 5], [7, 9, 11]]  # nothing left for it in the last batch: it stops


def test_artifacts_and_checkpoint_reload(first_run, dataset_dir: Path, tmp_path: Path) -> None:
    _, uri, outcome = first_run
    client = mlflow.MlflowClient(uri)
    names = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"arch", "strips", "checkpoint", "rollouts"} <= names
    background = training_background(dataset_dir)
    np.testing.assert_array_equal(load_background(outcome.best_checkpoint), background)
    strips = [a.path for a in client.list_artifacts(outcome.run_id, "strips")]
    assert strips == ["strips/strip_epoch_001.png", "strips/strip_epoch_002.png"]
    gifs = [a.path for a in client.list_artifacts(outcome.run_id, "rollouts")]
    assert gifs == ["rollouts/rollout_epoch_001.gif", "rollouts/rollout_epoch_002.gif"]
    gif = mlflow.artifacts.download_artifacts(
        run_id=outcome.run_id, artifact_path=gifs[1], dst_path=str(tmp_path), tracking_uri=uri
    )
    with Image.open(gif) as picture:  # t, t+s, then one picture per horizon
        assert picture.n_frames == 2 + _horizons(dataset_dir)
    local = mlflow.artifacts.download_artifacts(
        run_id=outcome.run_id, artifact_path="checkpoint", dst_path=str(tmp_path), tracking_uri=uri
    )
    from_mlflow = load_checkpoint(local).model.eval()
    from_ray = load_checkpoint(outcome.best_checkpoint).model.eval()
    x = torch.rand(3, 3, 36, 64)
    with torch.no_grad():
        assert torch.equal(from_mlflow(x, sample=False)[0], from_ray(x, sample=False)[0])
        fresh = load_checkpoint(local).model.eval()
        assert torch.equal(fresh.encode(x)[0], from_mlflow.encode(x)[0])


def test_same_name_resumes_from_the_saved_epoch(first_run, dataset_dir: Path) -> None:
    tmp, uri, first = first_run
    again = _train(dataset_dir, tmp, uri, epochs=3)
    assert again.run_id == first.run_id  # the same MLflow run continues
    assert again.metrics["epoch"] == 3
    assert again.metrics["steps"] == first.metrics["steps"] + again.metrics["train_steps"]
    history = mlflow.MlflowClient(uri).get_metric_history(first.run_id, "train_loss")
    assert [h.step for h in history] == [1, 2, 3]  # epochs 1-2 were not trained again


def test_real_mlflow_server_records_the_same(
    ray_local, dataset_dir: Path, tmp_path: Path, mlflow_server: str
) -> None:
    outcome = _train(dataset_dir, tmp_path, mlflow_server, epochs=1, name="served")
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert set(CONTRACT) <= set(run.data.metrics)
    assert {a.path for a in client.list_artifacts(outcome.run_id)} >= {"strips", "checkpoint"}


def test_linearity_weight_trains_on_triplets(ray_local, dataset_dir: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = json.loads(SMOKE.read_text())
    config["loss"]["linearity_weight"] = 5.0
    arch = parse_arch(config, "linear")
    bent = _train(dataset_dir, tmp_path, uri, epochs=1, name="lin", arch=arch, rollout_steps=0)
    manifest = load_manifest(dataset_dir)
    triplets = len(triplet_index(manifest, "train", 1))
    # each rank reads triplets: three frames a sample, at most one triplet dropped to even out
    assert 3 * (triplets - 1) <= bent.metrics["train_frames"] <= 3 * triplets
    assert bent.metrics["train_curvature"] >= 0
    # val_loss is the same objective as train_loss: the weighted curvature is in both
    assert bent.metrics["val_curvature"] >= 0
    assert (
        bent.metrics["val_loss"]
        >= bent.metrics["val_recon"] + 5.0 * bent.metrics["val_curvature"] - 1e-6
    )
    assert not any(k.startswith("extrap_psnr_h") for k in bent.metrics)  # rollout_steps=0
    run = mlflow.MlflowClient(uri).get_run(bent.run_id)
    assert run.data.params["arch.loss.linearity_weight"] == "5.0"
    assert run.data.metrics["train_curvature"] == pytest.approx(bent.metrics["train_curvature"])


def test_nan_loss_fails_the_run_with_its_reason(
    ray_local, dataset_dir: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(TrainingFailed, match="non-finite loss") as failed:
        _train(dataset_dir, tmp_path, uri, epochs=2, name="nan", lr=1e30)
    run = mlflow.MlflowClient(uri).get_run(failed.value.run_id)
    assert run.info.status == "FAILED"
    assert "non-finite loss" in run.data.tags["failure_reason"]


def test_too_many_workers_is_a_quick_clear_error(
    ray_local, dataset_dir: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(UserError, match=r"6 workers x 1 CPU need 6 CPUs; the cluster has 2"):
        train(
            arch=load_arch(SMOKE),
            data=dataset_dir,
            settings=TrainSettings(epochs=1),
            resources=Resources(workers=6, cpus_per_worker=1),
            experiment="x",
            tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
            storage=tmp_path,
            name="big",
        )
    with pytest.raises(UserError, match="need 2 GPUs; the cluster has 0"):
        train(
            arch=load_arch(SMOKE),
            data=dataset_dir,
            settings=TrainSettings(epochs=1),
            resources=Resources(workers=2, gpus_per_worker=1),
            experiment="x",
            tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
            storage=tmp_path,
            name="gpu",
        )
    assert time.monotonic() - started < 60  # not Ray's endless placement retry


def test_dataset_without_val_triplets_is_refused(synth_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "noval"
    ingest([synth_dir], data, IngestOptions(size=(64, 36), val=0.0, test=0.2))
    with pytest.raises(UserError, match="0 validation triplets"):
        check_dataset(data, TrainSettings(), workers=2)


def test_a_step_budget_trains_whole_passes_per_epoch(
    first_run, dataset_dir: Path, tmp_path: Path
) -> None:
    _, uri, first = first_run
    per_pass = int(first.metrics["train_steps"])  # one pass, 2 workers, batch 8
    budget = 2 * 2 * per_pass + 1  # 2 epochs: 2 passes and a step each -> 3 passes per epoch
    outcome = _train(dataset_dir, tmp_path, uri, epochs=2, name="budget", steps=budget)
    m = outcome.metrics
    assert m["train_passes"] == 3 and m["epoch"] == 2
    # three copies of the split in one stream: 3 x the frames, steps within a batch of 3 passes
    assert m["train_frames"] == pytest.approx(3 * first.metrics["train_frames"], abs=2)
    assert 3 * per_pass - 2 <= m["train_steps"] <= 3 * per_pass
    assert m["steps"] == 2 * m["train_steps"] >= budget - 4
