"""FOCAL's test-time clustering (dolos_baselines.focal.clustering): methods, rules, score map, fast vs exact.

Feature maps are synthetic: one unit vector per region plus Gaussian noise, L2-normalised like
FOCAL's features; grids stay at or below 48x48 because exact HDBSCAN is slow.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hdbscan")

from dolos_baselines.focal.clustering import (  # noqa: E402
    cluster,
    forged_mask,
    hdbscan_dense,
    hdbscan_exact,
    hdbscan_fast,
    labels_to_mask,
    nearest,
)

METHODS = ("hdbscan", "hdbscan-fast", "kmeans")


def feature_map(size: int = 48, channels: int = 16, *, blob: bool = True, second_mode: bool = False,
                noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features ``(size, size, channels)``, the forged blob and the second background mode (left third)."""
    rng = np.random.default_rng(seed)
    region = np.zeros((size, size), np.int64)
    if second_mode:
        region[:, : size // 3] = 2
    forged = np.zeros((size, size), bool)
    if blob:
        forged[size * 7 // 24: size * 2 // 3, size // 2: size * 7 // 8] = True  # 18x18 of 48x48: 14 %
        region[forged] = 1
    feats = np.eye(channels)[region] + noise * rng.normal(size=(size, size, channels))
    feats /= np.linalg.norm(feats, axis=2, keepdims=True)
    return feats.astype(np.float32), forged, region == 2


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal labelings up to renaming the clusters (noise, -1, must stay noise)."""
    a, b = a.ravel(), b.ravel()
    if not np.array_equal(a < 0, b < 0):
        return False
    pairs = set(zip(a[a >= 0].tolist(), b[b >= 0].tolist()))
    return len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize("method", METHODS)
def test_two_clean_clusters_give_the_blob(method: str) -> None:
    feats, blob, _ = feature_map()
    mask = forged_mask(feats, method=method)
    assert mask.dtype == bool and mask.shape == (48, 48)
    assert np.array_equal(mask, blob)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rule", ["largest-pristine", "minority-forged"])
def test_a_second_background_mode_is_called_forged_by_both_rules(method: str, rule: str) -> None:
    """Background modes of 33 % and 53 %, a 14 % blob: every method and rule flags blob + second mode."""
    feats, blob, second = feature_map(second_mode=True)
    mask = forged_mask(feats, method=method, rule=rule)
    assert mask[blob].all() and mask[second].all() and not mask[~blob & ~second].any()
    assert iou(mask, blob) == pytest.approx(blob.sum() / (blob | second).sum())


def test_largest_pristine_and_minority_forged_differ_when_the_rest_is_the_majority() -> None:
    labels = np.array([0] * 40 + [1] * 35 + [2] * 25 + [-1] * 5)  # largest cluster 40 of 105
    largest = labels_to_mask(labels, "largest-pristine")
    assert largest.sum() == 65 and not largest[:40].any()
    minority = labels_to_mask(labels, "minority-forged")
    assert np.array_equal(minority, ~largest)  # the smaller side of "largest vs the rest" is the largest cluster


def test_pure_noise_has_no_structure_for_hdbscan_while_kmeans_splits_it() -> None:
    feats = np.random.default_rng(1).normal(size=(40, 40, 16)).astype(np.float32)
    for method in ("hdbscan", "hdbscan-fast"):
        result = cluster(feats, method=method)
        assert (result.labels == -1).all() and not result.mask.any()
    assert 0.3 < forged_mask(feats, method="kmeans").mean() <= 0.5  # k = 2 always finds "a forgery"


def test_an_authentic_image_gives_an_empty_mask_with_hdbscan() -> None:
    feats, _, _ = feature_map(blob=False)
    for method in ("hdbscan", "hdbscan-fast"):
        assert not forged_mask(feats, method=method).any()
    assert forged_mask(feats, method="kmeans").any()  # FOCAL's released code: a false alarm on every real image


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_method_equals_exact_hdbscan_up_to_its_point_limit(seed: int) -> None:
    """At most max_points points: the same partition as the hdbscan package (noisier maps included)."""
    feats, _, _ = feature_map(40, 24, second_mode=seed == 1, noise=(0.3, 0.6, 0.9)[seed], seed=seed)
    points = feats.reshape(-1, feats.shape[2])
    exact = hdbscan_exact(points)
    fast = hdbscan_fast(points)
    assert same_partition(exact, fast)
    assert iou(labels_to_mask(exact, "largest-pristine"), labels_to_mask(fast, "largest-pristine")) == 1.0


@pytest.mark.parametrize("second_mode", [False, True])
def test_fast_method_on_a_subsample_matches_exact_on_clean_maps(second_mode: bool) -> None:
    """Clean clusters (no noise points). On fuzzy maps, where exact HDBSCAN calls many points noise,
    the subsample's noise and cluster choice differ (IoU 0.45-0.95 at 256x256 on a CPU,
    benchmarks/focal_clustering.py and docs/baselines/focal.md)."""
    feats, _, _ = feature_map(second_mode=second_mode, noise=0.1)
    exact = cluster(feats, method="hdbscan").mask
    sub = cluster(feats, method="hdbscan-fast", max_points=1024)  # 1,024 of 2,304 points, sizes scaled
    assert iou(sub.mask, exact) >= 0.98


def test_fast_method_above_its_point_limit_labels_each_point_like_its_nearest_sample_point() -> None:
    """The subsample's labels are exact HDBSCAN of the subsample with sizes scaled by m / n; every
    other point -- noise included -- takes the label of its nearest subsample point."""
    feats, _, _ = feature_map(40, 16, second_mode=True, noise=0.6, seed=3)
    points = feats.reshape(-1, feats.shape[2])
    n, m = len(points), 800
    labels = hdbscan_fast(points, max_points=m, seed=5)
    pick = np.sort(np.random.default_rng(5).choice(n, size=m, replace=False))
    sub = hdbscan_dense(points[pick], round(200 * m / n), round(200 * m / n))
    assert np.array_equal(labels[pick], sub)
    rest = np.setdiff1d(np.arange(n), pick)
    assert np.array_equal(labels[rest], sub[nearest(points[rest], points[pick])])
    assert np.array_equal(hdbscan_fast(points, max_points=m, seed=5), labels)  # seeded: the same every call


def test_exact_hdbscan_is_stable_under_point_order_and_tiny_jitter_on_a_fuzzy_map() -> None:
    """Exact HDBSCAN's mask is a stable function of the point set: reordering the points or adding
    1e-5 jitter moves only the odd point sitting on a near tie (1-2 of 2,304 here; none on the
    benchmark's 256x256 maps). So where the fast method disagrees far more, the subsample is the cause."""
    feats, _, _ = feature_map(second_mode=True, noise=0.2, seed=2)  # exact calls 44 % of it noise
    points = feats.reshape(-1, feats.shape[2])
    exact = hdbscan_exact(points)
    mask = labels_to_mask(exact, "largest-pristine")
    assert 0.1 < (exact < 0).mean() < 0.9 and exact.max() >= 1  # fuzzy: noise and two clusters
    order = np.random.default_rng(0).permutation(len(points))
    permuted = np.empty_like(exact)
    permuted[order] = hdbscan_exact(points[order])
    assert np.array_equal(permuted < 0, exact < 0)
    assert iou(mask, labels_to_mask(permuted, "largest-pristine")) >= 0.995
    jitter = points + np.float32(1e-5) * np.random.default_rng(1).normal(size=points.shape).astype(np.float32)
    assert iou(mask, labels_to_mask(hdbscan_exact(jitter), "largest-pristine")) >= 0.995


@pytest.mark.parametrize("method", METHODS)
def test_score_map_thresholds_back_to_the_mask(method: str) -> None:
    feats, _, _ = feature_map(second_mode=True, noise=0.2)
    result = cluster(feats, method=method)
    assert result.score.dtype == np.float32 and result.score.shape == (48, 48)
    assert 0.0 <= result.score.min() and result.score.max() <= 1.0
    assert np.array_equal(result.score >= 0.5, result.mask) and np.array_equal(result.score > 0.5, result.mask)
    pristine = ~result.mask
    assert result.score[pristine].argmax() != result.score[pristine].argmin()  # ranked by distance, not flat


def test_an_empty_mask_scores_below_one_half() -> None:
    feats, _, _ = feature_map(blob=False)
    result = cluster(feats, method="hdbscan-fast")
    assert not result.mask.any() and result.score.max() < 0.5


def test_bad_input_is_refused_with_a_reason() -> None:
    feats, _, _ = feature_map(16, 4)
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        forged_mask(feats[..., 0])
    bad = feats.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        forged_mask(bad)
    with pytest.raises(ValueError, match="floating"):
        forged_mask(feats.astype(np.int32))
    with pytest.raises(ValueError, match="unknown clustering method"):
        forged_mask(feats, method="dbscan")
    with pytest.raises(ValueError, match="unknown clustering rule"):
        forged_mask(feats, rule="biggest")
    with pytest.raises(ValueError, match="takes no option max_points"):
        forged_mask(feats, method="kmeans", max_points=10)
    with pytest.raises(ValueError, match="min_cluster_size"):
        forged_mask(feats, min_cluster_size=1)
