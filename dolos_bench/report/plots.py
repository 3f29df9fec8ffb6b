"""Figures for the leaderboard and the stress command: the generator heatmap, robustness curves and
the cross-generator study's train x test heat map.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
global figure manager, no GUI backend pulled in on a headless machine, nothing left open by a
caller that forgets ``plt.close``. PNG is rendered by Agg, SVG by matplotlib's SVG backend with
text as paths (self-contained, no fonts needed where it is viewed). Metadata dates and SVG ids are
pinned so the same inputs give the same bytes, which keeps built sites diffable.

Axes are fitted to the data by default: a model whose IoU moves between 0.01 and 0.03 gets a
curve a reader can see, not a flat line at the bottom of [0, 1]. ``full_range=True`` draws the
metric's whole range [0, 1] instead, for comparing figures side by side. Each figure is built by
a ``*_figure`` function (which tests and callers can inspect) and written by the function without
the suffix, through :func:`dolos_bench.utils.files.atomic_path`.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dolos_bench.results import StressPoint
from dolos_bench.utils.files import atomic_path

FORMATS: tuple[str, ...] = ("png", "svg")
FULL_RANGE: tuple[float, float] = (0.0, 1.0)
"""The range of every metric the toolkit reports (IoU, F1, AUC, AP are all in [0, 1])."""
LISTED_TICKS = 10
"""Up to this many numeric severities are each given a tick of their own."""
_RC = {"svg.hashsalt": "dolos-bench", "svg.fonttype": "path", "font.size": 9}
_METADATA = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
}


def render(fig: Figure, fmt: str, dpi: int = 150) -> bytes:
    """The bytes of ``fig`` in ``fmt``: what a saved file would hold, for callers that embed or write it."""
    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):  # the SVG id salt and font mode are read when saving
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata=_METADATA.get(fmt))
    return buf.getvalue()


def _save(fig: Figure, out_stem: Path, formats: Sequence[str], dpi: int) -> dict[str, Path]:
    """Write ``fig`` as ``<out_stem>.<fmt>`` for each format, atomically; return format -> path."""
    out_stem = Path(out_stem)
    paths: dict[str, Path] = {}
    for fmt in formats:
        path = out_stem.with_name(f"{out_stem.name}.{fmt}")
        with atomic_path(path, suffix=f".{fmt}") as tmp, matplotlib.rc_context(_RC):
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata=_METADATA.get(fmt))
        paths[fmt] = path
    return paths


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def fit_limits(
    values: Iterable[float | None], *, full_range: bool = False, bounds: tuple[float, float] = FULL_RANGE,
    margin: float = 0.08,
) -> tuple[float, float]:
    """Axis limits that show ``values``: their span plus ``margin`` of it on each side.

    With ``full_range`` (or no finite value) the answer is ``bounds``. The padded limits do not
    cross ``bounds`` when the data lies inside them (an IoU axis never shows -0.1), and a single
    value gets a small window around it instead of a zero-height axis.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if full_range or not finite:
        return bounds
    lo, hi = min(finite), max(finite)
    span = hi - lo
    pad = margin * span if span > 0 else max(0.05 * abs(hi), 0.01)
    low, high = lo - pad, hi + pad
    if lo >= bounds[0]:
        low = max(low, bounds[0])
    if hi <= bounds[1]:
        high = min(high, bounds[1])
    return low, high


def colour_limits(
    values: Iterable[float | None], *, full_range: bool = False, bounds: tuple[float, float] = FULL_RANGE
) -> tuple[float, float]:
    """The colour range of a heatmap: exactly the data's min and max (the extreme cells get the
    colormap's ends), ``bounds`` with ``full_range``; one distinct value gets a small window."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if full_range or not finite:
        return bounds
    lo, hi = min(finite), max(finite)
    if hi > lo:
        return lo, hi
    return fit_limits([lo], bounds=bounds)


def heatmap_figure(
    values: Mapping[str, Mapping[str, float | None]],
    *,
    metric: str,
    columns: Sequence[str] | None = None,
    title: str | None = None,
    row_label: str = "model",
    col_label: str = "generator",
    vmin: float | None = None,
    vmax: float | None = None,
    full_range: bool = False,
    digits: int = 2,
    cmap: str = "viridis",
) -> Figure:
    """A rows x columns matrix of ``metric`` with each cell annotated, like Dolos's figure.

    ``values[row][column]`` is a metric value; absent or ``None`` cells are drawn grey with a
    dash, so a model that was not scored on a generator is visibly missing rather than zero.
    ``columns`` fixes the column order (default: sorted union). The colours span the data's
    range (:func:`colour_limits`), so close scores still differ visibly; ``full_range`` spans
    [0, 1]; ``vmin``/``vmax`` pin either end.
    """
    rows = list(values)
    cols = list(columns) if columns is not None else sorted({c for r in values.values() for c in r})
    grid = np.full((len(rows), len(cols)), np.nan)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            v = values[row].get(col)
            if v is not None and math.isfinite(v):
                grid[i, j] = v
    lo, hi = colour_limits(grid[np.isfinite(grid)].tolist(), full_range=full_range)
    lo = vmin if vmin is not None else lo
    hi = vmax if vmax is not None else hi
    if hi <= lo:
        hi = lo + 1e-9

    with matplotlib.rc_context(_RC):
        width = max(4.0, 1.0 + 0.9 * max(len(cols), 1) + 0.08 * max((len(r) for r in rows), default=0))
        height = max(2.2, 1.2 + 0.45 * max(len(rows), 1))
        fig = Figure(figsize=(width, height))
        ax = fig.add_subplot()
        colormap = matplotlib.colormaps[cmap].with_extremes(bad="#d9d9d9")
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=colormap, vmin=lo, vmax=hi, aspect="auto")
        ax.set_xticks(range(len(cols)), labels=cols, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(len(rows)), labels=rows)
        ax.set_xlabel(col_label)
        ax.set_ylabel(row_label)
        for i in range(len(rows)):
            for j in range(len(cols)):
                v = grid[i, j]
                if math.isfinite(v):
                    # Dark text on the light end of the colormap, white on the dark end.
                    r, g, b, _ = colormap(min(max((v - lo) / (hi - lo), 0.0), 1.0))
                    colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                    ax.text(j, i, _fmt(v, digits), ha="center", va="center", color=colour)
                else:
                    ax.text(j, i, "—", ha="center", va="center", color="#555555")
        cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        cbar.set_label(metric if full_range or (vmin, vmax) != (None, None) else f"{metric} (range of the data)",
                       fontsize=7)
        ax.set_title(title if title is not None else metric, fontsize=9)
    return fig


def heatmap(
    values: Mapping[str, Mapping[str, float | None]],
    out_stem: str | Path,
    *,
    formats: Sequence[str] = FORMATS,
    dpi: int = 150,
    **options: Any,
) -> dict[str, Path]:
    """Write :func:`heatmap_figure` (``options`` are its keywords) as ``<out_stem>.<fmt>``; return format -> path."""
    return _save(heatmap_figure(values, **options), Path(out_stem), formats, dpi)


def _as_points(entries: Sequence[StressPoint | Mapping[str, Any]]) -> list[StressPoint]:
    return [e if isinstance(e, StressPoint) else StressPoint.model_validate(e) for e in entries]


def _severity_axis(points: Sequence[StressPoint]) -> tuple[bool, list[float | str]]:
    """Numeric x if every severity is a number; otherwise categories in first-seen order."""
    severities = [p.severity for p in points]
    if all(isinstance(s, (int, float)) for s in severities):
        return True, sorted({float(s) for s in severities})  # type: ignore[arg-type]
    seen: dict[str, None] = {}
    for s in severities:
        seen.setdefault(str(s), None)
    return False, list(seen)


def _listed_descending(points: Sequence[StressPoint]) -> bool:
    """True when the first listed severity of a numeric axis is its largest (e.g. JPEG quality)."""
    values = [float(p.severity) for p in points]  # type: ignore[arg-type]
    return len(set(values)) > 1 and values[0] == max(values)


def _severity_ticks(ax: Any, severities: Sequence[float]) -> None:
    """Ticks a reader can match to the grid: the severities themselves when there are few of
    them, otherwise integer-only ticks for integer levels (never "2.5" for a JPEG quality)."""
    if len(severities) <= LISTED_TICKS:
        ax.set_xticks(list(severities), labels=[f"{s:g}" for s in severities])
    elif all(float(s).is_integer() for s in severities):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _metric_values(points: Sequence[StressPoint], metric: str) -> tuple[list[float], list[float], list[float]]:
    """Values and 95% CI bounds of ``metric`` at each point; NaN where missing (a gap in the line)."""
    ys, lows, highs = [], [], []
    for p in points:
        m = p.metrics.get(metric)
        ys.append(m.value if m is not None and m.value is not None else np.nan)
        lows.append(m.ci95[0] if m is not None and m.ci95 else np.nan)
        highs.append(m.ci95[1] if m is not None and m.ci95 else np.nan)
    return ys, lows, highs


def _panel(
    ax: Any, pert: str, series: Mapping[str, Sequence[StressPoint]], metric: str,
    references: Mapping[str, float | None], axis_label: str,
) -> list[float]:
    """Draw one perturbation's lines; return every value drawn (points, CI bounds, references)."""
    markers = "osD^vP*Xh<>"
    pert_points = [p for pts in series.values() for p in pts if p.perturbation == pert]
    numeric, ticks = _severity_axis(pert_points)
    drawn: list[float] = []
    for idx, (label, pts) in enumerate(series.items()):
        mine = [p for p in pts if p.perturbation == pert]
        if not mine:
            continue
        if numeric:
            mine = sorted(mine, key=lambda p: float(p.severity))
            xs = [float(p.severity) for p in mine]
        else:
            xs = [ticks.index(str(p.severity)) for p in mine]
        ys, lows, highs = _metric_values(mine, metric)
        colour = f"C{idx % 10}"  # fixed per label, so a model keeps its colour in every panel
        ax.plot(xs, ys, marker=markers[idx % len(markers)], markersize=4, label=label, color=colour)
        if any(math.isfinite(v) for v in lows):
            ax.fill_between(xs, lows, highs, alpha=0.15, linewidth=0, color=colour)
        clean = references.get(label)
        if clean is not None and math.isfinite(clean):
            ax.axhline(clean, linestyle="--", linewidth=0.9, alpha=0.7, color=colour)
            drawn.append(clean)
        drawn += ys + lows + highs
    if not numeric:
        ax.set_xticks(range(len(ticks)), labels=[str(t) for t in ticks], rotation=30, ha="right")
    else:
        _severity_ticks(ax, ticks)  # type: ignore[arg-type]
        if _listed_descending(pert_points):
            ax.invert_xaxis()
    ax.set_title(pert, fontsize=9)
    ax.set_xlabel(axis_label)
    ax.grid(True, alpha=0.3)
    return drawn


def robustness_figure(
    curves: Mapping[str, Sequence[StressPoint | Mapping[str, Any]]],
    *,
    metric: str,
    title: str | None = None,
    perturbations: Sequence[str] | None = None,
    references: Mapping[str, float | None] | None = None,
    axis_labels: Mapping[str, str] | None = None,
    ylim: tuple[float, float] | None = None,
    full_range: bool = False,
) -> Figure:
    """``metric`` against severity, one panel per perturbation and one line per label.

    ``curves`` maps a line label (usually the model id) to the ``stress.grid`` entries of one
    results file -- :class:`StressPoint` objects or their JSON dicts -- so ``bench stress`` can
    draw its single model and the leaderboard can overlay many. Severities that are all numbers
    give a numeric axis (each severity a tick when there are few, integer ticks for integer
    levels); otherwise they are categories in first-seen order. Points without the metric (or
    with an undefined value) leave a gap. ``references`` maps a label to its score on the
    unperturbed data, drawn as a dashed line in the label's colour in every panel, so the drop
    is read off against the clean score rather than against the mildest grid point.
    ``axis_labels`` names each panel's x axis (default "severity"). A numeric axis runs in the
    order the grid lists its severities, mild to harsh: a suite that lists JPEG quality
    100, 90, ..., 30 gets an inverted axis, so harsher is always to the right.

    The y axis is shared by all panels and fitted to everything drawn (:func:`fit_limits`);
    ``full_range`` gives [0, 1] and ``ylim`` pins it to any range.
    """
    series = {label: _as_points(entries) for label, entries in curves.items()}
    if perturbations is None:
        perturbations = list(dict.fromkeys(p.perturbation for pts in series.values() for p in pts))
    n = max(len(perturbations), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(3.6 * ncols + 0.4, 2.9 * nrows + 0.5), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        drawn: list[float] = []
        for k, pert in enumerate(perturbations):
            ax = axes[k // ncols][k % ncols]
            drawn += _panel(ax, pert, series, metric, references or {}, (axis_labels or {}).get(pert, "severity"))
            if k % ncols == 0:  # one y label per figure row; the suptitle names the metric too
                ax.set_ylabel(metric, fontsize=7)
        limits = ylim if ylim is not None else fit_limits(drawn, full_range=full_range)
        for ax in axes.flat[: len(perturbations)]:
            ax.set_ylim(*limits)
        for k in range(len(perturbations), nrows * ncols):
            axes[k // ncols][k % ncols].set_visible(False)
        if any(ax.lines for ax in axes.flat):
            uniq: dict[str, Any] = {}  # one entry per label even if a model lacks some panels
            for ax in axes.flat:
                for handle, lab in zip(*ax.get_legend_handles_labels()):
                    uniq.setdefault(lab, handle)
            fig.legend(list(uniq.values()), list(uniq), loc="outside lower center", ncols=min(len(uniq), 4), fontsize=8)
        has_reference = any(v is not None and math.isfinite(v) for v in (references or {}).values())
        default_title = f"Robustness: {metric}" + (" (dashed: unperturbed)" if has_reference else "")
        fig.suptitle(title if title is not None else default_title, fontsize=10)
    return fig


def robustness_curves(
    curves: Mapping[str, Sequence[StressPoint | Mapping[str, Any]]],
    out_stem: str | Path,
    *,
    formats: Sequence[str] = FORMATS,
    dpi: int = 150,
    **options: Any,
) -> dict[str, Path]:
    """Write :func:`robustness_figure` (``options`` are its keywords) as ``<out_stem>.<fmt>``; return format -> path."""
    return _save(robustness_figure(curves, **options), Path(out_stem), formats, dpi)


def cross_generator_figure(study: Mapping[str, Any], *, full_range: bool = False) -> Figure:
    """The train x test matrix of a ``bench train-study`` summary (``study.json``): Dolos's Figure 6.

    Rows are the training sets in the study's order (one generator each, then "w/o NAME"
    unions), columns the test generators; a cell the study could not score is grey.
    """
    rows = {entry["name"]: study["matrix"].get(entry["name"], {}) for entry in study["train_sets"]}
    return heatmap_figure(rows, metric=study["metric"], columns=list(study["generators"]),
                          title=f"cross-generator study ({study.get('baseline', '?')}): {study['metric']}",
                          row_label="trained on", col_label="tested on", full_range=full_range)


def cross_generator_heatmap(study: Mapping[str, Any], out_stem: str | Path, *, formats: Sequence[str] = FORMATS,
                            dpi: int = 150, full_range: bool = False) -> dict[str, Path]:
    """Write :func:`cross_generator_figure` as ``<out_stem>.<fmt>``; return format -> path."""
    return _save(cross_generator_figure(study, full_range=full_range), Path(out_stem), formats, dpi)


__all__ = ["heatmap", "heatmap_figure", "robustness_curves", "robustness_figure", "fit_limits", "colour_limits",
           "render", "FORMATS", "FULL_RANGE", "cross_generator_figure", "cross_generator_heatmap"]
