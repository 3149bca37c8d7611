"""``varnext score``: a checkpoint's held-out scores and verdicts on a dataset of one's own.

The scores are those :func:`varnext_ray.scoring.score_checkpoint` gives the demo (tested with
it); here the command: its output, its JSON, and its inputs refused before Ray (those cases
pass ``--address 127.0.0.1:1``: reaching Ray would fail with another message).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import smoke_checkpoint
from varnext_ray.cli import main
from varnext_ray.demo import verdict
from varnext_ray.ingest import IngestOptions, ingest

CLOSED = ["--address", "127.0.0.1:1"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smoke_checkpoint(tmp_path_factory.mktemp("score"), "ckpt", 0)


@pytest.mark.cluster
def test_score_prints_each_strides_table_rows_and_verdict_and_its_json(
    ray_local, ckpt: Path, dataset_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["score", "--checkpoint", str(ckpt), "--data", str(dataset_dir), "--strides", "1", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "the checkpoint on held-out triplets" in out
    for stride in (1, 2):
        assert f"\nverdict at s={stride} (test split): " in out, out
    assert main([*argv, "1", "--json"]) == 0  # a stride given twice is scored once
    scored = json.loads(capsys.readouterr().out)
    assert list(scored) == ["1", "2"]
    for metrics in scored.values():
        assert metrics["split"] == "test" and metrics["triplets"] > 0
        assert metrics["verdict"] == verdict(metrics)
        assert isinstance(metrics["oracle_psnr"], float)


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], expect: str) -> None:
    assert main([*argv, *CLOSED]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], lines


def test_score_refuses_before_ray_what_cannot_be_scored(
    ckpt: Path,
    dataset_dir: Path,
    synth_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["score", "--checkpoint", str(ckpt), "--data", str(dataset_dir)]
    _refused([*base, "--strides", "0"], capsys, "--strides must be >= 1 (got 0)")
    _refused([*base, "--strides", "10000"], capsys, "no triplet at stride(s) 10000 in the test")
    _refused(
        ["score", "--checkpoint", str(dataset_dir), "--data", str(dataset_dir)],
        capsys,
        "checkpoint file is missing",
    )
    _refused(
        ["score", "--checkpoint", str(ckpt), "--data", str(ckpt)], capsys, "not a frame dataset"
    )
    small = tmp_path / "small"  # the same clips at another size than the checkpoint's input
    ingest([synth_dir], small, IngestOptions(size=(32, 18), val=0.2, test=0.2, seed=0))
    _refused(
        ["score", "--checkpoint", str(ckpt), "--data", str(small)],
        capsys,
        "the dataset's frames are 32x18 but the architecture reads 64x36",
    )
