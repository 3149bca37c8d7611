"""Checkpoint directories: save and load a VAE, its architecture, metadata and optimizer state.

A checkpoint is a directory; nothing in it is ever unpickled (no ``pickle``, no ``torch.load``):

    arch.json               the architecture, ``ArchConfig.to_dict()``
    model.safetensors       the weights of the unwrapped model (no DDP ``module.`` prefix)
    meta.json               format, epoch, metrics, image size [W, H], normalisation,
                            varnext version, ``extra``, and the sha256 of every other file
    optimizer.safetensors   (optional) optimizer state tensors, keys ``state.<param>.<name>``
                            and ``param_groups.<group>.<name>`` for tensor-valued hyperparams
    optimizer.json          (optional) param_groups and the non-tensor state entries

:func:`save_checkpoint` writes into a temporary sibling directory and renames it into place, so
a crash never leaves a half-written checkpoint at the target path. Loading checks each file it
reads against its sha256 in meta.json and parses safetensors from the same bytes it hashed.

Example:
    >>> save_checkpoint("runs/ckpt", model=vae, arch_cfg=cfg, epoch=3, metrics=m, optimizer=opt)
    >>> ckpt = load_checkpoint("runs/ckpt")
    >>> load_optimizer_state("runs/ckpt", torch.optim.Adam(ckpt.model.parameters()))
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from varnext_ray import __version__
from varnext_ray.arch import ArchConfig, parse_arch
from varnext_ray.errors import UserError
from varnext_ray.model import VAE, build_vae

FORMAT = "varnext-checkpoint"
FORMAT_VERSION = 1
NORMALISATION = "uint8/255 in [0,1]"
ARCH, MODEL, META = "arch.json", "model.safetensors", "meta.json"
OPT_TENSORS, OPT_JSON = "optimizer.safetensors", "optimizer.json"
_RESAVE = "re-download or re-save the whole checkpoint directory; never edit its files"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the architecture, the model built from it, and meta.json."""

    arch: ArchConfig
    model: VAE
    meta: dict[str, Any]
    path: Path


# ---- saving -----------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (``.module``) and/or torch.compile (``._orig_mod``)."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _write(path: Path, data: bytes) -> str:
    """Writes and fsyncs ``data``; returns its sha256 hex digest."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def optimizer_files(optimizer: torch.optim.Optimizer) -> tuple[bytes, bytes]:
    """An optimizer's state_dict as (safetensors bytes, JSON bytes), without pickle."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_json: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                state_json.setdefault(str(index), {})[name] = value
    groups = []
    for g, group in enumerate(state_dict["param_groups"]):
        plain = {}
        for name, value in group.items():
            if isinstance(value, torch.Tensor):
                tensors[f"param_groups.{g}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain[name] = list(value) if isinstance(value, tuple) else value
        groups.append(plain)
    doc = {"param_groups": groups, "state": state_json}
    return st_save(tensors, metadata={"format": "pt"}), _json_bytes(doc)


def _prepare_target(directory: Path) -> None:
    """Refuses to replace a non-empty directory that is not a checkpoint."""
    if directory.exists() and not (directory / META).is_file() and any(directory.iterdir()):
        raise UserError(
            "directory exists and is not a checkpoint (no meta.json)",
            str(directory),
            "choose an empty or new directory for the checkpoint",
        )


def _swap_into_place(tmp: Path, directory: Path) -> None:
    """Renames ``tmp`` to ``directory``, replacing an old checkpoint there."""
    old = None
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
        directory.rename(old)
    tmp.rename(directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _meta(
    arch_cfg: ArchConfig,
    epoch: int,
    metrics: dict[str, float],
    extra: dict[str, Any] | None,
    hashes: dict[str, str],
) -> dict[str, Any]:
    """The content of meta.json."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "epoch": int(epoch),
        "metrics": {key: float(value) for key, value in metrics.items()},
        "image_size": [arch_cfg.input.width, arch_cfg.input.height],  # [W, H]
        "normalisation": NORMALISATION,
        "varnext_version": __version__,
        "extra": extra or {},
        "files": hashes,  # file name -> sha256 hex digest
    }


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    arch_cfg: ArchConfig,
    epoch: int,
    metrics: dict[str, float],
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes a checkpoint directory atomically (temp sibling, then rename); returns its path.

    An existing checkpoint at ``directory`` is replaced; any other non-empty directory is
    refused (UserError).

    Args:
        directory: Where the checkpoint goes.
        model: The VAE, possibly wrapped in DDP (its unwrapped weights are saved).
        arch_cfg: The architecture the model was built from.
        epoch: Epochs completed (1 after the first epoch), as in the ``epoch`` metric.
        metrics: Metric name -> value, stored in meta.json.
        optimizer: Its state is saved for resuming when given.
        extra: More JSON-serialisable metadata (run id, hyperparameters).

    Example:
        >>> save_checkpoint("ckpt", model=vae, arch_cfg=cfg, epoch=1, metrics={"val_loss": 1.0})
    """
    directory = Path(directory)
    _prepare_target(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    files = {ARCH: _json_bytes(arch_cfg.to_dict()), MODEL: st_save(weights, {"format": "pt"})}
    if optimizer is not None:
        files[OPT_TENSORS], files[OPT_JSON] = optimizer_files(optimizer)
    tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        hashes = {name: _write(tmp / name, data) for name, data in files.items()}
        _write(tmp / META, _json_bytes(_meta(arch_cfg, epoch, metrics, extra, hashes)))
        _swap_into_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# ---- loading ----------------------------------------------------------------------------------


def _read_json(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"not valid JSON ({err})", str(path), _RESAVE) from None


def read_meta(directory: str | Path) -> dict[str, Any]:
    """meta.json of a checkpoint directory, checked for its format and file hashes."""
    directory = Path(directory)
    if not directory.is_dir():
        fix = "pass the directory that save_checkpoint wrote (it holds meta.json)"
        raise UserError("checkpoint directory not found", str(directory), fix)
    path = directory / META
    if not path.is_file():
        raise UserError("checkpoint file is missing", str(path), _RESAVE)
    meta = _read_json(path, path.read_bytes())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UserError(
            f'not a varnext checkpoint (format {got!r}, want "{FORMAT}")', str(path), _RESAVE
        )
    if not isinstance(meta.get("files"), dict):
        raise UserError('meta.json has no "files" table of sha256 hashes', str(path), _RESAVE)
    return meta


def _verified_bytes(directory: Path, meta: dict[str, Any], name: str) -> bytes:
    """The bytes of one checkpoint file, after checking them against meta.json's sha256."""
    path = directory / name
    want = meta["files"].get(name)
    if want is None:
        raise UserError(f"meta.json lists no sha256 for {name}", str(directory / META), _RESAVE)
    if not path.is_file():
        raise UserError("checkpoint file is missing", str(path), _RESAVE)
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        what = f"file was altered: sha256 {got[:12]}... does not match meta.json ({want[:12]}...)"
        raise UserError(what, str(path), _RESAVE)
    return data


def _safetensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    """Parses safetensors bytes; anything else (a pickle, a zip from torch.save) is refused."""
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        fix = "checkpoints hold weights as safetensors (pickled .pt files are refused); re-save it"
        raise UserError(f"not a safetensors file ({err})", str(path), fix) from None


def _load_weights(model: VAE, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Strict load_state_dict, with a UserError naming the mismatched keys."""
    if weights and all(key.startswith("module.") for key in weights):
        weights = {key.removeprefix("module."): value for key, value in weights.items()}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        fix = "save arch.json and the weights together from the same model"
        raise UserError(f"weights do not match arch.json: {detail}", str(path), fix) from None


def load_checkpoint(directory: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Loads a checkpoint: validates arch.json, builds the VAE, loads its weights (strict).

    The model comes back on ``device`` in train mode, as built; call ``.eval()`` to predict.

    Raises:
        UserError: The directory or a file is missing, a file was altered (sha256), the weights
            are not safetensors or do not fit the architecture, or arch.json does not validate.

    Example:
        >>> ckpt = load_checkpoint("runs/best", device="cuda")
        >>> ckpt.model.eval(); ckpt.meta["metrics"]["extrap_psnr"]
    """
    directory = Path(directory)
    meta = read_meta(directory)
    arch_path, model_path = directory / ARCH, directory / MODEL
    arch = parse_arch(_read_json(arch_path, _verified_bytes(directory, meta, ARCH)), str(arch_path))
    weights = _safetensors(model_path, _verified_bytes(directory, meta, MODEL))
    model = build_vae(arch)
    _load_weights(model, weights, model_path)
    return Checkpoint(arch=arch, model=model.to(device), meta=meta, path=directory)


def _optimizer_state_dict(tensors: dict[str, torch.Tensor], doc: dict[str, Any]) -> dict[str, Any]:
    """Rebuilds an optimizer state_dict from optimizer.safetensors and optimizer.json."""
    state: dict[int, dict[str, Any]] = {
        int(index): dict(entries) for index, entries in doc["state"].items()
    }
    groups = [dict(group) for group in doc["param_groups"]]
    for key, value in tensors.items():
        kind, index, name = key.split(".", 2)
        if kind == "state":
            state.setdefault(int(index), {})[name] = value
        else:
            groups[int(index)][name] = value
    return {"state": state, "param_groups": groups}


def load_optimizer_state(directory: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Loads the saved optimizer state into ``optimizer`` (built over the loaded model's params).

    Lists saved as JSON come back as tuples where the optimizer's own group holds a tuple
    (Adam's ``betas``). State tensors move to their parameters' devices (PyTorch does it).

    Raises:
        UserError: No optimizer state was saved, a file is missing or altered, or the state
            does not fit this optimizer (other parameter count or group layout).
    """
    directory = Path(directory)
    meta = read_meta(directory)
    if OPT_TENSORS not in meta["files"]:
        fix = "save the checkpoint with optimizer=... to resume, or start a fresh optimizer"
        raise UserError("checkpoint has no optimizer state", str(directory), fix)
    tensors = _safetensors(directory / OPT_TENSORS, _verified_bytes(directory, meta, OPT_TENSORS))
    doc = _read_json(directory / OPT_JSON, _verified_bytes(directory, meta, OPT_JSON))
    try:
        state_dict = _optimizer_state_dict(tensors, doc)
        for live, saved in zip(optimizer.param_groups, state_dict["param_groups"], strict=False):
            for name, value in saved.items():
                if isinstance(live.get(name), tuple) and isinstance(value, list):
                    saved[name] = tuple(value)
        optimizer.load_state_dict(state_dict)
    except (KeyError, ValueError, IndexError, TypeError) as err:
        fix = "build the same optimizer type over the checkpoint's model.parameters()"
        what = f"optimizer state does not fit this optimizer ({err})"
        raise UserError(what, str(directory / OPT_JSON), fix) from None
