"""Train/val/test splits: whole clips when they fit the shares, else guarded time blocks."""

from __future__ import annotations

import itertools

import pytest

from varnext_ray.splits import SplitShares, plan_splits

SHARES = SplitShares(val=0.2, test=0.2, guard=2, seed=1)


def test_many_clips_split_by_whole_clip() -> None:
    plan = plan_splits([50] * 10, SHARES)
    assert all(len(pieces) == 1 for pieces in plan)  # whole clips, never random frames
    assert sorted(p[0][0] for p in plan).count("val") == 2
    assert sorted(p[0][0] for p in plan).count("test") == 2
    assert all(p[0][1:] == (0, 50) for p in plan)


def test_one_clip_splits_into_guarded_time_blocks() -> None:
    one = plan_splits([100], SHARES)[0]
    assert one == [("train", 0, 58), ("val", 60, 79), ("test", 81, 100)]
    # no held-out frame neighbours a training frame: `guard` frames dropped at each boundary
    assert [b[1] - a[2] for a, b in itertools.pairwise(one)] == [2, 2]


def test_a_clip_too_short_to_block_all_trains() -> None:
    assert plan_splits([5], SHARES)[0] == [("train", 0, 5)]


@pytest.mark.parametrize("frames", [20, 50])
def test_held_out_blocks_without_a_triplet_are_not_cut(frames: int) -> None:
    """A 50-frame clip at shares 0.1 and a guard of 15 frames kept 18 frames: 14
    train and 2 each in val and test, which hold no triplet, and 32 in the guards."""
    shares = SplitShares(val=0.1, test=0.1, guard=15, seed=0)
    assert plan_splits([frames], shares)[0] == [("train", 0, frames)]
    blocks = plan_splits([200], shares)[0]  # long enough: every held-out block has triplets
    assert [b[0] for b in blocks] == ["train", "val", "test"]
    assert all(stop - start >= 3 for _, start, stop in blocks)


def test_the_seed_decides_which_clips_are_held_out() -> None:
    lengths = [40] * 10
    first = plan_splits(lengths, SHARES)
    assert plan_splits(lengths, SHARES) == first  # reproducible
    others = [plan_splits(lengths, SplitShares(0.2, 0.2, 2, seed)) for seed in range(2, 8)]
    assert any(plan != first for plan in others)


@pytest.mark.parametrize("lengths", [[30, 200], [10, 10, 300]])
def test_clips_that_would_leave_train_under_half_fall_back_to_time_blocks(
    lengths: list[int],
) -> None:
    plan = plan_splits(lengths, SplitShares(val=0.3, test=0.3, guard=1, seed=0))
    train = sum(
        stop - start for pieces in plan for split, start, stop in pieces if split == "train"
    )
    assert train >= 0.3 * sum(lengths)
    assert any(len(clip) > 1 for clip in plan)  # at least one clip was cut into blocks
