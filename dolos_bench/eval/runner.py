"""``bench eval``: run a localizer over one split of a dataset and write trustworthy results.

The results JSON is written once, atomically, after every sample was scored; the per-sample
JSONL goes to a temporary file that is renamed only then. A model that breaks the protocol
raises :class:`~dolos_bench.eval.api.LocalizerError` and leaves no results file behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image

from .api import LocalizerError
from .localizers import call_localizer, load_localizer
from .protocols import dolos_results, get_protocol
from .results import (
    Counts, DatasetInfo, Metric, ModelInfo, ProtocolInfo, Results, collect_provenance, save_results,
)


@dataclass
class EvalOutput:
    results: Results
    results_path: Path | None
    samples_path: Path | None


def _fingerprint(data: str, split: str, ids: list[str]) -> str:
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


def _describe_perturbation(value: str) -> str:
    steps = json.loads(value or "[]")
    if not steps:
        return "none"
    return "|".join(
        f"{s['name']}(" + ",".join(f"{k}={v}" for k, v in sorted(s.items()) if k != "name") + ")" for s in steps
    )


def _decode(value: Any) -> np.ndarray:
    if isinstance(value, dict):
        return np.asarray(Image.open(io.BytesIO(value["bytes"])))
    return np.asarray(value)


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
    progress: Callable[[int, int], None] | None = None,
    command: str | None = None,
) -> EvalOutput:
    import datasets

    proto = get_protocol(protocol)
    start = time.perf_counter()
    try:
        ds = datasets.load_dataset(str(data), split=split)
    except Exception as exc:  # noqa: BLE001 - surface as one clear line
        raise ValueError(f"cannot load split {split!r} of {data}: {exc}") from exc
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    ds = ds.cast_column("image", datasets.Image(decode=False)).cast_column("mask", datasets.Image(decode=False))
    ids = list(ds["id"])
    localizer = load_localizer(model, device=device, options=dict(model_args or {}))
    if hasattr(localizer, "validate"):
        localizer.validate(ids)
    state = proto.make_state()
    records: list[dict[str, Any]] = []
    size = getattr(localizer, "input_size", None)
    load_s = time.perf_counter() - start
    t0 = time.perf_counter()
    for begin in range(0, len(ds), batch_size):
        batch = ds[begin : begin + batch_size]
        images = [_decode(v) for v in batch["image"]]
        masks = [_decode(v) > 0 for v in batch["mask"]]
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
            records.append(record)
        if progress:
            progress(min(begin + batch_size, len(ds)), len(ds))
    predict_s = time.perf_counter() - t0
    computed = state.compute(bootstrap=bootstrap, seed=seed)
    info = dict(computed.get("info", {}))
    if proto.name == "dolos":
        info["dolos"] = dolos_results(state)
    identity = localizer.identity()
    labels = [int(r["label"]) for r in records]
    results = Results(
        kind="eval",
        model=ModelInfo(id=str(identity.get("name") or model), kind=identity.get("kind", "registry"),
                        path=identity.get("path"), weights_sha256=identity.get("weights_sha256"),
                        options=dict(model_args or {})),
        dataset=DatasetInfo(path=str(data), fingerprint=_fingerprint(str(data), split, ids), split=split,
                            recipe=None, num_samples=len(ids)),
        protocol=ProtocolInfo(name=proto.name, threshold=proto.threshold,
                              resize="bicubic" if "bicubic" in proto.interpolation else "bilinear",
                              details=proto.info()),
        metrics={k: Metric(**v) for k, v in computed["metrics"].items()},
        breakdowns={kind: {g: {k: Metric(**v) for k, v in ms.items()} for g, ms in groups.items()}
                    for kind, groups in computed["breakdowns"].items()},
        counts=Counts(samples=len(labels), real=labels.count(0), fake=labels.count(1)),
        complete=True,
        provenance=collect_provenance(command or " ".join(sys.argv), seeds={"bootstrap": seed},
                                      timings={"load_s": load_s, "predict_s": predict_s,
                                               "total_s": time.perf_counter() - start}),
        info=json.loads(json.dumps(info, default=str)),
    )
    samples_path = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        samples_path = out.with_suffix(".samples.jsonl")
        fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".jsonl.tmp")
        with os.fdopen(fd, "w") as f:
            for record in records:
                f.write(json.dumps(record, default=str, sort_keys=True) + "\n")
        os.replace(tmp, samples_path)
        save_results(results, out)
    return EvalOutput(results, out, samples_path)


__all__ = ["run_eval", "EvalOutput", "LocalizerError"]
