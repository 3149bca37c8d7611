"""Extrapolation quality: a trained model's latent prediction beside the baselines.

For each dataset (synthetic clips by default, plus the real clip in ../shared/data when it is
there; any ingested dataset directory or video file can be named), and for each weight lambda
of the temporal-linearity loss term (``--linearity``, default 0 and 30), the script trains
the architecture (``configs/small_160x90.json`` by default) with ``varnext train``'s own path:
:func:`varnext_ray.train.train` on a local Ray, one worker, recorded in a local MLflow store.
Every arm trains on (t, t+s, t+2s) triplets (``train_on="triplets"``), so lambda is the only
difference between arms, and starts from the same seed.

Its best checkpoint is then scored on the **test** split (the validation split chose the
checkpoint; a dataset without test triplets falls back to validation, and says so), in this
process, with the functions the training loop uses (:mod:`varnext_ray.metrics`):

- latent extrapolation (decode of mu2 + (mu2 - mu1)), copy-last, pixel-linear and the oracle
  (decode of the true mu3), PSNR over all pixels and over motion regions, SSIM;
- ``latent_linearity`` and ``extrap_skill``;
- rollouts: ``extrap_psnr_h{k}`` beside copy-last and pixel-linear for k = 1..K.

Usage:
    python benchmarks/quality.py                          # synthetic + real clip: ~12 min
    python benchmarks/quality.py --data runs/my_dataset --linearity 0 10 100
    python benchmarks/quality.py --quick --out /tmp/q.json  # smoke run, no docs
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks.harness import (  # sets the local Ray env
    REPO,
    begin,
    default_outputs,
    machine_info,
    publish,
    repo_relative,
    report_head,
)

# isort: split

import ray
import torch

from varnext_ray.arch import ArchConfig, load_arch, parse_arch
from varnext_ray.checkpoint import load_checkpoint
from varnext_ray.cluster import Resources, connect_ray
from varnext_ray.dataset import (
    load_manifest,
    sequence_index,
    sequence_keys,
    sequences_dataset,
    to_model_input,
    triplet_index,
)
from varnext_ray.ingest import IngestOptions, ingest
from varnext_ray.metrics import add_sums, finalize, finalize_rollout, rollout_sums, triplet_sums
from varnext_ray.settings import TrainSettings
from varnext_ray.synth import write_synthetic
from varnext_ray.train import train

REAL_CLIP = REPO.parent / "shared" / "data" / "traffic_overpass.avi"
SECTION = "## Extrapolation quality"
PREDICTORS = ("extrap", "oracle", "copy_last", "pixel_linear")

log = logging.getLogger("benchmarks.quality")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags; ``--quick`` shrinks every default for a smoke run."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Usage:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        nargs="+",
        help="'synthetic', dataset directories or video files (default synthetic + real clip)",
    )
    p.add_argument("--config", type=Path, help="architecture (default configs/small_160x90.json)")
    p.add_argument("--linearity", type=float, nargs="+", help="lambdas (default 0 30)")
    p.add_argument("--epochs", type=int, help="epochs per arm (default 12)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--beta",
        type=float,
        default=0.01,
        help="KL weight for every arm (default 0.01; -1: the config's)",
    )
    p.add_argument("--horizons", type=int, default=4, help="rollout steps scored (default 4)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the worker (2)")
    p.add_argument("--cpus", type=int, default=2, help="num_cpus of the Ray instance (2)")
    p.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/...)")
    p.add_argument("--docs", type=Path, help="markdown page whose section is replaced")
    args = p.parse_args(argv)
    quick = args.quick
    default_data = ["synthetic"] + ([str(REAL_CLIP)] if REAL_CLIP.exists() and not quick else [])
    args.data = args.data or default_data
    args.config = args.config or REPO / "configs" / (
        "smoke_64x36.json" if quick else "small_160x90.json"
    )
    args.linearity = args.linearity or [0.0, 30.0]
    args.epochs = args.epochs or (1 if quick else 12)
    default_outputs(args, "quality")
    if min(args.epochs, args.batch_size, args.threads) < 1 or args.horizons < 0:
        p.error("--epochs, --batch-size, --threads must be >= 1 and --horizons >= 0")
    if any(v < 0 for v in args.linearity):
        p.error("--linearity values must be >= 0")
    return args


def prepare(source: str, workdir: Path, arch: ArchConfig, quick: bool) -> tuple[str, Path]:
    """(label, dataset directory) of one ``--data`` entry, ingested at the model's input size."""
    size = (arch.input.width, arch.input.height)
    options = IngestOptions(size=size, val=0.15, test=0.15, seed=0)
    if source == "synthetic":
        clips = workdir / "synthetic"
        write_synthetic(clips, clips=2 if quick else 6, frames=40 if quick else 160, size=size)
        out = workdir / "synthetic_dataset"
        ingest([clips], out, options)
        return "synthetic", out
    path = Path(source)
    if (path / "dataset.json").exists():
        manifest = load_manifest(path)
        if tuple(manifest.size) != size:
            raise SystemExit(
                f"error: dataset {path} holds {manifest.size[0]}x{manifest.size[1]} frames, the "
                f"architecture takes {size[0]}x{size[1]}: pass a matching --config"
            )
        return path.name, path
    out = workdir / f"{path.stem}_dataset"
    ingest([path], out, options)
    return path.stem, out


def score(checkpoint: str, data: Path, horizons: int, batch_size: int) -> dict[str, Any]:
    """The best checkpoint's metrics on the test split (validation if test has no triplets)."""
    manifest = load_manifest(data)
    split = "test" if triplet_index(manifest, "test") else "val"
    vae = load_checkpoint(checkpoint).model.eval()
    sums = None
    triplets = sequences_dataset(data, split, 1, length=3)
    for batch in triplets.iter_torch_batches(batch_size=batch_size, device="cpu"):
        frames = [to_model_input(batch[k], "cpu") for k in ("x1", "x2", "x3")]
        sums = add_sums(sums, triplet_sums(vae, *frames))
    metrics = finalize(sums) | {"split": split, "triplets": int(sums["count"])}
    reach = next(
        (k for k in range(horizons, 0, -1) if sequence_index(manifest, split, 1, k + 2)), 0
    )
    if reach:
        total = torch.zeros(1 + 3 * reach, dtype=torch.float64)
        sequences = sequences_dataset(data, split, 1, length=reach + 2, limit=256)
        for batch in sequences.iter_torch_batches(batch_size=batch_size, device="cpu"):
            total += rollout_sums(
                vae, [to_model_input(batch[k], "cpu") for k in sequence_keys(reach + 2)]
            )
        metrics |= finalize_rollout(total, reach) | {"rollout_sequences": int(total[0])}
    return metrics


def run_arm(
    label: str, data: Path, arch: ArchConfig, lam: float, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """Trains one (dataset, lambda) arm and scores its best checkpoint."""
    config = arch.to_dict()
    config["loss"]["linearity_weight"] = lam
    if args.beta >= 0:
        config["loss"]["beta"] = args.beta
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        val_triplets=128,
        torch_threads=args.threads,
        rollout_steps=0,  # scored on the test split below
        train_on="triplets",
    )
    started = time.perf_counter()
    outcome = train(
        arch=parse_arch(config, f"{label} lambda={lam}"),
        data=data,
        settings=settings,
        resources=Resources(workers=1, cpus_per_worker=1.0),
        experiment="quality-benchmark",
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        storage=workdir / "ray",
        name=f"{label}-lambda{lam:g}",
    )
    seconds = time.perf_counter() - started
    metrics = score(outcome.best_checkpoint, data, args.horizons, args.batch_size)
    return {
        "dataset": label,
        "linearity": lam,
        "train_seconds": round(seconds, 1),
        "best_epoch_val": {k: outcome.metrics.get(k) for k in ("epoch", "extrap_psnr")},
        "train_curvature_last_epoch": outcome.metrics.get("train_curvature"),
        "metrics": metrics,
    }


def markdown(report: dict[str, Any]) -> str:
    """The ``## Extrapolation quality`` section of docs/benchmarks.md."""
    s = report["settings"]
    lines = [
        SECTION,
        "",
        f"`{s['config']}` (beta {s['beta']:g}) trained {s['epochs']} epochs on triplets per arm "
        "(one Ray Train "
        f"worker, lambda = weight of the temporal-linearity term), scored on each dataset's "
        f"test split. Measured {report['timestamp']} on {report['machine']['cores']} cores, "
        f"`{report['command']}`. PSNR in dB (motion: only pixels that changed by > 0.1 between "
        "t+s and t+2s); latent_linearity = ||z3_hat - mu3|| / ||mu3 - mu2|| (0 = straight).",
        "",
    ]
    for label in dict.fromkeys(a["dataset"] for a in report["arms"]):
        arms = [a for a in report["arms"] if a["dataset"] == label]
        m0 = arms[0]["metrics"]
        lines += [
            f"**{label}** ({m0['triplets']} {m0['split']} triplets):",
            "",
            "| predictor | PSNR | PSNR motion | " + " | ".join(_h_headers(m0)) + " |",
            "|---|---|---|" + "---|" * len(_h_headers(m0)),
            _row("copy-last", m0, "copy_last"),
            _row("pixel-linear", m0, "pixel_linear"),
        ]
        for arm in arms:
            m, lam = arm["metrics"], f"{arm['linearity']:g}"
            lines.append(_row(f"latent extrapolation, lambda {lam}", m, "extrap"))
            lines.append(_row(f"oracle (decode of mu3), lambda {lam}", m, "oracle"))
        lines += [
            "",
            "| lambda | latent_linearity | extrap_skill | SSIM | train s |",
            "|---|---|---|---|---|",
        ]
        for arm in arms:
            m = arm["metrics"]
            lines.append(
                f"| {arm['linearity']:g} | {m['latent_linearity']:.3f} | "
                f"{_fmt(m.get('extrap_skill'), '+.3f')} | {m['extrap_ssim']:.3f} | "
                f"{arm['train_seconds']:.0f} |"
            )
        lines += [*_effect(arms), *_reading(arms), ""]
    return "\n".join(lines)


def _effect(arms: list[dict[str, Any]]) -> list[str]:
    """One line per lambda > 0: its change against lambda 0 (one seed: read as indicative)."""
    base = next((a["metrics"] for a in arms if a["linearity"] == 0), None)
    if base is None:
        return []
    out = []
    for arm in arms:
        if arm["linearity"] == 0:
            continue
        m = arm["metrics"]
        horizon = len(_h_headers(m))
        out.append(
            f"Linearity term, lambda {arm['linearity']:g} vs 0: latent_linearity "
            f"{base['latent_linearity']:.3f} -> {m['latent_linearity']:.3f}, extrap_psnr "
            f"{m['extrap_psnr'] - base['extrap_psnr']:+.2f} dB (motion "
            f"{_fmt(_diff(m, base, 'extrap_psnr_motion'), '+.2f')} dB, h{horizon} "
            f"{_fmt(_diff(m, base, f'extrap_psnr_h{horizon}'), '+.2f')} dB), oracle_psnr "
            f"{m['oracle_psnr'] - base['oracle_psnr']:+.2f} dB (one training seed per arm)."
        )
    return ["", *out] if out else []


def _reading(arms: list[dict[str, Any]]) -> list[str]:
    """What limits the prediction, and where it beats copy-last, read off the numbers."""
    out = []
    for arm in arms:
        m, lam = arm["metrics"], f"{arm['linearity']:g}"
        gap = m["oracle_psnr"] - m["extrap_psnr"]
        limit = (
            "the decoder (the oracle is no better), not the straight line, limits it"
            if gap < 0.5
            else "the straight line costs that much against the oracle"
        )
        wins = [
            f"h{k}"
            for k in range(1, len(_h_headers(m)) + 1)
            if m[f"extrap_psnr_h{k}"] > m[f"copy_last_psnr_h{k}"]
        ]
        out.append(
            f"lambda {lam}: extrap_psnr is {gap:.2f} dB below the oracle: {limit}; it beats "
            f"copy-last at {', '.join(wins) if wins else 'no horizon'}."
        )
    return ["", *out]


def _diff(m: dict[str, Any], base: dict[str, Any], key: str) -> float | None:
    return m[key] - base[key] if key in m and key in base else None


def _h_headers(metrics: dict[str, Any]) -> list[str]:
    return [f"h{k}" for k in range(1, 100) if f"extrap_psnr_h{k}" in metrics]


def _row(name: str, m: dict[str, Any], key: str) -> str:
    horizons = [
        _fmt(m.get(f"{key}_psnr_h{k}")) if key != "oracle" else "—"
        for k in range(1, len(_h_headers(m)) + 1)
    ]
    cells = [_fmt(m.get(f"{key}_psnr")), _fmt(m.get(f"{key}_psnr_motion")), *horizons]
    return f"| {name} | " + " | ".join(cells) + " |"


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Trains and scores every (dataset, lambda) arm, prints the section, writes JSON (docs)."""
    argv, started, clock = begin(argv)
    args = parse_args(argv)
    machine = machine_info()
    arch = load_arch(args.config)
    workdir = Path(tempfile.mkdtemp(prefix="varnext-quality-bench-"))
    connect_ray(num_cpus=args.cpus)
    try:
        arms = []
        for source in args.data:
            label, data = prepare(source, workdir, arch, args.quick)
            for lam in args.linearity:
                log.info("%s, lambda %g", label, lam)
                arms.append(run_arm(label, data, arch, lam, args, workdir))
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        **report_head("quality", started, argv),
        "machine": machine,
        "settings": {
            "quick": args.quick,
            "config": repo_relative(args.config),
            "data": args.data,
            "linearity": args.linearity,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "beta": args.beta,
            "horizons": args.horizons,
            "torch_threads": args.threads,
        },
        "arms": arms,
        "wall_seconds": round(time.perf_counter() - clock, 1),
    }
    section = markdown(report)
    publish(report, section, SECTION, args.out, args.docs)
    return report


if __name__ == "__main__":
    main()
