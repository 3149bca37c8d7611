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
from dataclasses import dataclass, field
from html import escape
from typing import Any

MISSING = "—"
STRIPS = 3  # trials whose prediction strips are shown
W, H, LEFT, RIGHT, TOP, BOTTOM = 380, 250, 60, 14, 12, 44  # plot size and margins (px)
ORDER = ("depth", "channels_", "kernel_size", "stride", "linear", "latent_dim", "beta", "lr")
SCALES = {  # a hyperparameter's search form -> its plot's caption
    "log": "log range (log axis)",
    "linear": "range",
    "choices": "choices (one position each)",
    "": "not in the sweep's params (axis from the values)",
}
METRICS = ("extrap_psnr", "copy_last_psnr", "extrap_skill", "latent_linearity")
_HORIZON = re.compile(r"extrap_psnr_h(\d+)$")
CSS = """body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #eee;
text-align:right;white-space:nowrap}th{background:#f4f4f4}td.name,th.name{text-align:left}
tr.failed td{color:#b00}.wide{overflow-x:auto}.plots{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0 0 16px}figcaption{font-size:12px;color:#555}svg{background:#fff}
svg text{font-size:11px;fill:#333}.axis{stroke:#333}.grid{stroke:#eee}
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


def fmt(value: Any, digits: int = 4) -> str:
    """A value for a cell or a tooltip; None and non-finite numbers are ``—``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


# ---- SVG scatter plots ------------------------------------------------------------------------


def _ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """Round tick values covering [lo, hi] (about ``n`` of them; whole numbers if ``integer``)."""
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    mults = (1, 2, 5, 10) if integer and mag < 10 else (1, 2, 2.5, 5, 10)
    step = next(m * mag for m in mults if m * mag >= raw)
    step = max(step, 1) if integer else step
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks in [10**lo, 10**hi] (exponents): decades, else 1-2-5, else round linear steps."""
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    ticks = [m * 10.0**e for e in decades for m in (1, 2, 5) if lo <= math.log10(m) + e <= hi]
    decade_ticks = [t for t in ticks if math.log10(t) % 1 < 1e-9]
    if len(decade_ticks) >= 3:
        return decade_ticks
    return ticks if len(ticks) >= 3 else [t for t in _ticks(10**lo, 10**hi, 4) if t > 0]


def _domain(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or abs(lo) * 0.1 or 0.5
    return lo - pad, hi + pad


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))


def _x_axis(xs: list[Any], scale: str) -> tuple[Any, list[tuple[float, str]]]:
    """(value -> pixel, [(pixel, label)]) for a linear, log or categorical x axis."""
    width = W - LEFT - RIGHT
    if scale == "choices" or not all(isinstance(x, int | float) for x in xs):
        cats = sorted(set(xs), key=_sort_key)
        band = width / len(cats)
        pos = {c: LEFT + band * (i + 0.5) for i, c in enumerate(cats)}
        return pos.__getitem__, [(pos[c], fmt(c)) for c in cats]
    log = scale == "log" or (min(xs) > 0 and max(xs) / min(xs) > 10)
    if log and min(xs) > 0:
        lo, hi = _domain([math.log10(x) for x in xs])
        to_px = lambda x: LEFT + (math.log10(x) - lo) / (hi - lo) * width  # noqa: E731
        return to_px, [(to_px(t), f"{t:g}") for t in _log_ticks(lo, hi)]
    lo, hi = _domain([float(x) for x in xs])
    to_px = lambda x: LEFT + (x - lo) / (hi - lo) * width  # noqa: E731
    ticks = _ticks(lo, hi, integer=all(isinstance(x, int) for x in xs))
    return to_px, [(to_px(t), f"{t:.6g}") for t in ticks]


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
    """
    if not points:
        return f'<p class="empty">no trial reported {escape(y_label)}</p>'
    x_px, x_ticks = _x_axis([p[0] for p in points], scale)
    lo, hi = _domain([p[1] for p in points])
    bottom = H - BOTTOM
    y_px = lambda y: bottom - (y - lo) / (hi - lo) * (bottom - TOP)  # noqa: E731
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
    seen: dict[Any, int] = {}
    for x, y, name in points:
        nudge = 5 * (seen.get(x, 0) % 2 * 2 - 1) * ((seen.get(x, 0) + 1) // 2)  # 0, +5, -5, +10
        seen[x] = seen.get(x, 0) + 1
        tip = f"{name}: {x_label} = {fmt(x)}, {y_label} = {fmt(y)}"
        parts.append(
            f'<circle class="pt{" best" if name == best else ""}" cx="{x_px(x) + nudge:.1f}" '
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
                return (i, int(suffix) if suffix.isdigit() else 0, name)
        return (len(ORDER), 0, name)

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
        key=lambda k: int(_HORIZON.match(k)[1]),
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
