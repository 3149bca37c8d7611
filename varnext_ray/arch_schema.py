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
RECONSTRUCTIONS: dict[str, Any] = {  # name -> elementwise loss(recon, x, reduction="none")
    "mse": F.mse_loss,
    "bce": F.binary_cross_entropy,
    "l1": F.l1_loss,
}

Shape = tuple[int, ...]  # (C, H, W) for images, (N,) for vectors


def _one_of(registry: dict[str, Any]) -> AfterValidator:
    """A validator accepting only the registry's names; the error lists the valid ones."""

    def check(name: str) -> str:
        if name not in registry:
            valid = ", ".join(f'"{k}"' for k in sorted(registry))
            raise PydanticCustomError("arch", f"must be one of {valid} (got {json.dumps(name)})")
        return name

    return AfterValidator(check)


def _pair(value: Any) -> Any:
    """Lets ``output_padding`` be written as one int for both axes."""
    return (value, value) if isinstance(value, int) and not isinstance(value, bool) else value


INT_MAX = 2**31 - 1  # what torch's conv and linear layers accept for a size
PosInt = Annotated[int, Strict(), Field(ge=1, le=INT_MAX)]
NonNegInt = Annotated[int, Strict(), Field(ge=0, le=INT_MAX)]
NonNegFloat = Annotated[float, Strict(), Field(ge=0.0)]
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
        if self.padding >= self.kernel_size:
            raise PydanticCustomError(
                "arch",
                f"must be < kernel_size {self.kernel_size} (got {self.padding})",
                {"field": "padding"},
            )
        if self.norm == "group" and self.out_channels % self.groups:
            raise PydanticCustomError(
                "arch",
                f"must divide out_channels {self.out_channels} for group norm (got "
                f"{self.groups}); use one of {divisor_hint(self.out_channels)}",
                {"field": "groups"},
            )
        return self


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


class EncoderConfig(BaseModel):
    """Conv stack, then flatten, then hidden linear layers; the mu and logvar heads follow."""

    model_config = _STRICT
    conv: tuple[ConvLayer, ...] = ()
    linear: tuple[PosInt, ...] = ()
    linear_activation: Activation = "relu"
    linear_dropout: Dropout = 0.0


class DecoderConfig(BaseModel):
    """Explicit decoder: latent -> linear layers -> encoder's conv output shape -> conv stack."""

    model_config = _STRICT
    linear: tuple[PosInt, ...] = ()
    linear_activation: Activation = "relu"
    conv_transpose: tuple[ConvTransposeLayer, ...] = ()


class LossConfig(BaseModel):
    """ELBO weights: reconstruction + beta * KL, with optional warm-up and free bits.

    ``linearity_weight`` (JSON key ``linearity_weight``, or ``linearity`` as older files spell
    it) is lambda of the optional term on training triplets that pulls their latent means onto
    a line: lambda * ||mu(t+2s) - 2 mu(t+s) + mu(t)||^2
    (:func:`varnext_ray.model.latent_curvature_penalty`).
    """

    model_config = _STRICT
    reconstruction: Annotated[str, Strict(), _one_of(RECONSTRUCTIONS)] = "mse"
    beta: NonNegFloat = 1.0
    kl_warmup_epochs: NonNegInt = 0
    free_bits: NonNegFloat = 0.0
    linearity_weight: NonNegFloat = Field(
        0.0, validation_alias=AliasChoices("linearity_weight", "linearity")
    )


def _decoder_kind(value: Any) -> str | None:
    if value == "mirror":
        return "mirror"
    return "explicit" if isinstance(value, (dict, DecoderConfig)) else None


Decoder = Annotated[
    Annotated[Literal["mirror"], Tag("mirror")] | Annotated[DecoderConfig, Tag("explicit")],
    Discriminator(
        _decoder_kind,
        custom_error_type="decoder_kind",
        custom_error_message=(
            'must be "mirror" or an object {"linear": [...], "conv_transpose": [...]}'
        ),
    ),
]


class ArchConfig(BaseModel):
    """A whole architecture; construct it with :func:`parse_arch` or :func:`load_arch`."""

    model_config = _STRICT
    input: InputShape
    encoder: EncoderConfig = EncoderConfig()
    latent_dim: PosInt
    decoder: Decoder = "mirror"
    output_activation: Annotated[str, Strict(), _one_of(OUTPUT_ACTIVATIONS)] = "sigmoid"
    loss: LossConfig = LossConfig()

    @model_validator(mode="after")
    def _shapes_work(self) -> ArchConfig:
        problems = shape_problems(self)
        if self.loss.reconstruction == "bce" and self.output_activation != "sigmoid":
            problems.append(
                f'loss.reconstruction: "bce" needs outputs in [0, 1] (got output_activation '
                f'"{self.output_activation}"); use "sigmoid" or another reconstruction'
            )
        if problems:
            raise PydanticCustomError("arch_shapes", "; ".join(problems), {"problems": problems})
        return self

    def to_dict(self) -> dict[str, Any]:
        """The full explicit JSON form (every default written out); parses back to ``self``."""
        return self.model_dump(mode="json")


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


def resolve_decoder(cfg: ArchConfig) -> DecoderConfig:
    """The explicit decoder; a ``"mirror"`` one is expanded with exact ``output_padding``."""
    if isinstance(cfg.decoder, DecoderConfig):
        return cfg.decoder
    shapes, conv = encoder_shapes(cfg), cfg.encoder.conv
    layers = []
    for i in reversed(range(len(conv))):
        enc, (_, h_in, w_in), (c, h, w) = conv[i], shapes[i + 1], shapes[i]
        k, s, p = enc.kernel_size, enc.stride, enc.padding
        last = i == 0  # the output layer: the output activation follows it instead
        layers.append(
            ConvTransposeLayer(
                out_channels=c,
                kernel_size=k,
                stride=s,
                padding=p,
                output_padding=(h - conv_t_out(h_in, k, s, p, 0), w - conv_t_out(w_in, k, s, p, 0)),
                norm="none" if last else enc.norm,
                groups=math.gcd(enc.groups, c),
                activation="none" if last else enc.activation,
                dropout=0.0 if last else enc.dropout,
            )
        )
    return DecoderConfig(
        linear=cfg.encoder.linear[::-1],
        linear_activation=cfg.encoder.linear_activation,
        conv_transpose=tuple(layers),
    )


def decoder_shapes(cfg: ArchConfig, start: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """(C, H, W) from the decoder's start volume through each conv-transpose layer."""
    shapes = [start]
    for layer in resolve_decoder(cfg).conv_transpose:
        _, h, w = shapes[-1]
        k, s, p, (oph, opw) = layer.kernel_size, layer.stride, layer.padding, layer.output_padding
        shapes.append(
            (layer.out_channels, conv_t_out(h, k, s, p, oph), conv_t_out(w, k, s, p, opw))
        )
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
            f"decoder.conv_transpose[{i}]: output size {dec[-1][1]}x{dec[-1][2]} is not "
            f"positive (input {h}x{w}); use less padding or a larger kernel_size or stride"
        ]
    if dec[-1] != cfg.input.shape:
        return [
            f"decoder: output shape {fmt_shape(dec[-1])} does not match input shape "
            f"{fmt_shape(cfg.input.shape)}; change the conv_transpose layers (out_channels of the "
            'last, kernel_size, stride, padding, output_padding) or use "decoder": "mirror"'
        ]
    return []


def fmt_shape(shape: Shape | list[int]) -> str:
    """``(3, 90, 160)`` -> ``"3x90x160"``."""
    return "x".join(map(str, shape))


# JSON object path (list indices dropped) -> the model that reads it, for "valid keys" hints.
SECTIONS: dict[tuple[str, ...], type[BaseModel]] = {
    (): ArchConfig,
    ("input",): InputShape,
    ("encoder",): EncoderConfig,
    ("encoder", "conv"): ConvLayer,
    ("decoder",): DecoderConfig,
    ("decoder", "conv_transpose"): ConvTransposeLayer,
    ("loss",): LossConfig,
}
