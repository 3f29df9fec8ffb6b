"""Samples/s of the CPU build pipeline at 256x256: pass-through reals and telea fakes, 1 and 2 workers.

    python benchmarks/build_throughput.py [--images 200] [--workers 1 2]

"pass-through" builds reals only (decode, preprocess, PNG encode, parquet write); "telea" makes
one stroke-masked Telea fake per real besides the real itself. Worker start-up (process spawn,
imports) is included, as a user would see it.

"floor" is the same decode + preprocess + PNG encode + parquet write as a pass-through build, in
one plain loop with no pipeline at all, measured in the same run: a 1-worker pass-through build
should be within ~10% of it, and N workers should divide it by nearly N. `datasets` (whose
Features give the shards their schema, ~1.3 s to import) is imported before anything is timed,
so that neither the floor nor the first build pays it.
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

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from dolos_bench.builder.pipeline import run_build  # noqa: E402
from dolos_bench.data.dataset_io import rows_to_table, shard_schema  # noqa: E402
from dolos_bench.data.images import encode_png, load_rgb, preprocess  # noqa: E402
from dolos_bench.builder.recipe import validate_recipe_data  # noqa: E402


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


def floor_seconds(source: Path, out: Path, resolution: int = 256, shard_size: int = 64) -> tuple[int, float]:
    """Decode, preprocess, PNG-encode (image + all-zero mask) and write parquet shards, nothing else."""
    start = time.perf_counter()
    files = sorted(p for p in source.rglob("*.png"))
    out.mkdir(parents=True)
    rows: list[dict] = []
    shards = 0

    def flush() -> None:
        nonlocal rows, shards
        if rows:
            pq.write_table(rows_to_table(rows), out / f"{shards:05d}.parquet", compression="zstd",
                           write_statistics=False)
            rows, shards = [], shards + 1

    for i, file in enumerate(files):
        image = preprocess(load_rgb(file), resolution, crop="center", upscale="skip", interpolation="lanczos").array
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
        rows.append({"id": f"{i:06d}", "image": {"bytes": encode_png(image, 1), "path": None},
                     "mask": {"bytes": encode_png(mask, 1), "path": None}, "label": 0, "source": "folder",
                     "source_id": file.stem, "generator": "real", "generator_config": "{}", "masker": "",
                     "parts": [], "perturbations": "[]", "seed": 0, "split": "train"})
        if len(rows) >= shard_size:
            flush()
    flush()
    return len(files), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        source = make_image_folder(Path(tmp) / "src", n=args.images, size=(320, 320))
        shard_schema()  # import `datasets` now, outside every timing
        print(f"{'pipeline':<14}{'workers':>8}{'samples':>9}{'seconds':>9}{'samples/s':>11}{'x floor':>9}")
        n, floor = floor_seconds(source, Path(tmp) / "floor")
        print(f"{'floor':<14}{1:>8}{n:>9}{floor:>9.2f}{n / floor:>11.1f}{1.0:>9.2f}")
        for generator in (None, "telea"):
            for workers in args.workers:
                r = validate_recipe_data(recipe(source, generator))
                out = Path(tmp) / f"out-{generator}-{workers}"
                start = time.perf_counter()
                report = run_build(r, out, workers=workers)
                seconds = time.perf_counter() - start
                n = report.counts["total"]
                speed = (floor / args.images) / (seconds / n)  # > 1: faster per sample than the floor
                print(f"{generator or 'pass-through':<14}{workers:>8}{n:>9}{seconds:>9.2f}{n / seconds:>11.1f}"
                      f"{speed:>9.2f}")


if __name__ == "__main__":
    main()
