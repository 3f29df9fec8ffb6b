"""`bench stress`: suites, the perturbation grid, resuming, the summary maths, curves and the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dolos_bench.perturbations import parse_chain
from dolos_bench.cli import main
from dolos_bench.data.reader import read_rows
from dolos_bench.eval.api import Localizer, LocalizerError, LocalizerOutput
from dolos_bench.results import load_results
from dolos_bench.eval.config import ScoringConfig
from dolos_bench.eval.runner import run_eval
from dolos_bench.report.plots import robustness_curves
from dolos_bench.eval.stress import (
    StressError, StressInterrupted, area_under_curve, plot_stem, run_stress, summarize,
)
from dolos_bench.eval.suite import SuiteError, expand, load_suite, validate_suite_data
from dolos_bench.seeding import rng_for

from helpers import build_tiny, results_numbers

REPO = Path(__file__).resolve().parents[1]

SMALL_SUITE: dict[str, Any] = {
    "name": "small",
    "seed": 3,
    "metric": "pixel/auc/pooled/all",
    "plot_metrics": ["image/auc/all"],
    "perturbations": [
        {"name": "jpeg", "axis": "JPEG quality", "chain": "jpeg(quality={severity})", "severities": [90, 40]},
        {"name": "noise", "chain": "noise(sigma={severity})", "severities": [4, 16]},
        {"name": "social", "levels": [{"severity": "light", "chain": "resize(0.75)|jpeg(80)"},
                                      {"severity": "heavy", "chain": ["resize(0.5)", "jpeg(50)"]}]},
    ],
}


class ResidualLocalizer(Localizer):
    """High-pass residual energy as the map: cheap, deterministic, and sensitive to every perturbation.

    Records what it was shown (shape and a hash of each image) so the tests can check what the
    grid points feed the model.
    """

    name = "residual"
    seen: ClassVar[list[tuple[str, tuple[int, ...], str]]] = []

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        maps = []
        for image, sample_id in zip(images, ids or [""] * len(images)):
            type(self).seen.append((sample_id, image.shape, hashlib.sha256(image.tobytes()).hexdigest()))
            gray = image.astype(np.float32).mean(axis=2)
            padded = np.pad(gray, 1, mode="edge")
            local = sum(padded[1 + dy : 1 + dy + gray.shape[0], 1 + dx : 1 + dx + gray.shape[1]]
                        for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
            residual = np.abs(gray - local)
            maps.append(np.clip(residual / 16.0, 0.0, 1.0).astype(np.float32))
        return LocalizerOutput(maps)


MODEL = f"{__name__}:ResidualLocalizer"


class SmallImageIntolerant(ResidualLocalizer):
    """Breaks on downscaled input: a model error raised inside a worker process."""

    name = "intolerant"

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        if min(image.shape[0] for image in images) < 40:
            raise RuntimeError("input smaller than 40 px")
        return super().predict(images, ids)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("stress"), perturbations={"probability": 0.0, "chains": []})


RUN_OPTIONS = ("suite", "only", "metric", "plots", "progress", "stop_after_points", "command")
"""run_stress's own keywords; the rest of a _stress call goes into its ScoringConfig."""


def _stress(dataset: Path, out: Path, **kw: Any):
    kw.setdefault("suite", validate_suite_data(SMALL_SUITE))
    kw.setdefault("split", "train")
    kw.setdefault("bootstrap", 20)
    kw.setdefault("plots", robustness_curves)
    run = {key: kw.pop(key) for key in RUN_OPTIONS if key in kw}
    return run_stress(ScoringConfig(model=MODEL, data=str(dataset), **kw), out=out, **run)


_numbers = results_numbers


# -- suites ------------------------------------------------------------------------------------


def test_default_suite_loads_by_name_and_by_path() -> None:
    by_name, _ = load_suite("default")
    by_path, path = load_suite(REPO / "recipes" / "stress" / "default.yaml")
    assert by_name == by_path and path.name == "default.yaml"
    names = [p.name for p in by_name.perturbations]
    assert names == ["jpeg", "webp", "blur", "noise", "resize", "social"]
    grid = expand(by_name)
    jpeg = [p for p in grid if p.perturbation == "jpeg"]
    assert [p.severity for p in jpeg] == [100, 90, 80, 70, 60, 50, 40, 30]
    assert jpeg[-1].chain == parse_chain("jpeg(quality=30)")
    resize = [p.chain.identity()[0]["scale"] for p in grid if p.perturbation == "resize"]
    assert min(resize) == 0.25 and max(resize) == 2.0
    social = [p.chain.identity() for p in grid if p.perturbation == "social"]
    assert all([s["name"] for s in spec] == ["resize", "jpeg"] for spec in social)


@pytest.mark.parametrize(
    ("edit", "path", "message"),
    [
        (lambda s: s["perturbations"][0].update(chain="jpg(quality={severity})"), "perturbations.0.severities.0", "did you mean 'jpeg'"),
        (lambda s: s["perturbations"][0].update(chain="jpeg(quality=50)"), "perturbations.0", "no {severity} placeholder"),
        (lambda s: s["perturbations"][1].update(severities=[4, 400]), "perturbations.1.severities.1", "sigma"),
        (lambda s: s["perturbations"][1].update(severities=[4, 4]), "perturbations.1.severities.1", "appears twice"),
        (lambda s: s["perturbations"][2]["levels"].append({"severity": "none", "chain": "none"}), "perturbations.2.levels.2", "empty chain"),
        (lambda s: s["perturbations"][2].update(chain="jpeg({severity})"), "perturbations.2", "not both"),
        (lambda s: s["perturbations"].append(dict(s["perturbations"][0])), "perturbations", "repeated: jpeg"),
        (lambda s: s.update(metric="pixel/auc/pooled/al"), "metric", "did you mean 'pixel/auc/pooled/all'"),
        (lambda s: s.update(metric="pixel/fp-area@0.5/mean-of-images/reals"), "metric", "lower-is-better"),
        (lambda s: s.update(plot_metric=["image/auc/all"]), "plot_metric", "did you mean 'plot_metrics'"),
        (lambda s: s.update(perturbations=[]), "perturbations", "at least 1"),
    ],
)
def test_bad_suites_name_the_path_and_the_rule(edit, path: str, message: str) -> None:
    suite = json.loads(json.dumps(SMALL_SUITE))
    edit(suite)
    with pytest.raises(SuiteError) as info:
        validate_suite_data(suite, "s.yaml")
    assert any(p == path and message.lower() in m.lower() for p, m in info.value.problems), info.value.problems


def test_every_problem_is_reported_at_once() -> None:
    suite = json.loads(json.dumps(SMALL_SUITE))
    suite["metric"] = "nope"
    suite["perturbations"][0]["chain"] = "jpg({severity})"
    with pytest.raises(SuiteError) as info:
        validate_suite_data(suite)
    assert {p for p, _ in info.value.problems} >= {"metric", "perturbations.0.severities.0", "perturbations.0.severities.1"}


def test_suite_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="cannot read suite.*Built-in suites: default, photometric"):
        load_suite(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(tmp_path / "bad.yaml")
    with pytest.raises(SuiteError, match="(?i)no perturbation .jepg.*did you mean .jpeg."):
        expand(validate_suite_data(SMALL_SUITE), ["jepg"])


# -- summary maths -------------------------------------------------------------------------------


finite = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-50, 150, allow_nan=False), finite), min_size=2, max_size=12,
                unique_by=lambda t: t[0]))
def test_area_under_curve_is_the_mean_height_of_the_curve(points) -> None:
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    order = np.argsort(xs)
    x_sorted, y_sorted = np.asarray(xs)[order], np.asarray(ys)[order]
    width = x_sorted[-1] - x_sorted[0]
    expected = np.trapezoid(y_sorted, x_sorted) / width if width > 0 else float(np.mean(ys))
    assert area_under_curve(xs, ys) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert min(ys) - 1e-12 <= area_under_curve(xs, ys) <= max(ys) + 1e-12


def test_area_under_curve_edge_cases() -> None:
    assert area_under_curve([70], [0.3]) == 0.3
    assert area_under_curve([100, 30], [1.0, 1.0]) == 1.0  # listed harsh-last, order does not matter
    assert area_under_curve(["a", "b", "c"], [0.0, 1.0, 0.0]) == pytest.approx(0.5)  # equal spacing
    assert area_under_curve([0.25, 0.5, 2.0], [0.0, 1.0, 1.0]) == pytest.approx((0.125 + 1.5) / 1.75)
    with pytest.raises(ValueError):
        area_under_curve([], [])


def test_summarize_relative_drops_and_undefined_values() -> None:
    s = summarize(0.8, [90, 50, 30], [0.6, None, 0.2])
    assert s.relative_drop == pytest.approx((0.8 - 0.2) / 0.8)
    assert s.model_extra["mean_relative_drop"] == pytest.approx((0.8 - 0.4) / 0.8)
    assert s.model_extra["worst"] == 0.2 and s.model_extra["clean"] == 0.8
    assert s.area_under_curve == pytest.approx(0.4)  # None point left out: the line from 90 to 30
    improved = summarize(0.5, [1, 2], [0.6, 0.7])
    assert improved.relative_drop == pytest.approx(-0.2)  # a perturbation that helps gives a negative drop
    for clean in (0.0, None, math.nan):
        assert summarize(clean, [1], [0.3]).relative_drop is None
    empty = summarize(0.5, [1, 2], [None, None])
    assert empty.relative_drop is None and empty.area_under_curve is None


# -- the run -----------------------------------------------------------------------------------


def test_stress_run_end_to_end(tmp_path: Path, dataset: Path) -> None:
    ResidualLocalizer.seen.clear()
    out = _stress(dataset, tmp_path / "r" / "stress.json")
    results = load_results(out.results_path)
    assert results.kind == "stress" and results.complete
    assert results.model.id == "residual" and results.model.kind == "class"
    stress = results.stress
    assert stress is not None and stress.suite == "small" and stress.metric == "pixel/auc/pooled/all"
    keys = [(p.perturbation, p.severity) for p in stress.grid]
    assert keys == [("jpeg", 90), ("jpeg", 40), ("noise", 4), ("noise", 16), ("social", "light"), ("social", "heavy")]
    assert stress.grid[5].model_dump(mode="json")["spec"] == [
        {"name": "resize", "scale": 0.5, "interpolation": "bilinear"}, {"name": "jpeg", "quality": 50}]
    assert set(stress.summary) == {"jpeg", "noise", "social"}
    n = results.counts.samples
    assert len(ResidualLocalizer.seen) == 7 * n  # clean + 6 points, each sample once

    # The clean reference is exactly what `bench eval` reports on the same split.
    plain = run_eval(ScoringConfig(model=MODEL, data=str(dataset), split="train", bootstrap=20))
    assert results.metrics == plain.results.metrics and results.breakdowns == plain.results.breakdowns

    # Each point really perturbed the images the model saw, as the build's code does, per sample seed.
    seen = ResidualLocalizer.seen
    clean_shapes = {sid: shape for sid, shape, _ in seen[:n]}
    heavy = seen[6 * n : 7 * n]
    assert all(shape[0] == round(clean_shapes[sid][0] * 0.5) for sid, shape, _ in heavy)
    noisy = seen[4 * n : 5 * n]  # noise sigma 16
    first_row = read_rows(dataset, "train")[0]
    first = np.asarray(Image.open(io.BytesIO(first_row["image"]["bytes"])).convert("RGB"))
    noise = parse_chain("noise(sigma=16)")
    expected, _ = noise.apply(first, None, rng_for(3, "stress", noise.describe(), first_row["id"]))
    assert noisy[0][2] == hashlib.sha256(expected.tobytes()).hexdigest()
    assert len({h for _, _, h in seen[: 7 * n]}) > 6 * n  # every point changed (almost) every image

    # A noisier input changes the residual map, so the curve moves and the summary says how.
    jpeg = stress.summary["jpeg"]
    clean = results.metrics["pixel/auc/pooled/all"].value
    values = [p.metrics["pixel/auc/pooled/all"].value for p in stress.grid if p.perturbation == "jpeg"]
    assert jpeg.relative_drop == pytest.approx((clean - min(values)) / clean)
    assert jpeg.area_under_curve == pytest.approx(sum(values) / 2)

    # Curves for the headline and the plotted metrics, PNG and SVG, not blank.
    assert set(out.plots) == {"pixel/auc/pooled/all", "image/auc/all"}
    png = out.plots["pixel/auc/pooled/all"]["png"]
    stem = plot_stem(out.results_path, "pixel/auc/pooled/all")
    assert png == stem.with_name(stem.name + ".png") and png.name == "stress.curves.pixel-auc-pooled-all.png"
    pixels = np.asarray(Image.open(png).convert("L"))
    assert pixels.std() > 10
    assert out.plots["image/auc/all"]["svg"].read_text().lstrip().startswith("<?xml")
    assert not (out.results_path.parent / f".{out.results_path.name}.stress").exists()


def test_same_seed_same_numbers(tmp_path: Path, dataset: Path) -> None:
    a = _stress(dataset, tmp_path / "a.json", plots=None)
    b = _stress(dataset, tmp_path / "b.json", plots=None)
    assert _numbers(a.results_path) == _numbers(b.results_path)
    reseeded = dict(SMALL_SUITE, seed=4)
    c = _stress(dataset, tmp_path / "c.json", plots=None, suite=validate_suite_data(reseeded))
    grid_a = {(p.perturbation, p.severity): p.metrics for p in a.results.stress.grid}
    grid_c = {(p.perturbation, p.severity): p.metrics for p in c.results.stress.grid}
    assert grid_a[("jpeg", 40)] == grid_c[("jpeg", 40)]  # JPEG draws nothing from the seed
    assert grid_a[("noise", 16)] != grid_c[("noise", 16)]  # noise does


def test_worker_processes_give_the_same_numbers(tmp_path: Path, dataset: Path) -> None:
    one = _stress(dataset, tmp_path / "one.json", plots=None)
    two = _stress(dataset, tmp_path / "two.json", plots=None, workers=2)
    assert _numbers(one.results_path) == _numbers(two.results_path)
    # Interrupted in the pool, resumed inline: still the same numbers.
    with pytest.raises(StressInterrupted):
        _stress(dataset, tmp_path / "three.json", plots=None, workers=2, stop_after_points=4)
    assert len(list((tmp_path / ".three.json.stress").glob("*.json"))) == 4
    three = _stress(dataset, tmp_path / "three.json", plots=None)
    assert three.resumed_points == 4 and _numbers(three.results_path) == _numbers(one.results_path)
    # A model that fails in a worker: its error, naming the samples, reaches the caller; no results.
    with pytest.raises(LocalizerError, match=r"intolerant.*input smaller than 40 px"):
        run_stress(ScoringConfig(model=f"{__name__}:SmallImageIntolerant", data=str(dataset), split="train",
                                 workers=2, bootstrap=0),
                   out=tmp_path / "four.json", suite=validate_suite_data(SMALL_SUITE), plots=None)
    assert not (tmp_path / "four.json").exists()


def test_interrupted_sweep_resumes_to_the_same_results(tmp_path: Path, dataset: Path) -> None:
    reference = _stress(dataset, tmp_path / "ref.json", plots=None)
    out = tmp_path / "resumed.json"
    with pytest.raises(StressInterrupted):
        _stress(dataset, out, plots=None, stop_after_points=3)
    assert not out.exists()  # nothing that looks like a result
    checkpoints = sorted((tmp_path / ".resumed.json.stress").glob("*.json"))
    assert len(checkpoints) == 3
    # Checkpoints of another run (here: other samples) are ignored, not merged in.
    import shutil

    shutil.copytree(tmp_path / ".resumed.json.stress", tmp_path / ".other.json.stress", dirs_exist_ok=True)
    other = run_stress(ScoringConfig(model=MODEL, data=str(dataset), split="train", bootstrap=20, limit=5),
                       out=tmp_path / "other.json", plots=None, suite=validate_suite_data(SMALL_SUITE))
    assert other.resumed_points == 0
    # A corrupt checkpoint is recomputed.
    checkpoints[1].write_text("{not json")
    resumed = _stress(dataset, out, plots=None)
    assert resumed.resumed_points == 2
    assert _numbers(out) == _numbers(reference.results_path)
    assert not (tmp_path / ".resumed.json.stress").exists()


def test_predictions_folders_cannot_be_stressed(tmp_path: Path, dataset: Path) -> None:
    preds = tmp_path / "preds"
    preds.mkdir()
    with pytest.raises(StressError, match="precomputed predictions cannot be stress-tested"):
        run_stress(ScoringConfig(model=str(preds), data=str(dataset), split="train"), out=tmp_path / "p.json",
                   suite=validate_suite_data(SMALL_SUITE))
    assert not (tmp_path / "p.json").exists()
    with pytest.raises(StressError, match=r"must name a \.json"):
        _stress(dataset, tmp_path / "p.txt")
    with pytest.raises(StressError, match="unknown metric 'image/auc'"):
        _stress(dataset, tmp_path / "p.json", metric="image/auc")
    with pytest.raises(StressError, match="lower-is-better"):
        _stress(dataset, tmp_path / "p.json", metric="pixel/fp-area@0.5/mean-of-images/reals")


# -- CLI ---------------------------------------------------------------------------------------


def test_stress_command_and_leaderboard(tmp_path: Path, dataset: Path) -> None:
    res = tmp_path / "res" / "ela.json"
    result = CliRunner().invoke(main, [
        "stress", "ela", "--data", str(dataset), "--split", "train", "--suite", str(REPO / "recipes/stress/default.yaml"),
        "--only", "jpeg,resize", "--bootstrap", "10", "--out", str(res), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    assert "jpeg" in result.output and "resize" in result.output and "rel. drop" in result.output
    loaded = load_results(res)
    assert {p.perturbation for p in loaded.stress.grid} == {"jpeg", "resize"}
    assert len(loaded.stress.grid) == 8 + 5
    assert loaded.info["suite"]["only"] == ["jpeg", "resize"]
    assert res.with_name("ela.curves.pixel-iou-0.5-mean-of-images-fakes.svg").exists()

    site = tmp_path / "site"
    result = CliRunner().invoke(main, ["leaderboard", str(res), "--out", str(site)])
    assert result.exit_code == 0, result.output
    board = json.loads((site / "leaderboard.json").read_text())
    assert any(s["perturbation"] == "jpeg" for s in board["stress_summary"])

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(dict(SMALL_SUITE, metric="nope")))
    out = tmp_path / "res" / "bad.json"
    result = CliRunner().invoke(main, ["stress", "ela", "--data", str(dataset), "--suite", str(bad), "--out", str(out)])
    assert result.exit_code == 2 and "metric: unknown metric 'nope'" in result.output and not out.exists()


def test_a_failing_perturbation_names_the_sample_and_chain(tmp_path: Path, dataset: Path, monkeypatch) -> None:
    from dolos_bench import perturbations as perturb

    def broken(self, image, mask, rng):
        raise OSError("encoder missing")

    monkeypatch.setattr(perturb.JPEG, "apply", broken)
    out = tmp_path / "f.json"
    with pytest.raises(ValueError, match=r"sample '.+': perturbation jpeg\(quality=90\) failed: encoder missing"):
        _stress(dataset, out, plots=None)
    assert not out.exists()
    assert [p.name for p in (tmp_path / ".f.json.stress").iterdir()] == ["0000.json"]  # the clean pass is kept


def test_photometric_suite_loads_and_covers_the_new_perturbations() -> None:
    suite, path = load_suite("photometric")
    assert path.name == "photometric.yaml"
    grid = expand(suite)
    names = {step["name"] for p in grid for step in p.chain.identity()}
    assert names == {"median", "motion-blur", "gamma", "brightness-contrast"}
    assert [p.severity for p in grid if p.perturbation == "median"] == [3, 5, 7, 9]
    assert len(grid) == sum(len(p.severities or p.levels) for p in suite.perturbations)
