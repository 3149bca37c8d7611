"""Training hyperparameters: the typed settings that ``varnext train``, each sweep trial and
every Ray Train worker share (the architecture JSON holds the model and its loss).

Torch-free, so the CLI, the sweep driver and the worker loop can all import it.

Example:
    >>> settings = TrainSettings(epochs=2, batch_size=16)
    >>> settings.check()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from varnext_ray.errors import UserError
from varnext_ray.objectives import OBJECTIVES

if TYPE_CHECKING:
    from varnext_ray.arch import ArchConfig


@dataclass(frozen=True)
class TrainSettings:
    """Training hyperparameters (the architecture JSON holds the model and its loss)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    stride: int = 1  # triplet stride s: frames t, t+s, t+2s
    val_triplets: int = 512  # at most this many validation triplets, evenly spaced
    shuffle_buffer: int = 256  # local shuffle buffer of training frames (0: off)
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model
    objective: str = "extrap_psnr"
    torch_threads: int = 1
    rollout_steps: int = 4  # score extrapolations 1..K steps ahead each epoch (0: off)
    rollout_sequences: int = 64  # at most this many validation sequences for the rollouts
    train_on: str = "auto"  # "frames", "triplets", or auto: triplets when loss.linearity_weight > 0

    def trains_on_triplets(self, arch: ArchConfig) -> bool:
        """Whether training reads (t, t+s, t+2s) triplets rather than single frames."""
        if self.train_on == "auto":
            return arch.loss.linearity_weight > 0
        return self.train_on == "triplets"

    @property
    def mode(self) -> str:
        return OBJECTIVES[self.objective]

    def check(self) -> None:
        """Raises a UserError for the first out-of-range setting."""
        for name in ("epochs", "batch_size", "stride", "val_triplets"):
            if getattr(self, name) < 1:
                raise UserError(
                    f"{name} must be >= 1 (got {getattr(self, name)})",
                    f"--{name.replace('_', '-')}",
                    "pass a positive integer",
                )
        if self.rollout_steps < 0:
            raise UserError(
                f"rollout steps must be >= 0 (got {self.rollout_steps})",
                "--rollout-steps",
                "pass 0 to turn rollouts off, or a number of steps",
            )
        if self.train_on not in ("auto", "frames", "triplets"):
            raise UserError(
                f"unknown training input {self.train_on!r}",
                "--train-on",
                "use auto, frames or triplets",
            )
        if not self.lr > 0:
            raise UserError(f"learning rate must be > 0 (got {self.lr})", "--lr", "e.g. 1e-3")
        if self.objective not in OBJECTIVES:
            raise UserError(
                f"unknown objective metric {self.objective!r}",
                "objective",
                f"use one of {', '.join(sorted(OBJECTIVES))}",
            )
