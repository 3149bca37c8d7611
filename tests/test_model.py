"""The VAE built from architectures: shapes, gradients, the ELBO parts and extrapolation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from arch_strategies import arch_dicts
from hypothesis import given, settings
from torch import nn

from varnext_ray.arch import (
    LossConfig,
    count_params,
    latent_shape,
    layer_table,
    load_arch,
    parse_arch,
)
from varnext_ray.errors import UserError
from varnext_ray.model import (
    build_vae,
    elbo_loss,
    extrapolate,
    kl_per_dim,
    kl_weight,
    latent_curvature_penalty,
    rollout,
    vae_loss,
)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_builds_and_lands_on_input(path: Path) -> None:
    cfg = load_arch(path)
    vae = build_vae(cfg).eval()
    assert sum(p.numel() for p in vae.parameters()) == count_params(cfg)
    x = torch.rand(1, *cfg.input.shape)  # (1, C, H, W)
    with torch.no_grad():
        recon, mu, logvar = vae(x)
    assert recon.shape == x.shape
    assert mu.shape == logvar.shape == (1, *latent_shape(cfg))
    assert mu[0].numel() == cfg.latent_dim
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0  # sigmoid output


def _conv_output_shapes(vae: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Output shapes (without batch) of every conv and conv-transpose layer, in call order."""
    shapes: list[tuple[int, ...]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
        for m in vae.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    vae(x)
    for hook in hooks:
        hook.remove()
    return shapes


@settings(max_examples=30, deadline=None)
@given(arch_dicts())
def test_random_architecture_trains_one_step(data: dict[str, Any]) -> None:
    cfg = parse_arch(data, "hypothesis")
    torch.manual_seed(0)
    vae = build_vae(cfg)
    x = torch.rand(2, *cfg.input.shape)  # (B, C, H, W), odd H and W
    recon, mu, logvar = vae(x)
    assert recon.shape == x.shape
    parts = elbo_loss(recon, x, mu, logvar, cfg.loss, epoch=0)
    assert all(torch.isfinite(v) for v in parts.values())
    parts["loss"].backward()
    for name, param in vae.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
    assert sum(p.numel() for p in vae.parameters()) == count_params(cfg)
    predicted = [r.shape for r in layer_table(cfg) if "conv" in r.detail]  # incl. 1x1 heads
    assert _conv_output_shapes(vae, x) == predicted


def test_encode_decode_shapes_and_wrong_input() -> None:
    cfg = load_arch(REPO / "configs" / "smoke_64x36.json")
    vae = build_vae(cfg)
    mu, logvar = vae.encode(torch.rand(4, 3, 36, 64))
    assert mu.shape == logvar.shape == (4, 4, 5, 8)  # spatial: 4 channels at 1/8 size
    assert vae.decode(torch.zeros(5, 4, 5, 8)).shape == (5, 3, 36, 64)
    with pytest.raises(
        ValueError, match=r"VAE input must be \(B, 3, 36, 64\) \(got \(2, 3, 64, 36\)\)"
    ):
        vae.encode(torch.rand(2, 3, 64, 36))


def test_reparameterize_and_mean_decoding() -> None:
    vae = build_vae(load_arch(REPO / "configs" / "smoke_64x36.json")).eval()
    mu = torch.randn(3, 4, 5, 8)
    assert torch.allclose(vae.reparameterize(mu, torch.full_like(mu, -30.0)), mu, atol=1e-5)
    x = torch.rand(2, 3, 36, 64)
    with torch.no_grad():
        a, _, _ = vae(x, sample=False)
        b, _, _ = vae(x, sample=False)
    assert torch.equal(a, b)


def test_kl_of_standard_normal_is_zero_and_known_values() -> None:
    zeros = torch.zeros(2, 4)
    assert torch.equal(kl_per_dim(zeros, zeros), zeros)
    # KL(N(1, 1) || N(0, 1)) = 1/2 per dimension; KL(N(0, e) || N(0, 1)) = (e - 1 - 1) / 2.
    assert torch.allclose(kl_per_dim(torch.ones(1, 2), torch.zeros(1, 2)), torch.full((1, 2), 0.5))
    expected = 0.5 * (math.e - 2.0)
    assert math.isclose(
        float(kl_per_dim(torch.zeros(1, 1), torch.ones(1, 1))), expected, rel_tol=1e-6
    )


def test_elbo_parts_are_per_sample_means() -> None:
    x = torch.ones(2, 1, 2, 2)  # 4 pixels per sample
    recon = torch.zeros(2, 1, 2, 2)
    mu, logvar = torch.ones(2, 3), torch.zeros(2, 3)  # KL 0.5 * 3 = 1.5 per sample
    parts = elbo_loss(recon, x, mu, logvar, LossConfig(beta=2.0), epoch=0)
    assert float(parts["recon"]) == pytest.approx(4.0)
    assert float(parts["kl"]) == pytest.approx(1.5)
    assert float(parts["loss"]) == pytest.approx(4.0 + 2.0 * 1.5)
    l1 = elbo_loss(recon + 0.5, x, mu, logvar, LossConfig(reconstruction="l1"), epoch=0)
    assert float(l1["recon"]) == pytest.approx(2.0)
    bce = elbo_loss(torch.full_like(x, 0.5), x, mu, logvar, LossConfig(reconstruction="bce"), 0)
    assert float(bce["recon"]) == pytest.approx(4 * math.log(2.0), rel=1e-6)


def test_vae_loss_adds_the_weighted_curvature_only_on_triplets() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 2, 2, generator=g)  # 2 triplets stacked as [x1; x2; x3]
    recon = torch.rand(6, 1, 2, 2, generator=g)
    mu, logvar = torch.randn(6, 3, generator=g), torch.zeros(6, 3)
    cfg = LossConfig(beta=0.5, linearity_weight=4.0)
    elbo = elbo_loss(recon, x, mu, logvar, cfg, epoch=0)
    frames = vae_loss(recon, x, mu, logvar, cfg, 0, triplets=False)
    assert float(frames["loss"]) == pytest.approx(float(elbo["loss"]))
    assert "curvature" not in frames
    triplets = vae_loss(recon, x, mu, logvar, cfg, 0, triplets=True)
    curvature = latent_curvature_penalty(*mu.chunk(3))
    assert float(triplets["curvature"]) == pytest.approx(float(curvature))
    assert float(triplets["loss"]) == pytest.approx(float(elbo["loss"]) + 4.0 * float(curvature))
    unweighted = vae_loss(recon, x, mu, logvar, LossConfig(beta=0.5), 0, triplets=True)
    assert float(unweighted["loss"]) == pytest.approx(float(elbo["loss"]))  # reported, not added


def test_kl_warmup_and_free_bits() -> None:
    warm = LossConfig(beta=2.0, kl_warmup_epochs=4)
    assert [kl_weight(warm, e) for e in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert kl_weight(LossConfig(beta=3.0), 0) == 3.0
    x = recon = torch.zeros(2, 1, 2, 2)
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)  # KL 0 in every dimension
    parts = elbo_loss(recon, x, mu, logvar, LossConfig(free_bits=0.25), epoch=0)
    assert float(parts["kl"]) == 0.0  # the raw KL is reported
    assert float(parts["loss"]) == pytest.approx(3 * 0.25)  # each dimension floored at 0.25
    big = elbo_loss(recon, x, torch.full((2, 3), 2.0), logvar, LossConfig(free_bits=0.25), 0)
    assert float(big["loss"]) == pytest.approx(float(big["kl"]))  # above the floor: no change


def test_extrapolate_stays_on_the_line() -> None:
    a, d = torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[0.5, 1.0, -1.0]])
    z1, z2 = a, a + d
    assert torch.allclose(extrapolate(z1, z2), a + 2 * d)
    assert torch.allclose(extrapolate(z1, z2, k=3), a + 4 * d)
    path = rollout(z1, z2, steps=4)  # (steps, B, D)
    assert path.shape == (4, 1, 3)
    for k in range(1, 5):
        assert torch.allclose(path[k - 1], a + (k + 1) * d)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        rollout(z1, z2, steps=0)


def test_latent_curvature_penalty_is_zero_on_a_line_and_its_gradient_straightens() -> None:
    g = torch.Generator().manual_seed(0)
    mu1, d = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    assert latent_curvature_penalty(mu1, mu1 + d, mu1 + 2 * d).item() == pytest.approx(
        0.0, abs=1e-10
    )
    bend = torch.randn(4, 6, generator=g)
    mu3 = (mu1 + 2 * d + bend).requires_grad_(True)
    # the second difference is `bend`: ||bend||^2 summed over D, averaged over the batch
    loss = latent_curvature_penalty(mu1, mu1 + d, mu3)
    assert loss.item() == pytest.approx(bend.pow(2).sum(1).mean().item(), rel=1e-5)
    loss.backward()
    torch.testing.assert_close(mu3.grad, 2 * bend / 4)


def test_linearity_weight_is_an_architecture_field() -> None:
    cfg = json.loads((REPO / "configs" / "smoke_64x36.json").read_text())
    assert parse_arch(cfg, "smoke").loss.linearity_weight == 0.0
    cfg["loss"]["linearity_weight"] = 3.5
    assert parse_arch(cfg, "smoke").loss.linearity_weight == 3.5
    cfg["loss"]["linearity_weight"] = -1
    with pytest.raises(UserError, match=r"loss\.linearity_weight: must be >= 0"):
        parse_arch(cfg, "smoke")


def test_linearity_key_of_older_files_still_loads_as_the_weight() -> None:
    cfg = json.loads((REPO / "configs" / "smoke_64x36.json").read_text())
    cfg["loss"]["linearity"] = 2.0
    arch = parse_arch(cfg, "old")
    assert arch.loss.linearity_weight == 2.0
    assert arch.to_dict()["loss"]["linearity_weight"] == 2.0  # saved under the new key


def test_calibrated_reconstruction_matches_a_hand_computation() -> None:
    x = torch.zeros(2, 1, 1, 2)  # D = 2 values per frame
    recon = torch.tensor([[[[0.1, 0.3]]], [[[0.0, 0.2]]]])
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)  # KL 0
    parts = elbo_loss(recon, x, mu, logvar, LossConfig(reconstruction="calibrated"), epoch=0)
    var = (0.01 + 0.09 + 0.0 + 0.04) / 4  # the batch MSE: sigma^2
    per_frame = [2 / 2 * math.log(2 * math.pi * var) + sq / (2 * var) for sq in (0.10, 0.04)]
    assert float(parts["recon"]) == pytest.approx(sum(per_frame) / 2, rel=1e-5)
    assert float(parts["loss"]) == pytest.approx(float(parts["recon"]))


def test_calibrated_variance_is_floored_and_carries_no_gradient() -> None:
    x = torch.full((1, 1, 2, 2), 0.5)
    exact = elbo_loss(x.clone(), x, torch.zeros(1, 1), torch.zeros(1, 1), LossConfig(), 0)
    assert float(exact["recon"]) == 0.0  # mse
    cfg = LossConfig(reconstruction="calibrated")
    floor = elbo_loss(x.clone(), x, torch.zeros(1, 1), torch.zeros(1, 1), cfg, 0)
    assert float(floor["recon"]) == pytest.approx(2 * math.log(2 * math.pi * 1e-6), rel=1e-6)
    recon = (x + 0.1).requires_grad_(True)
    elbo_loss(recon, x, torch.zeros(1, 1), torch.zeros(1, 1), cfg, 0)["recon"].backward()
    # d/d xhat of (x - xhat)^2 / (2 sigma^2) with sigma^2 = 0.01 held fixed: 0.1 / 0.01 = 10
    torch.testing.assert_close(recon.grad, torch.full_like(x, 10.0))


def test_spatial_latent_extrapolates_rolls_out_and_scores() -> None:
    cfg = load_arch(REPO / "configs" / "smoke_64x36.json")
    vae = build_vae(cfg).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 36, 64, generator=g)  # 2 triplets stacked
    with torch.no_grad():
        recon, mu, logvar = vae(x)
        z1, z2 = mu[:2], mu[2:4]  # (2, 4, 5, 8)
        assert extrapolate(z1, z2).shape == (2, 4, 5, 8)
        path = rollout(z1, z2, steps=3)
        assert path.shape == (3, 2, 4, 5, 8)
        assert vae.decode(path[2]).shape == (2, 3, 36, 64)
        torch.testing.assert_close(path[1], z2 + 2 * (z2 - z1))
    cfg_loss = LossConfig(reconstruction="calibrated", free_bits=0.1, linearity_weight=1.0)
    parts = vae_loss(recon, x, mu, logvar, cfg_loss, 0, triplets=True)
    assert all(torch.isfinite(v) for v in parts.values())
    expected = kl_per_dim(mu, logvar).flatten(1).sum(1).mean()
    assert float(parts["kl"]) == pytest.approx(float(expected))
    bend = mu[4:] - 2 * mu[2:4] + mu[:2]
    assert float(parts["curvature"]) == pytest.approx(float(bend.pow(2).sum((1, 2, 3)).mean()))


def test_old_flat_model_keeps_its_parameter_names() -> None:
    """Checkpoints saved before spatial latents load: a flat model's state_dict is unchanged."""
    cfg = parse_arch(
        {
            "input": {"height": 9, "width": 9},
            "encoder": {"conv": [{"out_channels": 2, "kernel_size": 3, "stride": 2}]},
            "latent_dim": 2,
        },
        "old",
    )
    names = list(build_vae(cfg).state_dict())
    assert names == [
        "features.0.weight",
        "features.0.bias",
        "mu_head.weight",
        "mu_head.bias",
        "logvar_head.weight",
        "logvar_head.bias",
        "decoder.0.weight",
        "decoder.0.bias",
        "decoder.3.weight",
        "decoder.3.bias",
    ]
