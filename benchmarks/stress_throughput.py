"""Speed of ``bench stress`` on the default suite, and what its checkpoints cost.

    python benchmarks/stress_throughput.py --samples 64

Builds a small 256^2 dataset from the offline sample portraits (OpenCV inpainting), then runs the
default suite (34 grid points + the clean pass) three ways and prints samples/s over the sweep:

* ``constant``: a localizer that returns a constant map -- the benchmark's own overhead (decode,
  perturb, resize, metric update, checkpoint, summary, plots);
* ``ela``: the error-level-analysis baseline (one JPEG round trip per image);
* ``ela x2``: the same with ``workers=2`` (grid points scored in two processes);
* ``resume``: the same ``ela`` run again after it was interrupted with every point but the last
  checkpointed, i.e. the cost of finishing from checkpoints (one point, loading 34 states,
  bootstrap, plots).

It also prints the size of one checkpoint file. Torch and OpenCV run on one thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from dolos_bench.eval.api import Localizer, LocalizerOutput  # noqa: E402
from dolos_bench.eval.config import ScoringConfig  # noqa: E402
from dolos_bench.report.plots import robustness_curves  # noqa: E402
from dolos_bench.eval.stress import StressInterrupted, run_stress  # noqa: E402
from dolos_bench.eval.suite import expand, load_suite  # noqa: E402


class ConstantLocalizer(Localizer):
    """A map of 0.5 everywhere: measures everything but the model."""

    name = "constant"

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        return LocalizerOutput([np.full(im.shape[:2], 0.5, np.float32) for im in images], [0.5] * len(images))


def build(root: Path, samples: int) -> Path:
    from dolos_bench.builder.pipeline import run_build
    from dolos_bench.builder.recipe import validate_recipe_data

    sources = max(2, (samples + 2) // 3)  # each source gives a real and two fakes
    recipe = validate_recipe_data({
        "name": "stress-bench", "seed": 1, "resolution": 256,
        "sources": [{"type": "sample", "count": sources}],
        "fakes": {"per_source": 1, "assignment": "each"},
        "maskers": [{"type": "strokes"}], "generators": [{"type": "telea"}, {"type": "ns"}],
        "splits": {"train": 0.0, "validation": 0.0, "test": 1.0},
    })
    out = root / "ds"
    run_build(recipe, out)
    return out


def timed(label: str, n_samples: int, points: int, fn) -> float:
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    rate = n_samples * points / seconds
    print(f"{label:<10} {seconds:7.1f} s   {rate:7.1f} samples/s   ({points} passes x {n_samples} samples)")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64, help="dataset size (reals + fakes, approximately)")
    parser.add_argument("--bootstrap", type=int, default=200)
    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    import cv2

    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = build(root, args.samples)
        from dolos_bench.data.reader import open_split

        n = len(open_split(data, "test"))
        points = len(expand(load_suite("default")[0])) + 1
        print(f"dataset: {n} samples at 256^2; default suite: {points - 1} grid points + clean")
        def config(model: str = "ela", **kw: int) -> ScoringConfig:
            return ScoringConfig(model=model, data=str(data), split="test", bootstrap=args.bootstrap, **kw)

        plots = robustness_curves
        timed("constant", n, points, lambda: run_stress(config(f"{__name__}:ConstantLocalizer"), out=root / "c.json",
                                                         plots=plots))
        timed("ela", n, points, lambda: run_stress(config(), out=root / "e.json", plots=plots))
        timed("ela x2", n, points, lambda: run_stress(config(workers=2), out=root / "e2.json", plots=plots))

        out = root / "r.json"
        try:
            run_stress(config(), out=out, stop_after_points=points - 1)
        except StressInterrupted:
            pass
        checkpoint = next((root / f".{out.name}.stress").glob("*.json"))
        sizes = [p.stat().st_size for p in (root / f".{out.name}.stress").glob("*.json")]
        print(f"checkpoints: {len(sizes)} files, {np.mean(sizes) / 1024:.0f} KiB each (e.g. {checkpoint.name})")
        timed("resume", n, points, lambda: run_stress(config(), out=out, plots=plots))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
