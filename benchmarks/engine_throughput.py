"""Samples/s of a build on the local engine vs the Ray engine, and each engine's cost per sample.

    python benchmarks/engine_throughput.py [--images 120] [--sleep 0.05] [--workers 1 2]

Two builds, each on the local engine (inline for 1 worker, processes for more) and on a local
Ray instance (one actor per worker):

* ``telea``: the quickstart's shape at 128x128 (reals + one stroke-masked Telea fake each), CPU
  work only, so the engine's overhead shows against cheap samples;
* ``sleep``: the same with a generator that sleeps ``--sleep`` seconds per image and returns
  the image, a stand-in for a GPU model whose time is spent away from the CPU. Its ideal time is
  ``fakes x sleep / workers``; what is left over, per sample, is the pipeline's and the engine's.
  ``sleep/own`` runs it in its own Ray actor on a *declared* GPU (Ray counts it; the generator
  does not touch it), fed batches by the CPU actors: the path a real GPU generator takes.

Worker start-up (process spawn or actor creation, imports) is included, as a user would see it,
and shown apart: "first shard s" is the time to the first committed shard (start-up, planning
and the first shard through the pipeline). Starting the Ray instance itself (~5-8 s, once
per command) is printed apart. "overhead ms/sample" is (seconds - ideal) / samples, with ideal 0
for telea and the sleeping time for sleep. On a shared 2-core machine the figures move by 10-20%
between runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from helpers import make_image_folder  # noqa: E402

from dolos_bench.builder import pipeline  # noqa: E402
from dolos_bench.builder.base import Generator  # noqa: E402
from dolos_bench.builder.recipe import validate_recipe_data  # noqa: E402
from dolos_bench.data.dataset_io import shard_schema  # noqa: E402
from dolos_bench.engine.select import EngineChoice  # noqa: E402
from dolos_bench.registry import GENERATORS  # noqa: E402

SLEEP = float(os.environ.get("DOLOS_BENCH_SLEEP", "0.05"))


class SleepGenerator(Generator):
    """Returns the image unchanged after sleeping a fixed time per image: a GPU model's wait, no CPU."""

    name: ClassVar[str] = "sleep-bench"
    max_batch: ClassVar[int | None] = 8

    def inpaint(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        time.sleep(SLEEP)
        return image.copy()

    def inpaint_batch(self, images: list[np.ndarray], masks: list[np.ndarray], rngs: list[Any]) -> list[np.ndarray]:
        time.sleep(SLEEP * len(images))
        return [image.copy() for image in images]


def register() -> None:
    """Register the sleeping generator in this process (the worker processes and actors run it too)."""
    if "sleep-bench" not in GENERATORS:
        GENERATORS.register("sleep-bench")(SleepGenerator)


register()  # on import: the forkserver and each Ray worker import this module by name


def recipe(source: Path, generator: str, resources: dict[str, Any] | None = None) -> Any:
    return validate_recipe_data({
        "name": f"bench-{generator}",
        "seed": 0,
        "resolution": 128,
        "sources": [{"type": "folder", "path": str(source)}],
        "fakes": {"per_source": 1},
        "maskers": [{"type": "strokes"}],
        "generators": [{"type": generator, **(resources or {})}],
        "output": {"shard_size": 32},
    })


def first_shard(ticks: list[tuple[float, int]], start: float) -> float:
    """Seconds to the first committed shard: worker start-up, planning and one shard's pipeline."""
    return next((t - start for t, done in ticks if done > 0), float("nan"))


def start_ray() -> float:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    start = time.perf_counter()
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(num_cpus=os.cpu_count() or 2, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, runtime_env={
                 "env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "DOLOS_BENCH_SLEEP": str(SLEEP)},
                 "worker_process_setup_hook": f"{Path(__file__).stem}.register"})
    return time.perf_counter() - start


def main() -> None:
    global SLEEP
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--sleep", type=float, default=SLEEP, help="seconds per image of the sleeping generator")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    SLEEP = args.sleep
    os.environ["DOLOS_BENCH_SLEEP"] = str(SLEEP)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # the local worker processes must know the sleeping generator: their forkserver imports this module
    sys.path.insert(0, str(HERE))
    pipeline.PRELOAD = [*pipeline.PRELOAD, Path(__file__).stem]
    with tempfile.TemporaryDirectory() as tmp:
        source = make_image_folder(Path(tmp) / "src", n=args.images, size=(160, 160))
        shard_schema()  # import `datasets` now, outside every timing
        ray_start = start_ray()
        print(f"ray.init (local instance, once per command): {ray_start:.2f} s")
        print(f"{'build':<11}{'engine':>7}{'workers':>8}{'samples':>9}{'seconds':>9}{'samples/s':>11}"
              f"{'overhead ms/sample':>20}{'first shard s':>15}")
        cases = [("telea", None), ("sleep", None), ("sleep/own", {"num_gpus": 1})]
        for label, resources in cases:
            generator = "telea" if label == "telea" else "sleep-bench"
            for engine in ("local", "ray"):
                if resources and engine == "local":
                    continue
                for workers in args.workers:
                    r = recipe(source, generator, resources)
                    out = Path(tmp) / f"out-{label.replace('/', '-')}-{engine}-{workers}"
                    ticks: list[tuple[float, int]] = []
                    start = time.perf_counter()
                    report = pipeline.run_build(r, out, workers=workers, engine=EngineChoice(engine),  # type: ignore[arg-type]
                                                progress=lambda done, _t: ticks.append((time.perf_counter(), done)))
                    seconds = time.perf_counter() - start
                    n = report.counts["total"]
                    fakes = sum(c["fake"] for c in report.counts["splits"].values())
                    ideal = 0.0 if label == "telea" else fakes * SLEEP / (1 if resources else workers)
                    overhead = (seconds - ideal) / n * 1000
                    first = first_shard(ticks, start)
                    print(f"{label:<11}{engine:>7}{workers:>8}{n:>9}{seconds:>9.2f}{n / seconds:>11.1f}"
                          f"{overhead:>20.1f}{first:>15.2f}")
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
