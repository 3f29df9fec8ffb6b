"""``bench eval``: run a localizer over one split of a dataset and write trustworthy results.

The split is scored in chunks (:mod:`dolos_bench.eval.work`): each finished chunk's metric state
and per-sample records are checkpointed beside the output, chunks can be scored by several
processes, and their states are merged into the one that a single pass would give. The results
JSON and the per-sample JSONL are written once, atomically, after every sample was scored. A
model that breaks the protocol raises :class:`~dolos_bench.eval.api.LocalizerError` and leaves
no results file behind (its finished chunks stay checkpointed for the re-run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from dolos_bench.data.reader import open_split
from dolos_bench.utils.files import atomic_output

from .api import LocalizerError
from .localizers import load_localizer
from .metrics import MetricState
from .protocols import Protocol, dolos_results, get_protocol
from .results import (
    Counts, DatasetInfo, Metric, ModelInfo, ProtocolInfo, Results, collect_provenance, save_results,
)
from .work import Checkpoints, RunInterrupted, RunSetup, WorkUnit, run_key, run_units, score_split


@dataclass
class EvalOutput:
    results: Results
    results_path: Path | None
    samples_path: Path | None


def fingerprint(data: str, split: str, ids: list[str]) -> str:
    """sha256 of the manifest's shard hashes when there is one, plus the split and the ids scored."""
    h = hashlib.sha256()
    manifest = Path(data) / "manifest.json"
    if manifest.exists():
        shards = json.loads(manifest.read_text()).get("shards", [])
        h.update(json.dumps(sorted(s["sha256"] for s in shards)).encode())
    else:
        h.update(str(data).encode())
    h.update(split.encode())
    h.update("\n".join(ids).encode())
    return h.hexdigest()


def model_info(localizer: Any, model: str, model_args: Mapping[str, Any] | None) -> ModelInfo:
    """The results file's ``model`` section from a loaded localizer's identity."""
    identity = localizer.identity()
    return ModelInfo(id=str(identity.get("name") or model), kind=identity.get("kind", "registry"),
                     path=identity.get("path"), weights_sha256=identity.get("weights_sha256"),
                     options=dict(model_args or {}))


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


class EvalInterrupted(RunInterrupted):
    """Raised by ``stop_after_chunks`` (tests, benchmarks): finished chunks stay checkpointed."""


def _write_samples(target: Path, parts: list[Path]) -> None:
    """Concatenate the chunks' records into ``target`` atomically, in chunk (= dataset) order."""
    with atomic_output(target, "wb") as fh:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, fh)


def run_eval(
    model: str,
    data: str,
    *,
    split: str = "test",
    protocol: str = "default",
    device: str = "cpu",
    batch_size: int = 16,
    limit: int | None = None,
    out: Path | None = None,
    model_args: Mapping[str, Any] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    exact: bool = False,
    workers: int = 1,
    chunk_size: int = 1024,
    progress: Callable[[int, int], None] | None = None,
    stop_after_chunks: int | None = None,
    command: str | None = None,
) -> EvalOutput:
    """Score ``model`` on one split; with ``out``, write the results JSON and per-sample JSONL.

    The split is scored in chunks of ``chunk_size`` samples whose metric states are merged. With
    ``out``, every finished chunk is checkpointed in ``.<out name>.eval/`` beside it, so a run
    that was interrupted resumes with the chunks it had; ``workers`` > 1 scores chunks in that
    many processes (each loads its own copy of the model). Neither changes a single number.
    ``stop_after_chunks`` raises :class:`EvalInterrupted` after that many new chunks.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    proto = get_protocol(protocol, exact=exact)
    start = time.perf_counter()
    ds = open_split(data, split, limit)
    ids = ds.column("id")
    localizer = load_localizer(model, device=device, options=dict(model_args or {}))
    if hasattr(localizer, "validate"):
        localizer.validate(ids)
    info_model = model_info(localizer, model, model_args)
    data_fp = fingerprint(str(data), split, ids)
    key = run_key(info_model, data_fp, proto)
    checkpoints = Checkpoints(out.parent / f".{out.name}.eval", key) if out is not None else None
    setup = RunSetup(model=model, data=str(data), split=split, limit=limit, device=device,
                     options=dict(model_args or {}), protocol=protocol, batch_size=batch_size, exact=exact,
                     checkpoint_folder=str(checkpoints.folder) if checkpoints else None, run_key=key)
    units = [WorkUnit(i, f"chunk {i + 1}", begin, min(begin + chunk_size, len(ids)), keep_records=out is not None)
             for i, begin in enumerate(range(0, len(ids), chunk_size))]
    load_s = time.perf_counter() - start
    t0 = time.perf_counter()
    try:
        states, resumed = run_units(units, setup, localizer=localizer, ds=ds, proto=proto, checkpoints=checkpoints,
                                    workers=workers, stop_after=stop_after_chunks,
                                    progress=(lambda d, t, _label: progress(d, t)) if progress else None)
    except RunInterrupted as exc:
        raise EvalInterrupted(str(exc)) from None
    state = proto.make_state()
    for unit in units:
        state.merge(states[unit.index])
    predict_s = time.perf_counter() - t0
    computed = state.compute(bootstrap=bootstrap, seed=seed)
    info = dict(computed.get("info", {}))
    if proto.name == "dolos":
        info["dolos"] = dolos_results(state)
    results = Results(
        kind="eval",
        model=info_model,
        dataset=DatasetInfo(path=str(data), fingerprint=data_fp, split=split,
                            recipe=None, num_samples=len(ids)),
        protocol=protocol_info(proto),
        metrics=metrics_of(computed),
        breakdowns=breakdowns_of(computed),
        counts=counts_of(state),
        complete=True,
        provenance=collect_provenance(command or " ".join(sys.argv), seeds={"bootstrap": seed},
                                      timings={"load_s": load_s, "predict_s": predict_s,
                                               "total_s": time.perf_counter() - start}),
        info=json.loads(json.dumps(info | ({"resumed_chunks": resumed} if resumed else {}), default=str)),
    )
    samples_path = None
    if out is not None and checkpoints is not None:
        samples_path = out.with_suffix(".samples.jsonl")
        _write_samples(samples_path, [checkpoints.records_path(u) for u in units])
        save_results(results, out)
        checkpoints.clear()
    return EvalOutput(results, out, samples_path)


__all__ = ["run_eval", "open_split", "score_split", "EvalInterrupted", "EvalOutput", "LocalizerError"]
