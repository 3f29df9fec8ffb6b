"""``bench build --dry-run``: what a recipe would make, and which weights it needs, before anything is made.

The plan comes from :func:`~dolos_bench.builder.plan.make_plan` with the
:func:`~dolos_bench.builder.plan.listing_checker`: sources are listed, no image is decoded, no
model is loaded and nothing is written in the dataset's folder. Weights are looked up by the
build's own resolver (:mod:`dolos_bench.weights.resolve`), which never downloads and holds a
catalogue file against its published checksum (the weights cache may remember that hash, so the
next look is quick). Its counts are exact for a recipe with ``subsets`` whenever the
sources hold enough usable images (a real build replaces an unreadable or duplicate file by
the next one); for a fraction-split recipe they assume every listed file decodes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..data.schema import SPLITS
from .plan import build_sources, listing_checker, make_plan
from .recipe import Recipe

__all__ = ["DryRun", "dry_run", "render_dry_run", "weights_needed"]


@dataclass
class DryRun:
    """The plan of a recipe in numbers: samples per subset and split, sources, weights."""

    recipe: str
    counts: dict[str, dict[str, int]]  # subset -> split -> samples
    generators: dict[str, str]  # subset -> the generator label it is made by ("real" for the reals)
    sources: dict[str, int]  # split -> source images used
    listed: int  # source items listed
    unused: int  # listed but not needed (recipes with subsets)
    weights: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "counts": self.counts, "generators": self.generators,
                "sources": {"used": self.sources, "listed": self.listed, "unused": self.unused},
                "weights": self.weights}


def dry_run(recipe: Recipe) -> DryRun:
    """Plan ``recipe`` without decoding an image, loading a model or writing a file."""
    plan = make_plan(recipe, build_sources(recipe), check=listing_checker)
    by: Counter[tuple[str, str]] = Counter()
    made_by: dict[str, str] = {}
    used: dict[str, set[str]] = {split: set() for split in SPLITS}
    for sample in plan.samples:
        label = "real" if sample.generator_index is None else recipe.generators[sample.generator_index].label
        subset = sample.subset or label
        by[subset, sample.split] += 1
        made_by[subset] = label
        used[sample.split].add(sample.item_key)
    order = [s.label for s in recipe.subsets] or ["real"] + [g.label for g in recipe.generators]
    counts = {subset: {split: by[subset, split] for split in SPLITS if by[subset, split]}
              for subset in order if subset in made_by}
    return DryRun(recipe.name, counts, {s: made_by[s] for s in counts},
                  {split: len(items) for split, items in used.items() if items},
                  plan.files.read, plan.files.unused, weights_needed(recipe))


# -- weights ------------------------------------------------------------------------------------


def weights_needed(recipe: Recipe) -> list[dict[str, Any]]:
    """Every weights parameter the recipe's stages declare, through the build's own resolver.

    Resolving never downloads; it holds a catalogue file against its published checksum (the
    weights cache remembers the hash of a file it has verified, so that is quick the second time).
    """
    from ..weights.resolve import stage_weights

    found = []
    for need in stage_weights({"generators": recipe.generators, "maskers": recipe.maskers}):
        resolved = need.resolved
        entry = resolved.entry if resolved is not None else find_entry_quietly(need.value)
        found.append({
            "stage": need.stage, "param": need.param, "value": need.value, "present": resolved is not None,
            "where": str(resolved.path) if resolved is not None else None,
            "catalogue": entry.name if entry is not None else None,
            "source": entry.source if entry is not None else None,
            "licence": entry.licence if entry is not None else None,
            "problem": need.error,
        })
    return found


def find_entry_quietly(value: str) -> Any:
    """The catalogue entry a value names (by name or Hub id), or None; a broken user catalogue is None too."""
    from ..weights.catalogue import CatalogueError, find_entry

    try:
        return find_entry(value)
    except CatalogueError:
        return None


# -- text -----------------------------------------------------------------------------------------


def render_dry_run(result: DryRun) -> list[str]:
    """The dry run as lines for a terminal: a split x subset table, sources, then the weights."""
    splits = [s for s in SPLITS if any(s in c for c in result.counts.values())]
    header = ["subset", "generator", *splits, "total"]
    rows = [[subset, result.generators[subset], *(f"{c.get(s, 0):,}" for s in splits), f"{sum(c.values()):,}"]
            for subset, c in result.counts.items()]
    totals = ["all", "", *(f"{sum(c.get(s, 0) for c in result.counts.values()):,}" for s in splits),
              f"{sum(sum(c.values()) for c in result.counts.values()):,}"]
    table = [header, *rows, totals]
    widths = [max(len(r[k]) for r in table) for k in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) if k < 2 else v.rjust(w) for k, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [f"dry run of {result.recipe}: nothing was decoded, loaded or written", fmt(header),
             *(fmt(r) for r in rows), fmt(totals)]
    used = ", ".join(f"{s} {n:,}" for s, n in result.sources.items())
    lines.append(f"source images: {used or 'none'} used of {result.listed:,} listed"
                 f"{f' ({result.unused:,} not needed)' if result.unused else ''}")
    if not result.weights:
        lines.append("weights: none named by the recipe's stages")
    for w in result.weights:
        what = f" (catalogue {w['catalogue']!r}: {w['source']})" if w["catalogue"] else ""
        state = f"present at {w['where']}" if w["present"] else f"MISSING: {w['problem']}"
        lines.append(f"weights {w['stage']} {w['param']}={w['value']}{what}: {state}")
    return lines
