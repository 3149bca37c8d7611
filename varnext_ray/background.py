"""The background baseline: the per-pixel median of a dataset's training frames.

A model that collapses to "the mean background" scores about what this fixed picture scores
against frame t+2s (``background_psnr`` in :mod:`varnext_ray.metrics`); a model that learned
anything scores well above it, above all in the motion region. The training driver computes it
once (:func:`training_background`), hands it to every worker, and rank 0 stores it in each
checkpoint as ``background.png`` (listed with its sha256 in meta.json), where the demo's and
anyone's prediction strips read it back (:func:`load_background`).

One median of all training frames, whatever camera (clip source) each came from: with several
cameras it is a blend, and the baseline is then too easy to beat.

Example:
    >>> bg = training_background(Path("runs/dataset"))  # uint8 (H, W, 3)
    >>> as_tensor(bg).shape  # (3, H, W) float in [0, 1]
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from varnext_ray.errors import UserError
from varnext_ray.frame_codec import decode_images
from varnext_ray.manifest import load_manifest

BACKGROUND_FILE = "background.png"  # its name in a checkpoint directory
MEDIAN_FRAMES = 500  # at most this many evenly spaced training frames go into the median


def _frame_picks(counts: list[int], limit: int) -> list[list[int]]:
    """Evenly spaced positions over clips of ``counts`` frames: per clip, the rows to read."""
    total = sum(counts)
    wanted = np.unique(np.linspace(0, total - 1, min(limit, total)).round().astype(np.int64))
    starts = np.cumsum([0, *counts])
    return [
        [int(i - starts[c]) for i in wanted if starts[c] <= i < starts[c + 1]]
        for c in range(len(counts))
    ]


def training_background(
    data: str | Path, *, split: str = "train", limit: int = MEDIAN_FRAMES
) -> np.ndarray:
    """The per-pixel median of up to ``limit`` evenly spaced frames of the split.

    Reads each clip's Parquet files (frames in time order) and decodes only the picked rows.

    Returns:
        uint8 (H, W, 3).

    Raises:
        UserError: The split has no frames.
    """
    manifest = load_manifest(data)
    clips = manifest.clips(split)
    counts = [int(c["frames"]) for c in clips]
    if sum(counts) == 0:
        raise UserError(
            f"the dataset has no {split!r} frames", str(data), "re-ingest with more footage"
        )
    picked = []
    for clip, rows in zip(clips, _frame_picks(counts, limit), strict=True):
        if not rows:
            continue
        files = [str(manifest.root / f) for f in clip["files"]]
        table = pq.ParquetDataset(files).read(columns=["frame_index", "image"])
        blobs = table.sort_by("frame_index").column("image").take(rows).to_pylist()
        picked.append(decode_images(blobs, manifest.encoding, manifest.size))  # (n, H, W, 3)
    frames = np.concatenate(picked)  # (N, H, W, 3)
    return np.median(frames, axis=0).round().astype(np.uint8)


def as_tensor(background: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1], the frames' normalisation."""
    return torch.from_numpy(background).permute(2, 0, 1).float().div(255.0).to(device)


def png_bytes(background: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(background, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def load_background(checkpoint: str | Path) -> np.ndarray | None:
    """The checkpoint's ``background.png`` (sha256-checked) as uint8 (H, W, 3), or None when
    the checkpoint holds none (saved before issue #15, or by code that passed none)."""
    from varnext_ray.checkpoint_read import read_listed_file

    data = read_listed_file(checkpoint, BACKGROUND_FILE)
    if data is None:
        return None
    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
