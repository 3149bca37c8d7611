"""What Ray Train's controller unpickles for the workers: their config and entry point, torch-free.

A trial's :class:`~ray.train.torch.TorchTrainer` hands ``train_loop_per_worker`` and its config
to a controller actor, which passes them on to the worker group without running them. Both are
pickled by reference, so unpickling imports the modules that define them: were they defined in
:mod:`varnext_ray.train_loop`, every controller (one per run and per sweep trial, on the
trial's critical path) would import torch and the model first, about 1.4 s on 2 cores. Here
they need only the settings and tracking modules; the workers import the loop when they run it.
A test holds this module to importing no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from varnext_ray.settings import TrainSettings
from varnext_ray.tracking import TrackingRun


@dataclass(frozen=True)
class LoopConfig:
    """What every Ray Train worker is given (the one value of ``train_loop_config``)."""

    arch: dict[str, Any]  # the validated architecture JSON
    settings: TrainSettings
    on_triplets: bool  # training reads (t, t+s, t+2s) triplets rather than single frames
    rollout_steps: int  # horizons K scored each epoch (settings', shortened to fit; 0: off)
    tracking: TrackingRun | None = None  # the MLflow run rank 0 logs to
    background: np.ndarray | None = None  # uint8 (H, W, 3): median of the training frames
    passes_per_epoch: int = 1  # whole passes over the training split per epoch (steps budget)
    # The validation and rollout datasets: streaming-split across ranks (True), or read whole
    # by every rank, which keeps rows rank::world (False: they are materialised, and a split
    # would start a coordinator actor per dataset and run).
    eval_split: bool = True
    # The training rows: cut into one part per rank before the run (``train_0``, ``train_1``,
    # ...: they are materialised, train_data.run_datasets), or one ``train`` dataset that Ray
    # Train streaming-splits (False).
    train_parts: bool = False


def train_loop_per_worker(config: dict[str, LoopConfig]) -> None:
    """Ray Train's per-worker function: :func:`varnext_ray.train_loop.run_worker`, imported here."""
    from varnext_ray.train_loop import run_worker

    run_worker(config["loop"])
