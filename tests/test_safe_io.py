"""The shared readers and writers (varnext_ray.safe_io) and the edges that use them: atomic
writes, staged folders, image modes, repeated sources, size bounds and checkpoint headers."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.bad_inputs_data import SMOKE_DATA
from varnext_ray import output_checks, safe_io
from varnext_ray.atomic_write import staged_dir, write_atomic
from varnext_ray.errors import UserError, escape
from varnext_ray.image_read import read_image, to_rgb
from varnext_ray.safe_io import read_json
from varnext_ray.sources import discover_sources


@pytest.fixture
def smoke(tmp_path: Path) -> Path:
    """SMOKE_DATA as a file."""
    (tmp_path / "smoke.json").write_text(json.dumps(SMOKE_DATA))
    return tmp_path / "smoke.json"


# ---- errors -----------------------------------------------------------------------------------


def test_user_error_is_always_one_line() -> None:
    err = UserError("bad\nerror: forged", "a\r\nb\x1b[2K\u202e", "fix\tit")
    assert "\n" not in str(err) and "\r" not in str(err) and "\x1b" not in str(err)
    assert "bad\\nerror: forged" in str(err) and "\\x1b[2K" in str(err)
    assert escape("plain é ü") == "plain é ü"


# ---- reading ----------------------------------------------------------------------------------


def test_read_json_refuses_what_is_not_a_small_regular_json_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big.json").write_bytes(b"[" + b" " * 2048 + b"]")
    (tmp_path / "nan.json").write_text('{"a": NaN}')
    for path, message in [
        (tmp_path / "fifo", "named pipe"),
        (tmp_path, "a directory"),
        (tmp_path / "missing.json", "not found"),
        (tmp_path / "big.json", "larger than the 1 KiB limit"),
        (tmp_path / "nan.json", "NaN is not valid JSON"),
    ]:
        with pytest.raises(UserError, match=message):
            read_json(path, limit=1024)
    assert read_json(tmp_path / "nan.json", allow_nan=True)["a"] != 0  # NaN, for validators


# ---- writing ----------------------------------------------------------------------------------


def test_write_atomic_replaces_whole_or_refuses(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    with pytest.raises(UserError, match="output already exists"):
        write_atomic(target, b"three", overwrite=False)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left
    target.chmod(0o640)
    write_atomic(target, b"four")  # a replaced file keeps its mode
    assert target.stat().st_mode & 0o777 == 0o640 and target.read_bytes() == b"four"
    with pytest.raises(ValueError):
        safe_io.json_bytes({"x": math.nan})  # NaN is never written


def test_staged_dir_appears_complete_or_not_at_all(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), staged_dir(tmp_path / "a" / "b" / "ds", "--out") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("crash midway")
    assert list(tmp_path.iterdir()) == []  # nor the parent folders it created
    (tmp_path / "empty").mkdir()
    with staged_dir(tmp_path / "empty", "--out") as tmp:
        (tmp / "done").write_text("x")
    assert (tmp_path / "empty" / "done").read_text() == "x"
    with pytest.raises(UserError, match="not empty"), staged_dir(tmp_path / "empty", "--out"):
        pass


def test_an_empty_out_folder_keeps_its_mode_owner_and_group(tmp_path: Path) -> None:
    """The staging folder was renamed over the user's empty folder as it was made: a private
    ``mkdir -m 700`` output came out 755, a set-group-ID one lost its group and mode."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with staged_dir(private, "--out") as tmp:
        (tmp / "sub").mkdir()
    assert private.stat().st_mode & 0o7777 == 0o700 and (private / "sub").is_dir()
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)  # filled all the same, then read-only again
    with staged_dir(read_only, "--out") as tmp:
        (tmp / "done").write_text("x")
    assert read_only.stat().st_mode & 0o7777 == 0o555 and (read_only / "done").exists()
    mine = [g for g in os.getgroups() if g != os.getegid()]
    other_gid = 1 if os.geteuid() == 0 else next(iter(mine), None)  # root may give any group
    if other_gid is None:
        pytest.skip("the group part needs root or a second group of this process's")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, -1, other_gid)
    shared.chmod(0o2770)  # after chown, which may clear set-group-ID
    with staged_dir(shared, "--out") as tmp:
        (tmp / "inside").write_text("x")
    assert shared.stat().st_mode & 0o7777 == 0o2770 and shared.stat().st_gid == other_gid
    assert (shared / "inside").stat().st_gid == other_gid  # what it holds takes the group on
    file = tmp_path / "f.png"
    file.write_bytes(b"old")
    os.chown(file, -1, other_gid)
    write_atomic(file, b"new")  # a replaced file keeps its group too
    assert file.stat().st_gid == other_gid and file.read_bytes() == b"new"


# ---- images and sources -----------------------------------------------------------------------


def test_16_bit_and_other_modes_become_proper_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(tmp_path / "g16.png")
    assert read_image(tmp_path / "g16.png")[0, :, 0].tolist() == [0, 128, 255]  # not clipped
    assert to_rgb(Image.new("LA", (2, 1), (200, 10)))[0, 0].tolist() == [200, 200, 200]
    assert to_rgb(Image.new("CMYK", (2, 1), (0, 255, 255, 0)))[0, 0].tolist() == [255, 0, 0]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 255] * 256)
    assert to_rgb(palette)[0, 0].tolist() == [0, 0, 255]
    assert to_rgb(Image.new("F", (1, 1), 0.5))[0, 0].tolist() == [128] * 3


def test_a_folder_reached_twice_is_read_once(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (8, 8)).save(frames / "f_1.png")
    (frames / "loop").symlink_to(frames)
    (tmp_path / "alias").symlink_to(frames)
    sources, ignored = discover_sources([frames, tmp_path / "alias", frames / "f_1.png"])
    assert [s.path for s in sources] == [frames]
    assert len(ignored) == 3


def test_an_existing_empty_out_folder_is_filled(tmp_path: Path, synth_dir: Path) -> None:
    from varnext_ray.ingest import IngestOptions, ingest

    (tmp_path / "ds").mkdir()
    ingest([synth_dir / "clip_000.mp4"], tmp_path / "ds", IngestOptions(size=(32, 18)))
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert manifest["frames"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


# ---- size bounds and checkpoint headers -------------------------------------------------------


def test_size_bounds_have_a_keyword_and_a_setting(
    monkeypatch: pytest.MonkeyPatch, smoke: Path
) -> None:
    from varnext_ray.arch import load_arch, parse_arch

    data = SMOKE_DATA | {"latent_dim": 100_000}
    with pytest.raises(UserError, match=r"over the limit of 1,000,000"):
        parse_arch(data, "big", max_params=1_000_000)
    assert parse_arch(data, "big", max_params=math.inf).latent_dim == 100_000
    monkeypatch.setenv("VARNEXT_MAX_PARAMS", "1000")
    with pytest.raises(UserError, match="over the limit of 1,000"):
        load_arch(smoke)
    assert load_arch(smoke, max_params=10**6).latent_dim == 8


def test_a_checkpoint_is_checked_against_its_header_before_the_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smoke: Path
) -> None:
    import varnext_ray.checkpoint_load as checkpoint_load_module
    from varnext_ray.arch import load_arch
    from varnext_ray.checkpoint import save_checkpoint
    from varnext_ray.checkpoint_load import load_checkpoint
    from varnext_ray.model import build_vae

    cfg = load_arch(smoke)
    path = save_checkpoint(
        tmp_path / "ckpt", model=build_vae(cfg), arch_cfg=cfg, epoch=1, metrics={}
    )
    arch = json.loads((path / "arch.json").read_text())
    arch["encoder"]["conv"][0]["out_channels"] = 5000
    data = json.dumps(arch).encode()
    (path / "arch.json").write_bytes(data)
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["arch.json"] = hashlib.sha256(data).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))
    built: list[int] = []
    real_build = checkpoint_load_module.build_vae

    def spy(cfg):  # type: ignore[no-untyped-def]
        built.append(cfg.encoder.conv[0].out_channels)
        return real_build(cfg)

    monkeypatch.setattr(checkpoint_load_module, "build_vae", spy)
    with pytest.raises(UserError, match=r"weights do not match arch\.json: size mismatch"):
        load_checkpoint(path)
    assert built == [5000]  # only the allocation-free build on the meta device
    shutil.rmtree(path)


def test_saving_a_checkpoint_never_replaces_a_file_or_writes_under_one(
    tmp_path: Path, smoke: Path
) -> None:
    from varnext_ray.arch import load_arch
    from varnext_ray.checkpoint import save_checkpoint
    from varnext_ray.model import build_vae

    cfg = load_arch(smoke)
    (tmp_path / "plain").write_text("mine")
    for target, message in [
        (tmp_path / "plain", "path exists and is a file"),
        (tmp_path / "plain" / "ckpt", "is a file, not a folder"),
    ]:
        with pytest.raises(UserError, match=message):
            save_checkpoint(target, model=build_vae(cfg), arch_cfg=cfg, epoch=1, metrics={})
    assert (tmp_path / "plain").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "smoke.json"]


def test_16_bit_frames_are_ingested_scaled_not_clipped(tmp_path: Path) -> None:
    from varnext_ray.frame_codec import decode_images
    from varnext_ray.ingest import IngestOptions, ingest
    from varnext_ray.manifest import load_manifest

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        level = np.full((18, 32), 32768 + i, np.uint16)  # mid-grey in 16 bits
        Image.fromarray(level).save(frames / f"frame_{i}.png")
    ingest([frames], tmp_path / "ds", IngestOptions(size=(32, 18), val=0, test=0))
    manifest = load_manifest(tmp_path / "ds")
    import pyarrow.parquet as pq

    blobs = pq.read_table(manifest.files("train")[0]).column("image").to_pylist()
    pixels = decode_images(blobs, manifest.encoding, manifest.size)
    assert pixels.shape == (3, 18, 32, 3) and int(pixels.mean()) == 128  # not 255


def test_one_odd_frame_in_a_folder_is_skipped_not_fatal(tmp_path: Path) -> None:
    from varnext_ray.ingest import IngestOptions, ingest

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        Image.new("RGB", (64, 36), (i * 9, 0, 0)).save(frames / f"f_{i}.png")
    Image.new("RGB", (2, 2)).save(frames / "f_3.png")  # a thumbnail among the frames
    manifest = ingest([frames], tmp_path / "ds", IngestOptions(size=(64, 36), val=0, test=0))
    assert manifest["frames"] == 5 and manifest["skipped"][0]["path"].endswith("f_3.png")
    assert len(manifest["clips"]) == 2  # cut where the odd frame was


def test_resume_refuses_storage_other_users_can_write(tmp_path: Path) -> None:
    from varnext_ray.storage_checks import check_trusted_storage

    storage = tmp_path / "ray"
    sweep = storage / "sweep-demo-smoke"
    sweep.mkdir(parents=True)
    for folder in (tmp_path, storage, sweep):
        folder.chmod(0o755)
    check_trusted_storage(str(sweep))  # only we can write: fine
    storage.chmod(0o777)  # anyone could plant a pickle in the sweep's state
    with pytest.raises(
        UserError, match=r"pickled state.*other users\s+can write|other users can write"
    ):
        check_trusted_storage(str(sweep))
    storage.chmod(0o1777)  # sticky, as /tmp: others cannot replace our folder
    check_trusted_storage(str(sweep))
    check_trusted_storage("s3://bucket/ray/sweep")  # remote storage: its policy decides


@pytest.mark.parametrize("spelling", [".", "sub/..", ""])
def test_a_staged_output_is_never_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    # renamed into place, the new folder would replace the shell's (empty) working directory
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with (
        pytest.raises(UserError, match="--out is the current folder"),
        staged_dir(spelling, "--out"),
    ):
        pass
    assert here.is_dir() and list(tmp_path.iterdir()) == [here]


def test_a_dangling_or_looping_storage_link_is_called_so(tmp_path: Path) -> None:
    """It read "... is not a regular file, not a folder"."""
    from varnext_ray.errors import UserError
    from varnext_ray.storage_checks import check_storage_writable

    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for link in ("dangling", "a"):
        with pytest.raises(UserError, match=r"is a symlink to nothing \(dangling, or a loop\)"):
            check_storage_writable(tmp_path / link)


def test_what_blocks_a_path_is_named_by_its_kind(tmp_path: Path) -> None:
    """A FIFO where a split folder should be read "a parent of this path is a file"; an output
    folder given as a symlink to a file hinted "pass the folder it points to (.../x.mp4)"."""
    os.mkfifo(tmp_path / "val")
    with pytest.raises(UserError, match=r"split: .*/val is a named pipe \(FIFO\), not a folder"):
        safe_io.path_stat(tmp_path / "val" / "part-0.parquet", "split", "re-run ingest")
    (tmp_path / "clip.mp4").write_bytes(b"mine")
    (tmp_path / "ds").symlink_to(tmp_path / "clip.mp4")
    with pytest.raises(UserError) as refused:
        output_checks.check_new_dir(tmp_path / "ds", "--out")
    assert refused.value.what == "output already exists (a file, through a symlink)"
    assert refused.value.fix == "choose a new --out (existing data is never overwritten)"
    assert (tmp_path / "clip.mp4").read_bytes() == b"mine"
