"""Checkpoint directories: their format, and saving a VAE with its architecture, metadata and
optimizer state.

A checkpoint is a directory; nothing in it is ever unpickled (no ``pickle``, no ``torch.load``):

    arch.json               the architecture, ``ArchConfig.to_dict()``
    model.safetensors       the weights of the unwrapped model (no DDP ``module.`` prefix)
    meta.json               format, epoch, metrics, image size [W, H], normalisation,
                            varnext version, ``extra``, and the sha256 of every other file
    optimizer.safetensors   (optional) optimizer state tensors, keys ``state.<param>.<name>``
                            and ``param_groups.<group>.<name>`` for tensor-valued hyperparams
    optimizer.json          (optional) param_groups and the non-tensor state entries
    background.png          (optional) the training background (varnext_ray.background), and
                            any other file passed in ``files``, listed in meta.json likewise

:func:`save_checkpoint` writes into a temporary sibling directory and renames it into place, so
a crash never leaves a half-written checkpoint at the target path. Reading meta.json and the
files it lists (each checked against its sha256) is :mod:`varnext_ray.checkpoint_read`;
building the model and the optimizer state from them is :mod:`varnext_ray.checkpoint_load`.

Example:
    >>> save_checkpoint("runs/ckpt", model=vae, arch_cfg=cfg, epoch=3, metrics=m, optimizer=opt)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn

from varnext_ray import __version__
from varnext_ray.arch import ArchConfig
from varnext_ray.errors import UserError
from varnext_ray.model import VAE, unwrap_model
from varnext_ray.output_checks import check_new_dir
from varnext_ray.safe_io import kind_of, path_stat

FORMAT = "varnext-checkpoint"
FORMAT_VERSION = 1
NORMALISATION = "uint8/255 in [0,1]"
ARCH, MODEL, META = "arch.json", "model.safetensors", "meta.json"
OPT_TENSORS, OPT_JSON = "optimizer.safetensors", "optimizer.json"
LISTED_FILE_LIMIT = 64 * 2**20  # extra files (a background PNG) are read up to 64 MiB


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the architecture, the model built from it, and meta.json."""

    arch: ArchConfig
    model: VAE
    meta: dict[str, Any]
    path: Path


def plain_name(name: str) -> bool:
    """A file name with no folder part (never ``..``, ``meta.json`` or a control character)."""
    return (
        Path(name).name == name
        and name not in ("", ".", "..", META)
        and "\\" not in name
        and name.isprintable()
    )


# ---- saving -----------------------------------------------------------------------------------


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
    """Refuses to replace anything but an empty directory or a checkpoint (a file, a FIFO, a
    non-empty directory without meta.json), and a path under a file."""
    fix = "choose an empty or new directory for the checkpoint"
    st = path_stat(directory, "checkpoint directory", fix)
    if st is None:
        check_new_dir(directory, "checkpoint directory")  # its parents: folders, writable
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"path exists and is {kind_of(st.st_mode)}", str(directory), fix)
    if not (directory / META).is_file() and any(directory.iterdir()):
        raise UserError(
            "directory exists and is not a checkpoint (no meta.json)", str(directory), fix
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
    files: dict[str, bytes] | None = None,
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
        files: More files (name -> bytes, e.g. ``background.png``), listed with their sha256
            in meta.json like the others; read them back with :func:`read_listed_file`.

    Example:
        >>> save_checkpoint("ckpt", model=vae, arch_cfg=cfg, epoch=1, metrics={"val_loss": 1.0})
    """
    directory = Path(directory)
    _prepare_target(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    weights = {
        k: v.detach().cpu().contiguous() for k, v in unwrap_model(model).state_dict().items()
    }
    more = files or {}
    files = {ARCH: _json_bytes(arch_cfg.to_dict()), MODEL: st_save(weights, {"format": "pt"})}
    if optimizer is not None:
        files[OPT_TENSORS], files[OPT_JSON] = optimizer_files(optimizer)
    for name, data in more.items():
        if name in files or not plain_name(name):
            raise ValueError(f"extra checkpoint file name {name!r} is reserved or not plain")
        files[name] = data
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
