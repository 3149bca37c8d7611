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
    assert "latent" not in arch  # a point with latent_dim is flat (the shorthand)
    assert short_arch(arch) == "conv 16-8 k3s2 | lin [] | z32 nearest"


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
    ({"beta": {"low": 1, "high": 1e9, "log": True}}, r"beta: must be <= 1,000,000.0 \(got 1,000,"),
    (
        {"latent_kind": ["round"]},
        r"latent_kind\[0\]: must be 'flat' or 'spatial' \(got \"round\"\)",
    ),
    ({"latent_kind": []}, r"latent_kind: must list at least one choice"),
    ({"upsample": ["cubic"]}, r"upsample\[0\]: must be 'transpose', 'nearest' or 'bilinear'"),
    ({"reconstruction": ["huber"]}, r'reconstruction: each choice must be one of "bce", "calib'),
    ({"latent_channels": {"low": 4, "high": 2}}, r"latent_channels: low must be <= high"),
    (
        {"latent_dim": [8], "latent_channels": [4]},
        r"latent_kind: must be given when both latent_dim \(flat\) and latent_channels",
    ),
    (
        {"latent_kind": ["spatial", "flat"]},  # the smoke base is spatial: flat needs a size
        r'latent_kind: samples "flat" latents but the space has no latent_dim',
    ),
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


def test_space_samples_spatial_and_flat_latents_upsampling_and_reconstruction() -> None:
    space, base = load_space(REPO / "search_spaces" / "small_cpu.json")
    assert base["latent"]["kind"] == "spatial"  # the base favours the recipe of issue #15
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    define, seen = DefineByRun(space, base), set()
    for _ in range(16):
        trial = study.ask()
        define(trial)
        p = trial.params
        arch = parse_arch(point_to_arch(base, p), "sample")
        assert arch.latent.kind == p["latent_kind"]
        if p["latent_kind"] == "spatial":  # conditional: channels, never latent_dim or linear
            assert "latent_dim" not in p and arch.latent.channels == p["latent_channels"]
            assert arch.encoder.linear == ()
        else:
            assert "latent_channels" not in p and arch.latent_dim == p["latent_dim"]
        assert arch.loss.reconstruction == p["reconstruction"]
        assert short_arch(point_to_arch(base, p)).endswith(
            "" if p["upsample"] == "transpose" else p["upsample"]
        )
        seen |= {p["latent_kind"], p["upsample"], p["reconstruction"]}
        study.tell(trial, 0.0)
    assert {"spatial", "flat", "nearest", "transpose", "calibrated", "mse"} <= seen


def test_spatial_point_to_arch() -> None:
    _, base = load_space(REPO / "search_spaces" / "small_cpu.json")
    point = {"latent_kind": "spatial", "latent_channels": 8, "linear": "[128]"}
    point |= {"upsample": "bilinear", "reconstruction": "mse"}
    arch = point_to_arch(base, point)
    assert arch["latent"] == {"kind": "spatial", "channels": 8, "project_kernel_size": 1}
    assert arch["latent_dim"] == 8 * 5 * 10  # element count, for the sweep's tables
    assert arch["encoder"]["linear"] == []  # a spatial latent has no linear layers
    assert arch["decoder"] == {"mirror": True, "upsample": "bilinear"}
    assert arch["loss"]["reconstruction"] == "mse"
    cfg = parse_arch(arch, "point")
    assert (
        cfg.latent_dim == 400
        and short_arch(cfg) == "conv 16-32-64-64 k4s2 | lin [] | z8ch bilinear"
    )
    flat = point_to_arch(base, {"latent_kind": "flat", "latent_dim": 16, "upsample": "transpose"})
    assert flat["latent_dim"] == 16 and "latent" not in flat and flat["decoder"] == "mirror"


def test_a_space_whose_every_point_is_invalid_is_refused_when_loaded(tmp_path: Path) -> None:
    """Group norm in 8 groups over channels drawn from 4..6, which 8 never divides: every trial
    failed after Ray started (87 lines, exit 1, no error line). A space with some valid
    points is taken: an invalid point fails only its own trial."""
    import json

    base = json.loads((REPO / "configs" / "smoke_64x36.json").read_text())
    for layer in base["encoder"]["conv"]:
        layer["norm"], layer["groups"] = "group", 8
    (tmp_path / "base.json").write_text(json.dumps(base))

    def space(channels: list[int]) -> Path:
        path = tmp_path / f"space_{channels[0]}_{channels[1]}.json"
        data = {"name": "gn", "base": "base.json", "encoder": {"channels": channels}}
        path.write_text(json.dumps(data))
        return path

    with pytest.raises(UserError) as refused:
        load_space(space([4, 6]))
    assert refused.value.what.startswith("none of 64 points drawn from the space is a valid ")
    assert "must divide out_channels" in refused.value.what
    load_space(space([4, 16]))  # some points (16 channels everywhere) are valid: taken


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ({"linear": [[128]]}, "linear: never sampled: it shapes a flat latent"),
        ({"latent_kind": ["spatial"], "latent_dim": [8, 16]}, "latent_dim: never sampled"),
    ],
)
def test_a_setting_no_point_of_the_space_uses_is_refused(
    tmp_path: Path, extra: dict, said: str
) -> None:
    """``linear`` over a spatial base was accepted and never sampled: the sweep searched less
    than the space said, without a word."""
    space = {"name": "unused", "base": str(REPO / "configs" / "smoke_64x36.json"), **extra}
    (tmp_path / "space.json").write_text(json.dumps(space))
    with pytest.raises(UserError, match=said):
        load_space(tmp_path / "space.json")
    space["latent_kind"] = ["flat", "spatial"]  # some points are flat: used
    space.setdefault("latent_dim", [8])
    (tmp_path / "space.json").write_text(json.dumps(space))
    load_space(tmp_path / "space.json")
