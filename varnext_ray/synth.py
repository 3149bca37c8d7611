"""Synthetic fixed-camera scenes: the built-in default data.

All clips are footage of one scene from one fixed camera: the same static textured background
(drawn once per seed), with, in each clip, several objects of
varied size, shape and colour crossing it at varied speeds and directions (entering and leaving
the frame, occluding each other by depth order), a slow lighting drift, sensor noise and, in
some clips, one camera bump: a small global shift of the view that lasts to the clip's end.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed``, so a seed gives the
same pixels every time. ``synth.json`` beside the clips records the ground truth (frames per
clip and the frame index of each bump), which the ingest tests use to check the cut detector.

The clips are written into a hidden staging folder beside ``OUT_DIR`` and renamed into place
when complete (like ``varnext ingest``): an interrupted or failed run leaves no ``OUT_DIR``.
Every argument is checked before anything is written, against the limits below.

Example:
    >>> write_synthetic(Path("runs/synth"), clips=4, frames=120, size=(320, 180), seed=0)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from varnext_ray.atomic_write import staged_dir, write_atomic
from varnext_ray.errors import UserError
from varnext_ray.media import FPS, write_png_folder, write_video
from varnext_ray.safe_io import json_bytes, os_reason, size_text

SHAPES = ("circle", "ellipse", "rect", "triangle")
FORMATS = ("mp4", "png")
MIN_SIDE, MAX_SIDE = 8, 4096  # px, each side of a frame
MAX_CLIPS = 10_000
MAX_FRAMES = 100_000  # per clip: about 55 minutes at 30 fps
MAX_RAW_BYTES = 20 * 1024**3  # clips x frames x W x H x 3: what is rendered (and about written)
MAX_SEED = 2**32 - 1  # numpy seeds are non-negative; 32 bits is the usual range


@dataclass(frozen=True)
class Mover:
    """One object crossing the scene, in background (world) pixel coordinates."""

    shape: str
    radius: float  # half its extent, px
    colour: tuple[int, int, int]
    start: tuple[float, float]  # centre at its first frame
    velocity: tuple[float, float]  # px per frame
    first_frame: int
    depth: float  # larger is nearer: drawn later, occludes the rest


@dataclass(frozen=True)
class ClipPlan:
    """Everything random about one clip, drawn up front so rendering is a pure function."""

    frames: int
    size: tuple[int, int]  # (W, H) of the camera view
    margin: int  # background border that a camera bump may reveal
    movers: tuple[Mover, ...]
    bump_frame: int | None  # first frame seen from the shifted camera
    bump_shift: tuple[int, int]  # (dx, dy) px
    light_period: float  # frames per lighting cycle
    light_phase: float
    noise_sigma: float  # sensor noise, in 8-bit levels


def plan_clip(
    rng: np.random.Generator, frames: int, size: tuple[int, int], bump_probability: float
) -> ClipPlan:
    """Draws the random choices of one clip."""
    width, height = size
    margin = clip_margin(width)
    movers = tuple(
        _plan_mover(rng, frames, width, height, margin) for _ in range(int(rng.integers(4, 9)))
    )
    bump_frame = None
    shift = (0, 0)
    if rng.random() < bump_probability and frames >= 12:
        bump_frame = int(rng.integers(frames // 3, 2 * frames // 3 + 1))
        step = max(2, round(0.05 * width))
        shift = (int(rng.choice([-1, 1]) * step), int(rng.choice([-1, 1]) * max(1, step // 2)))
    return ClipPlan(
        frames=frames,
        size=size,
        margin=margin,
        movers=movers,
        bump_frame=bump_frame,
        bump_shift=shift,
        light_period=float(rng.uniform(4, 10) * frames),
        light_phase=float(rng.uniform(0, 2 * np.pi)),
        noise_sigma=float(rng.uniform(1.5, 3.5)),
    )


def _plan_mover(
    rng: np.random.Generator, frames: int, width: int, height: int, margin: int
) -> Mover:
    """An object in view from the start, or one that enters from outside the view later."""
    radius = float(rng.uniform(0.04, 0.16) * height)
    speed = float(rng.uniform(0.003, 0.02) * width)  # px per frame
    angle = float(rng.uniform(0, 2 * np.pi))
    velocity = np.array([np.cos(angle), np.sin(angle)]) * speed
    # A point it passes through inside the view, in world coordinates.
    start = np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height]) + margin
    first_frame = 0
    if rng.random() < 0.5:  # enters later: back it off until it is fully outside the view
        first_frame = int(rng.integers(1, max(2, frames // 2)))
        low, high = np.array([margin, margin]) - radius, np.array([width, height]) + margin + radius
        while np.all((start > low) & (start < high)):
            start = start - velocity
    colour = tuple(int(c) for c in rng.integers(20, 236, size=3))
    return Mover(
        shape=str(rng.choice(SHAPES)),
        radius=radius,
        colour=colour,  # type: ignore[arg-type]
        start=(float(start[0]), float(start[1])),
        velocity=(float(velocity[0]), float(velocity[1])),
        first_frame=first_frame,
        depth=float(rng.random()),
    )


def render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured still background: layered smooth noise over a colour gradient. (H, W, 3) float."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            90 + 60 * yy / height,  # sky-to-ground style gradient, different per channel
            110 + 40 * xx / width,
            70 + 50 * (1 - yy / height),
        ],
        axis=-1,
    )
    texture = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((4, 45.0), (16, 25.0), (64, 12.0)):
        coarse = rng.uniform(-1, 1, size=(max(2, cells * height // width), cells, 3))
        layer = Image.fromarray(((coarse + 1) * 127.5).astype(np.uint8)).resize(
            (width, height), Image.BICUBIC
        )
        texture += (np.asarray(layer, np.float32) / 127.5 - 1) * amplitude
    # A few hard-edged features (stones, posts) so that a shifted view differs clearly.
    features = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(features)
    for _ in range(int(rng.integers(30, 50))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.005, 0.03) * width
        draw.ellipse((cx - r, cy - r * 0.6, cx + r, cy + r * 0.6), fill=int(rng.integers(60, 255)))
    features = features.filter(ImageFilter.GaussianBlur(1))
    texture -= np.asarray(features, np.float32)[..., None] * 0.35
    return np.clip(base + texture, 0, 255)


def _draw_mover(draw: ImageDraw.ImageDraw, mover: Mover, t: int) -> None:
    """Draws one object at frame t (nothing before it appears)."""
    if t < mover.first_frame:
        return
    dt = t - mover.first_frame
    cx = mover.start[0] + mover.velocity[0] * dt
    cy = mover.start[1] + mover.velocity[1] * dt
    r = mover.radius
    box = (cx - r, cy - r, cx + r, cy + r)
    if mover.shape == "circle":
        draw.ellipse(box, fill=mover.colour)
    elif mover.shape == "ellipse":
        draw.ellipse((cx - r, cy - r * 0.55, cx + r, cy + r * 0.55), fill=mover.colour)
    elif mover.shape == "rect":
        draw.rectangle((cx - r, cy - r * 0.7, cx + r, cy + r * 0.7), fill=mover.colour)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=mover.colour)


def scene_background(seed: int, size: tuple[int, int]) -> np.ndarray:
    """The scene's still background, with the margin a camera bump may reveal; (H', W', 3)."""
    width, height = size
    m = clip_margin(width)
    return render_background(np.random.default_rng([seed, 7]), width + 2 * m, height + 2 * m)


def clip_margin(width: int) -> int:
    """Background border beyond the view, in px."""
    return max(4, round(0.08 * width))


def render_clip(
    plan: ClipPlan, background: np.ndarray, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Yields the clip's frames, each (H, W, 3) uint8, over ``scene_background(...)``."""
    width, height = plan.size
    m = plan.margin
    order = sorted(plan.movers, key=lambda mv: mv.depth)
    for t in range(plan.frames):
        world = Image.fromarray(background.astype(np.uint8))
        draw = ImageDraw.Draw(world)
        for mover in order:
            _draw_mover(draw, mover, t)
        dx, dy = plan.bump_shift if plan.bump_frame is not None and t >= plan.bump_frame else (0, 0)
        view = np.asarray(world, np.float32)[m + dy : m + dy + height, m + dx : m + dx + width]
        light = 1.0 + 0.18 * np.sin(2 * np.pi * t / plan.light_period + plan.light_phase)
        noise = rng.normal(0.0, plan.noise_sigma, size=view.shape).astype(np.float32)
        yield np.clip(view * light + noise, 0, 255).astype(np.uint8)


def write_synthetic(
    out_dir: Path,
    *,
    clips: int = 4,
    frames: int = 120,
    size: tuple[int, int] = (640, 360),
    seed: int = 0,
    fmt: str = "mp4",
    bump_probability: float = 0.5,
) -> dict:
    """Writes ``clips`` synthetic clips and ``synth.json`` to ``out_dir``; returns the manifest.

    Args:
        out_dir: A new or empty directory (never overwritten).
        clips: Number of clips (one file or folder each), 1..MAX_CLIPS.
        frames: Frames per clip, 3..MAX_FRAMES.
        size: (W, H) of the frames, each MIN_SIDE..MAX_SIDE; H.264 needs both even.
        seed: Seed of every random choice, 0..MAX_SEED.
        fmt: ``mp4`` (H.264 through PyAV) or ``png`` (one folder of PNGs per clip).
        bump_probability: Chance that a clip has one camera bump, in [0, 1].
    """
    _check_synth_args(clips, frames, size, seed, fmt, bump_probability)
    with staged_dir(out_dir, "OUT_DIR") as partial:
        try:
            return _write_into(
                partial, clips, frames, size, seed, fmt, bump_probability, shown=Path(out_dir)
            )
        except OSError as err:  # disk full, permissions changed under us
            raise UserError(
                f"cannot write the clips ({os_reason(err)})",
                str(out_dir),
                "free some space or choose another OUT_DIR; nothing was kept",
            ) from None


def _write_into(
    out_dir: Path,
    clips: int,
    frames: int,
    size: tuple[int, int],
    seed: int,
    fmt: str,
    bump_probability: float,
    *,
    shown: Path,  # where the clips will be once complete: what errors name
) -> dict:
    rng = np.random.default_rng(seed)
    background = scene_background(seed, size)
    records = []
    for index in range(clips):
        plan = plan_clip(rng, frames, size, bump_probability)
        clip_rng = np.random.default_rng([seed, index])
        name = f"clip_{index:03d}" + (".mp4" if fmt == "mp4" else "")
        pictures = render_clip(plan, background, clip_rng)
        if fmt == "mp4":  # a failing write is a UserError (a full disk), named in OUT_DIR
            written = write_video(out_dir / name, pictures, where=str(shown / name))
        else:
            written = write_png_folder(out_dir / name, pictures)
        bumps = [plan.bump_frame] if plan.bump_frame is not None else []
        records.append(
            {
                "file": name,
                "frames": written,
                "bumps": bumps,
                "bump_shift": list(plan.bump_shift) if bumps else None,
                "movers": [m.shape for m in plan.movers],
            }
        )
    manifest = {"seed": seed, "size": list(size), "fps": FPS, "format": fmt, "clips": records}
    write_atomic(out_dir / "synth.json", json_bytes(manifest))
    return manifest


def _check_synth_args(
    clips: int,
    frames: int,
    size: tuple[int, int],
    seed: int,
    fmt: str,
    bump_probability: float,
) -> None:
    """Refuses (UserError) any argument out of range, before anything is written."""
    if clips < 1 or frames < 3:
        raise UserError(
            f"need at least 1 clip of 3 frames (got {clips} x {frames})",
            "--clips/--frames",
            "pass --clips >= 1 and --frames >= 3",
        )
    if clips > MAX_CLIPS or frames > MAX_FRAMES:
        raise UserError(
            f"at most {MAX_CLIPS} clips of {MAX_FRAMES} frames (got {clips} x {frames})",
            "--clips/--frames",
            f"pass --clips <= {MAX_CLIPS} and --frames <= {MAX_FRAMES}",
        )
    width, height = size
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise UserError(
            f"each side of a frame must be {MIN_SIDE}..{MAX_SIDE} px (got {width}x{height})",
            "--size",
            "pass e.g. --size 640x360",
        )
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be in 0..{MAX_SEED} (got {seed})", "--seed", "pass e.g. 0")
    if not (math.isfinite(bump_probability) and 0 <= bump_probability <= 1):
        raise UserError(
            f"bump probability must be a number in [0, 1] (got {bump_probability})",
            "--bump-probability",
            "pass e.g. --bump-probability 0.5",
        )
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}", "--format", f"use one of {', '.join(FORMATS)}")
    if fmt == "mp4" and (width % 2 or height % 2):
        raise UserError(
            f"H.264 needs an even width and height (got {width}x{height})",
            "--size",
            "pass even numbers, e.g. 640x360, or use --format png",
        )
    raw = clips * frames * width * height * 3
    if raw > MAX_RAW_BYTES:
        raise UserError(
            f"{clips} clips x {frames} frames at {width}x{height} are {size_text(raw)} of raw "
            f"frames, over the {size_text(MAX_RAW_BYTES)} limit",
            "--clips/--frames/--size",
            "pass fewer --clips or --frames, or a smaller --size",
        )
