"""Planning a build: every sample, its split, its random choices and its shard, before any is made.

Planning depends only on the recipe and the source images: sample ids, splits, generator and
perturbation choices are all derived from ``(recipe seed, sample id)``. It decodes every source
image once to learn what it shows (see :func:`check_item`): files that cannot be used are skipped
there, once per file, and an image whose decoded pixels equal an earlier one's is skipped as its
duplicate, so that no picture can be in two splits under two names. Who does the decoding (this
process, or the build's workers, which keep the pixels for the samples) is the caller's
:data:`Checker`; the plan is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ..data.dataset_io import shard_name
from ..data.images import ImageLoadError, LoadedImage, load_rgb, pixel_digest, size_notes
from ..data.schema import SPLITS
from ..data.sources import Source, SourceItem
from ..registry import SOURCES
from ..seeding import derive_seed, rng_for
from .recipe import Recipe


@dataclass(frozen=True)
class PlannedSample:
    """Everything a worker needs to make one row, decided before any image is touched."""

    sample_id: str
    split: str
    source_index: int
    source_name: str
    source_id: str
    ref: Any
    path: str  # the source item's label (relative path or id), for skip entries
    generator_index: int | None  # None: the real image itself
    mask_key: str  # keys the masker's randomness (shared across generators if share_mask)
    chain: int | None  # index into recipe.perturbations.chains, or None
    seed: int

    @property
    def item_key(self) -> str:
        return item_key(self.source_index, self.ref)

    @property
    def label(self) -> str:
        return "real" if self.generator_index is None else "fake"


@dataclass
class FileAccount:
    """Every source file once: how many were read, and which were skipped, converted or ignored.

    Entries name the file by its path relative to the source root (its id for sources without
    files), so that a user can find and fix it.
    """

    read: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # source, source_id, path, reason, samples
    converted: list[dict[str, Any]] = field(default_factory=list)  # source, source_id, path, notes
    ignored: list[dict[str, Any]] = field(default_factory=list)  # source, path, reason


@dataclass
class Plan:
    samples: list[PlannedSample]
    # Planned samples not made because their file was skipped while planning (one per sample).
    skipped: list[dict[str, Any]] = field(default_factory=list)
    shards: list[tuple[str, str, list[PlannedSample]]] = field(default_factory=list)
    files: FileAccount = field(default_factory=FileAccount)
    # item key -> index of the worker that kept its preprocessed pixels while planning
    held_by: dict[str, int] = field(default_factory=dict)


# -- checking source items --------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemCheck:
    """What decoding a source item once tells the plan: its content and conversions, or why it is unusable.

    ``held_by`` names the worker that kept the item's preprocessed pixels for the samples (None:
    nobody did, they will be decoded again).
    """

    digest: str | None
    notes: tuple[str, ...] = ()
    error: str | None = None
    held_by: int | None = None


@dataclass(frozen=True)
class CheckJob:
    """One source item to check. ``order`` is where its samples will roughly fall in the shards
    (split, then name): checkers that hand out work in blocks keep neighbours together, so that
    one worker holds most of a shard's pixels."""

    source_index: int
    ref: Any
    order: tuple[int, str]

    @property
    def key(self) -> str:
        return item_key(self.source_index, self.ref)


# Checks jobs and returns one ItemCheck per job, in the order of the jobs.
Checker = Callable[[list[CheckJob]], Iterable[ItemCheck]]


def item_key(source_index: int, ref: Any) -> str:
    """How workers name a source item's pixels: its source and its (picklable) locator."""
    return f"{source_index}:{ref!r}"


def decode_item(source: Source, ref: Any, recipe: Recipe) -> tuple[ItemCheck, LoadedImage | None]:
    """Decode one item as a worker will, before preprocessing: its check, and the decoded image if usable."""
    try:
        loaded = load_rgb(source.load(ref))
        notes = loaded.notes + size_notes(loaded.array.shape, recipe.resolution, upscale=recipe.preprocess.upscale)
    except ImageLoadError as exc:
        return ItemCheck(None, error=str(exc)), None
    except OSError as exc:
        return ItemCheck(None, error=f"cannot read: {exc}"), None
    return ItemCheck(pixel_digest(loaded.array), tuple(notes)), loaded


def check_item(source: Source, ref: Any, recipe: Recipe) -> ItemCheck:
    """Pixel digest and notes of one item, or the reason it cannot be used."""
    return decode_item(source, ref, recipe)[0]


def inline_checker(recipe: Recipe, sources: list[Source]) -> Checker:
    """Check items one after the other in this process, keeping nothing."""
    return lambda jobs: (check_item(sources[job.source_index], job.ref, recipe) for job in jobs)


# -- random choices -------------------------------------------------------------------------------


def assign_split(seed: int, source_name: str, source_id: str, fractions: dict[str, float]) -> str:
    """A split from a hash of the source item's group (its own id when it has none).

    Hashing, rather than dealing items out, keeps each item's split independent of every other
    item, so adding or removing images never moves the others.
    """
    u = derive_seed(seed, "split", source_name, source_id) / 2.0**64
    cumulative = 0.0
    for split in SPLITS:
        cumulative += fractions[split]
        if u < cumulative:
            return split
    return [s for s in SPLITS if fractions[s] > 0][-1]


def choose(rng: np.random.Generator, weights: list[float]) -> int:
    """An index drawn with probability proportional to ``weights``."""
    p = np.asarray(weights, dtype=float)
    return int(rng.choice(len(p), p=p / p.sum()))


def build_sources(recipe: Recipe) -> list[Source]:
    return [SOURCES.create(spec.type, **spec.params) for spec in recipe.sources]


def variants(recipe: Recipe, base: str) -> list[tuple[str, int | None, str]]:
    """(sample id, generator index or None for the real, mask key) of every sample of one source item."""
    found: list[tuple[str, int | None, str]] = []
    if recipe.reals:
        found.append((f"{base}-real", None, ""))
    for k in range(recipe.fakes.per_source):
        if recipe.fakes.assignment == "each":
            chosen = list(range(len(recipe.generators)))
        else:
            weights = [g.weight for g in recipe.generators]
            chosen = [choose(rng_for(recipe.seed, base, k, "generator"), weights)]
        for g in chosen:
            sample_id = f"{base}-{recipe.generators[g].label}-{k}"
            found.append((sample_id, g, f"{base}#{k}" if recipe.fakes.share_mask else sample_id))
    return found


# -- the plan -------------------------------------------------------------------------------------


def _list_items(recipe: Recipe, sources: list[Source], plan: Plan) -> list[tuple[int, str, SourceItem]]:
    """Every item of every source, minus those whose id repeats an earlier one; ignored files noted."""
    seen: dict[tuple[str, str], str] = {}
    listed: list[tuple[int, str, SourceItem]] = []
    for source_index, (spec, source) in enumerate(zip(recipe.sources, sources)):
        name = spec.source_name
        for rel, reason in source.ignored():
            plan.files.ignored.append({"source": name, "path": rel, "reason": reason})
        for item in source.items():
            plan.files.read += 1
            key = (name, item.source_id)
            if key in seen:
                reason = f"duplicate id (same id as {seen[key]!r})"
                plan.skipped.append({"id": f"{name}-{item.source_id}", "source": name,
                                     "source_id": item.source_id, "path": item.label, "reason": reason})
                plan.files.skipped.append({"source": name, "source_id": item.source_id, "path": item.label,
                                           "reason": reason, "samples": 0})
                continue
            seen[key] = item.label
            listed.append((source_index, name, item))
    return listed


def _skip_file(plan: Plan, name: str, item: SourceItem, reason: str, found: list[tuple[str, int | None, str]]) -> None:
    """Account for a file skipped while planning: once as a file, and once for each sample it would have made."""
    plan.files.skipped.append({"source": name, "source_id": item.source_id, "path": item.label,
                               "reason": reason, "samples": len(found)})
    for sample_id, g, _ in found:
        plan.skipped.append({"id": sample_id, "label": "real" if g is None else "fake", "source": name,
                             "source_id": item.source_id, "path": item.label, "reason": reason})


def make_plan(recipe: Recipe, sources: list[Source], *, check: Checker | None = None) -> Plan:
    """Every sample of the build, its split and its random choices, in shard order.

    ``check`` decodes the items (see :func:`check_item`); by default one after the other here.
    Of several items with the same decoded pixels, the first in listing order (sources in recipe
    order, each source's items in its stable order) is kept and the others are skipped with
    "duplicate of <the kept one>", so the outcome is the same on every run and every resume.
    """
    plan = Plan(samples=[])
    fractions = recipe.splits.as_dict()
    chains = recipe.perturbations.chains
    listed = _list_items(recipe, sources, plan)
    splits = [assign_split(recipe.seed, name, item.split_key, fractions) for _, name, item in listed]
    jobs = [CheckJob(i, item.ref, (SPLITS.index(split), f"{name}-{item.source_id}"))
            for (i, name, item), split in zip(listed, splits)]
    checks = (check or inline_checker(recipe, sources))(jobs)
    owners: dict[str, tuple[str, SourceItem]] = {}
    for (source_index, name, item), split, job, result in zip(listed, splits, jobs, checks):
        base = f"{name}-{item.source_id}"
        found = variants(recipe, base)
        reason = result.error
        if result.digest is not None:
            owner_name, owner = owners.setdefault(result.digest, (name, item))
            if owner is not item:
                where = "" if owner_name == name else f" of source {owner_name!r}"
                reason = f"duplicate of {owner.label}{where} (same decoded pixels)"
        if reason is not None:
            _skip_file(plan, name, item, reason, found)
            continue
        if result.held_by is not None:
            plan.held_by[job.key] = result.held_by
        if result.notes:
            plan.files.converted.append({"source": name, "source_id": item.source_id, "path": item.label,
                                         "notes": list(result.notes)})
        for sample_id, g, mask_key in found:
            chain = None
            if chains and recipe.perturbations.probability > 0:
                rng = rng_for(recipe.seed, sample_id, "perturbation-choice")
                if rng.random() < recipe.perturbations.probability:
                    chain = int(rng.integers(len(chains)))
            plan.samples.append(
                PlannedSample(
                    sample_id=sample_id, split=split, source_index=source_index,
                    source_name=name, source_id=item.source_id, ref=item.ref, path=item.label,
                    generator_index=g, mask_key=mask_key, chain=chain,
                    seed=derive_seed(recipe.seed, sample_id) & 0x7FFF_FFFF_FFFF_FFFF,
                )
            )
    plan.samples.sort(key=lambda s: (SPLITS.index(s.split), s.sample_id))
    size = recipe.output.shard_size
    for split in SPLITS:
        members = [s for s in plan.samples if s.split == split]
        total = (len(members) + size - 1) // size
        for i in range(total):
            plan.shards.append((shard_name(split, i, total), split, members[i * size : (i + 1) * size]))
    return plan


def samples_per_item(recipe: Recipe) -> int:
    """How many samples each source item makes (the same for every item of a recipe)."""
    return len(variants(recipe, "item"))
