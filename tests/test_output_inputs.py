"""Outputs of predict and report that would destroy an input: refused with one line, exit 2.

An output inside the checkpoint being read (even with --overwrite, symlinks resolved), an output
that is a symlink (dangling or not), a report page not named .html, and out-of-range integers.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import smoke_checkpoint
from varnext_ray.checkpoint_load import load_checkpoint
from varnext_ray.cli import main
from varnext_ray.predict import MAX_STRIDE
from varnext_ray.synth import write_synthetic


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two PNG frames, a 12-frame mp4 and a checkpoint holding a background.png."""
    root = tmp_path_factory.mktemp("inputs")
    write_synthetic(root / "png", clips=1, frames=3, size=(64, 36), seed=3, fmt="png")
    write_synthetic(root / "mp4", clips=1, frames=12, size=(64, 36), seed=3, fmt="mp4")
    a, b = sorted((root / "png" / "clip_000").glob("*.png"))[:2]
    background = np.full((36, 64, 3), 90, np.uint8)
    return {
        "a": a,
        "b": b,
        "video": root / "mp4" / "clip_000.mp4",
        "ckpt": smoke_checkpoint(root, "ckc", 0, background=background),
    }


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (also shows a file added there)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _refused(argv: list[str | Path], capsys: pytest.CaptureFixture, match: str) -> str:
    """Runs the CLI; asserts exit 2 and exactly one stderr line, ``error: ...`` naming ``match``."""
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert match in lines[0], err
    return lines[0]


# ---- predict: never into the checkpoint it reads ------------------------------------------------


@pytest.mark.parametrize(
    ("out", "extra"),
    [
        ("background.png", ["--overwrite"]),  # a file of the checkpoint, replaced
        ("background.png", []),
        ("x.png", []),  # a new file inside the checkpoint
        ("sub/x.png", ["--overwrite"]),  # a new folder inside it
        ("roll.png", ["--steps", "2"]),  # rollout frames roll_k1.png, roll_k2.png there
    ],
)
def test_predict_refuses_outputs_inside_the_checkpoint(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture, out: str, extra: list[str]
) -> None:
    ckpt = inputs["ckpt"]
    before = _digests(ckpt)
    argv = ["predict", "--checkpoint", ckpt, "--out", ckpt / out, *extra, inputs["a"], inputs["b"]]
    _refused(argv, capsys, "inside the checkpoint it reads")
    assert _digests(ckpt) == before
    load_checkpoint(ckpt)  # still passes its own hash check


def test_predict_refuses_the_checkpoint_through_a_symlink(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    ckpt = inputs["ckpt"]
    alias = tmp_path / "alias"
    alias.symlink_to(ckpt, target_is_directory=True)
    before = _digests(ckpt)
    for argv in (
        ["--checkpoint", ckpt, "--out", alias / "background.png", "--overwrite"],
        ["--checkpoint", alias, "--out", ckpt / "background.png", "--overwrite"],
    ):
        _refused(["predict", *argv, inputs["a"], inputs["b"]], capsys, "inside the checkpoint")
    assert _digests(ckpt) == before


def test_predict_video_refuses_outputs_inside_the_checkpoint(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    ckpt = inputs["ckpt"]
    before = _digests(ckpt)
    argv = ["predict", "--checkpoint", ckpt, "--video", inputs["video"], "--out", ckpt / "v.mp4"]
    _refused(argv, capsys, "inside the checkpoint it reads")
    assert _digests(ckpt) == before


def test_predict_writes_beside_the_checkpoint(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    """A sibling whose name starts like the checkpoint's is not inside it."""
    ckpt = inputs["ckpt"]
    out = ckpt.parent / f"{ckpt.name}-pred" / "next.png"
    argv = ["predict", "--checkpoint", ckpt, "--out", out, inputs["a"], inputs["b"]]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert out.is_file()


# ---- symlinks as outputs ------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_predict_refuses_a_dangling_symlink(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture, tmp_path: Path, overwrite: list[str]
) -> None:
    link = tmp_path / "dpng.png"
    link.symlink_to(tmp_path / "nowhere.png")
    argv = ["predict", "--checkpoint", inputs["ckpt"], "--out", link, *overwrite]
    _refused([*argv, inputs["a"], inputs["b"]], capsys, "is a symlink")
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "nowhere.png")
    assert not (tmp_path / "nowhere.png").exists()


def test_predict_refuses_a_symlink_to_a_file_even_with_overwrite(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    target = tmp_path / "kept.png"
    target.write_bytes(b"keep me")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    argv = ["predict", "--checkpoint", inputs["ckpt"], "--out", link, "--overwrite"]
    _refused([*argv, inputs["a"], inputs["b"]], capsys, "is a symlink")
    assert link.is_symlink() and target.read_bytes() == b"keep me"


REPORT = ["report", "--experiment", "e"]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_report_refuses_a_dangling_symlink(
    capsys: pytest.CaptureFixture, tmp_path: Path, overwrite: list[str]
) -> None:
    link = tmp_path / "dangl.html"
    link.symlink_to(tmp_path / "nowhere.html")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _refused([*REPORT, "--tracking-uri", uri, "--out", link, *overwrite], capsys, "is a symlink")
    assert link.is_symlink() and not (tmp_path / "nowhere.html").exists()


# ---- report: an HTML page only ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dataset.json", "page", "report.html.bak"])
def test_report_refuses_an_out_that_is_not_html(
    capsys: pytest.CaptureFixture, tmp_path: Path, name: str
) -> None:
    manifest = tmp_path / name
    manifest.write_bytes(b'{"clips": []}\n')
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = [*REPORT, "--tracking-uri", uri, "--out", manifest, "--overwrite"]
    _refused(argv, capsys, "--out must name an HTML page")
    assert manifest.read_bytes() == b'{"clips": []}\n'


# ---- predict: integers in range -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "match"),
    [
        ("--stride", "99999999999999999999", f"--stride must be at most {MAX_STRIDE:,}"),
        ("--stride", str(MAX_STRIDE + 1), f"--stride must be at most {MAX_STRIDE:,}"),
        ("--stride", "-99999999999999999999", "must be >= 1"),
        ("--steps", "99999999999999999999", "the limit is 1000"),
    ],
)
def test_predict_video_bounds_integers(
    inputs: dict[str, Path],
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    flag: str,
    value: str,
    match: str,
) -> None:
    out = tmp_path / "v4.mp4"
    argv = ["predict", "--checkpoint", inputs["ckpt"], "--video", inputs["video"], "--out", out]
    _refused([*argv, flag, value], capsys, match)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stride", ["0", "2"])
def test_predict_refuses_stride_without_a_video(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture, tmp_path: Path, stride: str
) -> None:
    out = tmp_path / "next.png"
    argv = ["predict", "--checkpoint", inputs["ckpt"], "--out", out, inputs["a"], inputs["b"]]
    _refused([*argv, "--stride", stride], capsys, "--stride applies to --video only")
    assert list(tmp_path.iterdir()) == []


def test_predict_video_refuses_stride_zero(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    out = tmp_path / "v.mp4"
    argv = ["predict", "--checkpoint", inputs["ckpt"], "--video", inputs["video"], "--out", out]
    _refused([*argv, "--stride", "0"], capsys, "must be >= 1")
    assert list(tmp_path.iterdir()) == []
