"""Per-sample scores of predicted frames: MSE, PSNR (whole frame or masked), SSIM, motion masks.

Frames are (B, C, H, W) float in [0, 1]; every score is one value per sample, (B,).

Conventions:
    - PSNR has max value 1.0. MSE is clamped at ``MSE_FLOOR`` = 1e-10, so identical frames
      score ``PSNR_CAP_DB`` = 100 dB, never inf.
    - SSIM is Wang et al.'s (2004) as torchmetrics computes it (gaussian window, sigma 1.5,
      11 px, data_range 1.0, reflect-padded so every pixel is a window centre); for frames
      smaller than 11 px on a side the window shrinks, see :func:`ssim_window`. It is written
      here, not imported: torchmetrics' import pulls in scipy and matplotlib, about 1.2 s in
      every Train worker of every trial (issue #18); a test holds it to torchmetrics' values.
    - A pixel moved where max over channels of |x3 - x2| > ``MOTION_THRESHOLD`` = 0.1 (about
      25 grey levels of 255): :func:`motion_mask`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MSE_FLOOR = 1e-10  # MSE is clamped here before the log
PSNR_CAP_DB = 100.0  # = 10 * log10(1 / MSE_FLOOR): the PSNR of identical frames
MOTION_THRESHOLD = 0.1  # a pixel moved if max_c |x3 - x2| exceeds this (~25/255)
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # the standard gaussian window (torchmetrics' default)
SSIM_K1, SSIM_K2 = 0.01, 0.03  # stabilisers: c1 = (k1 * L)^2, c2 = (k2 * L)^2, L = 1


def mse_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample over (C, H, W); (B, C, H, W) x 2 -> (B,)."""
    return (pred - target).pow(2).flatten(1).mean(1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each sample, max value 1.0, capped at ``PSNR_CAP_DB``; (B,)."""
    return psnr_from_mse(mse_per_sample(pred, target))


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """10 * log10(1 / mse), with mse clamped at ``MSE_FLOOR`` (so at most ``PSNR_CAP_DB``)."""
    return -10.0 * torch.log10(mse.clamp(min=MSE_FLOOR))


def motion_mask(x2: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
    """Where the true frame changed: max_c |x3 - x2| > ``MOTION_THRESHOLD``.

    (B, C, H, W) x 2 -> (B, H, W) bool.
    """
    return (x3 - x2).abs().amax(dim=1) > MOTION_THRESHOLD


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR of each sample over only the masked pixels (all channels); (B,).

    Samples with no masked pixel get 0 (callers skip them). (B, C, H, W) x 2, (B, H, W) -> (B,).
    """
    weight = mask.unsqueeze(1).to(pred.dtype)  # (B, 1, H, W)
    sq = ((pred - target).pow(2) * weight).flatten(1).sum(1)  # (B,)
    n = weight.flatten(1).sum(1) * pred.shape[1]  # (B,) masked values
    out = psnr_from_mse(sq / n.clamp(min=1))
    return torch.where(n > 0, out, torch.zeros_like(out))


def ssim_window(height: int, width: int) -> tuple[int, float | None]:
    """The SSIM window (side in px, gaussian sigma or None for a uniform window) that fits a
    height x width image.

    11 px gaussian, sigma 1.5 (the standard) when both sides are >= 11; otherwise the largest
    odd k <= the shorter side, as a gaussian with sigma (k - 1) / 7 (a gaussian of sigma s spans
    2 * int(3.5 * s + 0.5) + 1 px, torchmetrics' rule); below 3 px, a 1x1 uniform window.
    """
    side = min(height, width)
    if side >= SSIM_WINDOW:
        return SSIM_WINDOW, SSIM_SIGMA
    k = side if side % 2 else side - 1
    if k < 3:
        return 1, None
    return k, (k - 1) / 7


def _window_kernel(
    size: int, sigma: float | None, channels: int, like: torch.Tensor
) -> torch.Tensor:
    """A (channels, 1, size, size) normalised window for a depthwise conv2d."""
    if sigma is None:
        window = torch.ones(size, size, dtype=like.dtype, device=like.device) / size**2
    else:
        offsets = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
        g = torch.exp(-((offsets / sigma) ** 2) / 2)
        g = g / g.sum()
        window = g[:, None] * g[None, :]
    return window.expand(channels, 1, size, size)


def ssim_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of each sample (data_range 1.0, window from :func:`ssim_window`, channels
    averaged); (B,). Equal to torchmetrics' ``structural_similarity_index_measure(...,
    reduction="none")`` with the same window (tests/test_metrics.py compares them)."""
    size, sigma = ssim_window(pred.shape[-2], pred.shape[-1])
    channels, n = pred.shape[1], pred.shape[0]
    pad = (size - 1) // 2
    if pad:
        pred = F.pad(pred, (pad, pad, pad, pad), mode="reflect")
        target = F.pad(target, (pad, pad, pad, pad), mode="reflect")
    moments = F.conv2d(
        torch.cat((pred, target, pred * pred, target * target, pred * target)),
        _window_kernel(size, sigma, channels, pred),
        groups=channels,
    )
    mu_p, mu_t, pp, tt, pt = moments.split(n)
    var_p = (pp - mu_p**2).clamp(min=0.0)
    var_t = (tt - mu_t**2).clamp(min=0.0)
    cov = pt - mu_p * mu_t
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / (
        (mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2)
    )
    return ssim_map.flatten(1).mean(1)
