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

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .localizers import load_localizer
from .metrics import MetricState
from .protocols import Protocol, get_protocol
from .results import (
    DatasetInfo, PerturbationSpec, Results, StressInfo, StressPoint, StressSummary,
    collect_provenance, package_versions, save_results,
)
from .runner import (
    breakdowns_of, counts_of, fingerprint, metrics_of, model_info, open_split, protocol_info, score_split,
)
from .suite import LOWER_IS_BETTER, GridPoint, Suite, expand, load_suite

CHECKPOINT_VERSION = 1


class StressError(ValueError):
    """A stress run that cannot be done as asked; the message says why and what to do."""


class StressInterrupted(RuntimeError):
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


# -- checkpoints ----------------------------------------------------------------------------------


class _Checkpoints:
    """One JSON file of metric state per finished grid point, in a hidden folder beside the results.

    Each file carries the hash of everything that decides its numbers (model and weights,
    options, data fingerprint, protocol, suite seed, chain); a file whose hash does not match
    the current run is ignored and overwritten, never merged in.
    """

    def __init__(self, out: Path, run_key: Mapping[str, Any]) -> None:
        self.folder = out.parent / f".{out.name}.stress"
        self.run_key = dict(run_key)

    def _key(self, name: str, chain: list[dict[str, Any]]) -> str:
        blob = json.dumps({"run": self.run_key, "point": name, "chain": chain, "v": CHECKPOINT_VERSION},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, index: int) -> Path:
        return self.folder / f"{index:04d}.json"

    def load(self, index: int, name: str, chain: list[dict[str, Any]]) -> MetricState | None:
        path = self._path(index)
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if saved.get("key") != self._key(name, chain):
            return None
        return MetricState.from_dict(saved["state"])

    def save(self, index: int, name: str, chain: list[dict[str, Any]], state: MetricState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"key": self._key(name, chain), "point": name, "state": state.to_dict()})
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, self._path(index))

    def clear(self) -> None:
        if self.folder.exists():
            for path in self.folder.iterdir():
                path.unlink()
            self.folder.rmdir()


# -- worker processes ------------------------------------------------------------------------


@dataclass(frozen=True)
class _WorkerSetup:
    """What a worker process needs to rebuild the run: plain values, cheap to pickle."""

    model: str
    data: str
    split: str
    limit: int | None
    device: str
    options: dict[str, Any]
    protocol: str
    batch_size: int
    chain_seed: int
    out: str
    run_key: dict[str, Any]


_WORKER: dict[str, Any] = {}


def _init_worker(setup: _WorkerSetup) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    _WORKER.update(
        setup=setup,
        localizer=load_localizer(setup.model, device=setup.device, options=dict(setup.options)),
        ds=open_split(setup.data, setup.split, setup.limit, verify=False),  # verified by the parent
        proto=get_protocol(setup.protocol),
        checkpoints=_Checkpoints(Path(setup.out), setup.run_key),
    )


def _score_point_in_worker(index: int, name: str, chain_spec: list[dict[str, Any]]) -> int:
    from dolos_bench.build.perturb import parse_chain

    setup: _WorkerSetup = _WORKER["setup"]
    chain = parse_chain(chain_spec) if chain_spec else None
    state = score_split(_WORKER["localizer"], _WORKER["ds"], _WORKER["proto"], batch_size=setup.batch_size,
                        chain=chain, chain_seed=setup.chain_seed)
    _WORKER["checkpoints"].save(index, name, chain_spec, state)
    return index


def _score_in_pool(setup: _WorkerSetup, pending: Sequence[tuple[int, str, list[dict[str, Any]]]], workers: int):
    """Score grid points in a process pool; yield each ``(index, name, chain)`` once its checkpoint is written.

    Points finish in any order; each worker writes its own checkpoint file, so the parent only
    reads them back. A failure in a worker re-raises here with the worker's message.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["dolos_bench.eval.stress"])
    with ProcessPoolExecutor(min(workers, len(pending)), mp_context=context, initializer=_init_worker,
                             initargs=(setup,)) as pool:
        futures = {pool.submit(_score_point_in_worker, *job): job for job in pending}
        remaining = set(futures)
        try:
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()  # re-raise a worker's error with its message
                    yield futures[future]
        except BaseException:
            for future in remaining:  # points not started yet are dropped; running ones finish
                future.cancel()
            raise


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
            from dolos_bench.registry import did_you_mean

            raise StressError(f"unknown metric {metric!r}.{did_you_mean(metric, known)}")
        if any(part in metric for part in LOWER_IS_BETTER):
            raise StressError(f"{metric!r} is lower-is-better; the stress summary needs a higher-is-better metric")
    grid = expand(suite_obj, only)
    proto: Protocol = get_protocol(protocol)
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
    checkpoints = _Checkpoints(out, {
        "model": info_model.model_dump(mode="json"), "data": data_fp, "protocol": proto.info(),
        "protocol_name": proto.name, "suite_seed": suite_obj.seed,
        # Codec and resampling libraries decide the perturbed bytes: an upgrade invalidates.
        "packages": package_versions(),
    })
    load_s = time.perf_counter() - start

    jobs: list[tuple[str, GridPoint | None]] = [("clean", None)] + [(p.key, p) for p in grid]
    n = len(ids)
    total = len(jobs) * n
    states: dict[int, MetricState] = {}
    pending: list[tuple[int, str, list[dict[str, Any]]]] = []
    for index, (name, point) in enumerate(jobs):
        chain_spec = point.chain.spec() if point is not None else []
        state = checkpoints.load(index, name, chain_spec)
        if state is None:
            pending.append((index, name, chain_spec))
        else:
            states[index] = state
    resumed = len(states)
    if stop_after_points is not None:
        pending = pending[:stop_after_points]
    t0 = time.perf_counter()
    done = resumed * n
    if progress:
        progress(done, total, f"resumed {resumed}" if resumed else "clean")
    if workers <= 1 or len(pending) <= 1:
        for index, name, chain_spec in pending:
            point = jobs[index][1]
            states[index] = score_split(
                localizer, ds, proto, batch_size=batch_size,
                chain=point.chain if point is not None else None, chain_seed=suite_obj.seed,
                progress=(lambda d, t, b=done, k=name: progress(b + d, total, k)) if progress else None,
            )
            checkpoints.save(index, name, chain_spec, states[index])
            done += n
    else:
        setup = _WorkerSetup(model=model, data=str(data), split=split, limit=limit, device=device,
                             options=dict(model_args or {}), protocol=protocol, batch_size=batch_size,
                             chain_seed=suite_obj.seed, out=str(out), run_key=checkpoints.run_key)
        for index, name, chain_spec in _score_in_pool(setup, pending, workers):
            loaded = checkpoints.load(index, name, chain_spec)
            if loaded is None:  # pragma: no cover - the worker wrote it just now
                raise StressError(f"checkpoint of grid point {name} vanished from {checkpoints.folder}")
            states[index] = loaded
            done += n
            if progress:
                progress(done, total, name)
    if len(states) < len(jobs):
        raise StressInterrupted(
            f"stopped after {len(states) - resumed} grid point(s); checkpoints in {checkpoints.folder}"
        )
    predict_s = time.perf_counter() - t0

    clean = states[0].compute(bootstrap=bootstrap, seed=seed)
    points: list[StressPoint] = []
    for (name, point), state in zip(jobs[1:], (states[i] for i in range(1, len(jobs)))):
        assert point is not None
        computed = state.compute(bootstrap=bootstrap, seed=seed)
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
    plot_files: dict[str, dict[str, Path]] = {}
    if plots:
        label = info_model.id
        for m in dict.fromkeys([headline, *suite_obj.curve_metrics()]):
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
                "plot_metrics": list(dict.fromkeys([headline, *suite_obj.curve_metrics()])),
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
