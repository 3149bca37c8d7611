"""Shape inference of an architecture: each layer's output (C, H, W), without torch.

Runs once every field is well-typed (:class:`~varnext_ray.arch_schema.ArchConfig` validates
with :func:`shape_problems`): the image must not shrink to nothing, and the decoder must land
on the input shape. A mirror decoder is expanded here (:func:`resolve_decoder`) with the exact
``output_padding`` that brings each layer back to its encoder layer's input size.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from varnext_ray.arch_sections import (
    ConvLayer,
    ConvTransposeLayer,
    DecoderConfig,
    MirrorDecoder,
    UpsampleLayer,
)

if TYPE_CHECKING:
    from varnext_ray.arch_schema import ArchConfig

Shape = tuple[int, ...]  # (C, H, W) for images, (N,) for vectors


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
