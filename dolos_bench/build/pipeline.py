"""The build pipeline: plan every sample up front, make them in worker processes, write shards.

Planning happens once in the main process and depends only on the recipe and the source
listings: sample ids, splits, generator and perturbation choices are all derived from
``(recipe seed, sample id)``. Workers turn one planned sample into one row. The main process
writes rows into shards in plan order, so the bytes do not depend on ``--workers``.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..data.dataset_io import DatasetFolder, ShardRecord, shard_name
from ..data.images import ImageLoadError, encode_png, load_rgb, preprocess
from ..data.schema import FAKE, REAL, SPLITS
from ..data.sources import Source
from ..recipes import Recipe
from ..registry import GENERATORS, MASKERS, SOURCES
from ..seeding import derive_seed, rng_for
from .base import Generator, Masker, SkipSample


@dataclass(frozen=True)
class PlannedSample:
    """Everything a worker needs to make one row, decided before any image is touched."""

    sample_id: str
    split: str
    source_index: int
    source_name: str
    source_id: str
    ref: Any
    generator_index: int | None  # None: the real image itself
    mask_key: str  # keys the masker's randomness (shared across generators if share_mask)
    chain: int | None  # index into recipe.perturbations.chains, or None
    seed: int


@dataclass
class Plan:
    samples: list[PlannedSample]
    skipped: list[dict[str, str]] = field(default_factory=list)  # skipped while listing
    shards: list[tuple[str, str, list[PlannedSample]]] = field(default_factory=list)


def assign_split(seed: int, source_name: str, source_id: str, fractions: dict[str, float]) -> str:
    """A split from a hash of the source image, so that no source image lands in two splits."""
    u = derive_seed(seed, "split", source_name, source_id) / 2.0**64
    cumulative = 0.0
    for split in SPLITS:
        cumulative += fractions[split]
        if u < cumulative:
            return split
    return [s for s in SPLITS if fractions[s] > 0][-1]


def _choose(rng: np.random.Generator, weights: list[float]) -> int:
    p = np.asarray(weights, dtype=float)
    return int(rng.choice(len(p), p=p / p.sum()))


def build_sources(recipe: Recipe) -> list[Source]:
    return [SOURCES.create(spec.type, **spec.params) for spec in recipe.sources]


def make_plan(recipe: Recipe, sources: list[Source]) -> Plan:
    """Every sample of the build, its split and its random choices, in shard order."""
    plan = Plan(samples=[])
    fractions = recipe.splits.as_dict()
    seen: dict[tuple[str, str], str] = {}
    chains = recipe.perturbations.chains
    for source_index, (spec, source) in enumerate(zip(recipe.sources, sources)):
        name = spec.source_name
        for item in source.items():
            key = (name, item.source_id)
            if key in seen:
                plan.skipped.append(
                    {"source": name, "source_id": item.source_id, "id": f"{name}-{item.source_id}",
                     "reason": f"duplicate id (same id as {seen[key]!r})"}
                )
                continue
            seen[key] = str(item.ref)
            split = assign_split(recipe.seed, name, item.source_id, fractions)
            base = f"{name}-{item.source_id}"
            variants: list[tuple[str, int | None, str]] = []
            if recipe.reals:
                variants.append((f"{base}-real", None, ""))
            for k in range(recipe.fakes.per_source):
                if recipe.fakes.assignment == "each":
                    chosen = list(range(len(recipe.generators)))
                else:
                    weights = [g.weight for g in recipe.generators]
                    chosen = [_choose(rng_for(recipe.seed, base, k, "generator"), weights)]
                for g in chosen:
                    label = recipe.generators[g].label
                    sample_id = f"{base}-{label}-{k}"
                    mask_key = f"{base}#{k}" if recipe.fakes.share_mask else sample_id
                    variants.append((sample_id, g, mask_key))
            for sample_id, g, mask_key in variants:
                chain = None
                if chains and recipe.perturbations.probability > 0:
                    rng = rng_for(recipe.seed, sample_id, "perturbation-choice")
                    if rng.random() < recipe.perturbations.probability:
                        chain = int(rng.integers(len(chains)))
                plan.samples.append(
                    PlannedSample(
                        sample_id=sample_id, split=split, source_index=source_index,
                        source_name=name, source_id=item.source_id, ref=item.ref,
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


# -- making one sample (runs in workers) -----------------------------------------------------


@dataclass
class SampleOutcome:
    sample_id: str
    row: dict[str, Any] | None
    skip_reason: str | None
    notes: list[str]


class SampleMaker:
    """Builds the stages of a recipe once per process and turns planned samples into rows."""

    def __init__(self, recipe: Recipe) -> None:
        from .perturb import parse_chain

        self.recipe = recipe
        self.sources = build_sources(recipe)
        self.maskers: list[Masker] = [MASKERS.create(m.type, **m.params) for m in recipe.maskers]
        self.generators: list[Generator] = [GENERATORS.create(g.type, **g.params) for g in recipe.generators]
        self.chains = [parse_chain(c) for c in recipe.perturbations.chains]
        self._load = lru_cache(maxsize=4)(self._load_uncached)

    def _load_uncached(self, source_index: int, ref_key: str, ref: Any):
        try:
            raw = self.sources[source_index].load(ref)
            loaded = load_rgb(raw)
        except ImageLoadError as exc:
            return None, str(exc)
        except OSError as exc:
            return None, f"cannot read: {exc}"
        p = self.recipe.preprocess
        try:
            return preprocess(loaded, self.recipe.resolution, crop=p.crop, upscale=p.upscale,
                              interpolation=p.interpolation), None
        except ImageLoadError as exc:
            return None, str(exc)

    def make(self, sample: PlannedSample) -> SampleOutcome:
        recipe = self.recipe
        loaded, error = self._load(sample.source_index, repr(sample.ref), sample.ref)
        if loaded is None:
            return SampleOutcome(sample.sample_id, None, error, [])
        image = loaded.array
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
        generator_label, generator_config, masker_label, parts = "real", "{}", "", []
        try:
            if sample.generator_index is not None:
                weights = [m.weight for m in recipe.maskers]
                m = _choose(rng_for(recipe.seed, sample.mask_key, "masker"), weights)
                result = self.maskers[m](image, rng_for(recipe.seed, sample.mask_key, "mask"))
                mask = result.mask
                parts = list(result.parts)
                masker_label = recipe.maskers[m].label
                generator = self.generators[sample.generator_index]
                image = generator.inpaint(image, mask, rng_for(recipe.seed, sample.sample_id, "generator"))
                generator_label = recipe.generators[sample.generator_index].label
                generator_config = json.dumps(
                    {"type": recipe.generators[sample.generator_index].type, **generator.config(),
                     "masker": {"type": recipe.maskers[m].type, **self.maskers[m].config(), **result.info}},
                    sort_keys=True, default=str,
                )
            chain_spec: list[dict[str, Any]] = []
            if sample.chain is not None:
                chain = self.chains[sample.chain]
                image, mask = chain.apply(image, mask, rng_for(recipe.seed, sample.sample_id, "perturbation"))
                chain_spec = chain.spec()
        except SkipSample as exc:
            return SampleOutcome(sample.sample_id, None, str(exc), loaded.notes)
        level = recipe.output.png_compress_level
        row = {
            "id": sample.sample_id,
            "image": {"bytes": encode_png(np.ascontiguousarray(image), level), "path": None},
            "mask": {"bytes": encode_png(np.ascontiguousarray(mask), level), "path": None},
            "label": REAL if sample.generator_index is None else FAKE,
            "source": sample.source_name,
            "source_id": sample.source_id,
            "generator": generator_label,
            "generator_config": generator_config,
            "masker": masker_label,
            "parts": parts,
            "perturbations": json.dumps(chain_spec, sort_keys=True),
            "seed": sample.seed,
            "split": sample.split,
        }
        return SampleOutcome(sample.sample_id, row, None, loaded.notes)


_WORKER: SampleMaker | None = None


def _init_worker(recipe_json: str) -> None:
    global _WORKER
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    _WORKER = SampleMaker(Recipe.model_validate_json(recipe_json))


def _make_in_worker(sample: PlannedSample) -> SampleOutcome:
    assert _WORKER is not None
    return _WORKER.make(sample)


def _outcomes(recipe: Recipe, samples: list[PlannedSample], workers: int) -> Iterator[SampleOutcome]:
    """Outcomes in plan order, made inline or by a pool of spawned processes."""
    if workers <= 1:
        maker = SampleMaker(recipe)
        for sample in samples:
            yield maker.make(sample)
        return
    # forkserver: workers fork from a clean server that imported the pipeline once, not from
    # this process and its threads (progress bar), and without spawn's per-worker imports.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["dolos_bench.build.pipeline"])
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(recipe.model_dump_json(),)) as pool:
        yield from pool.map(_make_in_worker, samples, chunksize=2)


# -- the whole build ---------------------------------------------------------------------------


@dataclass
class BuildReport:
    out: Path
    shards: list[ShardRecord]
    skipped: list[dict[str, str]]
    counts: dict[str, Any]
    seconds: float
    resumed_shards: int


def run_build(
    recipe: Recipe,
    out: Path,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    stop_after_shards: int | None = None,
) -> BuildReport:
    """Build (or resume) the dataset of ``recipe`` into ``out``.

    ``progress(done, total)`` is called after every sample. ``stop_after_shards`` ends the run
    early after writing that many new shards; tests use it to simulate an interrupted build.
    """
    from .manifest import build_card, build_manifest

    start = time.perf_counter()
    sources = build_sources(recipe)
    plan = make_plan(recipe, sources)
    folder = DatasetFolder(out)
    folder.prepare(recipe.sha256(), [name for name, _, _ in plan.shards], overwrite=overwrite)

    records: dict[str, ShardRecord] = {}
    pending: list[tuple[str, str, list[PlannedSample]]] = []
    for name, split, members in plan.shards:
        record = folder.finished_shard(name)
        if record is not None:
            records[name] = record
        else:
            pending.append((name, split, members))
    resumed = len(records)
    total = len(plan.samples)
    done = total - sum(len(m) for _, _, m in pending)
    if progress:
        progress(done, total)

    written = 0
    if pending:
        outcomes = _outcomes(recipe, [s for _, _, members in pending for s in members], workers)
        for name, split, members in pending:
            rows, skipped, notes = [], [], []
            for sample in members:
                outcome = next(outcomes)
                assert outcome.sample_id == sample.sample_id
                if outcome.row is not None:
                    rows.append(outcome.row)
                else:
                    skipped.append({"id": sample.sample_id, "source": sample.source_name,
                                    "source_id": sample.source_id, "reason": outcome.skip_reason or ""})
                if outcome.notes:
                    notes.append({"source": sample.source_name, "source_id": sample.source_id,
                                  "notes": outcome.notes})
                done += 1
                if progress:
                    progress(done, total)
            records[name] = folder.write_shard(name, split, rows, skipped, notes)
            written += 1
            if stop_after_shards is not None and written >= stop_after_shards and written < len(pending):
                outcomes.close()
                raise BuildInterrupted(f"stopped after {written} new shard(s) as asked")
        outcomes.close()

    shard_records = [records[name] for name, _, _ in plan.shards]
    skipped = plan.skipped + [s for r in shard_records for s in r.skipped]
    manifest = build_manifest(recipe, plan, shard_records, skipped)
    folder.finish(manifest, build_card(recipe, manifest))
    return BuildReport(out, shard_records, skipped, manifest["counts"], time.perf_counter() - start, resumed)


class BuildInterrupted(RuntimeError):
    """Raised by ``stop_after_shards``: the folder is left exactly as after a crash."""


def summarize_skips(skipped: Iterable[dict[str, str]]) -> list[tuple[str, int]]:
    """(reason, count), most frequent first; reasons are cut at the first ';' or '('."""
    counter: Counter[str] = Counter()
    for item in skipped:
        reason = item["reason"].split(";")[0].split(" (")[0].strip()
        counter[reason] += 1
    return counter.most_common()

