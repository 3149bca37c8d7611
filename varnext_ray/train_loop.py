"""The per-worker training loop that Ray Train runs on every DDP rank.

Each epoch: one pass over this rank's shard of the training frames (or triplets, when the
architecture's linearity weight is on; with a ``steps`` budget the driver streams
``passes_per_epoch`` copies of the split, so the pass is that many whole passes), then the
validation loss and the extrapolation metrics (:mod:`varnext_ray.metrics`) on this rank's
shard of the validation triplets, and the
multi-step rollout metrics on its shard of the validation sequences, summed and all-reduced
across ranks so every rank reports the same averages. Rank 0 saves the checkpoint, the
prediction strip, the rollout GIF and the MLflow metrics; every rank calls
``ray.train.report`` (a barrier), with ``checkpoint=None`` on ranks other than 0.

Equal steps: every step starts with a one-integer all-reduce of "I still have a batch", so all
ranks stop together even if their shards differ in length (uneven shards would hang DDP).
"""

from __future__ import annotations

import math
import random
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from varnext_ray import tracking
from varnext_ray.arch import parse_arch
from varnext_ray.background import BACKGROUND_FILE, as_tensor, png_bytes
from varnext_ray.checkpoint import save_checkpoint
from varnext_ray.checkpoint_load import load_checkpoint, load_optimizer_state
from varnext_ray.console import quiet_train_worker
from varnext_ray.dataset import sequence_keys, to_model_input
from varnext_ray.media import save_gif, save_png
from varnext_ray.metrics import (
    add_sums,
    all_reduce_sums,
    finalize,
    finalize_rollout,
    rollout_sums,
    triplet_sums,
)
from varnext_ray.mlflow_extras import start_system_metrics
from varnext_ray.model import VAE, build_vae, unwrap_model, vae_loss
from varnext_ray.prediction_pictures import prediction_strip, rollout_frames
from varnext_ray.train_data import train_part
from varnext_ray.worker_entry import LoopConfig


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclass(frozen=True)
class EpochReport:
    """One finished epoch, as rank 0 records it and every rank reports it to Ray Train."""

    epoch: int  # completed epochs, from 1
    metrics: dict[str, float]
    best: float | None  # the best objective value so far
    improved: bool  # this epoch set ``best``
    strip: np.ndarray | None = None  # rank 0's prediction strip
    gif: list[np.ndarray] | None = None  # rank 0's rollout pictures


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _all_reduce(values: torch.Tensor) -> torch.Tensor:
    """Sums a CPU tensor across ranks (a no-op without a process group); returns it on the CPU."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    if dist.get_backend() == "nccl":  # NCCL reduces only CUDA tensors
        on_gpu = values.cuda()
        dist.all_reduce(on_gpu)
        return on_gpu.cpu()
    dist.all_reduce(values)
    return values


def _batches(iterator: Any, device: torch.device, keys: tuple[str, ...], min_rows: int = 1) -> Any:
    """Yields (tuple of model inputs) while *every* rank still has a batch of ``min_rows`` or
    more (only the last batch can be shorter)."""
    source = iter(iterator)
    while True:
        batch = next(source, None)
        short = batch is None or len(batch[keys[0]]) < min_rows
        have = torch.tensor([0 if short else 1], dtype=torch.int64)
        if int(_all_reduce(have).item()) < _world_size():  # someone ran out: all stop
            return
        yield tuple(to_model_input(batch[k], device) for k in keys)


def _eval_batches(shard: Any, loop: LoopConfig) -> Any:
    """This rank's share of an evaluation dataset, in batches of the training batch size."""
    batch_size, world = loop.settings.batch_size, _world_size()
    if loop.eval_split or world == 1:
        return shard.iter_torch_batches(batch_size=batch_size, device="cpu")
    return _every_nth_row(
        shard.iter_torch_batches(batch_size=batch_size * world, device="cpu"), _rank(), world
    )


def _every_nth_row(batches: Any, rank: int, world: int) -> Any:
    """Rows ``rank::world`` of each batch; stops at a batch with none for this rank (every rank
    reads the same batches, so at most world - 1 rows of the last one are left out)."""
    for batch in batches:
        mine = {key: value[rank::world] for key, value in batch.items()}
        if len(next(iter(mine.values()))) == 0:
            return
        yield mine


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _autocast(device: torch.device, enabled: bool) -> Any:
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_prefetch_batches(loop: LoopConfig) -> int:
    """Batches Ray Data fetches ahead of the training loop: 1 (its default), or 0 when the
    rank's training rows are materialised parts read several times per epoch.

    Several passes are a union of copies of the part (:func:`~varnext_ray.train_data.run_datasets`)
    and copies of a materialised dataset share its blocks' object refs. Ray Data's prefetcher
    ``ray.wait``-s on the refs of the next batch's blocks, and ``ray.wait`` refuses a list that
    holds a ref twice: whenever a block is smaller than a batch (the last block of a file or of a
    split), a window can hold one block of two passes, and every such window logged a traceback
    ("Wait requires a list of unique ray_waitables") from a run that went on to succeed.
    Without the prefetch, a block on another node is fetched when the loop reaches it rather
    than one batch ahead (on one machine every block is local already), and batches are
    formatted in the loop's thread rather than a helper one: on 2 cores, 4 passes of 160x90
    frames read at 720 frames/s without it and 688 with it (medians of 4).
    """
    return 0 if loop.train_parts and loop.passes_per_epoch > 1 else 1


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    shard: Any,
    *,
    loop: LoopConfig,
    epoch: int,
    device: torch.device,
) -> dict[str, float]:
    """One pass over this rank's training shard.

    On triplets (``loop.on_triplets``) the three frames go through the model as one batch of
    3B; the loss is :func:`~varnext_ray.model.vae_loss`, the same quantity as ``val_loss``.

    Returns ``train_loss`` (mean over all ranks' frames), ``train_frames`` (frames seen by all
    ranks together), ``train_steps`` (optimizer steps, the same on every rank),
    ``train_seconds`` (wall time of the pass, data loading included) and, on triplets,
    ``train_curvature`` (the mean latent curvature penalty, whether or not it is weighted in).
    """
    started = time.perf_counter()
    settings = loop.settings
    model.train()
    loss_cfg = unwrap_model(model).config.loss
    keys = ("x1", "x2", "x3") if loop.on_triplets else ("image",)
    total = torch.zeros(4, dtype=torch.float64)  # loss * frames, frames, curvature * B, B
    steps = 0
    batches = shard.iter_torch_batches(
        batch_size=settings.batch_size,
        prefetch_batches=train_prefetch_batches(loop),
        local_shuffle_buffer_size=settings.shuffle_buffer or None,
        local_shuffle_seed=settings.seed + 1000 * epoch + _rank(),
        device="cpu",
    )
    # With batch norm, a last batch of one frame is left out: on a 1x1 map batch norm would see
    # one value per channel, which PyTorch refuses in training (--batch-size 1 there is refused
    # before Ray: train.check_dataset).
    one_value = len(keys) == 1 and any(
        isinstance(m, torch.nn.BatchNorm2d) for m in unwrap_model(model).modules()
    )
    min_rows = 2 if one_value and settings.batch_size > 1 else 1
    for step, frames in enumerate(_batches(batches, device, keys, min_rows)):
        x = torch.cat(frames)  # (B or 3B, C, H, W)
        with _autocast(device, settings.amp):
            recon, mu, logvar = model(x)
        parts = vae_loss(
            recon.float(), x, mu.float(), logvar.float(), loss_cfg, epoch, triplets=len(keys) == 3
        )
        loss = parts["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}: "
                "lower the learning rate or beta, or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        b = len(frames[0])
        curvature = parts["curvature"].item() * b if "curvature" in parts else 0.0
        total += torch.tensor([loss.item() * len(x), len(x), curvature, b], dtype=torch.float64)
        steps = step + 1
    total = _all_reduce(total)
    out = {
        "train_loss": float(total[0] / total[1]) if total[1] > 0 else math.nan,
        "train_frames": float(total[1]),
        "train_steps": float(steps),
        "train_seconds": time.perf_counter() - started,
    }
    if len(keys) == 3 and total[3] > 0:
        out["train_curvature"] = float(total[2] / total[3])
    return out


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    shard: Any,
    *,
    loop: LoopConfig,
    epoch: int,
    device: torch.device,
) -> tuple[dict[str, float], np.ndarray | None]:
    """Validation loss and extrapolation metrics on the validation triplets, rank-averaged.

    ``val_loss`` is the training objective (:func:`~varnext_ray.model.vae_loss`) on what
    training reads: all three frames of each triplet and their curvature (``val_curvature``)
    when training reads triplets, else the middle frames.

    Returns the metrics and, on rank 0, a prediction strip of its first validation batch.
    """
    vae = unwrap_model(model)
    vae.eval()
    sums = None
    totals = torch.zeros(6, dtype=torch.float64)  # loss, recon, kl per frame; frames; curv., B
    strip = None
    rng_state = torch.get_rng_state()
    torch.manual_seed(loop.settings.seed + 7919 * epoch)  # the same ELBO samples every run
    background = None if loop.background is None else as_tensor(loop.background, device)
    batches = _eval_batches(shard, loop)
    for x1, x2, x3 in _batches(batches, device, ("x1", "x2", "x3")):
        x = torch.cat((x1, x2, x3)) if loop.on_triplets else x2  # (3B or B, C, H, W)
        with _autocast(device, loop.settings.amp):
            recon, mu, logvar = vae(x)
            sums = add_sums(sums, triplet_sums(vae, x1, x2, x3, background))
        parts = vae_loss(
            recon.float(), x, mu.float(), logvar.float(), vae.config.loss, epoch,
            triplets=loop.on_triplets,
        )  # fmt: skip
        n, b = len(x), len(x2)
        curvature = parts["curvature"].item() * b if "curvature" in parts else 0.0
        totals += torch.tensor(
            [*(parts[k].item() * n for k in ("loss", "recon", "kl")), n, curvature, b],
            dtype=torch.float64,
        )
        if strip is None and _rank() == 0:
            strip = prediction_strip(vae, x1, x2, x3, n=min(4, b), background=background)
    torch.set_rng_state(rng_state)
    if sums is None:
        raise RuntimeError("no validation batch reached this rank")
    metrics = finalize(all_reduce_sums(sums))
    totals = _all_reduce(totals)
    frames = max(float(totals[3]), 1.0)
    metrics |= {
        f"val_{k}": float(totals[i]) / frames for i, k in enumerate(("loss", "recon", "kl"))
    }
    if loop.on_triplets:
        metrics["val_curvature"] = float(totals[4]) / max(float(totals[5]), 1.0)
    return metrics, strip


@torch.no_grad()
def evaluate_rollout(
    model: torch.nn.Module, shard: Any, *, loop: LoopConfig, device: torch.device
) -> tuple[dict[str, float], list[np.ndarray] | None]:
    """``extrap_psnr_h{k}`` (with copy-last and pixel-linear) for k = 1..K, rank-averaged.

    Returns the metrics and, on rank 0, the pictures of a rollout GIF of its first batch.
    """
    vae = unwrap_model(model)
    vae.eval()
    horizons = loop.rollout_steps
    sums = torch.zeros(1 + 3 * horizons, dtype=torch.float64)
    pictures = None
    batches = _eval_batches(shard, loop)
    for frames in _batches(batches, device, sequence_keys(horizons + 2)):
        with _autocast(device, loop.settings.amp):
            sums += rollout_sums(vae, list(frames))
            if pictures is None and _rank() == 0:
                pictures = rollout_frames(vae, list(frames))
    return finalize_rollout(_all_reduce(sums), horizons), pictures


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _start(
    loop: LoopConfig, device: torch.device
) -> tuple[VAE, torch.optim.Optimizer, int, float | None, int]:
    """The model and optimizer, restored from Ray Train's checkpoint when resuming.

    Returns them with the epochs already completed, the best objective value so far and the
    optimizer steps already done.
    """
    import ray.train

    # The driver checked the size bounds (with the user's limits); a worker does not again.
    vae = build_vae(
        parse_arch(loop.arch, "arch", max_params=math.inf, max_activation_bytes=math.inf)
    )
    if device.type == "cuda":
        vae = vae.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        vae.parameters(), lr=loop.settings.lr, weight_decay=loop.settings.weight_decay
    )
    resume = ray.train.get_checkpoint()
    if resume is None:
        return vae, optimizer, 0, None, 0
    with resume.as_directory() as directory:
        saved = load_checkpoint(Path(directory))
        vae.load_state_dict(saved.model.state_dict())
        load_optimizer_state(Path(directory), optimizer)
    best = (saved.meta.get("extra") or {}).get("best")
    return vae, optimizer, saved.meta["epoch"], best, int(saved.meta["metrics"].get("steps", 0))


def run_worker(loop: LoopConfig) -> None:
    """One rank's whole run: what to train and how is ``loop`` (the workers' entry point,
    :func:`varnext_ray.worker_entry.train_loop_per_worker`, calls this)."""
    import ray.train
    import ray.train.torch

    loop_started = time.perf_counter()  # the trial's overhead is measured against this
    quiet_train_worker()  # Ray Train's per-report log line off unless varnext -v
    settings = loop.settings
    _seed_everything(settings.seed)
    torch.set_num_threads(max(1, settings.torch_threads))
    device = ray.train.torch.get_device()
    vae, optimizer, start_epoch, best, steps = _start(loop, device)
    model = ray.train.torch.prepare_model(vae)
    if settings.compile:
        model = torch.compile(model)
    rank = ray.train.get_context().get_world_rank()
    shard = ray.train.get_dataset_shard
    train_rows = shard(train_part(rank) if loop.train_parts else "train")
    system = start_system_metrics(loop.tracking, rank)
    epochs_seconds = 0.0
    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        train = train_epoch(model, optimizer, train_rows, loop=loop, epoch=epoch, device=device)
        metrics, strip = evaluate(model, shard("val"), loop=loop, epoch=epoch, device=device)
        gif = None
        if loop.rollout_steps:
            rollout, gif = evaluate_rollout(model, shard("rollout"), loop=loop, device=device)
            metrics |= rollout
        steps += int(train["train_steps"])
        metrics |= train | {
            "steps": steps,
            "train_passes": loop.passes_per_epoch,
            "epoch": epoch + 1,
            "world_size": _world_size(),
            "epoch_seconds": time.perf_counter() - started,
        }
        epochs_seconds += metrics["epoch_seconds"]
        metrics |= {  # cumulative: the last report holds the loop's (train.overhead_metrics)
            "epochs_seconds": epochs_seconds,
            "loop_seconds": time.perf_counter() - loop_started,
        }
        objective = settings.objective
        improved = _is_better(metrics.get(objective, math.nan), best, settings.mode)
        if improved:
            best = metrics[objective]
        metrics[f"best_{objective}"] = best if best is not None else math.nan
        report = EpochReport(epoch + 1, metrics, best, improved, strip=strip, gif=gif)
        if system is not None:  # a scheduler may end the trial right after this report
            system.ensure_logged()
        _report(report, rank=rank, vae=vae, optimizer=optimizer, loop=loop)
    if system is not None:
        system.stop()


def progress_line(metrics: dict[str, float], epochs: int) -> str:
    """One line per epoch with the main metrics."""
    m = metrics
    return (
        f"epoch {int(m['epoch'])}/{epochs} (step {int(m.get('steps', 0))}): "
        f"train_loss {m['train_loss']:.4g} "
        f"val_loss {m['val_loss']:.4g} | extrap_psnr {m.get('extrap_psnr', math.nan):.2f} dB "
        f"vs copy_last {m.get('copy_last_psnr', math.nan):.2f} dB, "
        f"oracle {m.get('oracle_psnr', math.nan):.2f} dB, "
        f"background {m.get('background_psnr', math.nan):.2f} dB, "
        f"motion gain {m.get('extrap_gain_db_motion', math.nan):+.2f} dB, "
        f"active {int(m.get('active_units', 0))}/{int(m.get('latent_elements', 0))}, "
        f"skill {m.get('extrap_skill', math.nan):+.3f} ({m['epoch_seconds']:.1f} s)"
    )


def _report(
    report: EpochReport,
    *,
    rank: int,
    vae: VAE,
    optimizer: torch.optim.Optimizer,
    loop: LoopConfig,
) -> None:
    """Rank 0 writes the checkpoint, strip and MLflow metrics; every rank reports.

    A checkpoint that improves the objective is also uploaded to the MLflow run as its
    ``checkpoint`` artifact right away, so the run holds its best model even if the trial is
    stopped early (ASHA) or killed.
    """
    import ray.train

    if rank != 0:
        ray.train.report(report.metrics, checkpoint=None)
        return
    # not print(): Ray Train's patched print also logs it, and the line would show twice
    sys.stdout.write(progress_line(report.metrics, loop.settings.epochs) + "\n")
    sys.stdout.flush()
    files = None if loop.background is None else {BACKGROUND_FILE: png_bytes(loop.background)}
    with tempfile.TemporaryDirectory() as tmp:
        directory = save_checkpoint(
            Path(tmp) / "checkpoint",
            model=vae,
            arch_cfg=vae.config,
            epoch=report.epoch,
            metrics=report.metrics,
            optimizer=optimizer,
            extra={"best": report.best, "objective": loop.settings.objective}
            | ({"background": BACKGROUND_FILE} if files else {}),
            files=files,
        )
        if loop.tracking:
            _log_epoch(report, loop.tracking, directory, Path(tmp))
        ray.train.report(
            report.metrics,
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=f"epoch_{report.epoch:04d}",
        )


def _log_epoch(report: EpochReport, run: tracking.TrackingRun, checkpoint: Path, tmp: Path) -> None:
    """Rank 0's MLflow record of an epoch: metrics, pictures, and an improved checkpoint."""
    tracking.log_metrics(run.uri, run.run_id, report.metrics, step=report.epoch)
    if report.strip is not None:
        path = tmp / f"strip_epoch_{report.epoch:03d}.png"
        save_png(report.strip, path)
        tracking.log_artifact(run.uri, run.run_id, path, "strips")
    if report.gif:
        path = tmp / f"rollout_epoch_{report.epoch:03d}.gif"
        save_gif(report.gif, path, min_width=256)
        tracking.log_artifact(run.uri, run.run_id, path, "rollouts")
    if report.improved:
        tracking.log_artifact(run.uri, run.run_id, checkpoint, "checkpoint")
