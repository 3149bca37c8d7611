"""The architecture schema: :class:`ArchConfig`, the whole config, and its cross-section checks.

Users and other stages import these names from :mod:`varnext_ray.arch`, which adds loading,
error reporting and the layer table. What makes a config *valid* is held by stage: the closed
registries of choices (:mod:`varnext_ray.arch_registries`), the sections' typed fields with
bounds and per-layer consistency (:mod:`varnext_ray.arch_sections`), and the shape checks that
run once every field is well-typed (:mod:`varnext_ray.arch_shapes`: the image must not shrink
to nothing; the decoder must land on the input shape). This module joins them: the latent's
form, the reconstruction against the output activation, and :data:`SECTIONS` for key hints.

Decoder size policy: see :mod:`varnext_ray.arch` (``output_padding`` from shape inference).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, Strict, model_validator
from pydantic_core import PydanticCustomError

from varnext_ray.arch_registries import OUTPUT_ACTIVATIONS
from varnext_ray.arch_sections import (
    STRICT,
    ConvLayer,
    ConvTransposeLayer,
    Decoder,
    DecoderConfig,
    EncoderConfig,
    FlatLatent,
    InputShape,
    Latent,
    LossConfig,
    MirrorDecoder,
    PosInt,
    SpatialLatent,
    UpsampleLayer,
    one_of,
)
from varnext_ray.arch_shapes import fmt_shape, latent_shape, shape_problems


class ArchConfig(BaseModel):
    """A whole architecture; construct it with :func:`parse_arch` or :func:`load_arch`.

    The latent is ``latent`` (flat or spatial) or the flat shorthand ``latent_dim``; once
    validated both are set: ``latent`` always, ``latent_dim`` to the latent's element count.
    """

    model_config = STRICT
    input: InputShape
    encoder: EncoderConfig = EncoderConfig()
    latent_dim: PosInt | None = None
    latent: Latent | None = None
    decoder: Decoder = "mirror"
    output_activation: Annotated[str, Strict(), one_of(OUTPUT_ACTIVATIONS)] = "sigmoid"
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
