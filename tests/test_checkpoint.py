"""Checkpoint directories: round trips, optimizer resume, and refusal of anything tampered."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from varnext_ray import __version__, checkpoint, checkpoint_load
from varnext_ray.arch import parse_arch
from varnext_ray.checkpoint import save_checkpoint
from varnext_ray.checkpoint_load import load_checkpoint, load_optimizer_state
from varnext_ray.errors import UserError
from varnext_ray.model import VAE, build_vae

H, W = 18, 32
TINY = {  # 3 conv layers on 32x18 frames
    "input": {"channels": 3, "height": H, "width": W},
    "encoder": {
        "conv": [
            {"out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1, "norm": "batch"},
            {"out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1},
            {"out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1},
        ]
    },
    "latent_dim": 4,
}
CFG = parse_arch(TINY, "tiny")


class FakeDDP(nn.Module):
    """Wraps a model as DDP does (``.module``; state_dict keys get a ``module.`` prefix)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class Payload:
    """Unpickling this creates ``marker``: proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def train_step(model: VAE, opt: torch.optim.Optimizer, seed: int) -> None:
    x = torch.rand(4, 3, H, W, generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    recon, _, _ = model(x, sample=False)
    (recon - x).pow(2).mean().backward()
    opt.step()


@pytest.fixture
def trained(tmp_path: Path) -> tuple[VAE, torch.optim.Adam, Path]:
    """A VAE after one Adam step, checkpointed (through a DDP-like wrapper) with its optimizer."""
    torch.manual_seed(0)
    model = build_vae(CFG)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    train_step(model, opt, seed=1)
    path = save_checkpoint(
        tmp_path / "ckpt",
        model=FakeDDP(model),
        arch_cfg=CFG,
        epoch=3,
        metrics={"extrap_psnr": 21.5},
        optimizer=opt,
        extra={"run_id": "abc"},
    )
    return model, opt, path


def rewrite(path: Path, data: bytes, *, rehash: bool) -> None:
    """Replaces a checkpoint file; with ``rehash`` also fixes its sha256 in meta.json."""
    path.write_bytes(data)
    if rehash:
        meta_path = path.parent / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["files"][path.name] = hashlib.sha256(data).hexdigest()
        meta_path.write_text(json.dumps(meta))


def test_round_trip_gives_a_fresh_model_with_identical_outputs(trained) -> None:
    model, _, path = trained
    ckpt = load_checkpoint(path)
    assert ckpt.arch == CFG and ckpt.model is not model
    x = torch.rand(3, 3, H, W, generator=torch.Generator().manual_seed(2))
    model.eval(), ckpt.model.eval()
    assert torch.equal(ckpt.model(x, sample=False)[0], model(x, sample=False)[0])
    meta = ckpt.meta
    assert (meta["epoch"], meta["metrics"], meta["image_size"]) == (
        3,
        {"extrap_psnr": 21.5},
        [W, H],
    )
    assert meta["normalisation"] == "uint8/255 in [0,1]" and meta["varnext_version"] == __version__
    assert meta["extra"] == {"run_id": "abc"}
    names = {"arch.json", "model.safetensors", "optimizer.safetensors", "optimizer.json"}
    assert set(meta["files"]) == names
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"]  # no temp dir left


def test_an_adam_step_after_loading_equals_one_without_the_round_trip(trained) -> None:
    model, opt, path = trained
    ckpt = load_checkpoint(path)
    opt2 = torch.optim.Adam(ckpt.model.parameters(), lr=0.5)  # lr and betas come from the file
    load_optimizer_state(path, opt2)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95) and opt2.param_groups[0]["lr"] == 1e-3
    train_step(model, opt, seed=5)
    train_step(ckpt.model, opt2, seed=5)
    for a, b in zip(model.state_dict().values(), ckpt.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_saving_replaces_an_old_checkpoint_but_not_another_directory(trained) -> None:
    model, _, path = trained
    save_checkpoint(path, model=model, arch_cfg=CFG, epoch=4, metrics={})
    assert load_checkpoint(path).meta["epoch"] == 4
    assert "optimizer.json" not in {p.name for p in path.iterdir()}
    with pytest.raises(UserError, match="no optimizer state"):
        load_optimizer_state(path, torch.optim.Adam(model.parameters()))
    other = path.parent / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a checkpoint"):
        save_checkpoint(other, model=model, arch_cfg=CFG, epoch=0, metrics={})
    assert (other / "todo.txt").read_text() == "keep me"


def test_a_crash_while_saving_leaves_no_checkpoint(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def failing_write(path: Path, data: bytes) -> str:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return hashlib.sha256(data).hexdigest()

    monkeypatch.setattr(checkpoint, "_write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ckpt", model=build_vae(CFG), arch_cfg=CFG, epoch=0, metrics={})
    assert list(tmp_path.iterdir()) == []


def torch_save_bytes() -> bytes:
    """What torch.save writes (a zip holding a pickle), as a renamed .pt file would be."""
    buffer = io.BytesIO()
    torch.save(build_vae(CFG).state_dict(), buffer)
    return buffer.getvalue()


def _nan_weights(path: Path) -> bytes:
    """The checkpoint's weights with one floating-point tensor made NaN, as safetensors bytes
    (``load`` returns them in no fixed order, and batch norm's step count is an integer)."""
    from safetensors.torch import load, save

    weights = load((path / "model.safetensors").read_bytes())
    first = min(name for name, tensor in weights.items() if tensor.is_floating_point())
    weights[first] = torch.full_like(weights[first], float("nan"))
    return save(weights)


def _list_outside(path: Path) -> None:
    """meta.json lists a file outside the directory (its hash is the real one)."""
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["../model.safetensors"] = meta["files"]["model.safetensors"]
    (path / "meta.json").write_text(json.dumps(meta))


def _set_meta(path: Path, key: str, value: object) -> None:
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, key: value}))


def _corrupt(case: str, path: Path) -> None:
    bad_arch = json.dumps({**TINY, "latent_dim": 0}).encode()
    other = build_vae(parse_arch({**TINY, "latent_dim": 5}, "other"))
    other_dir = save_checkpoint(
        path.parent / "other", model=other, arch_cfg=other.config, epoch=0, metrics={}
    )
    actions = {
        "missing model": lambda: (path / "model.safetensors").unlink(),
        "missing arch": lambda: (path / "arch.json").unlink(),
        "missing meta": lambda: (path / "meta.json").unlink(),
        "altered model": lambda: rewrite(path / "model.safetensors", b"\0" * 64, rehash=False),
        "altered arch": lambda: rewrite(path / "arch.json", b"{}", rehash=False),
        "arch invalid": lambda: rewrite(path / "arch.json", bad_arch, rehash=True),
        "arch not json": lambda: rewrite(path / "arch.json", b"{oops", rehash=True),
        "torch.save zip": lambda: rewrite(
            path / "model.safetensors", torch_save_bytes(), rehash=True
        ),
        "wrong weights": lambda: rewrite(
            path / "model.safetensors", (other_dir / "model.safetensors").read_bytes(), rehash=True
        ),
        "not a checkpoint": lambda: rewrite(path / "meta.json", b'{"format": "x"}', rehash=False),
        "listed outside": lambda: _list_outside(path),
        "nan weights": lambda: rewrite(path / "model.safetensors", _nan_weights(path), rehash=True),
        # a version field nobody read: a later format, or one edited by hand, loaded
        "later format": lambda: _set_meta(path, "format_version", 99),
        "format as text": lambda: _set_meta(path, "format_version", "1"),
        "no format version": lambda: _set_meta(path, "format_version", None),
        "key twice": lambda: (path / "meta.json").write_text(
            (path / "meta.json").read_text().replace('"epoch":', '"epoch": 99, "epoch":', 1)
        ),
    }
    actions[case]()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing model", r"checkpoint file is missing \(.*model\.safetensors\)"),
        ("missing arch", r"checkpoint file is missing \(.*arch\.json\)"),
        ("missing meta", r"checkpoint file is missing \(.*meta\.json\)"),
        ("altered model", r"file was altered: sha256 .* \(.*model\.safetensors\): re-download"),
        ("altered arch", r"file was altered: sha256 .* \(.*arch\.json\)"),
        ("arch invalid", r"invalid architecture: latent_dim.*\(.*arch\.json\)"),
        ("arch not json", r"not valid JSON .*\(.*arch\.json\)"),
        ("torch.save zip", r"not a safetensors file .*\(.*model\.safetensors\): .*pickled"),
        ("wrong weights", r"weights do not match arch\.json: .*size mismatch"),
        ("not a checkpoint", r"not a varnext checkpoint .*\(.*meta\.json\)"),
        ("listed outside", r'meta.json: files must be a table of plain file names .*"\.\./m'),
        ("nan weights", r"the weights hold NaN or infinite values \(.*\(.*model\.safetensors\)"),
        ("later format", r"unsupported checkpoint format 99 \(this varnext reads format 1\)"),
        ("format as text", r'unsupported checkpoint format "1"'),
        ("no format version", r"unsupported checkpoint format null"),
        ("key twice", r'not valid JSON \(duplicate key "epoch" in one object\)'),
    ],
)
def test_a_damaged_checkpoint_is_refused_with_a_clear_message(
    trained, case: str, message: str
) -> None:
    _, _, path = trained
    _corrupt(case, path)
    with pytest.raises(UserError, match=message) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_a_training_runs_folder_is_not_taken_for_a_checkpoint(trained, tmp_path: Path) -> None:
    _, _, path = trained
    run = tmp_path / "run"
    for epoch in ("epoch_0001", "epoch_0002"):
        (run / epoch).mkdir(parents=True)
        for f in path.iterdir():
            (run / epoch / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError) as err:
        load_checkpoint(run)
    assert "a training run's folder, holding 2 checkpoint(s) (epoch_0001 .. epoch_0002)" in str(
        err.value
    )
    assert f"pass one of them, e.g. {run / 'epoch_0002'}" in str(err.value)
    load_checkpoint(run / "epoch_0002")


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"checkpoint directory not found \(.*nowhere\)"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("rehash", [False, True])
def test_a_pickle_payload_is_refused_and_never_runs(trained, tmp_path: Path, rehash: bool) -> None:
    _, opt, path = trained
    live = tmp_path / "live-marker"
    pickle.loads(pickle.dumps(Payload(live)))  # the payload is real: unpickling creates a file
    assert live.exists()
    marker = tmp_path / "marker"
    payload = pickle.dumps(Payload(marker))
    rewrite(path / "model.safetensors", payload, rehash=rehash)
    rewrite(path / "optimizer.safetensors", payload, rehash=rehash)
    message = "not a safetensors file" if rehash else "file was altered"
    with pytest.raises(UserError, match=message):
        load_checkpoint(path)
    with pytest.raises(UserError, match=message):
        load_optimizer_state(path, opt)
    assert not marker.exists()


def test_loading_never_calls_pickle_or_torch_load(trained, monkeypatch) -> None:
    path = trained[2]

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint loader unpickled something")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_optimizer_state(path, torch.optim.Adam(load_checkpoint(path).model.parameters()))


def test_optimizer_state_for_another_model_is_refused(trained) -> None:
    _, _, path = trained
    small = nn.Linear(2, 2)
    with pytest.raises(UserError, match=r"optimizer state does not fit .*\(.*optimizer\.json\)"):
        load_optimizer_state(path, torch.optim.Adam(small.parameters()))


# ---- latent kinds (issue #15) -----------------------------------------------------------------

SPATIAL = {  # a spatial latent decoded by nearest upsampling, with the calibrated loss
    **TINY,
    "latent": {"kind": "spatial", "channels": 2, "project_kernel_size": 3},
    "decoder": {"mirror": True, "upsample": "nearest"},
    "loss": {"reconstruction": "calibrated"},
}
del SPATIAL["latent_dim"]
OLD_FLAT = Path(__file__).resolve().parent / "data" / "flat_checkpoint_v0"


def test_a_checkpoint_saved_before_spatial_latents_still_loads() -> None:
    """tests/data/flat_checkpoint_v0: TINY saved by the code before issue #15 (arch.json has
    "latent_dim": 4 and "decoder": "mirror"; no "latent"); outputs recorded then."""
    assert "latent" not in json.loads((OLD_FLAT / "arch.json").read_text())
    ckpt = load_checkpoint(OLD_FLAT)
    assert ckpt.arch == CFG and ckpt.arch.latent.kind == "flat"
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        recon, mu, _ = ckpt.model.eval()(x, sample=False)
    assert mu.shape == (2, 4)
    assert float(recon.sum()) == pytest.approx(1828.0467529296875, rel=1e-5)
    assert float(mu.sum()) == pytest.approx(-0.3247774839401245, rel=1e-4, abs=1e-5)


def test_spatial_checkpoint_round_trips_through_the_header_check(tmp_path: Path) -> None:
    cfg = parse_arch(SPATIAL, "spatial")
    torch.manual_seed(0)
    model = build_vae(cfg)
    path = save_checkpoint(tmp_path / "ckpt", model=model, arch_cfg=cfg, epoch=1, metrics={})
    saved = json.loads((path / "arch.json").read_text())
    assert saved["latent"]["kind"] == "spatial" and saved["latent_dim"] == 2 * 3 * 4
    expected = checkpoint_load.expected_tensors(cfg)
    assert expected["mu_head.weight"][1] == (2, 8, 1, 1)
    ckpt = load_checkpoint(path)
    assert ckpt.arch == cfg
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(3))
    model.eval(), ckpt.model.eval()
    assert torch.equal(ckpt.model(x, sample=False)[0], model(x, sample=False)[0])
    assert ckpt.model.encode(x)[0].shape == (2, 2, 3, 4)


def test_flat_weights_do_not_load_into_a_spatial_arch(trained, tmp_path: Path) -> None:
    _, _, path = trained
    arch = json.dumps(parse_arch(SPATIAL, "spatial").to_dict()).encode()
    rewrite(path / "arch.json", arch, rehash=True)
    match = r"weights do not match arch\.json: .*size mismatch for decoder\.0\.weight"
    with pytest.raises(UserError, match=match):  # refused by the header check, before torch
        load_checkpoint(path)


def test_a_run_is_not_resumed_for_another_objective(tmp_path: Path) -> None:
    """Resumed with ``--objective extrap_ssim``, a run trained for PSNR kept its best of
    17.95 (dB) and compared SSIMs (about 0.5) with it: no epoch became the best, silently."""
    from varnext_ray.train import check_same_objective

    run = tmp_path / "storage" / "tiny-ds"
    save_checkpoint(
        run / "epoch_0002",
        model=build_vae(CFG),
        arch_cfg=CFG,
        epoch=2,
        metrics={},
        extra={"best": 17.95, "objective": "extrap_psnr_motion"},
    )
    snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": "epoch_0002"}}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))  # as Ray's
    check_same_objective(tmp_path / "storage", "tiny-ds", "extrap_psnr_motion")
    check_same_objective(tmp_path / "storage", "new-run", "extrap_ssim")  # nothing to resume
    with pytest.raises(UserError, match="trained for the objective 'extrap_psnr_motion'") as no:
        check_same_objective(tmp_path / "storage", "tiny-ds", "extrap_ssim")
    assert no.value.where == "--objective" and "--objective extrap_psnr_motion" in no.value.fix


@pytest.mark.parametrize("best", ["x", True, [1.0], float("inf"), float("nan")])
def test_a_run_whose_latest_checkpoint_does_not_read_is_refused_before_it_resumes(
    tmp_path: Path, best: object
) -> None:
    """``extra.best`` edited to "x" in the checkpoint a run resumes from (the latest Ray Train
    registered): the resumed workers compared it with a float (TypeError, a traceback twice,
    exit 1) and the FINISHED run turned FAILED."""
    from varnext_ray.train import check_same_arch

    run = tmp_path / "storage" / "tiny-ds"
    for epoch in (1, 2, 10):
        save_checkpoint(
            run / f"epoch_{epoch:04d}",
            model=build_vae(CFG),
            arch_cfg=CFG,
            epoch=epoch,
            metrics={},
            extra={"best": 20.0 + epoch},
        )
    snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": "epoch_0010"}}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))  # as Ray's
    (run / "epoch_0011").mkdir()  # an upload cut short: never registered, never resumed
    check_same_arch(tmp_path / "storage", "tiny-ds", CFG)  # the registered one reads
    meta_path = run / "epoch_0010" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["extra"]["best"] = best
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError) as refused:
        check_same_arch(tmp_path / "storage", "tiny-ds", CFG)
    assert refused.value.what.startswith("the run's latest checkpoint does not read (")
    assert "extra.best" in str(refused.value) and "epoch_0010" in refused.value.where
