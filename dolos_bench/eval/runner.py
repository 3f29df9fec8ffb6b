"""``bench eval``: run a localizer over one split of a dataset and write trustworthy results.

The split is scored in chunks (:mod:`dolos_bench.eval.work`): each finished chunk's metric state
and per-sample records are checkpointed beside the output, chunks can be scored by several
processes, and their states are merged into the one that a single pass would give. The results
JSON and the per-sample JSONL are written once, atomically, after every sample was scored. A
model that breaks the protocol raises :class:`~dolos_bench.eval.api.LocalizerError` and leaves
no results file behind (its finished chunks stay checkpointed for the re-run); so does Ctrl-C,
which ends in :class:`EvalInterrupted`, whose message says what was kept and how to resume.

A results file is only ``complete`` when it covers the whole split (``limit`` that cuts the
split gives ``complete: false``, which the leaderboard refuses to rank), and says
``verified: false`` when the data was not a dolos-bench build checked against its manifest.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from dolos_bench.data.reader import DataOrigin, Split, open_split
from dolos_bench.utils.files import atomic_output

from .api import LocalizerError
from .localizers import load_localizer, resolve_device
from .predictions import PredictionsLocalizer, dataset_split_ids
from .metrics import MetricState
from .protocols import Protocol, dolos_results, get_protocol
from ..results import (
    Counts, DatasetInfo, Metric, ModelInfo, ProtocolInfo, Results, collect_provenance, save_results,
)
from .config import ScoringConfig
from .work import Interruption, RunInterrupted, RunSetup, ScoringWorker, WorkUnit, run_key, run_units, score_split


@dataclass
class EvalOutput:
    results: Results
    results_path: Path | None
    samples_path: Path | None


def fingerprint(origin: DataOrigin, split: str, ids: list[str]) -> str:
    """sha256 of the data's content key, the split and the ids scored.

    The content key is the manifest's shard hashes for a build, the sha256 of the files read for
    any other local folder (so two folders that share a name are told apart), the id for the Hub.
    """
    h = hashlib.sha256()
    h.update(origin.content_key().encode())
    h.update(split.encode())
    h.update("\n".join(ids).encode())
    return h.hexdigest()


def model_info(localizer: Any, model: str, model_args: Mapping[str, Any] | None) -> ModelInfo:
    """The results file's ``model`` section from a loaded localizer's identity."""
    identity = localizer.identity()
    return ModelInfo(id=str(identity.get("name") or model), kind=identity.get("kind", "registry"),
                     path=identity.get("path"), weights_sha256=identity.get("weights_sha256"),
                     options=dict(model_args or {}))


def identity_info(localizer: Any) -> dict[str, Any]:
    """The localizer's own identity, JSON-safe, for the results' ``info["model_identity"]``.

    ``model.options`` records what the user passed (it is part of the run key); this records what
    the localizer says it ran with -- its defaults included where it reports them (ELA's quality,
    FOCAL's clustering method, rule and device, a trained run's task config and recipe) -- so a
    score can be reproduced without knowing the defaults of the version that made it.
    """
    identity = {k: v for k, v in localizer.identity().items() if k not in ("name", "kind", "path", "weights_sha256")}
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def protocol_info(proto: Protocol) -> ProtocolInfo:
    return ProtocolInfo(name=proto.name, threshold=proto.threshold,
                        resize="bicubic" if "bicubic" in proto.interpolation else "bilinear",
                        details=proto.info())


def metrics_of(computed: Mapping[str, Any]) -> dict[str, Metric]:
    return {k: Metric(**v) for k, v in computed["metrics"].items()}


def breakdowns_of(computed: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Metric]]]:
    return {kind: {g: {k: Metric(**v) for k, v in ms.items()} for g, ms in groups.items()}
            for kind, groups in computed["breakdowns"].items()}


def counts_of(state: MetricState) -> Counts:
    _, labels = state.image_scores()
    fake = int(np.count_nonzero(labels == 1))
    return Counts(samples=int(labels.size), real=int(labels.size) - fake, fake=fake)


def data_notes(results: Results) -> list[str]:
    """The one-line notes a command prints about the data behind ``results``: unverified, partial."""
    data = results.dataset
    notes = []
    if data.verified is False:
        notes.append(f"note: {data.path} is not a dolos-bench build checked against a manifest, so the data is "
                     f"unverified (the results say verified: false; fingerprint {data.fingerprint[:16]})")
    if data.partial:
        notes.append(f"note: scored {data.num_samples} of the {data.split_samples} samples of split {data.split!r} "
                     "(--limit): the results say complete: false, and the leaderboard does not rank them")
    return notes


class EvalInterrupted(RunInterrupted):
    """Ctrl-C or ``stop_after_chunks`` (tests, benchmarks): finished chunks stay checkpointed."""


def open_scored_split(data: str | Path, split: str, limit: int | None) -> tuple[Split, int]:
    """The rows to score (the first ``limit`` of the split) and the size of the whole split."""
    whole = open_split(data, split)
    total = len(whole)
    if limit is None or limit >= total:
        return whole, total
    return whole.select(0, limit), total


def dataset_info(data: str | Path, split: str, ds: Split, ids: list[str], split_samples: int) -> DatasetInfo:
    """The results' ``dataset`` section: fingerprint, whether verified, and how much was scored."""
    return DatasetInfo(path=str(data), fingerprint=fingerprint(ds.origin, split, ids), split=split, recipe=None,
                       num_samples=len(ids), verified=ds.origin.verified, split_samples=split_samples)


def _write_samples(target: Path, parts: list[Path]) -> None:
    """Concatenate the chunks' records into ``target`` atomically, in chunk (= dataset) order."""
    with atomic_output(target, "wb") as fh:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, fh)


def _publish(results: Results, out: Path, samples_path: Path, parts: list[Path]) -> None:
    """Write the samples, then the results file, the mark of a finished run.

    An older results file at ``out`` goes first, so it never stands beside the new samples; if
    the run stops before its results are written, the new samples go too.
    """
    out.unlink(missing_ok=True)
    try:
        _write_samples(samples_path, parts)
        save_results(results, out)
    except BaseException:
        if not out.exists():
            samples_path.unlink(missing_ok=True)
        raise


EVAL_BOOTSTRAP = 1000
"""Bootstrap resamples when the config leaves ``bootstrap`` unset (``bench eval --bootstrap``'s default)."""


def run_eval(
    config: ScoringConfig,
    *,
    out: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop_after_chunks: int | None = None,
    command: str | None = None,
) -> EvalOutput:
    """Score ``config.model`` on one split; with ``out``, write the results JSON and per-sample JSONL.

    The split is scored in chunks of ``config.chunk_size`` samples whose metric states are
    merged. With ``out``, every finished chunk is checkpointed in ``.<out name>.eval/`` beside
    it, so a run that was interrupted resumes with the chunks it had; ``config.workers`` > 1
    scores chunks in that many processes (each loads its own copy of the model, on its own GPU
    with ``device="cuda"``). Neither changes a single number. ``stop_after_chunks`` raises
    :class:`EvalInterrupted` after that many new chunks, as Ctrl-C (``KeyboardInterrupt``) does
    at any point; its message names the checkpointed chunks and ``command`` (default: this
    process's command line) as the way to resume.
    """
    proto = get_protocol(config.protocol, exact=config.exact)
    command = command or shlex.join(sys.argv)
    interruption = Interruption("chunk", "chunks", command, keeps_checkpoints=out is not None)
    try:
        return _run_eval(config, proto, interruption, out=out, progress=progress, stop_after_chunks=stop_after_chunks)
    except (KeyboardInterrupt, RunInterrupted):
        raise EvalInterrupted(interruption.message()) from None


def _run_eval(config: ScoringConfig, proto: Protocol, interruption: Interruption, *, out: Path | None,
              progress: Callable[[int, int], None] | None, stop_after_chunks: int | None) -> EvalOutput:
    """:func:`run_eval` once its arguments are checked; fills ``interruption`` as it goes."""
    start = time.perf_counter()
    data, split = config.data, config.split
    resolve_device(config.device)  # a bad --device fails before the data is opened (a Hub id is slow)
    ds, split_samples = open_scored_split(data, split, config.limit)
    ids = ds.column("id")
    localizer = load_localizer(config.model, device=config.device, options=dict(config.options))
    if isinstance(localizer, PredictionsLocalizer):  # every bad file named before scoring starts
        localizer.validate(ids, deep=True, split=split, splits=lambda: dataset_split_ids(data, split))
    info_model = model_info(localizer, config.model, config.options)
    info_data = dataset_info(data, split, ds, ids, split_samples)
    key = run_key(info_model, info_data.fingerprint, proto)
    folder = out.parent / f".{out.name}.eval" if out is not None else None
    setup = RunSetup(config, checkpoint_folder=str(folder) if folder else None, run_key=key)
    worker = ScoringWorker(setup, config.device, localizer=localizer, ds=ds)
    checkpoints = worker.checkpoints
    chunk_size = config.chunk_size
    units = [WorkUnit(i, f"chunk {i + 1}", begin, min(begin + chunk_size, len(ids)), keep_records=out is not None)
             for i, begin in enumerate(range(0, len(ids), chunk_size))]
    interruption.units, interruption.checkpoints = units, checkpoints
    load_s = time.perf_counter() - start
    t0 = time.perf_counter()
    states, resumed = run_units(units, worker, stop_after=stop_after_chunks,
                                progress=(lambda d, t, _label: progress(d, t)) if progress else None)
    state = proto.make_state()
    for unit in units:
        state.merge(states[unit.index])
    predict_s = time.perf_counter() - t0
    seed = config.seed
    computed = state.compute(bootstrap=config.bootstrap_or(EVAL_BOOTSTRAP), seed=seed)
    info = dict(computed.get("info", {}))
    info["model_identity"] = identity_info(localizer)
    if proto.name == "dolos":
        info["dolos"] = dolos_results(state)
    results = Results(
        kind="eval",
        model=info_model,
        dataset=info_data,
        protocol=protocol_info(proto),
        metrics=metrics_of(computed),
        breakdowns=breakdowns_of(computed),
        counts=counts_of(state),
        complete=info_data.num_samples == split_samples,
        provenance=collect_provenance(interruption.command, seeds={"bootstrap": seed},
                                      timings={"load_s": load_s, "predict_s": predict_s,
                                               "total_s": time.perf_counter() - start}),
        info=json.loads(json.dumps(info | ({"resumed_chunks": resumed} if resumed else {}), default=str)),
    )
    samples_path = None
    if out is not None and checkpoints is not None:
        samples_path = out.with_suffix(".samples.jsonl")
        _publish(results, out, samples_path, [checkpoints.records_path(u) for u in units])
        checkpoints.clear()
    return EvalOutput(results, out, samples_path)


__all__ = [
    "run_eval", "open_split", "open_scored_split", "dataset_info", "data_notes", "score_split", "EvalInterrupted", "EvalOutput",
    "LocalizerError", "ScoringConfig",
]
