"""``varnext demo`` without the sweep: its data, its strip, its report and its options.

A whole demo (a 4-trial sweep) takes minutes; the sweep it runs is the one tests/test_sweep.py
covers, so these tests check everything the demo adds around it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import smoke_checkpoint
from varnext_ray import demo
from varnext_ray.cli import main
from varnext_ray.dataset import load_manifest
from varnext_ray.errors import UserError


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    demo.prepare_data(root)
    return root


def test_data_has_every_split_at_the_smoke_size(workdir: Path) -> None:
    manifest = load_manifest(workdir / "dataset")
    assert manifest.size == (64, 36)  # the smoke architecture's input
    splits = manifest.data["splits"]
    assert all(splits[name] > 0 for name in ("train", "val", "test")), splits
    assert sum(splits.values()) == manifest.data["frames"]


def test_prepared_data_is_reused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    before = (workdir / "dataset" / "dataset.json").stat().st_mtime_ns
    assert demo.prepare_data(workdir) == workdir / "dataset"
    assert capsys.readouterr().out == ""  # neither synth nor ingest ran again
    assert (workdir / "dataset" / "dataset.json").stat().st_mtime_ns == before


def test_strip_shows_four_test_triplets(workdir: Path, tmp_path: Path) -> None:
    ckpt = smoke_checkpoint(tmp_path, "ckpt", 0)
    out = demo.write_test_strip(ckpt, workdir / "dataset", tmp_path / "strip.png")
    with Image.open(out) as image:
        assert image.size == (7 * 64, 4 * 36)  # 7 tiles per row, one row per triplet
        assert np.asarray(image).std() > 0


@pytest.mark.parametrize(("extrap", "verdict"), [(30.0, "beats"), (20.0, "does not beat")])
def test_report_says_whether_the_line_beats_copy_last(
    extrap: float, verdict: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    metrics = {"extrap_psnr": extrap, "copy_last_psnr": 25.0, "extrap_skill": 0.1, "x": 1.0}
    demo.print_report(metrics, tmp_path, tmp_path / "best", tmp_path / "s.png", "sqlite:///m.db")
    out = capsys.readouterr().out
    assert f"latent straight line {verdict} repeating the last frame" in out
    assert f"  {'extrap_psnr':<24} {extrap:10.4f} dB" in out and "extrap_skill" in out
    assert "x " not in out  # only the metrics the demo explains
    assert "mlflow ui --backend-store-uri sqlite:///m.db" in out


def test_a_workdir_that_already_ran_is_refused_before_ray(tmp_path: Path) -> None:
    (tmp_path / "ray").mkdir()
    with pytest.raises(UserError, match="a demo already ran in this work directory"):
        demo.run_demo(tmp_path)


def test_cli_passes_its_options_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake(workdir: Path, **kwargs: Any) -> int:
        seen.update(kwargs, workdir=workdir)
        return 0

    monkeypatch.setattr(demo, "run_demo", fake)
    argv = ["demo", "--workdir", str(tmp_path), "--samples", "2", "--epochs", "1"]
    assert main(argv) == 0
    assert seen == {"workdir": tmp_path, "samples": 2, "epochs": 1, "address": None}
    assert main(["demo"]) == 0
    assert seen == {"workdir": Path("runs/demo"), "samples": 4, "epochs": 3, "address": None}
