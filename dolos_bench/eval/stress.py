"""``bench stress``: score one localizer over a grid of perturbations and summarise its robustness.

The clean split is scored first (the reference every drop is measured against), then each grid
point of the suite: every image is perturbed with the build's perturbation code, seeded per
(suite seed, chain, sample id) so a re-run sees the same pixels, while the ground truth stays the
dataset's mask. The metric state of each finished point is checkpointed next to the output, so an
interrupted sweep resumes where it stopped and ends with the same numbers; the results file is
written once, atomically, when the whole grid is done.

Summary, per perturbation, of the suite's headline metric ``m`` (higher is better), with ``c``
its clean value and ``v_1..v_k`` its values over the perturbation's severities:

* ``clean`` = c and ``worst`` = min v_i;
* ``relative_drop`` = (c - min v_i) / c, the worst-case fraction of the clean score lost;
* ``mean_relative_drop`` = (c - mean v_i) / c;
* ``area_under_curve``: the trapezoidal area under m against severity over the tested range,
  divided by the range's width -- the curve's mean height, in the metric's units, so 1.0 means
  a perfect score at every severity. Numeric severities are placed at their values; others at
  equal spacing in suite order. With one severity it is that point's value.

Drops are ``None`` when the clean score is 0 or undefined (nothing to drop from).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import UserError
from dolos_bench.registry import did_you_mean

from .localizers import load_localizer
from .protocols import Protocol, get_protocol
from .results import (
    DatasetInfo, PerturbationSpec, Results, StressInfo, StressPoint, StressSummary,
    collect_provenance, save_results,
)
from .runner import (
    breakdowns_of, counts_of, fingerprint, metrics_of, model_info, open_split, protocol_info,
)
from .suite import LOWER_IS_BETTER, Suite, expand, load_suite
from .work import Checkpoints, RunInterrupted, RunSetup, WorkUnit, run_key, run_units


class StressError(UserError, ValueError):
    """A stress run that cannot be done as asked; the message says why and what to do."""


class StressInterrupted(RunInterrupted):
    """Raised by ``stop_after_points`` (tests, benchmarks): the checkpoints written so far stay."""


@dataclass
class StressOutput:
    results: Results
    results_path: Path
    plots: dict[str, dict[str, Path]] = field(default_factory=dict)
    resumed_points: int = 0


# -- summary ------------------------------------------------------------------------------------


def _numeric(severities: Sequence[float | str]) -> bool:
    return all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in severities)


def area_under_curve(severities: Sequence[float | str], values: Sequence[float]) -> float:
    """Mean height of the piecewise-linear curve through the points (see the module docstring)."""
    if not values:
        raise ValueError("area_under_curve needs at least one point")
    if len(values) == 1:
        return float(values[0])
    if _numeric(severities):
        xs = np.asarray(severities, dtype=float)
    else:
        xs = np.arange(len(values), dtype=float)
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], np.asarray(values, dtype=float)[order]
    width = xs[-1] - xs[0]
    if width <= 0:
        return float(ys.mean())
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0) / width)


def summarize(clean: float | None, severities: Sequence[float | str], values: Sequence[float | None]) -> StressSummary:
    """The summary of one perturbation's curve; points with an undefined value are left out."""
    kept = [(s, v) for s, v in zip(severities, values) if v is not None and math.isfinite(v)]
    if not kept:
        return StressSummary(relative_drop=None, area_under_curve=None, mean_relative_drop=None,
                             clean=clean, worst=None)
    sev, vals = [s for s, _ in kept], [float(v) for _, v in kept]
    worst = min(vals)
    has_clean = clean is not None and math.isfinite(clean) and clean > 0
    return StressSummary(
        relative_drop=(clean - worst) / clean if has_clean else None,  # type: ignore[operator]
        area_under_curve=area_under_curve(sev, vals),
        mean_relative_drop=(clean - float(np.mean(vals))) / clean if has_clean else None,  # type: ignore[operator]
        clean=clean,
        worst=worst,
    )


# -- the run -----------------------------------------------------------------------------------


def _slug(metric: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in metric).strip("-")


def plot_stem(out: Path, metric: str) -> Path:
    """Where the curves of ``metric`` go: ``<out stem>.curves.<metric slug>.{png,svg}``."""
    return out.with_name(f"{out.stem}.curves.{_slug(metric)}")


def run_stress(
    model: str,
    data: str,
    *,
    suite: str | Path | Suite = "default",
    out: Path,
    split: str = "test",
    protocol: str = "default",
    device: str = "cpu",
    batch_size: int = 16,
    limit: int | None = None,
    model_args: Mapping[str, Any] | None = None,
    only: list[str] | None = None,
    metric: str | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    exact: bool = False,
    plots: bool = True,
    workers: int = 1,
    progress: Callable[[int, int, str], None] | None = None,
    stop_after_points: int | None = None,
    command: str | None = None,
) -> StressOutput:
    """Score ``model`` on the clean split and on every point of ``suite``; write one results file.

    ``progress(done, total, label)`` counts samples over the whole sweep. ``stop_after_points``
    raises :class:`StressInterrupted` after that many points were scored in this call (the
    checkpoints stay), to test and time resuming. ``workers`` > 1 scores grid points in that
    many processes, each with its own copy of the model (mind GPU memory with ``device="cuda"``);
    the numbers do not depend on it.
    """
    from dolos_bench.report.plots import robustness_curves

    start = time.perf_counter()
    if isinstance(suite, Suite):
        suite_obj, suite_file = suite, None
    else:
        suite_obj, suite_file = load_suite(suite)
    headline = metric or suite_obj.metric
    if metric is not None:
        known = metrics_known(protocol)
        if metric not in known:
            raise StressError(f"unknown metric {metric!r}.{did_you_mean(metric, known)}")
        if any(part in metric for part in LOWER_IS_BETTER):
            raise StressError(f"{metric!r} is lower-is-better; the stress summary needs a higher-is-better metric")
    grid = expand(suite_obj, only)
    proto: Protocol = get_protocol(protocol, exact=exact)
    out = Path(out)
    if out.suffix != ".json":
        raise StressError(f"--out must name a .json results file, got {out}")

    ds = open_split(data, split, limit)
    ids = ds.column("id")
    localizer = load_localizer(model, device=device, options=dict(model_args or {}))
    identity = localizer.identity()
    if identity.get("kind") == "predictions":
        raise StressError(
            f"{model}: a folder of precomputed predictions cannot be stress-tested -- its maps do not "
            "change when the images are perturbed. Pass the model itself (registered name, "
            "module:Class, TorchScript or ONNX file)."
        )
    info_model = model_info(localizer, model, model_args)
    data_fp = fingerprint(str(data), split, ids)
    n = len(ids)
    key = run_key(info_model, data_fp, proto, suite_seed=suite_obj.seed)
    checkpoints = Checkpoints(out.parent / f".{out.name}.stress", key)
    setup = RunSetup(model=model, data=str(data), split=split, limit=limit, device=device,
                     options=dict(model_args or {}), protocol=protocol, batch_size=batch_size, exact=exact,
                     chain_seed=suite_obj.seed, checkpoint_folder=str(checkpoints.folder), run_key=key)
    load_s = time.perf_counter() - start

    units = [WorkUnit(0, "clean", 0, n)] + [
        WorkUnit(i, p.key, 0, n, tuple(p.chain.spec())) for i, p in enumerate(grid, start=1)
    ]
    t0 = time.perf_counter()
    try:
        states, resumed = run_units(units, setup, localizer=localizer, ds=ds, proto=proto, checkpoints=checkpoints,
                                    workers=workers, progress=progress, stop_after=stop_after_points)
    except RunInterrupted as exc:
        raise StressInterrupted(str(exc)) from None
    predict_s = time.perf_counter() - t0

    clean = states[0].compute(bootstrap=bootstrap, seed=seed)
    points: list[StressPoint] = []
    for index, point in enumerate(grid, start=1):
        computed = states[index].compute(bootstrap=bootstrap, seed=seed)
        points.append(StressPoint(
            perturbation=point.perturbation, severity=point.severity,
            spec=[PerturbationSpec(**s) for s in point.chain.spec()],
            metrics=metrics_of(computed),
        ))
    clean_metrics = metrics_of(clean)
    clean_value = clean_metrics[headline].value if headline in clean_metrics else None
    summary = {}
    for entry in dict.fromkeys(p.perturbation for p in points):
        mine = [p for p in points if p.perturbation == entry]
        summary[entry] = summarize(
            clean_value, [p.severity for p in mine],
            [p.metrics[headline].value if headline in p.metrics else None for p in mine],
        )

    axis_labels = {e.name: e.axis for e in suite_obj.perturbations}
    curve_metrics = list(dict.fromkeys([headline, *suite_obj.curve_metrics()]))
    plot_files: dict[str, dict[str, Path]] = {}
    if plots:
        label = info_model.id
        for m in curve_metrics:
            reference = clean_metrics.get(m)
            plot_files[m] = robustness_curves(
                {label: points}, plot_stem(out, m), metric=m,
                references={label: reference.value if reference is not None else None},
                axis_labels=axis_labels,
                title=f"{label} on {Path(str(data)).name}/{split}: {m} (dashed: unperturbed)",
            )

    results = Results(
        kind="stress",
        model=info_model,
        dataset=DatasetInfo(path=str(data), fingerprint=data_fp, split=split, recipe=None, num_samples=len(ids)),
        protocol=protocol_info(proto),
        metrics=clean_metrics,
        breakdowns=breakdowns_of(clean),
        counts=counts_of(states[0]),
        complete=True,
        provenance=collect_provenance(
            command or " ".join(sys.argv), seeds={"bootstrap": seed, "suite": suite_obj.seed},
            timings={"load_s": load_s, "predict_s": predict_s, "total_s": time.perf_counter() - start},
        ),
        info={
            "suite": {
                "name": suite_obj.name, "file": str(suite_file) if suite_file else None,
                "sha256": suite_obj.sha256(), "only": list(only or []), "axes": axis_labels,
                "plot_metrics": curve_metrics,
            },
            "ground_truth": "dataset mask at its own resolution; perturbations touch the image only",
            "summary_definitions": {
                "relative_drop": "(clean - min over severities) / clean",
                "mean_relative_drop": "(clean - mean over severities) / clean",
                "area_under_curve": "trapezoidal area under metric vs severity / severity range",
            },
            "resumed_points": resumed,
            "plots": {m: {fmt: p.name for fmt, p in files.items()} for m, files in plot_files.items()},
        },
        stress=StressInfo(suite=suite_obj.name, metric=headline, grid=points, summary=summary),
    )
    save_results(results, out)
    checkpoints.clear()
    return StressOutput(results, out, plot_files, resumed)


def metrics_known(protocol: str) -> list[str]:
    from .metrics import metric_names

    return metric_names(get_protocol(protocol).threshold)


__all__ = [
    "StressError",
    "StressInterrupted",
    "StressOutput",
    "area_under_curve",
    "plot_stem",
    "run_stress",
    "summarize",
]
