"""varnext report over extreme values a store can hold: inf, NaN, huge ints, subnormals.

Each case is a real MLflow SQLite store with one sweep run and two trial runs (``point.*`` params,
a ``best_extrap_psnr_motion`` metric), reported through the CLI; the tick and axis functions are
also checked directly over many extreme ranges.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from varnext_ray import tracking
from varnext_ray.cli import main
from varnext_ray.report_page import SweepReport, _domain, _log_ticks, _ticks, _x_axis, scatter

EXP = "report-values"
BIG = 10**400  # a 400-digit integer
MAXF, TINY = sys.float_info.max, 5e-324  # the largest float and the smallest subnormal


def _store(tmp: Path, points: list[dict[str, Any]], objectives: list[float], log: bool) -> str:
    """A store holding one sweep (``lr`` a log range if ``log``) and a trial per point."""
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tracking.client(uri).create_experiment(EXP, artifact_location=str(tmp / "artifacts"))
    space = {"space.lr.low": 1e-4, "space.lr.high": 1.0, "space.lr.log": True} if log else {}
    parent = tracking.start_run(
        uri, EXP, run_name="sweep-values", params=space, tags={"varnext.kind": "sweep"}
    )
    for i, (point, objective) in enumerate(zip(points, objectives, strict=True)):
        run = tracking.start_run(
            uri,
            EXP,
            run_name=f"trial-{i}",
            params={f"point.{k}": v for k, v in point.items()},
            tags={"varnext.kind": "trial"},
            parent_run_id=parent,
        )
        tracking.log_metrics(uri, run, {"best_extrap_psnr_motion": objective}, step=1)
        tracking.end_run(uri, run, "FINISHED")
    tracking.end_run(uri, parent, "FINISHED")
    return uri


def _svg_numbers_are_finite(html: str) -> None:
    """Every coordinate the page's SVG holds is a finite number."""
    for svg in re.findall(r"<svg.*?</svg>", html, flags=re.S):
        values = re.findall(r'\b(?:c?x[12]?|c?y[12]?)="([^"]*)"', svg)
        assert values and all(math.isfinite(float(v)) for v in values), svg[:300]


CASES = {  # id: (points, objectives, lr a log range in the space, points left out of a plot)
    "lr-inf": ([{"lr": "inf"}, {"lr": 0.01}], [20.0, 21.0], False, 1),
    "lr-inf-log-space": ([{"lr": "inf"}, {"lr": 0.01}], [20.0, 21.0], True, 1),
    "lr-minus-inf-and-nan": ([{"lr": "-inf"}, {"lr": "nan"}], [20.0, 21.0], False, 2),
    "400-digit-int": ([{"depth": BIG}, {"depth": 3}], [20.0, 21.0], False, 1),
    "400-digit-ints-both": ([{"depth": BIG}, {"depth": -BIG}], [20.0, 21.0], False, 2),
    "5000-digit-string": ([{"depth": "9" * 5000}, {"depth": 2}], [20.0, 21.0], False, 1),
    "objectives-1e308": ([{"lr": 0.01}, {"lr": 0.02}], [1e308, -1e308], False, 0),
    "objectives-max-float": ([{"lr": 0.01}, {"lr": 0.02}], [MAXF, -MAXF], True, 0),
    "log-1e-320-to-1e300": ([{"lr": 1e-320}, {"lr": 1e300}], [20.0, 21.0], True, 0),
    "log-subnormals-only": ([{"lr": TINY}, {"lr": 1e-320}], [20.0, 21.0], True, 0),
    "log-600-decades-unknown-scale": ([{"lr": 1e-300}, {"lr": 1e300}], [20.0, 21.0], False, 0),
    "zero-width-x-and-y": ([{"lr": 0.01}, {"lr": 0.01}], [20.0, 20.0], True, 0),
    "zero-width-max-float": ([{"lr": MAXF}, {"lr": MAXF}], [MAXF, MAXF], False, 0),
    "subnormal-objectives": ([{"lr": 0.01}, {"lr": 0.1}], [TINY, 2 * TINY], True, 0),
    "negative-on-log-axis": ([{"lr": -1e300}, {"lr": 1e-300}], [-1e-300, 1e300], True, 0),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_report_renders_extreme_values(
    case: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    points, objectives, log, left_out = case
    uri = _store(tmp_path, points, objectives, log)
    out = tmp_path / "r.html"
    code = main(["report", "--experiment", EXP, "--tracking-uri", uri, "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    html = out.read_text()
    assert html.endswith("</html>\n") and "trial-0" in html and "trial-1" in html
    _svg_numbers_are_finite(html)
    notes = re.findall(r'class="(?:note|empty)"[^>]*>(\d+) points? left out', html)
    assert sum(map(int, notes)) == left_out, notes


@pytest.mark.parametrize("start_ms", [2**62, -(10**17)], ids=["year-146-million", "before-year-1"])
def test_a_sweep_time_out_of_the_calendar_is_shown_unknown(
    start_ms: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A start time edited into the store beyond ``datetime``'s years 1-9999 was ``unexpected
    ValueError: year 146140482 is out of range`` (exit 1)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    experiment = client.create_experiment(EXP, artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment, start_time=start_ms, tags={"varnext.kind": "sweep"})
    client.set_terminated(run.info.run_id)
    out = tmp_path / "r.html"
    code = main(["report", "--experiment", EXP, "--tracking-uri", uri, "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert f"{run.info.run_id}, started unknown;" in out.read_text()


# ---- the tick and axis functions over extreme ranges -------------------------------------------

EXTREMES = [
    0.0,
    -0.0,
    TINY,
    -TINY,
    1e-320,
    2.2250738585072014e-308,
    1e-300,
    1e-9,
    0.3,
    1.0,
    1.0000000000000002,
    math.nextafter(1e300, math.inf),
    math.nextafter(MAXF, 0.0),
    3.0,
    7e15,
    2.0**53,
    1e300,
    1e308,
    MAXF,
    -1.0,
    -1e308,
    -MAXF,
]


def _check(ticks: list[float], lo: float, hi: float) -> None:
    lo, hi = min(lo, hi), max(lo, hi)
    assert all(math.isfinite(t) for t in ticks), ticks
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks), ticks
    assert all(lo <= t <= hi for t in ticks), (lo, hi, ticks)
    assert len(ticks) <= 12, ticks


@pytest.mark.parametrize("integer", [False, True])
def test_linear_ticks_are_finite_sorted_and_in_range(integer: bool) -> None:
    for lo, hi in itertools.product(EXTREMES, repeat=2):
        _check(_ticks(lo, hi, integer=integer), lo, hi)
        _check(_ticks(lo, hi, 4, integer=integer), lo, hi)
    for bad in (math.inf, -math.inf, math.nan):
        assert _ticks(bad, 1.0) == _ticks(0.0, bad) == []
    assert _ticks(0.0, 10.0) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]  # the usual case unchanged


def test_log_ticks_are_finite_sorted_and_in_range() -> None:
    exponents = [-400.0, -330.0, -323.3, -307.5, -300.0, -3.2, -2.5, 0.0, 0.5, 1.0, 2.0]
    exponents += [300.0, 308.0, 308.25, 308.3, 330.0, 400.0, 1e300, -1e300]
    for lo, hi in itertools.product(exponents, repeat=2):
        ticks = _log_ticks(lo, hi)
        assert all(math.isfinite(t) and t > 0 for t in ticks), (lo, hi, ticks)
        assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks), (lo, hi, ticks)
        low, high = min(lo, hi), max(lo, hi)
        assert all(low - 1e-9 <= math.log10(t) <= high + 1e-9 for t in ticks), (lo, hi, ticks)
        assert len(ticks) <= 12, (lo, hi, ticks)
    for bad in (math.inf, -math.inf, math.nan):
        assert _log_ticks(bad, 1.0) == _log_ticks(-1.0, bad) == []
    assert len(_log_ticks(-345.0, 325.0)) >= 3  # 1e-320..1e300: decades, thinned


def test_domain_and_axes_place_every_finite_value() -> None:
    values: list[Any] = [*EXTREMES, BIG, -BIG, 7, -3, math.inf, -math.inf, math.nan]
    for a, b in itertools.product(values, repeat=2):
        finite = [v for v in (a, b) if isinstance(v, float) and math.isfinite(v)]
        if finite:
            lo, hi = _domain(finite)
            assert math.isfinite(lo) and math.isfinite(hi) and lo < hi, (a, b, lo, hi)
        for scale in ("", "log", "linear", "choices"):
            svg = scatter([(a, 1.0, "p"), (b, -MAXF, "q")], x_label="x", y_label="y", scale=scale)
            if "<svg" in svg:
                _svg_numbers_are_finite(svg)
            else:
                assert "left out" in svg, svg
    to_px, ticks = _x_axis([1e-320, 1e300], "log")
    assert math.isfinite(to_px(1e-320)) and math.isfinite(to_px(1e300)) and ticks
    assert "<svg" in scatter([(math.nan, 1.0, "<b>")], x_label="x", y_label="y", scale="choices")


def _report_of(searched: list[str], trials: list | None = None) -> SweepReport:
    """A sweep's report with ``searched`` hyperparameters (all choices) and ``trials``."""
    return SweepReport(
        experiment="e",
        run_id="r",
        name="n",
        started="unknown",
        objective="extrap_psnr_motion",
        direction="max",
        scales=dict.fromkeys(searched, "choices"),
        trials=trials or [],
        tracking_uri="sqlite:///x.db",
    )


def test_a_param_index_of_a_unicode_digit_is_a_name_not_a_number() -> None:
    """``point.linear.²`` or ``point.channels_²`` (MLflow takes the name): ``"²".isdigit()`` is
    true and ``int("²")`` refuses it, "unexpected ValueError" (exit 1)."""
    from varnext_ray.report import _point
    from varnext_ray.report_page import hyperparameters

    point = _point({"point.linear.0": "8", "point.linear.²": "4", "point.linear.1": "2"})
    assert point["linear"] == "[8, 2, 4]"
    report = _report_of(["channels_²", "channels_1", "channels_0"])
    assert hyperparameters(report) == ["channels_0", "channels_²", "channels_1"]


def test_names_with_thousands_of_digits_are_ordered_not_converted() -> None:
    """A hand-edited store (SQLite does not enforce MLflow's key lengths) can name a metric
    ``extrap_psnr_h`` + 5,000 digits or a param ``point.linear.`` + 5,000 digits: ordering them
    with ``int()`` was "unexpected ValueError: Exceeds the limit (4300 digits)" (exit 1)."""
    from varnext_ray.report import _point
    from varnext_ray.report_page import Trial, hyperparameters, render_page

    huge = "9" * 5000
    point = _point({f"point.linear.{huge}": "4", "point.linear.10": "2", "point.linear.9": "8"})
    assert point["linear"] == "[8, 2, 4]"
    metrics = {f"extrap_psnr_h{huge}": 1.0, "extrap_psnr_h10": 2.0, "extrap_psnr_h2": 3.0}
    trial = Trial("r1", "trial-1", "finished", metrics, {}, 20.0, 8, 100)
    report = _report_of([f"channels_{huge}", "channels_10", "channels_9"], [trial])
    assert hyperparameters(report) == ["channels_9", "channels_10", f"channels_{huge}"]
    html = render_page(report)
    assert html.index("extrap_psnr_h2<") < html.index("extrap_psnr_h10<") < html.index(huge)
