"""Scoring: one pass of a localizer over rows (``score_split``), units of such work, their
checkpoints, and the worker that scores them, inline or in worker processes of the engine.

``bench eval`` cuts a split into chunks of rows and ``bench stress`` into grid points; both are
*units*: a row range, an optional perturbation chain, and the metric state they produce. A unit's
state is checkpointed as soon as it is done (with its per-sample records when the run keeps
them), so an interrupted run redoes only the missing units; and because metric states add up
(:meth:`MetricState.merge`), units can be scored by any number of processes in any order and
still give the numbers of a single pass. Processes come from :mod:`dolos_bench.engine`: each
builds one :class:`ScoringWorker` from the run's :class:`RunSetup` (which carries the
:class:`~dolos_bench.eval.config.ScoringConfig`) and its own device.

Each checkpoint carries the hash of everything that decides its numbers -- model and weights,
options, data fingerprint, protocol, perturbation seed, the unit itself, the versions of the
libraries that decode and perturb images. A checkpoint whose hash does not match the current
run is ignored and overwritten, never merged in.
"""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from dolos_bench.data.reader import Split, open_split
from dolos_bench.engine import Pool, Worker, WorkerPlan, engine_for
from dolos_bench.engine.local import InlinePool
from dolos_bench.errors import UserError
from dolos_bench.seeding import rng_for
from dolos_bench.utils.files import atomic_write_text

from .config import ScoringConfig
from .localizers import call_localizer, load_localizer, resize_input, resolve_device
from .metrics import MetricState
from .protocols import Protocol, get_protocol
from ..results import ModelInfo, package_versions

if TYPE_CHECKING:
    from dolos_bench.perturbations import Chain

CHECKPOINT_VERSION = 1


class RunInterrupted(UserError, RuntimeError):
    """The run stopped before it finished (Ctrl-C, or ``stop_after`` in tests and benchmarks).

    Its message is the one line the CLI ends with: what was kept and the command that resumes.
    The checkpoints written so far stay; no results file was written.
    """

    exit_code = 130  # the shell's code for a process ended by SIGINT


@dataclass(frozen=True)
class WorkUnit:
    """Rows ``[start, stop)`` of the split, perturbed by ``chain`` (a chain spec; empty = none)."""

    index: int
    name: str
    start: int
    stop: int
    chain: tuple[Mapping[str, Any], ...] = ()
    keep_records: bool = False

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "start": self.start, "stop": self.stop, "chain": [dict(c) for c in self.chain],
                "records": self.keep_records}

    def describe(self) -> str:
        """How a failure names the unit: ``chunk 3, rows 8:12``."""
        return f"{self.name}, rows {self.start}:{self.stop}"


@dataclass(frozen=True)
class RunSetup:
    """The spec of a :class:`ScoringWorker`: the run's config and what the parent worked out for it.

    ``chain_seed`` seeds the perturbations (a stress suite's seed), ``run_key`` is what every
    checkpoint's hash covers (:func:`run_key`), ``checkpoint_folder`` where they go (``None``:
    none are kept). Plain values, cheap to pickle to every worker process.
    """

    config: ScoringConfig
    chain_seed: int = 0
    checkpoint_folder: str | None = None
    run_key: dict[str, Any] = field(default_factory=dict)

    def checkpoints(self) -> "Checkpoints | None":
        return Checkpoints(Path(self.checkpoint_folder), self.run_key) if self.checkpoint_folder else None


@dataclass
class Interruption:
    """What an interrupted run can say about itself; filled in as the run gets set up.

    ``units`` is None until the run knows its units (interrupted while loading); ``checkpoints``
    is None when the run keeps none (``bench eval`` without ``--out``).
    """

    noun: str
    nouns: str
    command: str
    units: Sequence["WorkUnit"] | None = None
    checkpoints: "Checkpoints | None" = None
    keeps_checkpoints: bool = True

    def message(self) -> str:
        """One line: how many units are checkpointed where, and the command that resumes."""
        if not self.keeps_checkpoints:
            return (f"interrupted: nothing was kept (without --out no {self.noun} is checkpointed); "
                    f"run it again to start over, adding --out FILE to make it resumable: {self.command}")
        if self.units is None or self.checkpoints is None:
            return f"interrupted before scoring began: nothing new was kept; run the same command again: {self.command}"
        kept = sum(1 for unit in self.units if self.checkpoints.load(unit) is not None)
        return (f"interrupted: {kept} of {len(self.units)} {self.nouns} checkpointed in {self.checkpoints.folder}/; "
                f"run the same command again to resume: {self.command}")


class Checkpoints:
    """``NNNN.json`` (key + metric state) per finished unit, plus ``NNNN.jsonl`` records if kept.

    The JSONL is written first and the JSON last, each atomically: the JSON is the unit's
    completion mark, so a crash between the two leaves a unit that is simply redone.
    """

    def __init__(self, folder: Path, run_key: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.run_key = dict(run_key)

    def key(self, unit: WorkUnit) -> str:
        blob = json.dumps({"run": self.run_key, "unit": unit.identity(), "v": CHECKPOINT_VERSION},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def state_path(self, unit: WorkUnit) -> Path:
        return self.folder / f"{unit.index:04d}.json"

    def records_path(self, unit: WorkUnit) -> Path:
        return self.folder / f"{unit.index:04d}.jsonl"

    def load(self, unit: WorkUnit) -> MetricState | None:
        try:
            saved = json.loads(self.state_path(unit).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("key") != self.key(unit):
            return None
        if unit.keep_records and not self.records_path(unit).is_file():
            return None
        try:
            return MetricState.from_dict(saved["state"])
        except (KeyError, TypeError, ValueError):
            return None

    def _write(self, path: Path, text: str) -> None:
        atomic_write_text(path, text)

    def save(self, unit: WorkUnit, state: MetricState, records: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if unit.keep_records:
            self._write(self.records_path(unit),
                        "".join(json.dumps(r, default=str, sort_keys=True) + "\n" for r in records or []))
        self._write(self.state_path(unit), json.dumps({"key": self.key(unit), "unit": unit.identity(),
                                                       "state": state.to_dict()}))

    def clear(self) -> None:
        if self.folder.exists():
            for path in self.folder.iterdir():
                path.unlink()
            self.folder.rmdir()


@lru_cache(maxsize=1024)
def _describe_perturbation(value: str) -> str:
    """The breakdown key of a sample's ``perturbations`` column: the build's own ``Chain.describe``.

    A chain this version cannot parse (a newer perturbation, a hand-made dataset) keeps its raw
    JSON as the key rather than failing the evaluation.
    """
    from dolos_bench.perturbations import parse_chain

    try:
        return parse_chain(json.loads(value or "[]")).describe()
    except (ValueError, KeyError, TypeError):
        return value


def _decode(value: Any) -> np.ndarray:
    if isinstance(value, dict):
        return np.asarray(Image.open(io.BytesIO(value["bytes"])))
    return np.asarray(value)


def _perturb(chain: Chain, key: str | None, image: np.ndarray, seed: int, sample_id: str) -> np.ndarray:
    try:
        return chain.apply(image, None, rng_for(seed, "stress", key, sample_id))[0]
    except Exception as exc:  # noqa: BLE001 - name the sample and the chain, whatever failed
        raise ValueError(f"sample {sample_id!r}: perturbation {key} failed: {exc}") from exc


def score_split(
    localizer: Any,
    ds: Split,
    proto: Protocol,
    *,
    batch_size: int = 16,
    chain: Chain | None = None,
    chain_seed: int = 0,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MetricState:
    """Run ``localizer`` over every sample of ``ds`` and return the filled metric state.

    With ``chain``, each image is perturbed before the localizer sees it, deterministically per
    sample (``rng_for(chain_seed, "stress", chain.describe(), id)``), while the ground truth stays
    the dataset's mask at its own resolution: maps are brought back to it by the protocol's
    resize, so every grid point is scored on the same pixels and only the input got worse.
    """
    state = proto.make_state()
    size = getattr(localizer, "input_size", None)
    key = chain.describe() if chain is not None else None
    done, total = 0, len(ds)
    for batch in ds.batches(batch_size):
        images = [_decode(v) for v in batch["image"]]
        masks = [_decode(v) > 0 for v in batch["mask"]]
        if masks and masks[0].ndim == 3:
            masks = [m.any(axis=-1) for m in masks]
        if chain is not None and len(chain):
            images = [_perturb(chain, key, image, chain_seed, sample_id) for image, sample_id in zip(images, batch["id"])]
        if size:
            images = [resize_input(image, size, "pil-bilinear") for image in images]
        output = call_localizer(localizer, images, batch["id"])
        for k, sample_id in enumerate(batch["id"]):
            score_map = proto.resize(output.maps[k], masks[k].shape)
            score = output.scores[k] if output.scores is not None else None
            record = state.update(
                score_map, masks[k], int(batch["label"][k]), score, sample_id=sample_id,
                generator=batch["generator"][k], parts=batch["parts"][k],
                perturbation=_describe_perturbation(batch["perturbations"][k]), source=batch["source"][k],
                area=batch["area_ratio"][k] if "area_ratio" in batch else None,  # older datasets lack it
            )
            if on_record is not None:
                on_record(record)
        done += len(batch["id"])
        if progress:
            progress(done, total)
    return state


def run_key(model: ModelInfo, data_fingerprint: str, proto: Protocol, **extra: Any) -> dict[str, Any]:
    """What decides every unit's numbers, for :class:`Checkpoints`: model and weights, data, protocol.

    Codec and resampling libraries decide decoded and perturbed pixels, so their versions are
    part of it: an upgrade invalidates checkpoints instead of mixing old and new numbers.
    """
    return {"model": model.model_dump(mode="json"), "data": data_fingerprint, "protocol": proto.info(),
            "protocol_name": proto.name, "packages": package_versions(), **extra}


def score_unit(
    localizer: Any,
    ds: Split,
    proto: Protocol,
    setup: RunSetup,
    unit: WorkUnit,
    checkpoints: Checkpoints | None,
    progress: Callable[[int, int], None] | None = None,
) -> MetricState:
    """Score one unit and checkpoint it (with its records when the unit keeps them)."""
    from dolos_bench.perturbations import parse_chain

    records: list[dict[str, Any]] = []
    chain = parse_chain([dict(c) for c in unit.chain]) if unit.chain else None
    state = score_split(localizer, ds.select(unit.start, unit.stop), proto, batch_size=setup.config.batch_size,
                        chain=chain, chain_seed=setup.chain_seed,
                        on_record=records.append if unit.keep_records else None, progress=progress)
    if checkpoints is not None:
        checkpoints.save(unit, state, records)
    return state


# -- workers ------------------------------------------------------------------------------------


class ScoringWorker(Worker[WorkUnit, MetricState]):
    """Scores units of one run: holds the localizer, the opened split, the protocol and the checkpoints.

    Built once per worker process from its :class:`RunSetup` and its own device, so the model is
    loaded once and kept for every unit it is given. The parent's own worker (``bench eval``
    with one process) is built around the localizer and split the parent already opened
    (``localizer=``, ``ds=``) instead of loading them twice; it alone reports progress within a
    unit, through :attr:`on_progress`.
    """

    def __init__(self, spec: RunSetup, device: str, *, localizer: Any = None, ds: Split | None = None) -> None:
        super().__init__(spec, device)
        config = spec.config
        self.localizer = localizer if localizer is not None else load_localizer(
            config.model, device=device, options=dict(config.options))
        # verified by the parent before any worker starts
        self.ds = ds if ds is not None else open_split(config.data, config.split, config.limit, verify=False)
        self.proto = get_protocol(config.protocol, exact=config.exact)
        self.checkpoints = spec.checkpoints()
        self.on_progress: Callable[[WorkUnit, int], None] | None = None
        """``(unit, samples of it done)`` after every batch; only read in the parent's process."""

    def __call__(self, unit: WorkUnit) -> MetricState:
        hook = self.on_progress
        report = (lambda done, _total: hook(unit, done)) if hook is not None else None
        return score_unit(self.localizer, self.ds, self.proto, self.spec, unit, self.checkpoints, report)


def worker_devices(device: str) -> tuple[str, ...]:
    """The devices of a run's worker processes, given round-robin (:class:`WorkerPlan`).

    Plain ``cuda`` spreads the workers over every visible GPU (worker ``i`` on ``cuda:i``, as
    many as torch counts); a named device (``cuda:1``, ``mps``, ``cpu``) is every worker's.
    """
    device = resolve_device(device)
    if device != "cuda":
        return (device,)
    try:
        import torch
    except ImportError:  # resolve_device passes CUDA on unchecked without torch: the adapter checks it
        return (device,)
    return tuple(f"cuda:{i}" for i in range(int(torch.cuda.device_count()))) or (device,)


def _pool(inline: ScoringWorker, workers: int) -> AbstractContextManager[Pool]:
    """``inline`` itself for one local worker; else a pool of ``workers`` processes (or Ray actors
    with ``--engine ray``, even for one), one device each."""
    config = inline.spec.config
    choice = config.engine_choice()
    if workers < 1 or (workers == 1 and not choice.is_ray):
        return nullcontext(InlinePool(inline))
    if choice.is_ray:  # Ray gives each GPU actor its own GPU, seen there as cuda:0
        gpus = 1.0 if resolve_device(config.device).startswith("cuda") else 0.0
        plan = WorkerPlan(ScoringWorker, inline.spec, workers=workers, devices=(config.device,))
        shared = [inline.spec.checkpoint_folder] if inline.spec.checkpoint_folder else []
        return choice.engine(workers, num_gpus=gpus, shared=shared, name="scoring").start(plan)
    plan = WorkerPlan(ScoringWorker, inline.spec, workers=workers, devices=worker_devices(config.device))
    return engine_for(workers, preload=[__name__]).start(plan)


def run_units(
    units: Sequence[WorkUnit],
    inline: ScoringWorker,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    stop_after: int | None = None,
) -> tuple[dict[int, MetricState], int]:
    """Every unit's state, by index, and how many came from checkpoints.

    Units that are not checkpointed yet are scored by ``inline`` (the worker of this process),
    or, with ``config.workers`` > 1 and more than one unit to do, by that many worker processes
    in any order; states are returned by unit index, so the caller merges them in unit order.
    A failing unit raises its own error here, with a note naming the unit; units not started
    yet are dropped and those under way finish (and are checkpointed). On Ctrl-C the worker
    processes are ended at once: their units are redone on resume.

    ``progress(done, total, label)`` counts samples over all units. ``stop_after`` scores at
    most that many new units, then raises :class:`RunInterrupted`.
    """
    checkpoints = inline.checkpoints
    states: dict[int, MetricState] = {}
    pending: list[WorkUnit] = []
    for unit in units:
        state = checkpoints.load(unit) if checkpoints is not None else None
        if state is None:
            pending.append(unit)
        else:
            states[unit.index] = state
    resumed = len(states)
    if stop_after is not None:
        pending = pending[:stop_after]
    total = sum(u.stop - u.start for u in units)
    done = sum(u.stop - u.start for u in units if u.index in states)
    if progress:
        progress(done, total, f"resumed {resumed}" if resumed else (units[0].name if units else ""))
        inline.on_progress = lambda unit, d: progress(done + d, total, unit.name)
    try:
        with _pool(inline, min(inline.spec.config.workers, len(pending))) as pool:
            for position, state in pool.imap_unordered(pending, describe=WorkUnit.describe):
                unit = pending[position]
                states[unit.index] = state
                done += unit.stop - unit.start
                if progress:
                    progress(done, total, unit.name)
    finally:
        inline.on_progress = None
    if len(states) < len(units):
        where = f"; checkpoints in {checkpoints.folder}" if checkpoints is not None else ""
        raise RunInterrupted(f"stopped after {len(states) - resumed} unit(s){where}")
    return states, resumed


__all__ = ["Checkpoints", "Interruption", "RunInterrupted", "RunSetup", "ScoringWorker", "WorkUnit", "run_key", "run_units",
           "score_split", "score_unit", "worker_devices"]
