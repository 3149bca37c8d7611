"""Hypothesis strategies for random valid architecture dicts (tiny, odd input sizes): flat and
spatial latents, conv-transpose and upsample (nearest, bilinear) mirror decoders."""

from __future__ import annotations

from typing import Any

from hypothesis import assume
from hypothesis import strategies as st

from varnext_ray.arch import (
    ACTIVATIONS,
    MIRROR_UPSAMPLES,
    conv_out,
    parse_arch,
    resolve_decoder,
)
from varnext_ray.errors import UserError


@st.composite
def _conv_layer(draw: st.DrawFn, size: int) -> dict[str, Any] | None:
    """One conv layer that keeps a ``size``-pixel side at >= 1 pixel, or None if none fits."""
    k = draw(st.integers(1, 5))
    p = draw(st.integers(0, k - 1))
    if size + 2 * p < k:
        return None
    channels = draw(st.sampled_from([1, 2, 4, 6]))
    layer: dict[str, Any] = {
        "out_channels": channels,
        "kernel_size": k,
        "stride": draw(st.integers(1, 3)),
        "padding": p,
        "norm": draw(st.sampled_from(["none", "batch", "group"])),
        "activation": draw(st.sampled_from(sorted(ACTIVATIONS))),
        "dropout": draw(st.sampled_from([0.0, 0.0, 0.2])),
    }
    if layer["norm"] == "group":
        layer["groups"] = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
    return layer


@st.composite
def arch_dicts(draw: st.DrawFn, max_depth: int = 6) -> dict[str, Any]:
    """A valid architecture: 1 to ``max_depth`` conv layers on an odd-sized tiny image."""
    height, width = draw(st.integers(3, 16)) * 2 + 1, draw(st.integers(3, 20)) * 2 + 1
    conv, size = [], min(height, width)
    for _ in range(draw(st.integers(1, max_depth))):
        layer = draw(_conv_layer(size))
        if layer is None:
            break
        conv.append(layer)
        size = conv_out(size, layer["kernel_size"], layer["stride"], layer["padding"])
    reconstruction = draw(st.sampled_from(["mse", "bce", "l1", "calibrated"]))
    output = "sigmoid" if reconstruction == "bce" else draw(st.sampled_from(["sigmoid", "none"]))
    spatial = draw(st.booleans())
    latent: dict[str, Any] = (
        {
            "latent": {
                "kind": "spatial",
                "channels": draw(st.integers(1, 4)),
                "project_kernel_size": draw(st.sampled_from([1, 3])),
            }
        }
        if spatial
        else {"latent_dim": draw(st.integers(1, 6))}
    )
    upsample = draw(st.sampled_from(MIRROR_UPSAMPLES))
    data = {
        "input": {"channels": draw(st.sampled_from([1, 3])), "height": height, "width": width},
        "encoder": {
            "conv": conv,
            "linear": [] if spatial else draw(st.lists(st.integers(1, 12), max_size=2)),
            "linear_activation": draw(st.sampled_from(sorted(ACTIVATIONS))),
        },
        **latent,
        "decoder": draw(st.sampled_from(["mirror", {"mirror": True, "upsample": upsample}])),
        "output_activation": output,
        "loss": {
            "reconstruction": reconstruction,
            "beta": draw(st.floats(0.0, 4.0)),
            "kl_warmup_epochs": draw(st.integers(0, 3)),
            "free_bits": draw(st.sampled_from([0.0, 0.1])),
        },
    }
    assume(_normalisable(data))
    if draw(st.integers(0, 3)) == 0:  # an explicit decoder mixing the two kinds of layer
        data["decoder"] = draw(_mixed_decoder(data))
    return data


def _normalisable(data: dict[str, Any]) -> bool:
    """False for the one kind of drawn architecture that is refused: a group norm of one value
    per group (its layer's map shrank to 1x1 with one channel per group)."""
    try:
        parse_arch(data, "strategy")
    except UserError as err:
        return "group norm of one value per group" not in str(err)
    return True


@st.composite
def _mixed_decoder(draw: st.DrawFn, data: dict[str, Any]) -> dict[str, Any]:
    """The mirror written out with each layer a conv-transpose or an upsample layer (both land
    on the matching encoder layer's input size, so any mix is a valid decoder)."""
    mode = draw(st.sampled_from(["nearest", "bilinear"]))
    by_transpose = resolve_decoder(parse_arch({**data, "decoder": "mirror"}, "strategy"))
    upsampling = {**data, "decoder": {"mirror": True, "upsample": mode}}
    by_upsample = resolve_decoder(parse_arch(upsampling, "strategy"))
    layers = [
        (u if draw(st.booleans()) else t).model_dump(mode="json")
        for t, u in zip(by_transpose.layers, by_upsample.layers, strict=True)
    ]
    return {**by_transpose.model_dump(mode="json"), "layers": layers}
