"""Training hyperparameters: the typed settings that ``varnext train``, each sweep trial and
every Ray Train worker share (the architecture JSON holds the model and its loss).

Torch-free, so the CLI, the sweep driver and the worker loop can all import it.

Example:
    >>> settings = TrainSettings(epochs=2, batch_size=16)
    >>> settings.check()
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from varnext_ray.errors import UserError
from varnext_ray.objectives import DEFAULT_OBJECTIVE, OBJECTIVES

if TYPE_CHECKING:
    from varnext_ray.arch import ArchConfig


# Bounds on what a typo can make a run do (a budget past these is not a wish but a slip).
MAX_STEPS = 10_000_000
MAX_EPOCHS = 100_000
MAX_ROLLOUT_STEPS = 64
MAX_BATCH_SIZE = 65_536  # frames per worker per step
MAX_NAME = 100  # characters in a run or space name (a directory under --storage)
_NAME = re.compile(r"[A-Za-z0-9._-]+")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a directory under ``--storage``, or None when it can: one path
    component of letters, digits, ``.``, ``_`` and ``-`` (not ``.`` or ``..``), at most
    :data:`MAX_NAME` characters."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        return (
            f"must be one path component of letters, digits, '.', '_' and '-' (not '.' or '..'; "
            f"got {str(name)[:60]!r})"
        )
    if len(name) > MAX_NAME:
        return f"must be at most {MAX_NAME} characters (got {len(name)})"
    return None


def check_experiment_name(name: str) -> None:
    """An MLflow experiment name: 1..MAX_NAME printable characters (MLflow's own refusal of an
    empty or overlong name came only after Ray had started)."""
    bad = [ch for ch in name if not ch.isprintable()]
    if not name.strip() or bad or len(name) > MAX_NAME:
        raise UserError(
            "the experiment name is empty"
            if not name.strip()
            else f"the experiment name holds {bad[0]!r}"
            if bad
            else f"the experiment name is longer than {MAX_NAME} characters ({len(name)})",
            "--experiment",
            "pass a short name such as smoke",
        )


MAX_SEED = 2**32 - 1  # shuffle seeds add epochs and ranks to it; numpy takes up to 2**64 - 1


def check_name(name: str, where: str) -> None:
    """Raises a UserError when ``name`` cannot be a directory under ``--storage``."""
    problem = name_problem(name)
    if problem is not None:
        raise UserError(
            f"the name {problem}", where, "pass a short name such as smoke-64x36 (no '/')"
        )


@dataclass(frozen=True)
class TrainSettings:
    """Training hyperparameters (the architecture JSON holds the model and its loss).

    ``epochs`` are evaluation rounds (validation, report, checkpoint; ASHA's rungs). ``steps``
    is an optional budget of optimizer steps over all epochs: each epoch then trains whole
    passes over the training split, :meth:`passes_per_epoch` of them, so the steps done (the
    ``steps`` metric) are the budget give or take each pass's last partial batch. None: one
    pass per epoch.
    """

    epochs: int = 10
    steps: int | None = None  # total optimizer steps over all epochs (None: one pass per epoch)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    stride: int = 1  # triplet stride s: frames t, t+s, t+2s
    val_triplets: int = 512  # at most this many validation triplets, evenly spaced
    shuffle_buffer: int = 256  # local shuffle buffer of training frames (0: off)
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model
    objective: str = DEFAULT_OBJECTIVE  # the moving pixels, not the static background
    torch_threads: int = 1
    rollout_steps: int = 4  # score extrapolations 1..K steps ahead each epoch (0: off)
    rollout_sequences: int = 64  # at most this many validation sequences for the rollouts
    train_on: str = "auto"  # "frames", "triplets", or auto: triplets when loss.linearity_weight > 0

    def trains_on_triplets(self, arch: ArchConfig) -> bool:
        """Whether training reads (t, t+s, t+2s) triplets rather than single frames."""
        if self.train_on == "auto":
            return arch.loss.linearity_weight > 0
        return self.train_on == "triplets"

    def passes_per_epoch(self, steps_per_pass: int) -> int:
        """Whole passes over the training split per epoch: ceil(steps / epochs / steps_per_pass),
        at least 1 (1 without a ``steps`` budget).

        Example:
            >>> TrainSettings(steps=2000, epochs=10).passes_per_epoch(21)  # 10 x 10 x 21 = 2100
            10
        """
        if self.steps is None:
            return 1
        return max(1, math.ceil(self.steps / self.epochs / max(1, steps_per_pass)))

    @property
    def mode(self) -> str:
        return OBJECTIVES[self.objective]

    def check(self) -> None:
        """Raises a UserError for the first out-of-range setting."""
        for name in ("epochs", "batch_size", "stride", "val_triplets"):
            if getattr(self, name) < 1:
                flag = f"--{name.replace('_', '-')}"
                raise UserError(
                    f"{flag} must be >= 1 (got {getattr(self, name)})", flag, "pass 1 or more"
                )
        if self.batch_size > MAX_BATCH_SIZE:
            raise UserError(
                f"--batch-size must be at most {MAX_BATCH_SIZE:,} (got {self.batch_size})",
                "--batch-size",
                f"pass a batch per worker of at most {MAX_BATCH_SIZE:,}, e.g. 32",
            )
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise UserError(
                f"--steps must be from 1 to {MAX_STEPS:,} (got {self.steps})",
                "--steps",
                "pass a budget of optimizer steps, e.g. 2000 (train and sweep: 0 for one pass "
                "per epoch)",
            )
        for name, most in (("epochs", MAX_EPOCHS), ("rollout_steps", MAX_ROLLOUT_STEPS)):
            if getattr(self, name) > most:
                flag = f"--{name.replace('_', '-')}"
                got = getattr(self, name)
                raise UserError(
                    f"{flag} must be at most {most:,} (got {got})", flag, f"pass at most {most:,}"
                )
        if self.rollout_steps < 0:
            raise UserError(
                f"--rollout-steps must be >= 0 (got {self.rollout_steps})",
                "--rollout-steps",
                "pass 0 to turn rollouts off, or a number of steps",
            )
        if self.train_on not in ("auto", "frames", "triplets"):
            raise UserError(
                f"unknown training input {self.train_on!r}",
                "--train-on",
                "use auto, frames or triplets",
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(
                f"learning rate must be a finite number > 0 (got {self.lr})", "--lr", "e.g. 1e-3"
            )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(
                f"weight decay must be a finite number >= 0 (got {self.weight_decay})",
                "weight_decay",
                "e.g. 0 or 1e-4",
            )
        if not 0 <= self.seed <= MAX_SEED:  # numpy and torch refuse negative or huge seeds
            raise UserError(
                f"--seed must be in 0..{MAX_SEED} (got {self.seed})", "--seed", "pass e.g. 0"
            )
        if self.objective not in OBJECTIVES:
            raise UserError(
                f"unknown objective metric {self.objective!r}",
                "--objective, or a search space's objective",
                f"use one of {', '.join(sorted(OBJECTIVES))}",
            )
