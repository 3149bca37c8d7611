"""``varnext demo``: the whole pipeline on built-in synthetic data, in a few minutes on a laptop.

synth -> ingest -> a 4-trial sweep of search_spaces/smoke.json on a local Ray (tracked in a
SQLite MLflow store in the work directory) -> best -> a prediction strip on the test split,
ending with the best trial's metrics beside the baselines and the command that opens MLflow.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from varnext_ray.errors import UserError

REPO = Path(__file__).resolve().parent.parent
DEMO_SPACE = REPO / "search_spaces" / "smoke.json"
EXPERIMENT = "demo"
SHOWN = (
    "extrap_psnr",
    "copy_last_psnr",
    "pixel_linear_psnr",
    "oracle_psnr",
    "extrap_psnr_motion",
    "copy_last_psnr_motion",
    "extrap_ssim",
    "extrap_skill",
    "latent_linearity",
)


def prepare_data(workdir: Path) -> Path:
    """Synthetic clips at 128x72 ingested at 64x36 under ``workdir``; existing ones are kept."""
    from varnext_ray.ingest import IngestOptions, ingest
    from varnext_ray.synth import write_synthetic

    synth, data = workdir / "synth", workdir / "dataset"
    if not synth.exists():
        write_synthetic(synth, clips=6, frames=90, size=(128, 72), seed=0)
        print(f"synth: 6 clips x 90 frames at 128x72 -> {synth}")
    if not data.exists():
        m = ingest([synth], data, IngestOptions(size=(64, 36), val=0.15, test=0.15, seed=0))
        print(
            f"ingest: {m['frames']} frames in {len(m['clips'])} clips "
            f"(train {m['splits']['train']}, val {m['splits']['val']}, "
            f"test {m['splits']['test']}) -> {data}"
        )
    return data


def write_test_strip(checkpoint: Path, data: Path, out: Path) -> Path:
    """A prediction strip from the first test clip's frames t, t+1, t+2 (no Ray needed)."""
    from varnext_ray.checkpoint import load_checkpoint
    from varnext_ray.dataset import decode_images, load_manifest
    from varnext_ray.media import save_png
    from varnext_ray.metrics import prediction_strip

    manifest = load_manifest(data)
    clip = max(manifest.clips("test") or manifest.clips("val"), key=lambda c: c["frames"])
    table = pq.ParquetDataset([str(data / f) for f in clip["files"]]).read()
    frames = decode_images(
        table.sort_by("frame_index").column("image").to_pylist(), manifest.encoding, manifest.size
    )  # (T, H, W, 3)
    starts = np.linspace(0, len(frames) - 3, 4).astype(int)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
    model = load_checkpoint(checkpoint).model.eval()
    strip = prediction_strip(model, x[starts], x[starts + 1], x[starts + 2], n=len(starts))
    return save_png(strip, out)


def run_demo(
    workdir: Path, *, samples: int = 4, epochs: int = 3, address: str | None = None
) -> int:
    """Runs the demo in ``workdir``; returns the exit status."""
    from varnext_ray.best import download_best
    from varnext_ray.checkpoint import read_meta
    from varnext_ray.cluster import connect_ray
    from varnext_ray.search_space import load_space
    from varnext_ray.settings import TrainSettings
    from varnext_ray.sweep import SweepOptions, run_sweep, summary_table

    workdir = workdir.resolve()
    if (workdir / "ray").exists():
        raise UserError(
            "a demo already ran in this work directory",
            str(workdir),
            "pass another --workdir, or remove this one to run it again",
        )
    if not DEMO_SPACE.exists():
        raise UserError(
            "the demo search space is missing",
            str(DEMO_SPACE),
            "run the demo from a clone of the repository (pip install -e .)",
        )
    workdir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(workdir)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    connect_ray(address)
    space, base = load_space(DEMO_SPACE)
    outcome = run_sweep(
        space=space,
        base=base,
        data=data,
        experiment=EXPERIMENT,
        tracking_uri=uri,
        storage=workdir / "ray",
        options=SweepOptions(
            samples=samples,
            workers_per_trial=2,
            train=TrainSettings(epochs=epochs, batch_size=16, val_triplets=128),
        ),
    )
    print("\n" + summary_table(outcome, space.objective))
    if outcome.best is None:
        print("no trial finished: see the errors above")
        return 1
    best_dir = download_best(uri, EXPERIMENT, workdir / "best", space.objective)
    metrics = read_meta(best_dir)["metrics"]
    strip = write_test_strip(best_dir, data, workdir / "prediction_strip.png")
    print_report(metrics, workdir, best_dir, strip, uri)
    return 0


def print_report(
    metrics: dict[str, float], workdir: Path, best_dir: Path, strip: Path, uri: str
) -> None:
    """The best trial's metrics beside the baselines, where the files are, how to open MLflow."""
    print("\nbest trial, at its best epoch (validation triplets):")
    for key in SHOWN:
        value = metrics.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            unit = " dB" if key.endswith("psnr") or "_psnr_" in key else ""
            print(f"  {key:<24} {value:10.4f}{unit}")
    beats = metrics.get("extrap_psnr", -math.inf) > metrics.get("copy_last_psnr", math.inf)
    print(
        f"on these validation triplets the latent straight line "
        f"{'beats' if beats else 'does not beat'} repeating the last frame (copy-last); "
        "oracle_psnr is the ceiling of this model's decoder."
    )
    print(
        f"\nfiles: {workdir}\n  dataset   {workdir / 'dataset'}\n  best      {best_dir}"
        f"\n  strip     {strip} (t, t+s, truth, latent prediction, oracle, copy-last, error)"
        f"\n  ray       {workdir / 'ray'}"
    )
    print(f"\nopen MLflow: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
