"""predict: real checkpoints, real videos and PNGs."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import smoke_checkpoint
from varnext_ray.arch import load_arch
from varnext_ray.checkpoint import Checkpoint
from varnext_ray.cli import main
from varnext_ray.errors import UserError
from varnext_ray.frame_fit import fit_frame
from varnext_ray.media import write_video
from varnext_ray.model import build_vae
from varnext_ray.predict import predict_frames, seen_part
from varnext_ray.synth import write_synthetic

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke_64x36.json"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """96x54 PNG frames (a size other than the model's 64x36), a 12-frame mp4 and bad inputs."""
    root = tmp_path_factory.mktemp("media")
    write_synthetic(root / "png", clips=1, frames=3, size=(96, 54), seed=5, fmt="png")
    write_synthetic(root / "mp4", clips=1, frames=12, size=(96, 54), seed=5, fmt="mp4")
    frames = sorted((root / "png" / "clip_000").glob("*.png"))
    small = root / "small.png"
    Image.new("RGB", (64, 36)).save(small)
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    short = root / "short.mp4"
    write_video(short, iter(np.zeros((2, 54, 96, 3), np.uint8)))
    junk = root / "junk.mp4"
    junk.write_bytes(b"\x00\x01 definitely not a video" * 40)
    empty_ckpt = root / "empty_ckpt"
    empty_ckpt.mkdir()
    return {
        "a": frames[0],
        "b": frames[1],
        "video": root / "mp4" / "clip_000.mp4",
        "small": small,
        "corrupt": corrupt,
        "short": short,
        "junk": junk,
        "empty_ckpt": empty_ckpt,
        "smoke_ckpt": smoke_checkpoint(root, "ckpt", 0),
        "overflow_ckpt": _overflowing_checkpoint(root / "overflow"),
    }


def _overflowing_checkpoint(directory: Path) -> Path:
    """A checkpoint whose weights are all finite (3e38) and whose forward pass is not: its
    prediction was written as an all-black PNG, exit 0."""
    from varnext_ray.checkpoint import save_checkpoint

    cfg = load_arch(SMOKE)
    model = build_vae(cfg)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(3e38)
    return save_checkpoint(directory, model=model, arch_cfg=cfg, epoch=0, metrics={})


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- predict ----------------------------------------------------------------------------------


def test_predict_frames_is_the_decoded_latent_line() -> None:
    torch.manual_seed(1)
    cfg = load_arch(SMOKE)
    vae = build_vae(cfg).eval()
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (36, 64, 3), dtype=np.uint8) for _ in range(2))
    ckpt = Checkpoint(arch=cfg, model=vae, meta={}, path=Path("in-memory"))
    got = predict_frames(ckpt, a, b, steps=2)
    x = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        mu, _ = vae.encode(x)
        want = vae.decode(torch.stack([mu[1] + k * (mu[1] - mu[0]) for k in (1, 2)]))
    want = (want.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    assert [g.shape for g in got] == [(36, 64, 3)] * 2
    np.testing.assert_array_equal(np.stack(got), want)
    big = [np.asarray(Image.fromarray(f).resize((128, 72))) for f in (a, b)]
    assert fit_frame(big[0], (64, 36)).shape == (36, 64, 3)
    assert predict_frames(ckpt, *big)[0].shape == (72, 128, 3)


def test_frames_of_another_aspect_ratio_give_the_part_the_model_saw(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """4:3 frames for a 16:9 model: the prediction is their 16:9 centre crop at their own
    resolution (it was stretched over the whole 4:3 frame), with a warning; frames too small
    to be the model's input without enlarging them over 16 times a side are refused."""
    torch.manual_seed(1)
    cfg = load_arch(SMOKE)
    ckpt = Checkpoint(arch=cfg, model=build_vae(cfg).eval(), meta={}, path=Path("in-memory"))
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(2))
    with caplog.at_level("WARNING", logger="varnext_ray.predict"):
        (got,) = predict_frames(ckpt, a, b)
    assert got.shape == (72, 128, 3)  # the 128x72 centre crop, not 128x96
    assert "128x96 frames are not the model's aspect ratio (64x36): predicting their 128x72" in (
        caplog.text
    )
    same = predict_frames(ckpt, a[12:84], b[12:84])[0]  # the crop itself: the same prediction
    np.testing.assert_array_equal(got, same)
    tiny = np.zeros((2, 3, 3), np.uint8)
    with pytest.raises(UserError, match=r"3x2 frames are too small for this 64x36 model"):
        predict_frames(ckpt, tiny, tiny)
    thread = np.zeros((64, 1, 3), np.uint8)
    with pytest.raises(UserError, match=r"1x64 frames are too small .* 1x1 centre crop"):
        predict_frames(ckpt, thread, thread)
    # a 4:1 model: the crop of a 1-pixel-wide frame is 0 wide (that divided by zero)
    four_to_one = cfg.model_copy(update={"input": cfg.input.model_copy(update={"height": 16})})
    wide = Checkpoint(arch=four_to_one, model=ckpt.model, meta={}, path=Path("in-memory"))
    with pytest.raises(UserError, match=r"1x64 frames are too small .* 1x0 centre crop"):
        seen_part(wide, thread, "n1.png")


def _mp4_frames(path: Path) -> tuple[int, tuple[int, int]]:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return len(frames), (frames[0].shape[1], frames[0].shape[0])


def _gif_frames(path: Path) -> tuple[int, tuple[int, int]]:
    with Image.open(path) as image:
        return image.n_frames, image.size


@pytest.mark.parametrize(("suffix", "stride", "count"), [(".mp4", 1, 10), (".gif", 2, 8)])
def test_cli_predict_video(
    suffix: str,
    stride: int,
    count: int,
    media: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out_path = tmp_path / f"side{suffix}"
    argv = ["predict", "--checkpoint", media["smoke_ckpt"], "--video", media["video"]]
    argv += ["--out", out_path, "--steps", "2", "--stride", str(stride)]
    code, out, _ = _run(argv, capsys)
    assert code == 0, out
    assert f"{count} frames of 192x54 [truth | prediction]" in out
    reader = _mp4_frames if suffix == ".mp4" else _gif_frames
    assert reader(out_path) == (count, (192, 54))  # 12 frames - 2 * stride, side by side
    for k in (1, 2):
        with Image.open(tmp_path / f"side_k{k}.png") as image:
            assert image.size == (96, 54)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out_path.name, "side_k1.png", "side_k2.png"]
    )


BAD = [  # (argv with {placeholders}, text the error line must contain)
    (
        "predict --checkpoint {smoke_ckpt} --out {tmp}/p.png {tmp}/missing.png {b}",
        "image not found",
    ),
    (
        "predict --checkpoint {smoke_ckpt} --out {tmp}/p.png {corrupt} {b}",
        "cannot read as an image",
    ),
    ("predict --checkpoint {smoke_ckpt} --out {tmp}/p.png {small} {b}", "differ in size (64x36"),
    ("predict --checkpoint {smoke_ckpt} --out {tmp}/p.jpg {a} {b}", "unsupported output type"),
    ("predict --checkpoint {smoke_ckpt} --out {tmp}/p.png {a} {b} --steps 0", "must be >= 1"),
    ("predict --checkpoint {smoke_ckpt} --out {tmp}/p.png {a}", "need two frames or a video"),
    ("predict --checkpoint {smoke_ckpt} --out {tmp}/p.mp4 {a} --video {video}", "not both"),
    ("predict --checkpoint {empty_ckpt} --out {tmp}/p.png {a} {b}", "checkpoint file is missing"),
    ("predict --checkpoint {tmp}/nope --out {tmp}/p.png {a} {b}", "checkpoint directory not"),
    ("predict --checkpoint {smoke_ckpt} --out {tmp}/p.mp4 --video {short}", "no triplet"),
    ("predict --checkpoint {smoke_ckpt} --out {tmp}/p.avi --video {video}", "unsupported output"),
    ("predict --checkpoint {smoke_ckpt} --out {tmp}/p.mp4 --video {junk}", "cannot open as a vid"),
    ("predict --checkpoint {smoke_ckpt} --out {tmp}/p.mp4 --video {tmp}/no.mp4", "video not found"),
    ("predict --checkpoint {smoke_ckpt} --out {tmp}/p.png {a} {b} --steps 1000000000", "limit"),
    ("predict --checkpoint {smoke_ckpt} --out {tmp} {a} {b}", "unsupported output type"),
    ("predict --checkpoint {smoke_ckpt} --out {tmp}/o.png {a} {b}", "already exists"),
    ("predict --checkpoint {overflow_ckpt} --out {tmp}/p.png {a} {b}", "prediction is not fini"),
    ("predict --checkpoint {overflow_ckpt} --out {tmp}/p.mp4 --video {video}", "is not finite"),
]


@pytest.mark.parametrize(("argv", "expected"), BAD, ids=[f"{i:02d}" for i in range(len(BAD))])
def test_bad_inputs_exit_2_with_one_line(
    argv: str,
    expected: str,
    media: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    (tmp_path / "occupied").write_text("x")  # makes {tmp} a non-empty directory
    (tmp_path / "o.png").write_bytes(b"the user's own picture")
    code, _, err = _run(argv.format(tmp=tmp_path, **media).split(), capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0] and "Traceback" not in err
    assert not list(tmp_path.glob("p*")) and not (tmp_path / "o").exists()  # nothing written
    assert (tmp_path / "o.png").read_bytes() == b"the user's own picture"


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_predict_never_overwrites_its_input_and_replaces_an_output_only_when_asked(
    overwrite: list[str], media: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    a, b, video = (shutil.copy(media[k], tmp_path / media[k].name) for k in ("a", "b", "video"))
    kept = {p: Path(p).read_bytes() for p in (a, b, video)}
    ckpt = media["smoke_ckpt"]
    for argv in (
        ["predict", "--checkpoint", ckpt, "--out", a, a, b],  # the output is frame t itself
        ["predict", "--checkpoint", ckpt, "--out", video, "--video", video],  # the source video
    ):
        code, _, err = _run([*argv, *overwrite], capsys)
        assert code == 2 and "the output would overwrite its own input" in err, err
    assert {p: Path(p).read_bytes() for p in kept} == kept
    out = tmp_path / "pred.png"
    out.write_bytes(b"an older prediction")
    code, _, err = _run(["predict", "--checkpoint", ckpt, "--out", out, a, b, *overwrite], capsys)
    if overwrite:
        assert code == 0 and Image.open(out).size == Image.open(a).size, err
    else:
        assert code == 2 and "--overwrite" in err and out.read_bytes() == b"an older prediction"
