"""Seconds per image of FOCAL's test-time clustering, and how close the fast method is to exact HDBSCAN.

    python benchmarks/focal_clustering.py                    # 64x64 and 256x256 grids, 32/128/288 channels
    python benchmarks/focal_clustering.py --exact-large      # also exact HDBSCAN at 256x256 (minutes per image)

Feature maps are synthetic stand-ins for FOCAL's: one unit vector per region (pristine background,
optionally a second background mode on the left 45% of the image, an elliptical forged blob of
~12% of the image), plus spatially smooth Gaussian noise (sigma 1 cell) of relative strength
``--noise`` levels, L2-normalised per pixel like FOCAL's features. ``noise`` 0.5 gives clean
clusters, 1.0 fuzzy ones on which exact HDBSCAN calls part of the image noise.

Timing: each method is called once to warm up (there is no JIT; the first call pays page faults
and library loading), then timed over ``--images`` different maps; the one-off import time of the
clustering module and ``hdbscan`` is printed separately and also folded into an "amortised" figure
over a run of ``--run-length`` images (1,000). "fast-cpu-s" is the fast method's CPU time per image
(all threads), which other jobs on a shared machine do not inflate the way they inflate wall time. Exact HDBSCAN at 256x256 takes minutes per image, so without ``--exact-large`` the
fast method's agreement at that size is measured against exact HDBSCAN at 128x128 with the same
subsampling ratio (``max_points`` scaled by 1/4, i.e. the same fraction of points clustered),
and the output says so.
"""

from __future__ import annotations

import argparse
import os
import time

T0 = time.perf_counter()
import numpy as np  # noqa: E402

from dolos_baselines.focal.clustering import cluster  # noqa: E402

import hdbscan  # noqa: E402,F401  (imported here so its load time is counted once)

IMPORT_S = time.perf_counter() - T0


def synthetic_features(size: int, channels: int, noise: float, modes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A FOCAL-like feature map ``(size, size, channels)`` and its forged blob (see module doc)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, channels))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    yy, xx = np.mgrid[:size, :size]
    region = np.zeros((size, size), np.int64)
    if modes == 2:
        region[:, : int(size * 0.45)] = 2
    cy, cx = size * rng.uniform(0.45, 0.6), size * rng.uniform(0.55, 0.7)
    blob = ((yy - cy) / (size * 0.18)) ** 2 + ((xx - cx) / (size * 0.22)) ** 2 <= 1
    region[blob] = 1
    jitter = gaussian_filter(rng.normal(size=(size, size, channels)).astype(np.float32), (1, 1, 0))
    jitter /= jitter.std()
    feats = centres[region] + noise * jitter / np.sqrt(channels)
    feats /= np.linalg.norm(feats, axis=2, keepdims=True)
    return feats.astype(np.float32), blob


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (noise = one more label): 1 = the same partition."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a.ravel(), b.ravel()))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


CPU_SECONDS: dict[str, float] = {}


def timed(maps: list[np.ndarray], method: str, **options) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
    """Wall seconds per map (after one warm-up call), the masks and the labels; CPU seconds go to CPU_SECONDS."""
    cluster(maps[0], method=method, **options)
    start, cpu = time.perf_counter(), time.process_time()
    results = [cluster(f, method=method, **options) for f in maps]
    CPU_SECONDS[method] = (time.process_time() - cpu) / len(maps)
    return (time.perf_counter() - start) / len(maps), [r.mask for r in results], [r.labels for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 128, 288])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 0.8, 1.0])
    parser.add_argument("--modes", type=int, nargs="+", default=[1, 2], help="background modes")
    parser.add_argument("--images", type=int, default=3, help="maps per setting")
    parser.add_argument("--max-points", type=int, default=4096, help="hdbscan-fast's max_points")
    parser.add_argument("--exact-large", action="store_true", help="run exact HDBSCAN at sizes above 128")
    parser.add_argument("--run-length", type=int, default=1000, help="images the import time is amortised over")
    parser.add_argument("--reference-max-channels", type=int, default=32,
                        help="above 128x128 without --exact-large: skip the 128x128 exact reference above this width")
    args = parser.parse_args()

    print(f"imports (numpy, clustering module, hdbscan): {IMPORT_S:.2f} s once per process;"
          f" cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"fast-amortised = fast + imports / {args.run_length} images")
    print("size  ch  noise modes | s/img exact  kmeans   fast  fast-amortised fast-cpu-s | IoU fast-vs-exact (against)"
          " | exact noise% | IoU vs blob: exact kmeans fast")
    print("IoU: masks under largest-pristine; ARI: adjusted Rand index of the labels (noise a label of its own)")
    for size in args.sizes:
        for channels in args.channels:
            for noise in args.noise:
                for modes in args.modes:
                    run_setting(size, channels, noise, modes, args)


def run_setting(size: int, channels: int, noise: float, modes: int, args: argparse.Namespace) -> None:
    seeds = [1000 * size + 10 * channels + i for i in range(args.images)]
    pairs = [synthetic_features(size, channels, noise, modes, s) for s in seeds]
    maps, blobs = [p[0] for p in pairs], [p[1] for p in pairs]
    t_km, km, _ = timed(maps, "kmeans")
    t_fast, fast, fast_labels = timed(maps, "hdbscan-fast", max_points=args.max_points)
    amortised = t_fast + IMPORT_S / args.run_length
    if size <= 128 or args.exact_large:
        t_ex, exact, exact_labels = timed(maps, "hdbscan")
        agree = float(np.mean([iou(a, b) for a, b in zip(fast, exact)]))
        ari = float(np.mean([agreement(a, b) for a, b in zip(fast_labels, exact_labels)]))
        against = f"exact at {size}x{size}"
        noise_frac = float(np.mean([(labels < 0).mean() for labels in exact_labels]))
        ex_text = f"{t_ex:10.2f}"
        blob_exact = float(np.mean([iou(e, b) for e, b in zip(exact, blobs)]))
    elif channels > args.reference_max_channels:
        agree, ari, against = float("nan"), float("nan"), "no reference: exact at 128x128 takes minutes at this width"
        noise_frac, ex_text, blob_exact = float("nan"), f"{'skipped':>10}", float("nan")
    else:
        small = 128
        ratio_points = max(2, args.max_points * (small * small) // (size * size))
        small_pairs = [synthetic_features(small, channels, noise, modes, s) for s in seeds]
        small_maps = [p[0] for p in small_pairs]
        sub = [cluster(f, "hdbscan-fast", max_points=ratio_points) for f in small_maps[:1]]
        ref = [cluster(f, "hdbscan") for f in small_maps[:1]]
        agree = float(np.mean([iou(a.mask, b.mask) for a, b in zip(sub, ref)]))
        ari = float(np.mean([agreement(a.labels, b.labels) for a, b in zip(sub, ref)]))
        noise_frac = float(np.mean([(b.labels < 0).mean() for b in ref]))
        against = f"exact at {small}x{small}, fast with max_points={ratio_points} (same fraction), 1 map"
        ex_text = f"{'skipped':>10}"
        blob_exact = float("nan")
    blob_km = float(np.mean([iou(m, b) for m, b in zip(km, blobs)]))
    blob_fast = float(np.mean([iou(m, b) for m, b in zip(fast, blobs)]))
    print(f"{size:4d} {channels:3d} {noise:6.2f} {modes:5d} | {ex_text} {t_km:7.3f} {t_fast:6.3f} {amortised:10.3f}"
          f" {CPU_SECONDS['hdbscan-fast']:8.3f}  | IoU {agree:.3f} ARI {ari:.3f} ({against}) | {100 * noise_frac:5.1f}"
          f" | {blob_exact:.3f} {blob_km:.3f} {blob_fast:.3f}",
          flush=True)


if __name__ == "__main__":
    main()
