"""``bench stress``: score one localizer over a grid of perturbations and summarise its robustness.

The clean split is scored first (the reference every drop is measured against), then each grid
point of the suite: every image is perturbed with the build's perturbation code, seeded per
(suite seed, chain, sample id) so a re-run sees the same pixels, while the ground truth stays the
dataset's mask. The metric state of each finished point is checkpointed next to the output, so an
interrupted sweep resumes where it stopped and ends with the same numbers; the results file is
written once, atomically, when the whole grid is done. Ctrl-C ends in :class:`StressInterrupted`,
whose message says how many points are checkpointed and the command that resumes the sweep. A
sweep over the first ``limit`` samples of a split writes ``complete: false``.

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

import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import UserError
from ..utils.text import slugify
from dolos_bench.registry import did_you_mean

from .localizers import load_localizer, resolve_device
from .protocols import Protocol, get_protocol
from ..metric_specs import higher_is_better, metric_names
from ..results import (
    PerturbationSpec, Results, StressInfo, StressPoint, StressSummary,
    collect_provenance, save_results,
)
from .runner import (
    breakdowns_of, counts_of, dataset_info, identity_info, metrics_of, model_info, open_scored_split, protocol_info,
)
from .suite import GridPoint, Suite, expand, load_suite
from .config import ScoringConfig
from .work import Interruption, RunInterrupted, RunSetup, ScoringWorker, WorkUnit, run_key, run_units


CurvePlotter = Callable[..., Mapping[str, Path]]
"""Draws one metric's robustness curves: ``(points by label, stem, metric=, references=, axis_labels=,
title=) -> {format: path}``, as :func:`dolos_bench.report.plots.robustness_curves` does."""


class StressError(UserError, ValueError):
    """A stress run that cannot be done as asked; the message says why and what to do."""


class StressInterrupted(RunInterrupted):
    """Ctrl-C or ``stop_after_points`` (tests, benchmarks): the checkpoints written so far stay."""


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
    return slugify(metric, keep="-.", fill="-", squeeze=False, empty="", paths=False)


def plot_stem(out: Path, metric: str) -> Path:
    """Where the curves of ``metric`` go: ``<out stem>.curves.<metric slug>.{png,svg}``."""
    return out.with_name(f"{out.stem}.curves.{_slug(metric)}")


STRESS_BOOTSTRAP = 200
"""Bootstrap resamples per grid point when the config leaves ``bootstrap`` unset (``bench stress``'s default)."""


def run_stress(
    config: ScoringConfig,
    *,
    suite: str | Path | Suite = "default",
    out: Path,
    only: list[str] | None = None,
    metric: str | None = None,
    plots: CurvePlotter | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    stop_after_points: int | None = None,
    command: str | None = None,
) -> StressOutput:
    """Score ``config.model`` on the clean split and on every point of ``suite``; write one results file.

    ``progress(done, total, label)`` counts samples over the whole sweep. ``stop_after_points``
    raises :class:`StressInterrupted` after that many points were scored in this call (the
    checkpoints stay), to test and time resuming, as Ctrl-C does at any point; its message
    names the checkpointed points and ``command`` (default: this process's command line) as the
    way to resume. ``config.workers`` > 1 scores grid points in that many processes, each with its
    own copy of the model (``device="cuda"`` puts worker ``i`` on GPU ``i``; mind GPU memory with more
    workers than GPUs); the numbers do not depend on it. ``config.chunk_size`` is not used here.
    ``plots`` draws the robustness curves beside ``out`` (the CLI passes
    :func:`dolos_bench.report.plots.robustness_curves`); without it none are drawn.
    """
    if isinstance(suite, Suite):
        suite_obj, suite_file = suite, None
    else:
        suite_obj, suite_file = load_suite(suite)
    headline = metric or suite_obj.metric
    if metric is not None:
        known = metrics_known(config.protocol)
        if metric not in known:
            raise StressError(f"unknown metric {metric!r}.{did_you_mean(metric, known)}")
        if not higher_is_better(metric):
            raise StressError(f"{metric!r} is lower-is-better; the stress summary needs a higher-is-better metric")
    grid = expand(suite_obj, only)
    proto = get_protocol(config.protocol, exact=config.exact)
    out = Path(out)
    if out.suffix != ".json":
        raise StressError(f"--out must name a .json results file, got {out}")
    sweep = _Sweep(config=config, proto=proto, suite=suite_obj, suite_file=suite_file, grid=grid, headline=headline,
                   out=out, only=list(only or []), plots=plots,
                   interruption=Interruption("point", "points of the sweep", command or shlex.join(sys.argv)))
    try:
        return sweep.run(progress, stop_after_points)
    except (KeyboardInterrupt, RunInterrupted):
        raise StressInterrupted(sweep.interruption.message()) from None


@dataclass
class _Sweep:
    """One checked ``run_stress`` call: scores the units, then summarises, plots and writes."""

    config: ScoringConfig
    proto: Protocol
    suite: Suite
    suite_file: Path | None
    grid: list[GridPoint]
    headline: str
    out: Path
    only: list[str]
    plots: "CurvePlotter | None"
    interruption: Interruption

    @property
    def bootstrap(self) -> int:
        return self.config.bootstrap_or(STRESS_BOOTSTRAP)

    def run(self, progress: Callable[[int, int, str], None] | None, stop_after: int | None) -> StressOutput:
        start = time.perf_counter()
        proto = self.proto
        config = self.config
        resolve_device(config.device)  # a bad --device fails before the data is opened (a Hub id is slow)
        ds, split_samples = open_scored_split(config.data, config.split, config.limit)
        ids = ds.column("id")
        localizer = load_localizer(config.model, device=config.device, options=dict(config.options))
        identity = localizer.identity()
        if identity.get("kind") == "predictions":
            raise StressError(
                f"{config.model}: a folder of precomputed predictions cannot be stress-tested -- its maps do not "
                "change when the images are perturbed. Pass the model itself (registered name, "
                "module:Class, TorchScript or ONNX file)."
            )
        info_model = model_info(localizer, config.model, config.options)
        info_data = dataset_info(config.data, config.split, ds, ids, split_samples)
        n = len(ids)
        key = run_key(info_model, info_data.fingerprint, proto, suite_seed=self.suite.seed)
        setup = RunSetup(config, chain_seed=self.suite.seed,
                         checkpoint_folder=str(self.out.parent / f".{self.out.name}.stress"), run_key=key)
        worker = ScoringWorker(setup, config.device, localizer=localizer, ds=ds)
        checkpoints = worker.checkpoints
        assert checkpoints is not None
        units = [WorkUnit(0, "clean", 0, n)] + [
            WorkUnit(i, p.key, 0, n, tuple(p.chain.identity())) for i, p in enumerate(self.grid, start=1)
        ]
        self.interruption.units, self.interruption.checkpoints = units, checkpoints
        load_s = time.perf_counter() - start
        t0 = time.perf_counter()
        states, resumed = run_units(units, worker, progress=progress, stop_after=stop_after)
        predict_s = time.perf_counter() - t0

        clean = states[0].compute(bootstrap=self.bootstrap, seed=config.seed)
        points = [
            StressPoint(perturbation=point.perturbation, severity=point.severity,
                        spec=[PerturbationSpec(**s) for s in point.chain.identity()],
                        metrics=metrics_of(states[index].compute(bootstrap=self.bootstrap, seed=config.seed)))
            for index, point in enumerate(self.grid, start=1)
        ]
        clean_metrics = metrics_of(clean)
        self.out.unlink(missing_ok=True)  # an older results file must not stand beside new curves
        plot_files = self._plots(info_model.id, points, clean_metrics) if self.plots else {}
        results = Results(
            kind="stress",
            model=info_model,
            dataset=info_data,
            protocol=protocol_info(proto),
            metrics=clean_metrics,
            breakdowns=breakdowns_of(clean),
            counts=counts_of(states[0]),
            complete=info_data.num_samples == split_samples,
            provenance=collect_provenance(
                self.interruption.command, seeds={"bootstrap": config.seed, "suite": self.suite.seed},
                timings={"load_s": load_s, "predict_s": predict_s, "total_s": time.perf_counter() - start},
            ),
            info={**self._info(resumed, plot_files), "model_identity": identity_info(localizer)},
            stress=StressInfo(suite=self.suite.name, metric=self.headline, grid=points,
                              summary=self._summary(points, clean_metrics)),
        )
        save_results(results, self.out)
        checkpoints.clear()
        return StressOutput(results, self.out, plot_files, resumed)

    def _summary(self, points: list[StressPoint], clean_metrics: Mapping[str, Any]) -> dict[str, StressSummary]:
        clean_value = clean_metrics[self.headline].value if self.headline in clean_metrics else None
        summary = {}
        for entry in dict.fromkeys(p.perturbation for p in points):
            mine = [p for p in points if p.perturbation == entry]
            summary[entry] = summarize(
                clean_value, [p.severity for p in mine],
                [p.metrics[self.headline].value if self.headline in p.metrics else None for p in mine],
            )
        return summary

    def _axis_labels(self) -> dict[str, str]:
        return {e.name: e.axis for e in self.suite.perturbations}

    def _curve_metrics(self) -> list[str]:
        return list(dict.fromkeys([self.headline, *self.suite.curve_metrics()]))

    def _plots(self, label: str, points: list[StressPoint], clean_metrics: Mapping[str, Any]) -> dict[str, dict[str, Path]]:
        assert self.plots is not None
        plot_files: dict[str, dict[str, Path]] = {}
        for m in self._curve_metrics():
            reference = clean_metrics.get(m)
            plot_files[m] = self.plots(
                {label: points}, plot_stem(self.out, m), metric=m,
                references={label: reference.value if reference is not None else None},
                axis_labels=self._axis_labels(),
                title=f"{label} on {Path(self.config.data).name}/{self.config.split}: {m} (dashed: unperturbed)",
            )
        return plot_files

    def _info(self, resumed: int, plot_files: Mapping[str, Mapping[str, Path]]) -> dict[str, Any]:
        return {
            "suite": {
                "name": self.suite.name, "file": str(self.suite_file) if self.suite_file else None,
                "sha256": self.suite.sha256(), "only": self.only, "axes": self._axis_labels(),
                "plot_metrics": self._curve_metrics(),
            },
            "ground_truth": "dataset mask at its own resolution; perturbations touch the image only",
            "summary_definitions": {
                "relative_drop": "(clean - min over severities) / clean",
                "mean_relative_drop": "(clean - mean over severities) / clean",
                "area_under_curve": "trapezoidal area under metric vs severity / severity range",
            },
            "resumed_points": resumed,
            "plots": {m: {fmt: p.name for fmt, p in files.items()} for m, files in plot_files.items()},
        }


def metrics_known(protocol: str) -> list[str]:
    """The metric names a run under ``protocol`` computes (a stress headline must be one)."""
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
