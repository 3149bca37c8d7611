"""Splitting clips into train/val/test without letting near-copies leak across splits.

Neighbouring frames are near-copies, so frames are never split at random:
- by clip (``policy: "clips"``): in an order shuffled by the seed, each whole clip goes to val
  or test if that brings the split closer to its share of the frames, else to train; used when
  every requested split gets at least one clip and train keeps at least half of the frames;
- otherwise by time blocks (``policy: "time_blocks"``): each clip is cut into contiguous
  [train | guard | val | guard | test] blocks in proportion, dropping ``guard`` frames at each
  boundary, so no val or test frame neighbours a training frame (train on the past, evaluate on
  the future).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SplitShares:
    """The shares of frames held out for val and test, the guard and the shuffle seed."""

    val: float
    test: float
    guard: int  # frames dropped at each boundary between time blocks
    seed: int


def plan_splits(lengths: list[int], opts: SplitShares) -> list[list[tuple[str, int, int]]]:
    """For each clip, its pieces as (split, start, stop) frame ranges; see the module docstring.

    Example:
        >>> plan_splits([100], SplitShares(val=0.2, test=0.2, guard=2, seed=1))
        [[('train', 0, 58), ('val', 60, 79), ('test', 81, 100)]]
    """
    by_clip = _split_by_clip(lengths, opts)
    if by_clip is not None:
        return [[(split, 0, n)] for split, n in zip(by_clip, lengths, strict=True)]
    return [_time_blocks(n, opts) for n in lengths]


def _split_by_clip(lengths: list[int], opts: SplitShares) -> list[str] | None:
    """Whole clips, in seeded random order, go to val or test while that brings the split
    closer to its target frame count; None when a requested split would get no clip."""
    total = sum(lengths)
    target = {"val": opts.val * total, "test": opts.test * total}
    filled = {"val": 0, "test": 0}
    splits = ["train"] * len(lengths)
    for i in np.random.default_rng(opts.seed).permutation(len(lengths)):
        for split in ("val", "test"):
            if abs(filled[split] + lengths[i] - target[split]) < abs(filled[split] - target[split]):
                splits[i] = split
                filled[split] += lengths[i]
                break
    wanted = [s for s in ("val", "test") if target[s] > 0]
    train = total - filled["val"] - filled["test"]
    if any(filled[s] == 0 for s in wanted) or train < 0.5 * total:
        return None
    return splits


# Frames of the shortest held-out block worth cutting: one triplet (t, t+1, t+2). A shorter
# val or test block scores nothing, and would cost the clip its guards as well.
MIN_BLOCK = 3


def _time_blocks(n: int, opts: SplitShares) -> list[tuple[str, int, int]]:
    """[train | guard | val | guard | test] of a clip of ``n`` frames; the whole clip trains
    when it is too short for a block of :data:`MIN_BLOCK` frames in every requested split."""
    held = [(split, f) for split, f in (("val", opts.val), ("test", opts.test)) if f > 0]
    usable = n - opts.guard * len(held)
    counts = [(split, round(f * usable)) for split, f in held]
    train = usable - sum(c for _, c in counts)
    if train <= 0 or any(c < MIN_BLOCK for _, c in counts):
        return [("train", 0, n)]  # too short to block: all of it trains
    pieces = [("train", 0, train)]
    for split, count in counts:
        start = pieces[-1][2] + opts.guard
        pieces.append((split, start, start + count))
    return pieces
