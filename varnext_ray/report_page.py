"""The HTML of a sweep report (:class:`SweepReport`, gathered by :mod:`varnext_ray.report`):
tables, inline SVG scatter plots and embedded images.

Everything is escaped with :func:`html.escape`; the page loads nothing (no script, no external
stylesheet, font or image). A missing value (a failed trial's metrics) shows as ``—``.

Example:
    >>> svg = scatter([(8, 21.5, "trial-a"), (16, 22.0, "trial-b")], x_label="latent_dim",
    ...               y_label="best_extrap_psnr", scale="linear")
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from typing import Any

from varnext_ray.number_text import decimal_order

MISSING = "—"
STRIPS = 3  # trials whose prediction strips are shown
W, H, LEFT, RIGHT, TOP, BOTTOM = 380, 250, 60, 14, 12, 44  # plot size and margins (px)
MAXF = sys.float_info.max
LOG_MIN, LOG_MAX = -307, math.log10(MAXF)  # the decades of normal floats (log axis ticks)
ToPixel = Callable[[Any], float | None]  # an axis' value -> pixel; None: not on the axis
ORDER = ("depth", "channels_", "kernel_size", "stride", "linear", "latent_dim", "beta", "lr")
SCALES = {  # a hyperparameter's search form -> its plot's caption
    "log": "log range (log axis)",
    "linear": "range",
    "choices": "choices (one position each)",
    "": "not in the sweep's params (axis from the values)",
}
METRICS = ("extrap_psnr", "copy_last_psnr", "extrap_skill", "latent_linearity")
_HORIZON = re.compile(r"extrap_psnr_h([0-9]+)$")
CSS = """body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #eee;
text-align:right;white-space:nowrap}th{background:#f4f4f4}td.name,th.name{text-align:left}
tr.failed td{color:#b00}.wide{overflow-x:auto}.plots{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0 0 16px}figcaption{font-size:12px;color:#555}svg{background:#fff}
svg text{font-size:11px;fill:#333}svg text.note{fill:#b00}.axis{stroke:#333}.grid{stroke:#eee}
.pt{fill:#2a6fdb;fill-opacity:.75;stroke:#fff}.pt.best{fill:#e4572e}
img{max-width:100%;image-rendering:pixelated;border:1px solid #ccc;margin-right:8px}"""


@dataclass
class Trial:
    """One trial child run, as the page shows it."""

    run_id: str
    name: str
    status: str  # finished, stopped early, failed, killed, running
    metrics: dict[str, float]
    point: dict[str, Any]  # the sampled hyperparameters
    objective: float | None  # best_<objective> (best over epochs), if finite
    latent_dim: int | None
    params: int | None
    failure: str = ""
    images: list[tuple[str, str]] = field(default_factory=list)  # (caption, data: URI)
    artifact_uri: str = ""  # where the run's strips and rollouts are


@dataclass
class SweepReport:
    """A sweep and its trials, best first (trials without an objective value last)."""

    experiment: str
    run_id: str
    name: str
    started: str
    objective: str
    direction: str  # max or min
    scales: dict[str, str]  # hyperparameter -> log, linear or choices (its search range)
    trials: list[Trial]
    tracking_uri: str
    artifact_uri: str = ""  # the sweep run's, where the page is logged
    artifact_location: str = ""  # the experiment's


def fmt(value: Any, digits: int = 4) -> str:
    """A value for a cell or a tooltip; None and non-finite numbers are ``—``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


# ---- SVG scatter plots ------------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    """``value`` as a finite float; None for inf, NaN, an int beyond a float, or a non-number."""
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _frac(value: float, lo: float, hi: float) -> float:
    """Where ``value`` sits in [lo, hi] (0 to 1), without overflowing when hi - lo is > MAXF."""
    if math.isinf(hi - lo):
        return (value / 2 - lo / 2) / (hi / 2 - lo / 2)
    return (value - lo) / (hi - lo)


def _pow10(exponent: float) -> float:
    """10 ** exponent, capped at the largest float."""
    try:
        return 10.0**exponent
    except OverflowError:
        return MAXF


def _ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """Round tick values in [lo, hi] (about ``n`` of them; whole numbers if ``integer``).

    Total over floats: non-finite bounds give no ticks, a range too narrow for a round step
    (zero width, subnormal) its ends.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    lo, hi = min(lo, hi), max(lo, hi)
    raw = hi / n - lo / n  # (hi - lo) / n, which could overflow
    if raw < sys.float_info.min:  # no normal float step: zero width, or subnormal
        return sorted({lo, hi})
    mag = 10.0 ** math.floor(math.log10(raw))
    mults = (1, 2, 5, 10) if integer and mag < 10 else (1, 2, 2.5, 5, 10)
    step = next((m * mag for m in mults if m * mag >= raw), 20 * mag)
    step = max(step, 1) if integer else step
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    ticks = (k * step for k in range(first, last + 1))  # rounding may step just past an end
    return sorted({min(max(t, lo), hi) for t in ticks if math.isfinite(t)})


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks in [10**lo, 10**hi] (exponents): decades (every k-th one over many), else 1-2-5,
    else round linear steps. Only normal floats are ticked; non-finite bounds give none."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    lo, hi = max(min(lo, hi), LOG_MIN), min(max(lo, hi), LOG_MAX)
    if lo > hi:
        return []
    first, last = math.ceil(lo), math.floor(hi)
    if last - first >= 2:
        k = next(k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500) if (last - first) // k < 8)
        return [float(f"1e{e}") for e in range(-(-first // k) * k, last + 1, k)]
    ticks = [
        float(f"{m}e{e}")
        for e in range(math.floor(lo), math.ceil(hi) + 1)
        for m in (1, 2, 5)
        if lo <= math.log10(m) + e <= hi
    ]
    ticks = [t for t in ticks if math.isfinite(t)]
    return ticks if len(ticks) >= 3 else [t for t in _ticks(_pow10(lo), _pow10(hi), 4) if t > 0]


def _domain(values: list[float]) -> tuple[float, float]:
    """[lo, hi] around finite ``values`` with a margin; finite, and lo < hi."""
    lo, hi = min(values), max(values)
    span = hi - lo
    pad = span * 0.08 if math.isfinite(span) else (hi / 2 - lo / 2) * 0.16
    pad = pad or abs(lo) * 0.1 or 0.5
    return max(lo - pad, -MAXF), min(hi + pad, MAXF)


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))


def _x_axis(xs: list[Any], scale: str) -> tuple[ToPixel, list[tuple[float, str]]]:
    """(value -> pixel, [(pixel, label)]) for a linear, log or categorical x axis.

    On a numeric axis a value that is not a finite float (inf, NaN, a 400-digit int) has no
    pixel (None); the axis is log for ``scale="log"`` (or, with no scale, positive values over
    more than a decade) unless a value is <= 0.
    """
    width = W - LEFT - RIGHT
    if scale == "choices" or not all(isinstance(x, int | float) for x in xs):
        cats = sorted(set(xs), key=_sort_key)
        band = width / max(len(cats), 1)
        pos = {c: LEFT + band * (i + 0.5) for i, c in enumerate(cats)}
        return pos.get, [(pos[c], fmt(c)) for c in cats]
    nums = [v for v in map(_finite, xs) if v is not None]
    if not nums:
        return lambda x: None, []
    small, big = min(nums), max(nums)
    if small > 0 and (scale == "log" or math.log10(big) - math.log10(small) > 1):
        lo, hi = _domain([math.log10(v) for v in nums])
        transform = math.log10
        ticks = [(t, f"{t:g}") for t in _log_ticks(lo, hi)]
    else:
        lo, hi = _domain(nums)
        transform = float
        integer = all(isinstance(x, int) for x in xs)
        ticks = [(t, f"{t:.6g}") for t in _ticks(lo, hi, integer=integer)]

    def to_px(x: Any) -> float | None:
        value = _finite(x)
        return None if value is None else LEFT + _frac(transform(value), lo, hi) * width

    return to_px, [(LEFT + _frac(transform(t), lo, hi) * width, label) for t, label in ticks]


def _left_out(names: list[str], x_label: str = "", y_label: str = "") -> str:
    """The (escaped) note on the points a plot leaves out: not finite, or beyond a float."""
    what = f"{x_label} or {y_label}" if x_label else "value"
    count = f"{len(names)} point{'s' if len(names) != 1 else ''}"
    return escape(f"{count} left out ({what} not a finite number)")


def scatter(
    points: list[tuple[Any, float, str]],
    *,
    x_label: str,
    y_label: str,
    scale: str = "",
    best: str | None = None,
) -> str:
    """An inline SVG scatter plot with axes, ticks, labels and a tooltip per point.

    Args:
        points: (x, y, name) per point.
        x_label: The x axis' label (the hyperparameter).
        y_label: The y axis' label (the metric).
        scale: ``log``, ``linear`` or ``choices`` (categories); ``""`` decides from the values
            (log when positive values span more than a decade).
        best: The name of the point drawn as the best.

    A point whose y, or x on a numeric axis, is not a finite float (inf, NaN, an int beyond a
    float) is left out, and a note in the plot says how many were.
    """
    if not points:
        return f'<p class="empty">no trial reported {escape(y_label)}</p>'
    x_px, x_ticks = _x_axis([x for x, y, _ in points if _finite(y) is not None], scale)
    placed: list[tuple[Any, float, str, float]] = []  # (x, y, name, x pixel)
    left_out: list[str] = []  # names of the points with no place on an axis
    for x, y, name in points:
        value, px = _finite(y), x_px(x)
        if value is None or px is None:
            left_out.append(name)
        else:
            placed.append((x, value, name, px))
    if not placed:
        return f'<p class="empty">{_left_out(left_out, x_label, y_label)}</p>'
    lo, hi = _domain([y for _, y, _, _ in placed])
    bottom = H - BOTTOM
    y_px = lambda y: bottom - _frac(y, lo, hi) * (bottom - TOP)  # noqa: E731
    parts = [
        f'<svg class="plot" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{escape(y_label)} against {escape(x_label)}">'
    ]
    for t in _ticks(lo, hi):
        y = y_px(t)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{LEFT - 5}" y="{y + 4:.1f}" text-anchor="end">{t:.6g}</text>')
    for x, label in x_ticks:
        parts.append(
            f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}"/>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{escape(label)}</text>'
        )
    parts += [
        f'<line class="axis" x1="{LEFT}" x2="{W - RIGHT}" y1="{bottom}" y2="{bottom}"/>',
        f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom}"/>',
        f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text transform="translate(14 {(TOP + bottom) / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]
    if left_out:
        parts.append(
            f'<text class="note" x="{W - RIGHT}" y="{TOP + 10}" text-anchor="end">'
            f"{_left_out(left_out)}<title>{escape(', '.join(left_out))}</title></text>"
        )
    seen: dict[Any, int] = {}
    for x, y, name, px in placed:
        nudge = 5 * (seen.get(x, 0) % 2 * 2 - 1) * ((seen.get(x, 0) + 1) // 2)  # 0, +5, -5, +10
        seen[x] = seen.get(x, 0) + 1
        tip = f"{name}: {x_label} = {fmt(x)}, {y_label} = {fmt(y)}"
        parts.append(
            f'<circle class="pt{" best" if name == best else ""}" cx="{px + nudge:.1f}" '
            f'cy="{y_px(y):.1f}" r="4.5"><title>{escape(tip)}</title></circle>'
        )
    return "".join([*parts, "</svg>"])


# ---- the page ---------------------------------------------------------------------------------


def hyperparameters(report: SweepReport) -> list[str]:
    """The searched hyperparameters, in the order a space lists them."""

    def rank(name: str) -> tuple:
        for i, prefix in enumerate(ORDER):
            if name == prefix or (prefix.endswith("_") and name.startswith(prefix)):
                suffix = name[len(prefix) :]
                digits = suffix.isascii() and suffix.isdigit()
                return (i, decimal_order(suffix) if digits else (0, ""), name)
        return (len(ORDER), (0, ""), name)

    return sorted(report.scales, key=rank)


def _summary(report: SweepReport) -> str:
    counts: dict[str, int] = {}
    for t in report.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    states = ", ".join(f"{n} {s}" for s, n in counts.items())
    items = [
        f"trials: {len(report.trials)} total ({states or 'none yet'})",
        f"objective: best_{report.objective} ({report.direction}imise)",
    ]
    best = next((t for t in report.trials if t.objective is not None), None)
    if best is not None:
        m = best.metrics
        items.append(
            f"best: {fmt(best.objective)} ({best.name}); its extrap_psnr "
            f"{fmt(m.get('extrap_psnr'))} dB vs the copy-last baseline "
            f"{fmt(m.get('copy_last_psnr'))} dB (extrap_skill {fmt(m.get('extrap_skill'), 3)})"
        )
    lis = "".join(f"<li>{escape(i)}</li>" for i in items)
    failed = "".join(
        f"<li>{escape(t.name)}: {escape(t.failure or 'no reason recorded')}</li>"
        for t in report.trials
        if t.status == "failed"
    )
    return f"<ul>{lis}</ul>" + (f"<p>Failed trials:</p><ul>{failed}</ul>" if failed else "")


def _table(report: SweepReport, top: int) -> str:
    searched = [h for h in hyperparameters(report) if h != "latent_dim"]
    shown = report.trials[:top]
    horizons = sorted(
        {k for t in shown for k in t.metrics if _HORIZON.match(k)},
        key=lambda k: decimal_order(_HORIZON.match(k)[1]),
    )
    head = ["rank", "run", "status", f"best_{report.objective}", *METRICS, *horizons]
    head += ["latent_dim", "params", "epochs", *searched]
    rows = []
    for rank, t in enumerate(shown, start=1):
        epochs = t.metrics.get("epoch")
        cells = [rank, t.name, t.status, fmt(t.objective)]
        cells += [fmt(t.metrics.get(k)) for k in (*METRICS, *horizons)]
        cells += [fmt(t.latent_dim), f"{t.params:,}" if t.params is not None else MISSING]
        cells += [fmt(int(epochs)) if epochs is not None else MISSING]
        cells += [fmt(t.point.get(h)) for h in searched]
        tds = "".join(
            f"<td{' class=name' if i == 1 else ''}>{escape(str(c))}</td>"
            for i, c in enumerate(cells)
        )
        rows.append(
            f'<tr class="trial {t.status.replace(" ", "-")}" '
            f'data-run-id="{escape(t.run_id)}">{tds}</tr>'
        )
    ths = "".join(
        f"<th{' class=name' if i == 1 else ''}>{escape(h)}</th>" for i, h in enumerate(head)
    )
    return (
        f'<div class="wide"><table id="best-trials"><thead><tr>{ths}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        f"<p><small>best_{escape(report.objective)} is the best epoch's value; the other metrics "
        "are the last epoch's.</small></p>"
    )


def _plots(report: SweepReport) -> str:
    ranked = [t for t in report.trials if t.objective is not None]
    best = ranked[0].name if ranked else None
    y_label = f"best_{report.objective}"
    figures = []
    for name in hyperparameters(report):
        points = [(t.point[name], t.objective, t.name) for t in ranked if name in t.point]
        svg = scatter(points, x_label=name, y_label=y_label, scale=report.scales[name], best=best)
        scale = SCALES[report.scales[name]]
        figures.append(
            f"<figure>{svg}<figcaption>{escape(name)}: {escape(scale)}</figcaption></figure>"
        )
    skill = [
        (t.latent_dim, t.metrics["extrap_skill"], t.name)
        for t in report.trials
        if t.latent_dim is not None and "extrap_skill" in t.metrics
    ]
    latent = scatter(
        skill,
        x_label="latent_dim",
        y_label="extrap_skill",
        scale=report.scales.get("latent_dim", ""),
        best=best,
    )
    return (
        '<section id="hyperparameters"><h2>Objective against each searched hyperparameter</h2>'
        "<p>One point per trial with a value (hover for its name); the best trial is red.</p>"
        f'<div class="plots">{"".join(figures)}</div></section>'
        '<section id="latent"><h2>Latent size against extrap_skill</h2>'
        f"<figure>{latent}<figcaption>extrap_skill = 1 − extrap_mse / copy_last_mse: above 0 "
        "beats copying the last frame (last epoch)</figcaption></figure></section>"
    )


def _strips(report: SweepReport) -> str:
    figures = []
    ranked = [t for t in report.trials if t.objective is not None][:STRIPS]
    for rank, t in enumerate(ranked, start=1):
        imgs = "".join(
            f'<img src="{uri}" alt="{escape(path)} of {escape(t.name)}" title="{escape(path)}">'
            for path, uri in t.images
        )
        names = ", ".join(path for path, _ in t.images) or "no strip logged"
        figures.append(
            f"<figure>{imgs}<figcaption>#{rank} {escape(t.name)} "
            f"(best_{escape(report.objective)} {fmt(t.objective)}): {escape(names)}"
            "</figcaption></figure>"
        )
    return (
        '<section id="strips"><h2>Prediction strips of the top trials</h2><p>Columns: frame t, '
        "t+s, truth t+2s, latent prediction, oracle (decoded true latent), copy-last, error map; "
        "one validation triplet per row.</p>" + "".join(figures) + "</section>"
    )


def render_page(report: SweepReport, *, top: int = 10) -> str:
    """The whole page (a string of HTML5)."""
    title = f"Sweep report: {report.experiment} / {report.name} ({report.started[:10]})"
    meta = (
        f"sweep run {report.run_id}, started {report.started}; objective best_{report.objective} "
        f"({report.direction}); tracking {report.tracking_uri}"
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{CSS}</style></head><body><h1>{escape(title)}</h1>"
        f'<p class="meta">{escape(meta)}</p>'
        f'<section id="summary"><h2>Summary</h2>{_summary(report)}</section>'
        f'<section id="table"><h2>Best trials ({min(top, len(report.trials))} of '
        f"{len(report.trials)})</h2>{_table(report, top)}</section>"
        f"{_plots(report)}{_strips(report)}</body></html>\n"
    )
