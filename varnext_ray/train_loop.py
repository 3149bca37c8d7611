"""The per-worker training loop that Ray Train runs on every DDP rank.

Each epoch: one pass over this rank's shard of the training frames (or triplets, when the
architecture's temporal-linearity term is on), then the validation ELBO and the extrapolation
metrics (:mod:`varnext_ray.metrics`) on this rank's shard of the validation triplets, and the
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
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from varnext_ray import tracking
from varnext_ray.arch import parse_arch
from varnext_ray.checkpoint import load_checkpoint, load_optimizer_state, save_checkpoint
from varnext_ray.dataset import sequence_keys, to_model_input
from varnext_ray.metrics import (
    add_sums,
    all_reduce_sums,
    finalize,
    finalize_rollout,
    prediction_strip,
    rollout_frames,
    rollout_sums,
    save_gif,
    save_png,
    triplet_sums,
)
from varnext_ray.model import VAE, build_vae, elbo_loss, linearity_loss


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


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


def _batches(iterator: Any, device: torch.device, keys: tuple[str, ...]) -> Any:
    """Yields (tuple of model inputs) while *every* rank still has a batch."""
    source = iter(iterator)
    while True:
        batch = next(source, None)
        have = torch.tensor([0 if batch is None else 1], dtype=torch.int64)
        if int(_all_reduce(have).item()) < _world_size():  # someone ran out: all stop
            return
        yield tuple(to_model_input(batch[k], device) for k in keys)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _autocast(device: torch.device, enabled: bool) -> Any:
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    shard: Any,
    *,
    settings: dict[str, Any],
    epoch: int,
    device: torch.device,
) -> dict[str, float]:
    """One pass over this rank's training shard.

    On triplets (``settings["train_on"] == "triplets"``) the three frames go through the model
    as one batch of 3B; the loss is their ELBO plus ``loss.linearity`` times
    :func:`~varnext_ray.model.linearity_loss` of their means.

    Returns ``train_loss`` (mean over all ranks' frames), ``train_frames`` (frames seen by all
    ranks together), ``train_steps`` (optimizer steps, the same on every rank),
    ``train_seconds`` (wall time of the pass, data loading included) and, on triplets,
    ``train_linearity`` (the mean linearity penalty, whether or not it is weighted in).
    """
    started = time.perf_counter()
    model.train()
    loss_cfg = _unwrap(model).config.loss
    keys = ("x1", "x2", "x3") if settings["train_on"] == "triplets" else ("image",)
    total = torch.zeros(4, dtype=torch.float64)  # loss * frames, frames, penalty * B, B
    steps = 0
    batches = shard.iter_torch_batches(
        batch_size=settings["batch_size"],
        local_shuffle_buffer_size=settings["shuffle_buffer"] or None,
        local_shuffle_seed=settings["seed"] + 1000 * epoch + _rank(),
        device="cpu",
    )
    for step, frames in enumerate(_batches(batches, device, keys)):
        x = torch.cat(frames)  # (B or 3B, C, H, W)
        with _autocast(device, settings["amp"]):
            recon, mu, logvar = model(x)
        parts = elbo_loss(recon.float(), x, mu.float(), logvar.float(), loss_cfg, epoch)
        loss = parts["loss"]
        penalty = linearity_loss(*mu.float().chunk(3)) if len(frames) == 3 else None
        if penalty is not None and loss_cfg.linearity > 0:
            loss = loss + loss_cfg.linearity * penalty
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}: "
                "lower the learning rate or beta, or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        b = len(frames[0])
        penalty_sum = 0.0 if penalty is None else penalty.item() * b
        total += torch.tensor([loss.item() * len(x), len(x), penalty_sum, b], dtype=torch.float64)
        steps = step + 1
    total = _all_reduce(total)
    out = {
        "train_loss": float(total[0] / total[1]) if total[1] > 0 else math.nan,
        "train_frames": float(total[1]),
        "train_steps": float(steps),
        "train_seconds": time.perf_counter() - started,
    }
    if len(keys) == 3 and total[3] > 0:
        out["train_linearity"] = float(total[2] / total[3])
    return out


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _unwrap(model: torch.nn.Module) -> VAE:
    inner = getattr(model, "module", model)  # DDP
    return getattr(inner, "_orig_mod", inner)  # torch.compile


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    shard: Any,
    *,
    settings: dict[str, Any],
    epoch: int,
    device: torch.device,
) -> tuple[dict[str, float], np.ndarray | None]:
    """Validation ELBO (on the triplets' middle frames) and extrapolation metrics, rank-averaged.

    Returns the metrics and, on rank 0, a prediction strip of its first validation batch.
    """
    vae = _unwrap(model)
    vae.eval()
    sums = None
    elbo = torch.zeros(4, dtype=torch.float64)  # sums of loss, recon, kl; frames
    strip = None
    rng_state = torch.get_rng_state()
    torch.manual_seed(settings["seed"] + 7919 * epoch)  # the same ELBO samples every run
    batches = shard.iter_torch_batches(batch_size=settings["batch_size"], device="cpu")
    for x1, x2, x3 in _batches(batches, device, ("x1", "x2", "x3")):
        with _autocast(device, settings["amp"]):
            recon, mu, logvar = vae(x2)
            sums = add_sums(sums, triplet_sums(vae, x1, x2, x3))
        parts = elbo_loss(recon.float(), x2, mu.float(), logvar.float(), vae.config.loss, epoch)
        n = len(x2)
        elbo += torch.tensor(
            [parts["loss"].item() * n, parts["recon"].item() * n, parts["kl"].item() * n, n],
            dtype=torch.float64,
        )
        if strip is None and _rank() == 0:
            strip = prediction_strip(vae, x1, x2, x3, n=min(4, n))
    torch.set_rng_state(rng_state)
    if sums is None:
        raise RuntimeError("no validation batch reached this rank")
    metrics = finalize(all_reduce_sums(sums))
    elbo = _all_reduce(elbo)
    frames = max(float(elbo[3]), 1.0)
    return metrics | {
        "val_loss": float(elbo[0]) / frames,
        "val_recon": float(elbo[1]) / frames,
        "val_kl": float(elbo[2]) / frames,
    }, strip


@torch.no_grad()
def evaluate_rollout(
    model: torch.nn.Module, shard: Any, *, settings: dict[str, Any], device: torch.device
) -> tuple[dict[str, float], list[np.ndarray] | None]:
    """``extrap_psnr_h{k}`` (with copy-last and pixel-linear) for k = 1..K, rank-averaged.

    Returns the metrics and, on rank 0, the pictures of a rollout GIF of its first batch.
    """
    vae = _unwrap(model)
    vae.eval()
    horizons = settings["rollout_steps"]
    sums = torch.zeros(1 + 3 * horizons, dtype=torch.float64)
    pictures = None
    batches = shard.iter_torch_batches(batch_size=settings["batch_size"], device="cpu")
    for frames in _batches(batches, device, sequence_keys(horizons + 2)):
        with _autocast(device, settings["amp"]):
            sums += rollout_sums(vae, list(frames))
            if pictures is None and _rank() == 0:
                pictures = rollout_frames(vae, list(frames))
    return finalize_rollout(_all_reduce(sums), horizons), pictures


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: ``config`` holds ``arch``, ``settings``, ``tracking``."""
    import ray.train
    import ray.train.torch

    settings = config["settings"]
    arch = parse_arch(config["arch"], "arch")
    _seed_everything(settings["seed"])
    torch.set_num_threads(max(1, int(settings.get("torch_threads", 1))))
    device = ray.train.torch.get_device()
    vae = build_vae(arch)
    if device.type == "cuda":
        vae = vae.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        vae.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"]
    )
    start_epoch, best = 0, None
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as directory:
            saved = load_checkpoint(Path(directory))
            vae.load_state_dict(saved.model.state_dict())
            load_optimizer_state(Path(directory), optimizer)
        start_epoch = saved.meta["epoch"]  # epochs completed
        best = (saved.meta.get("extra") or {}).get("best")
    model = ray.train.torch.prepare_model(vae)
    if settings["compile"]:
        model = torch.compile(model)
    rank = ray.train.get_context().get_world_rank()
    for epoch in range(start_epoch, settings["epochs"]):
        started = time.perf_counter()
        train = train_epoch(
            model,
            optimizer,
            ray.train.get_dataset_shard("train"),
            settings=settings,
            epoch=epoch,
            device=device,
        )
        metrics, strip = evaluate(
            model, ray.train.get_dataset_shard("val"), settings=settings, epoch=epoch, device=device
        )
        gif = None
        if settings["rollout_steps"]:
            rollout, gif = evaluate_rollout(
                model, ray.train.get_dataset_shard("rollout"), settings=settings, device=device
            )
            metrics |= rollout
        metrics |= train | {
            "epoch": epoch + 1,
            "world_size": _world_size(),
            "epoch_seconds": time.perf_counter() - started,
        }
        objective = settings["objective"]
        improved = _is_better(metrics.get(objective, math.nan), best, settings["mode"])
        if improved:
            best = metrics[objective]
        metrics[f"best_{objective}"] = best if best is not None else math.nan
        pictures = {"strip": strip, "gif": gif}
        _report(metrics, epoch, rank, vae, arch, optimizer, pictures, best, improved, config)


def progress_line(metrics: dict[str, float], epochs: int) -> str:
    """One line per epoch with the main metrics."""
    m = metrics
    return (
        f"epoch {int(m['epoch'])}/{epochs}: train_loss {m['train_loss']:.4g} "
        f"val_loss {m['val_loss']:.4g} | extrap_psnr {m.get('extrap_psnr', math.nan):.2f} dB "
        f"vs copy_last {m.get('copy_last_psnr', math.nan):.2f} dB, "
        f"oracle {m.get('oracle_psnr', math.nan):.2f} dB, "
        f"skill {m.get('extrap_skill', math.nan):+.3f} ({m['epoch_seconds']:.1f} s)"
    )


def _report(
    metrics: dict[str, float],
    epoch: int,
    rank: int,
    vae: VAE,
    arch: Any,
    optimizer: torch.optim.Optimizer,
    pictures: dict[str, Any],
    best: float | None,
    improved: bool,
    config: dict[str, Any],
) -> None:
    """Rank 0 writes the checkpoint, strip and MLflow metrics; every rank reports.

    A checkpoint that improves the objective is also uploaded to the MLflow run as its
    ``checkpoint`` artifact right away, so the run holds its best model even if the trial is
    stopped early (ASHA) or killed.
    """
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    print(progress_line(metrics, config["settings"]["epochs"]), flush=True)
    run = config.get("tracking")
    with tempfile.TemporaryDirectory() as tmp:
        directory = save_checkpoint(
            Path(tmp) / "checkpoint",
            model=vae,
            arch_cfg=arch,
            epoch=epoch + 1,
            metrics=metrics,
            optimizer=optimizer,
            extra={"best": best, "objective": config["settings"]["objective"]},
        )
        if run:
            tracking.log_metrics(run["uri"], run["run_id"], metrics, step=epoch + 1)
            if pictures["strip"] is not None:
                path = Path(tmp) / f"strip_epoch_{epoch + 1:03d}.png"
                save_png(pictures["strip"], path)
                tracking.log_artifact(run["uri"], run["run_id"], path, "strips")
            if pictures["gif"]:
                path = Path(tmp) / f"rollout_epoch_{epoch + 1:03d}.gif"
                save_gif(pictures["gif"], path)
                tracking.log_artifact(run["uri"], run["run_id"], path, "rollouts")
            if improved:
                tracking.log_artifact(run["uri"], run["run_id"], directory, "checkpoint")
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=f"epoch_{epoch + 1:04d}",
        )
