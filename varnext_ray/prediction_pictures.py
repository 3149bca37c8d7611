"""Pictures of a model's predictions: the prediction strip of validation triplets, and the
frames of a rollout GIF (true frame beside the model's, step by step).

Frames are (B, C, H, W) float in [0, 1]; pictures come back as uint8 (H, W, 3) arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from varnext_ray.model import extrapolate, rollout, unwrap_model

ERROR_GAIN = 4.0  # error map in the prediction strip: |pred - truth| * gain, then a heat map


STRIP_COLUMNS = (
    "t",
    "t+s",
    "truth t+2s",
    "latent prediction",
    "latent copy",
    "oracle",
    "copy-last",
    "background",
    "error",
)


def heat_map(value: torch.Tensor) -> torch.Tensor:
    """Black -> red -> yellow -> white for values in [0, 1]; (B, H, W) -> (B, 3, H, W)."""
    v = value.clamp(0, 1) * 3
    return torch.stack([v.clamp(0, 1), (v - 1).clamp(0, 1), (v - 2).clamp(0, 1)], dim=1)


def prediction_strip(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor,
    x3: torch.Tensor,
    n: int = 4,
    background: torch.Tensor | None = None,
) -> np.ndarray:
    """A picture of the first ``n`` triplets (fewer if the batch is smaller), one per row.

    Columns (``STRIP_COLUMNS``): frame t, t+s, truth t+2s, latent prediction, latent copy
    (decode of mu2), oracle decode of mu3, copy-last (= t+s), the training background (black
    when ``background`` is None), and the error map: mean over channels of
    |prediction - truth|, times ``ERROR_GAIN``, as a heat map (black = exact, white = off by
    >= 1/ERROR_GAIN).

    Returns:
        uint8 array (rows * H, 9 * W, 3).
    """
    vae = unwrap_model(model)
    x1, x2, x3 = x1[:n], x2[:n], x3[:n]  # (n, C, H, W)
    with torch.no_grad():
        mu1, mu2, mu3 = (vae.encode(x)[0] for x in (x1, x2, x3))  # (n, D) each
        pred = vae.decode(extrapolate(mu1, mu2)).clamp(0, 1)  # (n, C, H, W)
        oracle = vae.decode(mu3).clamp(0, 1)
        latent_copy = vae.decode(mu2).clamp(0, 1)
        bg = torch.zeros_like(x3) if background is None else background.to(x3).expand_as(x3)
        error = heat_map((pred - x3).abs().mean(1) * ERROR_GAIN)  # (n, 3, H, W)
        tiles = [x1, x2, x3, pred, latent_copy, oracle, x2, bg, error]
        grid = torch.cat([t.to(x3.dtype).expand(-1, 3, -1, -1) for t in tiles], dim=3)
        grid = torch.cat(list(grid), dim=1)  # (3, n*H, 9W)
    return (grid.permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)


def rollout_frames(model: nn.Module, frames: list[torch.Tensor], n: int = 2) -> list[np.ndarray]:
    """The pictures of a rollout GIF: one per time step, for the first ``n`` sequences.

    Each picture has a row per sequence with two tiles, the true frame and the model's frame:
    at the first two steps the model's tiles are its reconstructions of its inputs, after that
    the decoded extrapolation k steps ahead. Returns uint8 arrays (n * H, 2 * W, 3).
    """
    vae = unwrap_model(model)
    frames = [f[:n] for f in frames]  # each (n, C, H, W)
    with torch.no_grad():
        mu1, mu2 = vae.encode(frames[0])[0], vae.encode(frames[1])[0]
        latents = torch.cat([torch.stack([mu1, mu2]), rollout(mu1, mu2, len(frames) - 2)])
        pictures = []
        for truth, z in zip(frames, latents, strict=True):
            model_frame = vae.decode(z).to(truth.dtype).clamp(0, 1)  # (n, C, H, W)
            grid = torch.cat([truth, model_frame], dim=3)  # (n, C, H, 2W)
            grid = torch.cat(list(grid), dim=1)  # (C, n*H, 2W)
            array = (grid.permute(1, 2, 0).float().cpu().numpy() * 255).round()
            pictures.append(array.astype(np.uint8))
    return pictures
