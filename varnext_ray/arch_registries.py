"""The architecture's closed registries: activations, norms, reconstructions, upsample modes.

Each maps a JSON name to what builds it; a config naming anything else is refused with the
valid names (:mod:`varnext_ray.arch_sections`). The calibrated reconstruction's loss
(:func:`calibrated_gaussian_nll`) is defined here, as no torch function computes it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "none": nn.Identity,
}
OUTPUT_ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "none": nn.Identity}
NORMS: dict[str, Any] = {  # name -> (channels, groups) -> module, or None for no norm layer
    "batch": lambda channels, groups: nn.BatchNorm2d(channels),
    "group": lambda channels, groups: nn.GroupNorm(groups, channels),
    "none": None,
}
CALIBRATED_MIN_VARIANCE = 1e-6  # floor on the calibrated decoder's variance sigma^2


def calibrated_gaussian_nll(
    recon: torch.Tensor, x: torch.Tensor, reduction: str = "none"
) -> torch.Tensor:
    """Elementwise Gaussian NLL with the optimal shared variance (sigma-VAE, Rybkin et al. 2021).

    sigma^2 is the batch MSE, detached and floored at ``CALIBRATED_MIN_VARIANCE``; each element
    costs 1/2 log(2 pi sigma^2) + (x - xhat)^2 / (2 sigma^2), so a frame's sum is
    D/2 log(2 pi sigma^2) + sum (x - xhat)^2 / (2 sigma^2) with D = C*H*W. (B, C, H, W) -> same.
    """
    if reduction != "none":
        raise ValueError(f'calibrated_gaussian_nll supports reduction="none" (got {reduction!r})')
    sq = (recon - x).pow(2)  # (B, C, H, W)
    var = sq.detach().mean().clamp(min=CALIBRATED_MIN_VARIANCE)  # scalar, no gradient
    return 0.5 * torch.log(2 * math.pi * var) + sq / (2 * var)


RECONSTRUCTIONS: dict[str, Any] = {  # name -> elementwise loss(recon, x, reduction="none")
    "mse": F.mse_loss,
    "bce": F.binary_cross_entropy,
    "l1": F.l1_loss,
    "calibrated": calibrated_gaussian_nll,
}
UPSAMPLE_MODES: dict[str, dict[str, Any]] = {  # upsample layer mode -> nn.Upsample keywords
    "nearest": {"mode": "nearest"},
    "bilinear": {"mode": "bilinear", "align_corners": False},
}
MIRROR_UPSAMPLES = ("transpose", "nearest", "bilinear")  # how a mirror decoder grows the image
LATENT_KINDS = ("flat", "spatial")
