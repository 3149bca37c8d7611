"""``varnext demo`` without the sweep: its data, its strip, its report and its options.

A whole demo (a 2-trial sweep) takes minutes; the sweep it runs is the one tests/test_sweep.py
covers, so these tests check everything the demo adds around it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import smoke_checkpoint
from varnext_ray import demo
from varnext_ray.cli import main
from varnext_ray.demo_workdir import check_workdir
from varnext_ray.errors import UserError
from varnext_ray.manifest import load_manifest


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
        assert image.size == (9 * 64, 4 * 36)  # 9 tiles per row, one row per triplet
        assert np.asarray(image).std() > 0
        assert (np.asarray(image)[:36, 7 * 64 : 8 * 64] == 0).all()  # no background: black


def test_strip_draws_the_checkpoints_background(workdir: Path, tmp_path: Path) -> None:
    from varnext_ray.background import training_background

    bg = training_background(workdir / "dataset")
    ckpt = smoke_checkpoint(tmp_path, "ckpt", 0, background=bg)
    out = demo.write_test_strip(ckpt, workdir / "dataset", tmp_path / "strip.png")
    with Image.open(out) as image:
        np.testing.assert_array_equal(np.asarray(image)[36:72, 7 * 64 : 8 * 64], bg)


@pytest.mark.parametrize(("extrap", "verdict"), [(30.0, "beats"), (20.0, "does not beat")])
def test_report_says_whether_the_line_beats_copy_last(
    extrap: float, verdict: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    metrics = {"extrap_psnr": extrap, "copy_last_psnr": 25.0, "extrap_skill": 0.1, "x": 1.0}
    held_out = {
        "1": LEARNED | {"split": "test", "triplets": 90},
        "3": {"split": "test", "triplets": 80, "extrap_psnr": 21.5},
    }
    uri = "sqlite:///m.db"
    demo.print_report(metrics, held_out, tmp_path, tmp_path / "best", tmp_path / "s.png", uri)
    out = capsys.readouterr().out
    assert f"latent straight line {verdict} repeating the last frame" in out
    assert f"  {'extrap_psnr':<24} {extrap:10.4f} dB" in out and "extrap_skill" in out
    assert "\n  x " not in out  # only the metrics the demo explains
    assert "\nverdict at s=1 (test split): the model learned the scene" in out
    assert "\nverdict at s=3 (test split): NOT ANSWERED" in out  # no background, no answer
    row = next(line for line in out.splitlines() if line.startswith("   3  test"))
    assert row.split()[4:] == ["21.50", "-", "-", "-", "-"]
    assert "mlflow ui --backend-store-uri sqlite:///m.db" in out


def test_a_demo_stopped_in_its_data_is_recognised_and_continued(workdir: Path) -> None:
    # its real synth/synth.json marks the folder as a demo's; a sweep began there: refused
    # (tests/test_demo_inputs.py runs these through the CLI, with made-up folders)
    uri = check_workdir(workdir, demo.DEMO_SYNTH)  # every output checked, nothing refused
    assert uri == f"sqlite:///{workdir / 'mlflow.db'}" and not (workdir / "mlflow.db").exists()
    (workdir / "ray").mkdir()
    try:
        with pytest.raises(UserError, match="a demo that was stopped before it ended"):
            demo.run_demo(workdir)
    finally:
        (workdir / "ray").rmdir()


def test_cli_passes_its_options_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake(workdir: Path, **kwargs: Any) -> int:
        seen.update(kwargs, workdir=workdir)
        return 0

    monkeypatch.setattr(demo, "run_demo", fake)
    argv = ["demo", "--workdir", str(tmp_path), "--samples", "3", "--epochs", "1"]
    assert main([*argv, "--steps", "100"]) == 0
    assert seen == {"workdir": tmp_path, "samples": 3, "epochs": 1, "steps": 100, "address": None}
    assert main(["demo"]) == 0
    defaults = {"samples": demo.SAMPLES, "epochs": demo.EPOCHS, "steps": demo.STEPS}
    assert seen == {"workdir": Path("runs/demo"), "address": None} | defaults
    assert defaults == {"samples": 2, "epochs": 3, "steps": 2400}


LEARNED = {  # measured on the demo data at 2000 steps (docs/training.md)
    "oracle_psnr": 25.3,
    "background_psnr": 21.7,
    "active_units": 138.0,
    "latent_elements": 160.0,
    "oracle_psnr_motion": 19.96,
    "latent_copy_psnr_motion": 19.29,
}


@pytest.mark.parametrize(
    ("changes", "starts", "words"),
    [
        (
            {"extrap_gain_db_motion": 0.46, "motion_captured": 0.68},
            "the model learned the scene (oracle 25.30 dB vs background 21.70 dB, 138 of 160",
            "YES: in the moving regions the latent straight line beats the model's own "
            "'nothing moves' (decode of z2) by +0.46 dB; it recovers 68% of what the oracle",
        ),
        (
            {"extrap_gain_db_motion": -0.3, "motion_captured": -0.45},
            "the model learned",
            "NO: in the moving regions the latent straight line is worse than the model's own "
            "'nothing moves' (decode of z2) by -0.30 dB; it recovers -45%",
        ),
        (
            {"extrap_gain_db_motion": 0.01},
            "the model learned",
            "NO: in the moving regions the latent straight line is no better than the model's "
            "own 'nothing moves' (decode of z2): +0.01 dB.",
        ),
        (
            {"oracle_psnr": 22.0, "extrap_gain_db_motion": 0.5},
            "NOT ANSWERED: the model collapsed to the background. Its decoding of the true latent "
            "(oracle 22.00 dB) is within 1 dB of the median background (21.70 dB)",
            "train longer or with a spatial latent",
        ),
        ({"active_units": 1.0}, "NOT ANSWERED", "(1 of 160)"),
        ({}, "the model learned", "No validation frame moved"),
        ({"background_psnr": math.nan}, "NOT ANSWERED: the run did not record", "again"),
    ],
)
def test_verdict_in_plain_words(changes: dict[str, float], starts: str, words: str) -> None:
    text = demo.verdict(LEARNED | changes)
    assert text.startswith(starts) and words in text, text


@pytest.mark.parametrize(
    ("flag", "value"), [("--samples", "0"), ("--epochs", "0"), ("--steps", "0")]
)
def test_bad_demo_options_are_refused_before_anything_is_written(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from varnext_ray.cli import main

    work = tmp_path / "demo"
    assert main(["demo", "--workdir", str(work), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "must be" in err[0], err
    assert not work.exists()
