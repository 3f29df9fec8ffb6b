"""The worker engine: plan order whatever the worker count, devices per worker, failures named."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dolos_bench.engine import InlineEngine, ProcessEngine, WorkerPlan, device_for, engine_for

# forkserver children rebuild workers by name; the server starts with this process's sys.path
sys.path.insert(0, str(Path(__file__).parent))
from engine_workers import SquareWorker  # noqa: E402

FACTORY = "engine_workers:SquareWorker"


def test_device_for_is_round_robin() -> None:
    assert [device_for(("cuda:0", "cuda:1"), i) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert device_for((), 3) == "cpu"


def test_inline_keeps_order_and_builds_the_worker_once() -> None:
    with InlineEngine().start(WorkerPlan(SquareWorker, {}, devices=("cuda:0",))) as pool:
        out = list(pool.map(range(10)))
        assert pool.worker.calls == 10
    assert [o[0] for o in out] == [i * i for i in range(10)]
    assert {o[1] for o in out} == {"cuda:0"}


@pytest.mark.parametrize("chunksize", [1, 3])
def test_processes_keep_plan_order_and_give_each_worker_its_device(chunksize: int) -> None:
    plan = WorkerPlan(FACTORY, {}, workers=2, devices=("cuda:0", "cuda:1"))
    with ProcessEngine(chunksize=chunksize).start(plan) as pool:
        out = list(pool.map(range(40)))
    assert [o[0] for o in out] == [i * i for i in range(40)]
    assert {o[1] for o in out} <= {"cuda:0", "cuda:1"}
    assert os.getpid() not in {o[2] for o in out}
    # each process built one worker with its own device: pids and devices pair up one to one
    assert len({(o[1], o[2]) for o in out}) == len({o[2] for o in out})


def test_unordered_gives_every_index_once() -> None:
    with ProcessEngine().start(WorkerPlan(FACTORY, {}, workers=2)) as pool:
        got = dict(pool.imap_unordered(list(range(7))))
    assert sorted(got) == list(range(7)) and got[5][0] == 25


@pytest.mark.parametrize("engine", [InlineEngine(), ProcessEngine(), ProcessEngine(parent_works=True)],
                         ids=["inline", "processes", "parent-works"])
def test_a_failing_unit_raises_its_own_error_naming_the_unit(engine) -> None:
    plan = WorkerPlan(FACTORY, {"fail_on": 3}, workers=2)
    with pytest.raises(ValueError, match="cannot square 3") as err:
        with engine.start(plan) as pool:
            list(pool.map(range(6), describe=lambda u: f"unit #{u}"))
    assert any("unit #3" in note for note in getattr(err.value, "__notes__", []))


def test_engine_for_picks_inline_for_one_worker() -> None:
    assert isinstance(engine_for(1), InlineEngine)
    assert isinstance(engine_for(2), ProcessEngine)


def test_units_go_to_their_home_worker_and_idle_workers_take_the_rest() -> None:
    """Homes are kept when the home has room; a worker with nothing of its own is never left idle."""
    plan = WorkerPlan(FACTORY, {}, workers=2, devices=("cuda:0", "cuda:1"))
    with ProcessEngine().start(plan) as pool:
        assert pool.workers == 2
        out = list(pool.map(range(40), home=lambda u: u % 2))
        assert [o[0] for o in out] == [i * i for i in range(40)]
        at_home = sum(o[1] == f"cuda:{i % 2}" for i, o in enumerate(out))
        assert at_home >= 30, at_home
        everything_on_0 = list(pool.map(range(40), home=lambda u: 0))
        assert [o[0] for o in everything_on_0] == [i * i for i in range(40)]
        assert {o[1] for o in everything_on_0} == {"cuda:0", "cuda:1"}


def test_two_maps_can_share_a_pool_one_feeding_the_other() -> None:
    """A stage's map may read another map's results on the same workers (prepare -> finish)."""
    with ProcessEngine().start(WorkerPlan(FACTORY, {}, workers=2)) as pool:
        first = pool.map(range(12))
        second = list(pool.map(o[0] for o in first))
    assert [o[0] for o in second] == [i**4 for i in range(12)]


def test_workers_know_their_index() -> None:
    plan = WorkerPlan(FACTORY, {}, workers=3)
    assert [plan.build(i).index for i in range(3)] == [0, 1, 2]


def test_the_parent_can_be_worker_0_while_the_processes_start() -> None:
    plan = WorkerPlan(FACTORY, {}, workers=2, devices=("cuda:0", "cuda:1"))
    with ProcessEngine(parent_works=True).start(plan) as pool:
        out = list(pool.map(range(60), home=lambda u: u % 2))
    assert [o[0] for o in out] == [i * i for i in range(60)]
    assert {o[2] for o in out if o[1] == "cuda:0"} == {os.getpid()}  # worker 0: a thread of this process
    assert os.getpid() not in {o[2] for o in out if o[1] == "cuda:1"}


def test_a_worker_process_that_cannot_start_is_an_error_not_a_smaller_pool() -> None:
    """With the parent working too, a failed process must not leave the parent doing everything quietly."""
    import time

    plan = WorkerPlan("engine_workers:ParentOnlyWorker", {"parent": os.getpid()}, workers=2)
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="a worker process could not start"):
        with ProcessEngine(parent_works=True).start(plan) as pool:
            for _ in range(200):  # keep asking for work until the failed start is seen
                list(pool.map(range(4)))
                time.sleep(0.01)
    assert time.perf_counter() - started < 30
