"""Checkpoint directories: save and load a VAE, its architecture, metadata and optimizer state.

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
import re
import shutil
import stat
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
from varnext_ray.model import VAE, build_vae, unwrap_model
from varnext_ray.safe_io import (
    CONFIG_LIMIT,
    META_LIMIT,
    check_new_dir,
    kind_of,
    parse_json,
    path_stat,
    read_bounded,
)

FORMAT = "varnext-checkpoint"
FORMAT_VERSION = 1
NORMALISATION = "uint8/255 in [0,1]"
ARCH, MODEL, META = "arch.json", "model.safetensors", "meta.json"
OPT_TENSORS, OPT_JSON = "optimizer.safetensors", "optimizer.json"
LISTED_FILE_LIMIT = 64 * 2**20  # extra files (a background PNG) are read up to 64 MiB
_RESAVE = "re-download or re-save the whole checkpoint directory; never edit its files"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the architecture, the model built from it, and meta.json."""

    arch: ArchConfig
    model: VAE
    meta: dict[str, Any]
    path: Path


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
        if name in files or not _plain_name(name):
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


# ---- loading ----------------------------------------------------------------------------------


def _read_json(path: Path, data: bytes) -> Any:
    try:
        # NaN is allowed: a failed epoch's metrics may hold it (json.dumps writes it)
        return parse_json(data, str(path), _RESAVE, allow_nan=True)
    except UserError as err:
        raise UserError(f"not valid JSON ({err.what})", str(path), _RESAVE) from None


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _plain_name(name: str) -> bool:
    """A file name with no folder part (never ``..``, ``meta.json`` or a control character)."""
    return (
        Path(name).name == name
        and name not in ("", ".", "..", META)
        and "\\" not in name
        and name.isprintable()
    )


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    """The keys readers rely on, with their types (a hand-edited meta.json is refused)."""

    def bad(key: str, want: str, got: Any) -> UserError:
        shown = json.dumps(got)[:60] if isinstance(got, (str, int, float, list, dict)) else got
        return UserError(f"meta.json: {key} must be {want} (got {shown})", str(path), _RESAVE)

    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise UserError(
            f"unsupported checkpoint format {json.dumps(version)[:40]} (this varnext reads "
            f"format {FORMAT_VERSION})",
            str(path),
            "use the varnext version that wrote it, or train the model again with this one",
        )
    files = meta.get("files")
    if not isinstance(files, dict):
        raise UserError('meta.json has no "files" table of sha256 hashes', str(path), _RESAVE)
    for name, digest in files.items():
        if not _plain_name(name):
            raise bad("files", "a table of plain file names in the directory", name)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise bad(f"files.{name}", "a sha256 hex digest", digest)
    epoch = meta.get("epoch", 0)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise bad("epoch", "an integer >= 0", epoch)
    for key in ("metrics", "extra"):
        if not isinstance(meta.get(key, {}), dict):
            raise bad(key, "an object {...}", meta.get(key))
    best = meta.get("extra", {}).get("best")  # the objective's best so far: resumed with it
    if best is not None and (not isinstance(best, (int, float)) or isinstance(best, bool)):
        raise bad("extra.best", "a number or null", best)
    metrics = meta.get("metrics", {})
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad(f"metrics.{key}", "a number", value)
    size = meta.get("image_size", [1, 1])
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        raise bad("image_size", "[width, height]", size)


def read_meta(directory: str | Path) -> dict[str, Any]:
    """meta.json of a checkpoint directory, checked for its format, keys and file hashes."""
    directory = Path(directory)
    fix = "pass the directory that save_checkpoint wrote (it holds meta.json)"
    st = path_stat(directory, "checkpoint directory", fix)
    if st is None or not stat.S_ISDIR(st.st_mode):
        what = "checkpoint directory not found"
        if st is not None:
            what = f"checkpoint is {kind_of(st.st_mode)}, not a directory"
        raise UserError(what, str(directory), fix)
    path = directory / META
    if not path.exists() and not path.is_symlink():
        epochs = sorted(p.name for p in directory.glob("epoch_*") if (p / META).is_file())
        if epochs:  # a training run's folder, which holds one checkpoint per epoch
            raise UserError(
                f"this is a training run's folder, holding {len(epochs)} checkpoint(s) "
                f"({epochs[0]} .. {epochs[-1]}), not a checkpoint",
                str(directory),
                f"pass one of them, e.g. {directory / epochs[-1]}, or the folder that "
                "varnext best downloads",
            )
    meta = _read_json(path, _file_bytes(path, META_LIMIT))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        got = got if isinstance(got, str) and len(got) < 60 else type(got).__name__
        raise UserError(
            f'not a varnext checkpoint (format {got!r}, want "{FORMAT}")', str(path), _RESAVE
        )
    _check_meta(meta, path)
    return meta


def _file_bytes(path: Path, limit: int) -> bytes:
    """A checkpoint file's bytes: a regular file (never a FIFO) of at most ``limit`` bytes."""
    _check_regular(path)
    return read_bounded(path, limit, "checkpoint file", _RESAVE)


def _check_regular(path: Path) -> None:
    """UserError unless ``path`` is a regular file (missing, a folder or a FIFO are refused)."""
    st = path_stat(path, "checkpoint file", _RESAVE)
    if st is None:
        raise UserError("checkpoint file is missing", str(path), _RESAVE)
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"checkpoint file is {kind_of(st.st_mode)}", str(path), _RESAVE)


def read_listed_file(
    directory: str | Path, name: str, limit: int = LISTED_FILE_LIMIT
) -> bytes | None:
    """The bytes of a file that :func:`save_checkpoint` wrote from ``files``, sha256-checked;
    None when meta.json does not list it (an older checkpoint)."""
    meta = read_meta(directory)
    if name not in meta["files"]:
        return None
    return _verified_bytes(Path(directory), meta, name, limit)


def _verified_bytes(directory: Path, meta: dict[str, Any], name: str, limit: int) -> bytes:
    """The bytes of one checkpoint file (at most ``limit``), checked against meta.json's sha256."""
    path = directory / name
    want = meta["files"].get(name)
    if want is None:
        raise UserError(f"meta.json lists no sha256 for {name}", str(directory / META), _RESAVE)
    data = _file_bytes(path, limit)
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise _altered(path, got, want)
    return data


def _altered(path: Path, got: str, want: str) -> UserError:
    what = f"file was altered: sha256 {got[:12]}... does not match meta.json ({want[:12]}...)"
    return UserError(what, str(path), _RESAVE)


def verify_files(directory: str | Path) -> dict[str, Any]:
    """Checks that every file meta.json lists is in ``directory`` with its sha256 (read in
    chunks, so any size), and returns meta.json.

    Raises:
        UserError: meta.json is not valid, or a listed file is missing, not a regular file or
            was altered.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    for name, want in meta["files"].items():
        path = directory / name
        _check_regular(path)
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != want:
            raise _altered(path, digest.hexdigest(), want)
    return meta


_NOT_ST = "checkpoints hold weights as safetensors (pickled .pt files are refused); re-save it"
_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
HEADER_LIMIT = 16 * 1024 * 1024  # a safetensors JSON header (ours are a few KB)


def read_arch(
    directory: str | Path,
    *,
    max_params: float | None = None,
    max_activation_bytes: float | None = None,
) -> ArchConfig:
    """The validated architecture of a checkpoint directory (its sha256-checked arch.json)."""
    directory = Path(directory)
    data = _verified_bytes(directory, read_meta(directory), ARCH, CONFIG_LIMIT)
    return parse_arch(
        _read_json(directory / ARCH, data),
        str(directory / ARCH),
        max_params=max_params,
        max_activation_bytes=max_activation_bytes,
    )


def file_limits(arch: ArchConfig) -> dict[str, int]:
    """The most bytes the loaders read of each file a checkpoint of ``arch`` lists (any other
    listed file: :data:`LISTED_FILE_LIMIT`), so that a file over it can be refused unread."""
    weights = sum(nbytes for _, _, nbytes in expected_tensors(arch).values())
    return {
        META: META_LIMIT,
        ARCH: CONFIG_LIMIT,
        MODEL: _weights_limit(weights),
        OPT_TENSORS: _optimizer_limit(weights),
        OPT_JSON: META_LIMIT,
    }


def _weights_limit(weight_bytes: int) -> int:
    return 8 + HEADER_LIMIT + weight_bytes


def _optimizer_limit(param_bytes: int) -> int:
    return 8 + HEADER_LIMIT + 4 * param_bytes + 2**20  # Adam: two moments (+ fp64 slack)


def expected_tensors(arch: ArchConfig) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """name -> (safetensors dtype, shape, bytes) of the model ``arch`` builds, allocating nothing
    (the model is built on PyTorch's ``meta`` device)."""
    with torch.device("meta"):
        model = build_vae(arch)
    return {
        name: (_DTYPES.get(t.dtype, str(t.dtype)), tuple(t.shape), t.numel() * t.element_size())
        for name, t in model.state_dict().items()
    }


def safetensors_header(path: Path, data: bytes) -> dict[str, Any]:
    """The JSON header of safetensors bytes (names, dtypes, shapes, offsets), validated for
    layout: every tensor's bytes lie in the file, without gaps or overlaps."""

    def refuse(why: str) -> UserError:
        return UserError(f"not a safetensors file ({why})", str(path), _NOT_ST)

    if len(data) < 8:
        raise refuse(f"{len(data)} bytes")
    size = int.from_bytes(data[:8], "little")
    if size > min(HEADER_LIMIT, len(data) - 8):
        raise refuse(f"header length {size} does not fit the {len(data)}-byte file")
    try:
        header = parse_json(data[8 : 8 + size], str(path), _NOT_ST)
    except UserError as err:
        raise refuse(f"header: {err.what}") from None
    if not isinstance(header, dict):
        raise refuse("header is not a JSON object")
    header.pop("__metadata__", None)
    spans = []
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(v, int) and v >= 0 for v in offsets)
            and offsets[0] <= offsets[1]
            and isinstance(info.get("shape"), list)
            and all(isinstance(v, int) and v >= 0 for v in info["shape"])
            and isinstance(info.get("dtype"), str)
        ):
            raise refuse(f"bad entry for tensor {str(name)[:60]!r}")
        spans.append(tuple(offsets))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise refuse("tensor data overlaps or leaves gaps")
        position = end
    if 8 + size + position != len(data):
        raise refuse(
            f"the header describes {position} data bytes, the file holds {len(data) - 8 - size}"
        )
    return header


def _check_header(
    header: dict[str, Any], expected: dict[str, tuple[str, tuple[int, ...], int]], path: Path
) -> None:
    """Compares tensor names, dtypes, shapes and sizes with what arch.json implies."""
    if header and all(key.startswith("module.") for key in header):
        header = {key.removeprefix("module."): value for key, value in header.items()}
    problems = []
    missing = sorted(set(expected) - set(header))
    extra = sorted(set(header) - set(expected))
    if missing:
        problems.append(f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""))
    if extra:
        names = ", ".join(n[:60] for n in extra[:4])
        problems.append(f"unexpected {names}" + (" ..." if len(extra) > 4 else ""))
    for name in sorted(set(expected) & set(header)):
        dtype, shape, nbytes = expected[name]
        info = header[name]
        begin, end = info["data_offsets"]
        if tuple(info["shape"]) != shape:
            problems.append(
                f"size mismatch for {name}: {info['shape']} in the file, {list(shape)} in arch.json"
            )
        elif info["dtype"] != dtype:
            problems.append(f"{name} is {info['dtype'][:12]}, arch.json implies {dtype}")
        elif end - begin != nbytes:
            problems.append(f"{name} holds {end - begin} bytes, not {nbytes}")
    if problems:
        fix = "save arch.json and the weights together from the same model"
        detail = "; ".join(problems[:4])
        raise UserError(f"weights do not match arch.json: {detail}", str(path), fix)


def _safetensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    """Parses safetensors bytes; anything else (a pickle, a zip from torch.save) is refused."""
    safetensors_header(path, data)
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as err:
        raise UserError(f"not a safetensors file ({err})", str(path), _NOT_ST) from None


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


def load_checkpoint(
    directory: str | Path,
    *,
    device: str | torch.device = "cpu",
    max_params: float | None = None,
    max_activation_bytes: float | None = None,
) -> Checkpoint:
    """Loads a checkpoint: validates arch.json, checks the weights' safetensors header against
    it, then builds the VAE and loads its weights (strict).

    Nothing is allocated for the model before its size is known to be within bounds
    (``max_params`` / ``max_activation_bytes``, see :func:`varnext_ray.arch.check_bounds`) and
    the weights file to hold exactly the tensors (names, dtypes, shapes) arch.json implies. The
    model comes back on ``device`` in train mode, as built; call ``.eval()`` to predict.

    Raises:
        UserError: The directory or a file is missing or not a regular file, a file was altered
            (sha256), the weights are not safetensors or do not fit the architecture, or
            arch.json does not validate or is too large.

    Example:
        >>> ckpt = load_checkpoint("runs/best", device="cuda")
        >>> ckpt.model.eval(); ckpt.meta["metrics"]["extrap_psnr"]
    """
    directory = Path(directory)
    meta = read_meta(directory)
    model_path = directory / MODEL
    arch = read_arch(directory, max_params=max_params, max_activation_bytes=max_activation_bytes)
    expected = expected_tensors(arch)
    limit = _weights_limit(sum(nbytes for _, _, nbytes in expected.values()))
    data = _verified_bytes(directory, meta, MODEL, limit)
    header = safetensors_header(model_path, data)
    _check_header(header, expected, model_path)
    weights = _safetensors(model_path, data)
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"the weights hold NaN or infinite values ({name})",
                str(model_path),
                "use a checkpoint from an epoch before training diverged (lower lr or beta)",
            )
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
    params = sum(p.numel() * p.element_size() for g in optimizer.param_groups for p in g["params"])
    data = _verified_bytes(directory, meta, OPT_TENSORS, _optimizer_limit(params))
    tensors = _safetensors(directory / OPT_TENSORS, data)
    doc = _read_json(directory / OPT_JSON, _verified_bytes(directory, meta, OPT_JSON, META_LIMIT))
    try:
        state_dict = _optimizer_state_dict(tensors, doc)
        for live, saved in zip(optimizer.param_groups, state_dict["param_groups"], strict=False):
            for name, value in saved.items():
                if isinstance(live.get(name), tuple) and isinstance(value, list):
                    saved[name] = tuple(value)
        optimizer.load_state_dict(state_dict)
    except (KeyError, ValueError, IndexError, TypeError, AttributeError) as err:
        fix = "build the same optimizer type over the checkpoint's model.parameters()"
        what = f"optimizer state does not fit this optimizer ({err})"
        raise UserError(what, str(directory / OPT_JSON), fix) from None
