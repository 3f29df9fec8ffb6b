"""Protocols: resizing, and the Dolos paper's numbers against an independent re-implementation.

The reference below restates the authors' evaluation (bit-ml/dolos,
``dolos/methods/patch_forensics/evaluate.py``): PIL's default resize of a float image, a strict
``> 0.5``, IoU with an empty union counting 1, x100; detection AP with Python's ``random``
seeded 1337 sampling ``min(#real, #fake)`` of each class, 5 repeats, mean and 2 std (ddof 0).
"""

from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.metrics import average_precision_score

from dolos_bench.eval.protocols import (
    INTERPOLATIONS,
    PROTOCOLS,
    dolos_detection_ap,
    dolos_localization_iou,
    dolos_results,
    get_protocol,
    resize_map,
)

# ---------------------------------------------------------------- the reference


def ref_iou(pred, true):
    inter = pred & true
    union = pred | true
    if union.sum() == 0:
        return 1.0
    return inter.sum() / union.sum()


def ref_localization(preds_sm, masks_lg, tau=0.5):
    ious = []
    for pred_sm, true_lg in zip(preds_sm, masks_lg):
        # float64 map, as the authors' np.zeros-backed prediction array; PIL makes it "F".
        pred_lg = np.array(Image.fromarray(pred_sm.astype(np.float64)).resize(true_lg.shape))
        ious.append(ref_iou((pred_lg > tau).astype(bool), true_lg.astype(bool)))
    return 100 * np.mean(ious)


def ref_detection(pred_real, pred_fake, seed=1337, repeats=5):
    random.seed(seed)
    num = min(len(pred_real), len(pred_fake))

    def np_sample(xs, n):
        return np.array(random.sample(list(xs), n))

    aps = []
    for _ in range(repeats):
        r = np_sample(pred_real, num)
        f = np_sample(pred_fake, num)
        true = np.hstack((np.zeros(num), np.ones(num)))
        aps.append(100 * average_precision_score(true, np.hstack((r, f))))
    return np.mean(aps), 2 * np.std(aps), aps


def _blob_set(n, size=256, small=(8, 19, 32), seed=0):
    """Fake masks (rectangles, some empty) and low-resolution maps that roughly find them."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n):
        mask = np.zeros((size, size), bool)
        if i % 7:
            y, x = rng.integers(0, size - 64, 2)
            h, w = rng.integers(16, 64, 2)
            mask[y:y + h, x:x + w] = True
        k = small[i % len(small)]
        coarse = cv2.resize(mask.astype(np.float32), (k, k), interpolation=cv2.INTER_AREA)
        m = np.clip(coarse * rng.uniform(0.4, 1.2) + rng.normal(0, 0.15, (k, k)), 0, 1)
        maps.append(m.astype(np.float32))
        masks.append(mask)
    return maps, masks


# ---------------------------------------------------------------- localization


def test_dolos_localization_matches_reference():
    maps, masks = _blob_set(24)
    ours = dolos_localization_iou(maps, masks)
    assert ours == pytest.approx(ref_localization(maps, masks), abs=1e-9)


def test_dolos_engine_path_equals_direct_function():
    """The runner's path (protocol resize -> state with the dolos protocol) gives the same IoU."""
    maps, masks = _blob_set(21, seed=3)
    proto = get_protocol("dolos")
    state = proto.make_state()
    for i, (m, k) in enumerate(zip(maps, masks)):
        state.update(proto.resize(m, k.shape), k, 1, sample_id=f"f{i}")
    res = state.compute(bootstrap=0)
    iou = res["metrics"]["pixel/iou@0.5/mean-of-images/fakes"]["value"]
    assert 100 * iou == pytest.approx(ref_localization(maps, masks), abs=1e-9)
    assert "map > t" in res["info"]["threshold_rule"]


def test_cv2_bicubic_is_not_the_dolos_resize():
    """Why the dolos protocol uses PIL: OpenCV's cubic flips thresholded pixels."""
    maps, masks = _blob_set(12, seed=5)
    flips = 0
    for m, k in zip(maps, masks):
        a = resize_map(m, k.shape, "pil-bicubic") > 0.5
        b = resize_map(m, k.shape, "bicubic") > 0.5
        flips += int(np.count_nonzero(a != b))
    assert flips > 0


def test_empty_union_counts_one():
    z = np.zeros((4, 4), np.float32)
    assert dolos_localization_iou([z], [np.zeros((16, 16), bool)]) == 100.0
    assert dolos_localization_iou([z + 0.9], [np.zeros((16, 16), bool)]) == 0.0


# ---------------------------------------------------------------- detection


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=30),
    st.lists(st.floats(0, 1), min_size=1, max_size=30),
    st.integers(0, 2**31),
)
def test_dolos_detection_matches_reference(reals, fakes, seed):
    mean, two_std, per = dolos_detection_ap(reals, fakes, seed=seed)
    r_mean, r_2std, r_per = ref_detection(reals, fakes, seed=seed)
    assert np.allclose(per, r_per, atol=1e-9)
    assert mean == pytest.approx(r_mean, abs=1e-9)
    assert two_std == pytest.approx(r_2std, abs=1e-9)


def test_dolos_detection_default_seed_and_fewer_fakes():
    rng = np.random.default_rng(0)
    reals = rng.beta(2, 5, 50).tolist()
    fakes = rng.beta(5, 2, 20).tolist()
    mean, two_std, per = dolos_detection_ap(reals, fakes)
    assert len(per) == 5
    r = ref_detection(reals, fakes)
    assert mean == pytest.approx(r[0], abs=1e-9) and two_std == pytest.approx(r[1], abs=1e-9)
    assert dolos_detection_ap(reals, fakes) == (mean, two_std, per)  # deterministic


def test_dolos_results_from_state():
    maps, masks = _blob_set(10, seed=9)
    proto = get_protocol("dolos")
    state = proto.make_state()
    rng = np.random.default_rng(1)
    for i, (m, k) in enumerate(zip(maps, masks)):
        state.update(proto.resize(m, k.shape), k, 1, sample_id=f"f{i}")
        r = rng.random((8, 8)).astype(np.float32) * 0.6
        state.update(proto.resize(r, k.shape), np.zeros_like(k), 0, sample_id=f"r{i}")
    out = dolos_results(state)
    assert out["dolos/localization/iou@0.5x100"] == pytest.approx(ref_localization(maps, masks), abs=1e-9)
    scores, labels = state.image_scores()
    exp = ref_detection(scores[~labels], scores[labels])
    assert out["dolos/detection/ap"]["mean"] == pytest.approx(exp[0], abs=1e-9)
    with pytest.raises(ValueError):
        dolos_results(get_protocol("default").make_state())


# ---------------------------------------------------------------- resize and registry


@pytest.mark.parametrize("interp", INTERPOLATIONS)
def test_resize_map_shape_dtype_clip(interp):
    rng = np.random.default_rng(0)
    m = rng.random((7, 9)).astype(np.float32)
    out = resize_map(m, (32, 20), interp)
    assert out.shape == (32, 20) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.array_equal(resize_map(m, (7, 9), interp), m)


def test_default_resize_is_opencv_bilinear():
    rng = np.random.default_rng(0)
    m = rng.random((16, 16)).astype(np.float32)
    exp = np.clip(cv2.resize(m, (64, 48), interpolation=cv2.INTER_LINEAR), 0, 1)
    assert np.array_equal(get_protocol("default").resize(m, (48, 64)), exp)


def test_protocol_registry_and_info():
    assert get_protocol("default").interpolation == "bilinear"
    d = get_protocol("dolos")
    assert (d.interpolation, d.strict, d.threshold, d.localization_on) == ("pil-bicubic", True, 0.5, "fakes")
    for p in PROTOCOLS.values():
        json.dumps(p.info())
    with pytest.raises(KeyError, match="known"):
        get_protocol("nope")
    with pytest.raises(ValueError):
        resize_map(np.zeros((2, 2)), (4, 4), "cubic-ish")
