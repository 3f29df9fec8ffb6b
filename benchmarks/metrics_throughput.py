"""Throughput and memory of the streaming metric engine against a per-image sklearn reference.

    python benchmarks/metrics_throughput.py --n 2000 --sizes 256 1024

For each size it prints images/s of ``MetricState.update`` (the full default metric set, with
breakdown groups) plus the one-off ``compute`` with 1,000 bootstrap resamples, and images/s of a
straightforward sklearn reference computing the same metrics on a subset (per-image sklearn
calls, pixels kept for the pooled metrics, extrapolated per image). Then it measures traced peak
memory after 1k and 10k images at 256^2 (it must not grow with the image count beyond a few
scalars per image), and the error of the binned pooled AUC/AP for several bin counts against the
exact mode, which is how the default of 10,000 bins was chosen.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import warnings

import numpy as np

from dolos_bench.eval.metrics import MetricState

GENS = ("lama", "repaint", "sd2", "ldm")
PARTS = ("eyes", "nose", "mouth", "skin")


def make_pool(size: int, k: int = 16, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """A few realistic samples to cycle through: blob masks, smooth noisy float32 maps."""
    import cv2

    rng = np.random.default_rng(seed)
    pool = []
    for i in range(k):
        label = i % 2
        mask = np.zeros((size, size), bool)
        if label:
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            ry, rx = rng.integers(size // 12, size // 5, 2)
            yy, xx = np.ogrid[:size, :size]
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        coarse = rng.random((size // 8, size // 8)).astype(np.float32)
        smap = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR) * 0.6
        smap = np.clip(smap + 0.35 * mask + rng.normal(0, 0.05, (size, size)), 0, 1).astype(np.float32)
        pool.append((smap, mask, label))
    return pool


def feed(state: MetricState, pool, n: int, offset: int = 0) -> None:
    for i in range(n):
        smap, mask, label = pool[i % len(pool)]
        state.update(
            smap, mask, label, sample_id=f"s{offset + i}",
            generator=GENS[i % 4] if label else "", parts=(PARTS[i % 4],) if label else (),
            perturbation=("none", "jpeg75")[i % 2 == 0 and i % 3 == 0], source="celebahq",
        )


def reference(pool, n: int, t: float = 0.5) -> float:
    """Seconds for sklearn to compute the same metric set on ``n`` images (no bootstrap)."""
    from sklearn import metrics as M

    t0 = time.perf_counter()
    ys, ss, yf, sf, labels, scores = [], [], [], [], [], []
    per: dict[str, list[float]] = {k: [] for k in ("iou", "f1", "p", "r", "mcc", "f1b", "auc", "ap", "fpa")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(n):
            smap, mask, label = pool[i % len(pool)]
            y, s = mask.ravel(), smap.ravel()
            pred = s >= t
            ys.append(y)
            ss.append(s)
            labels.append(label)
            scores.append(float(s.max()))
            if label:
                yf.append(y)
                sf.append(s)
                per["iou"].append(M.jaccard_score(y, pred))
                per["f1"].append(M.f1_score(y, pred))
                per["p"].append(M.precision_score(y, pred))
                per["r"].append(M.recall_score(y, pred))
                per["mcc"].append(M.matthews_corrcoef(y, pred))
                pr, rc, _ = M.precision_recall_curve(y, s)
                per["f1b"].append(float(np.nanmax(2 * pr * rc / (pr + rc))))
                per["auc"].append(M.roc_auc_score(y, s))
                per["ap"].append(M.average_precision_score(y, s))
            else:
                per["fpa"].append(float(pred.mean()))
        y_all, s_all = np.concatenate(ys), np.concatenate(ss)
        y_f, s_f = np.concatenate(yf), np.concatenate(sf)
        M.roc_auc_score(y_all, s_all)
        M.average_precision_score(y_all, s_all)
        M.roc_auc_score(y_f, s_f)
        M.average_precision_score(y_f, s_f)
        p_f = s_f >= t
        for f in (M.jaccard_score, M.f1_score, M.precision_score, M.recall_score, M.matthews_corrcoef):
            f(y_f, p_f)
        lab, sc = np.array(labels), np.array(scores)
        M.roc_auc_score(lab, sc)
        M.average_precision_score(lab, sc)
        M.accuracy_score(lab, sc >= t)
        M.balanced_accuracy_score(lab, sc >= t)
        M.roc_curve(lab, sc)
    return time.perf_counter() - t0


def bench_size(size: int, n: int, n_ref: int) -> None:
    pool = make_pool(size)
    feed(MetricState(), pool, 8)  # warm-up
    state = MetricState()
    t0 = time.perf_counter()
    feed(state, pool, n)
    t_upd = time.perf_counter() - t0
    t0 = time.perf_counter()
    state.compute(bootstrap=1000, seed=0)
    t_cmp = time.perf_counter() - t0
    t_ref = reference(pool, n_ref)
    ours = n / (t_upd + t_cmp)
    ref = n_ref / t_ref
    print(
        f"{size}x{size}: engine {n / t_upd:9.1f} img/s update-only, {ours:9.1f} img/s incl. compute "
        f"(compute+1000 bootstrap {t_cmp:.2f} s for {n} images) | sklearn reference {ref:6.2f} img/s "
        f"(on {n_ref} images) | speed-up {ours / ref:6.1f}x"
    )


def bench_memory(size: int = 256) -> None:
    pool = make_pool(size)
    state = MetricState()
    tracemalloc.start()
    feed(state, pool, 1000)
    cur1, peak1 = tracemalloc.get_traced_memory()
    feed(state, pool, 9000, offset=1000)
    cur2, peak2 = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t0 = time.perf_counter()
    state.compute(bootstrap=1000, seed=0)
    t_cmp = time.perf_counter() - t0
    mb = 1 / 2**20
    print(
        f"memory at {size}x{size} (tracemalloc, state + transient): after 1k images current "
        f"{cur1 * mb:.2f} MiB peak {peak1 * mb:.2f} MiB; after 10k current {cur2 * mb:.2f} MiB "
        f"peak {peak2 * mb:.2f} MiB; growth {(cur2 - cur1) / 9000:.0f} bytes/image; "
        f"compute() with 1000 bootstrap resamples on 10k images: {t_cmp:.2f} s"
    )


def bench_bins(size: int = 256, n: int = 200) -> None:
    pool = make_pool(size, k=32, seed=1)
    exact = MetricState(exact=True)
    feed(exact, pool, n)
    ref = exact.compute(bootstrap=0)["metrics"]
    for bins in (1000, 10000, 100000):
        st = MetricState(bins=bins)
        t0 = time.perf_counter()
        feed(st, pool, n)
        dt = (time.perf_counter() - t0) / n * 1e3
        res = st.compute(bootstrap=0)
        errs = []
        for name in ("pixel/auc/pooled/all", "pixel/ap/pooled/all", "pixel/auc/pooled/fakes", "pixel/ap/pooled/fakes"):
            errs.append(f"{name.split('/', 1)[1]} {abs(res['metrics'][name]['value'] - ref[name]['value']):.1e}")
        bound = res["info"]["pooled_auc_error_bound"]["all"]
        print(f"bins={bins:6d}: {dt:.2f} ms/image; |binned - exact|: " + ", ".join(errs) + f"; AUC bound {bound:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="images per size for the engine")
    ap.add_argument("--n-ref", type=int, default=None, help="images for the sklearn reference (default n/20, >= 20)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-bins", action="store_true")
    args = ap.parse_args()
    for size in args.sizes:
        n = args.n if size <= 256 else max(50, args.n // 16)
        n_ref = args.n_ref or max(20, n // 20)
        bench_size(size, n, n_ref)
    if not args.skip_memory:
        bench_memory()
    if not args.skip_bins:
        bench_bins()


if __name__ == "__main__":
    main()
