"""Scoring a trained checkpoint on held-out triplets at one or more strides, outside Ray Train.

``varnext demo`` ends with it (the best trial's answer on the test split, at s = 1 and 3) and
the quality benchmark scores every arm with it. The metrics are those of training's
validation (:func:`varnext_ray.metrics.triplet_sums`), against the checkpoint's own training
background when it holds one, else the dataset's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

BATCH_SIZE = 64


def score_checkpoint(
    checkpoint: Path | str,
    data: Path,
    strides: Sequence[int],
    batch_size: int = BATCH_SIZE,
) -> dict[str, dict[str, Any]]:
    """The checkpoint's metrics on the test split (validation when test has no triplets at
    that stride) at each stride s: ``{str(s): metrics | {"split", "triplets"}}``; a stride
    with no triplets in either split is left out. Needs a connected Ray (Ray Data reads)."""
    from varnext_ray.background import as_tensor, load_background, training_background
    from varnext_ray.checkpoint_load import load_checkpoint
    from varnext_ray.dataset import sequences_dataset, to_model_input
    from varnext_ray.manifest import load_manifest, triplet_index
    from varnext_ray.metrics import add_sums, finalize, triplet_sums

    manifest = load_manifest(data)
    vae = load_checkpoint(checkpoint).model.eval()
    stored = load_background(Path(checkpoint))
    background = as_tensor(stored if stored is not None else training_background(data))
    out: dict[str, dict[str, Any]] = {}
    for stride in strides:
        split = "test" if triplet_index(manifest, "test", stride) else "val"
        if not triplet_index(manifest, split, stride):
            continue
        sums = None
        triplets = sequences_dataset(data, split, stride, length=3)
        for batch in triplets.iter_torch_batches(batch_size=batch_size, device="cpu"):
            frames = [to_model_input(batch[k], "cpu") for k in ("x1", "x2", "x3")]
            sums = add_sums(sums, triplet_sums(vae, *frames, background=background))
        if sums is None:
            continue
        out[str(stride)] = finalize(sums) | {"split": split, "triplets": int(sums["count"])}
    return out
