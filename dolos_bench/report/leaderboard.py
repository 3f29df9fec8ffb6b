"""``bench leaderboard``: turn results files into Markdown, CSV, JSON and a standalone HTML page.

The page must open from ``file://`` on an air-gapped machine and still be correct in ten years,
so it carries everything itself: the data as JSON in a ``<script>`` tag, CSS and JS inline, and
the figures as base64 SVG. No CDN, no fetch, no server.

Ranks are given *within* a dataset split (by fingerprint) and protocol: a score on another
dataset or under another protocol is a different number, and ranking across them would invite
exactly the comparison the protocol names exist to prevent. With one dataset and protocol -- the
usual case -- this is a plain global ranking.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from markupsafe import Markup
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

import dolos_bench
from dolos_bench.eval.results import Metric, Results, ResultsError, StressPoint, load_results
from dolos_bench.report import plots

PRIMARY_METRIC = "pixel/iou@0.5/mean-of-images/fakes"
HEADLINE_METRICS: tuple[str, ...] = (
    PRIMARY_METRIC,
    "pixel/f1@0.5/mean-of-images/fakes",
    "pixel/auc/pooled/all",
    "image/auc/all",
    "image/ap/all",
)
"""Columns shown by default (those present in at least one result; the primary always)."""

MISSING = "—"
"""Shown for a metric that a result does not have or that is undefined (``value: null``)."""

DEFAULT_TITLE = "dolos-bench leaderboard"


@dataclass(frozen=True)
class Entry:
    """One loaded results file and the label it gets in tables and figures."""

    source: Path
    results: Results
    label: str


# ----------------------------------------------------------------------------------- loading


def load_entries(result_paths: Iterable[str | Path]) -> list[Entry]:
    """Load and validate every file (refusing incomplete ones) and give each a unique label.

    A label is the model id, disambiguated by dataset/split and protocol, then by a counter,
    only where two files would otherwise share it -- so the common case stays readable.
    """
    paths = [Path(p) for p in result_paths]
    if not paths:
        raise ResultsError("no results files given to the leaderboard")
    loaded = [(p, load_results(p)) for p in paths]
    # Eval and stress files are shown apart (table vs curves), so "ela" may name one of each.
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (_, r) in enumerate(loaded):
        groups.setdefault((r.kind, r.model.id), []).append(i)
    labels = [r.model.id for _, r in loaded]
    for idxs in groups.values():
        if len(idxs) < 2:
            continue
        datasets = {_dataset_label(loaded[i][1]) for i in idxs}
        protocols = {loaded[i][1].protocol.name for i in idxs}
        for i in idxs:
            r = loaded[i][1]
            context = ([_dataset_label(r)] if len(datasets) > 1 else []) + ([r.protocol.name] if len(protocols) > 1 else [])
            if context:
                labels[i] = f"{r.model.id} ({', '.join(context)})"
    keyed = [(loaded[i][1].kind, lab) for i, lab in enumerate(labels)]
    total = Counter(keyed)
    seen: Counter[tuple[str, str]] = Counter()
    unique: list[str] = []
    for key, lab in zip(keyed, labels):
        seen[key] += 1
        unique.append(lab if total[key] == 1 else f"{lab} #{seen[key]}")
    return [Entry(p, r, lab) for (p, r), lab in zip(loaded, unique)]


def _dataset_name(results: Results) -> str:
    path = results.dataset.path.rstrip("/\\")
    return re.split(r"[/\\]", path)[-1] or path


def _dataset_label(results: Results) -> str:
    return f"{_dataset_name(results)}/{results.dataset.split}"


# ------------------------------------------------------------------------------- formatting


def format_metric(metric: Metric | None, digits: int = 3) -> str:
    """``0.612 ± 0.021`` (± = half the 95% CI width), ``0.612`` without a CI, ``—`` if missing.

    Half-width keeps the table compact; the exact (possibly asymmetric bootstrap) interval is
    in the CSV/JSON and in the HTML cell's tooltip.
    """
    if metric is None or metric.value is None:
        return MISSING
    text = f"{metric.value:.{digits}f}"
    if metric.ci95 is not None:
        lo, hi = metric.ci95
        text += f" ± {(hi - lo) / 2:.{digits}f}"
    return text


def _metric_title(name: str, metric: Metric | None, digits: int) -> str:
    if metric is None:
        return f"{name}: not reported"
    if metric.value is None:
        return f"{name}: undefined (n={metric.n})"
    ci = f", 95% CI [{metric.ci95[0]:.{digits + 1}f}, {metric.ci95[1]:.{digits + 1}f}]" if metric.ci95 else ""
    return f"{name} = {metric.value:.{digits + 1}f}{ci}, n={metric.n}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "metric"


# -------------------------------------------------------------------------------------- rows


def _group_key(results: Results) -> tuple[str, str, str, str]:
    return (_dataset_label(results), results.protocol.name, results.dataset.fingerprint, results.dataset.split)


def _primary_value(results: Results, metric: str) -> float | None:
    m = results.metrics.get(metric)
    return None if m is None else m.value


def rank_entries(
    entries: Sequence[Entry], primary_metric: str = PRIMARY_METRIC, *, higher_is_better: bool = True
) -> list[tuple[int | None, Entry]]:
    """Order rows by group, then best primary metric first (missing last); assign ranks.

    Eval results always make a row; stress results only when they carry top-level metrics
    (their clean scores) and no eval file scored the same model on the same data and protocol
    (the clean scores would be the same numbers twice). Equal values share a rank ("1, 2, 2, 4"); a row without the primary
    metric gets no rank. Ties are broken by label so the output is deterministic.
    """
    def same_run(r: Results) -> tuple[Any, ...]:
        return (r.model.id, r.model.weights_sha256, r.dataset.fingerprint, r.protocol.name)

    scored = {same_run(e.results) for e in entries if e.results.kind == "eval"}
    rows = [e for e in entries
            if e.results.kind == "eval" or (e.results.metrics and same_run(e.results) not in scored)]
    sign = -1.0 if higher_is_better else 1.0

    def key(e: Entry) -> tuple[Any, ...]:
        v = _primary_value(e.results, primary_metric)
        return (_group_key(e.results), v is None, sign * v if v is not None else 0.0, e.label, str(e.source))

    ordered = sorted(rows, key=key)
    ranked: list[tuple[int | None, Entry]] = []
    prev_group: tuple[str, ...] | None = None
    prev_value: float | None = None
    position = 0
    rank: int | None = None
    for e in ordered:
        group = _group_key(e.results)
        if group != prev_group:
            prev_group, position, prev_value, rank = group, 0, None, None
        position += 1
        v = _primary_value(e.results, primary_metric)
        if v is None:
            ranked.append((None, e))
            continue
        if rank is None or v != prev_value:
            rank, prev_value = position, v
        ranked.append((rank, e))
    return ranked


def choose_headline(entries: Sequence[Entry], primary_metric: str, wanted: Sequence[str] | None) -> list[str]:
    """The metric columns: ``wanted`` as given, or the defaults that some result reports."""
    if wanted is not None:
        cols = list(wanted)
    else:
        present = {name for e in entries for name in e.results.metrics}
        cols = [m for m in HEADLINE_METRICS if m in present]
    return [primary_metric] + [m for m in dict.fromkeys(cols) if m != primary_metric]


def _provenance(e: Entry) -> dict[str, Any]:
    r = e.results
    p = r.provenance
    return {
        "source": e.source.name,
        "dataset_path": r.dataset.path,
        "dataset_fingerprint": r.dataset.fingerprint,
        "recipe": r.dataset.recipe,
        "model_path": r.model.path,
        "weights_sha256": r.model.weights_sha256,
        "model_options": r.model.options,
        "protocol": {"name": r.protocol.name, "threshold": r.protocol.threshold, "resize": r.protocol.resize, **r.protocol.details},
        "git_revision": p.git_revision,
        "package_versions": p.package_versions,
        "seeds": p.seeds,
        "timings": p.timings,
        "created": p.created,
        "command": p.command,
        "info": r.info,
    }


def row_dict(rank: int | None, e: Entry) -> dict[str, Any]:
    """The JSON form of one leaderboard row (also what the HTML page inlines)."""
    r = e.results
    return {
        "rank": rank,
        "label": e.label,
        "model": r.model.id,
        "model_kind": r.model.kind,
        "kind": r.kind,
        "dataset": _dataset_name(r),
        "split": r.dataset.split,
        "protocol": r.protocol.name,
        "counts": r.counts.model_dump(),
        "metrics": {k: v.model_dump(mode="json") for k, v in r.metrics.items()},
        "provenance": _provenance(e),
    }


# ---------------------------------------------------------------------------- tabular output


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(
    ranked: Sequence[tuple[int | None, Entry]], metrics: Sequence[str], *, digits: int = 3
) -> str:
    """The leaderboard as a GitHub-flavoured Markdown table (metrics right-aligned)."""
    header = ["Rank", "Model", "Dataset / split", "Protocol", *metrics]
    lines = [
        "| " + " | ".join(_md_escape(h) for h in header) + " |",
        "|" + "|".join(["---:", ":---", ":---", ":---"] + ["---:"] * len(metrics)) + "|",
    ]
    for rank, e in ranked:
        r = e.results
        cells = [
            MISSING if rank is None else str(rank),
            e.label,
            _dataset_label(r),
            r.protocol.name,
            *(format_metric(r.metrics.get(m), digits) for m in metrics),
        ]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _stress_summary_rows(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    out = []
    for e in entries:
        s = e.results.stress
        if s is None:
            continue
        for pert, summ in s.summary.items():
            out.append({"label": e.label, "suite": s.suite, "metric": s.metric, "perturbation": pert, **summ.model_dump()})
    return out


def _fmt_float(v: float | None, digits: int) -> str:
    return MISSING if v is None else f"{v:.{digits}f}"


def markdown_document(
    title: str,
    ranked: Sequence[tuple[int | None, Entry]],
    metrics: Sequence[str],
    primary_metric: str,
    entries: Sequence[Entry],
    *,
    higher_is_better: bool = True,
    digits: int = 3,
) -> str:
    """``leaderboard.md``: the table, how to read it, and the stress summaries if any."""
    better = "higher" if higher_is_better else "lower"
    parts = [
        f"# {title}\n",
        f"Ranked by `{primary_metric}` ({better} is better) within each dataset split and protocol. "
        f"`±` is half the width of the 95% confidence interval; `{MISSING}` marks a metric that "
        "was not reported or is undefined.\n",
        markdown_table(ranked, metrics, digits=digits),
    ]
    summary = _stress_summary_rows(entries)
    if summary:
        parts.append("## Robustness\n")
        lines = [
            "| Model | Suite | Metric | Perturbation | Relative drop | Area under curve |",
            "|:---|:---|:---|:---|---:|---:|",
        ]
        for s in summary:
            cells = [s["label"], s["suite"], s["metric"], s["perturbation"],
                     _fmt_float(s.get("relative_drop"), digits), _fmt_float(s.get("area_under_curve"), digits)]
            lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def csv_text(ranked: Sequence[tuple[int | None, Entry]], metrics: Sequence[str]) -> str:
    """All metrics of every row, one column each for value, CI bounds and n.

    Missing cells are empty (not ``—``) so that pandas/R read the columns as numbers.
    """
    all_metrics = list(metrics) + sorted({m for _, e in ranked for m in e.results.metrics} - set(metrics))
    header = ["rank", "label", "model", "model_kind", "kind", "dataset", "split", "protocol", "samples", "real", "fake"]
    for m in all_metrics:
        header += [m, f"{m} ci95_lo", f"{m} ci95_hi", f"{m} n"]
    header += ["dataset_fingerprint", "weights_sha256", "git_revision", "created", "command", "source"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)

    def num(v: float | int | None) -> str:
        return "" if v is None else repr(v) if isinstance(v, float) else str(v)

    for rank, e in ranked:
        r = e.results
        row = [num(rank), e.label, r.model.id, r.model.kind, r.kind, _dataset_name(r), r.dataset.split,
               r.protocol.name, r.counts.samples, r.counts.real, r.counts.fake]
        for m in all_metrics:
            met = r.metrics.get(m)
            if met is None:
                row += ["", "", "", ""]
            else:
                lo, hi = met.ci95 if met.ci95 else (None, None)
                row += [num(met.value), num(lo), num(hi), str(met.n)]
        row += [r.dataset.fingerprint, r.model.weights_sha256 or "", r.provenance.git_revision or "",
                r.provenance.created, r.provenance.command, e.source.name]
        writer.writerow(row)
    return buf.getvalue()


# ----------------------------------------------------------------------------------- figures


def generator_matrix(entries: Sequence[Entry], metric: str) -> dict[str, dict[str, float | None]]:
    """label -> generator -> value of ``metric`` from each result's ``breakdowns.generator``."""
    out: dict[str, dict[str, float | None]] = {}
    for e in entries:
        gens = e.results.breakdowns.get("generator", {})
        row = {g: ms[metric].value for g, ms in gens.items() if metric in ms}
        if row:
            out[e.label] = row
    return out


def _data_uri(path: Path) -> str:
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _build_heatmaps(
    row_entries: Sequence[Entry], metrics: Sequence[str], plot_dir: Path, digits: int
) -> list[dict[str, Any]]:
    figures = []
    for metric in metrics:
        values = generator_matrix(row_entries, metric)
        if not values:
            continue
        generators = sorted({g for row in values.values() for g in row})
        files = plots.heatmap(values, plot_dir / f"heatmap-{_slug(metric)}", metric=metric, columns=generators,
                              title=f"{metric} by generator", digits=min(digits, 2))
        figures.append({"metric": metric, "generators": generators, "values": values, "files": files})
    return figures


def _build_curves(entries: Sequence[Entry], plot_dir: Path) -> list[dict[str, Any]]:
    by_metric: dict[str, dict[str, list[StressPoint]]] = {}
    clean: dict[str, dict[str, float | None]] = {}
    axes: dict[str, str] = {}
    for e in entries:
        if e.results.stress is not None:
            axes.update((e.results.info.get("suite") or {}).get("axes") or {})
            suite_info = e.results.info.get("suite") or {}
            # The suite's headline metric, then the other metrics its own curves were drawn for.
            for metric in dict.fromkeys([e.results.stress.metric, *(suite_info.get("plot_metrics") or [])]):
                if not any(metric in p.metrics for p in e.results.stress.grid):
                    continue
                by_metric.setdefault(metric, {})[e.label] = e.results.stress.grid
                reference = e.results.metrics.get(metric)
                clean.setdefault(metric, {})[e.label] = reference.value if reference is not None else None
    figures = []
    for metric, curves in by_metric.items():
        files = plots.robustness_curves(curves, plot_dir / f"robustness-{_slug(metric)}", metric=metric,
                                        references=clean.get(metric), axis_labels=axes)
        figures.append({
            "metric": metric,
            "curves": {lab: [p.model_dump(mode="json") for p in grid] for lab, grid in curves.items()},
            "files": files,
        })
    return figures


# -------------------------------------------------------------------------------------- HTML


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("dolos_bench.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _script_json(payload: Any) -> str:
    """JSON that is safe inside ``<script>``: no ``</script>`` or ``<!--`` can end it early."""
    text = json.dumps(payload, ensure_ascii=False, sort_keys=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(
    *,
    title: str,
    primary_metric: str,
    higher_is_better: bool,
    metrics: Sequence[str],
    ranked: Sequence[tuple[int | None, Entry]],
    heatmaps: Sequence[Mapping[str, Any]],
    curves: Sequence[Mapping[str, Any]],
    stress_summary: Sequence[Mapping[str, Any]],
    payload: Mapping[str, Any],
    digits: int = 3,
) -> str:
    """Render ``index.html`` from the template; every asset is inlined."""
    rows = []
    for rank, e in ranked:
        r = e.results
        cells = []
        for m in metrics:
            met = r.metrics.get(m)
            cells.append({
                "text": format_metric(met, digits),
                "value": "" if met is None or met.value is None else repr(met.value),
                "title": _metric_title(m, met, digits),
            })
        rows.append({
            "rank": rank,
            "label": e.label,
            "model_kind": r.model.kind,
            "kind": r.kind,
            "dataset": _dataset_label(r),
            "fingerprint": r.dataset.fingerprint,
            "protocol": r.protocol.name,
            "samples": r.counts.samples,
            "cells": cells,
            "provenance": _provenance(e),
        })
    template = _environment().get_template("leaderboard.html.j2")
    return template.render(
        title=title,
        primary_metric=primary_metric,
        better="higher" if higher_is_better else "lower",
        metrics=list(metrics),
        rows=rows,
        heatmaps=[{"metric": h["metric"], "src": _data_uri(h["files"]["svg"]), "id": _slug(h["metric"])} for h in heatmaps],
        curves=[{"metric": c["metric"], "src": _data_uri(c["files"]["svg"])} for c in curves],
        stress_summary=[{**s, "relative_drop": _fmt_float(s.get("relative_drop"), digits),
                         "area_under_curve": _fmt_float(s.get("area_under_curve"), digits)} for s in stress_summary],
        missing=MISSING,
        data_json=_script_json(payload),
        version=dolos_bench.__version__,
        json_dumps=lambda v: json.dumps(v, sort_keys=True),
        slash_break=Markup("/<wbr>"),  # lets long metric names wrap at their slashes
    )


# ------------------------------------------------------------------------------------ facade


def build_leaderboard(
    result_paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    title: str = DEFAULT_TITLE,
    primary_metric: str = PRIMARY_METRIC,
    metrics: Sequence[str] | None = None,
    heatmap_metrics: Sequence[str] | None = None,
    higher_is_better: bool = True,
    digits: int = 3,
) -> dict[str, Any]:
    """Build the site in ``out_dir`` and return the leaderboard payload (+ ``files`` written).

    Writes ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.json``, ``index.html`` and
    ``plots/*.png|svg``. ``metrics`` overrides the headline columns; ``heatmap_metrics`` the
    metrics drawn by generator (default: the headline ones that results break down by
    generator; the page offers a selector). Raises :class:`ResultsError` for any unusable
    file -- incomplete, unknown version, malformed -- before writing anything.
    """
    entries = load_entries(result_paths)
    out = Path(out_dir)
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)

    ranked = rank_entries(entries, primary_metric, higher_is_better=higher_is_better)
    headline = choose_headline(entries, primary_metric, metrics)
    # Eval rows only: a stress file's clean scores would duplicate its model's heatmap row.
    eval_entries = [e for _, e in ranked if e.results.kind == "eval"]
    heatmaps = _build_heatmaps(eval_entries, heatmap_metrics if heatmap_metrics is not None else headline, plot_dir, digits)
    curves = _build_curves(entries, plot_dir)
    stress_summary = _stress_summary_rows(entries)

    payload: dict[str, Any] = {
        "title": title,
        "primary_metric": primary_metric,
        "higher_is_better": higher_is_better,
        "metrics": headline,
        "rows": [row_dict(rank, e) for rank, e in ranked],
        "heatmaps": [{k: h[k] for k in ("metric", "generators", "values")} for h in heatmaps],
        "robustness": [{k: c[k] for k in ("metric", "curves")} for c in curves],
        "stress_summary": stress_summary,
        "dolos_bench_version": dolos_bench.__version__,
    }

    files = {
        "markdown": out / "leaderboard.md",
        "csv": out / "leaderboard.csv",
        "json": out / "leaderboard.json",
        "html": out / "index.html",
    }
    files["markdown"].write_text(
        markdown_document(title, ranked, headline, primary_metric, entries, higher_is_better=higher_is_better, digits=digits),
        encoding="utf-8",
    )
    files["csv"].write_text(csv_text(ranked, headline), encoding="utf-8", newline="")
    files["json"].write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    files["html"].write_text(
        render_html(title=title, primary_metric=primary_metric, higher_is_better=higher_is_better, metrics=headline,
                    ranked=ranked, heatmaps=heatmaps, curves=curves, stress_summary=stress_summary,
                    payload=payload, digits=digits),
        encoding="utf-8",
    )
    plot_files = {f"{kind}:{fig['metric']}:{fmt}": p for kind, figs in (("heatmap", heatmaps), ("robustness", curves))
                  for fig in figs for fmt, p in fig["files"].items()}
    return {**payload, "files": {**{k: str(v) for k, v in files.items()}, **{k: str(v) for k, v in plot_files.items()}}}


__all__ = [
    "PRIMARY_METRIC",
    "HEADLINE_METRICS",
    "MISSING",
    "Entry",
    "load_entries",
    "format_metric",
    "rank_entries",
    "choose_headline",
    "row_dict",
    "markdown_table",
    "markdown_document",
    "csv_text",
    "generator_matrix",
    "render_html",
    "build_leaderboard",
]
