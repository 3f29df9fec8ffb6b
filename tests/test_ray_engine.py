"""The Ray engine: the same workers as the local engines, on Ray actors, and the same bytes.

One local Ray instance serves the whole module (``ray.init`` costs seconds): two CPUs, one
*declared* GPU (Ray only counts it; the generators that "hold" it are OpenCV ones that ignore
their device), loopback only, usage stats off. Every test that needs Ray takes the ``ray_session``
fixture, so without Ray they are skipped with the reason, and the rest still run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
from click.testing import CliRunner

from dolos_bench.builder.pipeline import BuildInterrupted, run_build
from dolos_bench.builder.recipe import load_recipe
from dolos_bench.cli import main
from dolos_bench.engine import Worker, WorkerPlan
from dolos_bench.engine.select import EngineChoice
from dolos_bench.errors import UserError
from dolos_bench.eval.api import Localizer, LocalizerOutput
from dolos_bench.eval.config import ScoringConfig
from dolos_bench.eval.runner import run_eval

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from helpers import build_tiny, folder_hashes, make_image_folder, results_numbers, tiny_recipe  # noqa: E402

RAY = EngineChoice("ray")
HERE = Path(__file__).stem  # what the actors import this module as (tests/ is on their PYTHONPATH)


@pytest.fixture(scope="module")
def ray_session() -> Any:
    ray = pytest.importorskip("ray", reason="the Ray engine needs the `ray` extra: pip install 'dolos-bench[ray]'")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


# -- workers the actors rebuild by name --------------------------------------------------------------


class Square(Worker):
    def __call__(self, unit: int) -> tuple[int, str, int]:
        if unit == self.spec.get("fail_on"):
            raise ValueError(f"cannot square {unit}")
        if unit == self.spec.get("die_on"):
            os._exit(3)  # the actor's process dies, as on a lost node or an out-of-memory kill
        return unit * unit, self.device, os.getpid()


class Brightness(Localizer):
    """Map = brightness: deterministic, numpy only."""

    name = "brightness"

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        maps = [np.clip(im.astype(np.float32).mean(axis=2) / 255.0, 0, 1) for im in images]
        return LocalizerOutput(maps, [float(m.mean()) for m in maps])


# -- the pool --------------------------------------------------------------------------------------


def test_a_ray_pool_keeps_order_devices_homes_and_names_a_failing_unit(ray_session) -> None:
    from dolos_bench.engine.ray import RayEngine

    plan = WorkerPlan(f"{HERE}:Square", {}, workers=2, devices=("cuda:0", "cuda:1"))
    with RayEngine().start(plan) as pool:
        assert pool.workers == 2
        out = list(pool.map(range(30), home=lambda u: u % 2))
        assert [o[0] for o in out] == [i * i for i in range(30)]
        assert len({(o[1], o[2]) for o in out}) == 2 and os.getpid() not in {o[2] for o in out}
        assert sum(o[1] == f"cuda:{i % 2}" for i, o in enumerate(out)) >= 20  # homes kept, mostly
        got = dict(pool.imap_unordered(list(range(7))))
        assert sorted(got) == list(range(7)) and got[5][0] == 25
        second = list(pool.map(o[0] for o in pool.map(range(9))))  # one map feeding another
        assert [o[0] for o in second] == [i**4 for i in range(9)]
    with pytest.raises(ValueError, match="cannot square 3") as err:
        with RayEngine().start(WorkerPlan(f"{HERE}:Square", {"fail_on": 3}, workers=2)) as pool:
            list(pool.map(range(6), describe=lambda u: f"unit #{u}"))
    assert any("unit #3" in note for note in getattr(err.value, "__notes__", []))


def test_a_unit_that_keeps_killing_its_worker_is_reported_with_its_ids(ray_session) -> None:
    from dolos_bench.engine.ray import RayEngine, UnitFailed

    engine = RayEngine(max_restarts=1, max_task_retries=1)
    with pytest.raises(UnitFailed, match=r"unit #3: its Ray worker died"):
        with engine.start(WorkerPlan(f"{HERE}:Square", {"die_on": 3}, workers=1)) as pool:
            list(pool.map(range(6), describe=lambda u: f"unit #{u}"))


def test_ctrl_c_ends_the_actors_at_once(ray_session) -> None:
    from dolos_bench.engine.ray import RayEngine

    ray = ray_session
    with pytest.raises(KeyboardInterrupt):
        with RayEngine(name="interrupted").start(WorkerPlan(f"{HERE}:Square", {}, workers=2)) as pool:
            assert [n for n in ray.util.list_named_actors() if n.startswith("dolos-interrupted-")]
            for _ in pool.map(range(4)):
                raise KeyboardInterrupt
    assert not [n for n in ray.util.list_named_actors() if n.startswith("dolos-interrupted-")]
    assert ray.is_initialized()  # a session this process had before is left connected


def test_a_folder_a_worker_cannot_write_or_this_process_cannot_see_is_refused(ray_session, tmp_path: Path) -> None:
    from dolos_bench.engine.ray import RayEngine, RayEngineError, judge_probes

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(RayEngineError, match="cannot write to .*every node of the cluster can write"):
        with RayEngine(shared=[blocker / "out"]).start(WorkerPlan(f"{HERE}:Square", {})):
            pass
    # a worker wrote without error, yet its file is not here: a node-local folder, not a shared one
    with pytest.raises(RayEngineError, match="not visible here.*not shared"):
        judge_probes(tmp_path, [("10.0.0.7", "0123abcd", None)])
    with RayEngine(shared=[tmp_path / "fine"]).start(WorkerPlan(f"{HERE}:Square", {})) as pool:
        assert list(pool.map([2]))[0][0] == 4
    assert list((tmp_path / "fine").iterdir()) == []  # the probes are gone


def test_engine_choice_errors_are_one_line_user_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Ray needed: a missing Ray and a stray --address are said before any work starts."""
    import importlib.util

    with pytest.raises(UserError, match="--address names a Ray cluster"):
        EngineChoice("local", "auto")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'dolos-bench\[ray\]'"):
        EngineChoice("ray")
    with pytest.raises(UserError, match=r"needs Ray"):
        ScoringConfig(model="m", data="d", engine="ray")


# -- the build -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-build")
    return tiny_recipe(root / "tiny.yaml", make_image_folder(root / "src", n=10))


@pytest.fixture(scope="module")
def reference_build(tmp_path_factory, recipe_path: Path) -> Path:
    out = tmp_path_factory.mktemp("ray-ref") / "ds"
    run_build(load_recipe(recipe_path), out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_build_on_ray_is_byte_identical_to_the_local_one(ray_session, tmp_path: Path, recipe_path: Path,
                                                           reference_build: Path, workers: int) -> None:
    out = tmp_path / "ds"
    result = CliRunner().invoke(main, ["build", str(recipe_path), "--out", str(out), "--quiet", "--engine", "ray",
                                       "--workers", str(workers)])
    assert result.exit_code == 0, result.output
    assert folder_hashes(out) == folder_hashes(reference_build)  # the reference: 1 local worker
    if workers == 2:  # and 2 local workers make it too
        run_build(load_recipe(recipe_path), tmp_path / "local2", workers=2)
        assert folder_hashes(tmp_path / "local2") == folder_hashes(reference_build)


@pytest.mark.slow
def test_a_build_stopped_on_ray_resumes_on_ray_then_locally_to_the_same_bytes(
        ray_session, tmp_path: Path, recipe_path: Path, reference_build: Path) -> None:
    out, recipe, seen = tmp_path / "ds", load_recipe(recipe_path), []
    with pytest.raises(BuildInterrupted):
        run_build(recipe, out, workers=2, engine=RAY, stop_after_shards=1)
    with pytest.raises(BuildInterrupted):
        run_build(recipe, out, workers=2, engine=RAY, stop_after_shards=1)
    report = run_build(recipe, out, progress=lambda done, total: seen.append((done, total)))
    assert report.resumed_shards == 2
    assert folder_hashes(out) == folder_hashes(reference_build)
    assert seen[0][0] > 0 and seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.slow
def test_an_actor_killed_during_a_build_is_restarted_and_nothing_is_lost(
        ray_session, tmp_path: Path, recipe_path: Path, reference_build: Path) -> None:
    """Ray restarts the killed actor and retries its units; each shard is committed once, in order."""
    ray, killed, seen = ray_session, [], []

    def kill_one(done: int, total: int) -> None:
        seen.append(done)
        if killed or done == 0:
            return
        names = sorted(n for n in ray.util.list_named_actors() if n.startswith("dolos-build-1-"))
        if names:
            ray.kill(ray.get_actor(names[0]), no_restart=False)
            killed.append(names[0])

    out = tmp_path / "ds"
    report = run_build(load_recipe(recipe_path), out, workers=2, engine=RAY, progress=kill_one)
    assert killed, "no build actor was found to kill"
    assert seen == sorted(seen)  # the bar only moves forward, fed by the shards as they are committed
    assert folder_hashes(out) == folder_hashes(reference_build)
    assert report.counts["total"] == seen[-1]


@pytest.mark.slow
def test_a_gpu_generator_runs_in_its_own_actors_with_the_same_bytes(ray_session, tmp_path: Path) -> None:
    """``num_gpus`` puts a generator on its own (declared) GPU actor, fed batches by the CPU actors;
    the other generator stays inside the CPU actors."""
    recipe_file = tiny_recipe(tmp_path / "gpu.yaml", make_image_folder(tmp_path / "src", n=6),
                              generators=[{"type": "telea", "num_gpus": 1}, {"type": "ns", "num_cpus": 0}])
    recipe = load_recipe(recipe_file)
    run_build(recipe, tmp_path / "local", workers=2)
    shapes: list[tuple[str, float]] = []
    original = RAY.engine

    def recording(choice: EngineChoice, workers: int, **kw: Any):
        shapes.append((kw.get("name") or "", kw.get("num_gpus", 0.0)))
        return original.__func__(choice, workers, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EngineChoice, "engine", recording)
        run_build(recipe, tmp_path / "ray", workers=1, engine=RAY)
    assert ("generator-telea", 1.0) in shapes and not any(name == "generator-ns" for name, _ in shapes)
    assert folder_hashes(tmp_path / "ray") == folder_hashes(tmp_path / "local")


# -- eval and stress ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("ray-eval"), images=8, perturbations={"probability": 0.0, "chains": []})


@pytest.mark.slow
def test_eval_and_stress_on_ray_give_the_local_results(ray_session, tmp_path: Path, dataset: Path) -> None:
    model = f"{HERE}:Brightness"
    base = {"model": model, "data": str(dataset), "split": "train", "bootstrap": 20, "protocol": "dolos"}
    run_eval(ScoringConfig(**base, chunk_size=3), out=tmp_path / "local.json")
    ticks: list[tuple[int, int]] = []
    run_eval(ScoringConfig(**base, chunk_size=3, workers=2, engine="ray"), out=tmp_path / "ray.json",
             progress=lambda done, total: ticks.append((done, total)))
    assert results_numbers(tmp_path / "ray.json") == results_numbers(tmp_path / "local.json")
    assert (tmp_path / "ray.samples.jsonl").read_bytes() == (tmp_path / "local.samples.jsonl").read_bytes()
    assert ticks == sorted(ticks) and ticks[-1][0] == ticks[-1][1] > 0  # fed by finished chunks

    suite = _suite_file(tmp_path, {"name": "tiny", "seed": 5, "metric": "pixel/auc/pooled/all", "perturbations": [
        {"name": "noise", "chain": "noise(sigma={severity})", "severities": [4, 16]}]})
    for engine in ("local", "ray"):
        result = CliRunner().invoke(main, [
            "stress", model, "--data", str(dataset), "--split", "train", "--bootstrap", "10", "--protocol", "dolos",
            "--suite", str(suite), "--out", str(tmp_path / engine / "stress.json"), "--engine", engine,
            "--workers", "2", "--quiet"])
        assert result.exit_code == 0, result.output
    assert results_numbers(tmp_path / "ray" / "stress.json") == results_numbers(tmp_path / "local" / "stress.json")


def _suite_file(root: Path, suite: dict[str, Any]) -> Path:
    import yaml

    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


# -- placement (no Ray needed) -------------------------------------------------------------------------


def _gpu_recipe(tmp_path: Path, asks: Sequence[float]):
    generators = [{"type": "telea", "name": f"g{i}", "num_gpus": gpus} for i, gpus in enumerate(asks)]
    return load_recipe(tiny_recipe(tmp_path / "gpus.yaml", tmp_path, generators=generators))


def test_gpus_are_shared_by_the_work_left_and_every_request_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dolos_bench.builder import pipeline
    from dolos_bench.engine import ray as ray_engine

    recipe = _gpu_recipe(tmp_path, [1, 1, 0.25, 1, 1, 1])
    apart = {g: ("cuda",) for g in range(6)}
    work = {0: 41500, 1: 10800, 2: 10800, 3: 10800, 4: 10800, 5: 10000}  # the Dolos CelebA-HQ recipe's fakes
    for gpus in (64.0, 4.0, 1.0):
        monkeypatch.setattr(ray_engine, "cluster_resources", lambda gpus=gpus: {"GPU": gpus, "CPU": 8.0})
        pools = pipeline._ray_inpainters(recipe, apart, 1, work)
        assert set(pools) == set(apart) and all(actors >= 1 for actors, _, _ in pools.values())
        assert sum(actors * each for actors, _, each in pools.values()) <= gpus  # nothing waits forever
        if gpus == 64.0:
            assert pools[0][0] > 3 * pools[1][0]  # the generator with 4x the samples gets about 4x the GPUs
            assert pools[2] == (29, 0.0, 0.25)  # a quarter-GPU generator: four actors per GPU


def test_ray_placement_stays_out_of_the_recipe_hash(tmp_path: Path) -> None:
    """A build started with one placement resumes with another: num_gpus/num_cpus never change a byte."""
    placed = _gpu_recipe(tmp_path, [1])
    plain = load_recipe(tiny_recipe(tmp_path / "plain.yaml", tmp_path, generators=[{"type": "telea", "name": "g0"}]))
    assert placed.generators[0].num_gpus == 1 and placed.generators[0].params == {}
    assert placed.sha256() == plain.sha256() and "num_gpus" not in placed.canonical_json()
