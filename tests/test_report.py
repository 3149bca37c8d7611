"""varnext report: a real MLflow store (SQLite) shaped like a sweep, the page in headless Chromium.

The store holds what ``varnext sweep`` logs (a parent run tagged ``varnext.kind=sweep`` with
the space as ``space.*`` params; trial child runs with ``point.*``/``arch.*`` params, metrics at
several epochs and real PNG strips), written through :mod:`varnext_ray.tracking` without
running Ray: the sweep itself is tested in tests/test_sweep.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
import pytest
from PIL import Image

from tests.browser import CHROMIUM, HEADLESS_FLAGS
from tests.conftest import REPO
from tests.ports import free_port
from varnext_ray import tracking
from varnext_ray.cli import main
from varnext_ray.media import save_png
from varnext_ray.search_space import load_space

EXP = "report-test"
MAGENTA = (255, 0, 255)  # the strips' colour, looked for in the screenshot
SPACE = {  # a flat-latent space over depth, channels, latent size, beta and lr
    "name": "smoke",
    "objective": "extrap_psnr",
    "epochs": 3,
    "encoder": {"depth": {"low": 2, "high": 3}, "channels": [8, 16]},
    "latent_dim": [8, 16, 32],
    "beta": {"low": 0.001, "high": 0.05, "log": True},
    "lr": {"low": 0.002, "high": 0.01, "log": True},
}
# name: (depth, channels, latent_dim, beta, lr, best_extrap_psnr per epoch (None: FAILED))
TRIALS: dict[str, tuple] = {
    "trial-a": (2, (8, 16), 8, 0.002, 0.003, (20.0, 21.0, 22.0)),
    "trial-b": (3, (16, 16, 8), 16, 0.01, 0.008, (21.0, 24.0, 25.5)),
    "trial-c": (2, (16, 8), 32, 0.04, 0.002, (17.0, 17.5, 18.0)),
    "trial-d": (3, (8, 8, 16), 16, 0.005, 0.005, (22.0, 23.0)),  # stopped early by ASHA
    "trial-e": (2, (8, 8), 8, 0.02, 0.009, (19.0, 19.5, 20.0)),
    "trial-f": (3, (16, 16, 16), 32, 0.001, 0.004, None),
}
ORDER = ["trial-b", "trial-d", "trial-a", "trial-e", "trial-c", "trial-f"]
PLOTS = ["depth", "channels_0", "channels_1", "channels_2", "latent_dim", "beta", "lr"]
POINTS = {"channels_2": 2}  # points per plot (else 5): the finished trials of depth 3
XSS = "<script>alert(1)</script>"


def _strip(path: Path, shade: int) -> Path:
    """A 2-row, 7-column strip of 64x36 tiles: magenta with a grey band that varies per epoch."""
    array = np.zeros((72, 7 * 64, 3), np.uint8)
    array[:] = MAGENTA
    array[30:40] = shade
    return save_png(array, path)


def _trial(uri: str, parent: str, tmp: Path, name: str, spec: tuple) -> str:
    depth, channels, latent, beta, lr, best = spec
    point = {"depth": depth, **{f"channels_{i}": c for i, c in enumerate(channels)}}
    point |= {"latent_dim": latent, "beta": beta, "lr": lr}
    arch = {"latent_dim": latent, "encoder": {"conv": [{"out_channels": c} for c in channels]}}
    run = tracking.start_run(
        uri,
        EXP,
        run_name=name,
        params=tracking.flatten({"point": point, "arch": arch}) | {"arch_params": 1000 * latent},
        tags={"varnext.kind": "trial", "varnext.trial_id": name[-1]},
        parent_run_id=parent,
    )
    if best is None:
        tracking.end_run(uri, run, "FAILED", f"encoder.conv[2]: shrinks the image {XSS}")
        return run
    for epoch, value in enumerate(best, start=1):
        copy_last = 21.0
        metrics = {
            "epoch": epoch,
            "extrap_psnr": value,
            "best_extrap_psnr": value,
            "copy_last_psnr": copy_last,
            "extrap_skill": 1 - 10 ** ((copy_last - value) / 10),
            "latent_linearity": 0.5 + 0.1 * epoch,
            "val_loss": 100.0 - value,
            "best_val_loss": 100.0 - value,
        }
        if name == "trial-b":  # the metrics and rollouts another feature adds
            metrics |= {"extrap_psnr_h1": value, "extrap_psnr_h2": value - 2}
            frames = [Image.new("RGB", (32, 18), (0, 40 * epoch, 255)) for _ in range(2)]
            gif = tmp / name / f"rollout_epoch_{epoch:03d}.gif"
            gif.parent.mkdir(parents=True, exist_ok=True)
            frames[0].save(gif, save_all=True, append_images=frames[1:])
            tracking.log_artifact(uri, run, gif, "rollouts")
        tracking.log_metrics(uri, run, metrics, step=epoch)
        shade = 60 * epoch + 5 * sorted(TRIALS).index(name) if name in TRIALS else 0
        strip = _strip(tmp / name / f"strip_epoch_{epoch:03d}.png", shade)
        tracking.log_artifact(uri, run, strip, "strips")
    if len(best) < 3:
        tracking.set_tags(uri, run, {"varnext.stopped_early": "true"})
    tracking.end_run(uri, run, "FINISHED")
    return run


def _sweep(uri: str, name: str, space: dict, trials: dict[str, tuple], tmp: Path) -> dict:
    params = tracking.flatten({"space": space, "sweep": {"samples": len(trials), "epochs": 3}})
    parent = tracking.start_run(
        uri, EXP, run_name=name, params=params, tags={"varnext.kind": "sweep"}
    )
    runs = {n: _trial(uri, parent, tmp / name, n, spec) for n, spec in trials.items()}
    tracking.end_run(uri, parent, "FINISHED")
    return {"parent": parent, "runs": runs}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two sweeps (an older one minimising val_loss), a train run, and a sweep-less experiment."""
    tmp = tmp_path_factory.mktemp("report_store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    for name in (EXP, "no-sweep"):  # artifacts under tmp, not ./mlruns
        tracking.client(uri).create_experiment(name, artifact_location=str(tmp / name))
    space_file = tmp / "space.json"  # the space the fake trials below were drawn from
    space_file.write_text(json.dumps(SPACE | {"base": str(REPO / "configs" / "smoke_64x36.json")}))
    space = load_space(space_file)[0].model_dump(mode="json", warnings=False)
    old_trials = {"old-1": TRIALS["trial-a"], "old-2": TRIALS["trial-b"]}
    old = _sweep(uri, "sweep-old", space | {"objective": "val_loss"}, old_trials, tmp)
    time.sleep(0.01)  # start times order the sweeps
    new = _sweep(uri, "sweep-report-test-smoke", space, TRIALS, tmp)
    tracking.start_run(uri, EXP, run_name="a-train-run", tags={"varnext.kind": "train"})
    tracking.start_run(uri, "no-sweep", run_name="train-only", tags={"varnext.kind": "train"})
    return {"uri": uri, "old": old, "new": new, "tmp": tmp}


def _report(store: dict, out: Path, *extra: str, capsys: pytest.CaptureFixture) -> str:
    argv = ["report", "--experiment", EXP, "--tracking-uri", store["uri"], "--out", str(out)]
    assert main([*argv, *extra]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def page(store: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from varnext_ray.report import write_report

    out = tmp_path_factory.mktemp("report_page") / "page.html"
    write_report(store["uri"], EXP, out=out)
    return out


def _row_names(html: str) -> list[str]:
    return re.findall(r'<tr class="trial[^"]*"[^>]*><td>\d+</td><td class="?name"?>([^<]+)<', html)


# ---- the page ---------------------------------------------------------------------------------


def test_cli_writes_the_page_and_logs_it_to_the_sweep_run(
    store: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    out = _report(store, tmp_path / "sub" / "r.html", "--top", "4", capsys=capsys)
    page = (tmp_path / "sub" / "r.html").read_text()
    parent = store["new"]["parent"]
    assert (
        str(tmp_path / "sub" / "r.html") in out and f"{parent}/artifacts/report/report.html" in out
    )
    assert _row_names(page) == ORDER[:4]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["r.html"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "sub" / "r.html").stat().st_mode & 0o777 == 0o666 & ~umask  # shareable
    client = mlflow.MlflowClient(store["uri"])
    assert [a.path for a in client.list_artifacts(parent, "report")] == ["report/report.html"]
    logged = client.download_artifacts(parent, "report/report.html", str(tmp_path))
    assert Path(logged).read_text() == page
    for run in store["new"]["runs"].values():  # only the parent run gets the page
        assert not client.list_artifacts(run, "report")
    assert main(["report", "--experiment", EXP, "--tracking-uri", store["uri"]]) == 0
    assert (tmp_path / f"report_{EXP}.html").is_file()  # the default --out


def test_rows_are_best_first_and_the_failed_trial_is_shown_failed(page: Path) -> None:
    html = page.read_text()
    assert _row_names(html) == ORDER
    failed = re.search(r'<tr class="trial failed"[^>]*>(.*?)</tr>', html)[1]
    assert "<td>failed</td>" in failed and "trial-f" in failed
    assert failed.count("<td>—</td>") >= 6 and "nan" not in html.lower()
    stopped = re.search(r'<tr class="trial stopped-early"[^>]*>(.*?)</tr>', html)[1]
    assert "trial-d" in stopped and "<td>23</td>" in stopped
    assert "6 total (4 finished, 1 stopped early, 1 failed)" in html.replace("\n", " ")
    assert "best: 25.5 (trial-b)" in html and "copy-last baseline 21 dB" in html
    assert "best_extrap_psnr (maximise)" in html
    assert "sweep-report-test-smoke" in html.split("</h1>")[0]  # the latest sweep


def test_text_is_escaped_and_nothing_is_fetched(page: Path) -> None:
    html = page.read_text()
    assert XSS not in html and escape(XSS) in html
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<(script|link|iframe|object)\b|@import|url\(", html)
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/") for s in sources)


def test_horizon_columns_and_latest_images_of_the_top_three(store: dict, page: Path) -> None:
    html = page.read_text()
    head = re.search(r"<thead>(.*?)</thead>", html)[1]
    assert "<th>extrap_psnr_h1</th><th>extrap_psnr_h2</th>" in head
    client = mlflow.MlflowClient(store["uri"])
    runs = store["new"]["runs"]
    for name, images in (("trial-b", 2), ("trial-d", 1), ("trial-a", 1), ("trial-e", 0)):
        strip = "strips/strip_epoch_003.png" if name != "trial-d" else "strips/strip_epoch_002.png"
        local = client.download_artifacts(runs[name], strip, str(page.parent))
        data = base64.b64encode(Path(local).read_bytes()).decode()
        assert (f"data:image/png;base64,{data}" in html) == (images > 0), name
        assert html.count(f'of {name}"') == images, name
        first = client.download_artifacts(
            runs[name], "strips/strip_epoch_001.png", str(page.parent)
        )
        assert base64.b64encode(Path(first).read_bytes()).decode() not in html  # only the latest
    assert html.count("data:image/gif;base64,") == 1


def _figures(html: str) -> dict[str, str]:
    """Each plot's SVG by the first word of its caption."""
    found = re.findall(r"<figure>(<svg.*?</svg>)<figcaption>(\w+)", html)
    return {caption: svg for svg, caption in found}


def _x_ticks(svg: str) -> list[str]:
    return re.findall(r'<text x="[\d.]+" y="\d+" text-anchor="middle">([^<]+)</text>', svg)


def test_plots_use_log_and_categorical_axes(page: Path) -> None:
    plots = _figures(page.read_text())
    assert list(plots) == [*PLOTS, "extrap_skill"]
    assert _x_ticks(plots["lr"])[:-1] == ["0.002", "0.005", "0.01"]  # log range: 1-2-5 ticks
    assert _x_ticks(plots["latent_dim"])[:-1] == ["8", "16", "32"]  # choices: one position each
    assert _x_ticks(plots["depth"]) == ["2", "3", "depth"]  # an integer range; the label
    for name, svg in plots.items():
        assert svg.count("<circle") == POINTS.get(name, 5), name
        assert svg.count('class="pt best"') == 1, name


@pytest.mark.parametrize(
    ("sweep", "order"),
    [("old", ["old-2", "old-1"]), ("new", ORDER)],  # old: val_loss 74.5 < 78, min first
)
def test_sweep_flag_picks_the_sweep_and_its_direction(
    store: dict, sweep: str, order: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _report(store, tmp_path / "r.html", "--sweep", store[sweep]["parent"], capsys=capsys)
    html = (tmp_path / "r.html").read_text()
    assert _row_names(html) == order


@pytest.mark.slow  # starts an mlflow server unless another test module already did
def test_report_over_an_http_tracking_server(mlflow_server: str, tmp_path: Path) -> None:
    from varnext_ray.report import write_report

    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(SPACE | {"base": str(REPO / "configs" / "smoke_64x36.json")}))
    space = load_space(space_file)[0].model_dump(mode="json", warnings=False)
    trials = {n: TRIALS[n] for n in ("trial-f", "trial-d")}
    sweep = _sweep(mlflow_server, "sweep-http", space, trials, tmp_path)
    path, artifact = write_report(mlflow_server, EXP, out=tmp_path / "r.html")
    html = path.read_text()
    assert _row_names(html) == ["trial-d", "trial-f"]
    assert html.count('<img src="data:image/png;base64,') == 1
    assert artifact.endswith(f"{sweep['parent']}/artifacts/report/report.html")
    client = mlflow.MlflowClient(mlflow_server)
    logged = client.download_artifacts(sweep["parent"], "report/report.html", str(tmp_path))
    assert Path(logged).read_text() == html


# ---- in a real browser ------------------------------------------------------------------------


def _chromium(args: list[str], tmp: Path, timeout_s: float = 60) -> str:
    """Runs headless Chromium in its own process group (killed on timeout); returns stdout."""
    if not CHROMIUM.exists():
        message = f"needs Debian's chromium at {CHROMIUM}: apt-get install -y chromium"
        if os.environ.get("VARNEXT_REQUIRE_BROWSER"):  # CI installs it: missing is a failure
            pytest.fail(message)
        pytest.skip(message)
    cmd = [
        str(CHROMIUM),
        *HEADLESS_FLAGS,
        f"--user-data-dir={tmp / 'profile'}",
        *args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium took over {timeout_s} s: {' '.join(cmd)}")
    with contextlib.suppress(ProcessLookupError):  # helpers that outlive the browser
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-2000:]
    return out


def test_the_page_renders_in_headless_chromium(page: Path, tmp_path: Path) -> None:
    dom = _chromium(["--dump-dom", page.as_uri()], tmp_path)
    assert "<title>Sweep report: report-test / sweep-report-test-smoke" in dom
    assert _row_names(dom) == ORDER
    plots = _figures(dom)
    assert list(plots) == [*PLOTS, "extrap_skill"]
    for name, svg in plots.items():
        assert svg.count("<circle") == svg.count("<title>") == POINTS.get(name, 5), name
    images = re.findall(r'<img src="data:image/(png|gif);base64,', dom)
    assert sorted(images) == ["gif", "png", "png", "png"]
    shot = tmp_path / "shot.png"
    # tall enough to hold the strips at the bottom of the page
    _chromium([f"--screenshot={shot}", "--window-size=1280,2600", page.as_uri()], tmp_path)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert len(np.unique(pixels, axis=0)) > 100, "the screenshot is (nearly) blank"
    magenta = (pixels == MAGENTA).all(axis=1).sum()
    assert magenta > 3 * 448 * 50, f"the strips were not drawn ({magenta} magenta pixels)"
    blue = ((pixels[:, 2] > 180) & (pixels[:, 2] - pixels[:, 0] > 80)).sum()
    assert blue > 30 * 40, f"the plots' points were not drawn ({blue} blue pixels)"


def test_help_ends_with_an_example(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("  varnext report --exp")


# ---- bad inputs -------------------------------------------------------------------------------


class Case(NamedTuple):
    """``argv`` is filled in with ``str.format``: ``{f}`` is what ``setup`` made in the test's
    folder ``{tmp}``; ``{uri}`` is the store, ``{trial}`` a trial run's id, ``{port}`` a free
    port. ``--out {tmp}/r.html`` is added unless ``argv`` names an ``--out``."""

    argv: str
    expected: str
    setup: Callable[[Path], str] | None = None


def _file(tmp: Path) -> str:
    (tmp / "a-file").write_text("not a folder\n")
    return str(tmp / "a-file")


def _read_only(tmp: Path) -> str:
    (tmp / "ro").mkdir(mode=0o555)
    return str(tmp / "ro")


REPORT = "report --experiment " + EXP + " --tracking-uri {uri}"
NOT_A_SWEEP = f"is not a sweep of experiment '{EXP}'"
AS_ROOT = pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only folder")
CASES = {
    "unknown-experiment": Case("report --experiment nope --tracking-uri {uri}", "no experiment"),
    "experiment-without-sweep": Case(
        "report --experiment no-sweep --tracking-uri {uri}", "experiment 'no-sweep' holds no sweep"
    ),
    "sweep-is-a-trial-run": Case(REPORT + " --sweep {trial}", NOT_A_SWEEP),
    "sweep-unknown-id": Case(REPORT + " --sweep 0123abcd", NOT_A_SWEEP),
    "out-is-a-directory": Case(REPORT + " --out {tmp}", "--out is a directory"),
    "out-under-a-file": Case(REPORT + " --out {f}/r.html", "is a file, not a folder", _file),
    "out-read-only": Case(
        REPORT + " --out {f}/r.html", "--out is not in a writable directory", _read_only
    ),
    "store-missing": Case(
        "report --experiment x --tracking-uri sqlite:///{tmp}/typo.db",
        "no MLflow database at this path",
    ),
    "store-unreachable": Case(
        "report --experiment x --tracking-uri http://127.0.0.1:{port}",
        "MLflow tracking server unreachable",
    ),
    "out-is-the-mlflow-database": Case(
        REPORT + " --out {db}", "the output would overwrite a file it must keep"
    ),
    "out-is-the-mlflow-database-even-with-overwrite": Case(
        REPORT + " --overwrite --out {db}", "the output would overwrite a file it must keep"
    ),
    "out-exists": Case(
        REPORT + " --out {f}", "the output file already exists", lambda tmp: _file(tmp)
    ),
    "top-0": Case(REPORT + " --top 0", "--top must be >= 1 (got 0)"),
    "top-not-int": Case(REPORT + " --top x", "argument --top: invalid int value: 'x'"),
    "experiment-missing": Case(
        "report --tracking-uri {uri}", "the following arguments are required: --experiment"
    ),
}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=i, marks=[AS_ROOT] if i == "out-read-only" else [])
        for i, c in CASES.items()
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case: Case,
    store: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = {
        "tmp": tmp_path,
        "uri": store["uri"],
        "trial": store["new"]["runs"]["trial-a"],
        "port": free_port(),
        "db": store["uri"][len("sqlite:///") :],
    }
    if case.setup is not None:
        names["f"] = case.setup(tmp_path)
    argv = case.argv.format(**names).split()
    argv += [] if "--out" in argv else ["--out", str(tmp_path / "r.html")]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = sorted(tmp_path.rglob("*"))
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.expected in lines[0], lines[0]
    assert sorted(tmp_path.rglob("*")) == before, "the command wrote something"


def test_a_page_written_meanwhile_by_another_report_is_kept(
    store: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --overwrite the check came first and the write replaced whatever was there by
    then: three reports to one --out all said "wrote" and replaced each other."""
    from varnext_ray import report
    from varnext_ray.errors import UserError

    out = tmp_path / "same.html"
    render = report.render_page

    def render_while_another_report_writes(*args: Any, **kwargs: Any) -> str:
        out.write_text("the other report's page")  # what a concurrent report writes
        return render(*args, **kwargs)

    monkeypatch.setattr(report, "render_page", render_while_another_report_writes)
    with pytest.raises(UserError, match="output already exists"):
        report.write_report(store["uri"], EXP, out=out)
    assert out.read_text() == "the other report's page"
    assert [p.name for p in tmp_path.iterdir()] == ["same.html"]


def test_a_deleted_sweep_is_named_with_how_to_restore_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sweep whose parent run was deleted read as "holds no sweep" (or, with --sweep, as
    "is not a sweep"): the search sees active runs only."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.client(uri).create_experiment("gone", artifact_location=str(tmp_path / "gone"))
    parent = tracking.start_run(uri, "gone", run_name="sweep-x", tags={"varnext.kind": "sweep"})
    tracking.end_run(uri, parent, "FINISHED")
    tracking.client(uri).delete_run(parent)
    capsys.readouterr()  # MLflow's notes as it made the store
    for extra in ([], ["--sweep", parent]):
        argv = ["report", "--experiment", "gone", "--tracking-uri", uri, *extra]
        assert main([*argv, "--out", str(tmp_path / "r.html")]) == 2
        err = capsys.readouterr().err.strip()
        assert f"the sweep run {parent} (sweep-x) of experiment 'gone' was deleted" in err, err
        assert f"mlflow runs restore --run-id {parent}" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r.html").exists()
