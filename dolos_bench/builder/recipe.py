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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

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


class GeneratorSpec(WeightedSpec):
    """A generator of the recipe, with the pipeline options that say where and how it runs.

    These keys are not the generator's parameters (those are the other keys, checked by its
    ``Config``): they place it. Unset options are left out of the recipe's canonical form, so a
    recipe without them keeps its hash (and its dataset's bytes); on the CPU none of them changes
    a byte of the output (per-sample noise), on CUDA the batch size may (docs/generators.md).
    """

    batch_size: int | None = Field(
        None, ge=1, description="images per inpaint call; default: the generator's own (its default_batch)")
    device: str | None = Field(
        None, description="run this generator in its own worker on this device (cpu, cuda, cuda:1);"
                          " default: --device, else inside the CPU workers")
    # Ray placement never changes a byte, so it stays out of the canonical form (and the hash) even
    # when set: a build resumes whichever resources it is given (exclude=True).
    num_gpus: float | None = Field(
        None, ge=0, exclude=True, description="--engine ray: GPUs each worker holding this generator reserves (0.5: two share one);"
                                " > 0 runs it in its own workers, one per GPU of the cluster")
    num_cpus: float | None = Field(
        None, ge=0, exclude=True, description="--engine ray: CPU cores each worker holding this generator reserves"
                                " (default: 1, or 0 beside a GPU)")

    @model_serializer(mode="wrap")
    def _omit_unset_options(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for key in set(GeneratorSpec.model_fields) - set(WeightedSpec.model_fields):
                if data.get(key) is None:
                    data.pop(key, None)
        return data


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


class SplitCounts(Strict):
    """Exact numbers of samples per split (a split left out gets none)."""

    train: int = Field(0, ge=0)
    validation: int = Field(0, ge=0)
    test: int = Field(0, ge=0)

    def as_dict(self) -> dict[str, int]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    @property
    def total(self) -> int:
        return self.train + self.validation + self.test


class Subset(Strict):
    """One subset of an exact-count recipe: the real images, or the fakes of one generator.

    A row of the Dolos paper's Table 1. Subsets of one ``group`` (a cross-generator comparison)
    are made from the same source images with the same masks, so that only the generator varies.
    Source images are dealt to splits once for the whole recipe: none is in two splits.
    """

    name: str | None = Field(None, description="the subset's name (dry-run counts); default: its generator, or real")
    generator: str | None = Field(
        None, description="the `name` (default: type) of an entry of `generators`; omit for the real images")
    counts: SplitCounts = Field(description="exact number of samples per split")
    per_source: int = Field(1, ge=1, description="at most this many fakes (each with its own mask) per source image")
    group: str | None = Field(None, description="subsets of one group share their source images and masks")

    @property
    def label(self) -> str:
        return self.name or self.generator or "real"

    @property
    def real(self) -> bool:
        return self.generator is None


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
    generators: list[GeneratorSpec] = Field(default_factory=list)
    perturbations: Perturbations = Field(default_factory=Perturbations)
    splits: Splits = Field(default_factory=Splits)
    output: Output = Field(default_factory=Output)
    subsets: list[Subset] = Field(
        default_factory=list,
        description="exact counts per split and subset (replaces reals, fakes and splits); see builder/plan.py")

    @model_serializer(mode="wrap")
    def _omit_unused_subsets(self, handler: Any) -> Any:
        # A recipe without subsets keeps the canonical form (and hash, and bytes) it always had.
        data = handler(self)
        if isinstance(data, dict) and not data.get("subsets"):
            data.pop("subsets", None)
        return data

    @model_validator(mode="after")
    def _stages_present(self) -> "Recipe":
        masked = [g for g in self.generators if not full_synthesis(self, g.label)]  # fully generated: no masker
        if not self.subsets and self.fakes.per_source > 0 and (not self.generators or (masked and not self.maskers)):
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
        ("generators", GeneratorSpec, GENERATORS),
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
    problems += subset_problems(data)
    if problems:
        raise RecipeError(problems, origin)
    assert recipe is not None
    return recipe


def subset_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with a recipe mapping's ``subsets``, each with its YAML path.

    Checked on the mapping, not the model, so that these problems are reported together with
    every other one (a typo elsewhere does not hide them), each with its own path: a subset must
    name a generator of the recipe, no generator may serve two subsets (its label is what tells
    them apart in the dataset), the subsets of a group must make the same samples, and the keys
    that ``subsets`` replaces must not be set as well. Subsets that do not validate on their own
    are left to the model's messages.
    """
    items = data.get("subsets")
    if not isinstance(items, list) or not items:
        return []
    problems: list[tuple[str, str]] = []
    for key in ("reals", "fakes", "splits"):
        if key in data:
            problems.append((key, f"`{key}` does not apply to a recipe with `subsets`: each subset states its"
                                  " exact counts per split; remove it"))
    types: dict[str, str] = {}  # generator label -> type
    for item in data.get("generators") if isinstance(data.get("generators"), list) else []:
        if isinstance(item, dict) and isinstance(item.get("type"), str):
            types.setdefault(str(item.get("name") or item["type"]), item["type"])
    labels = list(types)
    subsets: list[tuple[int, Subset]] = []
    for i, item in enumerate(items):
        try:
            subsets.append((i, Subset.model_validate(item)))
        except ValidationError:
            continue  # reported by the recipe-level validation
    first_real = next((i for i, s in subsets if s.real), None)
    used: dict[str, tuple[int, Subset]] = {}
    named: dict[str, int] = {}
    groups: dict[str, tuple[int, Subset]] = {}
    for i, subset in subsets:
        path = f"subsets.{i}"
        if subset.label in named:
            problems.append((f"{path}.name", f"two subsets are called {subset.label!r} (subsets.{named[subset.label]}"
                                             " too): give each a distinct `name`"))
        named.setdefault(subset.label, i)
        if subset.counts.total == 0:
            problems.append((f"{path}.counts", "a subset needs at least one sample in some split"))
        if subset.real:
            if subset.group is not None or subset.per_source != 1:
                key = "group" if subset.group is not None else "per_source"
                problems.append((f"{path}.{key}", f"`{key}` applies to fakes only; the real subset has no generator"))
            if first_real != i:
                problems.append((path, f"only one subset can hold the real images (subsets.{first_real} does)"))
            continue
        generator = subset.generator or ""
        if generator not in types:
            known = ", ".join(labels) or "(none)"
            problems.append((f"{path}.generator", f"no generator named {generator!r}.{did_you_mean(generator, labels)}"
                                                  f" The recipe's generators: {known}"))
        elif generator in used:
            j, other = used[generator]
            problems.append((f"{path}.generator", f"generator {generator!r} already makes subset {other.label!r}"
                                                  f" (subsets.{j}): add another entry to `generators` with a"
                                                  " distinct `name`"))
        used.setdefault(generator, (i, subset))
        if subset.group is not None:
            first, lead = groups.setdefault(subset.group, (i, subset))
            for key in ("counts", "per_source"):
                if getattr(subset, key) != getattr(lead, key):
                    problems.append((f"{path}.{key}", f"group {subset.group!r}: {key} differ from subset {lead.label!r}"
                                                      f" (subsets.{first}); the generators of one group make the same"
                                                      " samples from the same sources and masks"))
    if len(subsets) == len(items):  # with a broken subset, "makes no subset" could be wrong
        for i, label in enumerate(labels):
            if label not in used:
                problems.append((f"generators.{i}", f"generator {label!r} makes no subset: name it in a subset's"
                                                    " `generator`, or remove it"))
    masked = [s.label for _, s in subsets if not s.real and not _makes_whole_images(types.get(s.generator or ""))]
    if masked and not data.get("maskers"):
        problems.append(("maskers", f"subset {masked[0]!r} inpaints real images: add at least one masker"))
    return problems


def _makes_whole_images(generator_type: str | None) -> bool:
    """Whether a generator type declares ``full_synthesis`` (no source pixels, no masker)."""
    if generator_type is None:
        return False
    try:
        return bool(getattr(GENERATORS.get(generator_type), "full_synthesis", False))
    except (KeyError, ImportError):
        return False


def full_synthesis(recipe: Recipe, label: str) -> bool:
    """Whether the recipe's generator ``label`` makes whole images from noise (no source pixels, no masker)."""
    spec = next((g for g in recipe.generators if g.label == label), None)
    return spec is not None and _makes_whole_images(spec.type)


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
