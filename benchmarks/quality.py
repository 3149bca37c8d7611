"""Extrapolation quality (issue #15): which architecture arms learn, and where the line helps.

A grid of arms (flat vs spatial latent, ``"mse"`` vs ``"calibrated"`` reconstruction,
``loss.linearity_weight`` 0 vs 1) is trained on each dataset with ``varnext train``'s own
path: :func:`varnext_ray.train.train` on a local Ray, one worker, recorded in a local MLflow
store, with a budget of optimizer steps (``TrainSettings.steps``). Every arm starts from the same
seed and the architecture ``--config`` (default ``configs/smoke_64x36.json``), changed only in
``latent``, ``loss.reconstruction`` and ``loss.linearity_weight``. With ``--train-on auto``
(``varnext train``'s default) the arms with a linearity weight read (t, t+1, t+2) triplets, the
others single frames.

Datasets: the demo's synthetic clips (``write_synthetic(clips=6, frames=90, size=(128, 72),
seed=0)``, ingested at the model's size with val/test 0.15) and the real clip
``../shared/data/traffic_overpass.avi`` when it is there, both at 64x36; then, time allowing,
ONE run of the shipped ``configs/small_160x90.json`` on the real clip at 160x90 with
``varnext train``'s default step budget.

The best checkpoint (chosen by the validation split) of each arm is scored on the **test**
split at each triplet stride s of ``--strides`` (1 and 3: the same model at both) with the
functions the training loop uses (:mod:`varnext_ray.metrics`): oracle (decode of mu3), the
median-of-training-frames background, latent copy (decode of mu2), latent extrapolation
(decode of 2 mu2 - mu1) and copy-last, over all pixels and over the motion region;
``extrap_gain_db(_motion)``, ``motion_captured``, ``active_units``, ``decoder_sensitivity``.

``--until HH:MM`` (UTC) skips the arms that would end after that time (estimated from the arms
already run); arms run in priority order, alternating datasets, so a cut grid keeps the key
comparisons on both datasets. Skipped arms are listed in the results.

Usage:
    python benchmarks/quality.py                         # full grid + default run: ~25-40 min
    python benchmarks/quality.py --until 20:28 --steps 1500
    python benchmarks/quality.py --arms spatial-calibrated-0 flat-mse-0 --no-default-run
    python benchmarks/quality.py --quick --out /tmp/q.json  # smoke run, no docs
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
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

from varnext_ray.arch import ArchConfig, load_arch, parse_arch
from varnext_ray.checkpoint_load import load_checkpoint
from varnext_ray.cluster import Resources, connect_ray
from varnext_ray.ingest import IngestOptions, ingest
from varnext_ray.manifest import load_manifest
from varnext_ray.scoring import score_checkpoint
from varnext_ray.settings import TrainSettings
from varnext_ray.synth import write_synthetic
from varnext_ray.train import train

REAL_CLIP = REPO.parent / "shared" / "data" / "traffic_overpass.avi"
DEFAULT_CONFIG = REPO / "configs" / "smoke_64x36.json"
DEFAULT_RUN_CONFIG = REPO / "configs" / "small_160x90.json"
DEFAULT_RUN_STEPS = 2000  # varnext train's --steps default (varnext_ray.cli_jobs.DEFAULT_STEPS)
SECTION = "## Extrapolation quality"
# The bar: best oracle PSNR over the background PSNR (s = 1, test split), dB.
BAR_DB = {"demo": 3.0, "traffic": 2.0}
# Arms in priority order (a grid cut by --until keeps the first ones): latent-recon-lambda.
ARMS = (
    "spatial-calibrated-0",
    "flat-mse-0",
    "spatial-calibrated-1",
    "spatial-mse-0",
    "flat-calibrated-0",
    "flat-mse-1",
    "spatial-mse-1",
    "flat-calibrated-1",
)
TRIPLET_COST = 3.0  # a step on triplets encodes 3 batches of frames: the estimate's factor

log = logging.getLogger("benchmarks.quality")


@dataclass(frozen=True)
class Arm:
    """One point of the grid: latent kind, reconstruction loss, linearity weight."""

    latent: str  # "flat" or "spatial"
    reconstruction: str  # "mse" or "calibrated"
    linearity: float

    @classmethod
    def parse(cls, spec: str) -> Arm:
        """``"spatial-calibrated-0"`` -> Arm("spatial", "calibrated", 0.0)."""
        try:
            latent, reconstruction, lam = spec.split("-")
            arm = cls(latent, reconstruction, float(lam))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"arm {spec!r}: expected LATENT-RECONSTRUCTION-LAMBDA, e.g. spatial-calibrated-0"
            ) from None
        if latent not in ("flat", "spatial") or reconstruction not in ("mse", "calibrated"):
            raise argparse.ArgumentTypeError(
                f"arm {spec!r}: latent flat|spatial, reconstruction mse|calibrated"
            )
        if arm.linearity < 0:
            raise argparse.ArgumentTypeError(f"arm {spec!r}: lambda must be >= 0")
        return arm

    @property
    def name(self) -> str:
        return f"{self.latent}-{self.reconstruction}-{self.linearity:g}"

    def config(self, base: ArchConfig, spatial_channels: int, flat_dim: int) -> dict[str, Any]:
        """The base architecture with this arm's latent, reconstruction and linearity weight."""
        config = base.to_dict()
        config.pop("latent_dim", None)
        config["latent"] = (
            {"kind": "spatial", "channels": spatial_channels}
            if self.latent == "spatial"
            else {"kind": "flat", "dim": flat_dim}
        )
        config["loss"]["reconstruction"] = self.reconstruction
        config["loss"]["linearity_weight"] = self.linearity
        return config


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
    p.add_argument("--config", type=Path, help="base architecture (configs/smoke_64x36.json)")
    p.add_argument(
        "--arms", nargs="*", type=Arm.parse, help="LATENT-RECON-LAMBDA (default all 8; none: 0)"
    )
    p.add_argument("--spatial-channels", type=int, default=4, help="spatial latent C (4)")
    p.add_argument("--flat-dim", type=int, default=8, help="flat latent size (8, as before #15)")
    p.add_argument("--steps", type=int, help="optimizer steps per arm (default 1500)")
    p.add_argument("--epochs", type=int, help="evaluation rounds per arm (default 3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="grid learning rate (2e-3)")
    p.add_argument("--train-on", default="auto", choices=("auto", "frames", "triplets"))
    p.add_argument("--strides", type=int, nargs="+", default=[1, 3], help="scored s (1 3)")
    p.add_argument("--synth-clips", type=int, help="synthetic clips (default 6)")
    p.add_argument("--synth-frames", type=int, help="frames per synthetic clip (default 90)")
    p.add_argument(
        "--default-run",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train configs/small_160x90.json on the real clip at 160x90 (default: yes "
        "when the clip is there, not with --quick)",
    )
    p.add_argument("--default-steps", type=int, default=DEFAULT_RUN_STEPS)
    p.add_argument("--until", help="UTC HH:MM: skip arms that would end later")
    p.add_argument(
        "--keep",
        type=Path,
        nargs="+",
        default=[],
        help="earlier results JSON files: their arms measured with the same settings are reused",
    )
    p.add_argument("--note", default="", help="a sentence for the docs (e.g. the machine's load)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the worker (1)")
    p.add_argument("--cpus", type=int, default=2, help="num_cpus of the Ray instance (2)")
    p.add_argument("--quick", action="store_true", help="a smoke run of about two minutes")
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/...)")
    p.add_argument("--docs", type=Path, help="markdown page whose section is replaced")
    args = p.parse_args(argv)
    quick = args.quick
    real = [str(REAL_CLIP)] if REAL_CLIP.exists() and not quick else []
    args.data = args.data or ["synthetic", *real]
    args.config = args.config or DEFAULT_CONFIG
    args.arms = (
        args.arms
        if args.arms is not None
        else (
            [Arm.parse("spatial-calibrated-0"), Arm.parse("flat-mse-1")]
            if quick
            else [Arm.parse(a) for a in ARMS]
        )
    )
    args.steps = args.steps or (24 if quick else 1500)
    args.epochs = args.epochs or (1 if quick else 3)
    args.synth_clips = args.synth_clips or (2 if quick else 6)
    args.synth_frames = args.synth_frames or (40 if quick else 90)
    if args.default_run is None:
        args.default_run = bool(real)
    args.deadline = _deadline(p, args.until)
    default_outputs(args, "quality", quick_to_tmp=True)
    if min(args.steps, args.epochs, args.batch_size, args.threads, *args.strides) < 1:
        p.error("--steps, --epochs, --batch-size, --threads and --strides must be >= 1")
    return args


def _deadline(p: argparse.ArgumentParser, until: str | None) -> float | None:
    """``--until HH:MM`` (UTC, the next such time) as a Unix time, or None."""
    if until is None:
        return None
    try:
        hour, minute = (int(v) for v in until.split(":"))
        now = dt.datetime.now(dt.UTC)
        end = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    except ValueError:
        p.error(f"--until {until!r}: expected HH:MM (UTC)")
    if end < now - dt.timedelta(hours=1):
        end += dt.timedelta(days=1)
    return end.timestamp()


def prepare(source: str, workdir: Path, size: tuple[int, int], args: argparse.Namespace) -> Path:
    """The dataset directory of one ``--data`` entry, ingested at ``size`` (W, H)."""
    options = IngestOptions(size=size, val=0.15, test=0.15, seed=0)
    tag = f"{size[0]}x{size[1]}"
    if source == "synthetic":
        clips = workdir / "synthetic"
        if not clips.exists():
            write_synthetic(
                clips, clips=args.synth_clips, frames=args.synth_frames, size=(128, 72), seed=0
            )
        out = workdir / f"synthetic_{tag}"
        ingest([clips], out, options)
        return out
    path = Path(source)
    if (path / "dataset.json").exists():
        if tuple(load_manifest(path).size) != size:
            raise SystemExit(f"error: dataset {path} is not {tag}: pass a matching --config")
        return path
    out = workdir / f"{path.stem}_{tag}"
    ingest([path], out, options)
    return out


def label_of(source: str) -> str:
    """``demo`` for the synthetic clips, else the file or directory name."""
    return "demo" if source == "synthetic" else Path(source).stem


def run_arm(
    label: str,
    data: Path,
    config: dict[str, Any],
    arm_name: str,
    settings: TrainSettings,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    """Trains one arm through ``varnext train``'s path and scores its best checkpoint."""
    arch = parse_arch(config, f"{label} {arm_name}")
    started = time.perf_counter()
    outcome = train(
        arch=arch,
        data=data,
        settings=settings,
        resources=Resources(workers=1, cpus_per_worker=1.0),
        experiment="quality-benchmark",
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        storage=workdir / "ray",
        name=re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{label}-{arm_name}"),
    )
    wall = time.perf_counter() - started
    if outcome.best_checkpoint is None:
        raise RuntimeError(f"{label} {arm_name}: no checkpoint with a finite objective")
    meta = load_checkpoint(outcome.best_checkpoint).meta
    started = time.perf_counter()
    by_stride = score_checkpoint(outcome.best_checkpoint, data, args.strides, args.batch_size)
    scoring = time.perf_counter() - started
    last = outcome.metrics
    return {
        "dataset": label,
        "arm": arm_name,
        "latent": config["latent"],
        "reconstruction": config["loss"]["reconstruction"],
        "linearity": float(config["loss"].get("linearity_weight", 0.0)),
        "size": [config["input"]["width"], config["input"]["height"]],
        "train_on": "triplets" if settings.trains_on_triplets(arch) else "frames",
        "steps_budget": settings.steps,
        "steps": int(last.get("steps", 0)),
        "steps_at_best": int(meta.get("metrics", {}).get("steps", 0)),
        "best_epoch": meta.get("epoch"),
        "wall_seconds": round(wall, 1),
        "score_seconds": round(scoring, 1),
        "lr": settings.lr,
        # run_all.py's summary reads metrics (s = 1) and linearity
        "metrics": by_stride.get("1") or next(iter(by_stride.values()), {}),
        "by_stride": by_stride,
        "val_last_epoch": {
            k: last.get(k)
            for k in ("epoch", "steps", "oracle_psnr", "background_psnr", "extrap_psnr_motion")
        },
    }


def estimate(done: list[dict[str, Any]], label: str, steps: int, triplets: bool) -> float | None:
    """Seconds an arm of ``steps`` on ``label`` should take, from the arms run so far on it (or
    else on any dataset; None: nothing run yet). Triplet arms cost ``TRIPLET_COST`` x a frame
    arm's steps."""
    same = [a for a in done if a["dataset"] == label and a["steps"]]
    same = same or [a for a in done if a["steps"]]  # another dataset of the same frame size
    if not same:
        return None

    def cost(a: dict[str, Any]) -> float:
        factor = TRIPLET_COST if a["train_on"] == "triplets" else 1.0
        return a["wall_seconds"] / a["steps"] / factor

    per_step = max(cost(a) for a in same) * (TRIPLET_COST if triplets else 1.0)
    return 30.0 + per_step * steps + max(a["score_seconds"] for a in same)


def markdown(report: dict[str, Any]) -> str:
    """The ``## Extrapolation quality`` section of docs/benchmarks.md."""
    s = report["settings"]
    lines = [
        SECTION,
        "",
        f"Issue #15: arms of `{s['config']}` (latent flat {s['flat_dim']} vs spatial "
        f"{s['spatial_channels']} x h x w; reconstruction `mse` vs `calibrated`; "
        f"`loss.linearity_weight` 0 vs 1), each trained {s['steps']} optimizer steps (batch "
        f"{s['batch_size']}, lr {s['lr']:g}, {s['epochs']} evaluation rounds, train_on "
        f"`{s['train_on']}`: the lambda > 0 arms read triplets, 3 frames per sample) through "
        "`varnext train`'s path (Ray Train, 1 worker), the validation-best checkpoint scored on "
        f"the test split at s = {', '.join(map(str, s['strides']))}. Measured "
        f"{report['timestamp']} on {report['machine']['cores']} cores (load average at start "
        f"{_load(report)}), `{report['command']}`. {s.get('note', '')}".rstrip(),
        "",
        "PSNR in dB. oracle = decode(mu3); bg = per-pixel median of the training frames; "
        "lat.copy = decode(mu2); extrap = decode(2 mu2 - mu1); copy-last = frame t+s; `_m` = "
        "over the motion region (|x3 - x2| > 0.1); gain_m = extrap_m - lat.copy_m "
        "(extrap_gain_db_motion); captured = gain_m / (oracle_m - lat.copy_m); AU = active "
        "units / latent elements; sens = decoder_sensitivity; wall = train() call, Ray start-up "
        "and evaluation rounds included.",
        "",
    ]
    sources = sorted({a["kept_from"] for a in report["arms"] if a.get("kept_from")})
    if sources:
        lines += [
            f"The arms were trained by {len(sources)} runs of this script side by side (so "
            "their wall times include each other's load), gathered with `--keep` (results "
            f"written {', '.join(sources)}).",
            "",
        ]
    for label in dict.fromkeys(a["dataset"] for a in report["arms"]):
        arms = [a for a in report["arms"] if a["dataset"] == label]
        m0 = arms[0]["metrics"]
        lines += [
            f"### {label}",
            "",
            f"{m0.get('triplets')} {m0.get('split')} triplets at s = 1, frames "
            f"{arms[0]['size'][0]}x{arms[0]['size'][1]}." + _default_note(arms[0]),
            "",
            "| arm | s | steps | wall s | oracle | bg | lat.copy | extrap | copy-last | oracle_m "
            "| bg_m | lat.copy_m | extrap_m | copy-last_m | gain_m | captured | AU | sens |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for arm in arms:
            for stride, m in arm["by_stride"].items():
                lines.append(_row(arm, stride, m))
        lines += ["", *_reading(label, arms), ""]
    skipped = report.get("skipped") or []
    if skipped:
        lines += [
            "Not run: "
            + "; ".join(
                f"{x['dataset']} {x['arm']} ("
                + (f"failed: {x['failed'][:120]}" if "failed" in x else "`--until` would pass")
                + ")"
                for x in skipped
            )
            + ".",
            "",
        ]
    return "\n".join(lines)


def _default_note(arm: dict[str, Any]) -> str:
    """What differs for the run of a shipped config (not a grid arm)."""
    if not arm["arm"].endswith(".json"):
        return ""
    return (
        f" The shipped config as it is ({arm['latent']['kind']} latent, "
        f"{arm['reconstruction']}), lr {arm['lr']:g}, a budget of {arm['steps_budget']} steps "
        f"(`varnext train`'s default: {DEFAULT_RUN_STEPS})."
    )


def _load(report: dict[str, Any]) -> str:
    load = report["machine"].get("load_average_at_start")
    return "?" if not load else f"{load[0]:.1f}"


def _row(arm: dict[str, Any], stride: str, m: dict[str, Any]) -> str:
    units = m.get("active_units")
    au = "—" if units is None else f"{units:.0f}/{m['latent_elements']:.0f}"
    cells = [
        arm["arm"],
        stride,
        str(arm["steps"]),
        f"{arm['wall_seconds']:.0f}",
        *(
            _fmt(m.get(k))
            for k in (
                "oracle_psnr",
                "background_psnr",
                "latent_copy_psnr",
                "extrap_psnr",
                "copy_last_psnr",
                "oracle_psnr_motion",
                "background_psnr_motion",
                "latent_copy_psnr_motion",
                "extrap_psnr_motion",
                "copy_last_psnr_motion",
            )
        ),
        _fmt(m.get("extrap_gain_db_motion"), "+.2f"),
        _fmt(m.get("motion_captured")),
        au,
        _fmt(m.get("decoder_sensitivity")),
    ]
    return "| " + " | ".join(cells) + " |"


def margin(m: dict[str, Any], motion: bool = False) -> float | None:
    """oracle - background PSNR (dB), overall or in the motion region."""
    suffix = "_motion" if motion else ""
    oracle, bg = m.get(f"oracle_psnr{suffix}"), m.get(f"background_psnr{suffix}")
    return None if oracle is None or bg is None else oracle - bg


def bar_for(label: str) -> float | None:
    """The issue's oracle-over-background bar for a dataset label (None: no bar)."""
    if label == "demo":
        return BAR_DB["demo"]
    return BAR_DB["traffic"] if "traffic" in label else None


def best_arm(arms: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The arm with the largest oracle - background margin at s = 1."""
    scored = [a for a in arms if margin(a["by_stride"].get("1", {})) is not None]
    return max(scored, key=lambda a: margin(a["by_stride"]["1"]), default=None)


def summarize_best(arms: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per dataset: the best arm, its margins and whether the issue's bar is met."""
    out = {}
    for label in dict.fromkeys(a["dataset"] for a in arms):
        best = best_arm([a for a in arms if a["dataset"] == label])
        if best is None:
            continue
        m = best["by_stride"]["1"]
        bar = bar_for(label)
        out[label] = {
            "arm": best["arm"],
            "oracle_psnr": m["oracle_psnr"],
            "background_psnr": m["background_psnr"],
            "margin_db": margin(m),
            "margin_motion_db": margin(m, motion=True),
            "bar_db": bar,
            "met": None if bar is None else margin(m) >= bar,
        }
    return out


def _reading(label: str, arms: list[dict[str, Any]]) -> list[str]:
    """Plain sentences read off the numbers: best arm, where the straight line helps, where not."""
    out = []
    best = best_arm(arms)
    if best is not None:
        m = best["by_stride"]["1"]
        bar = bar_for(label)
        verdict = (
            ""
            if bar is None
            else f" (issue bar +{bar:g} dB: {'met' if margin(m) >= bar else 'NOT met'})"
        )
        out.append(
            f"- **Best: `{best['arm']}`**: oracle {m['oracle_psnr']:.2f} vs background "
            f"{m['background_psnr']:.2f} dB = {margin(m):+.2f} dB{verdict}; motion region "
            f"{_fmt(margin(m, True), '+.2f')} dB."
        )
    flat = [a for a in arms if a["latent"]["kind"] == "flat"]
    spatial = [a for a in arms if a["latent"]["kind"] == "spatial"]
    if flat and spatial:
        out.append(
            "- Latent: best flat arm "
            f"{_fmt(_best_margin(flat), '+.2f')} dB over background (motion "
            f"{_fmt(_best_margin(flat, True), '+.2f')}), best spatial "
            f"{_fmt(_best_margin(spatial), '+.2f')} dB (motion "
            f"{_fmt(_best_margin(spatial, True), '+.2f')})."
        )
    pairs = [(a, s, m) for a in arms for s, m in a["by_stride"].items()]
    helped = [(a, s, m) for a, s, m in pairs if (m.get("extrap_gain_db_motion") or -1.0) > 0]
    if pairs:
        out.append(
            f"- Where the straight line helps: extrap_gain_db_motion > 0 in {len(helped)} of "
            f"{len(pairs)} (arm, s) scores"
            + (
                "; " + "; ".join(_gain_text(a, s, m) for a, s, m in pairs if a is best)
                if best
                else ""
            )
            + "."
        )
    for stride in ("1", "3"):
        at = [(a, a["by_stride"][stride]) for a in arms if stride in a["by_stride"]]
        if not at:
            continue
        overall = sum(m["extrap_psnr"] > m["copy_last_psnr"] for _, m in at)
        motion = sum(
            m.get("extrap_psnr_motion", -1) > m.get("copy_last_psnr_motion", 1e9) for _, m in at
        )
        ref = at[0][1]
        out.append(
            f"- Versus copy-last at s = {stride} ({ref['copy_last_psnr']:.2f} dB overall, "
            f"{_fmt(ref.get('copy_last_psnr_motion'))} motion): extrap beats it overall in "
            f"{overall} of {len(at)} arms, in the motion region in {motion} of {len(at)}"
            + (
                f" (best arm: {best['by_stride'][stride]['extrap_psnr']:.2f} overall, "
                f"{_fmt(best['by_stride'][stride].get('extrap_psnr_motion'))} motion)"
                if best and stride in best["by_stride"]
                else ""
            )
            + "."
        )
    out += _linearity_effect(arms)
    return out


def _best_margin(arms: list[dict[str, Any]], motion: bool = False) -> float | None:
    values = [margin(a["by_stride"].get("1", {}), motion) for a in arms]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _gain_text(arm: dict[str, Any], stride: str, m: dict[str, Any]) -> str:
    return (
        f"best arm s = {stride}: gain_m {_fmt(m.get('extrap_gain_db_motion'), '+.2f')} dB, "
        f"captured {_fmt(m.get('motion_captured'))} (all pixels: extrap - latent copy "
        f"{_fmt(m.get('extrap_gain_db'), '+.2f')} dB)"
    )


def _linearity_effect(arms: list[dict[str, Any]]) -> list[str]:
    """lambda 1 vs 0 for each (latent, reconstruction) with both arms (one seed each)."""
    out = []
    by_key = {(a["latent"]["kind"], a["reconstruction"], a["linearity"]): a for a in arms}
    for (latent, recon, lam), arm in by_key.items():
        base = by_key.get((latent, recon, 0.0))
        if lam == 0 or base is None:
            continue
        parts = []
        for stride in ("1", "3"):
            m, m0 = arm["by_stride"].get(stride), base["by_stride"].get(stride)
            if m and m0:
                parts.append(
                    f"s = {stride}: gain_m {_fmt(m0.get('extrap_gain_db_motion'), '+.2f')} -> "
                    f"{_fmt(m.get('extrap_gain_db_motion'), '+.2f')}, oracle "
                    f"{m['oracle_psnr'] - m0['oracle_psnr']:+.2f} dB"
                )
        out.append(f"- Linearity term {lam:g} vs 0 ({latent}, {recon}): " + "; ".join(parts))
    return out


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Trains and scores every (dataset, arm), prints the section, writes JSON (and docs)."""
    argv, started, clock = begin(argv)
    args = parse_args(argv)
    machine = machine_info()
    base = load_arch(args.config)
    size = (base.input.width, base.input.height)
    workdir = Path(tempfile.mkdtemp(prefix="varnext-quality-bench-"))
    settings = TrainSettings(
        epochs=args.epochs,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        val_triplets=128,
        torch_threads=args.threads,
        rollout_steps=0,  # scored on the test split below
        train_on=args.train_on,
    )
    arms: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    kept = kept_arms(args.keep, _comparable(args))
    datasets: dict[str, Path] = {}  # label -> ingested dataset, made when an arm first needs it

    def dataset(source: str) -> Path:
        if not ray.is_initialized():
            connect_ray(num_cpus=args.cpus)
        if label_of(source) not in datasets:
            datasets[label_of(source)] = prepare(source, workdir, size, args)
        return datasets[label_of(source)]

    try:
        for arm in args.arms:  # priority order, alternating datasets
            config = arm.config(base, args.spatial_channels, args.flat_dim)
            triplets = settings.trains_on_triplets(parse_arch(config, arm.name))
            for source in args.data:
                label = label_of(source)
                if (label, arm.name) in kept:
                    log.info("%s %s: kept from an earlier run", label, arm.name)
                    arms.append(kept[label, arm.name])
                    continue
                guess = estimate(arms, label, args.steps, triplets)
                if _too_late(args.deadline, guess):
                    log.info("skipping %s %s: ~%.0f s would pass --until", label, arm.name, guess)
                    skipped.append({"dataset": label, "arm": arm.name, "estimate_s": guess})
                    continue
                log.info("%s %s (estimate %s s)", label, arm.name, guess and round(guess))
                data = dataset(source)
                _attempt(arms, skipped, args, label, arm.name, data, config, settings, workdir)
        if args.default_run:
            _default_run(args, workdir, arms, skipped, kept)
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        **report_head("quality", started, argv),
        "machine": machine,
        "settings": {
            **_comparable(args),
            "quick": args.quick,
            "data": args.data,
            "arms": [a.name for a in args.arms],
            "torch_threads": args.threads,
            "default_run": args.default_run,
            "default_steps": args.default_steps,
            "note": args.note,
            "until": args.until,
            "keep": [str(p) for p in args.keep],
        },
        "arms": arms,
        "skipped": skipped,
        "best": summarize_best(arms),
        "wall_seconds": round(time.perf_counter() - clock, 1),
    }
    section = markdown(report)
    publish(report, section, SECTION, args.out, args.docs)
    return report


def _comparable(args: argparse.Namespace) -> dict[str, Any]:
    """The settings two runs must share for an arm's result to be reused (``--keep``)."""
    return {
        "config": repo_relative(args.config),
        "synthetic": {"clips": args.synth_clips, "frames": args.synth_frames},
        "spatial_channels": args.spatial_channels,
        "flat_dim": args.flat_dim,
        "steps": args.steps,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_on": args.train_on,
        "strides": list(args.strides),
    }


def kept_arms(
    paths: Sequence[Path], settings: dict[str, Any]
) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(dataset, arm): result}`` of earlier runs with the same comparable settings (the
    first file that holds an arm wins)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in paths:
        old = json.loads(path.read_text())
        differ = [k for k, v in settings.items() if old["settings"].get(k) != v]
        if differ:
            raise SystemExit(f"error: --keep {path}: settings differ ({', '.join(differ)})")
        for a in old["arms"]:
            kept = a | {"kept_from": a.get("kept_from") or old["timestamp"]}
            out.setdefault((a["dataset"], a["arm"]), kept)
    return out


def _attempt(
    arms: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    args: argparse.Namespace,
    label: str,
    name: str,
    data: Path,
    config: dict[str, Any],
    settings: TrainSettings,
    workdir: Path,
) -> None:
    """Runs one arm; a failed one (e.g. Ray's memory monitor killed the worker) is listed in
    ``skipped`` with its reason and the grid goes on. After each arm the results so far go to
    ``<out>.partial.json`` (usable with ``--keep``)."""
    try:
        arms.append(run_arm(label, data, config, name, settings, args, workdir))
    except Exception as err:  # one arm's failure must not lose the others
        log.exception("%s %s failed", label, name)
        skipped.append({"dataset": label, "arm": name, "failed": f"{type(err).__name__}: {err}"})
    partial = args.out.with_suffix(".partial.json")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text(
        json.dumps(
            {
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "settings": _comparable(args),
                "arms": arms,
                "skipped": skipped,
            },
            indent=2,
        )
        + "\n"
    )


def _too_late(deadline: float | None, guess: float | None) -> bool:
    return deadline is not None and guess is not None and time.time() + guess > deadline


def _default_run(
    args: argparse.Namespace,
    workdir: Path,
    arms: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    kept: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """One run of the shipped small config on the real clip at its size, ``varnext train``'s
    default step budget and lr (fewer evaluation rounds and validation triplets, no rollouts)."""
    arch = load_arch(DEFAULT_RUN_CONFIG)
    size = (arch.input.width, arch.input.height)
    label = f"{REAL_CLIP.stem} {size[0]}x{size[1]} (default small config)"
    name = f"{repo_relative(DEFAULT_RUN_CONFIG)}"
    if kept.get((label, name), {}).get("steps_budget") == args.default_steps:
        arms.append(kept[label, name])
        return
    # ~0.21 CPU s/step measured unloaded (scratch15 FINDINGS), x2 for a loaded machine
    guess = 60.0 + 0.45 * args.default_steps
    if _too_late(args.deadline, guess):
        log.info("skipping the default run: ~%.0f s would pass --until", guess)
        skipped.append({"dataset": label, "arm": name, "estimate_s": guess})
        return
    if not ray.is_initialized():
        connect_ray(num_cpus=args.cpus)
    data = prepare(str(REAL_CLIP), workdir, size, args)
    settings = TrainSettings(
        epochs=4,
        steps=args.default_steps,
        batch_size=32,
        lr=1e-3,
        val_triplets=128,
        torch_threads=args.threads,
        rollout_steps=0,
    )
    log.info("%s: %s, %d steps", label, name, args.default_steps)
    _attempt(arms, skipped, args, label, name, data, arch.to_dict(), settings, workdir)


if __name__ == "__main__":
    main()
