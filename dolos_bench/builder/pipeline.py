"""The build pipeline: plan every sample up front, make them in worker processes, write shards.

Planning happens once and depends only on the recipe and the source images: sample ids,
splits, generator and perturbation choices are all derived from ``(recipe seed, sample id)``.
Planning decodes every source image once (in the workers when there are several) to learn
what it shows: files that cannot be used are skipped there, once per file, and an image whose
decoded pixels equal an earlier one's is skipped as its duplicate, so that no picture can be
in two splits under two names. Workers turn one planned sample into one row. The main process
writes rows into shards in plan order, so the bytes do not depend on ``--workers``.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..data.dataset_io import DatasetFolder, ShardRecord, shard_name
from ..data.images import ImageLoadError, encode_png, load_rgb, pixel_digest, preprocess, size_notes
from ..data.schema import FAKE, REAL, SPLITS
from ..data.sources import Source, SourceItem
from .recipe import Recipe
from ..registry import GENERATORS, MASKERS, SOURCES
from ..seeding import derive_seed, rng_for
from .base import Generator, Masker, SkipSample
from .plan import FileAccount, Plan, PlannedSample


@dataclass(frozen=True)
class ItemCheck:
    """What decoding a source item once tells the plan: its content and conversions, or why it is unusable."""

    digest: str | None
    notes: tuple[str, ...] = ()
    error: str | None = None


Checker = Callable[[list[tuple[int, Any]]], Iterable[ItemCheck]]


def check_item(source: Source, ref: Any, recipe: Recipe) -> ItemCheck:
    """Decode one item as a worker will, before preprocessing: pixel digest and notes, or the skip reason."""
    try:
        loaded = load_rgb(source.load(ref))
        notes = loaded.notes + size_notes(loaded.array.shape, recipe.resolution, upscale=recipe.preprocess.upscale)
    except ImageLoadError as exc:
        return ItemCheck(None, error=str(exc))
    except OSError as exc:
        return ItemCheck(None, error=f"cannot read: {exc}")
    return ItemCheck(pixel_digest(loaded.array), tuple(notes))


def inline_checker(recipe: Recipe, sources: list[Source]) -> Checker:
    """Check items one after the other in this process."""
    return lambda refs: (check_item(sources[i], ref, recipe) for i, ref in refs)


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


def _choose(rng: np.random.Generator, weights: list[float]) -> int:
    p = np.asarray(weights, dtype=float)
    return int(rng.choice(len(p), p=p / p.sum()))


def build_sources(recipe: Recipe) -> list[Source]:
    return [SOURCES.create(spec.type, **spec.params) for spec in recipe.sources]


def _variants(recipe: Recipe, base: str) -> list[tuple[str, int | None, str]]:
    """(sample id, generator index or None for the real, mask key) of every sample of one source item."""
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
            sample_id = f"{base}-{recipe.generators[g].label}-{k}"
            variants.append((sample_id, g, f"{base}#{k}" if recipe.fakes.share_mask else sample_id))
    return variants


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


def _skip_file(plan: Plan, name: str, item: SourceItem, reason: str, variants: list[tuple[str, int | None, str]]) -> None:
    """Account for a file skipped while planning: once as a file, and once for each sample it would have made."""
    plan.files.skipped.append({"source": name, "source_id": item.source_id, "path": item.label,
                               "reason": reason, "samples": len(variants)})
    for sample_id, g, _ in variants:
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
    checks = (check or inline_checker(recipe, sources))([(i, item.ref) for i, _, item in listed])
    owners: dict[str, tuple[str, SourceItem]] = {}
    for (source_index, name, item), result in zip(listed, checks):
        base = f"{name}-{item.source_id}"
        variants = _variants(recipe, base)
        reason = result.error
        if result.digest is not None:
            owner_name, owner = owners.setdefault(result.digest, (name, item))
            if owner is not item:
                where = "" if owner_name == name else f" of source {owner_name!r}"
                reason = f"duplicate of {owner.label}{where} (same decoded pixels)"
        if reason is not None:
            _skip_file(plan, name, item, reason, variants)
            continue
        if result.notes:
            plan.files.converted.append({"source": name, "source_id": item.source_id, "path": item.label,
                                         "notes": list(result.notes)})
        split = assign_split(recipe.seed, name, item.split_key, fractions)
        for sample_id, g, mask_key in variants:
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


# -- making one sample (runs in workers) -----------------------------------------------------


@dataclass
class SampleOutcome:
    sample_id: str
    row: dict[str, Any] | None
    skip_reason: str | None


class SampleMaker:
    """Builds the stages of a recipe once per process and turns planned samples into rows."""

    def __init__(self, recipe: Recipe) -> None:
        from ..perturbations import parse_chain

        self.recipe = recipe
        self.sources = build_sources(recipe)
        self.maskers: list[Masker] = [MASKERS.create(m.type, **m.params) for m in recipe.maskers]
        self.generators: list[Generator] = [GENERATORS.create(g.type, **g.params) for g in recipe.generators]
        self.chains = [parse_chain(c) for c in recipe.perturbations.chains]
        self._load = lru_cache(maxsize=4)(self._load_uncached)

    def _load_uncached(self, source_index: int, ref_key: str, ref: Any):
        # The plan decoded this item already; a failure here means the file changed since.
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
            return SampleOutcome(sample.sample_id, None, error)
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
            return SampleOutcome(sample.sample_id, None, str(exc))
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
        return SampleOutcome(sample.sample_id, row, None)


_WORKER: SampleMaker | None = None


def _init_worker(recipe_json: str) -> None:
    """Set up a pool process. It ignores SIGINT: Ctrl-C is the main process's to handle (one
    message, shards kept), and a worker that died of it would only print a traceback."""
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    _WORKER = SampleMaker(Recipe.model_validate_json(recipe_json))


def _make_in_worker(sample: PlannedSample) -> SampleOutcome:
    assert _WORKER is not None
    return _WORKER.make(sample)


def _check_in_worker(job: tuple[int, Any]) -> ItemCheck:
    assert _WORKER is not None
    source_index, ref = job
    return check_item(_WORKER.sources[source_index], ref, _WORKER.recipe)


def _open_pool(recipe: Recipe, workers: int) -> ProcessPoolExecutor | None:
    """The worker pool of a build, or None to work in this process (``workers <= 1``)."""
    if workers <= 1:
        return None
    # forkserver: workers fork from a clean server that imported the pipeline once, not from
    # this process and its threads (progress bar), and without spawn's per-worker imports.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["dolos_bench.builder.pipeline"])
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(recipe.model_dump_json(),))


def _checker(recipe: Recipe, sources: list[Source], pool: ProcessPoolExecutor | None) -> Checker:
    if pool is None:
        return inline_checker(recipe, sources)
    return lambda refs: pool.map(_check_in_worker, refs, chunksize=8)


def _outcomes(recipe: Recipe, samples: list[PlannedSample], pool: ProcessPoolExecutor | None) -> Iterator[SampleOutcome]:
    """Outcomes in plan order, made inline or by the pool."""
    if pool is None:
        maker = SampleMaker(recipe)
        for sample in samples:
            yield maker.make(sample)
        return
    yield from pool.map(_make_in_worker, samples, chunksize=2)


# -- the whole build ---------------------------------------------------------------------------


@dataclass
class BuildReport:
    out: Path
    shards: list[ShardRecord]
    skipped: list[dict[str, Any]]  # every planned sample not built, with its reason
    counts: dict[str, Any]
    seconds: float
    resumed_shards: int
    files: FileAccount = field(default_factory=FileAccount)
    failed: list[dict[str, Any]] = field(default_factory=list)  # samples that failed on their own
    warnings: list[str] = field(default_factory=list)


class BuildInterrupted(RuntimeError):
    """The build stopped before its end (Ctrl-C, or ``stop_after_shards``); the folder is left
    exactly as after a crash: finished shards kept, no manifest, resumable by the same build.

    ``kept`` shards of ``total`` are on disk in ``out`` (``total`` is None when the stop came
    while planning, before anything new was written).
    """

    def __init__(self, message: str, *, out: Path, kept: int = 0, total: int | None = None) -> None:
        super().__init__(message)
        self.out, self.kept, self.total = out, kept, total


@dataclass
class _Tally:
    """How far a build got, for the message of an interrupted one."""

    kept: int = 0
    total: int | None = None


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
    Ctrl-C (KeyboardInterrupt) is turned into :class:`BuildInterrupted` once the workers have
    stopped, saying how many shards were kept.
    """
    tally = _Tally()
    pool = _open_pool(recipe, workers)
    try:
        return _build(recipe, out, pool, tally, overwrite=overwrite, progress=progress,
                      stop_after_shards=stop_after_shards)
    except KeyboardInterrupt:
        raise BuildInterrupted(_interrupted_message(tally), out=out, kept=tally.kept, total=tally.total) from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _interrupted_message(tally: _Tally) -> str:
    if tally.total is None:
        return "interrupted while planning, before anything new was written"
    return f"interrupted: {tally.kept} of {tally.total} shards kept"


def _build(
    recipe: Recipe,
    out: Path,
    pool: ProcessPoolExecutor | None,
    tally: _Tally,
    *,
    overwrite: bool,
    progress: Callable[[int, int], None] | None,
    stop_after_shards: int | None,
) -> BuildReport:
    from .manifest import build_card, build_manifest

    start = time.perf_counter()
    sources = build_sources(recipe)
    plan = make_plan(recipe, sources, check=_checker(recipe, sources, pool))
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
    tally.kept, tally.total = resumed, len(plan.shards)
    total = len(plan.samples)
    done = total - sum(len(m) for _, _, m in pending)
    if progress:
        progress(done, total)

    written = 0
    if pending:
        outcomes = _outcomes(recipe, [s for _, _, members in pending for s in members], pool)
        try:
            for name, split, members in pending:
                rows, skipped = [], []
                for sample in members:
                    outcome = next(outcomes)
                    assert outcome.sample_id == sample.sample_id
                    if outcome.row is not None:
                        rows.append(outcome.row)
                    else:
                        skipped.append({"id": sample.sample_id, "label": _label(sample), "source": sample.source_name,
                                        "source_id": sample.source_id, "path": sample.path,
                                        "reason": outcome.skip_reason or ""})
                    done += 1
                    if progress:
                        progress(done, total)
                records[name] = folder.write_shard(name, split, rows, skipped, [])
                written += 1
                tally.kept += 1
                if stop_after_shards is not None and written >= stop_after_shards and written < len(pending):
                    raise BuildInterrupted(f"stopped after {written} new shard(s) as asked", out=out,
                                           kept=tally.kept, total=tally.total)
        finally:
            outcomes.close()  # cancels the samples still queued in the pool

    shard_records = [records[name] for name, _, _ in plan.shards]
    failed = [s for r in shard_records for s in r.skipped]
    skipped = plan.skipped + failed
    manifest = build_manifest(recipe, plan, shard_records, skipped)
    folder.finish(manifest, build_card(recipe, manifest))
    return BuildReport(out, shard_records, skipped, manifest["counts"], time.perf_counter() - start, resumed,
                       plan.files, failed, list(manifest["warnings"]))


def _label(sample: PlannedSample) -> str:
    return "real" if sample.generator_index is None else "fake"
