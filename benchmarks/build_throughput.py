"""Samples/s of the CPU build pipeline at 256x256: pass-through reals and telea fakes, 1 and 2 workers.

    python benchmarks/build_throughput.py [--images 200] [--workers 1 2]

"pass-through" builds reals only (decode, preprocess, PNG encode, parquet write: the floor of
every build); "telea" makes one stroke-masked Telea fake per real besides the real itself.
Worker start-up (process spawn, imports) is included, as a user would see it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import make_image_folder  # noqa: E402

from dolos_bench.build.pipeline import run_build  # noqa: E402
from dolos_bench.recipes import validate_recipe_data  # noqa: E402


def recipe(source: Path, generator: str | None) -> dict:
    data = {
        "name": f"bench-{generator or 'passthrough'}",
        "seed": 0,
        "resolution": 256,
        "sources": [{"type": "folder", "path": str(source)}],
        "fakes": {"per_source": 0 if generator is None else 1},
        "output": {"shard_size": 64},
    }
    if generator:
        data["maskers"] = [{"type": "strokes"}]
        data["generators"] = [{"type": generator}]
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        source = make_image_folder(Path(tmp) / "src", n=args.images, size=(320, 320))
        print(f"{'pipeline':<14}{'workers':>8}{'samples':>9}{'seconds':>9}{'samples/s':>11}")
        for generator in (None, "telea"):
            for workers in args.workers:
                r = validate_recipe_data(recipe(source, generator))
                out = Path(tmp) / f"out-{generator}-{workers}"
                start = time.perf_counter()
                report = run_build(r, out, workers=workers)
                seconds = time.perf_counter() - start
                n = report.counts["total"]
                print(f"{generator or 'pass-through':<14}{workers:>8}{n:>9}{seconds:>9.2f}{n / seconds:>11.1f}")


if __name__ == "__main__":
    main()
