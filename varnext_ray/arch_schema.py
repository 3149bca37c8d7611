"""The architecture schema: registries, frozen config models and their shape inference.

Users and other stages import these names from :mod:`varnext_ray.arch`, which adds loading,
error reporting and the layer table. This module holds what makes a config *valid*: typed
fields with bounds, per-layer consistency, and the shape checks that run once every field is
well-typed (the image must not shrink to nothing; the decoder must land on the input shape).

Decoder size policy: see :mod:`varnext_ray.arch` (``output_padding`` from shape inference).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "none": nn.Identity,
}
OUTPUT_ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "none": nn.Identity}
NORMS: dict[str, Any] = {  # name -> (channels, groups) -> module, or None for no norm layer
    "batch": lambda channels, groups: nn.BatchNorm2d(channels),
    "group": lambda channels, groups: nn.GroupNorm(groups, channels),
    "none": None,
}
CALIBRATED_MIN_VARIANCE = 1e-6  # floor on the calibrated decoder's variance sigma^2


def calibrated_gaussian_nll(
    recon: torch.Tensor, x: torch.Tensor, reduction: str = "none"
) -> torch.Tensor:
    """Elementwise Gaussian NLL with the optimal shared variance (sigma-VAE, Rybkin et al. 2021).

    sigma^2 is the batch MSE, detached and floored at ``CALIBRATED_MIN_VARIANCE``; each element
    costs 1/2 log(2 pi sigma^2) + (x - xhat)^2 / (2 sigma^2), so a frame's sum is
    D/2 log(2 pi sigma^2) + sum (x - xhat)^2 / (2 sigma^2) with D = C*H*W. (B, C, H, W) -> same.
    """
    if reduction != "none":
        raise ValueError(f'calibrated_gaussian_nll supports reduction="none" (got {reduction!r})')
    sq = (recon - x).pow(2)  # (B, C, H, W)
    var = sq.detach().mean().clamp(min=CALIBRATED_MIN_VARIANCE)  # scalar, no gradient
    return 0.5 * torch.log(2 * math.pi * var) + sq / (2 * var)


RECONSTRUCTIONS: dict[str, Any] = {  # name -> elementwise loss(recon, x, reduction="none")
    "mse": F.mse_loss,
    "bce": F.binary_cross_entropy,
    "l1": F.l1_loss,
    "calibrated": calibrated_gaussian_nll,
}
UPSAMPLE_MODES: dict[str, dict[str, Any]] = {  # upsample layer mode -> nn.Upsample keywords
    "nearest": {"mode": "nearest"},
    "bilinear": {"mode": "bilinear", "align_corners": False},
}
MIRROR_UPSAMPLES = ("transpose", "nearest", "bilinear")  # how a mirror decoder grows the image
LATENT_KINDS = ("flat", "spatial")

Shape = tuple[int, ...]  # (C, H, W) for images, (N,) for vectors


def _one_of(registry: dict[str, Any]) -> AfterValidator:
    """A validator accepting only the registry's names; the error lists the valid ones."""

    def check(name: str) -> str:
        if name not in registry:
            valid = ", ".join(f'"{k}"' for k in sorted(registry))
            raise PydanticCustomError("arch", f"must be one of {valid} (got {json.dumps(name)})")
        return name

    return AfterValidator(check)


def _true(value: Any) -> Any:
    """Only JSON's ``true``: a Literal[True] takes ``1`` and ``1.0`` too (they equal True)."""
    if value is not True:
        raise PydanticCustomError("arch", f"must be true (got {json.dumps(value)[:40]})")
    return value


def _pair(value: Any) -> Any:
    """Lets ``output_padding`` be written as one int for both axes."""
    return (value, value) if isinstance(value, int) and not isinstance(value, bool) else value


INT_MAX = 2**31 - 1  # what torch's conv and linear layers accept for a size
PosInt = Annotated[int, Strict(), Field(ge=1, le=INT_MAX)]
NonNegInt = Annotated[int, Strict(), Field(ge=0, le=INT_MAX)]
# A loss weight above this makes the float32 loss overflow or swamps the other terms to noise:
# beta-VAE and linearity weights in use are below 100.
MAX_LOSS_WEIGHT = 1e6
LossWeight = Annotated[float, Strict(), Field(ge=0.0, le=MAX_LOSS_WEIGHT)]
Dropout = Annotated[float, Strict(), Field(ge=0.0, lt=1.0)]
Activation = Annotated[str, Strict(), _one_of(ACTIVATIONS)]
_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class InputShape(BaseModel):
    """The frames the model reads: ``channels`` x ``height`` x ``width``, floats in [0, 1]."""

    model_config = _STRICT
    channels: PosInt = 3
    height: PosInt
    width: PosInt

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return (self.channels, self.height, self.width)


class ConvLayer(BaseModel):
    """One encoder conv2d layer, followed by its norm, activation and dropout."""

    model_config = _STRICT
    out_channels: PosInt
    kernel_size: PosInt
    stride: PosInt = 1
    padding: NonNegInt = 0
    norm: Annotated[str, Strict(), _one_of(NORMS)] = "none"
    groups: PosInt = 8
    activation: Activation = "relu"
    dropout: Dropout = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> ConvLayer:
        _check_conv(self)
        return self


def _check_conv(layer: ConvLayer | UpsampleLayer) -> None:
    """padding < kernel_size; group norm groups divide out_channels."""
    if layer.padding >= layer.kernel_size:
        raise PydanticCustomError(
            "arch",
            f"must be < kernel_size {layer.kernel_size} (got {layer.padding})",
            {"field": "padding"},
        )
    if layer.norm == "group" and layer.out_channels % layer.groups:
        raise PydanticCustomError(
            "arch",
            f"must divide out_channels {layer.out_channels} for group norm (got "
            f"{layer.groups}); use one of {divisor_hint(layer.out_channels)}",
            {"field": "groups"},
        )


def divisor_hint(n: int, most: int = 12) -> str:
    """Up to ``most`` divisors of ``n``, small first, in O(sqrt(n)) steps (n < 2**31: < 50k)."""
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d != n // d:
                large.append(n // d)
        d += 1
    divisors = small + large[::-1]
    if len(divisors) <= most:
        return ", ".join(map(str, divisors))
    return ", ".join(map(str, divisors[: most - 1])) + f", ..., {divisors[-1]}"


class ConvTransposeLayer(ConvLayer):
    """One decoder conv-transpose layer; ``output_padding`` is [height, width] (or one int)."""

    kind: Literal["conv_transpose"] = "conv_transpose"
    output_padding: Annotated[tuple[NonNegInt, NonNegInt], BeforeValidator(_pair)] = (0, 0)

    @model_validator(mode="after")
    def _padding_below_stride(self) -> ConvTransposeLayer:
        if max(self.output_padding) >= self.stride:
            raise PydanticCustomError(
                "arch",
                f"must be < stride {self.stride} on both axes (got {list(self.output_padding)})",
                {"field": "output_padding"},
            )
        return self


SignedInt = Annotated[int, Strict(), Field(ge=-INT_MAX, le=INT_MAX)]


class UpsampleLayer(BaseModel):
    """One decoder layer that upsamples (nearest or bilinear) and then convolves (stride 1).

    The upsampled side is ``size * scale + output_padding`` ([height, width], or one int; it
    may be negative: the mirror uses it to land on the matching encoder input's exact size);
    then a ``kernel_size`` conv with ``padding``, its norm, activation and dropout.
    """

    model_config = _STRICT
    kind: Literal["upsample"]
    mode: Annotated[str, Strict(), _one_of(UPSAMPLE_MODES)] = "nearest"
    scale: PosInt = 2
    output_padding: Annotated[tuple[SignedInt, SignedInt], BeforeValidator(_pair)] = (0, 0)
    out_channels: PosInt
    kernel_size: PosInt = 3
    padding: NonNegInt = 1
    norm: Annotated[str, Strict(), _one_of(NORMS)] = "none"
    groups: PosInt = 8
    activation: Activation = "relu"
    dropout: Dropout = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> UpsampleLayer:
        _check_conv(self)
        return self


def _layer_kind(value: Any) -> str | None:
    if isinstance(value, (ConvTransposeLayer, UpsampleLayer)):
        return value.kind
    if isinstance(value, dict):
        kind = value.get("kind", "conv_transpose")
        return kind if kind in ("conv_transpose", "upsample") else None
    return "conv_transpose"  # not an object: the layer model says so


DecoderLayer = Annotated[
    Annotated[ConvTransposeLayer, Tag("conv_transpose")]
    | Annotated[UpsampleLayer, Tag("upsample")],
    Discriminator(
        _layer_kind,
        custom_error_type="layer_kind",
        custom_error_message='must have "kind": "conv_transpose" (the default) or "upsample"',
    ),
]


class EncoderConfig(BaseModel):
    """Conv stack, then (flat latent) flatten and hidden linear layers; the mu and logvar heads
    follow (linear for a flat latent, 1x1 convs for a spatial one)."""

    model_config = _STRICT
    conv: tuple[ConvLayer, ...] = ()
    linear: tuple[PosInt, ...] = ()
    linear_activation: Activation = "relu"
    linear_dropout: Dropout = 0.0


class DecoderConfig(BaseModel):
    """Explicit decoder: latent -> linear layers -> encoder's conv output shape -> layers.

    ``layers`` mixes conv-transpose and upsample layers; older files name the list
    ``conv_transpose`` (read the same, saved as ``layers``).
    """

    model_config = _STRICT
    linear: tuple[PosInt, ...] = ()
    linear_activation: Activation = "relu"
    layers: tuple[DecoderLayer, ...] = Field(
        (), validation_alias=AliasChoices("layers", "conv_transpose")
    )


class MirrorDecoder(BaseModel):
    """``{"mirror": true, "upsample": ...}``: the encoder reversed, growing the image by
    conv-transpose layers (``"transpose"``, what ``"mirror"`` means) or by upsample layers."""

    model_config = _STRICT
    mirror: Annotated[Literal[True], BeforeValidator(_true)]
    upsample: Annotated[str, Strict(), _one_of(dict.fromkeys(MIRROR_UPSAMPLES))] = "transpose"


class FlatLatent(BaseModel):
    """A vector latent of ``dim`` elements (``"latent_dim": dim`` is the shorthand)."""

    model_config = _STRICT
    kind: Literal["flat"]
    dim: PosInt


class SpatialLatent(BaseModel):
    """A ``channels`` x h x w latent map on the encoder's last feature map (h x w): 1x1 convs
    give mu and logvar; the decoder projects it back to the feature channels with a
    ``project_kernel_size`` conv (odd, size-preserving)."""

    model_config = _STRICT
    kind: Literal["spatial"]
    channels: PosInt
    project_kernel_size: PosInt = 1

    @model_validator(mode="after")
    def _odd(self) -> SpatialLatent:
        if self.project_kernel_size % 2 == 0:
            raise PydanticCustomError(
                "arch",
                f"must be odd (got {self.project_kernel_size}); use 1 or 3",
                {"field": "project_kernel_size"},
            )
        return self


def _latent_kind(value: Any) -> str | None:
    if isinstance(value, (FlatLatent, SpatialLatent)):
        return value.kind
    kind = value.get("kind") if isinstance(value, dict) else None
    return kind if kind in LATENT_KINDS else None


Latent = Annotated[
    Annotated[FlatLatent, Tag("flat")] | Annotated[SpatialLatent, Tag("spatial")],
    Discriminator(
        _latent_kind,
        custom_error_type="latent_kind",
        custom_error_message=(
            'must be {"kind": "spatial", "channels": C} or {"kind": "flat", "dim": D}'
        ),
    ),
]


class LossConfig(BaseModel):
    """ELBO weights: reconstruction + beta * KL, with optional warm-up and free bits.

    ``linearity_weight`` (JSON key ``linearity_weight``, or ``linearity`` as older files spell
    it) is lambda of the optional term on training triplets that pulls their latent means onto
    a line: lambda * ||mu(t+2s) - 2 mu(t+s) + mu(t)||^2
    (:func:`varnext_ray.model.latent_curvature_penalty`).
    """

    model_config = _STRICT
    reconstruction: Annotated[str, Strict(), _one_of(RECONSTRUCTIONS)] = "mse"
    beta: LossWeight = 1.0
    kl_warmup_epochs: NonNegInt = 0
    free_bits: LossWeight = 0.0
    linearity_weight: LossWeight = Field(
        0.0, validation_alias=AliasChoices("linearity_weight", "linearity")
    )


def _decoder_kind(value: Any) -> str | None:
    if value == "mirror":
        return "mirror"
    if isinstance(value, MirrorDecoder) or (isinstance(value, dict) and "mirror" in value):
        return "mirror_object"
    return "explicit" if isinstance(value, (dict, DecoderConfig)) else None


Decoder = Annotated[
    Annotated[Literal["mirror"], Tag("mirror")]
    | Annotated[MirrorDecoder, Tag("mirror_object")]
    | Annotated[DecoderConfig, Tag("explicit")],
    Discriminator(
        _decoder_kind,
        custom_error_type="decoder_kind",
        custom_error_message=(
            'must be "mirror", {"mirror": true, "upsample": "nearest"} or an object '
            '{"linear": [...], "layers": [...]}'
        ),
    ),
]


class ArchConfig(BaseModel):
    """A whole architecture; construct it with :func:`parse_arch` or :func:`load_arch`.

    The latent is ``latent`` (flat or spatial) or the flat shorthand ``latent_dim``; once
    validated both are set: ``latent`` always, ``latent_dim`` to the latent's element count.
    """

    model_config = _STRICT
    input: InputShape
    encoder: EncoderConfig = EncoderConfig()
    latent_dim: PosInt | None = None
    latent: Latent | None = None
    decoder: Decoder = "mirror"
    output_activation: Annotated[str, Strict(), _one_of(OUTPUT_ACTIVATIONS)] = "sigmoid"
    loss: LossConfig = LossConfig()

    @model_validator(mode="after")
    def _shapes_work(self) -> ArchConfig:
        if self.latent is None and self.latent_dim is None:
            raise PydanticCustomError(
                "arch_shapes",
                "latent missing",
                {"problems": [_MISSING_LATENT]},
            )
        if self.latent is None:  # the flat shorthand
            object.__setattr__(self, "latent", FlatLatent(kind="flat", dim=self.latent_dim))
        problems = latent_problems(self) or shape_problems(self)
        if self.loss.reconstruction == "bce" and self.output_activation != "sigmoid":
            problems.append(
                f'loss.reconstruction: "bce" needs outputs in [0, 1] (got output_activation '
                f'"{self.output_activation}"); use "sigmoid" or another reconstruction'
            )
        size = math.prod(latent_shape(self)) if not problems else None
        if size is not None and self.latent_dim is not None and self.latent_dim != size:
            problems.append(
                f"latent_dim: must equal the latent's element count {size} "
                f"({fmt_shape(latent_shape(self))}) (got {self.latent_dim}); leave it out "
                'when "latent" is given'
            )
        if problems:
            raise PydanticCustomError("arch_shapes", "; ".join(problems), {"problems": problems})
        object.__setattr__(self, "latent_dim", size)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The full explicit JSON form (every default written out); parses back to ``self``."""
        return self.model_dump(mode="json")


_MISSING_LATENT = (
    'latent_dim: must be given (missing); or give "latent": {"kind": "spatial", "channels": 4} '
    '(or {"kind": "flat", "dim": 32})'
)


def latent_problems(cfg: ArchConfig) -> list[str]:
    """A spatial latent has no linear layers (there is nothing flat to feed them)."""
    if cfg.latent is None or cfg.latent.kind != "spatial":
        return []
    fix = 'remove them, or use a flat latent ("latent_dim")'
    problems = []
    if cfg.encoder.linear:
        problems.append(
            f"encoder.linear: must be [] with a spatial latent (got {list(cfg.encoder.linear)}); "
            + fix
        )
    if isinstance(cfg.decoder, DecoderConfig) and cfg.decoder.linear:
        problems.append(
            f"decoder.linear: must be [] with a spatial latent (got {list(cfg.decoder.linear)}); "
            + fix
        )
    return problems


# ---- shape inference -------------------------------------------------------------------------


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a conv2d along one axis (may be <= 0: the image shrank to nothing)."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_t_out(size: int, kernel: int, stride: int, padding: int, output_padding: int) -> int:
    """Output length of a conv-transpose2d along one axis."""
    return (size - 1) * stride - 2 * padding + kernel + output_padding


def encoder_shapes(cfg: ArchConfig) -> list[tuple[int, int, int]]:
    """(C, H, W) of the input and after each encoder conv layer; stops where it shrinks to 0."""
    shapes = [cfg.input.shape]
    for layer in cfg.encoder.conv:
        _, h, w = shapes[-1]
        k, s, p = layer.kernel_size, layer.stride, layer.padding
        shapes.append((layer.out_channels, conv_out(h, k, s, p), conv_out(w, k, s, p)))
        if min(shapes[-1][1:]) < 1:
            break
    return shapes


def latent_shape(cfg: ArchConfig) -> Shape:
    """(D,) for a flat latent, (C, h, w) for a spatial one (h x w: the encoder's last map)."""
    if cfg.latent.kind == "flat":
        return (cfg.latent.dim,)
    _, h, w = encoder_shapes(cfg)[-1]
    return (cfg.latent.channels, h, w)


def mirror_upsample(cfg: ArchConfig) -> str | None:
    """How a mirror decoder grows the image (``"transpose"``, ...); None for an explicit one."""
    if cfg.decoder == "mirror":
        return "transpose"
    return cfg.decoder.upsample if isinstance(cfg.decoder, MirrorDecoder) else None


def _mirror_layer(
    enc: ConvLayer, size_in: tuple[int, int], size: tuple[int, int], c: int, mode: str, last: bool
) -> ConvTransposeLayer | UpsampleLayer:
    """The decoder layer undoing encoder layer ``enc``: ``size_in`` (its output) -> ``size``."""
    k, s, p = enc.kernel_size, enc.stride, enc.padding
    common = {
        "out_channels": c,
        "norm": "none" if last else enc.norm,  # the output layer: output_activation follows it
        "groups": math.gcd(enc.groups, c),
        "activation": "none" if last else enc.activation,
        "dropout": 0.0 if last else enc.dropout,
    }
    if mode == "transpose":
        pad = tuple(n - conv_t_out(n_in, k, s, p, 0) for n, n_in in zip(size, size_in, strict=True))
        return ConvTransposeLayer(kernel_size=k, stride=s, padding=p, output_padding=pad, **common)
    pad = tuple(n - n_in * s for n, n_in in zip(size, size_in, strict=True))
    return UpsampleLayer(kind="upsample", mode=mode, scale=s, output_padding=pad, **common)


def resolve_decoder(cfg: ArchConfig) -> DecoderConfig:
    """The explicit decoder; a mirror one is expanded with exact ``output_padding``."""
    if isinstance(cfg.decoder, DecoderConfig):
        return cfg.decoder
    mode, shapes, conv = mirror_upsample(cfg), encoder_shapes(cfg), cfg.encoder.conv
    layers = [
        _mirror_layer(conv[i], shapes[i + 1][1:], shapes[i][1:], shapes[i][0], mode, i == 0)
        for i in reversed(range(len(conv)))
    ]
    return DecoderConfig(
        linear=cfg.encoder.linear[::-1],
        linear_activation=cfg.encoder.linear_activation,
        layers=tuple(layers),
    )


def upsampled_size(layer: UpsampleLayer, h: int, w: int) -> tuple[int, int]:
    """(H, W) after an upsample layer's resize, before its conv."""
    oph, opw = layer.output_padding
    return h * layer.scale + oph, w * layer.scale + opw


def decoder_shapes(cfg: ArchConfig, start: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """(C, H, W) from the decoder's start volume through each decoder layer."""
    shapes = [start]
    for layer in resolve_decoder(cfg).layers:
        _, h, w = shapes[-1]
        k, p = layer.kernel_size, layer.padding
        if isinstance(layer, UpsampleLayer):
            uh, uw = upsampled_size(layer, h, w)
            if min(uh, uw) < 1:
                shapes.append((layer.out_channels, uh, uw))
                break
            out = (layer.out_channels, conv_out(uh, k, 1, p), conv_out(uw, k, 1, p))
        else:
            s, (oph, opw) = layer.stride, layer.output_padding
            out = (layer.out_channels, conv_t_out(h, k, s, p, oph), conv_t_out(w, k, s, p, opw))
        shapes.append(out)
        if min(shapes[-1][1:]) < 1:
            break
    return shapes


def shape_problems(cfg: ArchConfig) -> list[str]:
    """Every shape problem of an otherwise well-typed config, each naming its JSON path."""
    enc = encoder_shapes(cfg)
    if min(enc[-1][1:]) < 1:
        i, (_, h, w) = len(enc) - 2, enc[-2]
        layer = cfg.encoder.conv[i]
        return [
            f"encoder.conv[{i}]: shrinks the image to nothing (input {h}x{w}, kernel_size "
            f"{layer.kernel_size}, padding {layer.padding}); use fewer strided layers before it, "
            "a smaller kernel_size or more padding"
        ]
    dec = decoder_shapes(cfg, enc[-1])
    if min(dec[-1][1:]) < 1:
        i, (_, h, w) = len(dec) - 2, dec[-2]
        return [
            f"decoder.layers[{i}]: output size {dec[-1][1]}x{dec[-1][2]} is not "
            f"positive (input {h}x{w}); use less padding or a larger kernel_size, stride, "
            "scale or output_padding"
        ]
    layers = [
        *(("encoder.conv", i, layer, enc[i + 1]) for i, layer in enumerate(cfg.encoder.conv)),
        *(
            ("decoder.layers", i, layer, dec[i + 1])
            for i, layer in enumerate(resolve_decoder(cfg).layers)
        ),
    ]
    for section, i, layer, (c, h, w) in layers:
        if layer.norm == "group" and c // layer.groups * h * w == 1:
            return [
                f"{section}[{i}]: group norm of one value per group ({c} channels in "
                f"{layer.groups} groups on a {h}x{w} map): PyTorch cannot normalise it in "
                'training; use fewer groups, "norm": "none", or fewer strided layers'
            ]
    if dec[-1] != cfg.input.shape:
        return [
            f"decoder: output shape {fmt_shape(dec[-1])} does not match input shape "
            f"{fmt_shape(cfg.input.shape)}; change the decoder layers (out_channels of the "
            "last, kernel_size, stride or scale, padding, output_padding) or use "
            '"decoder": "mirror"'
        ]
    return []


def batch_norm_on_one_value(cfg: ArchConfig) -> str | None:
    """The first layer whose batch norm sees one value per channel for each frame (a 1x1 map,
    ``encoder.conv[3]``), or None: a batch of one frame cannot train it."""
    enc = encoder_shapes(cfg)
    for i, layer in enumerate(cfg.encoder.conv):
        if layer.norm == "batch" and enc[i + 1][1] * enc[i + 1][2] == 1:
            return f"encoder.conv[{i}]"
    dec = decoder_shapes(cfg, enc[-1])
    for i, layer in enumerate(resolve_decoder(cfg).layers):
        if layer.norm == "batch" and dec[i + 1][1] * dec[i + 1][2] == 1:
            return f"decoder.layers[{i}]"
    return None


def fmt_shape(shape: Shape | list[int]) -> str:
    """``(3, 90, 160)`` -> ``"3x90x160"``."""
    return "x".join(map(str, shape))


# JSON object path (list indices dropped) -> the model that reads it, for "valid keys" hints.
SECTIONS: dict[tuple[str, ...], type[BaseModel] | tuple[type[BaseModel], ...]] = {
    (): ArchConfig,
    ("input",): InputShape,
    ("encoder",): EncoderConfig,
    ("encoder", "conv"): ConvLayer,
    ("latent",): (FlatLatent, SpatialLatent),
    ("decoder",): (DecoderConfig, MirrorDecoder),
    ("decoder", "layers"): (ConvTransposeLayer, UpsampleLayer),
    ("decoder", "conv_transpose"): (ConvTransposeLayer, UpsampleLayer),
    ("loss",): LossConfig,
}
