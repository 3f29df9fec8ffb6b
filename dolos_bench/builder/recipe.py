"""Build recipes: YAML in, validated pydantic models out, with ``--set`` overrides on top.

The generic machinery (every problem with its YAML path, did-you-mean, ``--set``) lives in
:mod:`dolos_bench.config`; this module holds what a build recipe is and how its stages are checked.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import ConfigError, Strict, apply_collecting, attribute_overrides, read_yaml, validate_collecting
from ..config import apply_overrides as _apply_overrides
from ..registry import GENERATORS, MASKERS, SOURCES, Registry, did_you_mean
from ..stage import install_hint


class RecipeError(ConfigError):
    """A recipe with problems; ``problems`` holds ``(path, message)`` pairs, all of them."""

    def __init__(self, problems: list[tuple[str, str]], origin: str = "recipe") -> None:
        super().__init__(problems, origin)


class StageSpec(BaseModel):
    """A stage: ``type`` names a registry entry; every other key is a constructor argument."""

    model_config = ConfigDict(extra="allow")
    type: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SourceSpec(StageSpec):
    name: str | None = Field(None, description="column `source` of the dataset; default: type")

    @property
    def source_name(self) -> str:
        return self.name or self.type


class WeightedSpec(StageSpec):
    weight: float = Field(1.0, gt=0)
    name: str | None = Field(None, description="label in the dataset (column generator/masker); default: type")

    @property
    def label(self) -> str:
        return self.name or self.type


class Preprocess(Strict):
    crop: Literal["center", "none"] = "center"
    upscale: Literal["skip", "allow"] = "skip"
    interpolation: Literal["lanczos", "bicubic", "bilinear", "area"] = "lanczos"


class Fakes(Strict):
    per_source: int = Field(1, ge=0, description="fakes made from each real image")
    assignment: Literal["each", "random"] = Field(
        "each", description="each: every generator per_source times; random: a generator drawn per fake"
    )
    share_mask: bool = Field(
        False, description="the same region for every generator of one source image (controlled comparisons)"
    )


class Perturbations(Strict):
    probability: float = Field(0.0, ge=0.0, le=1.0)
    chains: list[Any] = Field(default_factory=list)

    @model_validator(mode="after")
    def _chains_needed(self) -> "Perturbations":
        if self.probability > 0 and not self.chains:
            raise ValueError("probability > 0 needs at least one chain")
        return self


class Splits(Strict):
    train: float = Field(0.8, ge=0)
    validation: float = Field(0.1, ge=0)
    test: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "Splits":
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must add up to 1 (got {total:g})")
        return self

    def as_dict(self) -> dict[str, float]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


class Output(Strict):
    shard_size: int = Field(256, ge=1, description="samples per parquet shard (the unit of resume)")
    png_compress_level: int = Field(1, ge=0, le=9)


class Recipe(Strict):
    name: str
    description: str = ""
    seed: int = 0
    resolution: int = Field(256, ge=32, le=4096)
    preprocess: Preprocess = Field(default_factory=Preprocess)
    sources: list[SourceSpec] = Field(min_length=1)
    reals: bool = True
    fakes: Fakes = Field(default_factory=Fakes)
    maskers: list[WeightedSpec] = Field(default_factory=list)
    generators: list[WeightedSpec] = Field(default_factory=list)
    perturbations: Perturbations = Field(default_factory=Perturbations)
    splits: Splits = Field(default_factory=Splits)
    output: Output = Field(default_factory=Output)

    @model_validator(mode="after")
    def _stages_present(self) -> "Recipe":
        if self.fakes.per_source > 0 and (not self.maskers or not self.generators):
            raise ValueError("fakes.per_source > 0 needs at least one masker and one generator")
        for kind, names in (
            ("sources", [s.source_name for s in self.sources]),
            ("generators", [g.label for g in self.generators]),
            ("maskers", [m.label for m in self.maskers]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"two {kind} share the name {dupes[0]!r}: give each a distinct `name`")
        return self

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def _accepted(factory: object) -> list[str] | None:
    """The parameter names a stage takes: its ``Config`` fields, else its signature; None = anything."""
    config = getattr(factory, "Config", None)
    if inspect.isclass(config) and issubclass(config, BaseModel):
        return list(config.model_fields)
    try:
        signature = inspect.signature(factory)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return [n for n, p in signature.parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def _stage_problems(spec: StageSpec, registry: Registry, path: str) -> list[tuple[str, str]]:
    """Check a stage's type, its optional packages and its parameters, without constructing it.

    Parameters are validated by the stage's ``Config``; a stage without one (an outside plug-in)
    has its signature checked instead (unknown and missing arguments), so that validating a
    recipe never loads a model.
    """
    try:
        factory = registry.get(spec.type)
    except KeyError as exc:
        return [(f"{path}.type", str(exc))]
    except ImportError as exc:
        return [(f"{path}.type", f"{registry.kind} {spec.type!r} cannot be loaded: {exc}")]
    hint = install_hint(factory)
    if hint is not None:
        return [(path, f"{registry.kind} {spec.type!r} {hint}")]
    params = spec.params
    accepted = _accepted(factory)
    unknown = [k for k in params if accepted is not None and k not in accepted]
    if unknown:
        return [
            (f"{path}.{k}", f"{registry.kind} {spec.type!r} takes no argument {k!r}.{did_you_mean(k, accepted or [])}"
             f" It takes: {', '.join(accepted or []) or '(nothing)'}")
            for k in unknown
        ]
    check = getattr(factory, "check_params", None)
    if getattr(factory, "Config", None) is not None and callable(check):
        try:
            _, problems = check(params)
        except (OSError, ImportError) as exc:  # a validator that looked at a file or a package
            return [(path, f"{registry.kind} {spec.type!r}: {exc}")]
        return [(path, f"{registry.kind} {spec.type!r}: {message}") for _, message in problems]
    try:
        inspect.signature(factory).bind(**params)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        return [(path, f"{registry.kind} {spec.type!r}: {exc}")]
    return []


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set`` overrides on a recipe mapping; raises :class:`RecipeError` naming every bad one."""
    return _apply_overrides(data, overrides, error=RecipeError)


def validate_recipe_data(data: Any, origin: str = "recipe") -> Recipe:
    """Validate a recipe mapping; raise :class:`RecipeError` listing every problem."""
    if not isinstance(data, dict):
        raise RecipeError([("", "a recipe must be a YAML mapping")], origin)
    recipe, problems = validate_collecting(Recipe, data)
    # Stages are checked even when the rest of the recipe is broken: report everything at once.
    for key, spec_model, registry in (
        ("sources", SourceSpec, SOURCES),
        ("maskers", WeightedSpec, MASKERS),
        ("generators", WeightedSpec, GENERATORS),
    ):
        items = data.get(key)
        for i, item in enumerate(items if isinstance(items, list) else []):
            try:
                spec = spec_model.model_validate(item)
            except ValidationError:
                continue  # already reported by the recipe-level validation
            problems += _stage_problems(spec, registry, f"{key}.{i}")
    from ..perturbations import parse_chain

    perturbations = data.get("perturbations")
    chains = perturbations.get("chains") if isinstance(perturbations, dict) else None
    for i, chain in enumerate(chains if isinstance(chains, list) else []):
        try:
            parse_chain(chain)
        except (KeyError, ValueError, TypeError, ImportError) as exc:
            problems.append((f"perturbations.chains.{i}", str(exc)))
    if problems:
        raise RecipeError(problems, origin)
    assert recipe is not None
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``--set`` overrides, validate.

    Problems of the overrides and of the recipe they produce are raised together, as one
    :class:`RecipeError` naming the recipe file; each problem caused by an override says so.
    """
    path = Path(path)
    data = read_yaml(path, error=RecipeError, what="recipe")
    applied, problems = apply_collecting(data, list(overrides or []))
    try:
        recipe = validate_recipe_data(data, str(path))
    except RecipeError as exc:
        problems += attribute_overrides(exc.problems, applied)
    if problems:
        raise RecipeError(problems, str(path))
    return recipe
