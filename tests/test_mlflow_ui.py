"""The MLflow UI in a real browser: a sweep logged to a real ``mlflow server`` on 127.0.0.1,
opened in headless Chromium (driven over the DevTools protocol, tests/browser.py).

Checked: the experiment opens on the training-runs view (not the GenAI overview) at the URL
the CLI prints, listing the sweep and, expanded, its trials with their dataset; a trial's
artifact page shows its prediction strip (the image decoded by the browser, at the PNG's
size); its model-metrics page draws metric charts; the registry page shows the champion.
Screenshots are kept in the test's temporary folder, and their paths are printed (``-s``).

The sweep is written through :mod:`varnext_ray.tracking`, :mod:`varnext_ray.mlflow_extras`
and :mod:`varnext_ray.registry` as a sweep writes it, without running Ray.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from tests.browser import CHROMIUM, Browser
from tests.conftest import smoke_checkpoint
from varnext_ray import mlflow_extras, registry, tracking
from varnext_ray.media import save_png

pytestmark = pytest.mark.slow  # an mlflow server (session-wide) and a browser

EXP = "ui-test"
SWEEP = "sweep-ui-test-smoke"
MODEL = "ui-vae"
MAGENTA = (255, 0, 255)
TRIALS = {"trial-ui-a": (18.0, 19.5, 20.5), "trial-ui-b": (17.0, 17.5, 18.0)}  # extrap_psnr


def _needs_chromium() -> None:
    if not CHROMIUM.exists():
        message = f"needs Debian's chromium at {CHROMIUM}: apt-get install -y chromium"
        if os.environ.get("VARNEXT_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def sweep(mlflow_server: str, dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A sweep parent run and two trial runs (params, 3 epochs of metrics, a strip per epoch,
    the dataset as inputs, system metrics); the better trial registered as the champion."""
    uri, tmp = mlflow_server, tmp_path_factory.mktemp("ui_sweep")
    parent = tracking.start_run(
        uri, EXP, run_name=SWEEP, params={"space.name": "smoke"}, tags={"varnext.kind": "sweep"}
    )
    runs = {}
    for i, (name, values) in enumerate(TRIALS.items()):
        run = tracking.start_run(
            uri,
            EXP,
            run_name=name,
            params={"point.latent_dim": 8 * (i + 1), "point.lr": 0.003},
            tags={"varnext.kind": "trial", "varnext.trial_id": name[-1]},
            parent_run_id=parent,
        )
        mlflow_extras.log_dataset_inputs(uri, run, dataset_dir)
        with mlflow_extras.system_metrics(uri, run):
            for epoch, value in enumerate(values, start=1):
                metrics = {"extrap_psnr": value, "best_extrap_psnr": value, "epoch": epoch}
                tracking.log_metrics(uri, run, metrics | {"copy_last_psnr": 21.0}, step=epoch)
                strip = np.full((72, 7 * 64, 3), MAGENTA, np.uint8)
                strip[30:40] = 60 * epoch
                path = save_png(strip, tmp / name / f"strip_epoch_{epoch:03d}.png")
                tracking.log_artifact(uri, run, path, "strips")
        tracking.log_artifact(uri, run, smoke_checkpoint(tmp / name, "ckpt", i), "checkpoint")
        tracking.end_run(uri, run)
        runs[name] = run
    tracking.end_run(uri, parent)
    version = registry.register_run(uri, runs["trial-ui-a"], MODEL, metric="best_extrap_psnr")
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name(EXP)
    return {"uri": uri, "experiment": experiment, "parent": parent, "runs": runs, "model": version}


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mlflow_ui_screenshots")
    print(f"\nMLflow UI screenshots: {out}")
    return out


def _magenta_pixels(png: Path) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    return int((pixels == MAGENTA).all(axis=1).sum())


def test_experiment_opens_on_training_runs_listing_the_sweep_and_trials(
    sweep: dict, shots: Path, tmp_path: Path
) -> None:
    _needs_chromium()
    experiment = sweep["experiment"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    url = mlflow_extras.ui_url(sweep["uri"], experiment.experiment_id)
    with Browser(tmp_path) as page:
        page.goto(url)
        text = page.wait_for_text(SWEEP, "Run Name", "Dataset")
        assert page.evaluate("document.title").startswith("Runs - Experiment"), text[:500]
        for genai in ("Token Usage", "Traces 0", "Detect Issues"):  # MLflow 3's GenAI overview
            assert genai not in text
        assert "3 matching runs" in text
        page.screenshot(shots / "runs.png")
        expander = "button[data-component-id*='runnamecellrenderer']"  # the sweep's row
        page.wait_for(f"!!document.querySelector({json.dumps(expander)})", what="the row expander")
        page.evaluate(f"document.querySelector({json.dumps(expander)}).click()")
        text = page.wait_for_text(*TRIALS, "ds/train")
        page.screenshot(shots / "runs_expanded.png")
    assert text.index(SWEEP) < min(text.index(name) for name in TRIALS)  # nested under it


def test_a_trials_page_shows_its_prediction_strip(sweep: dict, shots: Path, tmp_path: Path) -> None:
    _needs_chromium()
    run = sweep["runs"]["trial-ui-a"]
    artifact = "strips/strip_epoch_003.png"
    url = mlflow_extras.ui_url(sweep["uri"], sweep["experiment"].experiment_id, run)
    url = url.replace("?", f"/artifacts/{artifact}?")
    with Browser(tmp_path) as page:
        page.goto(url)
        page.wait_for_text("trial-ui-a", artifact)
        image = f"document.querySelector('img[alt={json.dumps(artifact)}]')"
        size = page.wait_for(
            f"{image} && {image}.complete && {image}.naturalWidth > 0 && "
            f"[{image}.naturalWidth, {image}.naturalHeight]",
            what="the strip decoded in the page",
        )
        shot = page.screenshot(shots / "trial_strip.png")
    assert size == [7 * 64, 72]  # the PNG that was logged, decoded by the browser
    assert _magenta_pixels(shot) > 7 * 64 * 40, "the strip is not on the screen"


def test_a_trials_metrics_page_draws_charts(sweep: dict, shots: Path, tmp_path: Path) -> None:
    _needs_chromium()
    run = sweep["runs"]["trial-ui-a"]
    url = mlflow_extras.ui_url(sweep["uri"], sweep["experiment"].experiment_id, run)
    with Browser(tmp_path) as page:
        page.goto(url.replace("?", "/model-metrics?"))
        text = page.wait_for_text("best_extrap_psnr", "copy_last_psnr", "Step")
        lines = page.wait_for(
            "document.querySelectorAll('.js-plotly-plot path.js-line').length", what="chart lines"
        )
        page.screenshot(shots / "trial_metrics.png")
        page.goto(url.replace("?", "/system-metrics?"))
        page.wait_for_text("cpu_utilization_percentage")  # MLflow's system metrics charts
        page.screenshot(shots / "trial_system_metrics.png")
    assert lines >= 2 and "trial-ui-a (best_extrap_psnr)" in text


def test_the_registry_page_shows_the_champion(sweep: dict, shots: Path, tmp_path: Path) -> None:
    _needs_chromium()
    with Browser(tmp_path) as page:
        page.goto(f"{sweep['uri']}/#/models/{MODEL}")
        text = page.wait_for_text(MODEL, "Version 1", "champion")
        page.screenshot(shots / "registry.png")
    assert sweep["model"]["alias"] == "champion" and "@" in text
