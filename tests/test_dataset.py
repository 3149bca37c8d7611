"""Reading a frame dataset through Ray Data: frames, triplets, streaming_split, codecs."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from varnext_ray.dataset import frames_dataset, sequences_dataset, to_model_input, triplets_dataset
from varnext_ray.errors import UserError
from varnext_ray.frame_codec import decode_image_column, decode_images, encode_image
from varnext_ray.manifest import load_manifest, sequence_index, triplet_index

pytestmark = pytest.mark.cluster


def _clip_frames(dataset_dir: Path, clip: dict) -> np.ndarray:
    """All frames of one clip, in order, read straight from Parquet: (T, H, W, 3)."""
    manifest = load_manifest(dataset_dir)
    table = pq.ParquetDataset([str(dataset_dir / f) for f in clip["files"]]).read()
    table = table.sort_by("frame_index")
    return decode_images(table.column("image").to_pylist(), "raw", manifest.size)


@pytest.mark.parametrize("encoding", ["raw", "png", "jpeg"])
def test_codecs_round_trip(encoding: str) -> None:
    frame = np.random.default_rng(0).integers(0, 256, (18, 32, 3), dtype=np.uint8)
    frame[:, :16] = 90  # some flat area so jpeg stays close
    back = decode_images([encode_image(frame, encoding)] * 2, encoding, (32, 18))
    assert back.shape == (2, 18, 32, 3) and back.dtype == np.uint8 and back.flags.writeable
    if encoding == "jpeg":
        assert np.abs(back[0, :, :14].astype(int) - 90).max() <= 3
    else:
        np.testing.assert_array_equal(back[1], frame)


def test_frames_dataset_yields_every_train_frame(ray_local, dataset_dir: Path) -> None:
    manifest = load_manifest(dataset_dir)
    total, keys = 0, set()
    for batch in frames_dataset(dataset_dir, "train").iter_torch_batches(batch_size=16):
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (36, 64, 3)
        x = to_model_input(batch["image"], "cpu")  # (B, 3, H, W)
        assert x.shape[1:] == (3, 36, 64) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
        assert x.is_contiguous(memory_format=torch.channels_last)
        total += len(x)
        keys |= set(zip(batch["clip"].tolist(), batch["frame_index"].tolist(), strict=True))
    assert total == len(keys) == manifest.data["splits"]["train"]


def test_large_compressed_frames_are_decoded_in_tasks_smaller_than_a_file(
    ray_local, synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JPEG frames whose decoding is spread over tasks of a few frames each (a split read, as
    at 640x360) come out as the same frames, each once, as one fused task per file reads."""
    import varnext_ray.dataset as dataset_module
    from varnext_ray.dataset import decode_rows
    from varnext_ray.ingest import IngestOptions, ingest

    out = tmp_path / "jpeg"
    ingest([synth_dir], out, IngestOptions(size=(64, 36), encoding="jpeg", val=0.2, test=0.2))
    manifest = load_manifest(out)
    assert decode_rows(manifest, "train") is None  # 64x36: a file's frames are one task
    fused = _frames_by_key(frames_dataset(out, "train"))
    monkeypatch.setattr(dataset_module, "DECODE_BYTES", 64 * 36 * 3 * 8)
    assert decode_rows(manifest, "train") == 8
    split = _frames_by_key(frames_dataset(out, "train"))
    assert len(split) == len(fused) == manifest.frames("train")
    for key, frame in fused.items():
        np.testing.assert_array_equal(split[key], frame)


def _frames_by_key(ds: object) -> dict[tuple[int, int], np.ndarray]:
    frames = {}
    for batch in ds.iter_batches(batch_size=64, batch_format="numpy"):
        for clip, index, image in zip(
            batch["clip"], batch["frame_index"], batch["image"], strict=True
        ):
            assert (int(clip), int(index)) not in frames
            frames[int(clip), int(index)] = image
    return frames


def test_triplets_match_the_clip_frames(ray_local, dataset_dir: Path) -> None:
    manifest = load_manifest(dataset_dir)
    stride = 2
    rows = triplets_dataset(dataset_dir, "val", stride=stride, chunk=5).take_all()
    assert len(rows) == len(triplet_index(manifest, "val", stride))
    clips = manifest.clips()
    cache: dict[int, np.ndarray] = {}
    for row in rows:
        clip = clips[row["clip"]]
        assert clip["split"] == "val" and row["t"] + 2 * stride < clip["frames"]
        frames = cache.setdefault(row["clip"], _clip_frames(dataset_dir, clip))
        t = row["t"]
        np.testing.assert_array_equal(row["x1"], frames[t])
        np.testing.assert_array_equal(row["x2"], frames[t + stride])
        np.testing.assert_array_equal(row["x3"], frames[t + 2 * stride])


def test_sequences_hold_every_step_of_one_clip(ray_local, dataset_dir: Path) -> None:
    manifest = load_manifest(dataset_dir)
    stride, length = 2, 5
    rows = sequences_dataset(dataset_dir, "val", stride, length=length, chunk=3).take_all()
    index = sequence_index(manifest, "val", stride, length)
    assert len(rows) == len(index) > 0
    assert sorted((manifest.clips()[r["clip"]]["id"], r["t"]) for r in rows) == sorted(index)
    clips = manifest.clips()
    for row in rows[:: max(1, len(rows) // 6)]:
        frames = _clip_frames(dataset_dir, clips[row["clip"]])
        for i in range(length):
            np.testing.assert_array_equal(row[f"x{i + 1}"], frames[row["t"] + i * stride])
    longest = max(c["frames"] for c in manifest.clips("val"))
    with pytest.raises(UserError, match=f"no sequences of {longest + 1} frames"):
        sequences_dataset(dataset_dir, "val", 1, length=longest + 1)


def test_triplet_limit_and_errors(ray_local, dataset_dir: Path) -> None:
    manifest, clips = load_manifest(dataset_dir), load_manifest(dataset_dir).clips()
    limited = triplets_dataset(dataset_dir, "val", stride=1, limit=7, chunk=4).materialize()
    rows = limited.take_all()
    assert len(rows) == 7 and len({(r["clip"], r["t"]) for r in rows}) == 7
    for row in rows:  # spread anchors, each still the right frames
        frames = _clip_frames(dataset_dir, clips[row["clip"]])
        np.testing.assert_array_equal(row["x3"], frames[row["t"] + 2])
    # anchors a limit spreads out are read about `chunk` per task, not one task each
    assert limited.num_blocks() == 2 < len(triplet_index(manifest, "val", 1))
    with pytest.raises(UserError, match="has no triplets of stride 100"):
        triplets_dataset(dataset_dir, "val", stride=100)


def test_streaming_split_shards_disjointly(ray_local, dataset_dir: Path) -> None:
    manifest = load_manifest(dataset_dir)
    shards = frames_dataset(dataset_dir, "train").streaming_split(2, equal=True)
    seen: list[list[tuple[int, int]]] = [[], []]

    def consume(rank: int) -> None:
        for batch in shards[rank].iter_torch_batches(batch_size=8):
            seen[rank] += list(
                zip(batch["clip"].tolist(), batch["frame_index"].tolist(), strict=True)
            )

    threads = [threading.Thread(target=consume, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(seen[0]) == len(seen[1]) > 0  # equal shards: equal DDP steps
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) <= manifest.data["splits"]["train"]


def _tampered(dataset_dir: Path, tmp_path: Path) -> tuple[Path, dict]:
    import json
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(dataset_dir, copy)
    return copy, json.loads((copy / "dataset.json").read_text())


def test_files_whose_keys_do_not_match_the_manifest_are_refused_before_reading(
    dataset_dir: Path, tmp_path: Path
) -> None:
    """Footers agree (row counts, column types), but the rows are another clip's, or their
    frame indices are not the clip's: readers failed inside Ray with a KeyError or a
    ValueError."""
    import json

    import pyarrow as pa
    import pyarrow.compute as pc

    renamed, manifest = _tampered(dataset_dir, tmp_path / "a")
    manifest["clips"][0]["id"] = "renamed"
    (renamed / "dataset.json").write_text(json.dumps(manifest))
    load_manifest(renamed)  # the footers alone agree
    with pytest.raises(UserError, match=r"clips\[0\]: .* holds frames of clip .*not 'renamed'"):
        load_manifest(renamed, check_keys=True)

    shifted, manifest = _tampered(dataset_dir, tmp_path / "b")
    n, clip = next((n, c) for n, c in enumerate(manifest["clips"]) if c["split"] == "val")
    file = shifted / clip["files"][0]
    table = pq.read_table(file)
    column = pc.add(table.column("frame_index"), pa.scalar(1000, pa.int32()))
    pq.write_table(
        table.set_column(table.schema.get_field_index("frame_index"), "frame_index", column), file
    )
    load_manifest(shifted)
    with pytest.raises(UserError, match=rf"clips\[{n}\] .*frame_index values are not 0\.\."):
        load_manifest(shifted, check_keys=True)
    load_manifest(dataset_dir, check_keys=True)  # an ingested dataset passes


def test_a_manifest_that_repeats_a_key_is_refused(dataset_dir: Path, tmp_path: Path) -> None:
    """JSON keeps the last of two "frames": a hand-edited manifest said one thing and meant
    another (architectures and search spaces already refused it)."""
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(dataset_dir, copy)
    text = (copy / "dataset.json").read_text()
    (copy / "dataset.json").write_text(text.replace('"frames":', '"frames": 1, "frames":', 1))
    with pytest.raises(UserError, match='duplicate key "frames" in one object'):
        load_manifest(copy)


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (('"format_version": 1', '"format_version": true'), "unsupported dataset format 'True'"),
        (('"ratio": ', '"ratio": 1e400, "x": '), "1e400 is too large for a number"),
    ],
)
def test_a_manifest_value_json_reads_loosely_is_refused(
    dataset_dir: Path, tmp_path: Path, edit: tuple[str, str], said: str
) -> None:
    """``true`` equals 1 and Python reads ``1e400`` as infinity: both were taken."""
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(dataset_dir, copy)
    text = (copy / "dataset.json").read_text()
    assert edit[0] in text, text[:400]
    (copy / "dataset.json").write_text(text.replace(*edit, 1))
    with pytest.raises(UserError, match=re.escape(said)):
        load_manifest(copy)


def test_a_manifest_without_a_split_it_has_no_frames_of_is_read_as_zero(
    dataset_dir: Path, tmp_path: Path
) -> None:
    """``splits`` may leave out a split with no frames (the manifest's check counts it 0), but
    train read ``splits["train"]``: "unexpected KeyError: 'train'" (exit 1)."""
    import json
    import shutil

    from varnext_ray.settings import TrainSettings
    from varnext_ray.train import check_dataset

    data = Path(shutil.copytree(dataset_dir, tmp_path / "ds"))
    manifest = json.loads((data / "dataset.json").read_text())
    manifest["clips"] = [c for c in manifest["clips"] if c["split"] != "train"]
    manifest["frames"] = sum(c["frames"] for c in manifest["clips"])
    del manifest["splits"]["train"]
    (data / "dataset.json").write_text(json.dumps(manifest))
    for file in (data / "train").glob("*.parquet"):
        file.unlink()
    with pytest.raises(UserError, match=r"the dataset has 0 training frames for 1 workers"):
        check_dataset(data, TrainSettings())


@pytest.mark.parametrize(
    "edit", ["files of another size", "old files of another size", "encoding png", "encoding jpeg"]
)
def test_images_that_do_not_match_the_manifest_are_refused_before_ray(
    synth_dir: Path, dataset_dir: Path, tmp_path: Path, edit: str
) -> None:
    """Parquet files copied in from a dataset ingested at another size, or ``encoding`` edited,
    passed every check before Ray: the run started, then failed in Ray Data (five lines, an
    MLflow run FAILED, no file named). Each file's first image is decoded when checked."""
    import json
    import shutil

    from varnext_ray.ingest import IngestOptions, ingest

    data = Path(shutil.copytree(dataset_dir, tmp_path / "ds"))
    if edit.endswith("files of another size"):
        other = tmp_path / "ds32"
        ingest([synth_dir], other, IngestOptions(size=(32, 18), val=0.2, test=0.2, seed=0))
        for file in other.glob("*/*.parquet"):
            table = pq.read_table(file)
            if edit.startswith("old"):  # written before files recorded their frames' size
                table = table.replace_schema_metadata(None)
            pq.write_table(table, data / file.relative_to(other))
    else:
        manifest = json.loads((data / "dataset.json").read_text())
        manifest["encoding"] = edit.split()[1]
        (data / "dataset.json").write_text(json.dumps(manifest))
    load_manifest(dataset_dir, check_keys=True)  # the original reads
    with pytest.raises(UserError) as refused:
        load_manifest(data, check_keys=True)
    said = str(refused.value)
    file = r"clips\[\d+\]\.files: '\w+/[^']+\.parquet'"
    if edit.startswith("old"):  # no record: its first frame is decoded
        assert re.search(file + ": a stored frame ", said), said
    else:  # the file's record of its frames' size and encoding
        said_of = r" holds frames of (32x18|64x36) raw, but size and encoding say 64x36 "
        assert re.search(file + said_of, said), said
    assert "re-run 'varnext ingest'" in said


def test_images_larger_than_their_frames_can_be_are_refused_from_the_footer(
    dataset_dir: Path, tmp_path: Path
) -> None:
    """One image cell of zeros, compressed to almost nothing: checking the file's first image
    decompressed its whole page (1 GB cell: 4 GB of memory) before saying it was wrong. The
    footer's uncompressed size is compared with what the frames can hold, before any page."""
    import shutil

    data = Path(shutil.copytree(dataset_dir, tmp_path / "ds"))
    file = sorted((data / "train").glob("*.parquet"))[0]
    table = pq.read_table(file)
    images = table.column("image").to_pylist()
    images[0] = bytes(20 * 1024**2)  # 20 MiB of a 64x36 frame's 6,912 bytes
    table = table.set_column(
        table.schema.get_field_index("image"), "image", pa.array(images, pa.binary())
    )
    pq.write_table(table, file, compression="zstd", data_page_size=1 << 30)
    assert file.stat().st_size < 1024**2
    with pytest.raises(UserError, match=r"clips\[\d+\]\.files: .*more than such frames can"):
        load_manifest(data, check_keys=True)


@pytest.mark.parametrize("encoding", ["raw", "png", "jpeg"])
def test_an_image_column_decodes_as_its_cells_do(encoding: str) -> None:
    """decode_image_column (Ray Data's decoding tasks, Arrow in) gives what decode_images gives
    for the same cells, for a slice of a column, several chunks and 64-bit offsets alike."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 9, 16, 3), dtype=np.uint8)
    blobs = [encode_image(f, encoding) for f in frames]
    expected = decode_images(blobs, encoding, (16, 9))
    column = pa.array(blobs, pa.binary())
    for given, rows in [
        (column, slice(None)),
        (column.slice(2, 3), slice(2, 5)),  # offsets that do not start at 0
        (pa.chunked_array([column.slice(0, 2), column.slice(2)]), slice(None)),
        (pa.array(blobs, pa.large_binary()), slice(None)),
        (pa.array(blobs, pa.binary_view()), slice(None)),  # other binary forms: one copy each
    ]:
        images = decode_image_column(given, encoding, (16, 9))
        assert images.dtype == np.uint8 and images.shape == expected[rows].shape
        np.testing.assert_array_equal(images, expected[rows])
    assert decode_image_column(column.slice(0, 0), encoding, (16, 9)).shape == (0, 9, 16, 3)
    if encoding == "raw":  # the cells of a hand-written file may all be one size
        fixed = pa.array(blobs, pa.binary(16 * 9 * 3))
        np.testing.assert_array_equal(decode_image_column(fixed, "raw", (16, 9)), expected)


@pytest.mark.parametrize(
    ("cells", "said"),
    [
        (pa.array([b"\x00" * 432, b"\x00" * 100], pa.binary()), "has 100 bytes, not 16x9x3"),
        (pa.array([b"\x00" * 432, None], pa.binary()), "is missing"),
        (pa.array(["text"]), "holds string, not image bytes"),
    ],
)
def test_an_image_column_that_does_not_hold_the_frames_is_refused(
    cells: pa.Array, said: str
) -> None:
    with pytest.raises(UserError, match=said) as refused:
        decode_image_column(cells, "raw", (16, 9))
    assert "re-run 'varnext ingest'" in str(refused.value)


def test_a_frame_of_a_clip_the_manifest_does_not_name_is_refused() -> None:
    from varnext_ray.dataset import _decode_batch

    image = encode_image(np.zeros((9, 16, 3), np.uint8), "raw")
    batch = pa.table(
        {
            "clip_id": ["a", "b", "zz"],
            "frame_index": pa.array([0, 0, 1], pa.int32()),
            "image": pa.array([image] * 3, pa.binary()),
        }
    )
    decoded = _decode_batch(batch.slice(0, 2), "raw", (16, 9), ["b", "a"])
    assert decoded["clip"].tolist() == [1, 0] and decoded["clip"].dtype == np.int32
    with pytest.raises(UserError, match=r"clip zz is not one of dataset\.json's clips"):
        _decode_batch(batch, "raw", (16, 9), ["b", "a"])
