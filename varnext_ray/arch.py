"""JSON architectures: load and validate them, and infer every layer's shape without torch.

An architecture file says everything the VAE builder needs: the input shape, the encoder's
conv2d stack and linear sizes, the latent (``"latent_dim": D`` for a flat vector, or
``"latent": {"kind": "spatial", "channels": C}`` for a C x h x w map on the encoder's last
feature map), the decoder (``"mirror"`` of the encoder, ``{"mirror": true, "upsample":
"nearest"}`` to grow the image by upsample + conv layers, or an explicit list of conv-transpose
and upsample layers), the output activation and the loss weights. It maps to the
frozen pydantic models of :mod:`varnext_ray.arch_schema` and :mod:`varnext_ray.arch_sections`
(re-exported here, with the registries of :mod:`varnext_ray.arch_registries` and the shape
inference of :mod:`varnext_ray.arch_shapes`), which forbid unknown keys. :func:`parse_arch`
and :func:`load_arch` report every problem at once, each with its JSON path, the value
received and the fix, as one :class:`~varnext_ray.errors.UserError`.

Decoder size policy: the decoder lands exactly on the input size, for any size (odd sizes and
640x360 included), through ``output_padding`` computed by shape inference; never a crop or a
resize. A ``"mirror"`` decoder reverses the encoder's conv layers, and each conv-transpose layer
gets the ``output_padding`` (height, width) that brings it back to the size of the matching
encoder layer's input: a stride-``s`` conv loses at most ``s - 1`` pixels to rounding, so that
padding always lies in ``[0, s - 1]``, which PyTorch accepts (an upsampling mirror resizes
straight to that size instead). An explicit decoder states its own
``output_padding``; if its output is not the input shape, validation says so and by how much.
See docs/architectures.md for the JSON format.

Example:
    >>> cfg = load_arch("configs/small_160x90.json")
    >>> print(format_table(check_report(cfg)))
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from varnext_ray.arch_registries import (
    ACTIVATIONS,
    LATENT_KINDS,
    MIRROR_UPSAMPLES,
    NORMS,
    OUTPUT_ACTIVATIONS,
    RECONSTRUCTIONS,
    UPSAMPLE_MODES,
)
from varnext_ray.arch_schema import SECTIONS, ArchConfig
from varnext_ray.arch_sections import (
    ConvLayer,
    ConvTransposeLayer,
    DecoderConfig,
    EncoderConfig,
    FlatLatent,
    InputShape,
    LossConfig,
    MirrorDecoder,
    SpatialLatent,
    UpsampleLayer,
)
from varnext_ray.arch_shapes import (
    Shape,
    conv_out,
    conv_t_out,
    decoder_shapes,
    encoder_shapes,
    fmt_shape,
    latent_shape,
    mirror_upsample,
    resolve_decoder,
    upsampled_size,
)
from varnext_ray.config_errors import json_kind, problems_from_validation
from varnext_ray.errors import UserError, list_problems
from varnext_ray.safe_io import CONFIG_LIMIT, parse_json, read_bounded, size_text

__all__ = [
    "ACTIVATIONS",
    "LATENT_KINDS",
    "LIMIT_RULE",
    "MAX_ACTIVATION_BYTES",
    "MAX_PARAMS",
    "MIRROR_UPSAMPLES",
    "NORMS",
    "OUTPUT_ACTIVATIONS",
    "RECONSTRUCTIONS",
    "UPSAMPLE_MODES",
    "ArchConfig",
    "ConvLayer",
    "ConvTransposeLayer",
    "DecoderConfig",
    "EncoderConfig",
    "FlatLatent",
    "InputShape",
    "LossConfig",
    "MirrorDecoder",
    "Row",
    "SpatialLatent",
    "UpsampleLayer",
    "activation_bytes",
    "check_bounds",
    "check_report",
    "conv_out",
    "conv_t_out",
    "count_params",
    "decoder_shapes",
    "encoder_shapes",
    "format_table",
    "latent_shape",
    "layer_table",
    "load_arch",
    "mirror_upsample",
    "parse_arch",
    "parse_arch_json",
    "parse_limit",
    "resolve_decoder",
    "upsampled_size",
]


class Row(NamedTuple):
    """One line of the layer table."""

    name: str  # JSON path of the layer, e.g. "encoder.conv[2]"
    detail: str  # what it is, e.g. "conv2d 4x4 s2 p1, batch, relu"
    shape: Shape  # output shape without the batch axis
    params: int


def _conv_row(
    name: str, layer: ConvLayer | UpsampleLayer, c_in: int, shape: Shape, kind: str
) -> Row:
    k, c = layer.kernel_size, layer.out_channels
    params = c_in * c * k * k + (c if layer.norm == "none" else 2 * c)
    if isinstance(layer, UpsampleLayer):
        detail = f"upsample {layer.mode} x{layer.scale}"
        if any(layer.output_padding):
            detail += f" op{layer.output_padding[0]},{layer.output_padding[1]}"
        detail += f" + conv2d {k}x{k} p{layer.padding}"
    else:
        detail = f"{kind} {k}x{k} s{layer.stride} p{layer.padding}"
    if isinstance(layer, ConvTransposeLayer) and any(layer.output_padding):
        detail += f" op{layer.output_padding[0]},{layer.output_padding[1]}"
    return Row(name, f"{detail}, {layer.norm}, {layer.activation}", shape, params)


def _linear_rows(prefix: str, sizes: list[int], n_in: int, activation: str) -> list[Row]:
    rows = []
    for i, n in enumerate(sizes):
        rows.append(Row(f"{prefix}[{i}]", f"linear, {activation}", (n,), n_in * n + n))
        n_in = n
    return rows


def _spatial_rows(cfg: ArchConfig, feature: Shape, act: str) -> list[Row]:
    """The 1x1 conv heads (B, F, h, w) -> (B, C, h, w) and the decoder's projection back."""
    f, (c, h, w), k = feature[0], latent_shape(cfg), cfg.latent.project_kernel_size
    heads = [
        Row(f"encoder.{head}", "conv2d 1x1", (c, h, w), f * c + c) for head in ("mu", "logvar")
    ]
    detail = f"conv2d {k}x{k} p{(k - 1) // 2}, {act}"
    return [*heads, Row("decoder.project", detail, feature, c * f * k * k + f)]


def layer_table(cfg: ArchConfig) -> list[Row]:
    """Every layer's output shape and parameter count, in forward order, without torch."""
    enc, d = encoder_shapes(cfg), cfg.latent_dim
    rows = [Row("input", "", cfg.input.shape, 0)]
    for i, layer in enumerate(cfg.encoder.conv):
        rows.append(_conv_row(f"encoder.conv[{i}]", layer, enc[i][0], enc[i + 1], "conv2d"))
    dec_cfg = resolve_decoder(cfg)
    if cfg.latent.kind == "spatial":
        rows += _spatial_rows(cfg, enc[-1], dec_cfg.linear_activation if dec_cfg.layers else "none")
        return rows + _decoder_rows(cfg, dec_cfg, enc[-1])
    flat, hidden = math.prod(enc[-1]), list(cfg.encoder.linear)
    rows.append(Row("encoder.flatten", "", (flat,), 0))
    rows += _linear_rows("encoder.linear", hidden, flat, cfg.encoder.linear_activation)
    n_in = hidden[-1] if hidden else flat
    rows += [Row(f"encoder.{head}", "linear", (d,), n_in * d + d) for head in ("mu", "logvar")]
    rows += _linear_rows("decoder.linear", list(dec_cfg.linear), d, dec_cfg.linear_activation)
    n_in = dec_cfg.linear[-1] if dec_cfg.linear else d
    act = dec_cfg.linear_activation if dec_cfg.layers else "none"
    rows.append(Row("decoder.project", f"linear, {act}", (flat,), n_in * flat + flat))
    rows.append(Row("decoder.unflatten", "", enc[-1], 0))
    return rows + _decoder_rows(cfg, dec_cfg, enc[-1])


def _decoder_rows(cfg: ArchConfig, dec_cfg: DecoderConfig, start: Shape) -> list[Row]:
    """The decoder's layers from the encoder's last feature map, then the output."""
    dec, rows = decoder_shapes(cfg, start), []
    for i, layer in enumerate(dec_cfg.layers):
        rows.append(
            _conv_row(f"decoder.layers[{i}]", layer, dec[i][0], dec[i + 1], "conv_transpose2d")
        )
    rows.append(Row("output", cfg.output_activation, dec[-1], 0))
    return rows


def count_params(cfg: ArchConfig) -> int:
    """Trainable parameters of the VAE that :func:`varnext_ray.model.build_vae` builds."""
    return sum(row.params for row in layer_table(cfg))


def check_report(cfg: ArchConfig) -> dict[str, Any]:
    """What ``varnext arch check --json`` prints: totals, shapes and every layer."""
    rows = layer_table(cfg)
    return {
        "params": sum(r.params for r in rows),
        "latent_dim": cfg.latent_dim,  # latent elements per frame (C*h*w when spatial)
        "latent_kind": cfg.latent.kind,
        "latent_shape": list(latent_shape(cfg)),
        "input_shape": list(cfg.input.shape),
        "output_shape": list(rows[-1].shape),
        "decoder": "explicit" if mirror_upsample(cfg) is None else "mirror",
        "upsample": mirror_upsample(cfg),
        "reconstruction": cfg.loss.reconstruction,
        "layers": [
            {"name": r.name, "detail": r.detail, "shape": list(r.shape), "params": r.params}
            for r in rows
        ],
    }


def format_table(report: dict[str, Any]) -> str:
    """The layer-by-layer table of :func:`check_report`, with totals, as plain text."""
    head = ("layer", "type", "output", "params")
    lines = [
        (r["name"], r["detail"], fmt_shape(r["shape"]), f"{r['params']:,}")
        for r in report["layers"]
    ]
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(4)]
    out = []
    for row in [head, *lines]:
        cells = [row[i].ljust(widths[i]) for i in range(3)] + [row[3].rjust(widths[3])]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "-" * len(out[0]))
    out.append(
        f"total: {report['params']:,} parameters, latent_dim {report['latent_dim']} "
        f"({report['latent_kind']} {fmt_shape(report['latent_shape'])}), "
        f"input {fmt_shape(report['input_shape'])} -> output {fmt_shape(report['output_shape'])}"
    )
    return "\n".join(out)


# ---- loading ---------------------------------------------------------------------------------

_FIX = "fix each field named above; docs/architectures.md lists every key and its default"


# What an architecture may imply before anything is built (raise them with the keywords of
# parse_arch / load_arch, the CLI's --max-params / --max-activation-bytes, or the environment
# variables below, which also reach Ray workers). The seed 640x360 model has 19M parameters
# and 37 MB of activations per frame.
MAX_PARAMS = 1_000_000_000  # 4 GB of float32 weights, 16 GB with Adam's state
MAX_ACTIVATION_BYTES = 4 * 1024**3  # float32 layer outputs of one frame's forward pass
ENV_MAX_PARAMS = "VARNEXT_MAX_PARAMS"
ENV_MAX_ACTIVATION_BYTES = "VARNEXT_MAX_ACTIVATION_BYTES"


def activation_bytes(rows: list[Row]) -> int:
    """Bytes of float32 layer outputs one frame's forward pass holds (every row's output)."""
    return 4 * sum(math.prod(row.shape) for row in rows)


LIMIT_RULE = "a number >= 1 or 'inf'"  # what parse_limit accepts, for error messages


def parse_limit(text: str) -> float | None:
    """A size limit as written (``2e9``, ``2_000_000_000``, ``inf``), rounded down to a whole
    number; None unless it is :data:`LIMIT_RULE`. The rule of the environment variables and of
    the CLI's ``--max-params`` / ``--max-activation-bytes``."""
    try:
        value = float(text.strip().replace("_", ""))
    except ValueError:
        return None
    if not value >= 1:  # NaN, zero, fractions and negatives would refuse every architecture
        return None
    return value if math.isinf(value) else float(int(value))


def _limit(value: float | None, env: str, default: int) -> float:
    if value is not None:
        return value
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    limit = parse_limit(text)
    if limit is None:
        raise UserError(
            f"{env} must be {LIMIT_RULE} (got {text.replace('_', '')[:40]!r})",
            env,
            f"unset it or set e.g. {default}",
        )
    return limit


def check_bounds(
    cfg: ArchConfig,
    where: str,
    *,
    max_params: float | None = None,
    max_activation_bytes: float | None = None,
) -> None:
    """Refuses (UserError) an architecture whose size would exhaust memory, before any tensor.

    Limits default to :data:`MAX_PARAMS` and :data:`MAX_ACTIVATION_BYTES` (or the environment
    variables ``VARNEXT_MAX_PARAMS`` / ``VARNEXT_MAX_ACTIVATION_BYTES``); ``math.inf`` disables.
    """
    max_params = _limit(max_params, ENV_MAX_PARAMS, MAX_PARAMS)
    max_act = _limit(max_activation_bytes, ENV_MAX_ACTIVATION_BYTES, MAX_ACTIVATION_BYTES)
    rows = layer_table(cfg)
    params = sum(row.params for row in rows)
    if params > max_params:
        biggest = max(rows, key=lambda row: row.params)
        raise UserError(
            f"the architecture has {params:,} parameters, over the limit of {int(max_params):,} "
            f"(largest: {biggest.name} with {biggest.params:,})",
            where,
            "use fewer channels, a smaller latent_dim or linear layers, or raise the limit "
            f"(--max-params N where a command has it, or the environment variable "
            f"{ENV_MAX_PARAMS})",
        )
    act = activation_bytes(rows)
    if act > max_act:
        raise UserError(
            f"the architecture needs {size_text(act)} of activations per frame (float32), over "
            f"the limit of {size_text(int(max_act))} (input {fmt_shape(cfg.input.shape)})",
            where,
            "use a smaller input size or fewer channels, or raise the limit (--max-activation-bytes"
            f" N where a command has it, or the environment variable {ENV_MAX_ACTIVATION_BYTES})",
        )


def parse_arch(
    data: dict[str, Any],
    where: str,
    *,
    max_params: float | None = None,
    max_activation_bytes: float | None = None,
) -> ArchConfig:
    """Validates a JSON-shaped dict, reporting every problem at once, then its size bounds.

    Args:
        data: The decoded JSON object.
        where: What to name in errors (a file path, a trial id).
        max_params: Most parameters allowed (default :data:`MAX_PARAMS`; ``math.inf``: none).
        max_activation_bytes: Most float32 activation bytes per frame (default
            :data:`MAX_ACTIVATION_BYTES`).

    Raises:
        UserError: ``invalid architecture: <path>: <problem> (got <value>); ...``, or a size
            over a bound (see :func:`check_bounds`).

    Example:
        >>> cfg = parse_arch({"input": {"height": 36, "width": 64}, "latent_dim": 8}, "demo")
    """
    if not isinstance(data, dict):
        got = json_kind(data)
        raise UserError(f"architecture must be a JSON object (got {got})", where, _FIX)
    try:
        cfg = ArchConfig.model_validate(data)
    except ValidationError as err:
        problems = problems_from_validation(err, SECTIONS)
    except (RecursionError, ValueError) as err:  # absurd nesting or numbers pydantic gave up on
        raise UserError(f"invalid architecture ({type(err).__name__})", where, _FIX) from None
    else:
        check_bounds(cfg, where, max_params=max_params, max_activation_bytes=max_activation_bytes)
        return cfg
    raise UserError(list_problems("invalid architecture", problems), where, _FIX)


def parse_arch_json(data: bytes | str, where: str, **limits: float | None) -> ArchConfig:
    """Parses architecture JSON text (bytes or str): syntax, duplicate keys, then
    :func:`parse_arch` (``limits``: its ``max_params`` and ``max_activation_bytes``)."""
    data = parse_json(
        data,
        where,
        allow_nan=True,  # the schema names the field: "must be a finite number (got NaN)"
        refuse_duplicates=True,  # names the first few, each key cut short
    )
    return parse_arch(data, where, **limits)


def load_arch(
    path: str | Path,
    *,
    max_params: float | None = None,
    max_activation_bytes: float | None = None,
) -> ArchConfig:
    """Reads and validates an architecture file (at most 1 MiB, a regular file).

    Raises:
        UserError: The file is missing, not a regular file, too large, not UTF-8, not JSON
            (with line and column), not a valid architecture (every problem, see
            :func:`parse_arch`), or over a size bound (:func:`check_bounds`).

    Example:
        >>> cfg = load_arch("configs/smoke_64x36.json")
    """
    where = str(path)
    data = read_bounded(path, CONFIG_LIMIT, "architecture file", "pass an architecture JSON file")
    return parse_arch_json(
        data, where, max_params=max_params, max_activation_bytes=max_activation_bytes
    )
