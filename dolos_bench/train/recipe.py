"""Training recipes: YAML in, a validated :class:`TrainRecipe` out, with ``--set`` overrides on top.

A recipe says everything that decides a run's weights except the data and the code: supervision,
the task's own ``model:`` section (validated by the task's ``Config``), input pipeline, optimiser,
schedule length, validation metric, precision and seed. Its canonical JSON is hashed into the run
folder, so an interrupted run is resumed only by the recipe that started it.

Validation works like a build recipe's (:mod:`dolos_bench.config`): every problem at once, by its
YAML path, unknown keys with a did-you-mean, and problems caused by a ``--set`` say so.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from ..config import ConfigError, Strict, apply_collecting, attribute_overrides, read_yaml, validate_collecting
from ..metric_specs import spec_for
from .geometry import GeometricStep

__all__ = ["TrainRecipe", "TrainRecipeError", "load_train_recipe", "validate_train_recipe", "LOSS_METRIC"]

LOSS_METRIC = "loss"
"""The validation metric that is the task's own loss on the validation split (lower is better)."""


class TrainRecipeError(ConfigError):
    """A training recipe with problems; ``problems`` holds ``(path, message)`` pairs, all of them."""

    def __init__(self, problems: list[tuple[str, str]], origin: str = "train recipe") -> None:
        super().__init__(problems, origin)


def is_integer_range(value: Any) -> bool:
    """Whether an augment parameter is an ``[lo, hi]`` range of integers (drawn as an integer)."""
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


class AugmentStep(Strict):
    """One photometric augmentation of a training image: a perturbation of ``bench build`` / ``bench
    stress`` (``jpeg``, ``webp``, ``blur``, ``noise``, ``median``, ``motion-blur``, ``gamma``,
    ``brightness-contrast``), applied with probability ``p``.

    A parameter given as ``[lo, hi]`` is drawn per sample, uniformly (an integer when both ends
    are integers; every integer in the range must be a valid value): ``{op: jpeg, p: 0.5, params:
    {quality: [50, 95]}}``. Geometric perturbations
    (``resize``) are refused: they would change the input size and the mask's grid; flips, turns
    and scale-and-pad, which move the mask with the image, are ``data.geometric``'s
    (:mod:`dolos_bench.train.geometry`).
    """

    op: str
    p: float = Field(1.0, ge=0.0, le=1.0)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_photometric(self) -> "AugmentStep":
        from ..perturbations.ops import parse_perturbation

        for key, value in self.params.items():
            if isinstance(value, (list, tuple)) and (len(value) != 2 or value[0] > value[1]):
                raise ValueError(f"augment {self.op}: {key}={value!r}: a range is [lo, hi] with lo <= hi")
        ends = [{k: (v[i] if isinstance(v, (list, tuple)) else v) for k, v in self.params.items()} for i in (0, 1)]
        # an integer range is drawn value by value, so every value in it must be valid (median sizes
        # must be odd: [3, 7] would fail mid-run on a 4); a float range is checked at its ends
        tries = list(ends)
        for key, value in self.params.items():
            if is_integer_range(value) and value[1] - value[0] <= 1024:
                tries += [{**ends[0], key: v} for v in range(value[0], value[1] + 1)]
        try:
            made = [parse_perturbation({"name": self.op, **params}) for params in tries]
        except Exception as exc:  # an unknown op or a bad value: one line, with the perturbation's own words
            raise ValueError(f"augment {self.op}: {str(exc).splitlines()[0]}") from exc
        if getattr(made[0], "geometric", False):
            raise ValueError(f"augment takes photometric perturbations only (jpeg, webp, blur, noise, median, motion-blur,"
                             f" gamma, brightness-contrast), not {self.op!r}:"
                             " it would change the input size and the mask's grid (data.geometric moves image and mask"
                             " together: dihedral, scale)")
        return self


class DataSection(Strict):
    """Which rows train and validate, and how an image becomes the network's input."""

    train_split: str = "train"
    validation_split: str | None = Field(
        "validation", description="None: no validation; the final weights are the run's weights")
    include: Literal["all", "fakes", "reals"] = Field(
        "all", description="training rows: all, or fakes only (Dolos setup C trains on fakes alone)")
    validation_include: Literal["all", "fakes", "reals"] = "all"
    resize: Literal["bilinear", "bicubic", "lanczos", "nearest"] = Field(
        "bilinear", description="PIL filter to the input size; bilinear is what `bench eval` feeds the model")
    hflip: float = Field(0.0, ge=0.0, le=1.0, description="probability of a horizontal flip (image and mask)")
    geometric: list[Annotated[GeometricStep, Field(discriminator="op")]] = Field(
        default_factory=list, description="geometric augmentations of image and mask together, after resize and"
                                          " hflip, in order: dihedral, scale (dolos_bench.train.geometry)")
    augment: list[AugmentStep] = Field(
        default_factory=list, description="photometric augmentations after the geometric ones, in order (AugmentStep)")
    limit: int | None = Field(None, ge=1, description="use only the first N training rows (after include)")
    generators: list[str] | None = Field(
        None, description="only the fakes of these generators (reals are kept), in training and validation:"
                          " one model per generator, as the cross-generator study trains")
    validation_limit: int | None = Field(None, ge=1)
    workers: int = Field(0, ge=0, description="DataLoader worker processes (order does not depend on it)")


class OptimSection(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0, description="sgd only")
    weight_decay: float = Field(0.0, ge=0)


class LrScheduleFields(Strict):
    """One learning-rate schedule: the fields a whole run's ``schedule`` and each of its phases share."""

    name: Literal["constant", "plateau", "cosine"] = "constant"
    factor: float = Field(0.5, gt=0, lt=1, description="plateau: the lr's multiplier on a plateau")
    patience: int = Field(3, ge=0, description="plateau: validations without improvement before it drops")
    min_lr: float = Field(0.0, ge=0, description="plateau: the lr's floor; cosine: eta_min")
    period: int | None = Field(None, ge=1, description="cosine: T_max in epochs (default: the epochs of its phase)")


class SchedulePhase(LrScheduleFields):
    """A later phase of a run's schedule: from ``from_step`` steps done on, this schedule, afresh."""

    from_step: int = Field(..., ge=1, description="steps done when this phase starts")


class ScheduleSection(LrScheduleFields):
    """How the learning rate changes over a run (every param group alike, relative to its own lr).

    ``constant`` (Dolos, Patch-Forensics); ``plateau``: multiply by ``factor`` after ``patience``
    validations without improvement of the validation metric, not below ``min_lr`` (FOCAL and MPC
    stage 1: ``ReduceLROnPlateau(mode='max', factor=0.5, patience=3, min_lr=1e-8)``); ``cosine``:
    cosine annealing from the lr to ``min_lr`` over ``period`` epochs, stepped once per epoch, then
    back up as torch's ``CosineAnnealingLR`` does (MPC stage 2: ``T_max=20``, ``eta_min=1e-8``).

    ``phases`` switch to another schedule part-way, as a two-stage run needs (MPC ``stage: both``:
    plateau for stage 1, then cosine from ``stage1_steps``): at each phase's ``from_step`` every
    param group's lr goes back to its own starting value and the phase's schedule starts from its
    beginning (see :mod:`dolos_bench.train.schedule`).
    """

    phases: list[SchedulePhase] = Field(default_factory=list, description="later schedules, by the step they start at")

    @model_validator(mode="after")
    def _phases_in_order(self) -> "ScheduleSection":
        starts = [p.from_step for p in self.phases]
        if starts != sorted(set(starts)):
            raise ValueError(f"schedule.phases: from_step must increase from phase to phase, got {starts}")
        return self


class ValidationSection(Strict):
    metric: str = Field(LOSS_METRIC, description="'loss' or a metric name of `bench eval` (its direction is known)")
    every: int | None = Field(None, ge=1, description="steps between validations; default: once per epoch")
    batch_size: int = Field(16, ge=1)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric != LOSS_METRIC and spec_for(metric) is None:
            raise ValueError(
                f"unknown validation metric {metric!r}: use 'loss' or a metric name of bench eval,"
                " e.g. pixel/iou@0.5/mean-of-images/fakes or image/ap/all")
        return metric

    @property
    def higher_is_better(self) -> bool:
        if self.metric == LOSS_METRIC:
            return False
        found = spec_for(self.metric)
        return bool(found and found.higher_is_better)


class TrainRecipe(Strict):
    """One training run's recipe; ``model`` is checked separately against the task's ``Config``."""

    name: str
    description: str = ""
    seed: int = 0
    supervision: Literal["weak", "full"]
    model: dict[str, Any] = Field(default_factory=dict, description="the task's own hyperparameters")
    input_size: int | None = Field(None, ge=16, le=4096, description="None: the task's own (299 for Xception)")
    pretrained: bool | str = Field(
        False, description="true: the library's pretrained backbone (timm) when reachable; a path: a local file")
    batch_size: int = Field(16, ge=1, description="global batch (split evenly over processes)")
    epochs: int = Field(1, ge=1)
    iterations_per_epoch: int = Field(500, ge=1, description="an epoch is a fixed number of steps, as in Dolos")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (short runs, smoke tests)")
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    data: DataSection = Field(default_factory=DataSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    checkpoint_every: int | None = Field(None, ge=1, description="steps between resume checkpoints; default: each epoch")
    precision: Literal["auto", "bf16", "fp16", "no"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, full precision on CPU")
    log_every: int = Field(10, ge=1)

    @property
    def total_steps(self) -> int:
        steps = self.epochs * self.iterations_per_epoch
        return min(steps, self.max_steps) if self.max_steps is not None else steps

    @property
    def validate_every(self) -> int:
        return self.validation.every or self.iterations_per_epoch

    @property
    def save_every(self) -> int:
        return self.checkpoint_every or self.iterations_per_epoch

    @model_validator(mode="after")
    def _plateau_needs_validation(self) -> "TrainRecipe":
        names = [self.schedule.name] + [p.name for p in self.schedule.phases]
        if "plateau" in names and self.data.validation_split is None:
            raise ValueError("schedule: plateau steps on the validation metric: set data.validation_split")
        planned = self.epochs * self.iterations_per_epoch  # not max_steps: a short trial run may stop early
        late = [p.from_step for p in self.schedule.phases if p.from_step >= planned]
        if late:
            raise ValueError(f"schedule.phases: a phase from step {late[0]} would never run: the run has"
                             f" {planned} steps (epochs x iterations_per_epoch)")
        return self

    def canonical_json(self) -> str:
        data = self.model_dump(mode="json")
        # sections at their defaults hash as before they existed, so earlier runs still resume
        if not data["schedule"]["phases"]:
            del data["schedule"]["phases"]
        if data["schedule"] == LrScheduleFields().model_dump(mode="json"):
            del data["schedule"]
        for optional in ("augment", "geometric"):
            if not data["data"][optional]:
                del data["data"][optional]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def _task_problems(task_cls: Any, data: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``model:`` section against the task's ``Config``, and the supervision it supports."""
    problems: list[tuple[str, str]] = []
    if task_cls is None:
        return problems
    supervision = data.get("supervision")
    if isinstance(supervision, str) and supervision not in task_cls.supervisions:
        problems.append(("supervision", f"{task_cls.name} supports {', '.join(task_cls.supervisions)}, not {supervision!r}"))
    section = data.get("model", {})
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return problems + [("model", "must be a mapping of the model's parameters")]
    config, found = validate_collecting(task_cls.Config, section)
    problems += [(f"model.{path}" if path else "model", message) for path, message in found]
    if config is not None and hasattr(task_cls, "recipe_problems"):
        problems += task_cls.recipe_problems(config, data)
    return problems


def validate_train_recipe(data: Any, origin: str = "train recipe", task_cls: Any = None) -> TrainRecipe:
    """Validate a recipe mapping (and its ``model:`` section when ``task_cls`` is given); raise all problems."""
    if not isinstance(data, dict):
        raise TrainRecipeError([("", "a training recipe must be a YAML mapping")], origin)
    recipe, problems = validate_collecting(TrainRecipe, data)
    problems += _task_problems(task_cls, data)
    if problems:
        raise TrainRecipeError(problems, origin)
    assert recipe is not None
    return recipe


def load_train_recipe(path: str | Path, overrides: list[str] | None = None, task_cls: Any = None) -> TrainRecipe:
    """Read a YAML training recipe, apply ``--set`` overrides, validate (with the task's ``Config``)."""
    path = Path(path)
    data = read_yaml(path, error=TrainRecipeError, what="training recipe")
    applied, problems = apply_collecting(data, list(overrides or []))
    try:
        recipe = validate_train_recipe(data, str(path), task_cls)
    except TrainRecipeError as exc:
        problems += attribute_overrides(exc.problems, applied)
    if problems:
        raise TrainRecipeError(problems, str(path))
    return recipe


def task_config(task_cls: Any, recipe: TrainRecipe) -> BaseModel:
    """The task's validated ``Config`` from the recipe's ``model:`` section."""
    return task_cls.Config.model_validate(recipe.model)
