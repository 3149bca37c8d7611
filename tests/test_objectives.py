"""The torch-free metric table: directions, and that the light commands stay light."""

from __future__ import annotations

import subprocess
import sys

import pytest

from varnext_ray.errors import UserError
from varnext_ray.objectives import OBJECTIVES, direction


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("extrap_psnr", "max"),
        ("best_extrap_psnr", "max"),
        ("val_loss", "min"),
        ("best_latent_linearity", "min"),
    ],
)
def test_direction_accepts_names_with_or_without_best_prefix(metric: str, expected: str) -> None:
    assert direction(metric) == expected


def test_unknown_metric_names_the_option_and_the_valid_names() -> None:
    with pytest.raises(UserError, match=r"unknown metric 'psnr'.*extrap_psnr") as info:
        direction("psnr", where="objective")
    assert info.value.where == "objective"


def test_every_direction_is_max_or_min() -> None:
    assert set(OBJECTIVES.values()) == {"max", "min"}


@pytest.mark.parametrize("module", ["varnext_ray.report", "varnext_ray.best"])
def test_report_and_best_import_without_torch(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in ('torch', 'torchmetrics', 'ray.train') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"
