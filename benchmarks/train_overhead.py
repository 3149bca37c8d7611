"""Training-path benchmark: Ray Train overhead against a plain PyTorch loop, and DDP scaling.

On synthetic clips ingested at the architecture's input size (160x90, configs/small_160x90.json
by default), each round runs, in one process and one local Ray instance:

- plain: the loop a PyTorch user would write: the same model (``build_vae``, same seed), AdamW
  with the same settings, the same batch size and number of steps, on the training frames read
  once from the dataset's Parquet (``decode_images``), shuffled per epoch, and fed as uint8
  through ``to_model_input``; ``torch.set_num_threads`` = the workers' ``torch_threads``;
- Ray, 1 worker: ``build_trainer(...).fit()`` (``tracking_run=None``): Ray Data streams the
  split, the per-worker loop of :mod:`varnext_ray.train_loop` trains, validates and checkpoints;
- Ray, 2 workers: the same with DDP (gloo), each worker holding its share of the cluster's CPUs.

Each run trains a fresh model for ``--epochs`` epochs; the first is warm-up and not counted.
steps/s of an epoch = steps / seconds of its training pass (Ray: the loop's ``train_steps /
train_seconds``, data loading included; plain: the same for its in-memory pass); frames/s =
frames / seconds. Results are medians over every timed epoch of every round. Rounds alternate
the order of the three runs (plain, Ray 1, Ray 2, then Ray 2, Ray 1, plain) so that drift in the
machine's load hits all alike, and each run records the CPU that other processes used meanwhile.

Usage:
    python benchmarks/train_overhead.py                 # 160x90, small_160x90.json, ~6 min
    python benchmarks/train_overhead.py --repeats 5 --epochs 5
    python benchmarks/train_overhead.py --quick --out /tmp/to.json --docs /tmp/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks.harness import (  # sets the local Ray env
    REPO,
    CpuMeter,
    begin,
    default_outputs,
    machine_info,
    publish,
    repo_relative,
    report_head,
)

# isort: split

import numpy as np
import pyarrow.parquet as pq
import ray
import ray.train
import torch

from varnext_ray.arch import ArchConfig, load_arch
from varnext_ray.cluster import Resources
from varnext_ray.dataset import to_model_input
from varnext_ray.frame_codec import decode_images
from varnext_ray.frame_fit import parse_size
from varnext_ray.ingest import IngestOptions, ingest
from varnext_ray.manifest import load_manifest
from varnext_ray.model import build_vae, elbo_loss
from varnext_ray.settings import TrainSettings
from varnext_ray.synth import write_synthetic
from varnext_ray.train import build_trainer

SECTION = "## Training overhead"
GOAL_RATIO = 0.95  # the goal: Ray Train (1 worker) steps/s >= 0.95 x the plain loop
RUNS = ("plain", "ray_1", "ray_2")

log = logging.getLogger("benchmarks.train_overhead")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line; ``--quick`` shrinks every unset setting to a smoke run."""
    p = argparse.ArgumentParser(
        description="Measure Ray Train's steps/s against a plain PyTorch loop, and DDP scaling.",
        epilog="example:\n  python benchmarks/train_overhead.py --repeats 3 --epochs 4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="architecture (default configs/small_160x90.json)")
    p.add_argument("--size", help="WxH of the ingested frames (default: the config's input)")
    p.add_argument("--frames", type=int, help="frames per synthetic clip (default 400)")
    p.add_argument("--clips", type=int, default=4, help="synthetic clips (default 4)")
    p.add_argument("--epochs", type=int, help="epochs per run, the first one warm-up (default 4)")
    p.add_argument("--batch-size", type=int, help="batch per worker (default 32)")
    p.add_argument("--repeats", type=int, help="rounds of the three runs (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker/loop (1)")
    p.add_argument("--cpus", type=int, default=2, help="num_cpus of the Ray instance (2)")
    p.add_argument("--cpus-per-worker", type=float, help="default: varnext's share")
    p.add_argument("--val-triplets", type=int, help="validation triplets per epoch (default 32)")
    p.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/...)")
    p.add_argument("--docs", type=Path, help="markdown page whose section is replaced")
    args = p.parse_args(argv)
    quick = args.quick
    args.config = args.config or REPO / "configs" / (
        "smoke_64x36.json" if quick else "small_160x90.json"
    )
    args.frames = args.frames or (40 if quick else 400)
    args.clips = args.clips if not quick else min(args.clips, 2)
    args.epochs = args.epochs or (2 if quick else 4)
    args.batch_size = args.batch_size or (8 if quick else 32)
    args.repeats = args.repeats or (1 if quick else 2)
    args.val_triplets = args.val_triplets or (8 if quick else 32)
    default_outputs(args, "train_overhead")
    if args.epochs < 2 or min(args.repeats, args.threads, args.batch_size, args.clips) < 1:
        p.error("--epochs must be >= 2 (one warm-up); --repeats, --threads, --batch-size >= 1")
    return args


def prepare_dataset(workdir: Path, arch: ArchConfig, args: argparse.Namespace) -> Path:
    """Synthetic clips at the frame size, ingested (raw encoding) with a validation split."""
    size = parse_size(args.size, "--size") if args.size else (arch.input.width, arch.input.height)
    if size != (arch.input.width, arch.input.height):
        raise SystemExit(
            f"error: --size {size[0]}x{size[1]} does not match the architecture's input "
            f"{arch.input.width}x{arch.input.height} ({args.config}): pass a matching --size"
        )
    clips = workdir / "clips"
    write_synthetic(clips, clips=args.clips, frames=args.frames, size=size, seed=0)
    data = workdir / "dataset"
    manifest = ingest([clips], data, IngestOptions(size=size, val=0.1, test=0.0, seed=0))
    log.info("dataset: %s frames per split at %dx%d", manifest["splits"], *size)
    return data


def load_train_frames(data: Path) -> torch.Tensor:
    """Every training frame as uint8 (N, H, W, 3), read once from the Parquet files."""
    manifest = load_manifest(data)
    chunks = [
        decode_images(
            pq.read_table(f, columns=["image"]).column("image").to_pylist(),
            manifest.encoding,
            manifest.size,
        )
        for f in manifest.files("train")
    ]
    return torch.from_numpy(np.concatenate(chunks))


def plain_run(arch: ArchConfig, frames: torch.Tensor, settings: TrainSettings) -> list[dict]:
    """The plain PyTorch loop: a fresh seeded model, ``settings.epochs`` epochs in memory."""
    torch.set_num_threads(settings.torch_threads)
    torch.manual_seed(settings.seed)  # as the worker loop seeds before build_vae
    vae = build_vae(arch)
    optimizer = torch.optim.AdamW(
        vae.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    epochs = []
    for epoch in range(settings.epochs):
        vae.train()
        started = time.perf_counter()
        order = torch.randperm(len(frames), generator=torch.Generator().manual_seed(epoch))
        loss_sum, steps = 0.0, 0
        for i in range(0, len(frames), settings.batch_size):
            x = to_model_input(frames[order[i : i + settings.batch_size]], "cpu")  # (B, 3, H, W)
            recon, mu, logvar = vae(x)
            loss = elbo_loss(recon, x, mu, logvar, arch.loss, epoch)["loss"]
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite loss in the plain loop at epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(x)
            steps += 1
        seconds = time.perf_counter() - started
        epochs.append(_epoch(epoch + 1, steps, len(frames), seconds, loss_sum / len(frames)))
    return epochs


def _epoch(epoch: int, steps: float, frames: float, seconds: float, loss: float) -> dict:
    return {
        "epoch": epoch,
        "steps": int(steps),
        "frames": int(frames),
        "seconds": round(seconds, 4),
        "steps_per_s": round(steps / seconds, 3),
        "frames_per_s": round(frames / seconds, 2),
        "train_loss": round(loss, 6),
    }


class RecordMetrics(ray.train.UserCallback):
    """Appends rank 0's reported metrics of every epoch to a JSON-lines file.

    It runs in the Ray Train controller (an actor on this node), so it writes to a file that the
    benchmark reads after ``fit()`` rather than keeping them in memory.
    """

    KEYS = ("epoch", "train_steps", "train_frames", "train_seconds", "epoch_seconds")

    def __init__(self, path: str) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        row = {k: metrics[0][k] for k in (*self.KEYS, "train_loss", "world_size")}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ != "__main__":  # imported: Ray's controller may not find this module by name
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def ray_run(
    arch: ArchConfig,
    data: Path,
    settings: TrainSettings,
    *,
    workers: int,
    cpus_per_worker: float | None,
    storage: Path,
    name: str,
) -> dict[str, Any]:
    """One ``build_trainer(...).fit()``; its per-epoch throughput from the recorded metrics."""
    record = storage / f"{name}.jsonl"
    resources = Resources(workers=workers, cpus_per_worker=cpus_per_worker)
    started = time.perf_counter()
    trainer = build_trainer(
        arch=arch,
        data=data,
        settings=settings,
        resources=resources,
        storage=storage,
        name=name,
        tracking_run=None,
        callbacks=[RecordMetrics(str(record))],
    )
    trainer.fit()
    fit_seconds = time.perf_counter() - started
    epochs = []
    for line in record.read_text().splitlines():
        m = json.loads(line)
        row = _epoch(
            m["epoch"], m["train_steps"], m["train_frames"], m["train_seconds"], m["train_loss"]
        )
        epochs.append(row | {"epoch_seconds": round(m["epoch_seconds"], 3)})
    return {
        "workers": workers,
        "cpus_per_worker": resources.cpus(ray.cluster_resources().get("CPU", 1)),
        "fit_seconds": round(fit_seconds, 2),
        "startup_seconds": round(fit_seconds - sum(e["epoch_seconds"] for e in epochs), 2),
        "epochs": epochs,
    }


def run_round(
    index: int,
    arch: ArchConfig,
    data: Path,
    frames: torch.Tensor,
    settings: TrainSettings,
    args: argparse.Namespace,
    storage: Path,
) -> dict[str, Any]:
    """The three runs, in reverse order on odd rounds; each with its CPU accounting."""
    out: dict[str, Any] = {"round": index + 1}
    for run in RUNS if index % 2 == 0 else tuple(reversed(RUNS)):
        with CpuMeter() as meter:
            if run == "plain":
                result: dict[str, Any] = {"workers": 1, "epochs": plain_run(arch, frames, settings)}
            else:
                workers = int(run.split("_")[1])
                result = ray_run(
                    arch,
                    data,
                    settings,
                    workers=workers,
                    cpus_per_worker=args.cpus_per_worker,
                    storage=storage,
                    name=f"round{index + 1}-{run}",
                )
        out[run] = result | {"cpu": meter.result()}
        timed = result["epochs"][1:]
        log.info(
            "round %d %s: %.2f steps/s, %.0f frames/s (median of %d epochs); others' CPU %.0f%%",
            index + 1,
            run,
            statistics.median(e["steps_per_s"] for e in timed),
            statistics.median(e["frames_per_s"] for e in timed),
            len(timed),
            100 * (meter.result()["others_share"] or 0.0),
        )
    return out


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over every timed epoch (all but each run's first) of every round."""
    per_run: dict[str, dict[str, Any]] = {}
    for run in RUNS:
        timed = [e for r in rounds for e in r[run]["epochs"][1:]]
        per_run[run] = {
            "steps_per_s": round(statistics.median(e["steps_per_s"] for e in timed), 3),
            "frames_per_s": round(statistics.median(e["frames_per_s"] for e in timed), 1),
            "steps_per_epoch": sorted({e["steps"] for e in timed}),
            "frames_per_epoch": sorted({e["frames"] for e in timed}),
            "timed_epochs": len(timed),
            "cpus_per_worker": rounds[0][run].get("cpus_per_worker"),
            "startup_seconds": _median_or_none([r[run].get("startup_seconds") for r in rounds]),
            "others_share": _median_or_none([r[run]["cpu"]["others_share"] for r in rounds]),
            "last_train_loss": _median_or_none(
                [r[run]["epochs"][-1]["train_loss"] for r in rounds]
            ),
        }
    plain, one, two = (per_run[k] for k in RUNS)
    ratio = one["steps_per_s"] / plain["steps_per_s"]
    speedup = two["frames_per_s"] / one["frames_per_s"]
    return {
        "runs": per_run,
        "overhead": {
            "ratio": round(ratio, 3),
            "goal_ratio": GOAL_RATIO,
            "met": ratio >= GOAL_RATIO,
            "same_steps": plain["steps_per_epoch"] == one["steps_per_epoch"],
            "per_round_ratio": [
                round(_median_rate(r["ray_1"]) / _median_rate(r["plain"]), 3) for r in rounds
            ],
        },
        "scaling": {
            "speedup_2_vs_1": round(speedup, 3),
            "efficiency": round(speedup / 2, 3),
            "vs_plain_frames_per_s": round(two["frames_per_s"] / plain["frames_per_s"], 3),
        },
    }


def _median_rate(run: dict[str, Any]) -> float:
    return statistics.median(e["steps_per_s"] for e in run["epochs"][1:])


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def markdown(report: dict[str, Any]) -> str:
    """The section for docs/benchmarks.md: settings, the overhead and scaling tables."""
    m, s, summary = report["machine"], report["settings"], report["summary"]
    runs, over, scale = summary["runs"], summary["overhead"], summary["scaling"]
    plain, one, two = (runs[k] for k in RUNS)
    lines = [
        SECTION,
        "",
        f"Measured {report['timestamp']} on {m['cores']} cores ({m['cpu_model']}), ray "
        f"{m['versions']['ray']}, torch {m['versions']['torch']}; `{s['config']}` on "
        f"{s['train_frames']} synthetic training frames at {s['size'][0]}x{s['size'][1]} (raw), "
        f"batch {s['batch_size']} per worker, {s['torch_threads']} torch thread(s) in every "
        f"worker and in the plain loop, Ray with {s['cpus']} CPUs. Each run trains a fresh model "
        f"for {s['epochs']} epochs; the first is warm-up; medians over {plain['timed_epochs']} "
        f"timed epochs ({s['repeats']} rounds, run order alternating). "
        f"Command: `{report['command']}`.",
        "",
        "| path | CPUs held per worker | steps/epoch | steps/s | frames/s | vs plain "
        "| goal | CPU used by other processes |",
        "|---|---|---|---|---|---|---|---|",
        f"| plain PyTorch loop (in-memory uint8, to_model_input) | - | "
        f"{_steps(plain)} | {plain['steps_per_s']:.2f} | {plain['frames_per_s']:,.0f} | 1.00 | "
        f"- | {_pct(plain['others_share'])} |",
        f"| Ray Train, 1 worker (Ray Data, materialised split) | {one['cpus_per_worker']:g} | "
        f"{_steps(one)} | {one['steps_per_s']:.2f} | {one['frames_per_s']:,.0f} | "
        f"**{over['ratio']:.2f}** | >= {GOAL_RATIO:.2f}: **{'met' if over['met'] else 'NOT met'}** "
        f"| {_pct(one['others_share'])} |",
        f"| Ray Train DDP, 2 workers | {two['cpus_per_worker']:g} | {_steps(two)} | "
        f"{two['steps_per_s']:.2f} | {two['frames_per_s']:,.0f} | "
        f"{scale['vs_plain_frames_per_s']:.2f} (frames/s) | - | {_pct(two['others_share'])} |",
        "",
        f"DDP scaling, frames/s of 2 workers over 1 worker: **{scale['speedup_2_vs_1']:.2f}x** "
        f"(efficiency {100 * scale['efficiency']:.0f}% of linear). Ray ratio per round: "
        f"{', '.join(f'{r:.2f}' for r in over['per_round_ratio'])}. Start-up and teardown of a "
        f"`fit()` outside its epochs (median): {one['startup_seconds']:.0f} s with 1 worker, "
        f"{two['startup_seconds']:.0f} s with 2. Same work on both paths: last-epoch "
        f"train_loss {plain['last_train_loss']:.1f} (plain) vs {one['last_train_loss']:.1f} "
        "(Ray, 1 worker), same model, seed, optimizer and steps; only the data order differs.",
        "",
        *_rounds_table(report),
        "",
        *_notes(report),
    ]
    return "\n".join(lines) + "\n"


def _rounds_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| round | run order | plain steps/s | Ray 1 worker steps/s | ratio | Ray 2 workers "
        "frames/s | CPU used by others (plain / Ray 1 / Ray 2) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rounds"]:
        order = RUNS if r["round"] % 2 == 1 else tuple(reversed(RUNS))
        plain, one = _median_rate(r["plain"]), _median_rate(r["ray_1"])
        two = statistics.median(e["frames_per_s"] for e in r["ray_2"]["epochs"][1:])
        shares = " / ".join(_pct(r[k]["cpu"].get("others_share")) for k in RUNS)
        lines.append(
            f"| {r['round']} | {', '.join(order)} | {plain:.2f} | {one:.2f} | "
            f"{one / plain:.2f} | {two:,.0f} | {shares} |"
        )
    return lines


def _steps(run: dict[str, Any]) -> str:
    return "/".join(str(v) for v in run["steps_per_epoch"])


def _notes(report: dict[str, Any]) -> list[str]:
    cores = report["machine"]["cores"]
    shares = [r[k]["cpu"].get("others_share") or 0.0 for r in report["rounds"] for k in RUNS]
    caveat = []
    if max(shares) > 0.1:
        caveat = [
            f"**Caveat: a busy machine.** Other processes used up to {_pct(max(shares))} of "
            "the machine's CPU during these runs. Ray's path needs more than one core (worker, "
            "Ray Data, controller), the plain loop only one, so contention lowers the Ray "
            "figures more than the plain ones: rerun on an idle machine before drawing "
            "conclusions from the ratio.",
            "",
        ]
    return [
        *caveat,
        "steps/s = optimizer steps / seconds of the epoch's training pass. Ray's pass is "
        "`train_seconds` from the worker loop: it includes Ray Data feeding the materialised "
        "split (`build_trainer` reads and decodes it once when it fits in a quarter of the object "
        "store) through streaming_split, a 256-frame local shuffle buffer and a one-integer "
        "all-reduce per step; validation and the checkpoint are outside it. The plain loop "
        "reads the frames once before training and indexes them in memory.",
        "",
        f"On {cores} cores the second DDP worker shares the machine with the first one, Ray "
        "Data's decode tasks, the Train controller and Ray's own processes, so the scaling "
        "figure here is a floor for what separate cores or nodes give, not an estimate of it. "
        "'CPU used by other processes' is the CPU time of every process outside this "
        "benchmark's process tree during the run (sampled each 0.5 s), as a share of all "
        "cores' time: above a few percent, the numbers were taken on a busy machine.",
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark, prints the section, writes the JSON (and the docs section)."""
    argv, started, clock = begin(argv)
    args = parse_args(argv)
    machine = machine_info()  # before the run: its load average is the one at the start
    arch = load_arch(args.config)
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        val_triplets=args.val_triplets,
        torch_threads=args.threads,
    )
    workdir = Path(tempfile.mkdtemp(prefix="varnext-train-bench-"))
    ray.init(
        address="local",
        num_cpus=args.cpus,
        include_dashboard=True,  # Train V2 frees finished runs' placement groups through it
        dashboard_host="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        data = prepare_dataset(workdir, arch, args)
        frames = load_train_frames(data)
        (workdir / "ray").mkdir()
        rounds = [
            run_round(i, arch, data, frames, settings, args, workdir / "ray")
            for i in range(args.repeats)
        ]
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    report = _report(args, argv, started, clock, machine, arch, settings, len(frames), rounds)
    section = markdown(report)
    publish(report, section, SECTION, args.out, args.docs)
    return report


def _report(
    args: argparse.Namespace,
    argv: list[str],
    started: str,
    clock: float,
    machine: dict[str, Any],
    arch: ArchConfig,
    settings: TrainSettings,
    train_frames: int,
    rounds: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        **report_head("train_overhead", started, argv),
        "machine": machine,
        "settings": {
            "quick": args.quick,
            "config": repo_relative(args.config),
            "size": [arch.input.width, arch.input.height],
            "clips": args.clips,
            "frames_per_clip": args.frames,
            "train_frames": train_frames,
            "epochs": args.epochs,
            "warmup_epochs": 1,
            "repeats": args.repeats,
            "batch_size": args.batch_size,
            "torch_threads": args.threads,
            "cpus": args.cpus,
            "cpus_per_worker": args.cpus_per_worker,
            "train_settings": asdict(settings),
        },
        "summary": summarise(rounds),
        "rounds": rounds,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "wall_seconds": round(time.perf_counter() - clock, 1),
    }


if __name__ == "__main__":
    main()
