"""Exact HDBSCAN of every point by brute force on a torch device: the GPU path of ``hdbscan-fast``.

On a CPU, exact HDBSCAN of a 256x256 feature grid (65,536 points of 32 or more dimensions) costs
minutes: trees do not prune in that many dimensions, and brute force is 65,536^2 distances per
pass. A GPU does such a pass in milliseconds, so there the exact algorithm itself is the fast
method, with no subsample and so no approximation:

1. core distances: the squared distance to the ``min_samples``-th other point, from chunks of
   rows of the squared distance matrix (``|a|^2 + |b|^2 - 2ab`` of the centred points, one matrix
   product per chunk) and ``kthvalue``;
2. the minimum spanning tree of the mutual-reachability graph (``max(core_a, core_b, d_ab)``) by
   Borůvka's algorithm: each round, one pass over the matrix finds every point's lightest edge to
   another component, each component keeps its lightest one, and those edges join the tree
   through a small minimum spanning forest of the components (which drops the cycles that equal
   weights can form); at most log2(n) rounds, about 10-16 in practice;
3. single linkage, condensed tree and excess-of-mass selection: the ``hdbscan`` package's own
   functions, as in :func:`dolos_baselines.focal.clustering.hdbscan_dense`.

No ``n x n`` matrix is stored: each pass forms ``chunk`` rows at a time. The labels equal
:func:`~dolos_baselines.focal.clustering.hdbscan_dense`'s (and so the package's) up to ties
between equal float32 distances; ``tests/test_focal_brute_force.py`` checks that on CPU, where the
same code runs, only slower (each pass costs about what the core-distance pass costs).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

__all__ = ["hdbscan_brute_force", "mutual_reachability_mst"]


def hdbscan_brute_force(points: np.ndarray, min_cluster_size: int, min_samples: int, device: str = "cpu",
                        chunk: int | None = None) -> np.ndarray:
    """Exact HDBSCAN labels (-1 = noise) of ``points`` ``(n, d)``, computed on ``device`` (module doc)."""
    from hdbscan._hdbscan_linkage import label
    from hdbscan.hdbscan_ import _tree_to_labels

    n = len(points)
    if n < 2:
        return np.full(n, -1, np.int64)
    k = max(1, min(n - 1, int(min_samples)))  # what the package does with a min_samples above n - 1
    edges = mutual_reachability_mst(points, k, device, chunk)
    edges = edges[np.argsort(edges[:, 2], kind="stable")]
    return np.asarray(_tree_to_labels(None, label(edges), int(min_cluster_size))[0], np.int64)


def _chunk_rows(n: int, device: Any, chunk: int | None) -> int:
    """Rows per pass: about 256 MB of float32 per chunk on a GPU, 32 MB on a CPU."""
    if chunk is not None:
        return max(1, int(chunk))
    budget = (1 << 26) if device.type == "cuda" else (1 << 23)
    return max(1, min(n, budget // max(1, n)))


@contextmanager
def _full_float32_matmul() -> Iterator[None]:
    """Turn TF32 off for the distance products (10-bit mantissas would reorder near-equal distances).

    ``torch.set_float32_matmul_precision("high")`` elsewhere in a process (training code often sets
    it) would otherwise let CUDA matrix products drop to TF32; the old setting is put back after.
    """
    import torch

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def mutual_reachability_mst(points: np.ndarray, k: int, device: str = "cpu", chunk: int | None = None) -> np.ndarray:
    """``(n - 1, 3)`` float64 edges ``[a, b, distance]`` of the mutual-reachability minimum spanning tree."""
    import torch
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

    dev = torch.device(device)
    n = len(points)
    rows = _chunk_rows(n, dev, chunk)
    with torch.no_grad(), _full_float32_matmul():
        x = torch.as_tensor(np.ascontiguousarray(points, np.float32), device=dev)
        x = x - x.mean(dim=0)  # smaller norms, less cancellation in |a|^2 + |b|^2 - 2ab
        sq = (x * x).sum(dim=1)

        def squared_distances(start: int) -> Any:
            block = torch.addmm(sq[None, :], x[start:start + rows], x.T, beta=1.0, alpha=-2.0)
            block += sq[start:start + rows, None]
            return block.clamp_min_(0.0)

        core2 = torch.empty(n, device=dev)
        for start in range(0, n, rows):
            core2[start:start + rows] = squared_distances(start).kthvalue(k + 1, dim=1).values  # self is the 1st

        component = torch.arange(n, device=dev)
        found: list[np.ndarray] = []
        count = n
        while count > 1:
            best = torch.empty(n, device=dev)
            partner = torch.empty(n, dtype=torch.long, device=dev)
            for start in range(0, n, rows):
                block = squared_distances(start)
                torch.maximum(block, core2[None, :], out=block)
                torch.maximum(block, core2[start:start + rows, None], out=block)
                block.masked_fill_(component[start:start + rows, None] == component[None, :], float("inf"))
                best[start:start + rows], partner[start:start + rows] = block.min(dim=1)
            # each component's lightest outgoing edge (lowest point index among equal weights)
            lightest = torch.full((n,), float("inf"), device=dev).scatter_reduce(0, component, best, "amin")
            is_lightest = best == lightest[component]
            index = torch.arange(n, device=dev)
            owner = torch.full((n,), n, dtype=torch.long, device=dev).scatter_reduce(
                0, component[is_lightest], index[is_lightest], "amin")
            chosen = owner[owner < n]
            a = chosen.cpu().numpy()
            b = partner[chosen].cpu().numpy()
            w = best[chosen].double().cpu().numpy()
            ids, comp = np.unique(component.cpu().numpy(), return_inverse=True)
            lo, hi = np.minimum(comp[a], comp[b]), np.maximum(comp[a], comp[b])
            # one edge per pair of components, the lightest (two components often pick the same one)
            order = np.lexsort((hi, lo, w))
            _, first = np.unique(lo[order] * len(ids) + hi[order], return_index=True)
            pick = order[first]
            # a spanning forest of the components over these edges drops the cycles equal weights can
            # form; scipy reads a 0 as "no edge", hence the +1 (weights are >= 0, the order is kept)
            graph = coo_matrix((w[pick] + 1.0, (lo[pick], hi[pick])), shape=(len(ids), len(ids))).tocsr()
            forest = minimum_spanning_tree(graph).tocoo()
            kept = dict(zip((lo[pick] * len(ids) + hi[pick]).tolist(), pick.tolist()))
            for i, j in zip(forest.row.tolist(), forest.col.tolist()):
                e = kept[min(i, j) * len(ids) + max(i, j)]
                found.append((a[e], b[e], np.sqrt(max(w[e], 0.0))))
            count, new = connected_components(forest, directed=False)
            component = torch.as_tensor(new[comp], device=dev)
    return np.asarray(found, np.float64).reshape(-1, 3)
