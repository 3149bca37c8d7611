"""Tests of benchmarks/gpu_step.py: the FLOP counting against hand counts, and a --quick run.

The quick run is a child process (as a user runs it), on CPU unless CUDA is present; it compiles
the tiny model with torch.compile (2-9 s on 2 cores). No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.gpu_step import count_flops, peak_tflops

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_step.py"
DOCS = REPO / "docs" / "benchmarks.md"


def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.zero_grad(set_to_none=True)
    model(x).sum().backward()
    optimizer.step()


def test_linear_step_flops_match_the_hand_count() -> None:
    b, n_in, n_out = 3, 8, 5
    x = torch.rand(b, n_in, requires_grad=True)
    forward = 2 * b * n_in * n_out  # one multiply and one add per weight per sample
    # backward: the weight's gradient and the input's gradient, each as large as the forward
    assert count_flops(lambda: _train_step(nn.Linear(n_in, n_out), x)) == 3 * forward


def test_conv_step_flops_match_the_hand_count() -> None:
    b, c_in, c_out, k, h, w = 2, 3, 4, 3, 8, 6
    x = torch.rand(b, c_in, h, w)  # no gradient wanted for the input: only the weight's
    forward = 2 * b * c_out * h * w * c_in * k * k  # stride 1, padding 1: output (h, w)
    conv = nn.Conv2d(c_in, c_out, k, padding=1)
    assert count_flops(lambda: _train_step(conv, x)) == 2 * forward


@pytest.mark.parametrize(
    ("name", "bf16"),
    [
        ("NVIDIA H100 80GB HBM3", 989.5),
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA H200", 989.5),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A10G", 125.0),
        ("NVIDIA L4", 121.0),
    ],
)
def test_peak_lookup_by_device_name(name: str, bf16: float) -> None:
    peak = peak_tflops(name)
    assert peak is not None and peak["bf16"] == bf16 and peak["fp32"] < peak["tf32"] < bf16


def test_a_device_the_table_does_not_name_has_no_peak() -> None:
    assert peak_tflops("Acme Tensor Engine 9000") is None
    assert peak_tflops("") is None


def _gpu_section() -> str | None:
    """The page's ``## GPU step`` section as it stands, or None without one."""
    if not DOCS.exists():
        return None
    text = DOCS.read_text()
    start = text.find("## GPU step\n")
    if start < 0:
        return None
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and value > 0


@pytest.mark.slow
def test_quick_run_writes_results_and_no_docs(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    before = _gpu_section()
    args = ["--quick", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,  # 10-20 s measured on a 2-core machine shared with other jobs
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _gpu_section() == before  # --quick leaves docs/benchmarks.md alone

    report = json.loads(out.read_text())
    assert report["command"] == "python benchmarks/gpu_step.py " + " ".join(args)
    machine, device = report["machine"], report["device"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and machine["torch_threads"] >= 1
    assert {"torch"} <= machine["versions"].keys() and machine["python"]
    assert device["type"] in ("cpu", "cuda") and device["name"] == machine["device"]
    if device["type"] == "cpu":
        assert device["peak_tflops"] is None
    assert report["settings"]["quick"] is True and report["settings"]["docs"] is None

    rows = {r["variant"]: r for r in report["results"]}
    assert set(rows) == {"fp32", "bf16", "channels_last", "compile"}
    assert {r["config"] for r in rows.values()} == {"configs/smoke_64x36.json"}
    for name, row in rows.items():
        if "error" in row:  # a variant that cannot run here is recorded, not fatal
            assert isinstance(row["error"], str) and row["error"], name
            continue
        for key in ("frames_per_s", "steps_per_s", "achieved_tflops", "flops_per_step"):
            assert _positive(row[key]), (name, key, row[key])
        assert row["frames_per_s"] == pytest.approx(row["batch"] * row["steps_per_s"], rel=1e-3)
        assert row["blocks"] and row["blocks"][0]["cpu"]["wall_s"] > 0
        assert (row["compile_seconds"] is not None) == row["compile"]
    fp32, channels_last = rows["fp32"], rows["channels_last"]
    assert "error" not in fp32 and "error" not in channels_last
    assert fp32["ratio_vs_fp32"] == 1.0
    assert fp32["flops_per_step"] == channels_last["flops_per_step"]  # the same math
    assert {r["flops_per_step"] for r in rows.values() if "flops_per_step" in r} == {
        fp32["flops_per_step"]
    }
    assert "| configs/smoke_64x36.json |" in proc.stdout  # the section is printed


@pytest.mark.slow
def test_a_failing_compile_is_recorded_not_fatal(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    env = os.environ | {"CXX": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    args = ["--quick", "--device", "cpu", "--variants", "fp32", "compile", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert "C++ compiler" in rows["compile"]["error"] and "error" not in rows["fp32"]
    assert "| compile | 4 | error: " in proc.stdout  # the table says so too
