"""Predict frames by linear extrapolation in latent space, from two frames or a video.

Two frames are fitted to the model's input size with :func:`~varnext_ray.frame_fit.fit_frame`
(centre crop to the model's aspect ratio, then resize), encoded to their means z1, z2,
extrapolated to z2 + k(z2 - z1) for k = 1..steps, decoded, and resized back to the size of
that centre crop: the input frames' size when the aspect ratios agree; otherwise the part of
the frames the model saw, undistorted, with a warning. Frames whose crop would be enlarged
more than :data:`~varnext_ray.frame_fit.MAX_UPSCALE` times, as ingest refuses them, are refused.

Example:
    >>> ckpt = load_checkpoint(download_best(None, "smoke", "runs/best"))
    >>> [nxt] = predict_frames(ckpt, load_frame("a.png"), load_frame("b.png"))
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from varnext_ray.checkpoint import Checkpoint
from varnext_ray.errors import UserError, escape
from varnext_ray.frame_decode import (
    Skipped,
    decode_source,
    open_video_stream,
    warnings_after_success,
)
from varnext_ray.frame_fit import MAX_UPSCALE, centre_crop, crop_size, fit_frame
from varnext_ray.image_read import is_animated, read_image
from varnext_ray.media import FPS, save_gif, save_png, staged_files, write_video
from varnext_ray.model import extrapolate, rollout
from varnext_ray.output_checks import check_output_files, names_a_folder
from varnext_ray.safe_io import regular_file
from varnext_ray.sources import Source

log = logging.getLogger(__name__)
VIDEO_OUTPUTS = (".mp4", ".gif")
_CHUNK = 32  # video frames encoded per batch, at most
_CHUNK_BYTES = 64 * 1024**2  # and at most this many bytes of decoded frames (2 of 4096x4096)


# ---- frames in and out ------------------------------------------------------------------------


def load_frame(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, read as ingest reads frames (16-bit and palette
    images converted, never a FIFO opened, pixel limit checked); a UserError if unreadable,
    or if it is an animation (a GIF or APNG of several frames: which one is frame t?), or of
    several frames of another kind (a multi-page TIFF: :func:`read_image` refuses it)."""
    if is_animated(Path(path)):  # reads the header only, of a regular file only
        raise UserError(
            "the image is an animation of several frames, not one frame",
            str(path),
            "pass two still images, or the animation as --video to predict each of its triplets",
        )
    return read_image(path)


def _model_size(ckpt: Checkpoint) -> tuple[int, int]:
    return ckpt.arch.input.width, ckpt.arch.input.height


def seen_part(ckpt: Checkpoint, frame: np.ndarray, where: str, *, warn: bool = True) -> np.ndarray:
    """The centre crop of ``frame`` the model sees (the whole frame when the aspect ratios
    agree), warned about (with ``warn``) when it is not the whole frame, refused when it would
    be enlarged more than :data:`~varnext_ray.frame_fit.MAX_UPSCALE` times a side."""
    (width, height), (h, w) = _model_size(ckpt), frame.shape[:2]
    crop_w, crop_h = crop_size((w, h), (width, height))
    if width > MAX_UPSCALE * crop_w or height > MAX_UPSCALE * crop_h:  # a crop may be 0 wide
        raise UserError(
            f"{w}x{h} frames are too small for this {width}x{height} model: their "
            f"{crop_w}x{crop_h} centre crop would be enlarged over {MAX_UPSCALE} times a side",
            where,
            f"pass frames of at least {-(-width // MAX_UPSCALE)}x{-(-height // MAX_UPSCALE)} "
            "pixels, from the camera the model was trained on",
        )
    if warn and (crop_w, crop_h) != (w, h):
        log.warning(
            "%s: %dx%d frames are not the model's aspect ratio (%dx%d): predicting their "
            "%dx%d centre crop",
            escape(where),
            w,
            h,
            width,
            height,
            crop_w,
            crop_h,
        )
    return centre_crop(frame, (width, height))


def _model_input(ckpt: Checkpoint, frames: list[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 frames -> (B, 3, h, w) floats in [0, 1] at the model's input size."""
    cfg = ckpt.arch.input
    if cfg.channels != 3:  # training reads RGB frames too
        fix = "predict reads RGB frames: use a model with 3 input channels"
        raise UserError(f"model has {cfg.channels} input channels", str(ckpt.path), fix)
    fitted = np.stack([fit_frame(f, _model_size(ckpt)) for f in frames])  # (B, h, w, 3)
    x = torch.from_numpy(fitted).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, h, w)
    return x.to(next(ckpt.model.parameters()).device)


def _to_images(y: torch.Tensor, size: tuple[int, int], checkpoint: Path) -> list[np.ndarray]:
    """Decoded (B, 3, h, w) in [0, 1] -> (H, W, 3) uint8 images resized to ``size`` = (W, H).

    Raises:
        UserError: The model's output is not finite (weights that overflow on these frames):
            NaN would be written as black, +inf as white, with exit status 0.
    """
    if not torch.isfinite(y).all():
        raise UserError(
            "the model's prediction is not finite (NaN or infinite pixels): its weights "
            "overflow on these frames",
            str(checkpoint),
            "use another checkpoint of the run (an earlier epoch) or train it again",
        )
    y = y.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
    images = []
    for arr in y.permute(0, 2, 3, 1).numpy():  # (h, w, 3) each
        if arr.shape[1::-1] != size:
            arr = np.asarray(Image.fromarray(arr).resize(size, Image.BICUBIC))
        images.append(np.ascontiguousarray(arr))
    return images


MAX_STEPS = 1000  # a rollout writes one PNG per step; a longer one is a typo, not a wish
MAX_STRIDE = 1000  # a video's 2s + 1 latest frames are held in memory (12 GB of 1080p at 1000)


def _check_positive(value: int, flag: str) -> None:
    if value < 1:
        raise UserError(f"{flag} must be >= 1 (got {value})", flag, "pass 1 or more")


def _check_steps(steps: int) -> None:
    _check_positive(steps, "--steps")
    if steps > MAX_STEPS:
        raise UserError(
            f"--steps {steps} would write {steps} frames (the limit is {MAX_STEPS})",
            "--steps",
            f"pass at most {MAX_STEPS}",
        )


def _check_stride(stride: int) -> None:
    _check_positive(stride, "--stride")
    if stride > MAX_STRIDE:
        raise UserError(
            f"--stride must be at most {MAX_STRIDE:,} (got {stride:,}): a video's latest "
            f"2s + 1 frames are held in memory",
            "--stride",
            f"pass at most {MAX_STRIDE} (frames from t to t+s)",
        )


CHECKPOINT_ROLE = "the checkpoint it reads"


def _check_outputs(
    checkpoint: Checkpoint, outs: list[Path], inputs: list[str | Path], overwrite: bool
) -> None:
    """Refuses outputs that exist (unless ``overwrite``), are inputs, or lie in the checkpoint."""
    check_output_files(
        outs,
        flag="--out",
        overwrite=overwrite,
        inputs=inputs,
        protected_dirs=[(checkpoint.path, CHECKPOINT_ROLE)],
    )


def output_files(out: str | Path, steps: int, *, video: bool) -> list[Path]:
    """Every file a prediction writes for ``--out OUT --steps N``: the video (``video``) and
    the rollout's PNGs (:func:`rollout_paths`); a UserError if OUT is no file of its kind."""
    _check_steps(steps)
    if video:
        out = _out_path(out, VIDEO_OUTPUTS, "a video")
        return [out, *rollout_paths(out, steps)]
    return rollout_paths(_out_path(out, (".png",), "two frames"), steps)


def check_request(
    out: str | Path,
    steps: int,
    inputs: list[str | Path],
    *,
    video: bool,
    stride: int = 1,
    overwrite: bool = False,
    checkpoint_dir: str | Path | None = None,
) -> None:
    """What a prediction can check before its model loads: ``--out``, ``--steps``, ``--stride``
    and that its files may be written (never into ``checkpoint_dir``, the checkpoint it will
    read). A registered model is downloaded first (megabytes, over the network), so the CLI
    checks its request with this before; the loaded checkpoint's folder is checked again by
    :func:`predict_image_files` and :func:`predict_video`."""
    outs = output_files(out, steps, video=video)
    if video:
        _check_stride(stride)
    check_output_files(
        outs,
        flag="--out",
        overwrite=overwrite,
        inputs=inputs,
        protected_dirs=[] if checkpoint_dir is None else [(checkpoint_dir, CHECKPOINT_ROLE)],
    )


def _check_same_size(frame_a: np.ndarray, frame_b: np.ndarray, where: str) -> None:
    if frame_a.shape != frame_b.shape:
        sizes = " and ".join(f"{f.shape[1]}x{f.shape[0]}" for f in (frame_a, frame_b))
        fix = "pass two frames of the same size, from the same camera"
        raise UserError(f"the frames differ in size ({sizes})", where, fix)


def predict_frames(
    checkpoint: Checkpoint,
    frame_a: np.ndarray,
    frame_b: np.ndarray,
    steps: int = 1,
    *,
    where: str = "frame_a",
) -> list[np.ndarray]:
    """Predicts the frames after ``frame_b``, ``steps`` of them, from the latent line a -> b.

    The frames are fitted to the model's input size (:func:`~varnext_ray.frame_fit.fit_frame`),
    encoded to their means z1, z2, extrapolated to z2 + k(z2 - z1) for k = 1..steps, decoded
    and resized back to the size of the part of the frames the model saw (:func:`seen_part`).

    Args:
        checkpoint: A loaded checkpoint (its model is put in eval mode).
        frame_a: Frame t, (H, W, 3) uint8 RGB.
        frame_b: Frame t+s, the same shape.
        steps: How many frames to predict: t+2s, t+3s, ...
        where: What the frames are called in errors and warnings (their file).

    Returns:
        ``steps`` images, (H, W, 3) uint8 RGB each, the input frames' size (their centre
        crop's where their aspect ratio is not the model's).

    Example:
        >>> nxt, after = predict_frames(ckpt, load_frame("a.png"), load_frame("b.png"), steps=2)
    """
    return list(iter_predicted_frames(checkpoint, frame_a, frame_b, steps, where=where))


DECODE_CHUNK = 8  # rollout latents decoded at once: the model's output is held for these only


def iter_predicted_frames(
    checkpoint: Checkpoint,
    frame_a: np.ndarray,
    frame_b: np.ndarray,
    steps: int = 1,
    *,
    where: str = "frame_a",
) -> Iterator[np.ndarray]:
    """:func:`predict_frames` one frame at a time, for a caller that writes each as it comes.

    The checks, the warning and the encoding happen on the call; the frames are decoded
    :data:`DECODE_CHUNK` latents at a time as they are taken, so a long rollout of large frames
    never holds more than a few of them (all 100 of an 8192x8192 rollout were built before the
    first was written: 20 GB, a MemoryError).
    """
    _check_steps(steps)
    _check_same_size(frame_a, frame_b, "frame_a, frame_b")
    frame_a = seen_part(checkpoint, frame_a, where)
    frame_b = centre_crop(frame_b, _model_size(checkpoint))
    model = checkpoint.model.eval()
    with torch.inference_mode():
        mu, _ = model.encode(_model_input(checkpoint, [frame_a, frame_b]))  # (2, D)
        z = rollout(mu[:1], mu[1:], steps)[:, 0]  # (steps, D)
    return _decoded(model, z, (frame_a.shape[1], frame_a.shape[0]), checkpoint.path)


def _decoded(
    model: torch.nn.Module, z: torch.Tensor, size: tuple[int, int], checkpoint: Path
) -> Iterator[np.ndarray]:
    """The images of latents ``z``, decoded a chunk at a time (never yielding inside inference
    mode, which is the thread's: the caller's code would run in it)."""
    for start in range(0, len(z), DECODE_CHUNK):
        with torch.inference_mode():
            images = _to_images(model.decode(z[start : start + DECODE_CHUNK]), size, checkpoint)
        while images:
            yield images.pop(0)  # handed over, not kept: one full-size frame alive at a time


def rollout_paths(out: str | Path, steps: int) -> list[Path]:
    """Where a rollout goes: ``OUT`` itself for one step, else ``<stem>_k1.png``... beside it."""
    out = Path(out)
    if steps == 1 and out.suffix.lower() == ".png":
        return [out]
    return [out.with_name(f"{out.stem}_k{k}.png") for k in range(1, steps + 1)]


def _out_path(out: str | Path, allowed: tuple[str, ...], what: str) -> Path:
    """``--out`` as a Path, if it names a file of an ``allowed`` type.

    A trailing ``/`` (or a last part ``.``) names a folder, never a file; it is refused here
    from the string, since ``Path`` drops it (``Path("x.png/")`` is ``x.png``).
    """
    text = os.fspath(out)
    if names_a_folder(text):
        raise UserError(
            "--out names a folder (it ends in a slash); predictions are written to a file",
            text,
            f"name the file, e.g. {os.path.join(text.rstrip('/.') or '.', 'pred' + allowed[0])}",
        )
    out = Path(text)
    if out.suffix.lower() not in allowed:
        got = out.suffix or "no suffix"
        fix = f"name --out with one of {', '.join(allowed)}"
        raise UserError(f"unsupported output type for {what} ({got})", str(out), fix)
    return out


def predict_image_files(
    checkpoint: Checkpoint,
    frame_a: str | Path,
    frame_b: str | Path,
    out: str | Path,
    steps: int,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Reads two image files, predicts ``steps`` frames and writes them (:func:`rollout_paths`).

    An existing output is replaced only with ``overwrite``; never an input frame, a file in
    the checkpoint's folder, or a symlink.

    Returns:
        The PNGs written, in order k = 1..steps.
    """
    outs = output_files(out, steps, video=False)
    _check_outputs(checkpoint, outs, [frame_a, frame_b], overwrite)
    a, b = load_frame(frame_a), load_frame(frame_b)
    _check_same_size(a, b, f"{frame_a}, {frame_b}")
    images = iter_predicted_frames(checkpoint, a, b, steps, where=f"{frame_a}, {frame_b}")
    with staged_files(outs, overwrite=overwrite) as stage:  # all of them, or none
        return _save_pngs(images, outs, stage)


def _save_pngs(
    images: Iterable[np.ndarray], paths: list[Path], stage: Callable[[Path], Path]
) -> list[Path]:
    """Writes each image to ``stage(path)`` (:func:`~varnext_ray.media.staged_files`);
    returns ``paths``. A failing write names the path itself, not the staging folder."""
    for image, path in zip(images, paths, strict=True):
        save_png(image, stage(path), where=str(path))
    return paths


def frame_lines(paths: Sequence[Path], frame_a: str | Path, frame_b: str | Path) -> list[str]:
    """The lines ``varnext predict`` prints for two frames, paths escaped
    (:func:`~varnext_ray.errors.escape`): a name holding a newline cannot forge a line."""
    a, b = escape(str(frame_a)), escape(str(frame_b))
    return [
        f"wrote {escape(str(path))}: frame t+{k + 1}s predicted from {a} (t) and {b} (t+s)"
        for k, path in enumerate(paths, start=1)
    ]


def video_lines(summary: dict[str, Any]) -> list[str]:
    """The lines ``varnext predict --video`` prints for :func:`predict_video`'s summary,
    paths escaped as in :func:`frame_lines`."""
    w, h = summary["size"]
    lines = [
        f"wrote {escape(summary['video'])}: {summary['frames']} frames of {w}x{h} "
        f"[truth | prediction], extrap_psnr {summary['extrap_psnr']:.2f} dB vs copy_last_psnr "
        f"{summary['copy_last_psnr']:.2f} dB"
    ]
    for k, path in enumerate(summary["rollout"], start=1):
        lines.append(f"wrote {escape(path)}: rollout step k={k} past the video's last frame")
    return lines


# ---- videos -----------------------------------------------------------------------------------


def _video_source(video: str | Path) -> tuple[Source, float]:
    """The video as a source, and its main video stream's frame rate (FPS where the container
    does not say); the stream is chosen as ingest chooses it (not a cover picture).

    Raises:
        UserError: The file does not open as a video, or holds no video stream (audio only,
            or an mp4 written with no frames, which keeps no stream at all).
    """
    path = regular_file(video, "video", "pass an existing video file to --video")
    container, stream = open_video_stream(path)
    with container:
        rate = stream.average_rate
    return Source("video", path), float(rate) if rate else float(FPS)


def _chunks(
    source: Source, counts: dict[str, Any]
) -> Iterator[tuple[int, list[np.ndarray]] | None]:
    """Consecutive decoded frames of one size, as (number of the first in the video, up to
    ``_CHUNK`` frames, fewer where they would hold more than ``_CHUNK_BYTES``: each is held
    with its crop, the frame as shown and its prediction, so 32 frames of 4096x4096 held 5.5 GB);
    None where frames were lost.

    A chunk never spans a change of frame size (clips of different sizes joined end to end,
    or a stream that switches resolution), so a new size always starts a new chunk.
    ``counts`` gets ``frames`` (decoded), ``gaps``, ``longest`` (frames in a row of one size)
    and ``sizes``: [(number, (W, H)), ...] of the first frame of each size in a row.
    """
    chunk: list[np.ndarray] = []
    first = run = 0
    for item in decode_source(source, Skipped()):
        resized = item is not None and bool(chunk) and item[1].shape != chunk[0].shape
        full = bool(chunk) and len(chunk) >= max(1, min(_CHUNK, _CHUNK_BYTES // chunk[0].nbytes))
        if item is None or resized or full:
            if chunk:
                yield first, chunk
            chunk = []
        if item is None:
            counts["gaps"] += 1
            run = 0
            yield None
            continue
        number, frame = item
        if not counts["sizes"] or counts["sizes"][-1][1] != frame.shape[1::-1]:
            counts["sizes"].append((number, frame.shape[1::-1]))
            run = 0
        if not chunk:
            first = number
        chunk.append(frame)
        counts["frames"] += 1
        run += 1
        counts["longest"] = max(counts["longest"], run)
    if chunk:
        yield first, chunk


def _panels(
    ckpt: Checkpoint,
    source: Source,
    stride: int,
    history: collections.deque,
    counts: dict[str, Any],
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(frame t+s, truth t+2s, prediction) for every triplet of the video, in order.

    Every frame is shown at the size of the part of the video's first frame the model sees
    (:func:`seen_part`); frames of another size (the video changes resolution) are encoded
    from their own centre crop and shown resized to it, and the triplets start again at each
    change of size, as after a gap. ``history`` (maxlen 2 * stride + 1) holds (frame as shown,
    mean latent) pairs of the latest consecutive frames; after the last triplet it holds the
    video's last frames. ``counts``: see :func:`_chunks`, and ``shown``, (W, H) shown.
    """
    model, shape, shown = ckpt.model.eval(), None, None
    for item in _chunks(source, counts):
        if item is None:  # frames lost: t, t+s, t+2s must be neighbours in time
            history.clear()
            continue
        number, chunk = item
        if chunk[0].shape != shape:  # the first frame, or a change of size: checked once each
            crop = _seen_part_from(ckpt, chunk[0], source.path, number if shape else None)
            shown = counts["shown"] = shown or (crop.shape[1], crop.shape[0])
            shape = chunk[0].shape
            history.clear()  # no triplet spans two sizes
        crops = [centre_crop(frame, _model_size(ckpt)) for frame in chunk]
        with torch.inference_mode():
            mus = model.encode(_model_input(ckpt, crops))[0]  # (B, D)
            pairs, latents = [], []
            for crop, mu in zip(crops, mus, strict=True):
                frame = crop if crop.shape[1::-1] == shown else fit_frame(crop, shown)
                history.append((frame, mu))
                if len(history) == history.maxlen:
                    pairs.append((history[stride][0], frame))
                    latents.append(extrapolate(history[0][1], history[stride][1]))
            if not latents:
                continue
            decoded = model.decode(torch.stack(latents))  # (B, D) in
            predictions = _to_images(decoded, shown, ckpt.path)
        for (last, truth), prediction in zip(pairs, predictions, strict=True):
            yield last, truth, prediction


def _seen_part_from(
    ckpt: Checkpoint, frame: np.ndarray, video: Path, number: int | None
) -> np.ndarray:
    """:func:`seen_part` of the video's first frame (``number`` None) or of the first frame of
    a new size; a refusal of the latter names that frame and how to cut the video there."""
    if number is None:
        return seen_part(ckpt, frame, str(video))
    try:  # its crop is said in the one warning about the sizes (_warn_sizes)
        return seen_part(ckpt, frame, f"{video}, frame {number}", warn=False)
    except UserError as err:
        h, w = frame.shape[:2]
        raise UserError(
            f"the frame size changes to {w}x{h} at frame {number}, and {err.what}",
            err.where,
            f"predict the part before it (e.g. `ffmpeg -i {video.name} -frames:v {number} "
            f"part.mp4`), or {err.fix}",
        ) from None


def _warn_sizes(video: str | Path, counts: dict[str, Any]) -> None:
    """One warning for a video whose frame size changes: where, and how it was handled."""
    sizes = counts["sizes"]  # (first frame number, (W, H)) of each size in a row
    if len(sizes) < 2:
        return
    listed = [
        f"{w}x{h}" + (f" from frame {n}" if i else "") for i, (n, (w, h)) in enumerate(sizes[:4])
    ]
    more = ", ..." if len(sizes) > 4 else ""
    w, h = counts["shown"]
    log.warning(
        "%s: the frame size changes %d time%s (%s%s): every frame is predicted from its own "
        "centre crop and shown at %dx%d (the first frame's crop), and the triplets start again at "
        "each change (cut the video at those frames to predict each part at its own size)",
        escape(str(video)),
        len(sizes) - 1,
        "" if len(sizes) == 2 else "s",
        ", then ".join(listed),
        more,
        w,
        h,
    )


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 10 * math.log10(255.0**2 / mse) if mse > 0 else 100.0


def _side_by_side(
    panels: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]], scores: dict[str, list[float]]
) -> Iterator[np.ndarray]:
    """[truth | prediction] frames (H, 2W, 3), padded to even sides for H.264; records PSNRs."""
    for last, truth, prediction in panels:
        scores["extrap"].append(_psnr(prediction, truth))
        scores["copy_last"].append(_psnr(last, truth))
        frame = np.concatenate([truth, prediction], axis=1)  # (H, 2W, 3)
        if frame.shape[0] % 2:
            frame = np.concatenate([frame, frame[-1:]], axis=0)  # repeat the last row
        yield frame


def predict_video(
    checkpoint: Checkpoint,
    video: str | Path,
    out: str | Path,
    steps: int = 1,
    stride: int = 1,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes a [truth | prediction] video, and a rollout from the video's last two frames.

    For every position t of the video, frame t+2s is predicted from frames t and t+s (s =
    ``stride``) and shown to the right of the real frame t+2s, at the video's size. A gap where
    frames could not be decoded restarts the triplets after it. The rollout predicts ``steps``
    frames past the last frame from the last two frames s apart, written as PNGs beside ``out``
    (:func:`rollout_paths`: ``<stem>_k1.png``, ...).

    ``out`` is ``.mp4`` (H.264 through PyAV; an odd height is padded by one row) or ``.gif``
    (Pillow: every frame is held in memory; a frame identical to the one before is merged).

    Returns:
        ``video`` (the path), ``frames``, ``size`` ([W, H] written), ``fps``, ``extrap_psnr`` and
        ``copy_last_psnr`` (mean dB over frames of prediction and of frame t+s vs. the truth),
        ``rollout`` (the PNG paths).

    Example:
        >>> predict_video(ckpt, "clip.mp4", "runs/pred.mp4", steps=3)["extrap_psnr"]
    """
    outs = output_files(out, steps, video=True)
    out = outs[0]
    _check_stride(stride)
    _check_outputs(checkpoint, outs, [video], overwrite)
    source, fps = _video_source(video)
    history: collections.deque = collections.deque(maxlen=2 * stride + 1)
    scores: dict[str, list[float]] = {"extrap": [], "copy_last": []}
    counts: dict[str, Any] = {"frames": 0, "gaps": 0, "longest": 0, "sizes": [], "shown": None}
    # A failure prints its one error line, no warnings, and leaves none of the files.
    with warnings_after_success(log), staged_files(outs, overwrite=overwrite) as stage:
        frames = _side_by_side(_panels(checkpoint, source, stride, history, counts), scores)
        first = next(frames, None)
        if first is None:
            raise _no_triplet(video, stride, counts)
        count = _write_video_file(stage(out), itertools.chain([first], frames), fps, str(out))
        _warn_sizes(video, counts)
        paths: list[Path] = []
        if len(history) > stride:  # after a gap at the very end there may be too few
            a, b = history[-1 - stride][0], history[-1][0]
            images = iter_predicted_frames(checkpoint, a, b, steps)
            paths = _save_pngs(images, rollout_paths(out, steps), stage)
    return {
        "video": str(out),
        "frames": count,
        "size": [int(first.shape[1]), int(first.shape[0])],
        "fps": fps,
        "extrap_psnr": float(np.mean(scores["extrap"])),
        "copy_last_psnr": float(np.mean(scores["copy_last"])),
        "rollout": [str(p) for p in paths],
    }


def _no_triplet(video: str | Path, stride: int, counts: dict[str, Any]) -> UserError:
    """The error for a video without 2s + 1 consecutive decodable frames, saying what it has."""
    frames, longest = counts["frames"], counts["longest"]
    if frames == 0:
        fix = "pass a video that has frames (check it plays, or re-encode it with ffmpeg)"
        lost = " (every frame failed to decode)" if counts["gaps"] else ""
        return UserError(f"the video has no frames{lost}", str(video), fix)
    need = 2 * stride + 1
    what = (
        f"no triplet: predicting t+2s from t and t+s needs {need} consecutive decodable "
        f"frames (stride {stride}); the video has {frames}"
    )
    breaks = []
    if counts["gaps"]:
        breaks.append("undecodable stretches")
    if len(counts["sizes"]) > 1:
        breaks.append(f"{len(counts['sizes']) - 1} changes of frame size")
    if breaks:
        what += f", at most {longest} in a row between {' and '.join(breaks)}"
    fix = "pass a longer video"
    if longest >= 3:
        fix += f" or --stride {(longest - 1) // 2} or less"
    return UserError(what, str(video), fix)


# A GIF is written whole (Pillow holds every frame to build it): its RGB frames may take this
# much memory, about 80 frames of 1080p side by side. A 240-frame 1080p clip held 5 GB and
# ended in a MemoryError; an mp4 is written frame by frame.
GIF_MAX_BYTES = 1 << 30


def _gif_pictures(frames: Iterator[np.ndarray], where: str) -> list[np.ndarray]:
    """The frames of a GIF, refused (a UserError) as soon as they pass :data:`GIF_MAX_BYTES`."""
    pictures: list[np.ndarray] = []
    held = 0
    for picture in frames:
        pictures.append(picture)
        held += picture.nbytes
        if held > GIF_MAX_BYTES:
            h, w = picture.shape[:2]
            raise UserError(
                f"the GIF would hold more than {GIF_MAX_BYTES >> 20:,} MiB of {w}x{h} frames "
                f"after {len(pictures)} of them (a GIF is built whole, in memory)",
                where,
                "write the video as .mp4 (frame by frame), or predict a shorter clip",
            )
    return pictures


def _write_video_file(path: Path, frames: Iterator[np.ndarray], fps: float, where: str) -> int:
    """Writes the side-by-side video (``.gif`` or ``.mp4``) to ``path``; returns the count.

    Frames are predicted while it writes, so a refusal can come after the first frame; a
    failing write is a UserError naming ``where`` (:mod:`varnext_ray.media`).
    """
    if path.suffix.lower() == ".gif":
        pictures = _gif_pictures(frames, where)
        save_gif(pictures, path, frame_ms=max(20, round(1000 / fps)), where=where)
        return len(pictures)
    return write_video(path, frames, fps=max(1, round(fps)), where=where)
