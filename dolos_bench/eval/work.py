"""Scoring: one pass of a localizer over rows (``score_split``), units of such work, their
checkpoints, and running them inline or in worker processes.

``bench eval`` cuts a split into chunks of rows and ``bench stress`` into grid points; both are
*units*: a row range, an optional perturbation chain, and the metric state they produce. A unit's
state is checkpointed as soon as it is done (with its per-sample records when the run keeps
them), so an interrupted run redoes only the missing units; and because metric states add up
(:meth:`MetricState.merge`), units can be scored by any number of processes in any order and
still give the numbers of a single pass.

Each checkpoint carries the hash of everything that decides its numbers -- model and weights,
options, data fingerprint, protocol, perturbation seed, the unit itself, the versions of the
libraries that decode and perturb images. A checkpoint whose hash does not match the current
run is ignored and overwritten, never merged in.
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from dolos_bench.data.reader import Split, open_split
from dolos_bench.errors import UserError
from dolos_bench.seeding import rng_for
from dolos_bench.utils.files import atomic_write_text

from .localizers import call_localizer, load_localizer
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


@dataclass(frozen=True)
class RunSetup:
    """Everything a worker process needs to rebuild the run: plain values, cheap to pickle."""

    model: str
    data: str
    split: str
    limit: int | None
    device: str
    options: dict[str, Any]
    protocol: str
    batch_size: int
    exact: bool = False
    chain_seed: int = 0
    checkpoint_folder: str | None = None
    run_key: dict[str, Any] = field(default_factory=dict)


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
            images = [np.asarray(Image.fromarray(i).resize((size, size), Image.Resampling.BILINEAR)) for i in images]
        output = call_localizer(localizer, images, batch["id"])
        for k, sample_id in enumerate(batch["id"]):
            score_map = proto.resize(output.maps[k], masks[k].shape)
            score = output.scores[k] if output.scores is not None else None
            record = state.update(
                score_map, masks[k], int(batch["label"][k]), score, sample_id=sample_id,
                generator=batch["generator"][k], parts=batch["parts"][k],
                perturbation=_describe_perturbation(batch["perturbations"][k]), source=batch["source"][k],
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
    state = score_split(localizer, ds.select(unit.start, unit.stop), proto, batch_size=setup.batch_size,
                        chain=chain, chain_seed=setup.chain_seed,
                        on_record=records.append if unit.keep_records else None, progress=progress)
    if checkpoints is not None:
        checkpoints.save(unit, state, records)
    return state


# -- worker processes --------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(setup: RunSetup) -> None:
    # Ctrl-C reaches every process of the terminal's group; the parent alone handles it (it ends
    # the workers and prints one line), so no idle worker prints a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    folder = setup.checkpoint_folder
    _WORKER.update(
        setup=setup,
        localizer=load_localizer(setup.model, device=setup.device, options=dict(setup.options)),
        ds=open_split(setup.data, setup.split, setup.limit, verify=False),  # verified by the parent
        proto=get_protocol(setup.protocol, exact=setup.exact),
        checkpoints=Checkpoints(Path(folder), setup.run_key) if folder else None,
    )


def _score_in_worker(unit: WorkUnit) -> dict[str, Any]:
    state = score_unit(_WORKER["localizer"], _WORKER["ds"], _WORKER["proto"], _WORKER["setup"], unit,
                       _WORKER["checkpoints"])
    return state.to_dict()


def _pool(setup: RunSetup, units: Sequence[WorkUnit], workers: int) -> Iterator[tuple[WorkUnit, MetricState]]:
    """Score units in a process pool; yield each with its state as it finishes (any order).

    A failure in a worker re-raises here with the worker's message; units not started yet are
    dropped, so the run stops soon instead of finishing work whose results will not be used
    (units under way finish and are checkpointed). On Ctrl-C, or when the caller stops early,
    the workers are ended at once: their units were not finished and are redone on resume.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # forkserver: workers fork from a clean server, not from this process and its threads.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["dolos_bench.eval.work"])
    pool = ProcessPoolExecutor(min(workers, len(units)), mp_context=context, initializer=_init_worker,
                               initargs=(setup,))
    try:
        futures = {pool.submit(_score_in_worker, unit): unit for unit in units}
        remaining = set(futures)
        try:
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield futures[future], MetricState.from_dict(future.result())
        except BaseException as exc:
            for future in remaining:
                future.cancel()
            if isinstance(exc, (KeyboardInterrupt, GeneratorExit)):
                _end_workers(pool)
            raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _end_workers(pool: Any) -> None:
    """Terminate a pool's worker processes (the executor has no public call for it)."""
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        process.terminate()


def run_units(
    units: Sequence[WorkUnit],
    setup: RunSetup,
    *,
    localizer: Any,
    ds: Split,
    proto: Protocol,
    checkpoints: Checkpoints | None,
    workers: int = 1,
    progress: Callable[[int, int, str], None] | None = None,
    stop_after: int | None = None,
) -> tuple[dict[int, MetricState], int]:
    """Every unit's state, by index, and how many came from checkpoints.

    ``progress(done, total, label)`` counts samples over all units. ``stop_after`` scores at
    most that many new units, then raises :class:`RunInterrupted`.
    """
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
    if workers <= 1 or len(pending) <= 1:
        for unit in pending:
            report = (lambda d, t, base=done, label=unit.name: progress(base + d, total, label)) if progress else None
            states[unit.index] = score_unit(localizer, ds, proto, setup, unit, checkpoints, report)
            done += unit.stop - unit.start
    else:
        for unit, state in _pool(setup, pending, workers):
            states[unit.index] = state
            done += unit.stop - unit.start
            if progress:
                progress(done, total, unit.name)
    if len(states) < len(units):
        where = f"; checkpoints in {checkpoints.folder}" if checkpoints is not None else ""
        raise RunInterrupted(f"stopped after {len(states) - resumed} unit(s){where}")
    return states, resumed


__all__ = ["Checkpoints", "Interruption", "RunInterrupted", "RunSetup", "WorkUnit", "run_key", "run_units", "score_split", "score_unit"]
