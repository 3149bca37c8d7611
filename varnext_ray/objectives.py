"""Metric names a run can be ranked by, and the direction that is better for each.

Torch-free on purpose: ``varnext best``, ``varnext report`` and the search-space loader read it
without importing the training stack.

Example:
    >>> direction("best_extrap_psnr")
    'max'
"""

from __future__ import annotations

from varnext_ray.errors import UserError

# What train, sweep, best and register rank runs by unless told otherwise: the moving pixels,
# where a latent prediction can beat the static background.
DEFAULT_OBJECTIVE = "extrap_psnr_motion"

# metric -> the direction that is better. Diagnostics that are not goals in themselves
# (active_units, decoder_sensitivity, motion_captured: a ratio of small differences) and the
# baselines (copy_last_*, background_*) are not objectives.
OBJECTIVES: dict[str, str] = {
    "extrap_psnr": "max",
    "extrap_ssim": "max",
    "extrap_skill": "max",
    "extrap_mse": "min",
    "extrap_psnr_motion": "max",
    "oracle_psnr": "max",
    "oracle_psnr_motion": "max",
    "extrap_gain_db": "max",
    "extrap_gain_db_motion": "max",
    "val_loss": "min",
    "latent_linearity": "min",
}


def direction(metric: str, where: str = "--metric") -> str:
    """``"max"`` or ``"min"`` for a metric name, with or without its ``best_`` prefix.

    Raises:
        UserError: The metric is not one of :data:`OBJECTIVES` (``where`` names the option).
    """
    name = metric.removeprefix("best_")
    if name not in OBJECTIVES:
        raise UserError(
            f"unknown metric {metric!r}", where, f"use one of {', '.join(sorted(OBJECTIVES))}"
        )
    return OBJECTIVES[name]
