"""Ingest: clip and frame counts, cut detection, split fractions, atomic writes, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import REAL_CLIP
from varnext_ray.errors import UserError
from varnext_ray.ingest import IngestOptions, ingest
from varnext_ray.manifest import load_manifest, triplet_index
from varnext_ray.media import write_video
from varnext_ray.synth import plan_clip, render_clip, scene_background


def test_clips_and_frames_match_synthetic_truth(synth_dir: Path, dataset_dir: Path) -> None:
    truth = json.loads((synth_dir / "synth.json").read_text())
    manifest = load_manifest(dataset_dir).data
    assert sum(len(c["bumps"]) for c in truth["clips"]) >= 1
    # Every camera bump is found as a cut, at exactly the bump's frame, and nothing else is.
    assert [s["cuts"] for s in manifest["sources"]] == [c["bumps"] for c in truth["clips"]]
    assert len(manifest["clips"]) == sum(1 + len(c["bumps"]) for c in truth["clips"])
    assert manifest["frames"] == sum(c["frames"] for c in truth["clips"])
    assert sum(manifest["splits"].values()) == manifest["frames"]
    assert manifest["split"]["policy"] == "clips" and manifest["skipped"] == []


def test_parquet_rows_agree_with_manifest(dataset_dir: Path) -> None:
    manifest = load_manifest(dataset_dir)
    seen = set()
    for clip in manifest.clips():
        table = pq.ParquetDataset([str(dataset_dir / f) for f in clip["files"]]).read()
        assert set(table.column("split").to_pylist()) == {clip["split"]}  # one split per clip
        assert set(table.column("clip_id").to_pylist()) == {clip["id"]}
        assert sorted(table.column("frame_index").to_pylist()) == list(range(clip["frames"]))
        assert len(table.column("image")[0].as_py()) == 64 * 36 * 3
        seen.add(clip["id"])
    assert len(seen) == len(manifest.clips())
    for split in ("train", "val", "test"):
        for clip_id, t in triplet_index(manifest, split, stride=3):
            clip = next(c for c in manifest.clips() if c["id"] == clip_id)
            assert clip["split"] == split and t + 6 < clip["frames"]


def test_every_n_keeps_cuts(synth_dir: Path, tmp_path: Path) -> None:
    truth = json.loads((synth_dir / "synth.json").read_text())
    m = ingest([synth_dir], tmp_path / "ds", IngestOptions(size=(64, 36), every=2))
    assert m["frames"] == sum((c["frames"] + 1) // 2 for c in truth["clips"])
    # A bump at frame b is seen at the first kept frame at or after it.
    assert [s["cuts"] for s in m["sources"]] == [
        [b + b % 2 for b in c["bumps"]] for c in truth["clips"]
    ]


def test_scene_cut_inside_one_video(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    plans = [plan_clip(rng, 20, (96, 54), bump_probability=0.0) for _ in range(2)]
    scenes = [scene_background(seed, (96, 54)) for seed in (1, 2)]  # two cameras
    frames = [
        f
        for plan, bg in zip(plans, scenes, strict=True)
        for f in render_clip(plan, bg, np.random.default_rng(1))
    ]
    write_video(tmp_path / "two_scenes.mp4", iter(frames))
    m = ingest([tmp_path / "two_scenes.mp4"], tmp_path / "ds", IngestOptions(size=(64, 36)))
    assert m["sources"][0]["cuts"] == [20]


@pytest.mark.slow
def test_real_clip_time_blocks_with_guard(tmp_path: Path) -> None:
    opts = IngestOptions(size=(64, 36), guard=10)
    m = ingest([REAL_CLIP], tmp_path / "ds", opts)
    with av.open(str(REAL_CLIP)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    source = m["sources"][0]
    assert source["frames_decoded"] == decoded == 1699
    assert source["cuts"] == []  # traffic is motion, not a cut
    assert m["split"]["policy"] == "time_blocks"
    assert m["frames"] + m["split"]["guard_frames_dropped"] == decoded
    assert m["split"]["guard_frames_dropped"] == 20
    pieces = {c["split"]: c["source_frames"] for c in m["clips"]}
    assert pieces["val"][0] - pieces["train"][1] == 11  # 10 guard frames between the blocks
    assert pieces["test"][0] - pieces["val"][1] == 11
    assert 0.08 < m["splits"]["val"] / m["frames"] < 0.12


def test_existing_output_is_never_touched(dataset_dir: Path, synth_dir: Path) -> None:
    before = (dataset_dir / "dataset.json").read_text()
    with pytest.raises(UserError, match="output already exists"):
        ingest([synth_dir], dataset_dir, IngestOptions(size=(64, 36)))
    assert (dataset_dir / "dataset.json").read_text() == before


def test_failure_midway_leaves_nothing(synth_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import varnext_ray.ingest as ingest_module

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest_module, "write_pieces", boom)
    with pytest.raises(KeyboardInterrupt):
        ingest([synth_dir], tmp_path / "ds", IngestOptions(size=(64, 36)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_killed_ingest_never_reads_as_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    cmd = [
        sys.executable,
        "-m",
        "varnext_ray.cli",
        "ingest",
        str(REAL_CLIP),
        "--out",
        str(out),
        "--size",
        "320x180",
        "--encoding",
        "png",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not any(tmp_path.glob(".ds.partial-*/_staging/*.parquet")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    with pytest.raises(UserError, match="dataset not found"):
        load_manifest(out)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert load_manifest(out).data["frames"] > 0
