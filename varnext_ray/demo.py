"""``varnext demo``: the whole pipeline on built-in synthetic data, in a few minutes on a laptop.

synth -> ingest -> a 2-trial sweep of search_spaces/demo.json on a local Ray (tracked in a
SQLite MLflow store in the work directory; each trial a budget of ``STEPS`` optimizer steps in
3 evaluation rounds) -> best -> a prediction strip on the test split, ending with the best
trial's metrics beside the baselines, a verdict in plain words, and the command that opens
MLflow.

The demo space keeps the smoke architecture's spatial latent and calibrated decoder and varies
only the latent channels and the learning rate: with 2 trials a broad space (flat latents,
beta) would often show only collapsed models. The sizes follow measured runs (issue #15):
with 16 clips x 120 frames (~1300 training frames) and 1000-1500 steps of batch 32 (2 workers x
16) the smoke model's oracle is 4-5 dB above the median background; at a few hundred steps
every model is still "the mean background" and the demo would say nothing.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from varnext_ray.demo_workdir import STRIP, WORKDIR_FIX, check_workdir
from varnext_ray.errors import Interrupted, Terminated, UserError, escape
from varnext_ray.safe_io import os_reason

REPO = Path(__file__).resolve().parent.parent
DEMO_SPACE = REPO / "search_spaces" / "demo.json"  # the smoke model; latent channels and lr
EXPERIMENT = "demo"
CLIPS, FRAMES = 16, 120  # synthetic clips x frames at 128x72
SYNTH_SIZE, SYNTH_SEED = (128, 72), 0
DEMO_SYNTH = {"seed": SYNTH_SEED, "size": list(SYNTH_SIZE), "clips": CLIPS}  # its synth.json
STEPS = 2400  # optimizer steps per trial
BATCH = 16  # per worker: 2 DDP workers make the measured recipe's batch of 32
SAMPLES, EPOCHS = 2, 3  # trials; evaluation rounds per trial
SHOWN = (
    "extrap_psnr",
    "latent_copy_psnr",
    "copy_last_psnr",
    "pixel_linear_psnr",
    "oracle_psnr",
    "background_psnr",
    "extrap_psnr_motion",
    "latent_copy_psnr_motion",
    "copy_last_psnr_motion",
    "oracle_psnr_motion",
    "background_psnr_motion",
    "extrap_gain_db_motion",
    "motion_captured",
    "active_units",
    "latent_elements",
    "decoder_sensitivity",
    "extrap_ssim",
    "extrap_skill",
    "latent_linearity",
    "steps",
)
HELD_OUT_STRIDES = (1, 3)  # the answer is given on the test split at these strides
COLLAPSE_DB = 1.0  # an oracle less than this above the background: collapsed
FLAT_DB = 0.05  # |motion gain| below this: no measurable difference


def prepare_data(workdir: Path) -> Path:
    """Synthetic clips at 128x72 ingested at 64x36 under ``workdir``; existing ones are kept."""
    from varnext_ray.ingest import IngestOptions, ingest
    from varnext_ray.synth import write_synthetic

    synth, data = workdir / "synth", workdir / "dataset"
    if not synth.exists():
        write_synthetic(synth, clips=CLIPS, frames=FRAMES, size=SYNTH_SIZE, seed=SYNTH_SEED)
        print(f"synth: {CLIPS} clips x {FRAMES} frames at 128x72 -> {synth}")
    if not data.exists():
        m = ingest([synth], data, IngestOptions(size=(64, 36), val=0.15, test=0.15, seed=0))
        print(
            f"ingest: {m['frames']} frames in {len(m['clips'])} clips "
            f"(train {m['splits']['train']}, val {m['splits']['val']}, "
            f"test {m['splits']['test']}) -> {data}"
        )
    return data


def write_test_strip(checkpoint: Path, data: Path, out: Path) -> Path:
    """A prediction strip from the longest test clip's frames t, t+1, t+2 (no Ray needed), with
    the checkpoint's training background when it holds one."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from varnext_ray.background import as_tensor, load_background
    from varnext_ray.checkpoint_load import load_checkpoint
    from varnext_ray.frame_codec import decode_images
    from varnext_ray.manifest import load_manifest
    from varnext_ray.media import save_png
    from varnext_ray.prediction_pictures import prediction_strip

    manifest = load_manifest(data)
    clip = max(manifest.clips("test") or manifest.clips("val"), key=lambda c: c["frames"])
    table = pq.ParquetDataset([str(data / f) for f in clip["files"]]).read()
    frames = decode_images(
        table.sort_by("frame_index").column("image").to_pylist(), manifest.encoding, manifest.size
    )  # (T, H, W, 3)
    starts = np.linspace(0, len(frames) - 3, 4).astype(int)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
    model = load_checkpoint(checkpoint).model.eval()
    background = load_background(checkpoint)
    strip = prediction_strip(
        model,
        x[starts],
        x[starts + 1],
        x[starts + 2],
        n=len(starts),
        background=None if background is None else as_tensor(background),
    )
    return save_png(strip, out)


def run_demo(
    workdir: Path,
    *,
    samples: int = SAMPLES,
    epochs: int = EPOCHS,
    steps: int = STEPS,
    address: str | None = None,
) -> int:
    """Runs the demo in ``workdir``; returns the exit status."""
    from varnext_ray.best import download_best
    from varnext_ray.checkpoint_read import read_meta
    from varnext_ray.cluster import connect_ray
    from varnext_ray.scoring import score_checkpoint
    from varnext_ray.search_space import load_space
    from varnext_ray.settings import TrainSettings
    from varnext_ray.sweep import SweepOptions, no_trial_finished, run_sweep
    from varnext_ray.sweep_results import summary_table

    workdir = Path(os.path.abspath(workdir))  # not resolve(): a symlink loop is a UserError
    uri = check_workdir(workdir, DEMO_SYNTH)
    if not DEMO_SPACE.exists():
        raise UserError(
            "the demo search space is missing",
            str(DEMO_SPACE),
            "run the demo from a clone of the repository (pip install -e .)",
        )
    options = SweepOptions(
        samples=samples,
        workers_per_trial=2,
        train=TrainSettings(epochs=epochs, steps=steps, batch_size=BATCH, val_triplets=128),
    )
    options.check()  # before anything is written
    options.train.check()
    connect_ray(address)  # a wrong --address fails here, before any data is written
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the work directory ({os_reason(err)})", str(workdir), WORKDIR_FIX
        ) from None
    data = prepare_data(workdir)
    space, base = load_space(DEMO_SPACE)
    try:
        outcome = run_sweep(
            space=space,
            base=base,
            data=data,
            experiment=EXPERIMENT,
            tracking_uri=uri,
            storage=workdir / "ray",
            options=options,
        )
    except (Interrupted, Terminated) as stop:  # the sweep's hint names a command never typed
        hint = (
            f"the demo's sweep was stopped and its MLflow runs are KILLED (in {uri}); remove "
            f"{workdir} or pass another --workdir to run the demo again"
        )
        raise type(stop)(hint) from None
    print("\n" + summary_table(outcome, space.objective))
    if outcome.best is None:
        sys.stderr.write(f"error: {escape(no_trial_finished(outcome.rows))}\n")
        return 1
    best_dir = download_best(uri, EXPERIMENT, workdir / "best", space.objective)
    metrics = read_meta(best_dir)["metrics"]
    held_out = score_checkpoint(best_dir, data, HELD_OUT_STRIDES)
    strip = write_test_strip(best_dir, data, workdir / STRIP)
    print_report(metrics, held_out, workdir, best_dir, strip, uri)
    return 0


def print_report(
    metrics: dict[str, float],
    held_out: dict[str, dict[str, Any]],
    workdir: Path,
    best_dir: Path,
    strip: Path,
    uri: str,
) -> None:
    """The best trial's metrics beside the baselines, its held-out answer at each stride (the
    verdicts), where the files are and how to open MLflow."""
    print("\nbest trial, at its best epoch (validation triplets):")
    for key in SHOWN:
        value = metrics.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            unit = " dB" if "psnr" in key or "gain_db" in key else ""
            print(f"  {key:<24} {value:10.4f}{unit}")
    beats = metrics.get("extrap_psnr", -math.inf) > metrics.get("copy_last_psnr", math.inf)
    print(
        f"on these validation triplets the latent straight line "
        f"{'beats' if beats else 'does not beat'} repeating the last frame (copy-last); "
        "oracle_psnr is the ceiling of this model's decoder."
    )
    print(held_out_table(held_out))
    for stride, scored in held_out.items():
        print(f"\nverdict at s={stride} ({scored['split']} split): " + verdict(scored))
    print(
        f"\nfiles: {workdir}\n  dataset   {workdir / 'dataset'}\n  best      {best_dir}"
        f"\n  strip     {strip} (t, t+s, truth, latent prediction, latent copy, oracle, "
        "copy-last, background, error)"
        f"\n  ray       {workdir / 'ray'}"
    )
    print(f"\nopen MLflow: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")


def held_out_table(held_out: dict[str, dict[str, Any]], scored: str = "the best trial") -> str:
    """The held-out scores of ``scored``, one row per stride s: PSNR overall and in the motion
    region."""
    columns = (
        ("extrap_psnr", "extrap"),
        ("latent_copy_psnr", "latent copy"),
        ("copy_last_psnr", "copy-last"),
        ("oracle_psnr", "oracle"),
        ("background_psnr", "background"),
    )
    head = "   s  split  triplets  region  " + "".join(f"{n:>12}" for _, n in columns)
    lines = [f"\n{scored} on held-out triplets (PSNR, dB; triplets t, t+s, t+2s):", head]
    for stride, m in held_out.items():
        for region, suffix in (("all", ""), ("motion", "_motion")):
            cells = "".join(f"{_cell(m.get(key + suffix)):>12}" for key, _ in columns)
            lines.append(f"{stride:>4}  {m['split']:<5}  {m['triplets']:>8}  {region:<6}  {cells}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) and math.isfinite(value) else "-"


def verdict(metrics: dict[str, float]) -> str:
    """The demo's answer in plain words, from the collapse diagnostics (docs/training.md).

    Collapsed (the oracle within ``COLLAPSE_DB`` of the median background, or fewer than 2
    active latent elements): the numbers say nothing about motion. Otherwise: whether the
    straight line beats the model's own "nothing moves" (decode of z2) in the motion region,
    and what share of the oracle's gain over it the line recovers.
    """

    def get(key: str) -> float:
        value = metrics.get(key, math.nan)
        return float(value) if isinstance(value, int | float) else math.nan

    oracle, background = get("oracle_psnr"), get("background_psnr")
    active, elements = get("active_units"), get("latent_elements")
    if not all(math.isfinite(v) for v in (oracle, background, active)):
        return (
            "NOT ANSWERED: the run did not record oracle_psnr, background_psnr and "
            "active_units (trained before these metrics existed?); train it again."
        )
    if oracle - background < COLLAPSE_DB or active < 2:
        return (
            f"NOT ANSWERED: the model collapsed to the background. Its decoding of the true "
            f"latent (oracle {oracle:.2f} dB) is within {COLLAPSE_DB:g} dB of the median "
            f"background ({background:.2f} dB), or fewer than 2 latent elements are active "
            f"({active:.0f} of {elements:.0f}); train longer or with a spatial latent."
        )
    gain, captured = get("extrap_gain_db_motion"), get("motion_captured")
    head = (
        f"the model learned the scene (oracle {oracle:.2f} dB vs background {background:.2f} "
        f"dB, {active:.0f} of {elements:.0f} latent elements active). "
    )
    if not math.isfinite(gain):
        return head + "No validation frame moved, so the straight line was not tested."
    share = (
        f"; it recovers {captured:.0%} of what the oracle gains over that copy"
        if math.isfinite(captured)
        else ""
    )
    if gain > FLAT_DB:
        return head + (
            f"YES: in the moving regions the latent straight line beats the model's own "
            f"'nothing moves' (decode of z2) by {gain:+.2f} dB{share}."
        )
    if gain < -FLAT_DB:
        return head + (
            f"NO: in the moving regions the latent straight line is worse than the model's own "
            f"'nothing moves' (decode of z2) by {gain:+.2f} dB{share}."
        )
    return head + (
        f"NO: in the moving regions the latent straight line is no better than the model's own "
        f"'nothing moves' (decode of z2): {gain:+.2f} dB{share}."
    )
