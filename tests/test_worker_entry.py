"""The workers' entry point and config unpickle without torch (what Train's controller loads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from ray import cloudpickle

from varnext_ray.settings import TrainSettings
from varnext_ray.tracking import TrackingRun
from varnext_ray.worker_entry import LoopConfig, train_loop_per_worker


def test_controller_payload_unpickles_without_torch(tmp_path: Path) -> None:
    loop = LoopConfig(
        arch={"input": {"channels": 3, "height": 18, "width": 32}},
        settings=TrainSettings(epochs=2),
        on_triplets=False,
        rollout_steps=2,
        tracking=TrackingRun(uri="sqlite:///x.db", run_id="abc"),
        background=np.zeros((18, 32, 3), np.uint8),
    )
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(cloudpickle.dumps((train_loop_per_worker, {"loop": loop})))
    code = (
        "import pickle, sys\n"
        f"fn, config = pickle.loads(open({str(payload)!r}, 'rb').read())\n"
        "assert fn.__module__ == 'varnext_ray.worker_entry', fn.__module__\n"
        "assert config['loop'].settings.epochs == 2 and config['loop'].background.shape == "
        "(18, 32, 3)\n"
        "heavy = sorted(m for m in ('torch', 'torchmetrics', 'mlflow') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"unpickling the workers' payload imports {out.stdout}"
