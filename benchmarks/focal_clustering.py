"""Seconds per image of FOCAL's test-time clustering, and how close the fast method is to exact HDBSCAN.

    python benchmarks/focal_clustering.py                    # 64x64 and 256x256 grids, 32/128/288 channels
    python benchmarks/focal_clustering.py --exact-large      # also exact HDBSCAN at 256x256 (minutes per image)

Feature maps are synthetic stand-ins for FOCAL's: one unit vector per region (pristine background,
optionally a second background mode on the left 45% of the image, an elliptical forged blob of
~12% of the image), plus spatially smooth Gaussian noise (sigma 1 cell) of relative strength
``--noise`` levels, L2-normalised per pixel like FOCAL's features. ``noise`` 0.5 gives clean
clusters, 1.0 fuzzy ones on which exact HDBSCAN calls part of the image noise.

Timing: k-means and the fast method are called once to warm up (there is no JIT; the first call
pays page faults and library loading), then timed over ``--images`` different maps; exact HDBSCAN
is timed per map without a warm-up (its seconds dwarf any warm-up). The one-off import time of
the clustering module and ``hdbscan`` is printed separately and also folded into an "amortised"
figure over a run of ``--run-length`` images (1,000). "fast-cpu-s" is the fast method's CPU time
per image (all threads), which other jobs on a shared machine do not inflate the way they inflate
wall time.

Reference: exact HDBSCAN (the ``hdbscan`` package, ``min_cluster_size=200``, with an exact spanning
tree: ``approx_min_span_tree=False``, see ``hdbscan_exact``). Its labels are kept
in ``--reference-dir`` (one ``.npy`` per map, named by the map's sha256, the package version and
``min_cluster_size``), so the minutes it takes at 256x256 are paid once per map and a rerun reuses
them. At sizes above 128 without ``--exact-large`` the fast method is compared with the cached
exact labels of the maps that have them; with none cached it falls back to exact HDBSCAN at
128x128 with the same subsampling ratio (``max_points`` scaled by 1/4, i.e. the same fraction of
points clustered), on 1 map, and the output says which. That stand-in measured milder than the
real 256x256 comparison on the fuzziest maps (docs/baselines/focal.md).

``--device cuda`` runs ``hdbscan-fast`` on the GPU, where it clusters every point exactly by brute
force (``dolos_baselines.focal.brute_force``); with ``--exact-large`` that gives its seconds per
256x256 image and its agreement with the package at full size.

Exact's own sensitivity ("exact-vs-99%"): exact HDBSCAN of the first map with a seeded 1% of its
points left out, against exact of all points (mask IoU on the points both saw). It tells how much
exact's mask moves when the data move a little -- the scale against which a subsampling method's
disagreement should be read. Computed wherever exact of that size is (or is cached).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

T0 = time.perf_counter()
import numpy as np  # noqa: E402

from dolos_baselines.focal.clustering import MIN_CLUSTER_SIZE, cluster, hdbscan_exact, labels_to_mask  # noqa: E402

import hdbscan  # noqa: E402,F401  (imported here so its load time is counted once)

IMPORT_S = time.perf_counter() - T0
RULE = "largest-pristine"
DROP_FRACTION = 0.01


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


class ExactReference:
    """Exact HDBSCAN labels of flat points, computed once and kept under ``folder`` (None: not kept)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder) if folder else None
        self.seconds: list[float] = []  # wall seconds of the exact runs this process made

    def _path(self, points: np.ndarray) -> Path | None:
        if self.folder is None:
            return None
        digest = hashlib.sha256(np.ascontiguousarray(points, np.float32).tobytes()).hexdigest()[:24]
        shape = "x".join(map(str, points.shape))
        # "tree": exact spanning tree (approx_min_span_tree=False); earlier files without it hold the
        # package's default approximate tree and are not read
        return self.folder / f"exact-{shape}-{digest}-mcs{MIN_CLUSTER_SIZE}-hdbscan{hdbscan_version()}-tree.npy"

    def cached(self, points: np.ndarray) -> np.ndarray | None:
        path = self._path(points)
        return np.load(path) if path is not None and path.is_file() else None

    def labels(self, points: np.ndarray) -> np.ndarray:
        found = self.cached(points)
        if found is not None:
            return found
        start = time.perf_counter()
        labels = hdbscan_exact(points)
        self.seconds.append(time.perf_counter() - start)
        path = self._path(points)
        if path is not None:
            from dolos_bench.utils.files import atomic_output

            with atomic_output(path) as fh:
                np.save(fh, labels)
        return labels


def max_points(args: argparse.Namespace) -> int:
    from dolos_baselines.focal.clustering import default_max_points

    return default_max_points(args.device) if args.max_points is None else args.max_points


def hdbscan_version() -> str:
    from importlib.metadata import version

    return version("hdbscan")


def dropped(n: int, seed: int) -> np.ndarray:
    """The sorted indices kept when a seeded ``DROP_FRACTION`` of ``n`` points is left out."""
    return np.sort(np.random.default_rng(seed).choice(n, size=n - int(round(DROP_FRACTION * n)), replace=False))


def exact_stability(points: np.ndarray, full: np.ndarray, ref: ExactReference, compute: bool, seed: int) -> float:
    """Mask IoU of exact HDBSCAN without 1% of the points against exact of all, on the kept points."""
    keep = dropped(len(points), seed)
    labels = ref.labels(points[keep]) if compute else ref.cached(points[keep])
    if labels is None:
        return float("nan")
    return iou(labels_to_mask(full, RULE)[keep], labels_to_mask(labels, RULE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 128, 288])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 0.8, 1.0])
    parser.add_argument("--modes", type=int, nargs="+", default=[1, 2], help="background modes")
    parser.add_argument("--images", type=int, default=3, help="maps per setting")
    parser.add_argument("--max-points", type=int, default=None,
                        help="hdbscan-fast's max_points (default: the device's, 4,096 on a CPU, 262,144 on CUDA)")
    parser.add_argument("--device", default="cpu",
                        help="where hdbscan-fast clusters: cpu, or cuda (exact brute force on the whole grid)")
    parser.add_argument("--exact-large", action="store_true", help="run exact HDBSCAN at sizes above 128")
    parser.add_argument("--run-length", type=int, default=1000, help="images the import time is amortised over")
    parser.add_argument("--reference-max-channels", type=int, default=32,
                        help="above 128x128 without --exact-large or a cached reference: skip the 128x128 exact"
                             " reference above this width")
    parser.add_argument("--reference-dir", default="out/focal_clustering_exact",
                        help="where exact HDBSCAN labels are kept and reused ('' = keep nothing)")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is visible here")

    print(f"imports (numpy, clustering module, hdbscan): {IMPORT_S:.2f} s once per process;"
          f" hdbscan-fast on {args.device} (max_points {max_points(args)});"
          f" cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"fast-amortised = fast + imports / {args.run_length} images; exact references kept in"
          f" {args.reference_dir or '(nowhere)'}; 'cached' = exact not run here")
    print("size  ch  noise modes | s/img exact  kmeans   fast  fast-amortised fast-cpu-s | IoU fast-vs-exact (against)"
          " | exact-vs-99% | exact noise% | IoU vs blob: exact kmeans fast")
    print("IoU: masks under largest-pristine; ARI: adjusted Rand index of the labels (noise a label of its own)")
    ref = ExactReference(args.reference_dir)
    for size in args.sizes:
        for channels in args.channels:
            for noise in args.noise:
                for modes in args.modes:
                    run_setting(size, channels, noise, modes, args, ref)


def run_setting(size: int, channels: int, noise: float, modes: int, args: argparse.Namespace, ref: ExactReference) -> None:
    seeds = [1000 * size + 10 * channels + i for i in range(args.images)]
    pairs = [synthetic_features(size, channels, noise, modes, s) for s in seeds]
    maps, blobs = [p[0] for p in pairs], [p[1] for p in pairs]
    t_km, km, _ = timed(maps, "kmeans")
    t_fast, fast, fast_labels = timed(maps, "hdbscan-fast", max_points=args.max_points, device=args.device)
    amortised = t_fast + IMPORT_S / args.run_length
    flat = [f.reshape(-1, channels) for f in maps]
    compute = size <= 128 or args.exact_large
    ref.seconds.clear()
    if compute:
        exact_labels = [ref.labels(p) for p in flat]
    else:
        exact_labels = [ref.cached(p) for p in flat]
    exact_seconds = list(ref.seconds)
    have = [i for i, labels in enumerate(exact_labels) if labels is not None]
    stable = float("nan")
    if have:
        exact_masks = {i: labels_to_mask(exact_labels[i], RULE) for i in have}
        agree = float(np.mean([iou(fast[i].ravel(), exact_masks[i]) for i in have]))
        ari = float(np.mean([agreement(fast_labels[i], exact_labels[i]) for i in have]))
        against = f"exact at {size}x{size}" + ("" if len(have) == len(maps) else f", {len(have)} of {len(maps)} maps")
        noise_frac = float(np.mean([(exact_labels[i] < 0).mean() for i in have]))
        blob_exact = float(np.mean([iou(exact_masks[i], blobs[i].ravel()) for i in have]))
        stable = exact_stability(flat[have[0]], exact_labels[have[0]], ref, compute, seeds[have[0]])
    elif channels > args.reference_max_channels:
        agree, ari, against = float("nan"), float("nan"), "no reference: exact at 128x128 takes minutes at this width"
        noise_frac, blob_exact = float("nan"), float("nan")
    else:
        small = 128
        ratio_points = max(2, max_points(args) * (small * small) // (size * size))
        small_map = synthetic_features(small, channels, noise, modes, seeds[0])[0]
        small_flat = small_map.reshape(-1, channels)
        sub = cluster(small_map, "hdbscan-fast", max_points=ratio_points)
        small_labels = ref.labels(small_flat)
        agree = iou(sub.mask.ravel(), labels_to_mask(small_labels, RULE))
        ari = agreement(sub.labels, small_labels)
        noise_frac = float((small_labels < 0).mean())
        stable = exact_stability(small_flat, small_labels, ref, True, seeds[0])
        against = f"stand-in: exact at {small}x{small}, fast with max_points={ratio_points} (same fraction), 1 map"
        blob_exact = float("nan")
    ex_text = f"{np.mean(exact_seconds):10.2f}" if exact_seconds else f"{'cached' if have else 'skipped':>10}"
    blob_km = float(np.mean([iou(m, b) for m, b in zip(km, blobs)]))
    blob_fast = float(np.mean([iou(m, b) for m, b in zip(fast, blobs)]))
    print(f"{size:4d} {channels:3d} {noise:6.2f} {modes:5d} | {ex_text} {t_km:7.3f} {t_fast:6.3f} {amortised:10.3f}"
          f" {CPU_SECONDS['hdbscan-fast']:8.3f}  | IoU {agree:.3f} ARI {ari:.3f} ({against}) | {stable:.3f}"
          f" | {100 * noise_frac:5.1f} | {blob_exact:.3f} {blob_km:.3f} {blob_fast:.3f}",
          flush=True)


if __name__ == "__main__":
    main()
