"""The stage workers of a build: prepare (load, preprocess, mask), inpaint, finish (perturb, encode).

Two kinds of :class:`~dolos_bench.engine.Worker` run them, each built once per process:

* :class:`CpuStages` holds the recipe's sources, maskers and perturbation chains (and the
  generators that run on the CPU workers themselves). It checks source items while planning,
  keeping their preprocessed pixels for the samples (up to a memory budget), prepares a shard's
  samples, and finishes a shard: perturbs, encodes and writes its parquet file into the build's
  state folder, so that only file names and counts travel back to the parent.
* :class:`InpaintStage` holds one generator on its device and inpaints batches of up to the
  generator's ``max_batch`` images. A GPU generator is fed this way by the CPU workers, through
  the parent, without every CPU worker loading its weights.

Every random stream is keyed by ``(recipe seed, sample id)`` (see :mod:`dolos_bench.seeding`),
so a sample's bytes do not depend on which worker made it, on the batch it was inpainted in, or
on the number of workers.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..data.dataset_io import DatasetFolder, StagedShard
from ..data.images import ImageLoadError, encode_png, preprocess
from ..data.magnitude import MAGNITUDE_COLUMNS, magnitude
from ..data.schema import FAKE, REAL
from ..engine import Worker
from ..errors import UserError
from ..registry import GENERATORS, MASKERS
from ..seeding import rng_for
from .base import Generator, Masker, SkipSample
from .plan import CheckJob, ItemCheck, PlannedSample, build_sources, choose, decode_item
from .recipe import Recipe

# -- what travels between the parent and the workers ------------------------------------------------


class StageCancelled(Exception):
    """A unit abandoned halfway because the build was interrupted; nothing it made is kept."""



@dataclass(frozen=True)
class StageSetup:
    """What every CPU stage worker of one build is built from (picklable)."""

    recipe_json: str
    out: str  # the dataset folder: workers stage finished shards in its state folder
    local_generators: tuple[int, ...]  # generators these workers run themselves (the others: InpaintStage)
    cache_bytes: int  # preprocessed pixels each worker may keep from planning for the samples
    whole: tuple[int, ...] = ()  # generators that make whole images (full_synthesis): no masker, all-forged mask


@dataclass(frozen=True)
class CheckBlock:
    """Source items to check while planning, neighbours in shard order (see :class:`~.plan.CheckJob`)."""

    jobs: list[CheckJob]
    home: int | None = None  # the worker that will make the shard these items mostly fall in

    def home_of(self) -> int | None:
        return self.home

    def describe(self) -> str:
        return f"checking {len(self.jobs)} source item(s) from {self.jobs[0].ref!r}" if self.jobs else "checking"


@dataclass(frozen=True)
class ShardJob:
    """One shard's samples. ``whole``: prepare, inpaint (every generator is local) and finish here;
    otherwise prepare (and inpaint with the generators these workers hold), and the parent sends
    the other fakes to their inpaint stages.

    ``release`` names the items whose kept pixels no later shard needs.
    """

    name: str
    split: str
    samples: list[PlannedSample]
    release: frozenset[str]
    whole: bool
    schema: pa.Schema | None
    home: int | None = None  # the worker holding most of its items' pixels
    pixels: dict[str, np.ndarray] = field(default_factory=dict)  # brought along from its home (Worker.travel)
    part: bool = False  # one of several parts of the shard: return its rows, the parent writes the file

    def home_of(self) -> int | None:
        return self.home

    def describe(self) -> str:
        return f"shard {self.name}"


@dataclass
class Prepared:
    """One sample after the prepare stage: its image and mask, or why it was skipped."""

    sample: PlannedSample
    image: np.ndarray | None
    mask: np.ndarray | None
    parts: list[str] = field(default_factory=list)
    masker: int | None = None
    masker_config: dict[str, Any] = field(default_factory=dict)  # {"type", **identity, **info}
    generator_config: str = "{}"  # set once inpainted
    skip: str | None = None
    source: str | None = None  # the sample's `source` when not its item's: the model of a fully generated fake
    original: np.ndarray | None = None  # the real image a fake was inpainted from (for its magnitude columns)

    @property
    def needs_inpainting(self) -> bool:
        return self.skip is None and self.sample.generator_index is not None


@dataclass(frozen=True)
class FinishJob:
    """A prepared (and inpainted) shard to perturb, encode and write."""

    name: str
    split: str
    prepared: list[Prepared]
    schema: pa.Schema | None
    part: bool = False  # one of several parts of the shard: return its rows, the parent writes the file

    def describe(self) -> str:
        return f"shard {self.name}"


@dataclass(frozen=True)
class ShardDone:
    """A finished shard, staged in the state folder: the parent commits it in plan order.

    A part of a shard brings its rows instead (``staged`` is None): the parent stages the shard
    from its parts, in order.
    """

    staged: StagedShard | None
    skipped: list[dict[str, str]]
    rows: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class InpaintBatch:
    """Fakes of one generator: images, masks and the sample ids their randomness is keyed by."""

    sample_ids: list[str]
    images: list[np.ndarray]
    masks: list[np.ndarray]
    parts: list[list[str]] | None = None  # the masks' part names, for generators that declare `uses_parts`

    def describe(self) -> str:
        return f"inpainting {', '.join(self.sample_ids[:3])}{' ...' if len(self.sample_ids) > 3 else ''}"


@dataclass(frozen=True)
class Inpainted:
    """An inpaint batch's outputs (an image, or the skip reason of a :class:`SkipSample`) and the
    identity of the generator that made them, for the samples' ``generator_config``."""

    outputs: list[np.ndarray | str]
    identity: dict[str, Any]


# -- the stage functions ------------------------------------------------------------------------------


def batches(items: list[Any], size: int | None) -> list[list[Any]]:
    """``items`` in consecutive batches of ``size`` (all of them at once for None)."""
    if not items:
        return []
    step = len(items) if size is None else max(1, size)
    return [items[i : i + step] for i in range(0, len(items), step)]


def inpaint(generator: Generator, seed: int, batch: InpaintBatch) -> list[np.ndarray | str]:
    """One ``inpaint_batch`` call; a failure is narrowed down to the samples that cause it.

    A :class:`SkipSample`, or any other error a generator raises on a sample (a NaN check, an
    out-of-memory batch, a model that chokes on one image), makes the batch go again one sample at
    a time; a sample that still fails is skipped with the reason, and the build goes on. A user
    error (:class:`~dolos_bench.errors.UserError`: missing weights, a device that is not there)
    and a cancelled unit stop the build instead: they are not about one sample.

    Each sample gets its own stream (``rng_for(seed, sample id, "generator")``), fresh for every
    call, so a retry one by one gives what the batch would have.
    """
    rngs = [rng_for(seed, sample_id, "generator") for sample_id in batch.sample_ids]
    parts = batch.parts or [[] for _ in batch.sample_ids]
    by_part = {"parts": parts} if getattr(generator, "uses_parts", False) else {}  # e.g. per-part prompts
    try:
        outputs = generator.inpaint_batch(list(batch.images), list(batch.masks), rngs, **by_part)
    except (StageCancelled, UserError):
        raise
    except Exception as exc:
        if len(batch.sample_ids) == 1:
            if isinstance(exc, SkipSample):
                return [str(exc)]
            return [f"{getattr(generator, 'name', type(generator).__name__)} failed on this sample"
                    f" ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"]
        return [inpaint(generator, seed, InpaintBatch([s], [i], [m], [p]))[0]
                for s, i, m, p in zip(batch.sample_ids, batch.images, batch.masks, parts)]
    if len(outputs) != len(batch.sample_ids):
        raise RuntimeError(f"{type(generator).__name__}.inpaint_batch returned {len(outputs)} images"
                           f" for {len(batch.sample_ids)}")
    return list(outputs)


def generator_config(recipe: Recipe, index: int, identity: dict[str, Any], masker_config: dict[str, Any]) -> str:
    """The ``generator_config`` column: generator type and identity, and the masker that chose the region."""
    return json.dumps({"type": recipe.generators[index].type, **identity, "masker": masker_config},
                      sort_keys=True, default=str)


def makes_whole_images(recipe: Recipe, index: int) -> bool:
    """Whether generator ``index`` declares ``full_synthesis``: no masker, an all-forged mask, the model as source."""
    return bool(getattr(GENERATORS.get(recipe.generators[index].type), "full_synthesis", False))


def fill(recipe: Recipe, index: int, prepared: list[Prepared], result: Inpainted) -> None:
    """Put an inpaint batch's outputs into the prepared samples they were made for."""
    whole = makes_whole_images(recipe, index)
    for item, output in zip(prepared, result.outputs):
        if isinstance(output, str):
            item.image, item.skip = None, output
        else:
            item.original, item.image = (None if whole else item.image), output
            item.generator_config = generator_config(recipe, index, result.identity, item.masker_config)
            if whole:
                item.source = str(result.identity.get("model") or recipe.generators[index].label)


def batch_size(recipe: Recipe, index: int) -> int | None:
    """Images per inpaint call for generator ``index``: the recipe's ``batch_size``, else the
    generator's ``default_batch``, else its ``max_batch`` (None: a shard's fakes at once); never
    above ``max_batch``."""
    cls = GENERATORS.get(recipe.generators[index].type)
    most = getattr(cls, "max_batch", 1)
    size = recipe.generators[index].batch_size or getattr(cls, "default_batch", None) or most
    return size if most is None or size is None else min(size, most)


def inpaint_batches(recipe: Recipe, index: int, prepared: list[Prepared], size: int | None) -> list[tuple[list[Prepared], InpaintBatch]]:
    """The fakes of generator ``index`` among ``prepared``, as batches of at most ``size``."""
    todo = [p for p in prepared if p.needs_inpainting and p.sample.generator_index == index]
    return [(group, InpaintBatch([p.sample.sample_id for p in group], [p.image for p in group],
                                 [p.mask for p in group], [list(p.parts) for p in group]))
            for group in batches(todo, size)]


def _build_stage(registry: Any, spec: Any, device: str) -> Any:
    """A recipe stage from its registry entry, set up (weights loaded) for this worker's device."""
    stage = registry.create(spec.type, **spec.params)
    setup = getattr(stage, "setup", None)
    if setup is not None:
        setup(device)
    return stage


# -- the workers ----------------------------------------------------------------------------------------


class CpuStages(Worker):
    """Checks source items and prepares and finishes shards; built once per process."""

    def __init__(self, spec: StageSetup, device: str) -> None:
        from ..perturbations import parse_chain

        super().__init__(spec, device)
        self.recipe = recipe = Recipe.model_validate_json(spec.recipe_json)
        self.sources = build_sources(recipe)
        self.maskers: list[Masker] = [_build_stage(MASKERS, m, device) for m in recipe.maskers]
        self.generators: dict[int, Generator] = {
            g: _build_stage(GENERATORS, recipe.generators[g], device) for g in spec.local_generators}
        self.chains = [parse_chain(c) for c in recipe.perturbations.chains]
        self.whole = set(spec.whole)  # decided by the parent: a worker may not know every generator's class
        self.folder = DatasetFolder(Path(spec.out))
        self.kept: dict[str, np.ndarray] = {}  # item key -> preprocessed pixels, from planning
        self.kept_bytes = 0
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop the unit running in the parent's worker thread at its next sample (Ctrl-C)."""
        self._cancelled.set()

    def _check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise StageCancelled("the build was interrupted")

    def __call__(self, unit: CheckBlock | ShardJob | FinishJob) -> Any:
        if isinstance(unit, CheckBlock):
            return self.check_block(unit)
        if isinstance(unit, ShardJob):
            prepared = self.prepare(unit.samples, unit.release, unit.pixels)
            for index, generator in self.generators.items():  # those that run here; the others: InpaintStage
                for group, batch in inpaint_batches(self.recipe, index, prepared, batch_size(self.recipe, index)):
                    fill(self.recipe, index, group,
                         Inpainted(inpaint(generator, self.recipe.seed, batch), generator.identity()))
            if not unit.whole:
                return prepared
            return self.finish(unit.name, prepared, unit.schema, unit.part)
        return self.finish(unit.name, unit.prepared, unit.schema, unit.part)

    def travel(self, unit: CheckBlock | ShardJob | FinishJob) -> Any:
        """A shard made elsewhere takes the pixels this worker kept for it (cheaper than decoding)."""
        if not isinstance(unit, ShardJob):
            return unit
        pixels = {}
        for key in {s.item_key for s in unit.samples}:
            image = self.kept.pop(key, None) if key in unit.release else self.kept.get(key)
            if image is not None:
                pixels[key] = image
                self.kept_bytes -= image.nbytes if key in unit.release else 0
        return replace(unit, pixels=pixels)

    # -- planning ---------------------------------------------------------------------------------
    def check_block(self, block: CheckBlock) -> list[ItemCheck]:
        checks = []
        for job in block.jobs:
            self._check_cancelled()
            checks.append(self.check(job))
        return checks

    def check(self, job: CheckJob) -> ItemCheck:
        """The item's check; its preprocessed pixels are kept for the samples while the budget lasts."""
        result, loaded = decode_item(self.sources[job.source_index], job.ref, self.recipe)
        size = 3 * self.recipe.resolution**2
        if loaded is None or self.kept_bytes + size > self.spec.cache_bytes or job.key in self.kept:
            return result
        image, _ = self._preprocess(loaded)
        if image is None:
            return result
        self.kept[job.key] = image
        self.kept_bytes += image.nbytes
        return replace(result, held_by=self.index)

    # -- prepare ----------------------------------------------------------------------------------
    def _preprocess(self, loaded: Any) -> tuple[np.ndarray | None, str | None]:
        p = self.recipe.preprocess
        try:
            return preprocess(loaded, self.recipe.resolution, crop=p.crop, upscale=p.upscale,
                              interpolation=p.interpolation).array, None
        except ImageLoadError as exc:
            return None, str(exc)

    def _pixels(self, sample: PlannedSample, release: frozenset[str],
                brought: dict[str, np.ndarray]) -> tuple[np.ndarray | None, str | None]:
        """The preprocessed image of a sample's item: brought along, kept from planning, or decoded again."""
        key = sample.item_key
        if key in brought:
            return brought[key], None
        image = self.kept.pop(key, None) if key in release else self.kept.get(key)
        if key in release and image is not None:
            self.kept_bytes -= image.nbytes
        if image is not None:
            return image, None
        # The plan decoded this item already; a failure here means the file changed since.
        result, loaded = decode_item(self.sources[sample.source_index], sample.ref, self.recipe)
        if loaded is None:
            return None, result.error
        return self._preprocess(loaded)

    def prepare(self, samples: list[PlannedSample], release: frozenset[str],
                brought: dict[str, np.ndarray] | None = None) -> list[Prepared]:
        """Load (once per item) and mask every sample of a shard."""
        images: dict[str, tuple[np.ndarray | None, str | None]] = {}
        prepared = []
        for sample in samples:
            self._check_cancelled()
            if sample.item_key not in images:
                images[sample.item_key] = self._pixels(sample, release, brought or {})
            image, error = images[sample.item_key]
            prepared.append(self._mask(sample, image) if image is not None else Prepared(sample, None, None, skip=error))
        return prepared

    def _mask(self, sample: PlannedSample, image: np.ndarray) -> Prepared:
        recipe = self.recipe
        if sample.generator_index is None:
            return Prepared(sample, image, np.zeros(image.shape[:2], dtype=np.uint8))
        if sample.generator_index in self.whole:  # made from noise: every pixel forged, no masker asked
            return Prepared(sample, image, np.full(image.shape[:2], 255, dtype=np.uint8))
        m = choose(rng_for(recipe.seed, sample.mask_key, "masker"), [s.weight for s in recipe.maskers])
        try:
            masker = self.maskers[m]
            by_source = {"source_id": sample.source_id} if getattr(masker, "uses_source_id", False) else {}
            result = masker(image, rng_for(recipe.seed, sample.mask_key, "mask"), **by_source)
        except SkipSample as exc:
            return Prepared(sample, None, None, skip=str(exc))
        return Prepared(sample, image, result.mask, parts=list(result.parts), masker=m,
                        masker_config={"type": recipe.maskers[m].type, **self.maskers[m].identity(), **result.info})

    # -- finish -----------------------------------------------------------------------------------
    def finish(self, name: str, prepared: list[Prepared], schema: pa.Schema | None, part: bool = False) -> ShardDone:
        """Perturb and encode every sample of a shard and stage its parquet file (or return the rows of a part)."""
        rows, skipped = [], []
        for item in prepared:
            self._check_cancelled()
            row, reason = self._row(item)
            if row is not None:
                rows.append(row)
            else:
                s = item.sample
                skipped.append({"id": s.sample_id, "label": s.label, "source": s.source_name,
                                "source_id": s.source_id, "path": s.path, "reason": reason or ""})
        if part:
            return ShardDone(None, skipped, rows)
        return ShardDone(self.folder.stage_shard(name, rows, schema), skipped)

    def _row(self, item: Prepared) -> tuple[dict[str, Any] | None, str | None]:
        recipe, sample = self.recipe, item.sample
        if item.skip is not None or item.image is None or item.mask is None:
            return None, item.skip
        image, mask = item.image, item.mask
        # How much the generator changed (before any perturbation); null for reals.
        change = (magnitude(item.original, image, mask) if sample.generator_index is not None
                  else dict.fromkeys(MAGNITUDE_COLUMNS))
        chain_spec: list[dict[str, Any]] = []
        if sample.chain is not None:
            chain = self.chains[sample.chain]
            try:
                image, mask = chain.apply(image, mask, rng_for(recipe.seed, sample.sample_id, "perturbation"))
            except SkipSample as exc:
                return None, str(exc)
            chain_spec = chain.identity()
        level = recipe.output.png_compress_level
        fake = sample.generator_index is not None
        return {
            "id": sample.sample_id,
            "image": {"bytes": encode_png(np.ascontiguousarray(image), level), "path": None},
            "mask": {"bytes": encode_png(np.ascontiguousarray(mask), level), "path": None},
            "label": FAKE if fake else REAL,
            "source": item.source or sample.source_name,
            "source_id": sample.sample_id if item.source else sample.source_id,
            "generator": recipe.generators[sample.generator_index].label if fake else "real",
            "generator_config": item.generator_config,
            "masker": recipe.maskers[item.masker].label if item.masker is not None else "",
            "parts": item.parts,
            "perturbations": json.dumps(chain_spec, sort_keys=True),
            "seed": sample.seed,
            "split": sample.split,
            **change,
        }, None


@dataclass(frozen=True)
class InpaintSetup:
    """What an inpaint worker is built from: the recipe and which of its generators it holds."""

    recipe_json: str
    generator: int


class InpaintStage(Worker):
    """Holds one generator on its device; turns inpaint batches into images."""

    def __init__(self, spec: InpaintSetup, device: str) -> None:
        super().__init__(spec, device)
        self.recipe = Recipe.model_validate_json(spec.recipe_json)
        self.generator: Generator = _build_stage(GENERATORS, self.recipe.generators[spec.generator], device)

    def __call__(self, batch: InpaintBatch) -> Inpainted:
        return Inpainted(inpaint(self.generator, self.recipe.seed, batch), self.generator.identity())
