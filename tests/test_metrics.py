"""Extrapolation metrics: hand-built cases with known answers, on the real VAE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from varnext_ray.arch import parse_arch
from varnext_ray.frame_scores import (
    MOTION_THRESHOLD,
    PSNR_CAP_DB,
    motion_mask,
    mse_per_sample,
    psnr,
    ssim_per_sample,
    ssim_window,
)
from varnext_ray.metrics import (
    LATENT_KEYS,
    SUM_KEYS,
    active_units,
    add_sums,
    all_reduce_sums,
    finalize,
    finalize_rollout,
    latent_linearity,
    motion_gain,
    prediction_sums,
    rollout_keys,
    rollout_sums,
    triplet_sums,
)
from varnext_ray.model import VAE, build_vae, extrapolate
from varnext_ray.prediction_pictures import prediction_strip, rollout_frames

H, W = 18, 32
TINY = {  # 3 conv layers on 32x18 frames
    "input": {"channels": 3, "height": H, "width": W},
    "encoder": {
        "conv": [
            {"out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1},
            {"out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1},
            {"out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1},
        ]
    },
    "latent_dim": 4,
}


@pytest.fixture
def vae() -> VAE:
    torch.manual_seed(0)
    return build_vae(parse_arch(TINY, "tiny")).eval()


def frames(b: int, seed: int) -> torch.Tensor:
    """(b, 3, H, W) uniform in [0, 1]."""
    return torch.rand(b, 3, H, W, generator=torch.Generator().manual_seed(seed))


def test_psnr_of_identical_frames_is_the_cap_and_known_values_match() -> None:
    x = frames(3, 0)
    assert torch.equal(psnr(x, x), torch.full((3,), PSNR_CAP_DB))
    off = (x * 0.5 + 0.1, x * 0.5)  # constant error 0.1 -> MSE 0.01 -> 20 dB
    assert mse_per_sample(*off) == pytest.approx([0.01] * 3, rel=1e-5)
    assert psnr(*off) == pytest.approx([20.0] * 3, rel=1e-5)


def test_latent_linearity_on_a_line_is_zero_and_scales_with_the_miss() -> None:
    g = torch.Generator().manual_seed(1)
    mu1, d = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    mu2, mu3 = mu1 + d, mu1 + 2 * d
    assert latent_linearity(extrapolate(mu1, mu2), mu2, mu3).abs().max() < 1e-5
    # the true step is twice the predicted one: the miss is d, the step 2d -> 0.5
    ratio = latent_linearity(extrapolate(mu1, mu2), mu2, mu2 + 2 * d)
    assert ratio == pytest.approx([0.5] * 5, rel=1e-5)
    # a latent that never moves: 0 / eps = 0, not NaN
    assert torch.equal(latent_linearity(mu1, mu1, mu1), torch.zeros(5))


def test_affine_encoder_on_frames_along_a_line_gives_linearity_near_zero() -> None:
    torch.manual_seed(0)
    linear = build_vae(parse_arch({"input": {"height": H, "width": W}, "latent_dim": 6}, "lin"))
    a = 0.2 + 0.2 * frames(4, 2)  # (4, 3, H, W) in [0.2, 0.4]
    d = 0.2 * frames(4, 3)
    metrics = finalize(triplet_sums(linear.eval(), a, a + d, a + 2 * d))
    assert metrics["latent_linearity"] < 1e-3


def test_skill_is_zero_when_the_prediction_is_the_last_frame(vae: VAE) -> None:
    for p in vae.decoder.parameters():  # decoder outputs sigmoid(0) = 0.5 for every latent
        torch.nn.init.zeros_(p)
    x1, x3 = frames(4, 4), frames(4, 5)
    x2 = torch.full_like(x1, 0.5)
    metrics = finalize(triplet_sums(vae, x1, x2, x3))
    assert metrics["extrap_mse"] == pytest.approx(metrics["copy_last_mse"], rel=1e-12)
    assert metrics["extrap_skill"] == pytest.approx(0.0, abs=1e-9)
    perfect = finalize(prediction_sums(x1, x2, x3, pred=x3, oracle=x3, latent_copy=x2))
    assert perfect["extrap_skill"] == 1.0
    assert perfect["extrap_psnr"] == perfect["oracle_psnr"] == PSNR_CAP_DB


def test_two_half_batches_finalize_to_the_whole_batch(vae: VAE) -> None:
    x1, x2, x3 = frames(6, 6), frames(6, 7), frames(6, 8)
    x3[:2] = x2[:2]  # two samples without motion: the motion averages must skip them
    whole = finalize(triplet_sums(vae, x1, x2, x3))
    halves = add_sums(
        triplet_sums(vae, x1[:3], x2[:3], x3[:3]), triplet_sums(vae, x1[3:], x2[3:], x3[3:])
    )
    split = finalize(all_reduce_sums(halves))  # no process group: a no-op
    assert split.keys() == whole.keys()
    for key, value in whole.items():
        assert split[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_sums_have_every_key_as_float64_scalars(vae: VAE) -> None:
    sums = triplet_sums(vae, frames(2, 9), frames(2, 10), frames(2, 11))
    assert set(sums) == set(SUM_KEYS)
    assert all(v.dtype == torch.float64 for v in sums.values())
    assert all(sums[k].dim() == 0 for k in SUM_KEYS if k not in LATENT_KEYS)
    assert sums["latent_sum"].shape == sums["latent_sq"].shape == (4,)  # one per latent element
    expected = {
        "extrap_mse",
        "extrap_psnr",
        "extrap_ssim",
        "copy_last_psnr",
        "copy_last_mse",
        "pixel_linear_psnr",
        "oracle_psnr",
        "extrap_skill",
        "latent_linearity",
        "extrap_psnr_motion",
        "copy_last_psnr_motion",
        "pixel_linear_psnr_motion",
        "oracle_psnr_motion",
        "latent_copy_psnr",
        "latent_copy_psnr_motion",
        "extrap_gain_db",
        "extrap_gain_db_motion",
        "decoder_sensitivity",
        "active_units",
        "latent_elements",
    }
    got = set(finalize(sums))  # motion_captured only when the oracle beats the latent copy
    assert got - {"motion_captured"} == expected


def test_motion_psnr_scores_only_changed_pixels() -> None:
    x2 = torch.zeros(1, 3, H, W)
    x3 = x2.clone()
    x3[:, 0, 2:6, 4:8] = 0.5  # 16 pixels move (in the red channel)
    x3[:, :, 10:12, 10:12] = MOTION_THRESHOLD / 2  # below the threshold: not motion
    mask = motion_mask(x2, x3)
    assert mask.shape == (1, H, W) and int(mask.sum()) == 16
    pred = x3.clone()
    metrics = finalize(prediction_sums(x2, x2, x3, pred=pred, oracle=pred, latent_copy=x2))
    # copy-last misses 0.5 in one of 3 channels on the moving pixels: MSE 0.25 / 3
    assert metrics["copy_last_psnr_motion"] == pytest.approx(10 * math.log10(12), rel=1e-5)
    assert metrics["extrap_psnr_motion"] == metrics["oracle_psnr_motion"] == PSNR_CAP_DB
    # x1 = x2: pixel-linear is copy-last here
    assert metrics["pixel_linear_psnr_motion"] == pytest.approx(10 * math.log10(12), rel=1e-5)


def test_a_static_set_finalizes_without_nan_or_undefined_keys() -> None:
    x = frames(3, 12)
    metrics = finalize(prediction_sums(x, x, x, pred=x, oracle=x, latent_copy=x))
    assert "extrap_skill" not in metrics  # copy-last is perfect: skill undefined
    assert "extrap_psnr_motion" not in metrics and "copy_last_psnr_motion" not in metrics
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["copy_last_psnr"] == PSNR_CAP_DB
    assert metrics["extrap_ssim"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("size", [(36, 64), (8, 8), (5, 9), (2, 4), (1, 1)])
def test_ssim_handles_frames_smaller_than_the_window(size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(13))
    assert ssim_per_sample(x, x) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert ssim_per_sample(x, 1 - x).shape == (2,)
    assert ssim_window(36, 64) == (11, 1.5)
    assert ssim_window(8, 8) == (7, 6 / 7) and ssim_window(2, 4) == (1, None)


@pytest.mark.parametrize("size", [(36, 64), (90, 160), (8, 8), (5, 9), (2, 4), (1, 1)])
def test_ssim_matches_torchmetrics(size: tuple[int, int]) -> None:
    """The in-house SSIM gives torchmetrics' values with the same window, on unrelated frames
    and on a noisy copy (ssim_per_sample is written out to keep torchmetrics' import, scipy
    and matplotlib, out of every Train worker)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    g = torch.Generator().manual_seed(7)
    x = torch.rand(3, 3, *size, generator=g)
    y = (x + 0.1 * torch.randn(3, 3, *size, generator=g)).clamp(0, 1)
    side, sigma = ssim_window(*size)
    window = (
        {"gaussian_kernel": True, "sigma": sigma}
        if sigma is not None
        else {"gaussian_kernel": False, "kernel_size": side}
    )
    for a, b in ((x, y), (x, torch.rand(3, 3, *size, generator=g))):
        ours = ssim_per_sample(a, b)
        theirs = structural_similarity_index_measure(
            a, b, data_range=1.0, reduction="none", **window
        )
        assert ours.shape == (3,)
        assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)


def test_prediction_strip_shape(vae: VAE) -> None:
    strip = prediction_strip(vae, frames(5, 14), frames(5, 15), frames(5, 16), n=4)
    assert strip.shape == (4 * H, 9 * W, 3) and strip.dtype == np.uint8
    x3 = frames(2, 17)
    few = prediction_strip(vae, x3, x3, x3, n=4)  # fewer triplets than n: one row each
    assert few.shape == (2 * H, 9 * W, 3)
    assert np.array_equal(few[:, :W], few[:, 2 * W : 3 * W])  # frame t == truth here


def test_rollout_horizon_one_is_the_triplet_metrics(vae: VAE) -> None:
    x = [frames(5, seed) for seed in range(5)]  # t .. t+4s: horizons 1..3
    sums = rollout_sums(vae, x)
    assert sums.shape == (1 + 3 * 3,) and sums.dtype == torch.float64
    rolled = finalize_rollout(sums, 3)
    assert list(rolled) == list(rollout_keys(3))
    single = finalize(triplet_sums(vae, *x[:3]))
    for name in ("extrap_psnr", "copy_last_psnr", "pixel_linear_psnr"):
        assert rolled[f"{name}_h1"] == pytest.approx(single[name], rel=1e-5), name
    # horizon k is scored on frame t+(k+1)s from the latent k steps along the line
    with torch.no_grad():
        mu1, mu2 = vae.encode(x[0])[0], vae.encode(x[1])[0]
        far = vae.decode(extrapolate(mu1, mu2, k=3)).clamp(0, 1)
    assert rolled["extrap_psnr_h3"] == pytest.approx(psnr(far, x[4]).mean().item(), rel=1e-5)
    assert rolled["copy_last_psnr_h3"] == pytest.approx(psnr(x[1], x[4]).mean().item(), rel=1e-5)
    # sums over two halves add up to the sums of the whole batch
    halves = rollout_sums(vae, [f[:2] for f in x]) + rollout_sums(vae, [f[2:] for f in x])
    torch.testing.assert_close(halves, sums)
    assert finalize_rollout(torch.zeros(10, dtype=torch.float64), 3) == {}


def test_rollout_frames_have_one_picture_per_step(vae: VAE) -> None:
    x = [frames(3, seed) for seed in range(6)]
    pictures = rollout_frames(vae, x, n=2)
    assert len(pictures) == 6 and pictures[0].shape == (2 * H, 2 * W, 3)
    # left tiles are the truth, as uint8
    np.testing.assert_array_equal(
        pictures[4][:H, :W], (x[4][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    )


# ---- collapse diagnostics (issue #15) ----------------------------------------------------------


class SpatialToy(torch.nn.Module):
    """encode: every 6th row and 8th column of the frame, (B, 3, 3, 4), as a spatial latent;
    decode: its nearest-neighbour upsampling back to (B, 3, H, W)."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = x[:, :, ::6, ::8]  # (B, 3, 3, 4)
        return mu, torch.zeros_like(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(z, size=(H, W), mode="nearest")


def test_a_model_that_ignores_its_latent_has_no_active_units_and_no_sensitivity(vae: VAE) -> None:
    for p in vae.parameters():  # mu = 0 for every frame; the decoder draws 0.5 everywhere
        torch.nn.init.zeros_(p)
    x1, x2, x3 = frames(6, 20), frames(6, 21), frames(6, 22)
    m = finalize(triplet_sums(vae, x1, x2, x3))
    assert m["active_units"] == 0 and m["latent_elements"] == 4
    assert m["decoder_sensitivity"] == 0.0
    assert m["extrap_gain_db"] == 0.0 and m["extrap_gain_db_motion"] == 0.0
    assert m["latent_copy_psnr"] == pytest.approx(m["oracle_psnr"], rel=1e-12)
    assert "motion_captured" not in m  # the oracle gains nothing over the latent copy
    assert "background_psnr" not in m  # no background given


def test_a_perfect_extrapolation_captures_all_of_the_motion() -> None:
    x1, x2 = frames(3, 23), frames(3, 24)
    x3 = (x2 + 0.3).clamp(0, 1)
    m = finalize(prediction_sums(x1, x2, x3, pred=x3, oracle=x3, latent_copy=x2))
    assert m["motion_captured"] == 1.0
    assert m["extrap_gain_db_motion"] == PSNR_CAP_DB - m["latent_copy_psnr_motion"]
    assert m["decoder_sensitivity"] == pytest.approx(1.0)  # the decoded frame moves as x moves
    half = finalize(prediction_sums(x1, x2, x3, pred=x2, oracle=x3, latent_copy=x2))
    assert half["motion_captured"] == 0.0 and half["decoder_sensitivity"] == 0.0


def test_motion_captured_is_omitted_below_a_tenth_of_a_db() -> None:
    assert motion_gain(19.5, 19.0, 21.0) == {"extrap_gain_db_motion": 0.5, "motion_captured": 0.25}
    assert motion_gain(20.0, 19.95, 20.0) == pytest.approx({"extrap_gain_db_motion": 0.05})
    assert "motion_captured" not in motion_gain(19.0, 20.0, 19.0)  # oracle below the copy


def test_active_units_threshold_on_hand_made_latents() -> None:
    g = torch.Generator().manual_seed(25)
    mu = torch.zeros(1000, 3, dtype=torch.float64)
    mu[:, 0] = torch.randn(1000, generator=g, dtype=torch.float64)  # variance ~1: active
    mu[:, 1] = 5.0  # constant: inactive however large
    mu[:, 2] = 0.05 * torch.randn(1000, generator=g, dtype=torch.float64)  # variance ~0.0025
    assert active_units(mu.sum(0), mu.pow(2).sum(0), 1000) == {
        "active_units": 1.0,
        "latent_elements": 3.0,
    }


def test_spatial_latents_count_every_element_and_split_like_the_whole() -> None:
    toy = SpatialToy()
    x1, x2, x3 = frames(8, 26), frames(8, 27), frames(8, 28)
    background = x3.mean(0)  # (3, H, W)
    whole = finalize(triplet_sums(toy, x1, x2, x3, background))
    assert whole["latent_elements"] == 36 and whole["active_units"] == 36  # uniform: var 1/12
    halves = add_sums(
        triplet_sums(toy, x1[:3], x2[:3], x3[:3], background),
        triplet_sums(toy, x1[3:], x2[3:], x3[3:], background),
    )
    split = finalize(all_reduce_sums(halves))
    assert split.keys() == whole.keys()
    for key, value in whole.items():
        assert split[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert whole["background_psnr"] == pytest.approx(
        psnr(background.expand_as(x3), x3).mean().item(), rel=1e-6
    )
    assert "background_psnr_motion" in whole


def test_strip_shows_the_latent_copy_and_the_background(vae: VAE) -> None:
    x1, x2, x3 = frames(2, 29), frames(2, 30), frames(2, 31)
    background = torch.full((3, H, W), 0.4)
    strip = prediction_strip(vae, x1, x2, x3, n=2, background=background)
    tile = lambda i: strip[:H, i * W : (i + 1) * W]  # noqa: E731 - first row, column i
    assert (tile(7) == round(0.4 * 255)).all()  # the background column
    with torch.no_grad():
        copy = vae.decode(vae.encode(x2)[0]).clamp(0, 1)[0]
    want = (copy.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(tile(4), want)  # the latent copy column
    assert (prediction_strip(vae, x1, x2, x3, n=2)[:H, 7 * W : 8 * W] == 0).all()  # no bg: black
