"""Speed of ``bench eval`` by worker count and chunk size, and the cost of its checkpoints.

    python benchmarks/eval_throughput.py --samples 300

Builds a 256^2 dataset from the offline sample portraits (OpenCV inpainting; every sample in the
test split), then times ``run_eval`` of the ``ela`` baseline with results written (so chunks are
checkpointed): one process with one chunk, one process with 64-sample chunks (the checkpointing
overhead), two processes with 64-sample chunks, and finishing a run that was interrupted with
all chunks but one done. Torch and OpenCV run on one thread per process.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from dolos_bench.builder.pipeline import run_build  # noqa: E402
from dolos_bench.eval.config import ScoringConfig  # noqa: E402
from dolos_bench.eval.runner import EvalInterrupted, run_eval  # noqa: E402
from dolos_bench.builder.recipe import validate_recipe_data  # noqa: E402


def build(root: Path, samples: int) -> Path:
    recipe = validate_recipe_data({
        "name": "eval-bench", "seed": 1, "resolution": 256,
        "sources": [{"type": "sample", "count": max(2, (samples + 2) // 3)}],
        "fakes": {"per_source": 1, "assignment": "each"},
        "maskers": [{"type": "strokes"}], "generators": [{"type": "telea"}, {"type": "ns"}],
        "splits": {"train": 0.0, "validation": 0.0, "test": 1.0},
    })
    run_build(recipe, root / "ds")
    return root / "ds"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--chunk-size", type=int, default=64)
    args = parser.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = str(build(root, args.samples))
        chunk = args.chunk_size
        runs = [
            ("1 process, 1 chunk", dict(workers=1, chunk_size=10**9)),
            (f"1 process, chunks of {chunk}", dict(workers=1, chunk_size=chunk)),
            (f"2 processes, chunks of {chunk}", dict(workers=2, chunk_size=chunk)),
        ]
        def config(**kw: int) -> ScoringConfig:
            return ScoringConfig(model="ela", data=data, split="test", bootstrap=1000, **kw)

        n = 0
        for i, (label, kw) in enumerate(runs):
            t0 = time.perf_counter()
            result = run_eval(config(**kw), out=root / f"r{i}.json")
            seconds = time.perf_counter() - t0
            n = result.results.counts.samples
            print(f"{label:<28} {seconds:6.2f} s  {n / seconds:7.1f} samples/s")
        chunks = -(-n // chunk)
        out = root / "resume.json"
        try:
            run_eval(config(chunk_size=chunk), out=out, stop_after_chunks=chunks - 1)
        except EvalInterrupted:
            pass
        size = sum(p.stat().st_size for p in (root / ".resume.json.eval").iterdir()) / (chunks - 1)
        t0 = time.perf_counter()
        run_eval(config(chunk_size=chunk), out=out)
        seconds = time.perf_counter() - t0
        print(f"{'resume (1 of ' + str(chunks) + ' chunks left)':<28} {seconds:6.2f} s"
              f"   checkpoint: {size / 1024:.0f} KiB per chunk of {chunk}")


if __name__ == "__main__":
    main()
