"""Extrapolation metrics on validation triplets, as sums that average exactly across DDP ranks.

A triplet is three frames (x1, x2, x3) = (t, t+s, t+2s), each (B, 3, H, W) float in [0, 1].
The model encodes them to their means mu1, mu2, mu3 (no sampling), predicts the latent
z3_hat = mu2 + (mu2 - mu1) and decodes it. :func:`triplet_sums` returns per-batch *sums* of
per-sample values plus the sample count; add them over batches, all-reduce them over ranks
(:func:`all_reduce_sums`), then :func:`finalize` divides once, so the averages are exact
whatever the batch split.

Conventions:
    - Decoded frames are clipped to [0, 1] before scoring, like ``pixel_linear`` (2*x2 - x1).
    - PSNR and SSIM are per sample (:mod:`varnext_ray.frame_scores` holds them and their
      conventions: max value 1.0, MSE clamped at ``MSE_FLOOR`` so identical frames score
      100 dB, never inf; SSIM as torchmetrics computes it), averaged over samples.
    - Motion metrics score only the pixels where the true frame changed:
      max over channels of |x3 - x2| > ``MOTION_THRESHOLD`` = 0.1 (about 25 grey levels of 255).
      A sample without a moving pixel contributes nothing; when no sample of the whole set
      moved, :func:`finalize` omits the ``*_motion`` keys (never NaN).
    - ``extrap_skill`` = 1 - extrap_mse / copy_last_mse from the averaged MSEs; it is omitted
      when copy_last_mse <= ``MSE_FLOOR`` (a static set: copy-last is perfect, skill undefined).
    - ``latent_linearity`` per triplet is ||z3_hat - mu3|| / max(||mu3 - mu2||, LINEARITY_EPS),
      LINEARITY_EPS = 1e-6: a latent that does not move gives numerator / 1e-6, not inf.
    - Collapse diagnostics (issue #15): ``latent_copy_psnr`` scores decode(mu2), the model's own
      "nothing moves"; ``extrap_gain_db`` = extrap - latent copy (dB); ``motion_captured`` =
      (extrap - latent copy) / (oracle - latent copy) in the motion region, omitted when that
      denominator is under ``CAPTURED_MIN_DB``; ``background_psnr`` scores a fixed background
      frame (the per-pixel median of the training frames) when one is given;
      ``decoder_sensitivity`` = mean |decode(z3_hat) - decode(mu2)| / mean |x3 - x2|;
      ``active_units`` counts latent elements (flat (B, D) or spatial (B, C, h, w), flattened)
      whose mean mu2 has a variance over the validation frames above ``ACTIVE_UNIT_THRESHOLD``
      (Burda et al. 2016), from per-element sums and sums of squares.

The pictures of predictions (the prediction strip, rollout GIF frames) are in
:mod:`varnext_ray.prediction_pictures`.

Example:
    >>> total = None
    >>> for x1, x2, x3 in val_triplets:
    ...     total = add_sums(total, triplet_sums(vae, x1, x2, x3))
    >>> metrics = finalize(all_reduce_sums(total))
"""

from __future__ import annotations

import torch
from torch import nn

from varnext_ray.frame_scores import (
    MSE_FLOOR,
    masked_psnr,
    motion_mask,
    mse_per_sample,
    psnr,
    psnr_from_mse,
    ssim_per_sample,
)
from varnext_ray.model import extrapolate, rollout, unwrap_model

LINEARITY_EPS = 1e-6  # floor of ||mu3 - mu2|| in latent_linearity
ACTIVE_UNIT_THRESHOLD = 0.01  # a latent element is active if Var(mu) over frames exceeds this
CAPTURED_MIN_DB = 0.1  # motion_captured is omitted when oracle - latent copy is below this

# Averaged over all triplets (sum / count) by finalize.
_MEANS = (
    "extrap_mse",
    "extrap_psnr",
    "extrap_ssim",
    "copy_last_mse",
    "copy_last_psnr",
    "pixel_linear_psnr",
    "oracle_psnr",
    "latent_copy_psnr",
    "latent_linearity",
)
# Averaged over the samples with a moving pixel (sum / motion_count).
_MOTION_MEANS = (
    "extrap_psnr_motion",
    "copy_last_psnr_motion",
    "pixel_linear_psnr_motion",
    "oracle_psnr_motion",
    "latent_copy_psnr_motion",
)
# Scored against the training background, when one is given (background_count > 0).
_BACKGROUND = ("background_count", "background_psnr", "background_psnr_motion")
# decoder_sensitivity = sensitivity_num / sensitivity_den (sums of per-sample mean |.|).
_SENSITIVITY = ("sensitivity_num", "sensitivity_den")
# (D,) float64 vectors: per-element sums of mu2 and mu2 ** 2 (D = latent elements, flattened).
LATENT_KEYS = ("latent_sum", "latent_sq")
# Every key triplet_sums returns, in a fixed order (all ranks reduce them the same way);
# prediction_sums returns all but LATENT_KEYS.
SUM_KEYS = (
    "count",
    *_MEANS,
    "motion_count",
    *_MOTION_MEANS,
    *_BACKGROUND,
    *_SENSITIVITY,
    *LATENT_KEYS,
)


def latent_linearity(z3_hat: torch.Tensor, mu2: torch.Tensor, mu3: torch.Tensor) -> torch.Tensor:
    """||z3_hat - mu3|| / max(||mu3 - mu2||, LINEARITY_EPS) per triplet; (B, *Z) x 3 -> (B,).

    0 when the latent moves on a straight line at constant speed; 1 when the prediction misses
    by as much as the true step. Norms run over all latent elements (flat or spatial).
    """
    miss = (z3_hat - mu3).flatten(1).norm(dim=1)  # (B,)
    step = (mu3 - mu2).flatten(1).norm(dim=1).clamp(min=LINEARITY_EPS)  # (B,)
    return miss / step


def prediction_sums(
    x1: torch.Tensor,
    x2: torch.Tensor,
    x3: torch.Tensor,
    *,
    pred: torch.Tensor,
    oracle: torch.Tensor,
    latent_copy: torch.Tensor,
    background: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The pixel metrics' sums for given predictions of x3 (each (B, C, H, W) in [0, 1]).

    ``latent_copy`` is decode(mu2); ``background`` a (C, H, W) frame in [0, 1] or None (then
    ``background_count`` is 0 and :func:`finalize` leaves the background metrics out).
    ``latent_linearity`` is 0 here; :func:`triplet_sums` fills it from the latents.
    """
    pixel_linear = (2 * x2 - x1).clamp(0, 1)  # (B, C, H, W)
    extrap_mse, copy_mse = mse_per_sample(pred, x3), mse_per_sample(x2, x3)  # (B,), (B,)
    mask = motion_mask(x2, x3)  # (B, H, W)
    moved = mask.flatten(1).any(1)  # (B,)
    per_sample = {
        "extrap_mse": extrap_mse,
        "extrap_psnr": psnr_from_mse(extrap_mse),
        "extrap_ssim": ssim_per_sample(pred, x3),
        "copy_last_mse": copy_mse,
        "copy_last_psnr": psnr_from_mse(copy_mse),
        "pixel_linear_psnr": psnr(pixel_linear, x3),
        "oracle_psnr": psnr(oracle, x3),
        "latent_copy_psnr": psnr(latent_copy, x3),
        "latent_linearity": torch.zeros_like(extrap_mse),
        "motion_count": moved,
        "extrap_psnr_motion": masked_psnr(pred, x3, mask),
        "copy_last_psnr_motion": masked_psnr(x2, x3, mask),
        "pixel_linear_psnr_motion": masked_psnr(pixel_linear, x3, mask),
        "oracle_psnr_motion": masked_psnr(oracle, x3, mask),
        "latent_copy_psnr_motion": masked_psnr(latent_copy, x3, mask),
        "background_count": torch.full_like(extrap_mse, float(background is not None)),
        "sensitivity_num": (pred - latent_copy).abs().flatten(1).mean(1),
        "sensitivity_den": (x3 - x2).abs().flatten(1).mean(1),
    }
    if background is not None:
        bg = background.to(x3.dtype).expand_as(x3)  # (B, C, H, W)
        per_sample["background_psnr"] = psnr(bg, x3)
        per_sample["background_psnr_motion"] = masked_psnr(bg, x3, mask)
    sums = {"count": torch.tensor(float(x3.shape[0]), dtype=torch.float64, device=x3.device)}
    for key in SUM_KEYS[1:]:
        if key not in LATENT_KEYS:
            values = per_sample.get(key, torch.zeros_like(extrap_mse))
            sums[key] = values.to(torch.float64).sum()
    return sums


def triplet_sums(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor,
    x3: torch.Tensor,
    background: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The metric sums of one batch of triplets; keys ``SUM_KEYS``, float64 tensors (0-d, but
    ``LATENT_KEYS`` are (D,): one entry per latent element).

    Runs under ``torch.no_grad`` in whatever train/eval mode the caller set (use eval: batch
    norm in train mode makes a sample's result depend on its batch). A DDP-wrapped model is
    unwrapped.

    Args:
        model: The VAE (``encode`` -> (mu, logvar), ``decode``), or DDP around it.
        x1: Frames t, (B, C, H, W) in [0, 1].
        x2: Frames t+s, same shape.
        x3: Frames t+2s (the target), same shape.
        background: The training background (C, H, W) in [0, 1], or None.

    Example:
        >>> sums = triplet_sums(vae.eval(), x1, x2, x3)
        >>> finalize(sums)["extrap_psnr"]
    """
    vae = unwrap_model(model)
    with torch.no_grad():
        mu1, mu2, mu3 = (vae.encode(x)[0] for x in (x1, x2, x3))  # (B, D) each
        z3_hat = extrapolate(mu1, mu2)  # (B, D)
        pred = vae.decode(z3_hat).to(x3.dtype).clamp(0, 1)  # (B, C, H, W); autocast-safe
        oracle = vae.decode(mu3).to(x3.dtype).clamp(0, 1)  # (B, C, H, W)
        latent_copy = vae.decode(mu2).to(x3.dtype).clamp(0, 1)  # (B, C, H, W)
        sums = prediction_sums(
            x1, x2, x3, pred=pred, oracle=oracle, latent_copy=latent_copy, background=background
        )
        sums["latent_linearity"] = latent_linearity(z3_hat, mu2, mu3).to(torch.float64).sum()
        flat = mu2.flatten(1).to(torch.float64)  # (B, D): flat or spatial latents alike
        sums["latent_sum"], sums["latent_sq"] = flat.sum(0), flat.pow(2).sum(0)  # (D,) each
    return sums


def add_sums(
    total: dict[str, torch.Tensor] | None, sums: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``total + sums`` key by key (``total`` None starts a new total)."""
    if total is None:
        return dict(sums)
    return {key: total[key] + sums[key] for key in sums}


def all_reduce_sums(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sums over all ranks (one all-reduce of the concatenated sums); a no-op without DDP.

    Every rank must hold the same keys with the same shapes (they run the same model).
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return sums
    keys = [key for key in SUM_KEYS if key in sums]
    flat = torch.cat([sums[key].reshape(-1) for key in keys])  # (K + 2D,) float64
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    parts = flat.split([sums[key].numel() for key in keys])
    return {key: part.reshape(sums[key].shape) for key, part in zip(keys, parts, strict=True)}


def finalize(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """The averaged metrics (contract names in DESIGN.md "Metrics"); NaN-free.

    ``*_motion`` keys are present only when some sample had a moving pixel, ``extrap_skill``
    only when copy_last_mse > ``MSE_FLOOR``; an empty ``sums`` (count 0) gives ``{}``.
    """
    count = float(sums["count"])
    if count <= 0:
        return {}
    out = {key: float(sums[key]) / count for key in _MEANS}
    if out["copy_last_mse"] > MSE_FLOOR:
        out["extrap_skill"] = 1.0 - out["extrap_mse"] / out["copy_last_mse"]
    moved = float(sums["motion_count"])
    if moved > 0:
        for key in _MOTION_MEANS:
            out[key] = float(sums[key]) / moved
    return out | _diagnostics(sums, out, count, moved)


def _diagnostics(
    sums: dict[str, torch.Tensor], means: dict[str, float], count: float, moved: float
) -> dict[str, float]:
    """The collapse diagnostics of :func:`finalize` (see the module docstring)."""
    out = {"extrap_gain_db": means["extrap_psnr"] - means["latent_copy_psnr"]}
    if float(sums["background_count"]) > 0:
        out["background_psnr"] = float(sums["background_psnr"]) / count
        if moved > 0:
            out["background_psnr_motion"] = float(sums["background_psnr_motion"]) / moved
    if moved > 0:
        out.update(
            motion_gain(
                means["extrap_psnr_motion"],
                means["latent_copy_psnr_motion"],
                means["oracle_psnr_motion"],
            )
        )
    if float(sums["sensitivity_den"]) > 0:
        out["decoder_sensitivity"] = float(sums["sensitivity_num"] / sums["sensitivity_den"])
    if "latent_sum" in sums:
        out |= active_units(sums["latent_sum"], sums["latent_sq"], count)
    return out


def motion_gain(extrap: float, latent_copy: float, oracle: float) -> dict[str, float]:
    """``extrap_gain_db_motion`` and, when oracle - latent copy >= ``CAPTURED_MIN_DB``,
    ``motion_captured``, from the motion-region PSNRs (dB)."""
    out = {"extrap_gain_db_motion": extrap - latent_copy}
    if oracle - latent_copy >= CAPTURED_MIN_DB:
        out["motion_captured"] = (extrap - latent_copy) / (oracle - latent_copy)
    return out


def active_units(total: torch.Tensor, total_sq: torch.Tensor, count: float) -> dict[str, float]:
    """``active_units`` and ``latent_elements`` from per-element sums of mu and mu ** 2.

    An element is active when its variance over the ``count`` frames (population variance,
    E[mu^2] - E[mu]^2) exceeds ``ACTIVE_UNIT_THRESHOLD``; (D,) x 2 -> counts.
    """
    mean = total / count  # (D,)
    var = total_sq / count - mean.pow(2)  # (D,)
    return {
        "active_units": float((var > ACTIVE_UNIT_THRESHOLD).sum()),
        "latent_elements": float(total.numel()),
    }


# ---- multi-step rollouts ----------------------------------------------------------------------


def rollout_keys(horizons: int) -> tuple[str, ...]:
    """The metric names of a rollout to ``horizons`` steps, in :func:`rollout_sums`' order."""
    return tuple(
        f"{name}_h{k}"
        for name in ("extrap_psnr", "copy_last_psnr", "pixel_linear_psnr")
        for k in range(1, horizons + 1)
    )


def rollout_sums(model: nn.Module, frames: list[torch.Tensor]) -> torch.Tensor:
    """Per-horizon PSNR sums of a rollout from the first two of ``frames``; float64 (1 + 3K,).

    ``frames`` are K + 2 batches (B, C, H, W) in [0, 1] at t, t+s, ..., t+(K+1)s. The latents
    of the first two are extrapolated k = 1..K steps (z2 + k (z2 - z1)) and decoded; horizon k
    is scored against frame t+(k+1)s, beside copy-last (frame t+s) and pixel-linear
    (x2 + k (x2 - x1), clipped). Element 0 is the sample count, then the sums in
    :func:`rollout_keys` order; add them over batches and ranks, then :func:`finalize_rollout`.
    """
    vae = unwrap_model(model)
    x1, x2, truths = frames[0], frames[1], frames[2:]
    with torch.no_grad():
        mu1, mu2 = vae.encode(x1)[0], vae.encode(x2)[0]  # (B, D) each
        latents = rollout(mu1, mu2, len(truths))  # (K, B, D)
        columns: dict[str, list[torch.Tensor]] = {"extrap": [], "copy": [], "pixel": []}
        for k, truth in enumerate(truths, start=1):
            pred = vae.decode(latents[k - 1]).to(truth.dtype).clamp(0, 1)  # (B, C, H, W)
            columns["extrap"].append(psnr(pred, truth).sum())
            columns["copy"].append(psnr(x2, truth).sum())
            columns["pixel"].append(psnr((x2 + k * (x2 - x1)).clamp(0, 1), truth).sum())
    count = torch.tensor([float(x1.shape[0])])
    values = torch.stack(columns["extrap"] + columns["copy"] + columns["pixel"]).cpu()
    return torch.cat([count, values.to(torch.float64)]).to(torch.float64)


def finalize_rollout(sums: torch.Tensor, horizons: int) -> dict[str, float]:
    """``{extrap_psnr_h1: ..., copy_last_psnr_h1: ..., pixel_linear_psnr_h1: ...}`` averages."""
    count = float(sums[0])
    if count <= 0:
        return {}
    return {key: float(v) / count for key, v in zip(rollout_keys(horizons), sums[1:], strict=True)}
