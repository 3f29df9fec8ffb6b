"""``bench leaderboard``: turn results files into Markdown, CSV, JSON and a standalone HTML page.

The page must open from ``file://`` on an air-gapped machine and still be correct in ten years,
so it carries everything itself: the data as JSON in a ``<script>`` tag, CSS and JS inline, and
the figures as base64 SVG. No CDN, no fetch, no server.

Ranks are given *within* a dataset split (by fingerprint) and protocol: a score on another
dataset or under another protocol is a different number, and ranking across them would invite
exactly the comparison the protocol names exist to prevent. With one dataset and protocol -- the
usual case -- this is a plain global ranking. Two datasets whose folders share a name are told
apart by a short fingerprint after the name ("qs/test (3f2a9c1)").

Which values of a metric are better is what the results files record (schema 1.1), or for 1.0
files what the metric table (:mod:`dolos_bench.metric_specs`) says; the same table gives the
default ranking metric and the default columns.

The output folder is a derived artifact, so building into the folder of an earlier leaderboard
replaces that leaderboard without a flag. It replaces only what it wrote: the files are listed in
the folder's ownership record (:mod:`dolos_bench.utils.outdir`), and a folder holding any other
file (a hand-written ``index.html``, notes) is refused with the list of those files, untouched.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from markupsafe import Markup
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

import dolos_bench
from dolos_bench.errors import UserError
from dolos_bench.metric_specs import (
    higher_is_better as table_higher_is_better, metric_names, primary_metric as table_primary_metric,
)
from dolos_bench.results import Metric, Results, ResultsError, StressPoint, load_results
from dolos_bench.report import plots
from dolos_bench.utils.files import atomic_write_bytes
from dolos_bench.utils.outdir import RECORD, read_record, refuse_foreign, remove_ours, write_record
from dolos_bench.utils.text import slugify

PRIMARY_METRIC = table_primary_metric(0.5)
"""The ranking metric of results scored at the usual threshold, 0.5 (the metric table's primary)."""
HEADLINE_METRICS: tuple[str, ...] = tuple(metric_names(0.5, headline=True))
"""The metric table's headline metrics at threshold 0.5: the columns shown by default (those
present in at least one result; the primary always)."""

MISSING = "—"
"""Shown for a metric that a result does not have or that is undefined (``value: null``)."""

DEFAULT_TITLE = "dolos-bench leaderboard"
RECORD_KIND = "leaderboard"
"""The ``kind`` of the ownership record a leaderboard folder carries."""
SHORT_FINGERPRINT = 7

AUC_NOTE = (
    "Area under curve: the curve's mean height over the tested severity range (the trapezoidal area "
    "under the metric against severity, divided by the range's width), in the metric's units; 1.0 "
    "means a perfect score at every severity. Non-numeric severities are spaced evenly in suite order."
)
DROP_NOTE = (
    "Relative drop: (clean - worst) / clean, the share of the clean score lost at the worst severity. "
    "A negative drop means the model scored higher under the perturbation than on the clean data."
)


@dataclass(frozen=True)
class Entry:
    """One loaded results file and the label it gets in tables and figures."""

    source: Path
    results: Results
    label: str
    dataset: str
    """The dataset/split as the table shows it, with a short fingerprint where a name is shared."""


# ----------------------------------------------------------------------------------- loading


def load_entries(result_paths: Iterable[str | Path]) -> list[Entry]:
    """Load and validate every file (refusing incomplete ones) and give each a unique label.

    A label is the model id, disambiguated by dataset/split, protocol and the weights' file or run
    folder name (so the runs of a cross-generator study read ``patch-forensics (repaint)``), then by
    a counter, only where two files would otherwise share it -- so the common case stays readable.
    """
    paths = [Path(p) for p in result_paths]
    if not paths:
        raise ResultsError("no results files given to the leaderboard")
    loaded = [(p, load_results(p)) for p in paths]
    datasets_shown = dataset_labels([r for _, r in loaded])
    shared = _shared_names([r for _, r in loaded])
    # Eval and stress files are shown apart (table vs curves), so "ela" may name one of each.
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (_, r) in enumerate(loaded):
        groups.setdefault((r.kind, r.model.id), []).append(i)
    labels = [r.model.id for _, r in loaded]
    for idxs in groups.values():
        if len(idxs) < 2:
            continue
        datasets = {datasets_shown[i] for i in idxs}
        protocols = {loaded[i][1].protocol.name for i in idxs}
        weights = {_weights_name(loaded[i][1]) for i in idxs}
        for i in idxs:
            r = loaded[i][1]
            # The fingerprint without brackets of its own: "ela (qs/test 3f2a9c1)".
            shown = _dataset_label(r) + (f" {short_fingerprint(r.dataset.fingerprint)}" if _dataset_name(r) in shared else "")
            context = ([shown] if len(datasets) > 1 else []) + ([r.protocol.name] if len(protocols) > 1 else [])
            if len(weights) > 1 and _weights_name(r):
                context.append(_weights_name(r))
            if context:
                labels[i] = f"{r.model.id} ({', '.join(context)})"
    keyed = [(loaded[i][1].kind, lab) for i, lab in enumerate(labels)]
    total = Counter(keyed)
    seen: Counter[tuple[str, str]] = Counter()
    unique: list[str] = []
    for key, lab in zip(keyed, labels):
        seen[key] += 1
        unique.append(lab if total[key] == 1 else f"{lab} #{seen[key]}")
    return [Entry(p, r, lab, ds) for (p, r), lab, ds in zip(loaded, unique, datasets_shown)]


def _weights_name(results: Results) -> str:
    """The last part of the weights' path (a run folder or a file), or "" when none is recorded."""
    weights = results.model.options.get("weights")
    path = str(results.model.path or (weights if isinstance(weights, str) else "") or "").rstrip("/\\")
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _dataset_name(results: Results) -> str:
    path = results.dataset.path.rstrip("/\\")
    return re.split(r"[/\\]", path)[-1] or path


def _dataset_label(results: Results) -> str:
    return f"{_dataset_name(results)}/{results.dataset.split}"


def short_fingerprint(fingerprint: str) -> str:
    """The first hex digits of a fingerprint (after any ``scheme:`` prefix), as git shortens hashes."""
    return fingerprint.rsplit(":", 1)[-1][:SHORT_FINGERPRINT]


def _shared_names(results: Sequence[Results]) -> set[str]:
    """Dataset folder names that more than one dataset (by fingerprint) goes by."""
    fingerprints: dict[str, set[str]] = defaultdict(set)
    for r in results:
        fingerprints[_dataset_name(r)].add(r.dataset.fingerprint)
    return {name for name, fps in fingerprints.items() if len(fps) > 1}


def dataset_labels(results: Sequence[Results]) -> list[str]:
    """``name/split`` for each result, plus ``(short fingerprint)`` wherever results whose
    folders share a name come from different datasets -- "out/qs" and "backup/qs" are not the
    same data just because both are called "qs"."""
    shared = _shared_names(results)
    return [_dataset_label(r) + (f" ({short_fingerprint(r.dataset.fingerprint)})" if _dataset_name(r) in shared else "")
            for r in results]


def metric_higher_is_better(metric: str, entries: Sequence[Entry] = ()) -> bool:
    """Whether larger values of ``metric`` are better.

    As the ``entries`` record it (schema 1.1), which must agree; else as the metric table says
    (:mod:`dolos_bench.metric_specs`, the rule for 1.0 files); a metric that neither knows --
    a plug-in's own score in a 1.0 file -- is taken as higher-is-better, like most scores.
    """
    recorded: dict[str, list[str]] = defaultdict(list)
    for e in entries:
        said = e.results.recorded_direction(metric)
        if said is not None:
            recorded[said].append(e.source.name)
    if len(recorded) > 1:
        raise ResultsError(
            f"results disagree on whether {metric!r} is better higher or lower: "
            + "; ".join(f"{d} in {', '.join(files)}" for d, files in sorted(recorded.items()))
            + ". Rank them by another metric or leave out the files of the other kind."
        )
    if recorded:
        return next(iter(recorded)) == "higher"
    known = table_higher_is_better(metric)
    return True if known is None else known


def default_primary_metric(entries: Sequence[Entry]) -> str:
    """The metric table's primary metric at the results' threshold (0.5 unless they all use another)."""
    thresholds = {e.results.protocol.threshold for e in entries}
    return table_primary_metric(thresholds.pop()) if len(thresholds) == 1 else PRIMARY_METRIC


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
    return slugify(text, keep="", fill="-", lower=True, empty="metric", paths=False)


# -------------------------------------------------------------------------------------- rows


def _group_key(results: Results) -> tuple[str, str, str, str]:
    return (_dataset_label(results), results.protocol.name, results.dataset.fingerprint, results.dataset.split)


def _primary_value(results: Results, metric: str) -> float | None:
    m = results.metrics.get(metric)
    return None if m is None else m.value


def rank_entries(
    entries: Sequence[Entry], primary_metric: str = PRIMARY_METRIC, *, higher_is_better: bool | None = None
) -> list[tuple[int | None, Entry]]:
    """Order rows by group, then best primary metric first (missing last); assign ranks.

    Eval results always make a row; stress results only when they carry top-level metrics
    (their clean scores) and no eval file scored the same model on the same data and protocol
    (the clean scores would be the same numbers twice). Equal values share a rank ("1, 2, 2, 4"); a row without the primary
    metric gets no rank. Ties are broken by label so the output is deterministic.
    ``higher_is_better`` defaults to the metric's own direction (:func:`metric_higher_is_better`).
    """
    if higher_is_better is None:
        higher_is_better = metric_higher_is_better(primary_metric, entries)
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
    """The metric columns: ``wanted`` as given, or the metric table's headline metrics (at the
    results' thresholds) that some result reports."""
    if wanted is not None:
        cols = list(wanted)
    else:
        present = {name for e in entries for name in e.results.metrics}
        thresholds = sorted({e.results.protocol.threshold for e in entries})
        cols = [m for t in thresholds for m in metric_names(t, headline=True) if m in present]
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
        "dataset_label": e.dataset,
        "split": r.dataset.split,
        "dataset_verified": r.dataset.verified,
        "protocol": r.protocol.name,
        "counts": r.counts.model_dump(),
        "metrics": {k: v.model_dump(mode="json") for k, v in r.metrics.items()},
        "provenance": _provenance(e),
    }


# ---------------------------------------------------------------------------- tabular output


UNVERIFIED_MARK = "†"
UNVERIFIED_NOTE = (f"{UNVERIFIED_MARK} scored on data that was not checked against a dolos-bench manifest (a folder "
                   "in another layout or a Hub dataset): its fingerprint hashes the files as they were found, and "
                   "nothing vouches for how they were made.")


def unverified(results: Results) -> bool:
    """True for results on data that no dolos-bench manifest vouched for (``verified: false``).

    ``None`` (files written before the field existed) is not flagged: it says nothing either way.
    """
    return results.dataset.verified is False


def _dataset_cell(e: Entry) -> str:
    return f"{e.dataset} {UNVERIFIED_MARK}" if unverified(e.results) else e.dataset


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
            _dataset_cell(e),
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
    higher_is_better: bool | None = None,
    digits: int = 3,
) -> str:
    """``leaderboard.md``: the table, how to read it, and the stress summaries if any."""
    if higher_is_better is None:
        higher_is_better = metric_higher_is_better(primary_metric, entries)
    better = "higher" if higher_is_better else "lower"
    parts = [
        f"# {title}\n",
        f"Ranked by `{primary_metric}` ({better} is better) within each dataset split and protocol. "
        f"`±` is half the width of the 95% confidence interval; `{MISSING}` marks a metric that "
        "was not reported or is undefined.\n",
        markdown_table(ranked, metrics, digits=digits),
    ]
    if any(unverified(e.results) for _, e in ranked):
        parts.append(UNVERIFIED_NOTE + "\n")
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
        parts.append(f"{DROP_NOTE}\n\n{AUC_NOTE}\n")
    return "\n".join(parts)


def csv_text(ranked: Sequence[tuple[int | None, Entry]], metrics: Sequence[str]) -> str:
    """All metrics of every row, one column each for value, CI bounds and n.

    Missing cells are empty (not ``—``) so that pandas/R read the columns as numbers.
    """
    all_metrics = list(metrics) + sorted({m for _, e in ranked for m in e.results.metrics} - set(metrics))
    header = ["rank", "label", "model", "model_kind", "kind", "dataset", "split", "protocol", "samples", "real", "fake"]
    for m in all_metrics:
        header += [m, f"{m} ci95_lo", f"{m} ci95_hi", f"{m} n"]
    header += ["dataset_fingerprint", "dataset_verified", "weights_sha256", "git_revision", "created", "command", "source"]
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
        verified = "" if r.dataset.verified is None else str(r.dataset.verified).lower()
        row += [r.dataset.fingerprint, verified, r.model.weights_sha256 or "", r.provenance.git_revision or "",
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


def _data_uri(name: str, data: bytes) -> str:
    mime = "image/svg+xml" if name.endswith(".svg") else "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _render_figure(fig: Any, stem: str, site: dict[str, bytes]) -> dict[str, str]:
    """Render ``fig`` in every format into ``site`` (relative path -> bytes); return format -> path.

    The site is built in memory and written only once it is complete, so a failure while
    drawing leaves the folder as it was.
    """
    files = {}
    for fmt in plots.FORMATS:
        rel = f"plots/{stem}.{fmt}"
        site[rel] = plots.render(fig, fmt)
        files[fmt] = rel
    return files


def _build_heatmaps(
    row_entries: Sequence[Entry], metrics: Sequence[str], site: dict[str, bytes], digits: int, full_range: bool
) -> list[dict[str, Any]]:
    figures = []
    for metric in metrics:
        values = generator_matrix(row_entries, metric)
        if not values:
            continue
        generators = sorted({g for row in values.values() for g in row})
        fig = plots.heatmap_figure(values, metric=metric, columns=generators, title=f"{metric} by generator",
                                   digits=min(digits, 2), full_range=full_range)
        files = _render_figure(fig, f"heatmap-{_slug(metric)}", site)
        figures.append({"metric": metric, "generators": generators, "values": values, "files": files})
    return figures


def _build_curves(entries: Sequence[Entry], site: dict[str, bytes], full_range: bool) -> list[dict[str, Any]]:
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
        fig = plots.robustness_figure(curves, metric=metric, references=clean.get(metric), axis_labels=axes,
                                      full_range=full_range)
        figures.append({
            "metric": metric,
            "curves": {lab: [p.model_dump(mode="json") for p in grid] for lab, grid in curves.items()},
            "files": _render_figure(fig, f"robustness-{_slug(metric)}", site),
        })
    return figures


STUDY_KIND = "cross-generator-study"
"""``kind`` of the ``study.json`` that ``bench train-study`` writes (:mod:`dolos_bench.train.study`)."""


def load_study(path: str | Path) -> dict[str, Any]:
    """A cross-generator study summary, checked enough to draw: a clear error for any other file."""
    path = Path(path)
    try:
        study = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: not a readable study file ({exc})") from exc
    if not isinstance(study, dict) or study.get("kind") != STUDY_KIND:
        raise ResultsError(f"{path} is not a bench train-study summary (kind {STUDY_KIND!r}): pass its study.json")
    try:
        names = [str(e["name"]) for e in study["train_sets"]]
        gens = [str(g) for g in study["generators"]]
        cells = [study["matrix"][n].get(g) for n in names for g in gens]
        str(study["metric"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ResultsError(f"{path}: malformed study file (missing {exc})") from exc
    if any(c is not None and not isinstance(c, (int, float)) for c in cells):
        raise ResultsError(f"{path}: malformed study file (a matrix cell is not a number)")
    return study


def _build_studies(study_paths: Sequence[str | Path], site: dict[str, bytes], full_range: bool) -> list[dict[str, Any]]:
    """The train x test heat map of each study, as figures the page shows beside the generator heat maps."""
    figures = []
    for path in study_paths:
        study = load_study(path)
        label = f"cross-generator: {study.get('name', Path(path).parent.name)}"
        fig = plots.cross_generator_figure(study, full_range=full_range)
        figures.append({
            "metric": label, "study": study.get("name"), "baseline": study.get("baseline"),
            "study_metric": study["metric"], "generators": list(study["generators"]),
            "train_sets": [e["name"] for e in study["train_sets"]], "values": study["matrix"],
            "files": _render_figure(fig, f"cross-generator-{_slug(str(study.get('name', 'study')))}", site),
        })
    return figures


def study_markdown(studies: Sequence[Mapping[str, Any]], digits: int) -> str:
    """Each study's matrix as a Markdown table (rows: trained on; columns: tested on)."""
    parts = []
    for st in studies:
        parts.append(f"\n## {st['metric']} ({st['baseline']}, {st['study_metric']})\n")
        parts.append("| trained on | " + " | ".join(_md_escape(g) for g in st["generators"]) + " |")
        parts.append("|---|" + "---:|" * len(st["generators"]))
        for row in st["train_sets"]:
            values = st["values"].get(row, {})
            parts.append(f"| {_md_escape(row)} | " + " | ".join(
                _fmt_float(values.get(g), digits) for g in st["generators"]) + " |")
    return "\n".join(parts) + ("\n" if parts else "")


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


def _first_sort(higher_is_better: bool) -> str:
    """The direction a column's first click sorts in: best first."""
    return "descending" if higher_is_better else "ascending"


def _metric_columns(metrics: Sequence[str], primary_metric: str, higher_is_better: bool,
                    entries: Sequence[Entry] = ()) -> list[dict[str, str]]:
    """Each metric column with its direction: the primary metric's is the ranking's, the others' their own."""
    out = []
    for m in metrics:
        up = higher_is_better if m == primary_metric else metric_higher_is_better(m, entries)
        out.append({"name": m, "first_sort": _first_sort(up), "better": "higher" if up else "lower"})
    return out


def _summary_cells(stress_summary: Sequence[Mapping[str, Any]], digits: int) -> list[dict[str, Any]]:
    """Stress summary rows formatted for the page; a negative drop is flagged for its tooltip."""
    return [{**s, "relative_drop": _fmt_float(s.get("relative_drop"), digits),
             "area_under_curve": _fmt_float(s.get("area_under_curve"), digits),
             "improved": (s.get("relative_drop") or 0.0) < 0} for s in stress_summary]


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
    site: Mapping[str, bytes],
    full_range: bool = False,
    digits: int = 3,
) -> str:
    """Render ``index.html`` from the template; every asset is inlined (figures from ``site``,
    the rendered files by relative path)."""
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
            "dataset": e.dataset,
            "unverified": unverified(r),
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
        metrics=_metric_columns(metrics, primary_metric, higher_is_better, [e for _, e in ranked]),
        rows=rows,
        heatmaps=[{"metric": h["metric"], "src": _data_uri(h["files"]["svg"], site[h["files"]["svg"]]),
                   "id": _slug(h["metric"])} for h in heatmaps],
        curves=[{"metric": c["metric"], "src": _data_uri(c["files"]["svg"], site[c["files"]["svg"]])} for c in curves],
        stress_summary=_summary_cells(stress_summary, digits),
        full_range=full_range,
        auc_note=AUC_NOTE,
        unverified_mark=UNVERIFIED_MARK,
        unverified_note=UNVERIFIED_NOTE if any(unverified(e.results) for _, e in ranked) else None,
        drop_note=DROP_NOTE,
        missing=MISSING,
        data_json=_script_json(payload),
        version=dolos_bench.__version__,
        json_dumps=lambda v: json.dumps(v, sort_keys=True),
        slash_break=Markup("/<wbr>"),  # lets long metric names wrap at their slashes
    )


# ------------------------------------------------------------------------------------ output


def claim_folder(out: Path) -> list[str]:
    """The files an earlier leaderboard wrote in ``out`` (empty for a new or empty folder).

    Refuses, touching nothing, a path that is a file and a folder holding anything that no
    leaderboard recorded as its own: the user's files are never replaced or deleted.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder: choose a folder for the leaderboard")
    recorded = read_record(out, RECORD_KIND)
    refuse_foreign(out, [*recorded, RECORD] if recorded is not None else [], what="leaderboard")
    return recorded or []


def write_site(out: Path, site: Mapping[str, bytes], previous: Sequence[str]) -> None:
    """Write every file of ``site`` atomically, then drop the earlier leaderboard's files it no
    longer has. The record lists old and new files while they are written, so an interrupted
    run leaves a folder that the next run still recognises as its own."""
    write_record(out, RECORD_KIND, [*previous, *site])
    for rel, data in site.items():
        atomic_write_bytes(out / rel, data)
    remove_ours(out, sorted(set(previous) - set(site)))
    write_record(out, RECORD_KIND, site)


# ------------------------------------------------------------------------------------ facade


def build_leaderboard(
    result_paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    title: str = DEFAULT_TITLE,
    primary_metric: str | None = None,
    metrics: Sequence[str] | None = None,
    heatmap_metrics: Sequence[str] | None = None,
    higher_is_better: bool | None = None,
    full_range: bool = False,
    digits: int = 3,
    studies: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Build the site in ``out_dir`` and return the leaderboard payload (+ ``files`` written).

    Writes ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.json``, ``index.html`` and
    ``plots/*.png|svg``. ``primary_metric`` ranks the rows (default: the metric table's primary
    metric, :func:`default_primary_metric`). ``metrics`` overrides the headline columns; ``heatmap_metrics`` the
    metrics drawn by generator (default: the headline ones that results break down by
    generator; the page offers a selector). ``higher_is_better`` defaults to the primary
    metric's direction. Figures fit their axes and colours to the data; ``full_range`` draws
    them over [0, 1]. ``studies`` are ``study.json`` files of ``bench train-study``: each adds its
    train x test heat map (page, ``plots/cross-generator-*``) and matrix (Markdown, JSON ``studies``).
    Raises :class:`ResultsError` for any unusable file -- incomplete, unknown
    version, malformed -- and :class:`~dolos_bench.utils.outdir.ForeignFilesError` for a folder
    holding files no leaderboard wrote, before writing anything. An earlier leaderboard in
    ``out_dir`` is replaced (see the module docstring).
    """
    entries = load_entries(result_paths)
    out = Path(out_dir)
    previous = claim_folder(out)
    if primary_metric is None:
        primary_metric = default_primary_metric(entries)
    if higher_is_better is None:
        higher_is_better = metric_higher_is_better(primary_metric, entries)

    ranked = rank_entries(entries, primary_metric, higher_is_better=higher_is_better)
    headline = choose_headline(entries, primary_metric, metrics)
    # Eval rows only: a stress file's clean scores would duplicate its model's heatmap row.
    eval_entries = [e for _, e in ranked if e.results.kind == "eval"]
    site: dict[str, bytes] = {}
    heatmaps = _build_heatmaps(eval_entries, heatmap_metrics if heatmap_metrics is not None else headline, site,
                               digits, full_range)
    curves = _build_curves(entries, site, full_range)
    study_figures = _build_studies(studies, site, full_range)
    stress_summary = _stress_summary_rows(entries)

    payload: dict[str, Any] = {
        "title": title,
        "primary_metric": primary_metric,
        "higher_is_better": higher_is_better,
        "full_range": full_range,
        "metrics": headline,
        "rows": [row_dict(rank, e) for rank, e in ranked],
        "heatmaps": [{k: h[k] for k in ("metric", "generators", "values")} for h in heatmaps],
        "robustness": [{k: c[k] for k in ("metric", "curves")} for c in curves],
        "stress_summary": stress_summary,
        "dolos_bench_version": dolos_bench.__version__,
    }
    if study_figures:
        payload["studies"] = [{k: f[k] for k in ("study", "baseline", "study_metric", "generators", "train_sets", "values")}
                              for f in study_figures]

    files = {"markdown": "leaderboard.md", "csv": "leaderboard.csv", "json": "leaderboard.json", "html": "index.html"}
    site[files["markdown"]] = markdown_document(title, ranked, headline, primary_metric, entries,
                                                higher_is_better=higher_is_better, digits=digits).encode()
    site[files["markdown"]] += study_markdown(study_figures, digits).encode()
    site[files["csv"]] = csv_text(ranked, headline).encode()
    site[files["json"]] = (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode()
    site[files["html"]] = render_html(
        title=title, primary_metric=primary_metric, higher_is_better=higher_is_better, metrics=headline,
        ranked=ranked, heatmaps=[*heatmaps, *study_figures], curves=curves, stress_summary=stress_summary, payload=payload,
        site=site, full_range=full_range, digits=digits,
    ).encode()
    write_site(out, site, previous)
    plot_files = {f"{kind}:{fig['metric']}:{fmt}": rel for kind, figs in (("heatmap", heatmaps), ("robustness", curves),
                                                                           ("study", study_figures))
                  for fig in figs for fmt, rel in fig["files"].items()}
    return {**payload, "files": {k: str(out / rel) for k, rel in {**files, **plot_files}.items()}}


__all__ = [
    "PRIMARY_METRIC",
    "HEADLINE_METRICS",
    "MISSING",
    "Entry",
    "load_entries",
    "format_metric",
    "rank_entries",
    "choose_headline",
    "default_primary_metric",
    "row_dict",
    "markdown_table",
    "markdown_document",
    "csv_text",
    "generator_matrix",
    "load_study",
    "study_markdown",
    "render_html",
    "build_leaderboard",
    "claim_folder",
    "write_site",
    "dataset_labels",
    "short_fingerprint",
    "metric_higher_is_better",
    "AUC_NOTE",
    "DROP_NOTE",
]
