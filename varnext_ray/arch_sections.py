"""The sections of an architecture config: frozen models of its input, encoder and decoder
layers, latent and loss, with their bounded field types and per-layer consistency checks.

The whole config, and its checks across sections, are in :mod:`varnext_ray.arch_schema`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

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

from varnext_ray.arch_registries import (
    ACTIVATIONS,
    LATENT_KINDS,
    MIRROR_UPSAMPLES,
    NORMS,
    RECONSTRUCTIONS,
    UPSAMPLE_MODES,
)


def one_of(registry: dict[str, Any]) -> AfterValidator:
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
Activation = Annotated[str, Strict(), one_of(ACTIVATIONS)]
STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class InputShape(BaseModel):
    """The frames the model reads: ``channels`` x ``height`` x ``width``, floats in [0, 1]."""

    model_config = STRICT
    channels: PosInt = 3
    height: PosInt
    width: PosInt

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return (self.channels, self.height, self.width)


class ConvLayer(BaseModel):
    """One encoder conv2d layer, followed by its norm, activation and dropout."""

    model_config = STRICT
    out_channels: PosInt
    kernel_size: PosInt
    stride: PosInt = 1
    padding: NonNegInt = 0
    norm: Annotated[str, Strict(), one_of(NORMS)] = "none"
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

    model_config = STRICT
    kind: Literal["upsample"]
    mode: Annotated[str, Strict(), one_of(UPSAMPLE_MODES)] = "nearest"
    scale: PosInt = 2
    output_padding: Annotated[tuple[SignedInt, SignedInt], BeforeValidator(_pair)] = (0, 0)
    out_channels: PosInt
    kernel_size: PosInt = 3
    padding: NonNegInt = 1
    norm: Annotated[str, Strict(), one_of(NORMS)] = "none"
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

    model_config = STRICT
    conv: tuple[ConvLayer, ...] = ()
    linear: tuple[PosInt, ...] = ()
    linear_activation: Activation = "relu"
    linear_dropout: Dropout = 0.0


class DecoderConfig(BaseModel):
    """Explicit decoder: latent -> linear layers -> encoder's conv output shape -> layers.

    ``layers`` mixes conv-transpose and upsample layers; older files name the list
    ``conv_transpose`` (read the same, saved as ``layers``).
    """

    model_config = STRICT
    linear: tuple[PosInt, ...] = ()
    linear_activation: Activation = "relu"
    layers: tuple[DecoderLayer, ...] = Field(
        (), validation_alias=AliasChoices("layers", "conv_transpose")
    )


class MirrorDecoder(BaseModel):
    """``{"mirror": true, "upsample": ...}``: the encoder reversed, growing the image by
    conv-transpose layers (``"transpose"``, what ``"mirror"`` means) or by upsample layers."""

    model_config = STRICT
    mirror: Annotated[Literal[True], BeforeValidator(_true)]
    upsample: Annotated[str, Strict(), one_of(dict.fromkeys(MIRROR_UPSAMPLES))] = "transpose"


class FlatLatent(BaseModel):
    """A vector latent of ``dim`` elements (``"latent_dim": dim`` is the shorthand)."""

    model_config = STRICT
    kind: Literal["flat"]
    dim: PosInt


class SpatialLatent(BaseModel):
    """A ``channels`` x h x w latent map on the encoder's last feature map (h x w): 1x1 convs
    give mu and logvar; the decoder projects it back to the feature channels with a
    ``project_kernel_size`` conv (odd, size-preserving)."""

    model_config = STRICT
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

    model_config = STRICT
    reconstruction: Annotated[str, Strict(), one_of(RECONSTRUCTIONS)] = "mse"
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
