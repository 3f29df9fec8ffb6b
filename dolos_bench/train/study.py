"""The cross-generator study (the Dolos paper's Figure 6): train on some generators, test on each.

One model is trained per generator of a dataset (its fakes and all reals) and, optionally, one per
leave-one-out union (every generator but one, "w/o NAME"); each model is scored once on the test
split, whose per-generator breakdown gives one row of the train x test matrix of a metric (IoU at
0.5 in the paper). The study folder holds::

    OUT/runs/<train set>/         a bench train run folder per model (resumed if interrupted)
    OUT/results/<train set>.json  its bench eval results on the test split (with breakdowns)
    OUT/study.json                the matrix and what made it: kind "cross-generator-study"

This module plans and runs the study but neither trains nor scores itself: the caller passes
``train(recipe, run_dir)`` and ``score(run_dir, results_path)`` (``bench train-study`` passes
:func:`dolos_bench.train.trainer.fit` and ``bench eval``'s runner), which keeps the import layers
one-way (training and scoring are sibling layers) and lets tests count what was run. A finished
run whose recipe and data match is reused, and so are results of its very weights, so a study
that stopped half-way resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import Field, field_validator

from ..config import ConfigError, Strict, apply_collecting, attribute_overrides, read_yaml, validate_collecting
from ..data.reader import open_split
from ..errors import UserError
from ..metric_specs import spec_for
from ..utils.files import atomic_write_json, sha256_file
from ..utils.text import slugify
from .recipe import TrainRecipe, load_train_recipe
from .run import CONFIG, WEIGHTS

__all__ = ["STUDY_KIND", "STUDY_FILE", "StudyRecipe", "StudyError", "TrainSet", "load_study_recipe",
           "plan_train_sets", "dataset_generators", "run_study", "matrix_row", "study_data_key"]

STUDY_KIND = "cross-generator-study"
STUDY_FILE = "study.json"
FORMAT = 1


class StudyError(UserError, ValueError):
    """The study cannot run as asked (unknown generators, too few, a results file without breakdowns)."""


class StudyRecipeError(ConfigError):
    def __init__(self, problems: list[tuple[str, str]], origin: str = "study recipe") -> None:
        super().__init__(problems, origin)


class StudyRecipe(Strict):
    """``recipes/train/cross-generator.yaml``: which baseline, which training recipe, which matrix."""

    name: str
    description: str = ""
    baseline: str = Field(description="a trainable localizer (bench train NAME)")
    train_recipe: str = Field(description="the training recipe of every model; relative paths are from this file")
    set: list[str] = Field(default_factory=list, description="KEY=VALUE overrides of train_recipe for every model")
    generators: list[str] | None = Field(None, description="None: every generator of the training split")
    leave_one_out: bool = Field(True, description="also one model per union of all generators but one")
    leave_one_out_set: list[str] = Field(
        default_factory=list, description="further overrides for the leave-one-out models (Dolos: epochs=150)")
    test_split: str = "test"
    protocol: str = "default"
    metric: str = "pixel/iou@0.5/mean-of-images/fakes"
    batch_size: int = Field(16, ge=1, description="images per forward pass when scoring")

    @field_validator("metric")
    @classmethod
    def _known(cls, metric: str) -> str:
        if spec_for(metric) is None:
            raise ValueError(f"unknown metric {metric!r}: use a metric name of bench eval, e.g. pixel/iou@0.5/mean-of-images/fakes")
        return metric


def load_study_recipe(path: str | Path, overrides: Sequence[str] = ()) -> tuple[StudyRecipe, Path]:
    """The validated study recipe and the resolved path of its training recipe."""
    path = Path(path)
    data = read_yaml(path, error=StudyRecipeError, what="study recipe")
    applied, problems = apply_collecting(data, list(overrides))
    recipe, found = validate_collecting(StudyRecipe, data)
    problems += attribute_overrides(found, applied)
    if problems:
        raise StudyRecipeError(problems, str(path))
    assert recipe is not None
    train = Path(recipe.train_recipe)
    train = train if train.is_absolute() else path.parent / train
    if not train.is_file():
        raise StudyRecipeError([("train_recipe", f"no such file: {train}")], str(path))
    return recipe, train


@dataclass(frozen=True)
class TrainSet:
    """One model of the study: its row name, the generators it trains on, its extra overrides."""

    name: str
    generators: tuple[str, ...]
    kind: str  # "single" or "leave-one-out"
    overrides: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        return slugify(self.name)


def plan_train_sets(generators: Sequence[str], leave_one_out: bool, leave_one_out_set: Sequence[str] = ()) -> list[TrainSet]:
    """One model per generator, then (``leave_one_out``) one per union of all but one, in generator order."""
    gens = list(dict.fromkeys(generators))
    if len(gens) < 2:
        raise StudyError(f"a cross-generator study needs at least 2 generators, got {gens or 'none'}")
    sets = [TrainSet(g, (g,), "single") for g in gens]
    if leave_one_out:
        sets += [TrainSet(f"w/o {g}", tuple(o for o in gens if o != g), "leave-one-out", tuple(leave_one_out_set))
                 for g in gens]
    return sets


def dataset_generators(data: str | Path, split: str) -> list[str]:
    """The generators of the fakes of ``split``, sorted (reals are not a generator)."""
    rows = open_split(data, split)
    labels, made_by = rows.column("label"), rows.column("generator")
    return sorted({str(g) for y, g in zip(labels, made_by) if int(y) == 1})


def matrix_row(results: Any, generators: Sequence[str], metric: str) -> dict[str, float | None]:
    """``generator -> value`` of ``metric`` from one results file's per-generator breakdown (None = not scored)."""
    groups = results.breakdowns.get("generator", {})
    row: dict[str, float | None] = {}
    for g in generators:
        entry = groups.get(g, {}).get(metric)
        row[g] = None if entry is None else entry.value
    return row


def study_data_key(data: str | Path, split: str) -> str:
    """The fingerprint a run's ``config.json`` records for its data (the trainer's: the split's content key)."""
    import hashlib

    return hashlib.sha256(open_split(data, split).origin.content_key().encode()).hexdigest()


def _reusable_run(run_dir: Path, recipe: TrainRecipe, data_key: str) -> bool:
    """A finished run in ``run_dir`` of exactly this recipe on exactly this data."""
    try:
        config = json.loads((run_dir / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return (config.get("status") == "finished" and config.get("recipe_sha256") == recipe.sha256()
            and (config.get("data") or {}).get("fingerprint") == data_key and (run_dir / WEIGHTS).is_file())


def _reusable_results(path: Path, weights_sha256: str, load: Callable[[Path], Any]) -> Any | None:
    if not path.is_file():
        return None
    try:
        results = load(path)
    except Exception:  # noqa: BLE001 - an unreadable or incomplete file is simply scored again
        return None
    return results if results.model.weights_sha256 == weights_sha256 else None


@dataclass
class StudyOutput:
    path: Path
    summary: dict[str, Any]
    trained: list[str] = field(default_factory=list)
    scored: list[str] = field(default_factory=list)


def run_study(
    recipe: StudyRecipe,
    train_recipe_path: Path,
    data: str | Path,
    out: str | Path,
    *,
    train: Callable[[TrainRecipe, Path], Any],
    score: Callable[[Path, Path], Any],
    load_results: Callable[[Path], Any],
    overrides: Sequence[str] = (),
    on_note: Callable[[str], None] = lambda text: None,
) -> StudyOutput:
    """Train and score every model of the study into ``out`` and write ``out/study.json``.

    ``train(recipe, run_dir)`` trains one model (resuming an interrupted one); ``score(run_dir,
    results_path)`` writes and returns its eval results on the test split; ``load_results`` reads
    a results file. ``overrides`` apply to every training recipe
    after the study's own ``set``.
    """
    out = Path(out)
    base = load_train_recipe(train_recipe_path, [*recipe.set, *overrides])
    available = dataset_generators(data, base.data.train_split)
    generators = list(recipe.generators) if recipe.generators is not None else available
    unknown = sorted(set(generators) - set(available))
    if unknown:
        raise StudyError(f"generators {', '.join(unknown)} have no fakes in split {base.data.train_split!r} of {data};"
                         f" it has: {', '.join(available) or '(none)'}")
    sets = plan_train_sets(generators, recipe.leave_one_out, recipe.leave_one_out_set)
    key = study_data_key(data, base.data.train_split)
    output = StudyOutput(out / STUDY_FILE, {})
    entries, matrix = [], {}
    for train_set in sets:
        picked = json.dumps(list(train_set.generators))
        model_recipe = load_train_recipe(
            train_recipe_path, [*recipe.set, *overrides, *train_set.overrides, f"data.generators={picked}"])
        model_recipe = model_recipe.model_copy(update={"name": f"{model_recipe.name}--{train_set.slug}"})
        run_dir = out / "runs" / train_set.slug
        if _reusable_run(run_dir, model_recipe, key):
            on_note(f"{train_set.name}: reusing the finished run {run_dir}")
        else:
            on_note(f"{train_set.name}: training on {', '.join(train_set.generators)} -> {run_dir}")
            train(model_recipe, run_dir)
            output.trained.append(train_set.name)
        weights = sha256_file(run_dir / WEIGHTS)
        results_path = out / "results" / f"{train_set.slug}.json"
        results = _reusable_results(results_path, weights, load_results)
        if results is None:
            results_path.parent.mkdir(parents=True, exist_ok=True)
            results = score(run_dir, results_path)
            output.scored.append(train_set.name)
        if "generator" not in results.breakdowns:
            raise StudyError(f"{results_path} has no per-generator breakdown: score with the default protocol")
        matrix[train_set.name] = matrix_row(results, generators, recipe.metric)
        entries.append({"name": train_set.name, "kind": train_set.kind, "generators": list(train_set.generators),
                        "run": (run_dir.relative_to(out)).as_posix(), "results": results_path.relative_to(out).as_posix(),
                        "weights_sha256": weights, "steps": model_recipe.total_steps})
    summary = {
        "tool": "dolos-bench", "kind": STUDY_KIND, "format": FORMAT, "name": recipe.name,
        "baseline": recipe.baseline, "data": str(data), "test_split": recipe.test_split,
        "protocol": recipe.protocol, "metric": recipe.metric, "generators": generators,
        "train_sets": entries, "matrix": matrix, "recipe": recipe.model_dump(mode="json"),
    }
    atomic_write_json(out / STUDY_FILE, summary)
    output.summary = summary
    return output
