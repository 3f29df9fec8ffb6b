"""Eval and stress on the worker engine: one ScoringConfig down to every worker, one device per
worker, the same bytes for any worker count, failures that name their unit, Ctrl-C that ends workers."""

from __future__ import annotations

import json
import pickle
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

import numpy as np
import pytest

from dolos_bench.data.reader import open_split
from dolos_bench.engine import Engine, Pool, ProcessEngine, WorkerPlan
from dolos_bench.eval import work
from dolos_bench.eval.api import Localizer, LocalizerError, LocalizerOutput
from dolos_bench.eval.config import ScoringConfig
from dolos_bench.eval.runner import EvalInterrupted, run_eval
from dolos_bench.eval.stress import run_stress
from dolos_bench.eval.suite import validate_suite_data
from dolos_bench.eval.work import RunSetup, ScoringWorker, WorkUnit, worker_devices

from helpers import build_tiny, results_numbers

SUITE = {"name": "tiny", "seed": 5, "metric": "pixel/auc/pooled/all",
         "perturbations": [{"name": "noise", "chain": "noise(sigma={severity})", "severities": [4, 16]}]}


class Brightness(Localizer):
    """Map = brightness times ``gain``; remembers the device of every instance built in this process.

    ``fail_on`` raises on that sample; ``slow_ids`` sleep two minutes on a batch holding one (a
    unit still under way when Ctrl-C comes).
    """

    name = "brightness"
    built: ClassVar[list[str]] = []

    def __init__(self, device: str = "cpu", gain: float = 1.0, fail_on: str | None = None,
                 slow_ids: Sequence[str] = ()) -> None:
        super().__init__(device=device, gain=gain, fail_on=fail_on, slow_ids=list(slow_ids))
        self.device, self.gain, self.fail_on, self.slow_ids = device, float(gain), fail_on, set(slow_ids)
        type(self).built.append(device)

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        if self.fail_on is not None and self.fail_on in (ids or []):
            raise RuntimeError(f"cannot score {self.fail_on}")
        if self.slow_ids.intersection(ids or []):
            time.sleep(120)
        maps = [np.clip(im.astype(np.float32).mean(axis=2) / 255.0 * self.gain, 0, 1) for im in images]
        return LocalizerOutput(maps, [float(m.mean()) for m in maps])


MODEL = f"{__name__}:Brightness"


class SpecEcho(ScoringWorker):
    """What a worker process rebuilt from its spec: the spec itself, its device, its model and rows."""

    def __call__(self, unit: WorkUnit) -> tuple[RunSetup, str, float, int]:
        return self.spec, self.device, self.localizer.gain, len(self.ds)


class _DealingPool(Pool):
    def __init__(self, workers: list) -> None:
        self.workers = workers

    def map(self, units: Iterable[Any], *, describe: Callable[[Any], str] = repr) -> Iterator[Any]:
        for i, unit in enumerate(units):
            yield self.workers[i % len(self.workers)](unit)

    def imap_unordered(self, units: Sequence[Any], *, describe: Callable[[Any], str] = repr) -> Iterator[tuple[int, Any]]:
        yield from enumerate(self.map(units, describe=describe))


class InProcessPlanEngine(Engine):
    """Builds every worker of the plan in this process, each on its plan device, and deals units to
    them in turn: a process pool's placement without processes, so a faked ``torch.cuda`` reaches them."""

    def __init__(self) -> None:
        self.plans: list[WorkerPlan] = []
        self.workers: list[Any] = []

    @contextmanager
    def start(self, plan: WorkerPlan) -> Iterator[Pool]:
        self.plans.append(plan)
        self.workers = [plan.build(i) for i in range(plan.workers)]
        yield _DealingPool(self.workers)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("engine"), images=8, perturbations={"probability": 0.0, "chains": []})


def _config(dataset: Path, **kw: Any) -> ScoringConfig:
    return ScoringConfig(model=MODEL, data=str(dataset), split="train", bootstrap=20, protocol="dolos", **kw)


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.json"
    run_eval(_config(dataset), out=out)
    return out


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda says two GPUs are visible; nothing runs on them (the model is numpy)."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize(("workers", "chunk_size"), [(2, 3), (3, 5), (2, 1000)])
def test_workers_and_chunks_on_the_engine_do_not_change_a_byte(
        tmp_path: Path, dataset: Path, reference: Path, monkeypatch: pytest.MonkeyPatch, workers: int,
        chunk_size: int) -> None:
    engines: list[Engine] = []
    real = work.engine_for

    def recording(n: int, **kw: Any) -> Engine:
        engines.append(real(n, **kw))
        return engines[-1]

    monkeypatch.setattr(work, "engine_for", recording)
    out = tmp_path / "r.json"
    run_eval(_config(dataset, workers=workers, chunk_size=chunk_size), out=out)
    assert results_numbers(out) == results_numbers(reference)
    assert out.with_suffix(".samples.jsonl").read_bytes() == reference.with_suffix(".samples.jsonl").read_bytes()
    n_units = -(-len(open_split(dataset, "train")) // chunk_size)
    if n_units > 1:  # one unit is scored by the parent's own worker, without processes
        assert len(engines) == 1 and isinstance(engines[0], ProcessEngine)
    else:
        assert engines == []


def test_worker_devices_come_from_the_device_string(two_gpus) -> None:
    assert worker_devices("cuda") == ("cuda:0", "cuda:1")
    assert worker_devices(" CUDA ") == ("cuda:0", "cuda:1")
    assert worker_devices("cuda:1") == ("cuda:1",)
    assert worker_devices("cpu") == ("cpu",)


def test_each_worker_gets_its_own_gpu(tmp_path: Path, dataset: Path, reference: Path,
                                      monkeypatch: pytest.MonkeyPatch, two_gpus) -> None:
    engine = InProcessPlanEngine()
    monkeypatch.setattr(work, "engine_for", lambda n, **kw: engine)
    Brightness.built.clear()
    out = tmp_path / "gpu.json"
    run_eval(_config(dataset, device="cuda", workers=2, chunk_size=4), out=out)
    [plan] = engine.plans
    assert plan.devices == ("cuda:0", "cuda:1") and plan.workers == 2
    assert [w.device for w in engine.workers] == ["cuda:0", "cuda:1"]
    assert [w.localizer.device for w in engine.workers] == ["cuda:0", "cuda:1"]
    assert Brightness.built == ["cuda", "cuda:0", "cuda:1"]  # the parent's (identity, inline) + one per worker
    assert results_numbers(out) == results_numbers(reference)  # the device is no part of the numbers

    # stress spreads its grid points the same way
    engine.plans.clear()
    run_stress(_config(dataset, device="cuda", workers=2), suite=validate_suite_data(SUITE), out=tmp_path / "s.json")
    assert [w.localizer.device for w in engine.workers] == ["cuda:0", "cuda:1"]


def test_the_config_round_trips_to_a_worker_process(dataset: Path) -> None:
    config = _config(dataset, options={"gain": 0.5}, limit=5, workers=2, device="cpu")
    setup = RunSetup(config, chain_seed=3, run_key={"model": "x"})
    assert pickle.loads(pickle.dumps(setup)) == setup
    plan = WorkerPlan(SpecEcho, setup, workers=2, devices=worker_devices(config.device))
    with ProcessEngine().start(plan) as pool:
        [(spec, device, gain, rows)] = list(pool.map([WorkUnit(0, "chunk 1", 0, 5)]))
    assert spec == setup and spec.config == config and spec.config.options == {"gain": 0.5}
    assert device == "cpu" and gain == 0.5 and rows == 5  # model options and --limit reached the worker
    with pytest.raises(Exception, match="frozen"):
        config.workers = 3  # type: ignore[misc]


def test_config_checks_its_numbers() -> None:
    with pytest.raises(ValueError, match="chunk_size must be at least 1, got 0"):
        ScoringConfig(model=MODEL, data="d", chunk_size=0)
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        ScoringConfig(model=MODEL, data="d", workers=0)
    with pytest.raises(ValueError, match="(?i)extra"):
        ScoringConfig(model=MODEL, data="d", model_args={})  # an unknown field is an error, never dropped
    assert ScoringConfig(model=Path("m.onnx"), data=Path("ds")).data == "ds"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_model_failure_in_a_worker_names_its_unit(tmp_path: Path, dataset: Path, workers: int) -> None:
    ids = open_split(dataset, "train").column("id")
    out = tmp_path / "r.json"
    with pytest.raises(LocalizerError, match=rf"cannot score {ids[9]}") as err:
        run_eval(_config(dataset, workers=workers, chunk_size=4, options={"fail_on": ids[9]}), out=out)
    assert "(while working on chunk 3, rows 8:12)" in getattr(err.value, "__notes__", [])
    assert not out.exists() and not out.with_suffix(".samples.jsonl").exists()
    assert list((tmp_path / ".r.json.eval").glob("*.json"))  # finished chunks stay for the re-run


def test_ctrl_c_ends_the_worker_processes_at_once(tmp_path: Path, dataset: Path) -> None:
    ids = open_split(dataset, "train").column("id")
    out = tmp_path / "r.json"
    calls: list[int] = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:  # the first chunk is back; the other worker sleeps in chunk 2
            raise KeyboardInterrupt

    config = _config(dataset, workers=2, chunk_size=4, options={"slow_ids": ids[4:]})
    t0 = time.perf_counter()
    with pytest.raises(EvalInterrupted) as err:
        run_eval(config, out=out, progress=progress, command="bench eval z")
    assert time.perf_counter() - t0 < 60  # not the 120 s the unit under way would take
    n_chunks = -(-len(ids) // 4)
    assert str(err.value) == (f"interrupted: 1 of {n_chunks} chunks checkpointed in {tmp_path / '.r.json.eval'}/; "
                              "run the same command again to resume: bench eval z")
    assert [p.name for p in (tmp_path / ".r.json.eval").glob("*.json")] == ["0000.json"]
    assert json.loads((tmp_path / ".r.json.eval" / "0000.json").read_text())["unit"]["name"] == "chunk 1"
