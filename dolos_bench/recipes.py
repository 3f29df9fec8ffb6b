"""Build recipes: YAML in, validated pydantic models out, with ``--set`` overrides on top.

A recipe error must stop a build before any work is done, and name the bad key by its path in
the YAML (``maskers.0.max_aera``), with a suggestion when it looks like a typo. So validation
collects *every* problem -- unknown keys, bad values, unknown stage types, constructor
arguments a stage does not take -- instead of stopping at the first.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import UserError
from .registry import GENERATORS, MASKERS, SOURCES, Registry, did_you_mean


M = TypeVar("M", bound=BaseModel)


class RecipeError(UserError, ValueError):
    """A recipe with problems; ``problems`` holds ``(path, message)`` pairs, all of them."""

    def __init__(self, problems: list[tuple[str, str]], origin: str = "recipe") -> None:
        self.problems = problems
        self.origin = origin
        lines = [f"{origin}: {len(problems)} problem(s)"]
        lines += [f"  {path or '<top>'}: {message}" for path, message in problems]
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class Preprocess(_Strict):
    crop: Literal["center", "none"] = "center"
    upscale: Literal["skip", "allow"] = "skip"
    interpolation: Literal["lanczos", "bicubic", "bilinear", "area"] = "lanczos"


class Fakes(_Strict):
    per_source: int = Field(1, ge=0, description="fakes made from each real image")
    assignment: Literal["each", "random"] = Field(
        "each", description="each: every generator per_source times; random: a generator drawn per fake"
    )
    share_mask: bool = Field(
        False, description="the same region for every generator of one source image (controlled comparisons)"
    )


class Perturbations(_Strict):
    probability: float = Field(0.0, ge=0.0, le=1.0)
    chains: list[Any] = Field(default_factory=list)

    @model_validator(mode="after")
    def _chains_needed(self) -> "Perturbations":
        if self.probability > 0 and not self.chains:
            raise ValueError("probability > 0 needs at least one chain")
        return self


class Splits(_Strict):
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


class Output(_Strict):
    shard_size: int = Field(256, ge=1, description="samples per parquet shard (the unit of resume)")
    png_compress_level: int = Field(1, ge=0, le=9)


class Recipe(_Strict):
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


# -- loading, overrides, validation ---------------------------------------------------------


OVERRIDE_FORM = "key.sub=value"
"""How a ``--set`` is written; list items are picked by index (``maskers.0.weight=2``)."""


@dataclass(frozen=True)
class Override:
    """One ``--set key.sub=value``: as typed, where it points in the recipe, and the value it puts there."""

    text: str
    path: tuple[str, ...]
    value: Any

    @property
    def where(self) -> str:
        return ".".join(self.path)

    def covers(self, problem_path: str) -> bool:
        """Whether a problem reported at ``problem_path`` is about the value this override set.

        Either the problem lies inside what was set (``maskers.0`` set, ``maskers.0.type`` wrong) or
        what was set lies inside the problem (``splits.train`` set, ``splits`` no longer sums to 1).
        """
        where = self.where
        return problem_path == where or problem_path.startswith(where + ".") or where.startswith(problem_path + ".")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"fakes.per_source=2"`` -> (["fakes", "per_source"], 2); the value is YAML."""
    key, sep, raw = text.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        raise RecipeError(
            [(f"--set {text}", f"not of the form {OVERRIDE_FORM} (e.g. --set fakes.per_source=2)")], "overrides"
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or _first_line(str(exc))
        raise RecipeError(
            [(".".join(path), f"value {raw!r} is not valid YAML: {problem} (from --set {text});"
              f" write a text value in quotes: {key.strip()}=\"...\"")],
            "overrides",
        ) from exc
    return path, value


def _set_value(data: Any, override: Override) -> tuple[str, str] | None:
    """Put ``override.value`` at ``override.path`` in ``data``; the ``(path, message)`` problem if it cannot."""
    node: Any = data
    for i, part in enumerate(override.path):
        last = i == len(override.path) - 1
        where = ".".join(override.path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return where, f"no list item {part!r} (the list has {len(node)}; items count from 0)"
            if last:
                node[int(part)] = override.value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = override.value
            else:
                node = node.setdefault(part, {})
        else:
            return where, f"cannot set a key inside the value {node!r}"
    return None


def _apply(data: Any, overrides: list[str]) -> tuple[list[Override], list[tuple[str, str]]]:
    """Apply every override that can be applied; return those and the problems of the others (all of them)."""
    applied: list[Override] = []
    problems: list[tuple[str, str]] = []
    for text in overrides:
        try:
            path, value = parse_override(text)
        except RecipeError as exc:
            problems += exc.problems
            continue
        override = Override(text, tuple(path), value)
        problem = _set_value(data, override)
        if problem is None:
            applied.append(override)
        else:
            problems.append((problem[0], f"{problem[1]} (from --set {text})"))
    return applied, problems


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key.sub=value`` in ``data`` (list items by index), returning ``data``.

    Raises :class:`RecipeError` listing every override that cannot be applied.
    """
    _, problems = _apply(data, overrides)
    if problems:
        raise RecipeError(problems, "overrides")
    return data


def attribute_overrides(problems: list[tuple[str, str]], applied: list[Override]) -> list[tuple[str, str]]:
    """Add ``(from --set ...)`` to each problem about a value an override set, so the user looks there.

    The most specific override wins when several cover one path.
    """
    out: list[tuple[str, str]] = []
    for path, message in problems:
        covering = [o for o in applied if o.covers(path)]
        if covering and "(from --set" not in message:
            best = max(covering, key=lambda o: len(o.path))
            message = f"{message} (from --set {best.text})"
        out.append((path, message))
    return out


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    return None


def unknown_keys(data: Any, model: type[BaseModel], path: str) -> list[tuple[str, str]]:
    """Unknown keys of strict models, with did-you-mean suggestions (pydantic gives none)."""
    problems: list[tuple[str, str]] = []
    if not isinstance(data, dict):
        return problems
    fields = model.model_fields
    strict = model.model_config.get("extra") == "forbid"
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            if strict:
                hint = did_you_mean(str(key), list(fields)) or f" Keys here: {', '.join(fields)}."
                problems.append((where, f"unknown key.{hint}"))
            continue
        annotation = fields[key].annotation
        sub = _model_of(annotation)
        if sub is not None:
            problems += unknown_keys(value, sub, where)
        elif getattr(annotation, "__origin__", None) is list and isinstance(value, list):
            item = _model_of(annotation.__args__[0])
            if item is not None:
                for i, element in enumerate(value):
                    problems += unknown_keys(element, item, f"{where}.{i}")
    return problems


def validate_collecting(model: type[M], data: dict[str, Any]) -> tuple[M | None, list[tuple[str, str]]]:
    """Validate ``data`` as ``model``; return it (or ``None``) and every ``(path, message)`` problem.

    Unknown keys come from :func:`unknown_keys` (with suggestions, which pydantic does not give)
    and everything else from pydantic, with paths joined by dots as a YAML author reads them.
    """
    problems = unknown_keys(data, model, "")
    try:
        return model.model_validate(data), problems
    except ValidationError as exc:
        for err in exc.errors():
            if err["type"] == "extra_forbidden":
                continue  # reported by unknown_keys, with a suggestion
            loc = ".".join(str(p) for p in err["loc"])
            problems.append((loc, err["msg"].removeprefix("Value error, ")))
        return None, problems


def _stage_problems(spec: StageSpec, registry: Registry, path: str) -> list[tuple[str, str]]:
    """Check a stage's type and constructor arguments by building it (cheap: heavy loads are lazy)."""
    try:
        factory = registry.get(spec.type)
    except KeyError as exc:
        return [(f"{path}.type", str(exc))]
    except ImportError as exc:
        return [(f"{path}.type", f"{registry.kind} {spec.type!r} cannot be loaded: {exc}")]
    params = spec.params
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    ):
        accepted = [n for n, p in signature.parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        unknown = [k for k in params if k not in accepted]
        if unknown:
            return [
                (f"{path}.{k}", f"{registry.kind} {spec.type!r} takes no argument {k!r}.{did_you_mean(k, accepted)}"
                 f" It takes: {', '.join(accepted) or '(nothing)'}")
                for k in unknown
            ]
    try:
        factory(**params)
    except (TypeError, ValueError, OSError, ImportError) as exc:
        return [(path, f"{registry.kind} {spec.type!r}: {exc}")]
    return []


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
    from .build.perturb import parse_chain

    perturbations = data.get("perturbations")
    chains = perturbations.get("chains") if isinstance(perturbations, dict) else None
    for i, chain in enumerate(chains if isinstance(chains, list) else []):
        try:
            parse_chain(chain)
        except (KeyError, ValueError, TypeError) as exc:
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
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError([("", f"cannot read recipe: {exc.strerror or exc}")], str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError([("", f"not valid YAML: {exc}")], str(path)) from exc
    if data is None:
        data = {}
    applied, problems = _apply(data, list(overrides or []))
    try:
        recipe = validate_recipe_data(data, str(path))
    except RecipeError as exc:
        problems += attribute_overrides(exc.problems, applied)
    if problems:
        raise RecipeError(problems, str(path))
    return recipe
