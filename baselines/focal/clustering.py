"""Test-time clustering of one image's pixel features into a forgery mask (FOCAL's inference step).

FOCAL learns features in which the pristine pixels of an image sit together and the forged ones
apart; at test time it clusters them. The released code uses cosine k-means with k = 2 and calls
the smaller cluster forged; the paper uses HDBSCAN (``min_cluster_size=200``) and calls the largest
cluster pristine and every other cluster -- and noise -- forged. Both are offered here, together
with a fast method that reproduces exact HDBSCAN's labels at a cost a benchmark can pay.

Methods (``method=``)
---------------------
``hdbscan``
    Exact HDBSCAN of all points: ``hdbscan.HDBSCAN(min_cluster_size=200)`` with the package's
    other defaults (``min_samples = min_cluster_size``, Euclidean) but one: the spanning tree is
    exact (``approx_min_span_tree=False``; the package's default approximate tree changed the
    clustering of one of six 256x256 benchmark maps, see :func:`hdbscan_exact`). About a minute
    per image at a 256x256 grid on a 2-core machine: the package's tree-based core distances
    degrade towards O(n^2) in high dimension.
``hdbscan-fast`` (the default)
    The same algorithm computed differently, exact up to ``max_points`` points, which defaults to
    what the ``device`` clusters in well under a second (:func:`default_max_points`):

    * on a CPU (``device="cpu"``, 4,096 points = a 64x64 grid): the pairwise distances come from
      one BLAS matrix product, the core distances from a partial sort of each row, and Prim's
      minimum spanning tree of the mutual-reachability graph is grown row by row without storing
      that graph (:func:`hdbscan_dense`);
    * on a CUDA GPU (262,144 points = a 512x512 grid): brute force in torch, core distances by
      ``kthvalue`` and the tree by Borůvka's algorithm, one pass over the distance matrix per
      round (:mod:`.brute_force`).

    Either way the hierarchy, condensed tree and cluster selection are the package's own code, so
    the labels equal exact HDBSCAN's up to ties between equal distances. Above ``max_points`` it
    runs the same exact clustering on a seeded
    random subsample of ``max_points`` points with ``min_cluster_size`` and ``min_samples`` scaled
    by ``max_points / n`` (a k-th-neighbour distance among ``n`` points estimates the density the
    way the ``k * m / n``-th does among ``m`` random ones, so the hierarchy keeps its shape), then
    gives every other point the label -- noise included -- of its nearest subsample point. That
    equals exact HDBSCAN on clean feature maps but not on fuzzy ones, where exact calls a fifth of
    the points noise: there the masks agree at IoU 0.45-0.95 at 256x256 on a CPU, while exact's own mask
    moves by less than 0.01 when 1% of the points are left out. Larger or spatially even samples,
    exact core distances and weighted condensed trees were measured and do not close the gap:
    exact labels need every point's ``min_samples``-th neighbour and the full spanning tree, which
    no CPU method here computes in 1 s at 65,536 x 32 on two cores; a GPU does, hence the
    device's limit (docs/baselines/focal.md).
``kmeans``
    Cosine (spherical) k-means, k = 2, 8 random restarts of at most 100 iterations, tolerance
    1e-4: the settings of ``torch_kmeans.KMeans`` as FOCAL's released code calls it.

Rules (``rule=``)
-----------------
``largest-pristine`` (the paper, and the default for HDBSCAN methods)
    The largest cluster is pristine; every other cluster and every noise point is forged. No
    cluster at all (HDBSCAN labels everything noise, as it does on a uniform authentic image)
    means no structure: the mask is empty.
``minority-forged`` (the released code, and the default for ``kmeans``)
    Split the points in two -- the two k-means clusters, or for HDBSCAN the largest cluster
    against everything else -- and call the smaller side forged. No cluster: empty mask.

On a multi-modal background (hair and skin, say, forming two pristine clusters) both rules can be
wrong: ``largest-pristine`` marks the second background mode forged, and k = 2 may split the
background modes and hide the forgery inside one of them; ``docs/baselines/focal.md`` gives the
measured figures.

Score map
---------
:func:`cluster` also returns a score map for AUC/AP: each pixel's Euclidean distance to the mean
feature of the pristine pixels, divided by the image's largest such distance (``r`` in [0, 1]),
and placed on the side of 0.5 that the mask says: ``0.49 * r`` for pristine pixels, ``0.51 + 0.49
* r`` for forged ones. Thresholding it at 0.5 (``>=`` or ``>``) gives back the clustering's mask
exactly, and within each side pixels are ranked by distance. An image with an empty mask scores
below 0.5 everywhere.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["METHODS", "RULES", "DEFAULT_RULES", "Clustering", "check_settings", "cluster", "effective_options",
           "forged_mask", "labels_to_mask",
           "score_map"]

METHODS: tuple[str, ...] = ("hdbscan-fast", "hdbscan", "kmeans")
RULES: tuple[str, ...] = ("largest-pristine", "minority-forged")
DEFAULT_RULES: dict[str, str] = {"hdbscan": "largest-pristine", "hdbscan-fast": "largest-pristine", "kmeans": "minority-forged"}

MIN_CLUSTER_SIZE = 200
"""FOCAL's (TDSC) value, quoted by the authors in FOCAL issue #22."""

_OPTIONS: dict[str, tuple[str, ...]] = {
    "hdbscan": ("min_cluster_size", "min_samples", "approx_min_span_tree"),
    "hdbscan-fast": ("min_cluster_size", "min_samples", "max_points", "seed", "device"),
    "kmeans": ("n_init", "max_iter", "tol", "seed"),
}


@dataclass
class Clustering:
    """One image's clustering: ``labels`` ``(H, W)`` int (-1 = noise), ``mask`` bool, ``score`` float32."""

    labels: np.ndarray
    mask: np.ndarray
    score: np.ndarray
    method: str
    rule: str


def forged_mask(features: np.ndarray, method: str = "hdbscan-fast", rule: str | None = None, **options: Any) -> np.ndarray:
    """The forged pixels of one image's feature map ``(H, W, C)``: bool ``(H, W)``, True = forged.

    ``rule`` defaults to the method's own (``largest-pristine`` for HDBSCAN, ``minority-forged`` for
    k-means); ``options`` are the method's parameters (see the module docstring).
    """
    return cluster(features, method=method, rule=rule, **options).mask


def cluster(features: np.ndarray, method: str = "hdbscan-fast", rule: str | None = None, **options: Any) -> Clustering:
    """Labels, mask and score map of one image's feature map ``(H, W, C)``."""
    points, (h, w) = _points(features)
    rule = check_settings(method, rule, options)
    if method == "kmeans":
        labels = kmeans_cosine(points, **options)
    elif method == "hdbscan":
        labels = hdbscan_exact(points, **options)
    else:
        labels = hdbscan_fast(points, **options)
    mask = labels_to_mask(labels, rule)
    return Clustering(labels.reshape(h, w), mask.reshape(h, w), score_map(points, mask).reshape(h, w), method, rule)


def check_settings(method: str, rule: str | None, options: dict[str, Any]) -> str:
    """Refuse an unknown method, rule or option (before any image is clustered); the rule to use."""
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; one of {', '.join(METHODS)}")
    rule = DEFAULT_RULES[method] if rule is None else rule
    if rule not in RULES:
        raise ValueError(f"unknown clustering rule {rule!r}; one of {', '.join(RULES)}")
    unknown = sorted(set(options) - set(_OPTIONS[method]))
    if unknown:
        raise ValueError(f"{method} takes no option {', '.join(unknown)}; it takes {', '.join(_OPTIONS[method])}")
    return rule


def effective_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the method's defaults filled in as they resolve (for a results file's record).

    Defaults come from the method's own function signature; ``min_samples`` None resolves to
    ``min_cluster_size`` and ``hdbscan-fast``'s ``max_points`` None to its device's limit.
    """
    function = {"kmeans": kmeans_cosine, "hdbscan": hdbscan_exact, "hdbscan-fast": hdbscan_fast}[method]
    params = inspect.signature(function).parameters
    full = {k: params[k].default for k in _OPTIONS[method]} | dict(options)
    if "min_samples" in full and full["min_samples"] is None:
        full["min_samples"] = full["min_cluster_size"]
    if method == "hdbscan-fast" and full["max_points"] is None:
        full["max_points"] = default_max_points(full["device"])
    return full


def _points(features: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    arr = np.asarray(features)
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"features must be an (H, W, C) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"features must be floating point, got {arr.dtype}")
    points = np.ascontiguousarray(arr.reshape(-1, arr.shape[2]), dtype=np.float32)
    if not np.isfinite(points).all():
        raise ValueError("features hold NaN or infinite values")
    return points, (arr.shape[0], arr.shape[1])


# -- rules and score ------------------------------------------------------------------------------

def labels_to_mask(labels: np.ndarray, rule: str) -> np.ndarray:
    """The forged points of flat ``labels`` (-1 = noise) under ``rule``; no cluster -> nothing forged."""
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return np.zeros(labels.shape, bool)
    counts = np.bincount(clustered)
    largest = int(np.argmax(counts))  # ties: the lowest label, deterministic
    forged = labels != largest
    if rule == "minority-forged" and forged.sum() > labels.size - forged.sum():
        forged = ~forged
    return forged


def score_map(points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Distance to the pristine mean, normalised per image, on the mask's side of 0.5 (module doc)."""
    pristine = points[~mask] if (~mask).any() else points
    dist = np.linalg.norm(points - pristine.mean(axis=0, dtype=np.float64), axis=1)
    top = float(dist.max())
    r = dist / top if top > 0 else np.zeros_like(dist)
    return np.where(mask, 0.51 + 0.49 * r, 0.49 * r).astype(np.float32)


# -- HDBSCAN --------------------------------------------------------------------------------------

def _min_samples(min_cluster_size: int, min_samples: int | None) -> int:
    if int(min_cluster_size) < 2:
        raise ValueError(f"min_cluster_size must be at least 2, got {min_cluster_size}")
    if min_samples is not None and int(min_samples) < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    return int(min_cluster_size if min_samples is None else min_samples)


def hdbscan_exact(points: np.ndarray, min_cluster_size: int = MIN_CLUSTER_SIZE, min_samples: int | None = None,
                  approx_min_span_tree: bool = False) -> np.ndarray:
    """``hdbscan.HDBSCAN(min_cluster_size, min_samples)`` of all points, with an exact spanning tree.

    The package's other defaults are kept but one: its ``approx_min_span_tree=True`` lets its
    Borůvka stop at a tree that is only approximately minimal, and on one of the six 256x256
    benchmark maps that gives a different clustering (mask IoU 0.22 against the exact tree, which
    ``fast_hdbscan``'s exact Borůvka reproduces point for point). Exact HDBSCAN is what this method
    promises, so the tree is exact unless ``approx_min_span_tree=True`` asks for the package's default.
    """
    import hdbscan

    _min_samples(min_cluster_size, min_samples)
    if len(points) < 2:
        return np.full(len(points), -1, np.int64)
    model = hdbscan.HDBSCAN(min_cluster_size=int(min_cluster_size), min_samples=min_samples,
                            approx_min_span_tree=bool(approx_min_span_tree))
    return model.fit_predict(points).astype(np.int64)


def hdbscan_dense(points: np.ndarray, min_cluster_size: int = MIN_CLUSTER_SIZE, min_samples: int | None = None) -> np.ndarray:
    """Exact HDBSCAN labels from one Gram matrix (fast for a few thousand points in any dimension).

    The steps are those of ``hdbscan``'s generic algorithm -- core distance = distance to the
    ``min_samples``-th other point, mutual reachability = the largest of the two core distances
    and the distance, Prim's minimum spanning tree, single linkage, condensed tree, excess-of-mass
    selection -- and the last three are the package's own functions. What differs is how the first
    two are computed: squared distances come from the float32 Gram matrix of the centred points
    (``|a|^2 + |b|^2 - 2ab``, one BLAS call) and each row of the mutual-reachability matrix is
    formed only when Prim's loop needs it, so no n x n float64 matrix is ever written (the
    package's generic path writes three, and that memory traffic is its cost). Prim's tree on
    squared distances is the tree on distances (same order); only its n - 1 edge weights are
    square-rooted. Float32 is enough because every mutual-reachability value is at least a core
    distance, far above the rounding of the Gram matrix.
    """
    from hdbscan._hdbscan_linkage import label
    from hdbscan.hdbscan_ import _tree_to_labels

    k = _min_samples(min_cluster_size, min_samples)
    n = len(points)
    if n < 2:
        return np.full(n, -1, np.int64)
    k = max(1, min(n - 1, k))  # what the package does with a min_samples above n - 1
    x = points.astype(np.float32)
    x -= x.mean(axis=0)  # centring shrinks the norms and so the cancellation in |a|^2 + |b|^2 - 2ab
    sq = np.einsum("ij,ij->i", x, x)
    gram = x @ x.T
    core2 = np.empty(n, np.float32)  # squared core distances; index k of a sorted row (self = 0)
    for start in range(0, n, 512):
        rows = gram[start:start + 512] * np.float32(-2.0)
        rows += sq[None, :]
        core2[start:start + 512] = np.partition(rows, k, axis=1)[:, k] + sq[start:start + 512]
    np.maximum(core2, 0.0, out=core2)
    edges = _prim_mutual_reachability(gram, sq, core2)
    edges[:, 2] = np.sqrt(np.maximum(edges[:, 2], 0.0))
    edges = edges[np.argsort(edges[:, 2], kind="stable")]
    labels = _tree_to_labels(None, label(edges), int(min_cluster_size))[0]
    return np.asarray(labels, np.int64)


def _prim_mutual_reachability(gram: np.ndarray, sq: np.ndarray, core2: np.ndarray) -> np.ndarray:
    """Prim's minimum spanning tree of the squared mutual-reachability graph, rows formed on the fly.

    Returns ``(n - 1, 3)`` float64 edges ``[from, to, squared weight]`` in the order Prim adds them.
    """
    n = len(gram)
    best = np.full(n, np.inf, np.float32)  # cheapest known edge into each point not yet in the tree
    source = np.zeros(n, np.intp)
    taken = np.zeros(n, np.float32)  # +inf once a point is in the tree, so it is never improved again
    row = np.empty(n, np.float32)
    edges = np.empty((n - 1, 3))
    node = 0
    taken[0] = np.inf
    for i in range(n - 1):
        np.multiply(gram[node], np.float32(-2.0), out=row)
        row += sq  # row + sq[node] = squared distances from node
        np.maximum(row, core2[node] - sq[node], out=row)
        row += sq[node]
        np.maximum(row, core2, out=row)
        row += taken
        better = row < best
        source[better] = node
        np.minimum(best, row, out=best)
        nxt = int(np.argmin(best))
        edges[i] = (source[nxt], nxt, best[nxt])
        taken[nxt] = np.inf
        best[nxt] = np.inf
        node = nxt
    return edges


def default_max_points(device: str) -> int:
    """Points ``hdbscan-fast`` clusters exactly on ``device``: 4,096 on a CPU, 262,144 on a GPU.

    Both are about what the device does in well under a second per image: a 64x64 grid by one
    Gram matrix on two CPU cores; a 512x512 grid by brute force on a GPU (:mod:`.brute_force`).
    """
    return 262144 if _on_cuda(device) else 4096


def _on_cuda(device: str) -> bool:
    return str(device).split(":")[0] == "cuda"


def hdbscan_fast(
    points: np.ndarray,
    min_cluster_size: int = MIN_CLUSTER_SIZE,
    min_samples: int | None = None,
    max_points: int | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """Exact HDBSCAN up to ``max_points`` points on ``device``; above, on a scaled subsample (module doc)."""
    k = _min_samples(min_cluster_size, min_samples)
    n = len(points)
    cap = default_max_points(device) if max_points is None else int(max_points)
    if cap < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    if n <= cap:
        return _exact_on(points, int(min_cluster_size), k, device)
    scale = cap / n
    sub_size = max(2, int(round(min_cluster_size * scale)))
    sub_k = max(1, int(round(k * scale)))
    pick = np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))
    sub_labels = _exact_on(points[pick], sub_size, sub_k, device)
    labels = sub_labels[nearest(points, points[pick])]
    labels[pick] = sub_labels
    return labels


def _exact_on(points: np.ndarray, min_cluster_size: int, min_samples: int, device: str) -> np.ndarray:
    """Exact HDBSCAN labels: brute-force Borůvka on a CUDA GPU; one Gram matrix and Prim elsewhere."""
    if not _on_cuda(device):
        return hdbscan_dense(points, min_cluster_size, min_samples)
    from .brute_force import hdbscan_brute_force

    return hdbscan_brute_force(points, min_cluster_size, min_samples, device=device)


def nearest(queries: np.ndarray, refs: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Index of each query's nearest reference point (Euclidean), in chunks to bound memory."""
    refs = refs.astype(np.float32)
    ref_sq = np.einsum("ij,ij->i", refs, refs)
    out = np.empty(len(queries), np.int64)
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk].astype(np.float32)
        d = q @ refs.T
        d *= -2.0
        d += ref_sq[None, :]  # |q|^2 is the same for every reference: the argmin does not need it
        out[start:start + chunk] = np.argmin(d, axis=1)
    return out


# -- k-means ---------------------------------------------------------------------------------------

def kmeans_cosine(points: np.ndarray, n_init: int = 8, max_iter: int = 100, tol: float = 1e-4, seed: int = 0, k: int = 2) -> np.ndarray:
    """Spherical k-means: points and centres on the unit sphere, nearest = highest cosine.

    Each restart starts from ``k`` distinct random points; the restart with the highest total
    cosine similarity wins. Labels are ordered by cluster size (0 = largest), so they do not
    depend on which restart won.
    """
    if n_init < 1 or max_iter < 1:
        raise ValueError("n_init and max_iter must be at least 1")
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    x = points / np.maximum(norms, 1e-12)
    n = len(x)
    if n < k:
        return np.zeros(n, np.int64)
    rng = np.random.default_rng(seed)
    best_labels, best_fit = np.zeros(n, np.int64), -np.inf
    for _ in range(int(n_init)):
        centres = x[rng.choice(n, size=k, replace=False)].astype(np.float64)
        for _ in range(int(max_iter)):
            sims = x @ centres.T
            labels = np.argmax(sims, axis=1)
            new = np.stack([x[labels == j].sum(axis=0) if (labels == j).any() else centres[j] for j in range(k)])
            new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
            shift = float(np.abs(new - centres).max())
            centres = new
            if shift < tol:
                break
        sims = x @ centres.T
        labels = np.argmax(sims, axis=1)
        fit = float(sims[np.arange(n), labels].sum())
        if fit > best_fit + 1e-9:
            best_fit, best_labels = fit, labels
    order = np.argsort(-np.bincount(best_labels, minlength=k), kind="stable")
    return np.argsort(order)[best_labels].astype(np.int64)
