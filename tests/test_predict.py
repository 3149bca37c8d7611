"""best and predict: a real MLflow store (SQLite), real checkpoints, real videos and PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from varnext_ray import tracking
from varnext_ray.arch import load_arch
from varnext_ray.best import download_best, find_best_run
from varnext_ray.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from varnext_ray.cli import main
from varnext_ray.errors import UserError
from varnext_ray.model import build_vae
from varnext_ray.predict import predict_frames
from varnext_ray.sources import fit_frame
from varnext_ray.synth import write_synthetic, write_video

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke_64x36.json"
EXPERIMENT = "predict-test"
# name: (varnext.kind, best_extrap_psnr, best_val_loss, has a checkpoint, final status)
RUNS = {
    "train-low": ("train", 12.0, 0.5, True, "FINISHED"),
    "trial-best": ("trial", 20.0, 0.9, True, "FINISHED"),
    "trial-failed": ("trial", 30.0, 0.1, True, "FAILED"),
    "trial-no-checkpoint": ("trial", 25.0, 0.2, False, "FINISHED"),
}


def _checkpoint(directory: Path, name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = load_arch(SMOKE)
    return save_checkpoint(
        directory / name,
        model=build_vae(cfg),
        arch_cfg=cfg,
        epoch=0,
        metrics={"extrap_psnr": 1.0},
        extra={"name": name},
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite MLflow store: the runs of RUNS nested under a sweep parent, and an experiment
    whose only run logged no best_ metric."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = tracking.resolve_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = tracking.client(uri)
    for name in (EXPERIMENT, "no-metric"):
        client.create_experiment(name, artifact_location=str(root / "artifacts" / name))
    # The sweep parent logs a better value and even a checkpoint: it must still never be picked.
    parent = tracking.start_run(uri, EXPERIMENT, run_name="sweep", tags={"varnext.kind": "sweep"})
    tracking.log_metrics(uri, parent, {"best_extrap_psnr": 40.0}, step=1)
    tracking.log_artifact(uri, parent, _checkpoint(root, "sweep", 9), "checkpoint")
    for seed, (name, (kind, psnr, loss, has_ckpt, status)) in enumerate(RUNS.items()):
        run_id = tracking.start_run(
            uri,
            EXPERIMENT,
            run_name=name,
            tags={"varnext.kind": kind},
            parent_run_id=parent if kind == "trial" else None,
        )
        for step in range(2):  # best_* only improves; the latest is the best
            metrics = {"best_extrap_psnr": psnr - 1 + step, "best_val_loss": loss + 1 - step}
            tracking.log_metrics(uri, run_id, metrics, step=step)
        if has_ckpt:
            tracking.log_artifact(uri, run_id, _checkpoint(root, name, seed), "checkpoint")
        tracking.end_run(uri, run_id, status)
    tracking.end_run(uri, parent)
    other = tracking.start_run(uri, "no-metric", run_name="bare", tags={"varnext.kind": "train"})
    tracking.log_metrics(uri, other, {"val_loss": 1.0}, step=0)
    return uri


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
        "smoke_ckpt": _checkpoint(root, "ckpt", 0),
    }


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- best -------------------------------------------------------------------------------------


def test_find_best_run_skips_failed_uncheckpointed_and_sweep_runs(store: str) -> None:
    best = find_best_run(store, EXPERIMENT)
    assert (best["run_name"], best["value"], best["status"]) == ("trial-best", 20.0, "FINISHED")
    assert (best["metric"], best["kind"], best["tracking_uri"]) == (
        "best_extrap_psnr",
        "trial",
        store,
    )
    # val_loss is minimised; the FAILED run's 0.1 and the checkpoint-less 0.2 do not count
    low = find_best_run(store, EXPERIMENT, "best_val_loss")
    assert (low["run_name"], low["value"]) == ("train-low", 0.5)


def test_download_best_writes_a_loadable_checkpoint(store: str, tmp_path: Path) -> None:
    out = download_best(store, EXPERIMENT, tmp_path / "best", "extrap_psnr")
    ckpt = load_checkpoint(out)
    assert ckpt.meta["extra"]["name"] == "trial-best"
    run = json.loads((out / "run.json").read_text())
    assert run["run_id"] == find_best_run(store, EXPERIMENT)["run_id"]
    assert (run["metric"], run["value"], run["experiment"]) == (
        "best_extrap_psnr",
        20.0,
        EXPERIMENT,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temp dir left behind


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


def test_cli_best_then_predict_two_frames(
    store: str, media: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    best = tmp_path / "best"
    code, out, _ = _run(
        ["best", "--experiment", EXPERIMENT, "--out", best, "--tracking-uri", store], capsys
    )
    assert code == 0, out
    assert "trial-best" in out and "best_extrap_psnr 20.0000" in out and str(best) in out
    pred = tmp_path / "pred.png"
    code, out, _ = _run(
        ["predict", "--checkpoint", best, "--out", pred, media["a"], media["b"]], capsys
    )
    assert code == 0 and str(pred) in out
    with Image.open(pred) as image:
        assert (image.size, image.mode) == ((96, 54), "RGB")
    code, out, _ = _run(
        ["predict", "--checkpoint", best, "--out", pred, media["a"], media["b"], "--steps", "3"],
        capsys,
    )
    assert code == 0
    for k in (1, 2, 3):
        with Image.open(tmp_path / f"pred_k{k}.png") as image:
            assert image.size == (96, 54)
        assert f"pred_k{k}.png" in out


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
    ("best --experiment nope --out {tmp}/o --tracking-uri {store}", "no experiment named 'nope'"),
    ("best --experiment nope --out {tmp}/o --tracking-uri {store}", EXPERIMENT),
    ("best --experiment no-metric --out {tmp}/o --tracking-uri {store}", "no train/trial run"),
    (
        f"best --experiment {EXPERIMENT} --metric psnr --out {{tmp}}/o --tracking-uri {{store}}",
        "unknown metric 'psnr'",
    ),
    (f"best --experiment {EXPERIMENT} --out {{tmp}} --tracking-uri {{store}}", "not an empty"),
    (
        f"best --experiment {EXPERIMENT} --out {{tmp}}/o --tracking-uri sqlite:///{{tmp}}/x.db",
        "no MLflow database",
    ),
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
]


@pytest.mark.parametrize(("argv", "expected"), BAD, ids=[f"{i:02d}" for i in range(len(BAD))])
def test_bad_inputs_exit_2_with_one_line(
    argv: str,
    expected: str,
    store: str,
    media: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    (tmp_path / "occupied").write_text("x")  # makes {tmp} a non-empty directory
    code, _, err = _run(argv.format(tmp=tmp_path, store=store, **media).split(), capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0] and "Traceback" not in err
    assert not list(tmp_path.glob("p*")) and not (tmp_path / "o").exists()  # nothing written


def test_find_best_run_errors_name_the_fix(store: str) -> None:
    with pytest.raises(UserError, match=r"use one of .*extrap_psnr.*val_loss"):
        find_best_run(store, EXPERIMENT, "bogus")
    with pytest.raises(UserError, match=r"one of: Default, no-metric, predict-test"):
        find_best_run(store, "missing")
    with pytest.raises(UserError, match=r"runs log no best_ metric|no run logged"):
        find_best_run(store, "no-metric")


@pytest.mark.slow  # starts an mlflow server unless another test module already did
def test_best_over_an_http_tracking_server(mlflow_server: str, tmp_path: Path) -> None:
    run_id = tracking.start_run(
        mlflow_server, "predict-http", run_name="only", tags={"varnext.kind": "train"}
    )
    tracking.log_metrics(mlflow_server, run_id, {"best_extrap_ssim": 0.5}, step=0)
    ckpt = _checkpoint(tmp_path, "http", 3)
    tracking.log_artifact(mlflow_server, run_id, ckpt, "checkpoint")
    out = download_best(mlflow_server, "predict-http", tmp_path / "best", "extrap_ssim")
    assert load_checkpoint(out).meta["extra"]["name"] == "http"
    assert json.loads((out / "run.json").read_text())["tracking_uri"] == mlflow_server
