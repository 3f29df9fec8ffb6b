"""The least time exact HDBSCAN of one feature grid can take on this machine, by brute force.

    python benchmarks/brute_force_floor.py                   # 256x256 grid, 32 channels
    python benchmarks/brute_force_floor.py --points 4096 --channels 288

Exact HDBSCAN needs every point's ``min_samples``-th neighbour distance and the minimum spanning
tree of the mutual-reachability graph. In 32 or more dimensions no tree prunes (see
docs/baselines/focal.md), so each of those is at least one pass over all ``n^2`` pairwise
distances: ``2 * n^2 * C`` floating-point operations per pass, before any selection. This script
measures the machine's matrix-product rate on the shapes such a pass could use -- a square
product (the best case, what a fused distance-and-select kernel could reach) and the skinny
``(n x C) @ (C x m)`` product that writes the distance block out (what NumPy or torch can run) --
in float32 and, through torch, bfloat16, and prints the seconds one pass and two passes take at
the fastest rate seen. Two passes (core distances, then at least one spanning-tree pass) is a
floor, not an estimate: Borůvka needs about log2 of the component count more.

It is the scale against which ``benchmarks/focal_clustering.py``'s CPU figures are read. The
square rates are reachable only by a kernel that forms each distance tile and selects from it in
registers, never writing the block out (NumPy and torch offer none); the block rates are what the
library products here deliver. bfloat16 keeps 8 bits of mantissa, so its distances do not keep
float32's order: a bfloat16 pass can only shortlist candidates for a float32 recheck.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

import numpy as np


def rate(run: Callable[[], object], flops: float, repeats: int) -> float:
    """GFLOP/s of ``run`` (best of ``repeats`` timed calls, after one warm-up call)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=256 * 256, help="points per image (a 256x256 grid: 65,536)")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--square", type=int, default=4096, help="side of the square product")
    parser.add_argument("--block", type=int, default=8192, help="columns of the skinny distance block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n, c, s, m = args.points, args.channels, args.square, args.block
    square = rng.random((s, s), dtype=np.float32)
    rows = rng.random((n, c), dtype=np.float32)
    cols = rng.random((c, m), dtype=np.float32)
    t_square, t_rows, t_cols = (torch.from_numpy(a) for a in (square, rows, cols))
    b_square, b_rows, b_cols = (t.bfloat16() for t in (t_square, t_rows, t_cols))
    square_flops, block_flops = 2.0 * s ** 3, 2.0 * n * m * c
    figures = {
        f"numpy float32 square {s}^2": rate(lambda: square @ square, square_flops, args.repeats),
        f"torch float32 square {s}^2": rate(lambda: t_square @ t_square, square_flops, args.repeats),
        f"torch bfloat16 square {s}^2": rate(lambda: b_square @ b_square, square_flops, args.repeats),
        f"numpy float32 block ({n}x{c})@({c}x{m})": rate(lambda: rows @ cols, block_flops, args.repeats),
        f"torch float32 block ({n}x{c})@({c}x{m})": rate(lambda: t_rows @ t_cols, block_flops, args.repeats),
        f"torch bfloat16 block ({n}x{c})@({c}x{m})": rate(lambda: b_rows @ b_cols, block_flops, args.repeats),
    }
    print(f"cores {os.cpu_count()}, torch threads {args.threads}, load average {os.getloadavg()[0]:.1f}")
    for name, gflops in figures.items():
        print(f"{name:48s} {gflops:8.1f} GFLOP/s")
    pass_flops = 2.0 * n * n * c
    print(f"one pass over {n:,}^2 distances x {c} channels = {pass_flops / 1e9:,.0f} GFLOP")
    for label, keep in (("any kernel, any precision", lambda k: True),
                        ("float32 (exact order of distances)", lambda k: "float32" in k),
                        ("library products (block written out)", lambda k: "block" in k)):
        name = max((k for k in figures if keep(k)), key=figures.__getitem__)
        seconds = pass_flops / figures[name] / 1e9
        print(f"floor, {label}: {name}: one pass {seconds:.2f} s, two passes {2 * seconds:.2f} s")

if __name__ == "__main__":
    main()
