"""The VAE built from a JSON architecture, its loss, and latent extrapolation.

Plain builder functions wire ``nn`` modules from an :class:`~varnext_ray.arch.ArchConfig`;
layer shapes and parameter counts match :func:`varnext_ray.arch.layer_table` exactly (a test
checks it). Inputs are frames as floats in [0, 1], shaped (B, C, H, W). Latents are (B, D)
for a flat latent and (B, C', h, w) for a spatial one (written (B, *Z) below); extrapolation
and the losses work on either.

Example:
    >>> cfg = load_arch("configs/smoke_64x36.json")
    >>> vae = build_vae(cfg)
    >>> recon, mu, logvar = vae(torch.rand(2, 3, 36, 64))
    >>> parts = vae_loss(recon, x, mu, logvar, cfg.loss, epoch=0, triplets=False)
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from varnext_ray.arch import (
    ACTIVATIONS,
    NORMS,
    OUTPUT_ACTIVATIONS,
    RECONSTRUCTIONS,
    UPSAMPLE_MODES,
    ArchConfig,
    ConvLayer,
    ConvTransposeLayer,
    LossConfig,
    UpsampleLayer,
    decoder_shapes,
    encoder_shapes,
    latent_shape,
    resolve_decoder,
    upsampled_size,
)

# logvar is clamped to this range (as in diffusers' DiagonalGaussianDistribution) so that
# exp(logvar) neither overflows nor underflows early in training.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class VAE(nn.Module):
    """A VAE: conv encoder -> (mu, logvar) heads -> sampled z -> decoder.

    Build it with :func:`build_vae`; ``config`` is the architecture it was built from. A flat
    latent is (B, D) (linear heads on the flattened features); a spatial one (B, C', h, w)
    (1x1 conv heads on the last feature map).
    """

    def __init__(
        self,
        *,
        features: nn.Module,
        mu_head: nn.Module,
        logvar_head: nn.Module,
        decoder: nn.Module,
        config: ArchConfig,
    ) -> None:
        super().__init__()
        self.features = features  # (B, C, H, W) -> (B, F) flat, (B, F, h, w) spatial
        self.mu_head = mu_head  # -> (B, *Z)
        self.logvar_head = logvar_head  # -> (B, *Z)
        self.decoder = decoder  # (B, *Z) -> (B, C, H, W)
        self.config = config

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (B, C, H, W) in [0, 1] -> (mu, logvar), each (B, D) or (B, C', h, w)."""
        expected = self.config.input.shape
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"VAE input must be (B, {', '.join(map(str, expected))}) (got {tuple(x.shape)});"
                " resize the frames to the architecture's input size"
            )
        h = self.features(x)  # (B, F) or (B, F, h, w)
        logvar = self.logvar_head(h).clamp(LOGVAR_MIN, LOGVAR_MAX)  # (B, *Z)
        return self.mu_head(h), logvar

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """A sample z = mu + sigma * eps, differentiable in mu and logvar; (B, *Z)."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, *Z) -> frames (B, C, H, W)."""
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, *, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(recon, mu, logvar); ``sample=False`` decodes the mean instead of a sample."""
        mu, logvar = self.encode(x)  # (B, *Z), (B, *Z)
        z = self.reparameterize(mu, logvar) if sample else mu  # (B, *Z)
        return self.decode(z), mu, logvar  # (B, C, H, W), (B, *Z), (B, *Z)


def _after(layer: ConvLayer | UpsampleLayer) -> list[nn.Module]:
    """The norm, activation and dropout that follow a conv or conv-transpose layer."""
    norm = NORMS[layer.norm]
    mods = [] if norm is None else [norm(layer.out_channels, layer.groups)]
    if layer.activation != "none":
        mods.append(ACTIVATIONS[layer.activation]())
    if layer.dropout > 0:
        mods.append(nn.Dropout2d(layer.dropout))
    return mods


def _linear_stack(sizes: list[int], activation: str, dropout: float = 0.0) -> list[nn.Module]:
    """Linear layers sizes[0] -> sizes[1] -> ..., each followed by activation (and dropout)."""
    mods: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        mods += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
        if dropout > 0:
            mods.append(nn.Dropout(dropout))
    return mods


def build_encoder(cfg: ArchConfig) -> tuple[nn.Sequential, nn.Module, nn.Module]:
    """The feature extractor and the mu and logvar heads: flat, (B, C, H, W) -> (B, F) and
    linear heads (B, F) -> (B, D); spatial, (B, C, H, W) -> (B, F, h, w) and 1x1 conv heads
    (B, F, h, w) -> (B, C', h, w)."""
    shapes, enc = encoder_shapes(cfg), cfg.encoder
    mods: list[nn.Module] = []
    for layer, (c_in, _, _) in zip(enc.conv, shapes[:-1], strict=True):
        k, s, p = layer.kernel_size, layer.stride, layer.padding
        mods.append(nn.Conv2d(c_in, layer.out_channels, k, s, p, bias=layer.norm == "none"))
        mods += _after(layer)
    if cfg.latent.kind == "spatial":
        f, c = shapes[-1][0], cfg.latent.channels
        return nn.Sequential(*mods), nn.Conv2d(f, c, 1), nn.Conv2d(f, c, 1)
    mods.append(nn.Flatten())  # (B, C', H', W') -> (B, C'*H'*W')
    sizes = [math.prod(shapes[-1]), *enc.linear]
    mods += _linear_stack(sizes, enc.linear_activation, enc.linear_dropout)
    heads = (nn.Linear(sizes[-1], cfg.latent_dim), nn.Linear(sizes[-1], cfg.latent_dim))
    return nn.Sequential(*mods), *heads


def _project(cfg: ArchConfig, start: tuple[int, int, int]) -> list[nn.Module]:
    """The latent (B, *Z) -> the encoder's last feature map (B, F, h, w), before activation:
    linear layers, a linear projection and a reshape (flat), or one conv (spatial)."""
    dec = resolve_decoder(cfg)
    if cfg.latent.kind == "spatial":
        k = cfg.latent.project_kernel_size
        return [nn.Conv2d(latent_shape(cfg)[0], start[0], k, 1, (k - 1) // 2)]
    sizes = [cfg.latent_dim, *dec.linear]
    mods = _linear_stack(sizes, dec.linear_activation)
    mods.append(nn.Linear(sizes[-1], math.prod(start)))  # project to the conv volume
    return mods


def _decoder_layer(
    layer: ConvTransposeLayer | UpsampleLayer, c_in: int, h: int, w: int
) -> list[nn.Module]:
    """One decoder layer on a (B, c_in, h, w) input, with its norm, activation and dropout."""
    k, p, c, bias = layer.kernel_size, layer.padding, layer.out_channels, layer.norm == "none"
    if isinstance(layer, UpsampleLayer):
        up = nn.Upsample(size=upsampled_size(layer, h, w), **UPSAMPLE_MODES[layer.mode])
        mods = [up, nn.Conv2d(c_in, c, k, 1, p, bias=bias)]
    else:
        s, op = layer.stride, layer.output_padding
        mods = [nn.ConvTranspose2d(c_in, c, k, s, p, op, bias=bias)]
    return mods + _after(layer)


def build_decoder(cfg: ArchConfig) -> nn.Sequential:
    """The decoder (B, *Z) -> (B, C, H, W); a mirror one is resolved by shape inference."""
    dec, start = resolve_decoder(cfg), encoder_shapes(cfg)[-1]  # start: (C', H', W')
    mods = _project(cfg, start)
    if dec.layers and dec.linear_activation != "none":
        mods.append(ACTIVATIONS[dec.linear_activation]())
    if cfg.latent.kind == "flat":
        mods.append(nn.Unflatten(1, start))  # (B, C'*H'*W') -> (B, C', H', W')
    shapes = decoder_shapes(cfg, start)
    for layer, (c_in, h, w) in zip(dec.layers, shapes[:-1], strict=True):
        mods += _decoder_layer(layer, c_in, h, w)
    mods.append(OUTPUT_ACTIVATIONS[cfg.output_activation]())
    return nn.Sequential(*mods)


def build_vae(cfg: ArchConfig) -> VAE:
    """The VAE an architecture describes; parameters match :func:`~varnext_ray.arch.count_params`.

    Example:
        >>> vae = build_vae(load_arch("configs/small_160x90.json"))
    """
    features, mu_head, logvar_head = build_encoder(cfg)
    decoder = build_decoder(cfg)
    return VAE(
        features=features, mu_head=mu_head, logvar_head=logvar_head, decoder=decoder, config=cfg
    )


def kl_weight(loss_cfg: LossConfig, epoch: int) -> float:
    """beta, scaled by min(1, (epoch + 1) / kl_warmup_epochs) during warm-up (epoch from 0)."""
    if loss_cfg.kl_warmup_epochs <= 0:
        return loss_cfg.beta
    return loss_cfg.beta * min(1.0, (epoch + 1) / loss_cfg.kl_warmup_epochs)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per sample and latent element; (B, *Z) -> (B, *Z)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def elbo_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    loss_cfg: LossConfig,
    epoch: int,
) -> dict[str, torch.Tensor]:
    """The negative ELBO and its parts, each a per-sample mean over the batch.

    ``recon`` sums the elementwise reconstruction loss over (C, H, W) (``"calibrated"``: the
    Gaussian NLL with the optimal shared variance, sigma^2 = the batch MSE, detached); ``kl``
    sums the KL over latent elements. ``loss = recon + kl_weight(epoch) * kl_term``, where with
    free bits ``kl_term`` sums max(free_bits, batch-mean KL) per element (Kingma et al., 2016).

    Args:
        recon: Decoded frames (B, C, H, W).
        x: Target frames (B, C, H, W) in [0, 1].
        mu: Latent means (B, D) or (B, C', h, w).
        logvar: Latent log-variances, the same shape.
        loss_cfg: The architecture's ``loss`` section.
        epoch: The current epoch, from 0 (for KL warm-up).

    Returns:
        ``{"loss", "recon", "kl"}``, scalar tensors; ``kl`` is the raw KL.
    """
    per_pixel = RECONSTRUCTIONS[loss_cfg.reconstruction](recon, x, reduction="none")
    recon_term = per_pixel.flatten(1).sum(1).mean()  # (B, C*H*W) -> scalar
    kl_dims = kl_per_dim(mu, logvar).flatten(1)  # (B, D): every latent element
    kl = kl_dims.sum(1).mean()
    kl_term = kl
    if loss_cfg.free_bits > 0:
        kl_term = kl_dims.mean(0).clamp(min=loss_cfg.free_bits).sum()  # (D,) -> scalar
    loss = recon_term + kl_weight(loss_cfg, epoch) * kl_term
    return {"loss": loss, "recon": recon_term, "kl": kl}


def latent_curvature_penalty(
    mu1: torch.Tensor, mu2: torch.Tensor, mu3: torch.Tensor
) -> torch.Tensor:
    """The latent curvature ||mu3 - 2 mu2 + mu1||^2, summed over latent elements, batch mean.

    The latent second difference of frames t, t+s, t+2s: zero exactly when the three means lie
    on a straight line at constant speed, which is what :func:`extrapolate` assumes.
    (B, *Z) x 3 -> scalar.
    """
    return (mu3 - 2 * mu2 + mu1).pow(2).flatten(1).sum(1).mean()


def vae_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    loss_cfg: LossConfig,
    epoch: int,
    *,
    triplets: bool,
) -> dict[str, torch.Tensor]:
    """The whole objective, the same quantity for training and validation.

    ``loss`` is the negative ELBO (:func:`elbo_loss`, same arguments) plus, when ``triplets``
    is set, ``loss.linearity_weight`` times :func:`latent_curvature_penalty` of the means. With
    ``triplets``, ``x`` (and so ``recon``, ``mu``, ``logvar``) stacks the frames t, t+s and t+2s
    of B triplets: (3B, C, H, W) as [x(t); x(t+s); x(t+2s)].

    Returns:
        ``{"loss", "recon", "kl"}`` per frame, and with ``triplets`` the ``curvature`` per
        triplet (reported whether or not it is weighted in).
    """
    parts = elbo_loss(recon, x, mu, logvar, loss_cfg, epoch)
    if triplets:
        parts["curvature"] = latent_curvature_penalty(*mu.chunk(3))  # (B, *Z) x 3 -> scalar
        if loss_cfg.linearity_weight > 0:
            parts["loss"] = parts["loss"] + loss_cfg.linearity_weight * parts["curvature"]
    return parts


def unwrap_model(model: nn.Module) -> VAE:
    """The VAE inside DDP (``.module``) and/or torch.compile (``._orig_mod``)."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def extrapolate(z1: torch.Tensor, z2: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The latent k steps past z2 on the line through z1 and z2: z2 + k * (z2 - z1); any shape."""
    return z2 + k * (z2 - z1)


def rollout(z1: torch.Tensor, z2: torch.Tensor, steps: int) -> torch.Tensor:
    """Extrapolations for horizons 1..steps, stacked: (steps, B, *Z) for z1, z2 of (B, *Z)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1 (got {steps})")
    return torch.stack([extrapolate(z1, z2, k) for k in range(1, steps + 1)])
