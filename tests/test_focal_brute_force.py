"""Exact HDBSCAN by brute force on a torch device (dolos_baselines.focal.brute_force).

This is ``hdbscan-fast``'s path on a CUDA GPU, where it clusters a whole 256x256 grid exactly. The
same code runs on the CPU, only slower, so its exactness is checked here against the Gram-matrix
Prim path (itself checked against the hdbscan package in test_focal_clustering.py) and the package.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hdbscan")
torch = pytest.importorskip("torch")

from dolos_baselines.focal.brute_force import hdbscan_brute_force, mutual_reachability_mst  # noqa: E402
from dolos_baselines.focal.clustering import (  # noqa: E402
    _prim_mutual_reachability,
    cluster,
    default_max_points,
    hdbscan_dense,
    hdbscan_exact,
    hdbscan_fast,
)
from test_focal_clustering import feature_map, same_partition  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def points_of(size: int, noise: float, second_mode: bool, seed: int) -> np.ndarray:
    feats, _, _ = feature_map(size, 24, second_mode=second_mode, noise=noise, seed=seed)
    return feats.reshape(-1, feats.shape[2])


def prim_total(points: np.ndarray, k: int) -> float:
    """Total weight of the Gram-matrix Prim tree (distances) on the same points."""
    x = points.astype(np.float32) - points.astype(np.float32).mean(axis=0)
    sq = np.einsum("ij,ij->i", x, x)
    gram = x @ x.T
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0)
    core2 = np.partition(d2, k, axis=1)[:, k]
    edges = _prim_mutual_reachability(gram, sq, core2.astype(np.float32))
    return float(np.sqrt(np.maximum(edges[:, 2], 0)).sum())


@pytest.mark.parametrize("noise, second_mode, seed", [(0.3, False, 0), (0.6, True, 1), (0.9, True, 2), (0.2, True, 3)])
def test_brute_force_labels_equal_exact_hdbscan(noise: float, second_mode: bool, seed: int) -> None:
    """Clean and fuzzy maps (up to ~40 % noise points): the package's partition, point for point."""
    points = points_of(40, noise, second_mode, seed)
    brute = hdbscan_brute_force(points, 200, 200, device="cpu", chunk=256)  # several chunks per pass
    assert same_partition(brute, hdbscan_dense(points, 200))
    assert same_partition(brute, hdbscan_exact(points))


def test_the_tree_is_a_minimum_spanning_tree_of_the_mutual_reachability_graph() -> None:
    points = points_of(32, 0.6, True, 4)
    n = len(points)
    edges = mutual_reachability_mst(points, 50, device="cpu", chunk=100)
    assert edges.shape == (n - 1, 3)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(n - 1), (edges[:, 0].astype(int), edges[:, 1].astype(int))), shape=(n, n))
    assert connected_components(graph, directed=False)[0] == 1  # n - 1 edges joining every point: a tree
    assert edges[:, 2].sum() == pytest.approx(prim_total(points, 50), rel=1e-5)  # as light as Prim's


def test_chunk_size_does_not_change_the_labels() -> None:
    points = points_of(30, 0.6, True, 5)
    a = hdbscan_brute_force(points, 100, 100, chunk=7)
    b = hdbscan_brute_force(points, 100, 100, chunk=900)
    assert np.array_equal(a, b)


def test_tiny_inputs_and_duplicate_points() -> None:
    assert np.array_equal(hdbscan_brute_force(np.zeros((1, 3), np.float32), 2, 2), [-1])
    dup = np.repeat(np.eye(3, dtype=np.float32), 30, axis=0)  # zero distances: ties everywhere
    labels = hdbscan_brute_force(dup, 10, 10, chunk=16)
    assert same_partition(labels, hdbscan_dense(dup, 10, 10))


def test_default_point_limit_follows_the_device() -> None:
    assert default_max_points("cpu") == 4096
    assert default_max_points("cuda") == default_max_points("cuda:1") == 262144
    points = points_of(40, 0.6, True, 1)
    # the CPU keeps the Gram-matrix path (no torch work) and the same labels as before
    assert np.array_equal(hdbscan_fast(points, device="cpu"), hdbscan_dense(points, 200))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_whole_grid_is_clustered_exactly() -> None:
    feats, _, _ = feature_map(80, 24, second_mode=True, noise=0.6, seed=6)  # 6,400 points: above the CPU limit
    points = feats.reshape(-1, feats.shape[2])
    gpu = cluster(feats, method="hdbscan-fast", device="cuda")
    assert same_partition(gpu.labels.ravel(), hdbscan_dense(points, 200))


def test_float32_products_run_at_full_precision_and_the_setting_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """TF32 (set by "high" precision) would reorder near-equal distances on a GPU: brute force turns it off."""
    points = points_of(24, 0.6, True, 7)
    seen: list[str] = []
    real_addmm = torch.addmm

    def spy(*args, **kwargs):
        seen.append(torch.get_float32_matmul_precision())
        return real_addmm(*args, **kwargs)

    monkeypatch.setattr(torch, "addmm", spy)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        labels = hdbscan_brute_force(points, 60, 60)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    assert seen and set(seen) == {"highest"}
    assert same_partition(labels, hdbscan_dense(points, 60, 60))


def test_focal_warns_once_when_its_grid_is_clustered_from_a_subsample() -> None:
    from dolos_baselines.focal.task import FocalConfig, FocalTask, ClusterSettings

    task = FocalTask(FocalConfig(arch="tiny"), "full")
    task.clustering = ClusterSettings("hdbscan-fast", None, {"device": "cpu", "max_points": 100, "min_cluster_size": 20})
    feats = torch.nn.functional.normalize(torch.randn(2, 8, 12, 12), dim=1)  # 144 points > 100
    with pytest.warns(UserWarning, match="above hdbscan-fast's max_points"):
        task.maps_from_features(feats)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task.maps_from_features(feats)  # said once per localizer, not per batch
    small = FocalTask(FocalConfig(arch="tiny"), "full")
    small.clustering = ClusterSettings("hdbscan-fast", None, {"device": "cpu", "min_cluster_size": 20})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small.maps_from_features(feats)  # 144 points: exact, nothing to say
