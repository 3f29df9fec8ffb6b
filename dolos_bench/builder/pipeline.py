"""The build: plan every sample, run the pending shards through the stages, commit shards in plan order.

    plan (plan.py) -> pending shards -> stages (stages.py, on the worker engine) -> shards -> manifest

Planning decodes every source item once, in the CPU stage workers, which keep the preprocessed
pixels for the samples (so a build decodes each image once). Each pending shard then goes to the
worker that holds most of its pixels: there it is prepared (masked), inpainted by the generators
that run on the CPU workers, perturbed, encoded and written as a parquet file into the state
folder. Generators given their own devices run in their own pools, one generator per worker, fed
batches of the prepared fakes; the shard is finished by a CPU worker afterwards. The parent
renames each finished shard into ``data/`` and records it, in plan order (it writes the last few
itself, from parts made by several workers, so that none waits for another at the end). Every
byte depends only on the recipe and the sources, never on ``--workers``.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from itertools import groupby
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..data.dataset_io import DatasetFolder, ShardRecord, StagedShard, shard_schema
from ..engine import Pool, WorkerPlan, engine_for
from ..engine.local import InlinePool
from ..engine.select import LOCAL, EngineChoice
from ..registry import GENERATORS
from .plan import (CheckJob, Checker, FileAccount, ItemCheck, Plan, PlannedSample, build_sources, make_plan,
                   samples_per_item)
from .recipe import Recipe
from .stages import (CheckBlock, CpuStages, FinishJob, InpaintBatch, InpaintSetup, InpaintStage, ShardDone,
                     ShardJob, StageSetup, batch_size, fill, inpaint_batches, makes_whole_images)

__all__ = ["BuildInterrupted", "BuildReport", "build_sources", "make_plan", "run_build"]

PRELOAD = ["dolos_bench.builder.stages"]  # what the worker processes' forkserver imports once
KEEP_BYTES = 2 << 30  # preprocessed pixels all CPU workers together keep from planning for the samples


# -- planning on the CPU workers ------------------------------------------------------------------------


def _schema_soon() -> Future:
    """The shards' Arrow schema, made in a thread while planning runs: it needs `datasets`, whose
    import takes about a second that the workers would otherwise wait for."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="dolos-schema")
    try:
        return executor.submit(shard_schema)
    finally:
        executor.shutdown(wait=False)


def _checker(recipe: Recipe, pool: Pool) -> Checker:
    """Check items on the pool, in blocks of neighbours in shard order.

    Items are cut as the shards will be (per split, ``shard_size`` samples each, assuming none is
    skipped); shards take turns for a home worker, and each shard's items go as four blocks to
    its home. Blocks of consecutive shards are handed out interleaved, so that every worker
    always finds its own within reach: one worker holds most of each shard's pixels, and small
    blocks keep every worker busy to the end.
    """
    per_shard = max(1, recipe.output.shard_size // max(1, samples_per_item(recipe)))
    size = max(1, -(-per_shard // 4))

    def check(jobs: list[CheckJob]) -> list[ItemCheck]:
        order = sorted(range(len(jobs)), key=lambda i: jobs[i].order)
        shards: list[list[list[int]]] = []  # provisional shards, each as blocks of job positions
        for _, members in groupby(order, key=lambda i: jobs[i].order[0]):
            split = list(members)
            for first in range(0, len(split), per_shard):
                shard = split[first : first + per_shard]
                shards.append([shard[k : k + size] for k in range(0, len(shard), size)])
        blocks: list[tuple[int, list[int]]] = []  # (home, job positions), interleaved across shards
        for group in range(0, len(shards), pool.workers):
            turn = shards[group : group + pool.workers]
            for k in range(max(len(s) for s in turn)):
                blocks += [((group + j) % pool.workers, s[k]) for j, s in enumerate(turn) if k < len(s)]
        units = [CheckBlock([jobs[i] for i in positions], home) for home, positions in blocks]
        results: list[ItemCheck] = [ItemCheck(None)] * len(jobs)
        for b, checked in pool.imap_unordered(units, describe=CheckBlock.describe, home=CheckBlock.home_of):
            for i, result in zip(blocks[b][1], checked):
                results[i] = result
        return results

    return check


def _shard_jobs(plan: Plan, pending: list[tuple[str, str, list[PlannedSample]]], *, whole: bool,
                schema: Any) -> list[ShardJob]:
    """One job per pending shard, with its home (the worker holding most of its pixels) and the
    items whose kept pixels it may release (no later shard uses them)."""
    last_use: dict[str, str] = {}
    for name, _, members in pending:
        for sample in members:
            last_use[sample.item_key] = name
    jobs = []
    for name, split, members in pending:
        keys = {s.item_key for s in members}
        held = [plan.held_by[k] for k in keys if k in plan.held_by]
        home = max(set(held), key=lambda w: (held.count(w), -w)) if held else None
        release = frozenset(k for k in keys if last_use[k] == name)
        jobs.append(ShardJob(name, split, members, release, whole, schema, home))
    return jobs


def _dispatch_order(jobs: list[ShardJob], workers: int) -> tuple[list[ShardJob], list[int]]:
    """The units to run, and the plan position of the shard each belongs to.

    Biggest shards first, so that the last to finish are small; and the last ``2 x workers``
    are cut into one part per worker, so that no worker waits long for another at the end.
    The shards are still committed in plan order (the others wait, staged).
    """
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i].samples))
    split_from = len(order) - 2 * workers if workers > 1 else len(order)
    units, owner = [], []
    for rank, i in enumerate(order):
        job = jobs[i]
        parts = workers if rank >= split_from and len(job.samples) >= workers else 1
        if parts == 1:
            units.append(job)
            owner.append(i)
            continue
        cut = [len(job.samples) * k // parts for k in range(parts + 1)]
        pieces = [job.samples[a:b] for a, b in zip(cut, cut[1:])]
        for k, members in enumerate(pieces):
            later = {s.item_key for piece in pieces[k + 1 :] for s in piece}  # an item may span two parts
            release = frozenset(s.item_key for s in members if s.item_key in job.release and s.item_key not in later)
            units.append(replace(job, samples=members, release=release, part=True))
            owner.append(i)
    return units, owner


def _assemble(folder: DatasetFolder, name: str, done: list[ShardDone], schema: Any) -> tuple[StagedShard, list[dict[str, str]]]:
    """A shard's staged file and skips: as a worker staged it, or written here from its parts, in order."""
    skipped = [entry for part in done for entry in part.skipped]
    if len(done) == 1 and done[0].staged is not None:
        return done[0].staged, skipped
    return folder.stage_shard(name, [row for part in done for row in part.rows or []], schema), skipped


def _made(recipe: Recipe, cpu: Pool, inpainters: dict[int, Pool], jobs: list[ShardJob]) -> Iterator[ShardDone]:
    """Finished shards (or parts), in the order of ``jobs``: made whole on the CPU workers, or
    prepared there, inpainted by each generator's pool in batches, and finished on the CPU workers."""
    made = cpu.map(jobs, describe=ShardJob.describe, home=ShardJob.home_of)
    if not inpainters:
        yield from made
        return

    # Each generator's pool gets one stream of batches over all shards, so that it works on the
    # next shards while a shard's last batches finish: one shard has fewer batches than a
    # cluster has GPUs. The pools' windows bound how far ahead the streams read.
    source = zip(jobs, made)
    shards: list[tuple[ShardJob, list, dict[int, list]]] = []

    def shard(k: int) -> tuple[ShardJob, list, dict[int, list]] | None:
        """Shard ``k`` with its batches per generator, prepared once for every stream; None past the end."""
        while len(shards) <= k:
            got = next(source, None)
            if got is None:
                return None
            job, prepared = got
            shards.append((job, prepared, {g: inpaint_batches(recipe, g, prepared, batch_size(recipe, g))
                                           for g in inpainters}))
        return shards[k]

    def stream(index: int) -> Iterator[InpaintBatch]:
        k = 0
        while (entry := shard(k)) is not None:
            yield from (batch for _, batch in entry[2][index])
            k += 1

    # A pool that runs in this process (one local inpaint worker, the `--device` default) gets its
    # batches in a thread of its own: without it the generator waits while this thread prepares the
    # next shard and finishes the last (inline CPU workers), or dispatches their units. One shard
    # of batches is kept queued ahead, so the next shard is prepared while this one is inpainted.
    results = {g: _in_own_thread(pool, stream(g), _batches_per_shard(recipe, g, jobs)) if isinstance(pool, InlinePool)
               else pool.map(stream(g), describe=InpaintBatch.describe) for g, pool in inpainters.items()}

    def inpainted() -> Iterator[FinishJob]:
        k = 0
        while (entry := shard(k)) is not None:
            job, prepared, pairs = entry
            for index in inpainters:
                for group, _ in pairs[index]:
                    fill(recipe, index, group, next(results[index]))
            shards[k] = (job, [], {g: [] for g in inpainters})  # its pixels go with the finish job; a
            # stream that has not passed it yet has no batch of it left to send
            yield FinishJob(job.name, job.split, prepared, job.schema, job.part)
            k += 1

    yield from cpu.map(inpainted(), describe=FinishJob.describe)


def _batches_per_shard(recipe: Recipe, index: int, jobs: Sequence[ShardJob]) -> int:
    """The most inpaint batches generator ``index`` gets from one shard (at least 1)."""
    size = batch_size(recipe, index)
    most = max((sum(1 for s in job.samples if s.generator_index == index) for job in jobs), default=1)
    return max(1, 1 if size is None else math.ceil(most / size))


def _in_own_thread(pool: Pool, batches: Iterator[InpaintBatch], ahead: int) -> Iterator[Any]:
    """``pool.map(batches)`` for a pool that runs in this process, its work done in one thread of
    its own: results in order, as ``pool.map`` gives them, the same bytes.

    ``batches`` is still pulled in the calling thread (it prepares shards on the CPU pool, which
    only that thread drives), up to ``ahead`` batches beyond the one being inpainted, so that the
    generator always has work queued while the caller prepares the next shard and finishes the
    last. When the caller stops early (an error, Ctrl-C) the queued batches are cancelled and the
    running one is not waited for.
    """
    thread = ThreadPoolExecutor(1, thread_name_prefix="dolos-inpaint")
    queued: deque[Future] = deque()
    try:
        for batch in batches:
            queued.append(thread.submit(lambda b=batch: next(pool.map([b], describe=InpaintBatch.describe))))
            if len(queued) > ahead:
                yield queued.popleft().result()
        while queued:
            yield queued.popleft().result()
    finally:
        thread.shutdown(wait=False, cancel_futures=True)


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
    inpaint_devices: Sequence[str] | None = None,
    inpaint_workers: int = 1,
    engine: EngineChoice = LOCAL,
    device: str | None = None,
) -> BuildReport:
    """Build (or resume) the dataset of ``recipe`` into ``out``.

    ``workers`` CPU stage workers check, prepare and finish; every generator runs in them too,
    unless ``inpaint_devices`` is given: then each generator gets its own pool of
    ``inpaint_workers`` workers on those devices (round-robin), fed batches by the CPU workers.
    ``progress(done, total)`` is called for every sample, as its shard is done.
    ``stop_after_shards`` ends the run early after writing that many new shards; tests use it to
    simulate an interrupted build. Ctrl-C (KeyboardInterrupt) is turned into
    :class:`BuildInterrupted` once the workers have stopped, saying how many shards were kept.

    ``engine`` says where the workers run. On Ray (:mod:`dolos_bench.engine.ray`) the
    ``workers`` CPU stage workers are actors, ``out`` must be a folder every node sees (checked
    from each actor), and a generator whose recipe entry asks for ``num_gpus`` gets its own
    actors (see :func:`_ray_inpainters`). The bytes are the same on either engine.

    ``device`` (``bench build --device``) is where the learned (torch) generators run: each in
    its own pool of ``inpaint_workers`` on that device, loaded once, fed batches of its recipe
    ``batch_size`` while the CPU workers prepare and finish; a recipe entry's own ``device``
    does the same for that generator and wins. Generators with neither run inside the CPU
    workers, as before. On the CPU the bytes do not depend on any of this.
    """
    from ..weights import check_stage_weights

    check_stage_weights({"maskers": recipe.maskers, "generators": recipe.generators})  # one line, before any worker
    tally = _Tally()
    apart = _apart(recipe, inpaint_devices, device, ray=engine.is_ray)
    remote = bool(apart)
    local = tuple(g for g in range(len(recipe.generators)) if g not in apart)
    whole = tuple(g for g in range(len(recipe.generators)) if makes_whole_images(recipe, g))
    setup = StageSetup(recipe.model_dump_json(), os.path.abspath(out), local, KEEP_BYTES // max(1, workers), whole)
    try:
        with ExitStack() as stack:
            cpu_engine = engine.engine(workers, preload=PRELOAD, parent_works=True,  # CPU work: the parent too
                                       num_cpus=_cpu_stage_cores(recipe, local), shared=(out,), name="build")
            cpu = stack.enter_context(cpu_engine.start(WorkerPlan(CpuStages, setup, workers)))

            def open_inpainters(work: Mapping[int, int] | None = None) -> dict[int, Pool]:
                if not remote:
                    return {}
                if engine.is_ray:
                    return {g: stack.enter_context(engine.engine(
                                actors, num_cpus=cores, num_gpus=gpus, name=f"generator-{recipe.generators[g].label}"
                            ).start(WorkerPlan(InpaintStage, InpaintSetup(setup.recipe_json, g), actors)))
                            for g, (actors, cores, gpus) in _ray_inpainters(recipe, apart, inpaint_workers, work).items()}
                local_engine = engine_for(inpaint_workers, preload=PRELOAD)
                return {g: stack.enter_context(local_engine.start(WorkerPlan(
                            InpaintStage, InpaintSetup(setup.recipe_json, g), inpaint_workers, devices)))
                        for g, devices in apart.items()}

            return _build(recipe, out, cpu, open_inpainters, tally, overwrite=overwrite, progress=progress,
                          stop_after_shards=stop_after_shards)
    except KeyboardInterrupt:
        raise BuildInterrupted(_interrupted_message(tally), out=out, kept=tally.kept, total=tally.total) from None


def _apart(recipe: Recipe, inpaint_devices: Sequence[str] | None, device: str | None, *,
           ray: bool) -> dict[int, tuple[str, ...]]:
    """The generators that run in their own pool, each with its workers' devices (round-robin).

    All of them with ``inpaint_devices``; otherwise those whose recipe entry names a ``device``,
    and, with ``device``, every generator that runs on torch (the OpenCV ones gain nothing from a
    pool of their own and stay inside the CPU workers); on Ray also those that ask for
    ``num_gpus`` (placed by :func:`_ray_inpainters`).
    """
    count = len(recipe.generators)
    if inpaint_devices is not None:
        return {g: tuple(inpaint_devices) or ("cpu",) for g in range(count)}
    apart = {}
    for g, spec in enumerate(recipe.generators):
        learned = "torch" in (getattr(GENERATORS.get(spec.type), "requires", ()) or ())
        where = spec.device or (device if learned else None)
        if where:
            apart[g] = (where,)
        elif ray and (spec.num_gpus or 0) > 0:
            apart[g] = ("cuda",)
    return apart


def _cpu_stage_cores(recipe: Recipe, local: Sequence[int]) -> float:
    """Cores each CPU stage worker reserves on Ray: 1, or more for a generator run inside it that asks."""
    return max([1.0, *((recipe.generators[g].num_cpus or 0) for g in local)])


def _fakes_by_generator(pending: Sequence[tuple[str, str, Sequence[PlannedSample]]]) -> dict[int, int]:
    """How many samples each generator still has to make: what its share of a cluster's GPUs follows."""
    counts: dict[int, int] = {}
    for _, _, members in pending:
        for sample in members:
            if sample.generator_index is not None:
                counts[sample.generator_index] = counts.get(sample.generator_index, 0) + 1
    return counts


def _ray_inpainters(recipe: Recipe, apart: Mapping[int, tuple[str, ...]], cpu_actors: int,
                    work: Mapping[int, int] | None = None) -> dict[int, tuple[int, float, float]]:
    """``(actors, num_cpus, num_gpus)`` of the pool of each generator in ``apart``, on Ray.

    A generator's ``num_gpus`` (default: 1 when it runs on CUDA, else 0) is what each of its
    actors reserves. The cluster's GPUs are shared between the generators that want them in
    proportion to the samples each still has to make (``work``; evenly without it): one actor per
    ``num_gpus`` of a generator's share. Every pool is open for the whole build, so each gets at
    least one actor; a share below ``num_gpus`` becomes one actor on that fraction of a GPU (Ray
    then puts several models on one GPU) rather than a request the cluster cannot meet. A
    generator apart on the CPU gets ``cpu_actors`` actors of ``num_cpus`` cores (default 1).
    """
    from ..engine.ray import cluster_resources

    def gpus_of(g: int) -> float:
        asked = recipe.generators[g].num_gpus
        return float(asked) if asked is not None else float(any(d.startswith("cuda") for d in apart[g]))

    wanting = [g for g in apart if gpus_of(g) > 0]
    total = cluster_resources().get("GPU", 0.0)
    weights = {g: float((work or {}).get(g, 0)) for g in wanting}
    if sum(weights.values()) <= 0:
        weights = {g: 1.0 for g in wanting}
    pools = {}
    for g in apart:
        cores = recipe.generators[g].num_cpus
        if g not in wanting:
            pools[g] = (max(1, cpu_actors), float(1 if cores is None else cores), 0.0)
            continue
        share = total * weights[g] / sum(weights.values())
        if share >= gpus_of(g) or total <= 0:  # no GPU at all: the engine says so, with the request
            pools[g] = (max(1, int(share // gpus_of(g))), float(cores or 0), gpus_of(g))
        else:
            pools[g] = (1, float(cores or 0), max(0.01, int(share * 100) / 100))
    return pools


def _interrupted_message(tally: _Tally) -> str:
    if tally.total is None:
        return "interrupted while planning, before anything new was written"
    return f"interrupted: {tally.kept} of {tally.total} shards kept"


def _build(
    recipe: Recipe,
    out: Path,
    cpu: Pool,
    open_inpainters: Callable[..., dict[int, Pool]],
    tally: _Tally,
    *,
    overwrite: bool,
    progress: Callable[[int, int], None] | None,
    stop_after_shards: int | None,
) -> BuildReport:
    from .manifest import build_card, build_manifest

    start = time.perf_counter()
    schema = _schema_soon()
    sources = build_sources(recipe)
    plan = make_plan(recipe, sources, check=_checker(recipe, cpu))
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
        inpainters = open_inpainters(_fakes_by_generator(pending))
        schema_now = schema.result()
        jobs = _shard_jobs(plan, pending, whole=not inpainters, schema=schema_now)
        units, owner = _dispatch_order(jobs, cpu.workers)
        finished = _made(recipe, cpu, inpainters, units)
        arrived: dict[int, list[ShardDone]] = {}
        try:
            for position, shard in zip(owner, finished):
                arrived.setdefault(position, []).append(shard)
                while written in arrived and len(arrived[written]) == owner.count(written):
                    name, split, members = pending[written]
                    staged, skipped = _assemble(folder, name, arrived.pop(written), schema_now)
                    for _ in members:
                        done += 1
                        if progress:
                            progress(done, total)
                    records[name] = folder.commit_shard(name, split, staged, skipped, [])
                    written += 1
                    tally.kept += 1
                    if stop_after_shards is not None and written >= stop_after_shards and written < len(pending):
                        raise BuildInterrupted(f"stopped after {written} new shard(s) as asked", out=out,
                                               kept=tally.kept, total=tally.total)
        finally:
            finished.close()  # cancels the shards still queued on the workers

    shard_records = [records[name] for name, _, _ in plan.shards]
    failed = [s for r in shard_records for s in r.skipped]
    skipped = plan.skipped + failed
    manifest = build_manifest(recipe, plan, shard_records, skipped)
    folder.finish(manifest, build_card(recipe, manifest))
    return BuildReport(out, shard_records, skipped, manifest["counts"], time.perf_counter() - start, resumed,
                       plan.files, failed, list(manifest["warnings"]))
