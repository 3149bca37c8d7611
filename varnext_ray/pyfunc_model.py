"""The MLflow pyfunc model of a varnext checkpoint, logged as code (models-from-code).

:mod:`varnext_ray.registry` logs this file with ``mlflow.pyfunc.log_model(python_model=<this
file>, artifacts={"checkpoint": DIR}, code_paths=[<the varnext_ray package>])``: MLflow stores
the source of this file and of the package, never a pickle, and ``mlflow.pyfunc.load_model``
runs this file, which calls :func:`mlflow.models.set_model`. Loading reads the checkpoint as
:func:`~varnext_ray.checkpoint_load.load_checkpoint` does (sha256-checked safetensors, no
``torch.load``), so the user's code never imports varnext_ray and nothing is unpickled.

Input: a uint8 RGB array of shape (2, H, W, 3): frame t, then frame t+s (any size; both the
same). Output: a uint8 array of shape (K, H, W, 3): frames t+2s ... t+(K+1)s predicted by
following the latent line z2 + k(z2 - z1), k = 1..K, at the input frames' size. K is the
``steps`` param (default 1).

Example:
    >>> model = mlflow.pyfunc.load_model("models:/vae@champion")
    >>> [nxt] = model.predict(np.stack([frame_t, frame_t_s]))  # (H, W, 3) uint8
    >>> model.predict(np.stack([frame_t, frame_t_s]), params={"steps": 3}).shape  # (3, H, W, 3)
"""

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel, PythonModelContext


class VarnextPredictor(PythonModel):
    """Predicts the next frames from two frames by linear extrapolation in latent space."""

    def load_context(self, context: PythonModelContext) -> None:
        """Loads the checkpoint directory logged as the ``checkpoint`` artifact."""
        import torch

        from varnext_ray.checkpoint_load import load_checkpoint

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.checkpoint = load_checkpoint(context.artifacts["checkpoint"], device=device)

    def predict(
        self,
        context: PythonModelContext,
        model_input: np.ndarray,  # MLflow infers no schema from ndarray: the signature's is used
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """(2, H, W, 3) uint8 frames t and t+s -> (K, H, W, 3) uint8 predictions."""
        from varnext_ray.predict import predict_frames

        frames = np.asarray(model_input)
        if frames.ndim != 4 or frames.shape[0] != 2 or frames.shape[-1] != 3:
            raise ValueError(
                f"input must be two RGB frames, shape (2, H, W, 3) (got {frames.shape})"
            )
        if frames.dtype != np.uint8:
            raise ValueError(f"input must be uint8 in 0..255 (got {frames.dtype})")
        steps = int((params or {}).get("steps", 1))
        return np.stack(predict_frames(self.checkpoint, frames[0], frames[1], steps))


mlflow.models.set_model(VarnextPredictor())
