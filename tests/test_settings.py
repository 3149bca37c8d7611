"""Training settings: the optimizer-step budget and what it makes of an epoch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from varnext_ray.errors import UserError
from varnext_ray.settings import TrainSettings


@pytest.mark.parametrize(
    ("steps", "epochs", "per_pass", "passes"),
    [
        (None, 10, 21, 1),  # no budget: one pass per epoch
        (2000, 10, 21, 10),  # 200 steps per epoch -> 10 passes of 21 = 210
        (2000, 10, 200, 1),
        (2000, 10, 201, 1),  # a pass longer than the epoch's share: still one whole pass
        (1500, 3, 6, 84),  # the demo on a small split: ceil(500 / 6)
        (1, 5, 1, 1),
    ],
)
def test_passes_per_epoch_round_the_budget_up_to_whole_passes(
    steps: int | None, epochs: int, per_pass: int, passes: int
) -> None:
    settings = TrainSettings(steps=steps, epochs=epochs)
    assert settings.passes_per_epoch(per_pass) == passes
    if steps is not None:  # what is done is at least the budget, less than one pass per epoch over
        done = epochs * passes * per_pass
        assert steps <= done < steps + epochs * per_pass or passes == 1


def test_a_budget_below_one_step_is_refused() -> None:
    with pytest.raises(UserError, match=r"--steps must be from 1 to 10,000,000 \(got 0\)") as info:
        TrainSettings(steps=0).check()
    assert info.value.where == "--steps"
    TrainSettings(steps=None).check()


def test_train_cli_budgets_2000_steps_by_default_and_passes_steps_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from tests.conftest import REPO
    from varnext_ray import cli_jobs, cluster
    from varnext_ray import train as train_module
    from varnext_ray.cli import main

    seen: list[TrainSettings] = []

    def fake_train(**kwargs: object) -> train_module.TrainOutcome:
        seen.append(kwargs["settings"])  # type: ignore[arg-type]
        return train_module.TrainOutcome("run", {"epoch": 1.0}, None, str(tmp_path))

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(cluster, "connect_ray", lambda address=None: None)
    monkeypatch.setattr(cli_jobs, "_preflight", lambda *args: None)
    argv = ["train", "--config", str(REPO / "configs" / "smoke_64x36.json"), "--data", "x"]
    argv += ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    assert main(argv) == 0
    assert main([*argv, "--steps", "300", "--epochs", "3"]) == 0
    assert main([*argv, "--steps", "0"]) == 0
    capsys.readouterr()
    assert [(s.steps, s.epochs) for s in seen] == [(2000, 10), (300, 3), (None, 10)]
    assert seen[0].objective == "extrap_psnr_motion"


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("a\nb", "holds '\\n'"),
        ("x" * 101, "longer than 100 characters (101)"),
    ],
)
def test_an_experiment_name_mlflow_would_refuse_after_ray_started_is_refused(
    name: str, said: str
) -> None:
    from varnext_ray.settings import check_experiment_name

    with pytest.raises(UserError, match=re.escape(said)):
        check_experiment_name(name)
    check_experiment_name("smoke sweep 2")  # spaces are fine in MLflow and here
