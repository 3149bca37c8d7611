"""Loading a checkpoint: the VAE built from its architecture with its weights, and the
optimizer state, each checked before anything is allocated.

The weights' safetensors header is checked for layout and against the tensors arch.json implies
(:func:`expected_tensors`, built on PyTorch's ``meta`` device) before the model is built; the
files come sha256-checked from :mod:`varnext_ray.checkpoint_read`.

Example:
    >>> ckpt = load_checkpoint("runs/ckpt")
    >>> load_optimizer_state("runs/ckpt", torch.optim.Adam(ckpt.model.parameters()))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from varnext_ray.arch import ArchConfig
from varnext_ray.checkpoint import ARCH, META, MODEL, OPT_JSON, OPT_TENSORS, Checkpoint
from varnext_ray.checkpoint_read import (
    parse_checkpoint_json,
    read_arch,
    read_meta,
    verified_bytes,
)
from varnext_ray.errors import UserError
from varnext_ray.model import VAE, build_vae
from varnext_ray.safe_io import CONFIG_LIMIT, META_LIMIT, parse_json

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
    data = verified_bytes(directory, meta, MODEL, limit)
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
    data = verified_bytes(directory, meta, OPT_TENSORS, _optimizer_limit(params))
    tensors = _safetensors(directory / OPT_TENSORS, data)
    doc = parse_checkpoint_json(
        directory / OPT_JSON, verified_bytes(directory, meta, OPT_JSON, META_LIMIT)
    )
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
