"""Search spaces: every shipped space validates and samples valid architectures; bad spaces
are refused with the field that is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO
from varnext_ray.arch import count_params, parse_arch
from varnext_ray.errors import UserError
from varnext_ray.search_space import DefineByRun, load_space, point_to_arch, short_arch

SPACES = sorted((REPO / "search_spaces").glob("*.json"))


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_shipped_space_samples_valid_architectures(path: Path) -> None:
    space, base = load_space(path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    define = DefineByRun(space, base)
    for _ in range(12):
        trial = study.ask()
        define(trial)
        arch = parse_arch(point_to_arch(base, trial.params), f"{path.name} sample")
        assert len(arch.encoder.conv) == trial.params.get("depth", len(base["encoder"]["conv"]))
        assert count_params(arch) > 0
        study.tell(trial, 0.0)


def test_channels_are_conditional_on_depth() -> None:
    _, base = load_space(REPO / "search_spaces" / "smoke.json")
    point = {"depth": 2, "channels_0": 16, "channels_1": 8, "latent_dim": 32, "beta": 0.5}
    point["linearity_weight"] = 3.0
    arch = point_to_arch(base, point)
    assert [c["out_channels"] for c in arch["encoder"]["conv"]] == [16, 8]
    assert arch["latent_dim"] == 32 and arch["loss"]["beta"] == 0.5
    assert arch["loss"]["linearity_weight"] == 3.0
    assert short_arch(arch) == "conv 16-8 k3s2 | lin [] | z32"


BAD = [
    ({"latent_dim": []}, r"latent_dim: must list at least one choice"),
    ({"encoder": {"channels": []}}, r"encoder.channels: must list at least one choice"),
    ({"lr": {"low": 0.1, "high": 0.01}}, r"lr: low must be <= high \(got low=0.1, high=0.01\)"),
    ({"lr": {"low": 0.0, "high": 0.01, "log": True}}, r"lr: a log range needs low > 0"),
    ({"encoder": {"depth": {"low": 5, "high": 2}}}, r"encoder.depth: low must be <= high"),
    ({"objective": "accuracy"}, r"objective: unknown objective metric \"accuracy\"; use one of"),
    ({"laten_dim": [8]}, r'laten_dim: unknown key \(did you mean "latent_dim"\?\)'),
    ({"batch_size": "32"}, r"batch_size: must be a list"),
    ({"epochs": 0}, r"epochs: must be >= 1"),
]


@pytest.mark.parametrize(("patch", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_space_is_refused(tmp_path: Path, patch: dict, message: str) -> None:
    data = {"name": "x", "base": str(REPO / "configs" / "smoke_64x36.json")} | patch
    (tmp_path / "space.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=message):
        load_space(tmp_path / "space.json")


def test_space_json_errors_name_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "space.json").write_text('{"name": "x",\n "base": }')
    with pytest.raises(UserError, match=r"invalid JSON: .* at line 2 column 10"):
        load_space(tmp_path / "space.json")
