"""Planning a build: every sample, its split, its random choices and its shard, before any is made.

Planning depends only on the recipe and the source images: sample ids, splits, generator and
perturbation choices are all derived from ``(recipe seed, sample id)``. It decodes every source
image once to learn what it shows (see :func:`check_item`): files that cannot be used are skipped
there, once per file, and an image whose decoded pixels equal an earlier one's is skipped as its
duplicate, so that no picture can be in two splits under two names. Who does the decoding (this
process, or the build's workers, which keep the pixels for the samples) is the caller's
:data:`Checker`; the plan is the same either way.

A recipe with ``subsets`` states exact counts instead of fractions (the Dolos paper's Table 1):
see :func:`plan_subsets`. A dry run plans with :func:`listing_checker`, which decodes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ..data.dataset_io import shard_name
from ..data.images import ImageLoadError, LoadedImage, load_rgb, pixel_digest, size_notes
from ..data.schema import SPLITS
from ..data.sources import Source, SourceItem
from ..errors import UserError
from ..registry import SOURCES
from ..seeding import derive_seed, rng_for
from .recipe import Recipe, Subset, full_synthesis


class PlanError(UserError, ValueError):
    """The sources cannot give what the recipe asks (too few usable images for its exact counts)."""


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
    subset: str | None = None  # the recipe subset it belongs to (recipes with `subsets` only)

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
    unused: int = 0  # listed but not needed by a recipe with exact counts (never decoded)


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


def listing_checker(jobs: list[CheckJob]) -> list[ItemCheck]:
    """Take every listed item as usable, decoding nothing: the plan of a dry run.

    Its counts are what the build makes when every file decodes and none repeats another's
    pixels; a real build replaces such files by others where the recipe has exact counts.
    """
    return [ItemCheck(None) for _ in jobs]


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
    if recipe.subsets:
        return plan_subsets(recipe, sources, check=check)
    plan = Plan(samples=[])
    fractions = recipe.splits.as_dict()
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
            plan.samples.append(_sample(recipe, sample_id, split, source_index, name, item, g, mask_key))
    _cut_shards(recipe, plan)
    return plan


def _sample(recipe: Recipe, sample_id: str, split: str, source_index: int, name: str, item: SourceItem,
            g: int | None, mask_key: str, subset: str | None = None) -> PlannedSample:
    """One planned sample; its perturbation chain and seed come from ``(recipe seed, sample id)``."""
    chains = recipe.perturbations.chains
    chain = None
    if chains and recipe.perturbations.probability > 0:
        rng = rng_for(recipe.seed, sample_id, "perturbation-choice")
        if rng.random() < recipe.perturbations.probability:
            chain = int(rng.integers(len(chains)))
    return PlannedSample(
        sample_id=sample_id, split=split, source_index=source_index,
        source_name=name, source_id=item.source_id, ref=item.ref, path=item.label,
        generator_index=g, mask_key=mask_key, chain=chain,
        seed=derive_seed(recipe.seed, sample_id) & 0x7FFF_FFFF_FFFF_FFFF, subset=subset,
    )


def _cut_shards(recipe: Recipe, plan: Plan) -> None:
    """Sort the samples in shard order (split, then id) and cut them into shards."""
    plan.samples.sort(key=lambda s: (SPLITS.index(s.split), s.sample_id))
    size = recipe.output.shard_size
    for split in SPLITS:
        members = [s for s in plan.samples if s.split == split]
        total = (len(members) + size - 1) // size
        for i in range(total):
            plan.shards.append((shard_name(split, i, total), split, members[i * size : (i + 1) * size]))


def samples_per_item(recipe: Recipe) -> int:
    """How many samples each source item makes (the same for every item of a recipe; for one
    with ``subsets``, the average, which is what the checker's shard estimate needs)."""
    if recipe.subsets:
        needs = split_needs(recipe)
        pool = sum(needs.values())
        return max(1, round(sum(s.counts.total for s in recipe.subsets) / pool)) if pool else 1
    return len(variants(recipe, "item"))


# -- exact counts (recipes with `subsets`) ----------------------------------------------------------


def sources_needed(recipe: Recipe, subset: Subset, split: str) -> int:
    """Source images a subset takes from a split's pool: one per real, ``ceil(count / per_source)``
    per fake subset; a fully generated subset uses no source pixels, only one placeholder item."""
    count = subset.counts.as_dict()[split]
    if count == 0:
        return 0
    if subset.real:
        return count
    if full_synthesis(recipe, subset.generator or ""):
        return 1
    return -(-count // subset.per_source)


def split_needs(recipe: Recipe) -> dict[str, int]:
    """How many source images each split's pool holds: what its hungriest subset takes.

    The subsets of a split all draw from the front of one pool, so a real image and its fakes
    share a split and, by default, a source: the fakes of a subset are inpaintings of the
    split's real images (and of more images where the subset needs more).
    """
    return {split: max([sources_needed(recipe, s, split) for s in recipe.subsets] + [0]) for split in SPLITS}


def _candidates(recipe: Recipe, listed: list[tuple[int, str, SourceItem]]) -> list[int]:
    """Positions in ``listed``, groups kept together, in an order drawn from the seed.

    The order is a hash of ``(seed, source name, group)``, so it does not depend on listing
    order and adding an image moves no other; the items of a group stay consecutive (and so in
    one split).
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for position, (_, name, item) in enumerate(listed):
        groups.setdefault((name, item.split_key), []).append(position)
    order = sorted(groups, key=lambda g: (derive_seed(recipe.seed, "subset-order", g[0], g[1]), g))
    return [position for g in order for position in groups[g]]


def plan_subsets(recipe: Recipe, sources: list[Source], *, check: Checker | None = None) -> Plan:
    """The plan of a recipe with ``subsets``: exactly the counts it states, or a :class:`PlanError`.

    Source items are taken in a seeded order (see :func:`_candidates`) and checked (decoded) only
    as far as needed: an unusable or duplicate item is replaced by the next one, so the counts
    stay exact (of items with the same decoded pixels, the first in this order is kept). Usable
    items fill the train pool, then validation, then test (a group's items
    never straddle two splits), each up to :func:`split_needs`; items left over are unused and
    never decoded. In each split, sample ``j`` of a subset is made from pool item ``j mod n`` as
    its variant ``j div n``, where ``n = min(pool size, count)``, at least ``ceil(count /
    per_source)``: fakes spread over as many images as possible; the subsets of one
    group thus take the same items, and the mask of each (item, variant) is keyed by the group,
    so every generator of the group inpaints the same region of the same image.
    """
    plan = Plan(samples=[])
    listed = _list_items(recipe, sources, plan)
    needs = split_needs(recipe)
    order = _candidates(recipe, listed)
    check = check or inline_checker(recipe, sources)
    pools: dict[str, list[int]] = {split: [] for split in SPLITS}
    group_split: dict[tuple[str, str], str] = {}
    owners: dict[str, SourceItem] = {}
    spare = 0  # usable items of a group whose split was already full
    cursor = 0

    def open_split() -> str | None:
        return next((sp for sp in SPLITS if len(pools[sp]) < needs[sp]), None)

    while open_split() is not None and cursor < len(order):
        missing = sum(needs[sp] - len(pools[sp]) for sp in SPLITS)
        batch = order[cursor : cursor + missing]
        cursor += len(batch)
        # Where each item will most likely land, for checkers that keep neighbours together.
        guess, filled = [], {sp: len(pools[sp]) for sp in SPLITS}
        for position in batch:
            split = next((sp for sp in SPLITS if filled[sp] < needs[sp]), SPLITS[-1])
            filled[split] += 1
            _, name, item = listed[position]
            guess.append(CheckJob(listed[position][0], item.ref, (SPLITS.index(split), f"{name}-{item.source_id}")))
        for position, job, result in zip(batch, guess, check(guess)):
            source_index, name, item = listed[position]
            reason = result.error
            if result.digest is not None:
                owner = owners.setdefault(result.digest, item)
                if owner is not item:
                    reason = f"duplicate of {owner.label} (same decoded pixels)"
            if reason is not None:
                plan.files.skipped.append({"source": name, "source_id": item.source_id, "path": item.label,
                                           "reason": reason, "samples": 0})
                continue
            key = (name, item.split_key)
            split = group_split.get(key) or open_split()
            if split is None or len(pools[split]) >= needs[split]:
                spare += 1
                continue
            group_split[key] = split
            pools[split].append(position)
            if result.held_by is not None:
                plan.held_by[job.key] = result.held_by
            if result.notes:
                plan.files.converted.append({"source": name, "source_id": item.source_id, "path": item.label,
                                             "notes": list(result.notes)})
    short = {sp: needs[sp] - len(pools[sp]) for sp in SPLITS if len(pools[sp]) < needs[sp]}
    if short:
        wanted = sum(needs.values())
        usable = sum(len(p) for p in pools.values()) + spare
        raise PlanError(
            f"recipe {recipe.name!r} needs {wanted} source images ({', '.join(f'{sp} {n}' for sp, n in needs.items() if n)})"
            f" but its sources give {usable} usable of {len(listed)} listed ({len(plan.files.skipped)} skipped):"
            " add images or lower the subsets' counts (or raise per_source)")
    plan.files.unused = len(order) - cursor + spare
    for split in SPLITS:
        pool = [listed[p] for p in pools[split]]
        for subset in recipe.subsets:
            _subset_samples(recipe, plan, subset, split, pool)
    _cut_shards(recipe, plan)
    return plan


def _subset_samples(recipe: Recipe, plan: Plan, subset: Subset, split: str,
                    pool: list[tuple[int, str, SourceItem]]) -> None:
    """The samples of one subset in one split, from the front of the split's pool."""
    count = subset.counts.as_dict()[split]
    # Spread over as many of the pool's images as there are samples (never fewer than per_source allows).
    n = max(sources_needed(recipe, subset, split), min(len(pool), count))
    if subset.real:
        for source_index, name, item in pool[:count]:
            base = f"{name}-{item.source_id}"
            plan.samples.append(_sample(recipe, f"{base}-real", split, source_index, name, item, None, "", subset.label))
        return
    g = next(i for i, spec in enumerate(recipe.generators) if spec.label == subset.generator)
    for j in range(count):
        source_index, name, item = pool[j % n]
        k = j // n
        base = f"{name}-{item.source_id}"
        sample_id = f"{base}-{recipe.generators[g].label}-{k}"
        mask_key = f"{base}#{subset.group}#{k}" if subset.group is not None else sample_id
        plan.samples.append(_sample(recipe, sample_id, split, source_index, name, item, g, mask_key, subset.label))
