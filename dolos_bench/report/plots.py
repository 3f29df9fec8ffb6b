"""Figures for the leaderboard and the stress command: the generator heatmap and robustness curves.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
global figure manager, no GUI backend pulled in on a headless machine, nothing left open by a
caller that forgets ``plt.close``. PNG is rendered by Agg, SVG by matplotlib's SVG backend with
text as paths (self-contained, no fonts needed where it is viewed). Metadata dates and SVG ids are
pinned so the same inputs give the same bytes, which keeps built sites diffable.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from dolos_bench.eval.results import StressPoint

FORMATS: tuple[str, ...] = ("png", "svg")
_RC = {"svg.hashsalt": "dolos-bench", "svg.fonttype": "path", "font.size": 9}
_METADATA = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
}


def _save(fig: Figure, out_stem: Path, formats: Sequence[str], dpi: int) -> dict[str, Path]:
    """Write ``fig`` as ``<out_stem>.<fmt>`` for each format; return format -> path."""
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for fmt in formats:
        path = out_stem.with_name(f"{out_stem.name}.{fmt}")
        fig.savefig(path, format=fmt, dpi=dpi, bbox_inches="tight", metadata=_METADATA.get(fmt))
        paths[fmt] = path
    return paths


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def heatmap(
    values: Mapping[str, Mapping[str, float | None]],
    out_stem: str | Path,
    *,
    metric: str,
    columns: Sequence[str] | None = None,
    title: str | None = None,
    row_label: str = "model",
    col_label: str = "generator",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    digits: int = 2,
    cmap: str = "viridis",
    formats: Sequence[str] = FORMATS,
    dpi: int = 150,
) -> dict[str, Path]:
    """Draw a rows x columns matrix of ``metric`` with each cell annotated, like Dolos's figure.

    ``values[row][column]`` is a metric value; absent or ``None`` cells are drawn grey with a
    dash, so a model that was not scored on a generator is visibly missing rather than zero.
    ``columns`` fixes the column order (default: sorted union). Returns format -> written path.
    """
    rows = list(values)
    cols = list(columns) if columns is not None else sorted({c for r in values.values() for c in r})
    grid = np.full((len(rows), len(cols)), np.nan)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            v = values[row].get(col)
            if v is not None and math.isfinite(v):
                grid[i, j] = v
    finite = grid[np.isfinite(grid)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
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
                    r, g, b, _ = colormap((v - lo) / (hi - lo))
                    colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                    ax.text(j, i, _fmt(v, digits), ha="center", va="center", color=colour)
                else:
                    ax.text(j, i, "—", ha="center", va="center", color="#555555")
        cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        cbar.set_label(metric, fontsize=7)
        ax.set_title(title if title is not None else metric, fontsize=9)
        paths = _save(fig, Path(out_stem), formats, dpi)
    return paths


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


def robustness_curves(
    curves: Mapping[str, Sequence[StressPoint | Mapping[str, Any]]],
    out_stem: str | Path,
    *,
    metric: str,
    title: str | None = None,
    perturbations: Sequence[str] | None = None,
    references: Mapping[str, float | None] | None = None,
    axis_labels: Mapping[str, str] | None = None,
    ylim: tuple[float, float] | None = (0.0, 1.0),
    formats: Sequence[str] = FORMATS,
    dpi: int = 150,
) -> dict[str, Path]:
    """Plot ``metric`` against severity, one panel per perturbation and one line per label.

    ``curves`` maps a line label (usually the model id) to the ``stress.grid`` entries of one
    results file -- :class:`StressPoint` objects or their JSON dicts -- so ``bench stress`` can
    draw its single model and the leaderboard can overlay many. Severities that are all numbers
    give a numeric axis; otherwise they are categories in first-seen order. Points without the
    metric (or with an undefined value) leave a gap. ``references`` maps a label to its score on
    the unperturbed data, drawn as a dashed line in the label's colour in every panel, so the
    drop is read off against the clean score rather than against the mildest grid point.
    ``axis_labels`` names each panel's x axis (default "severity"). A numeric axis runs in the
    order the grid lists its severities, mild to harsh: a suite that lists JPEG quality
    100, 90, ..., 30 gets an inverted axis, so harsher is always to the right.
    Returns format -> written path.
    """
    series = {label: _as_points(entries) for label, entries in curves.items()}
    all_points = [p for pts in series.values() for p in pts]
    if perturbations is None:
        order: dict[str, None] = {}
        for p in all_points:
            order.setdefault(p.perturbation, None)
        perturbations = list(order)
    n = max(len(perturbations), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(3.6 * ncols + 0.4, 2.9 * nrows + 0.5), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        markers = "osD^vP*Xh<>"
        for k, pert in enumerate(perturbations):
            ax = axes[k // ncols][k % ncols]
            pert_points = [p for p in all_points if p.perturbation == pert]
            numeric, ticks = _severity_axis(pert_points)
            for idx, (label, pts) in enumerate(series.items()):
                mine = [p for p in pts if p.perturbation == pert]
                if not mine:
                    continue
                if numeric:
                    mine = sorted(mine, key=lambda p: float(p.severity))
                    xs = [float(p.severity) for p in mine]
                else:
                    xs = [ticks.index(str(p.severity)) for p in mine]
                ys = [
                    m.value if (m := p.metrics.get(metric)) is not None and m.value is not None else np.nan
                    for p in mine
                ]
                colour = f"C{idx % 10}"  # fixed per label, so a model keeps its colour in every panel
                ax.plot(xs, ys, marker=markers[idx % len(markers)], markersize=4, label=label, color=colour)
                lows = [p.metrics[metric].ci95[0] if metric in p.metrics and p.metrics[metric].ci95 else np.nan for p in mine]
                highs = [p.metrics[metric].ci95[1] if metric in p.metrics and p.metrics[metric].ci95 else np.nan for p in mine]
                if any(math.isfinite(v) for v in lows):
                    ax.fill_between(xs, lows, highs, alpha=0.15, linewidth=0, color=colour)
                clean = (references or {}).get(label)
                if clean is not None and math.isfinite(clean):
                    ax.axhline(clean, linestyle="--", linewidth=0.9, alpha=0.7, color=colour)
            if not numeric:
                ax.set_xticks(range(len(ticks)), labels=[str(t) for t in ticks], rotation=30, ha="right")
            elif _listed_descending(pert_points):
                ax.invert_xaxis()
            ax.set_title(pert, fontsize=9)
            ax.set_xlabel((axis_labels or {}).get(pert, "severity"))
            if k % ncols == 0:  # one y label per figure row; the suptitle names the metric too
                ax.set_ylabel(metric, fontsize=7)
            if ylim is not None:
                ax.set_ylim(*ylim)
            ax.grid(True, alpha=0.3)
        for k in range(len(perturbations), nrows * ncols):
            axes[k // ncols][k % ncols].set_visible(False)
        if any(ax.lines for ax in axes.flat):
            uniq: dict[str, Any] = {}  # one entry per label even if a model lacks some panels
            for ax in axes.flat:
                for handle, lab in zip(*ax.get_legend_handles_labels()):
                    uniq.setdefault(lab, handle)
            fig.legend(list(uniq.values()), list(uniq), loc="outside lower center", ncols=min(len(uniq), 4), fontsize=8)
        default_title = f"Robustness: {metric}" + (" (dashed: unperturbed)" if references else "")
        fig.suptitle(title if title is not None else default_title, fontsize=10)
        paths = _save(fig, Path(out_stem), formats, dpi)
    return paths


__all__ = ["heatmap", "robustness_curves", "FORMATS"]
