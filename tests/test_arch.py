"""Architecture files: shipped configs, random valid ones, every kind of bad one, and the CLI."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from arch_strategies import arch_dicts
from hypothesis import given, settings

from varnext_ray.arch import (
    check_report,
    count_params,
    format_table,
    layer_table,
    load_arch,
    parse_arch,
    resolve_decoder,
)
from varnext_ray.cli import main
from varnext_ray.errors import UserError

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.json"))
SMOKE = REPO / "configs" / "smoke_64x36.json"


def _smoke() -> dict[str, Any]:
    return json.loads(SMOKE.read_text())


def test_configs_are_shipped() -> None:
    names = {p.name for p in CONFIGS}
    assert {"seed_640x360.json", "small_160x90.json", "smoke_64x36.json"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_checks_and_round_trips(path: Path) -> None:
    cfg = load_arch(path)
    report = check_report(cfg)
    assert report["output_shape"] == report["input_shape"] == list(cfg.input.shape)
    assert parse_arch(cfg.to_dict(), "round trip") == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()  # plain JSON


def test_shipped_config_sizes() -> None:
    params = {p.stem: count_params(load_arch(p)) for p in CONFIGS}
    assert 1_000_000 <= params["seed_640x360"] < 100_000_000
    assert params["small_160x90"] < 1_000_000
    assert 1_000 <= params["smoke_64x36"] < 100_000


@settings(max_examples=40, deadline=None)
@given(arch_dicts())
def test_random_architectures_round_trip_and_land_on_input(data: dict[str, Any]) -> None:
    cfg = parse_arch(data, "hypothesis")
    assert parse_arch(cfg.to_dict(), "round trip") == cfg
    assert check_report(cfg)["output_shape"] == list(cfg.input.shape)
    # The resolved mirror, written out as an explicit decoder, is the same network.
    explicit = {**cfg.to_dict(), "decoder": resolve_decoder(cfg).model_dump(mode="json")}
    cfg2 = parse_arch(explicit, "explicit")
    assert cfg2.decoder != "mirror"
    assert [r.shape for r in layer_table(cfg2)] == [r.shape for r in layer_table(cfg)]
    assert count_params(cfg2) == count_params(cfg)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting ``a.b[2].c`` to ``value`` (None as value deletes the key)."""

    def mutate(data: dict[str, Any]) -> None:
        parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
        node = data
        for part in parts[:-1]:
            node = node[part]
        if value is _DELETE:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value

    return mutate


_DELETE = object()


def _shrink(data: dict[str, Any]) -> None:
    """8x64 through three 3x3 stride-2 unpadded convs: 8 -> 3 -> 1 -> nothing."""
    data["input"]["height"] = 8
    for layer in data["encoder"]["conv"]:
        layer["padding"] = 0


_EXPLICIT_WRONG = {
    "conv_transpose": [{"out_channels": 3, "kernel_size": 4, "stride": 2, "padding": 1}]
}

BAD = [
    ("typo_key", _set("laten_dim", 8), 'laten_dim: unknown key (did you mean "latent_dim"?)'),
    (
        "nested_typo",
        _set("encoder.conv[0].kernal_size", 3),
        'encoder.conv[0].kernal_size: unknown key (did you mean "kernel_size"?)',
    ),
    ("unknown_key", _set("loss.gamma", 1), "loss.gamma: unknown key; valid keys: beta, free_bits,"),
    (
        "string_int",
        _set("encoder.conv[0].kernel_size", "3"),
        'encoder.conv[0].kernel_size: must be an integer (got "3")',
    ),
    (
        "bool_int",
        _set("encoder.conv[1].stride", True),
        "encoder.conv[1].stride: must be an integer (got true)",
    ),
    ("float_int", _set("latent_dim", 8.5), "latent_dim: must be an integer (got 8.5)"),
    (
        "latent_dim_disagrees",
        _set("latent_dim", 8),
        "latent_dim: must equal the latent's element count 160 (4x5x8) (got 8)",
    ),
    (
        "latent_kind",
        _set("latent", {"kind": "round", "channels": 4}),
        'latent: must be {"kind": "spatial", "channels": C} or {"kind": "flat", "dim": D} '
        '(got {"kind": "round", "channels": 4})',
    ),
    ("latent_channels", _set("latent.channels", 0), "latent.channels: must be >= 1 (got 0)"),
    (
        "latent_typo",
        _set("latent.chanels", 4),
        'latent.chanels: unknown key (did you mean "channels"?)',
    ),
    (
        "project_kernel",
        _set("latent.project_kernel_size", 2),
        "latent.project_kernel_size: must be odd (got 2); use 1 or 3",
    ),
    (
        "flat_dim",
        _set("latent", {"kind": "flat", "dim": -1}),
        "latent.dim: must be >= 1 (got -1)",
    ),
    (  # the hint was 'did you mean "channels"?', the key itself
        "flat_latent_channels",
        _set("latent", {"kind": "flat", "dim": 8, "channels": 4}),
        "latent.channels: unknown key for this form (only a spatial latent has it)",
    ),
    (  # the hint was 'did you mean "linear"?'
        "linearity_twice",
        _set("loss", {"linearity": 0.1, "linearity_weight": 0.2}),
        'loss.linearity: unknown key here: it is the same key as "linearity_weight" (give one)',
    ),
    (
        "spatial_linear",
        _set("encoder.linear", [16]),
        "encoder.linear: must be [] with a spatial latent (got [16]); remove them, or use a "
        'flat latent ("latent_dim")',
    ),
    (
        "spatial_decoder_linear",
        _set("decoder", {"linear": [8], "layers": []}),
        "decoder.linear: must be [] with a spatial latent (got [8])",
    ),
    (
        "upsample_mode",
        _set("decoder.upsample", "cubic"),
        'decoder.upsample: must be one of "bilinear", "nearest", "transpose" (got "cubic")',
    ),
    ("mirror_false", _set("decoder.mirror", False), "decoder.mirror: must be true (got false)"),
    ("mirror_one", _set("decoder.mirror", 1), "decoder.mirror: must be true (got 1)"),  # 1 == True
    (
        "layer_kind",
        _set("decoder", {"layers": [{"kind": "pixel_shuffle", "out_channels": 3}]}),
        'decoder.layers[0]: must have "kind": "conv_transpose" (the default) or "upsample"',
    ),
    (
        "upsample_layer_mode",
        _set("decoder", {"layers": [{"kind": "upsample", "mode": "area", "out_channels": 3}]}),
        'decoder.layers[0].mode: must be one of "bilinear", "nearest" (got "area")',
    ),
    (
        "upsample_layer_padding",
        _set(
            "decoder",
            {"layers": [{"kind": "upsample", "out_channels": 3, "kernel_size": 3, "padding": 3}]},
        ),
        "decoder.layers[0].padding: must be < kernel_size 3 (got 3)",
    ),
    (
        "upsample_layer_typo",
        _set("decoder", {"layers": [{"kind": "upsample", "out_channels": 3, "scael": 2}]}),
        'decoder.layers[0].scael: unknown key (did you mean "scale"?)',
    ),
    (
        "upsample_wrong_size",
        _set("decoder", {"layers": [{"kind": "upsample", "scale": 4, "out_channels": 3}]}),
        "decoder: output shape 3x20x32 does not match input shape 3x36x64",
    ),
    ("zero_latent", _set("latent_dim", 0), "latent_dim: must be >= 1 (got 0)"),
    ("negative_height", _set("input.height", -5), "input.height: must be >= 1 (got -5)"),
    (
        "stride_zero",
        _set("encoder.conv[2].stride", 0),
        "encoder.conv[2].stride: must be >= 1 (got 0)",
    ),
    ("linear_zero", _set("encoder.linear", [0]), "encoder.linear[0]: must be >= 1 (got 0)"),
    (
        "shrinks",
        _shrink,
        "encoder.conv[2]: shrinks the image to nothing (input 1x15, kernel_size 3, padding 0)",
    ),
    (
        "unknown_activation",
        _set("encoder.conv[1].activation", "rleu"),
        'encoder.conv[1].activation: must be one of "elu", "gelu", "leaky_relu", "none", '
        '"relu", "sigmoid", "silu", "tanh" (got "rleu")',
    ),
    (
        "unknown_norm",
        _set("encoder.conv[0].norm", "layer"),
        'encoder.conv[0].norm: must be one of "batch", "group", "none" (got "layer")',
    ),
    (
        "unknown_output",
        _set("output_activation", "relu"),
        'output_activation: must be one of "none", "sigmoid" (got "relu")',
    ),
    (
        "unknown_loss",
        _set("loss.reconstruction", "huber"),
        'loss.reconstruction: must be one of "bce", "calibrated", "l1", "mse" (got "huber")',
    ),
    (
        "decoder_name",
        _set("decoder", "mirorr"),
        'decoder: must be "mirror", {"mirror": true, "upsample": "nearest"} or an object',
    ),
    (
        "decoder_wrong_size",
        _set("decoder", _EXPLICIT_WRONG),
        "decoder: output shape 3x10x16 does not match input shape 3x36x64",
    ),
    (
        "output_padding",
        _set(
            "decoder",
            {
                "conv_transpose": [
                    {**_EXPLICIT_WRONG["conv_transpose"][0], "output_padding": [0, 2]}
                ]
            },
        ),
        "decoder.conv_transpose[0].output_padding: must be < stride 2 on both axes (got [0, 2])",
    ),
    (
        "groups",
        _set("encoder.conv[1]", {"out_channels": 12, "kernel_size": 3, "norm": "group"}),
        "encoder.conv[1].groups: must divide out_channels 12 for group norm (got 8); "
        "use one of 1, 2, 3, 4, 6, 12",
    ),
    (
        "padding",
        _set("encoder.conv[0].padding", 3),
        "encoder.conv[0].padding: must be < kernel_size 3 (got 3)",
    ),
    (
        "dropout",
        _set("encoder.conv[0].dropout", 1.5),
        "encoder.conv[0].dropout: must be < 1.0 (got 1.5)",
    ),
    ("beta_negative", _set("loss.beta", -1), "loss.beta: must be >= 0.0 (got -1)"),
    ("beta_nan", _set("loss.beta", float("nan")), "loss.beta: must be a finite number (got NaN)"),
    ("beta_huge", _set("loss.beta", 1e300), "loss.beta: must be <= 1000000.0 (got 1e+300)"),
    (
        "linearity_huge",
        _set("loss.linearity_weight", 1e7),
        "loss.linearity_weight: must be <= 1000000.0 (got 10000000.0)",
    ),
    ("missing", _set("latent", _DELETE), "latent_dim: must be given (missing)"),
    ("not_object", _set("encoder.conv[0]", 3), "encoder.conv[0]: must be an object {...} (got 3)"),
    (
        "not_list",
        _set("encoder.conv", {"a": 1}),
        'encoder.conv: must be a list [...] (got {"a": 1})',
    ),
]


@pytest.mark.parametrize(("mutate", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_is_refused_with_its_path(
    mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    data = _smoke()
    mutate(data)
    with pytest.raises(UserError, match=re.escape(message)) as info:
        parse_arch(data, "case.json")
    assert info.value.where == "case.json"
    assert str(info.value).startswith("invalid architecture: ")
    assert "\n" not in str(info.value)


def test_bce_needs_bounded_outputs() -> None:
    data = _smoke()
    data["output_activation"] = "none"
    data["loss"]["reconstruction"] = "bce"
    with pytest.raises(UserError, match=r'loss.reconstruction: "bce" needs outputs in \[0, 1\]'):
        parse_arch(data, "case.json")


def test_several_problems_are_reported_together() -> None:
    data = _smoke()
    data["laten_dim"] = 4
    data["encoder"]["conv"][2]["stride"] = 0
    data["encoder"]["conv"][0]["activation"] = "rleu"
    data["loss"]["beta"] = "high"
    with pytest.raises(UserError) as info:
        parse_arch(data, "case.json")
    text = str(info.value)
    assert text.startswith("invalid architecture, 4 problems: ")
    for part in (
        "laten_dim: unknown key",
        "encoder.conv[2].stride: must be >= 1 (got 0)",
        'encoder.conv[0].activation: must be one of "elu"',
        'loss.beta: must be a number (got "high")',
    ):
        assert part in text
    assert text.count("; ") >= 3 and "\n" not in text


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "latent_dim": 8,\n  "input": {"height": 36,, "width": 64}\n}\n')
    with pytest.raises(UserError, match=r"invalid JSON: .* at line 3 column 26 \(.*bad.json\)"):
        load_arch(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"latent_dim": 8, "latent_dim": 9}', 'duplicate key "latent_dim"'),
        ("[1, 2]", r"architecture must be a JSON object \(got a list\)"),
        (None, "architecture file not found"),
    ],
    ids=["duplicate", "array", "missing"],
)
def test_bad_files(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "arch.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_arch(path)


def test_defaults_fill_in_and_output_padding_shorthand() -> None:
    data = {
        "input": {"height": 9, "width": 9},
        "encoder": {"conv": [{"out_channels": 2, "kernel_size": 3, "stride": 2}]},
        "latent_dim": 2,
        "decoder": {
            "conv_transpose": [
                {"out_channels": 3, "kernel_size": 3, "stride": 2, "activation": "none"}
            ]
        },
    }
    cfg = parse_arch(data, "case")
    assert cfg.input.channels == 3 and cfg.loss.reconstruction == "mse"
    assert cfg.to_dict()["decoder"]["layers"][0]["output_padding"] == [0, 0]  # saved as layers
    assert cfg.latent.kind == "flat" and cfg.to_dict()["latent"] == {"kind": "flat", "dim": 2}
    data["decoder"]["conv_transpose"][0]["output_padding"] = 1  # 4 -> 10, not 9
    with pytest.raises(UserError, match="output shape 3x10x10 does not match input shape 3x9x9"):
        parse_arch(data, "case")


def test_layer_table_names_and_text() -> None:
    cfg = load_arch(SMOKE)
    names = [row.name for row in layer_table(cfg)]
    assert names[0] == "input" and names[-1] == "output"
    assert "encoder.mu" in names and "decoder.layers[2]" in names
    text = format_table(check_report(cfg))
    assert f"total: {count_params(cfg):,} parameters" in text
    assert "3x36x64 -> output 3x36x64" in text


# ---- CLI -------------------------------------------------------------------------------------


def test_cli_arch_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["arch", "check", str(SMOKE), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_shape"] == report["output_shape"] == [3, 36, 64]
    assert report["latent_dim"] == 160  # latent elements: 4 channels x 5 x 8
    assert report["latent_kind"] == "spatial" and report["latent_shape"] == [4, 5, 8]
    assert report["upsample"] == "nearest" and report["reconstruction"] == "calibrated"
    assert report["params"] == sum(layer["params"] for layer in report["layers"])
    assert report["layers"][1]["name"] == "encoder.conv[0]"


def test_cli_arch_check_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["arch", "check", str(SMOKE)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["layer", "type", "output", "params"]
    assert "total:" in out


@pytest.mark.parametrize(
    "text", ['{"input": {"height": 9}, "laten_dim": 4}', '{"a": 1,}'], ids=["schema", "json"]
)
def test_cli_arch_check_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert main(["arch", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(path) in lines[0] and "Traceback" not in captured.err


def test_cli_arch_help_ends_with_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["arch", "check", "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1].strip().startswith("varnext arch")


# ---- latent kinds and upsampling decoders ------------------------------------------------------

OLD_SMOKE = {  # configs/smoke_64x36.json before issue #15: flat latent_dim, "mirror" (conv-T)
    "input": {"channels": 3, "height": 36, "width": 64},
    "encoder": {
        "conv": [
            {"out_channels": c, "kernel_size": 3, "stride": 2, "padding": 1} for c in (8, 16, 16)
        ],
        "linear": [],
    },
    "latent_dim": 8,
    "decoder": "mirror",
    "output_activation": "sigmoid",
    "loss": {"reconstruction": "mse", "beta": 1.0},
}


def test_old_flat_config_loads_unchanged() -> None:
    cfg = parse_arch(OLD_SMOKE, "old")
    assert cfg.latent_dim == 8 and cfg.latent.kind == "flat" and cfg.latent.dim == 8
    assert count_params(cfg) == 23_427  # as before
    assert cfg.to_dict()["latent"] == {"kind": "flat", "dim": 8}
    assert parse_arch(cfg.to_dict(), "round trip") == cfg
    # the same latent spelled as an object, with or without the (consistent) shorthand
    as_object = {k: v for k, v in OLD_SMOKE.items() if k != "latent_dim"}
    assert parse_arch({**as_object, "latent": {"kind": "flat", "dim": 8}}, "object") == cfg


def test_spatial_latent_with_upsample_mirror_on_odd_sizes() -> None:
    data = {
        "input": {"height": 45, "width": 79},
        "encoder": {
            "conv": [
                {"out_channels": 8, "kernel_size": 4, "stride": 2, "padding": 1},
                {"out_channels": 8, "kernel_size": 5, "stride": 3},
            ]
        },
        "latent": {"kind": "spatial", "channels": 2},
        "decoder": {"mirror": True, "upsample": "bilinear"},
    }
    cfg = parse_arch(data, "odd")
    rows = {r.name: r for r in layer_table(cfg)}
    assert rows["encoder.mu"].shape == (2, 6, 12) and cfg.latent_dim == 2 * 6 * 12
    assert rows["decoder.project"].shape == (8, 6, 12)
    assert rows["decoder.layers[0]"].shape == (8, 22, 39)  # 6*3 + 4, 12*3 + 3
    assert rows["output"].shape == (3, 45, 79)
    layers = resolve_decoder(cfg).layers
    assert [layer.kind for layer in layers] == ["upsample", "upsample"]
    assert layers[0].output_padding == (4, 3) and layers[1].output_padding == (1, 1)
    assert "upsample bilinear x3 op4,3 + conv2d 3x3 p1" in rows["decoder.layers[0]"].detail


def test_explicit_decoder_mixes_upsample_and_conv_transpose_layers() -> None:
    data = {
        "input": {"height": 36, "width": 64},
        "encoder": {"conv": [{"out_channels": 8, "kernel_size": 4, "stride": 4}]},
        "latent": {"kind": "spatial", "channels": 3, "project_kernel_size": 3},
        "decoder": {
            "layers": [
                {"kind": "upsample", "mode": "nearest", "out_channels": 4, "norm": "batch"},
                {
                    "out_channels": 3,
                    "kernel_size": 2,
                    "stride": 2,
                    "activation": "none",
                },  # "kind" defaults to "conv_transpose"
            ]
        },
    }
    cfg = parse_arch(data, "mixed")
    shapes = [r.shape for r in layer_table(cfg)]
    assert shapes[-3:] == [(4, 18, 32), (3, 36, 64), (3, 36, 64)]
    saved = cfg.to_dict()["decoder"]["layers"]
    assert [layer["kind"] for layer in saved] == ["upsample", "conv_transpose"]
    assert parse_arch(cfg.to_dict(), "round trip") == cfg
    assert check_report(cfg)["decoder"] == "explicit" and check_report(cfg)["upsample"] is None


def test_spatial_latent_problems_are_collected_with_others() -> None:
    data = _smoke()
    data["encoder"]["linear"] = [16]
    data["loss"]["reconstruction"] = "bce"
    data["output_activation"] = "none"
    with pytest.raises(UserError) as info:
        parse_arch(data, "case.json")
    text = str(info.value)
    assert text.startswith("invalid architecture, 2 problems: ")
    assert "encoder.linear: must be [] with a spatial latent" in text
    assert 'loss.reconstruction: "bce" needs outputs in [0, 1]' in text


def test_group_norm_of_one_value_per_group_is_refused() -> None:
    """16 channels in 16 groups on a 1x1 map: PyTorch refuses to normalise one value in
    training, so every run of it failed after Ray started (the arch check passed it)."""
    layer = {"out_channels": 16, "kernel_size": 3, "stride": 2, "padding": 1}
    arch = {
        "input": {"channels": 3, "height": 8, "width": 8},
        "encoder": {"conv": [{**layer, "norm": "group", "groups": 16}] * 3},
        "latent": {"kind": "spatial", "channels": 2},
    }
    with pytest.raises(UserError, match=r"encoder.conv\[2\]: group norm of one value per group"):
        parse_arch(arch, "gn")
    arch["encoder"]["conv"][2] = {**layer, "norm": "group", "groups": 8}  # two per group
    parse_arch(arch, "gn")
