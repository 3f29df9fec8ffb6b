"""The metric engine against slow, obvious references (sklearn / plain numpy).

Every metric is recomputed here from the raw pixels with sklearn, on hypothesis-generated sets
of small maps and on the edge cases (empty mask, empty prediction, all forged, inverted map,
constant map, a single class). Exact mode must agree with sklearn to 1e-9; histogram mode must
equal sklearn on the bin-quantized scores and stay within the tie bound of the raw AUC.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    jaccard_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from dolos_bench.eval.metrics import EMPTY_RULE, MetricState, auc_ap_from_counts, metric_names

TOL = 1e-9
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Sample:
    sid: str
    score_map: np.ndarray
    mask: np.ndarray
    label: int
    image_score: float | None = None
    generator: str = ""
    parts: tuple[str, ...] = ()
    perturbation: str = "none"
    source: str = ""
    extra: dict = field(default_factory=dict)


def feed(samples, **kw) -> MetricState:
    state = MetricState(**kw)
    for s in samples:
        state.update(
            s.score_map, s.mask, s.label, s.image_score, sample_id=s.sid, generator=s.generator,
            parts=s.parts, perturbation=s.perturbation, source=s.source,
        )
    return state


# ---------------------------------------------------------------- strategies

GENS = ("lama", "repaint", "sd2")
PARTS = ("eyes", "nose", "mouth", "skin")
PERTS = ("none", "jpeg", "blur")
SOURCES = ("celebahq", "ffhq")


@st.composite
def sample_st(draw, i: int, label: int | None = None):
    h = draw(st.integers(1, 6))
    w = draw(st.integers(1, 6))
    if draw(st.booleans()):  # coarse values: plenty of ties, values exactly on the threshold
        q = draw(arrays(np.int8, (h, w), elements=st.integers(0, 4)))
        smap = (q.astype(np.float32) / 4).astype(np.float32)
    else:
        smap = draw(arrays(np.float32, (h, w), elements=st.floats(0, 1, width=32)))
    lab = draw(st.integers(0, 1)) if label is None else label
    if lab:
        mask = draw(arrays(np.bool_, (h, w)))
    else:
        mask = np.zeros((h, w), bool)
    score = draw(st.one_of(st.none(), st.floats(0, 1)))
    return Sample(
        sid=f"id{i}", score_map=smap, mask=mask, label=lab, image_score=score,
        generator=draw(st.sampled_from(GENS)) if lab else "",
        parts=tuple(draw(st.lists(st.sampled_from(PARTS), max_size=2, unique=True))) if lab else (),
        perturbation=draw(st.sampled_from(PERTS)),
        source=draw(st.sampled_from(SOURCES)),
    )


@st.composite
def dataset_st(draw, min_size: int = 1, max_size: int = 12):
    n = draw(st.integers(min_size, max_size))
    return [draw(sample_st(i)) for i in range(n)]


# ---------------------------------------------------------------- references


def quiet(f, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*a, **k)


def ref_ratios(mask: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    y, p = mask.ravel(), pred.ravel()
    zd = 1.0 if (not y.any() and not p.any()) else 0.0
    out = {
        "iou": quiet(jaccard_score, y, p, zero_division=zd),
        "f1": quiet(f1_score, y, p, zero_division=zd),
        "precision": quiet(precision_score, y, p, zero_division=zd),
        "recall": quiet(recall_score, y, p, zero_division=zd),
        "mcc": quiet(matthews_corrcoef, y, p),
    }
    degenerate = y.all() or not y.any() or p.all() or not p.any()
    if degenerate and np.array_equal(y, p):
        out["mcc"] = 1.0  # the documented rule; sklearn says 0 for a zero denominator
    return out


def ref_pred(smap: np.ndarray, t: float, strict: bool = False) -> np.ndarray:
    return smap > np.float32(t) if strict else smap >= np.float32(t)


def ref_f1_best(mask: np.ndarray, smap: np.ndarray) -> float:
    best = ref_ratios(mask, np.zeros_like(mask))["f1"]
    for thr in np.unique(smap):
        best = max(best, ref_ratios(mask, smap >= thr)["f1"])
    return best


def ref_image_score(s: Sample) -> float:
    return float(s.score_map.max()) if s.image_score is None else s.image_score


def ref_tpr_at_fpr(y, score, max_fpr=0.05) -> float:
    fpr, tpr, _ = roc_curve(y, score, drop_intermediate=False)
    return float(tpr[fpr <= max_fpr].max())


def close(a, b, tol=TOL) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol


def val(res, name):
    return res["metrics"][name]["value"]


def check_against_reference(samples, res, t=0.5, exact=True):
    """Every top-level metric of ``res`` against sklearn on the raw pixels."""
    T = f"{t:g}"
    fakes = [s for s in samples if s.label == 1]
    reals = [s for s in samples if s.label == 0]
    per = {k: [] for k in ("iou", "f1", "precision", "recall", "mcc")}
    f1b, aucs, aps = [], [], []
    for s in fakes:
        r = ref_ratios(s.mask, ref_pred(s.score_map, t))
        for k in per:
            per[k].append(r[k])
        f1b.append(ref_f1_best(s.mask, s.score_map))
        y = s.mask.ravel()
        if 0 < y.sum() < y.size:
            aucs.append(roc_auc_score(y, s.score_map.ravel()))
            aps.append(average_precision_score(y, s.score_map.ravel()))
    for k, v in per.items():
        exp = float(np.mean(v)) if v else None
        assert close(val(res, f"pixel/{k}@{T}/mean-of-images/fakes"), exp), k
    assert close(val(res, "pixel/f1@best/mean-of-images/fakes"), float(np.mean(f1b)) if f1b else None)
    assert close(val(res, "pixel/auc/mean-of-images/fakes"), float(np.mean(aucs)) if aucs else None)
    assert close(val(res, "pixel/ap/mean-of-images/fakes"), float(np.mean(aps)) if aps else None)
    assert res["counts"]["fakes_excluded_per_image_auc"] == len(fakes) - len(aucs)
    # pooled threshold metrics over all fake pixels
    if fakes:
        y = np.concatenate([s.mask.ravel() for s in fakes])
        p = np.concatenate([ref_pred(s.score_map, t).ravel() for s in fakes])
        r = ref_ratios(y, p)
        for k in per:
            assert close(val(res, f"pixel/{k}@{T}/pooled/fakes"), r[k]), k
    # fp-area on reals
    fpa = [ref_pred(s.score_map, t).mean() for s in reals]
    assert close(val(res, f"pixel/fp-area@{T}/mean-of-images/reals"), float(np.mean(fpa)) if fpa else None)
    # pooled AUC / AP
    for which, group in (("all", samples), ("fakes", fakes)):
        if not group:
            assert val(res, f"pixel/auc/pooled/{which}") is None
            continue
        y = np.concatenate([s.mask.ravel() for s in group])
        sc = np.concatenate([s.score_map.ravel() for s in group])
        if 0 < y.sum() < y.size:
            if exact:
                assert close(val(res, f"pixel/auc/pooled/{which}"), roc_auc_score(y, sc))
                assert close(val(res, f"pixel/ap/pooled/{which}"), average_precision_score(y, sc))
        else:
            assert val(res, f"pixel/auc/pooled/{which}") is None
            assert f"pixel/auc/pooled/{which}" in res["info"]["undefined"]
    # image level
    y = np.array([s.label for s in samples])
    sc = np.array([ref_image_score(s) for s in samples])
    assert close(val(res, f"image/accuracy@{T}/all"), accuracy_score(y, sc >= t))
    if 0 < y.sum() < y.size:
        assert close(val(res, "image/auc/all"), roc_auc_score(y, sc))
        assert close(val(res, "image/ap/all"), average_precision_score(y, sc))
        assert close(val(res, f"image/balanced-accuracy@{T}/all"), balanced_accuracy_score(y, sc >= t))
        assert close(val(res, "image/tpr@fpr0.05/all"), ref_tpr_at_fpr(y, sc))
    else:
        for name in ("image/auc/all", "image/ap/all", "image/tpr@fpr0.05/all"):
            assert val(res, name) is None
            assert name in res["info"]["undefined"]


def assert_no_nan(obj):
    if isinstance(obj, float):
        assert not math.isnan(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            assert_no_nan(v)
    elif isinstance(obj, list):
        for v in obj:
            assert_no_nan(v)


# ---------------------------------------------------------------- property tests


@SETTINGS
@given(dataset_st())
def test_exact_mode_matches_sklearn(samples):
    res = feed(samples, exact=True).compute(bootstrap=0)
    check_against_reference(samples, res, exact=True)
    assert_no_nan(res)
    json.dumps(res)  # JSON-able
    assert set(res["metrics"]) == set(metric_names(0.5))


@SETTINGS
@given(dataset_st(), st.sampled_from([0.3, 0.5, 0.75]))
def test_histogram_mode_matches_sklearn_on_quantized_scores(samples, t):
    """Binned results equal sklearn on the bin-quantized scores; threshold metrics stay exact."""
    bins = 16
    res = feed(samples, threshold=t, bins=bins).compute(bootstrap=0)
    check_against_reference(samples, res, t=t, exact=False)

    def q(s):
        return np.minimum(np.floor(s.astype(np.float64) * bins), bins - 1)

    for which, group in (("all", samples), ("fakes", [s for s in samples if s.label])):
        if not group:
            continue
        y = np.concatenate([s.mask.ravel() for s in group])
        raw = np.concatenate([s.score_map.ravel() for s in group])
        if not 0 < y.sum() < y.size:
            continue
        auc_q = roc_auc_score(y, q(raw))
        assert close(val(res, f"pixel/auc/pooled/{which}"), auc_q)
        assert close(val(res, f"pixel/ap/pooled/{which}"), average_precision_score(y, q(raw)))
        # The documented bound on the error against the raw scores.
        pos = np.bincount(q(raw[y]).astype(int), minlength=bins)
        neg = np.bincount(q(raw[~y]).astype(int), minlength=bins)
        bound = 0.5 * np.dot(pos, neg) / (pos.sum() * neg.sum())
        assert close(res["info"]["pooled_auc_error_bound"][which], bound)
        assert abs(auc_q - roc_auc_score(y, raw)) <= bound + TOL


@SETTINGS
@given(dataset_st(min_size=2, max_size=14), st.data(), st.booleans())
def test_merge_of_random_chunks_equals_single_pass(samples, data, exact):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(samples)), max_size=4)))
    order = data.draw(st.permutations(range(len(samples))))
    shuffled = [samples[i] for i in order]
    chunks, prev = [], 0
    for c in cuts + [len(samples)]:
        chunks.append(shuffled[prev:c])
        prev = c
    single = feed(samples, exact=exact, bins=32).compute(bootstrap=50, seed=3)
    states = [feed(c, exact=exact, bins=32) for c in chunks]
    # Cross a process boundary: through JSON text.
    states = [MetricState.from_dict(json.loads(json.dumps(s.to_dict()))) for s in states]
    merged = states[0]
    for s in states[1:]:
        merged.merge(s)
    assert merged.compute(bootstrap=50, seed=3) == single


@SETTINGS
@given(dataset_st(min_size=1, max_size=10))
def test_breakdowns_match_filtered_references(samples):
    res = feed(samples, exact=True).compute(bootstrap=0)
    reals = [s for s in samples if s.label == 0]
    for kind, values in (("generator", GENS), ("parts", PARTS), ("perturbation", PERTS), ("source", SOURCES)):
        for v in values:
            if kind == "generator":
                g_f = [s for s in samples if s.label and s.generator == v]
            elif kind == "parts":
                g_f = [s for s in samples if s.label and v in s.parts]
            else:
                g_f = [s for s in samples if s.label and getattr(s, kind) == v]
            g_r = reals if kind in ("generator", "parts") else [s for s in reals if getattr(s, kind) == v]
            present = g_f if kind in ("generator", "parts") else g_f + g_r
            if not present:
                assert v not in res["breakdowns"][kind]
                continue
            b = res["breakdowns"][kind][v]
            assert res["counts"]["breakdowns"][kind][v] == {"fakes": len(g_f), "reals": len(g_r)}
            ious = [ref_ratios(s.mask, s.score_map >= 0.5)["iou"] for s in g_f]
            assert close(b["pixel/iou@0.5/mean-of-images/fakes"]["value"], float(np.mean(ious)) if ious else None)
            f1s = [ref_ratios(s.mask, s.score_map >= 0.5)["f1"] for s in g_f]
            assert close(b["pixel/f1@0.5/mean-of-images/fakes"]["value"], float(np.mean(f1s)) if f1s else None)
            for which, grp in (("fakes", g_f), ("all", g_f + g_r)):
                exp = None
                if grp:
                    y = np.concatenate([s.mask.ravel() for s in grp])
                    if 0 < y.sum() < y.size:
                        exp = roc_auc_score(y, np.concatenate([s.score_map.ravel() for s in grp]))
                assert close(b[f"pixel/auc/pooled/{which}"]["value"], exp)
            imgs = g_f + g_r
            y = np.array([s.label for s in imgs])
            sc = np.array([ref_image_score(s) for s in imgs])
            exp_auc = roc_auc_score(y, sc) if 0 < y.sum() < y.size else None
            exp_ap = average_precision_score(y, sc) if 0 < y.sum() < y.size else None
            assert close(b["image/auc/all"]["value"], exp_auc)
            assert close(b["image/ap/all"]["value"], exp_ap)


@SETTINGS
@given(dataset_st(min_size=1, max_size=8))
def test_per_sample_record_matches_reference(samples):
    state = MetricState()
    for s in samples:
        rec = state.update(s.score_map, s.mask, s.label, s.image_score, sample_id=s.sid)
        assert rec["id"] == s.sid and rec["label"] == s.label
        assert close(rec["image_score"], ref_image_score(s), 1e-7)
        assert rec["image_score_derived"] == (s.image_score is None)
        m = rec["metrics"]
        if s.label:
            r = ref_ratios(s.mask, s.score_map >= 0.5)
            for k in ("iou", "f1", "precision", "recall", "mcc"):
                assert close(m[f"{k}@0.5"], r[k])
            assert m["fp-area@0.5"] is None
        else:
            assert close(m["fp-area@0.5"], float((s.score_map >= 0.5).mean()))
            assert m["iou@0.5"] is None
        json.dumps(rec)


# ---------------------------------------------------------------- edge cases


def _fake(smap, mask, sid="f", **kw):
    return Sample(sid, np.asarray(smap, np.float32), np.asarray(mask, bool), 1, **kw)


def _real(smap, sid="r", **kw):
    smap = np.asarray(smap, np.float32)
    return Sample(sid, smap, np.zeros(smap.shape, bool), 0, **kw)


RNG = np.random.default_rng(7)


def _rand_pair(n=16, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, n), bool)
    mask[2:9, 3:11] = True
    smap = np.clip(rng.random((n, n)) * 0.7 + 0.3 * mask, 0, 1).astype(np.float32)
    return smap, mask


def test_empty_mask_and_empty_prediction():
    smap, mask = _rand_pair()
    samples = [
        _fake(np.zeros((8, 8)), np.zeros((8, 8)), "both-empty"),       # everything counts 1
        _fake(np.full((8, 8), 0.9), np.zeros((8, 8)), "gt-empty"),      # ratios 0
        _fake(np.zeros((8, 8)), np.eye(8), "pred-empty"),               # ratios 0
        _fake(smap, mask, "normal"),
        _real(np.zeros((8, 8)), "r1"),
    ]
    state = feed(samples, exact=True)
    res = state.compute(bootstrap=0)
    check_against_reference(samples, res)
    recs = [MetricState().update(s.score_map, s.mask, s.label, sample_id=s.sid) for s in samples[:3]]
    assert recs[0]["metrics"]["iou@0.5"] == 1.0 and recs[0]["metrics"]["mcc@0.5"] == 1.0
    assert recs[0]["metrics"]["precision@0.5"] == 1.0 and recs[0]["metrics"]["recall@0.5"] == 1.0
    assert recs[0]["metrics"]["f1@best"] == 1.0 and recs[0]["metrics"]["auc"] is None
    assert recs[1]["metrics"]["iou@0.5"] == 0.0 and recs[1]["metrics"]["recall@0.5"] == 0.0
    assert recs[2]["metrics"]["precision@0.5"] == 0.0 and recs[2]["metrics"]["f1@0.5"] == 0.0
    assert res["counts"]["fakes_empty_mask"] == 2
    assert res["counts"]["fakes_excluded_per_image_auc"] == 2
    assert res["info"]["empty_rule"] == EMPTY_RULE


def test_all_forged_mask():
    full = _fake(np.full((5, 5), 0.7), np.ones((5, 5)), "full")
    missed = _fake(np.full((5, 5), 0.2), np.ones((5, 5)), "full-missed")
    rec = MetricState().update(full.score_map, full.mask, 1, sample_id="x")["metrics"]
    assert rec["iou@0.5"] == 1.0 and rec["mcc@0.5"] == 1.0 and rec["auc"] is None
    rec = MetricState().update(missed.score_map, missed.mask, 1, sample_id="y")["metrics"]
    assert rec["iou@0.5"] == 0.0 and rec["mcc@0.5"] == 0.0 and rec["f1@best"] == 1.0
    res = feed([full, missed], exact=True).compute(bootstrap=0)
    check_against_reference([full, missed], res)
    assert res["counts"]["fakes_full_mask"] == 2
    assert val(res, "pixel/auc/pooled/fakes") is None  # no pristine pixel at all
    assert val(res, "pixel/auc/mean-of-images/fakes") is None


@pytest.mark.parametrize("exact", [True, False])
def test_inverted_map_flips_auc(exact):
    samples, inv = [], []
    for i in range(6):
        smap, mask = _rand_pair(seed=i)
        samples.append(_fake(smap, mask, f"f{i}", image_score=float(smap.mean())))
        inv.append(_fake(1 - smap, mask, f"f{i}", image_score=1 - float(smap.mean())))
        r = RNG.random((16, 16)).astype(np.float32) * 0.8
        samples.append(_real(r, f"r{i}", image_score=float(r.mean())))
        inv.append(_real(1 - r, f"r{i}", image_score=1 - float(r.mean())))
    a = feed(samples, exact=exact, bins=1000).compute(bootstrap=0)
    b = feed(inv, exact=exact, bins=1000).compute(bootstrap=0)
    tol = 1e-9 if exact else 2 * max(a["info"]["pooled_auc_error_bound"].values()) + 1e-9
    for name in ("pixel/auc/pooled/all", "pixel/auc/pooled/fakes"):
        assert abs(val(a, name) + val(b, name) - 1) <= tol
    for name in ("pixel/auc/mean-of-images/fakes", "image/auc/all"):
        assert abs(val(a, name) + val(b, name) - 1) <= 1e-9


@pytest.mark.parametrize("exact", [True, False])
def test_constant_map(exact):
    samples = []
    for i in range(4):
        _, mask = _rand_pair(seed=i)
        samples.append(_fake(np.full(mask.shape, 0.42), mask, f"f{i}"))
        samples.append(_real(np.full((16, 16), 0.42), f"r{i}"))
    res = feed(samples, exact=exact).compute(bootstrap=0)
    check_against_reference(samples, res)
    prevalence = sum(s.mask.sum() for s in samples) / sum(s.mask.size for s in samples)
    assert val(res, "pixel/auc/pooled/all") == 0.5
    assert close(val(res, "pixel/ap/pooled/all"), prevalence)
    assert val(res, "pixel/auc/mean-of-images/fakes") == 0.5
    assert val(res, "image/auc/all") == 0.5
    assert val(res, "pixel/iou@0.5/mean-of-images/fakes") == 0.0


def test_single_class_is_none_with_reason_never_nan():
    fakes_only = [_fake(*_rand_pair(seed=i)[::1], sid=f"f{i}") for i in range(3)]
    res = feed(fakes_only).compute(bootstrap=20)
    for name in ("image/auc/all", "image/ap/all", "image/balanced-accuracy@0.5/all",
                 "pixel/fp-area@0.5/mean-of-images/reals"):
        assert res["metrics"][name] == {"value": None, "ci95": None, "n": res["metrics"][name]["n"]}
        assert name in res["info"]["undefined"]
    assert val(res, "image/accuracy@0.5/all") is not None
    reals_only = [_real(RNG.random((4, 4)), f"r{i}") for i in range(3)]
    res = feed(reals_only).compute(bootstrap=20)
    assert val(res, "pixel/auc/pooled/all") is None
    assert val(res, "pixel/iou@0.5/mean-of-images/fakes") is None
    assert_no_nan(res)
    empty = MetricState().compute()
    assert_no_nan(empty)
    assert all(m["value"] is None for m in empty["metrics"].values())


def test_bin_centres_are_exact():
    bins = 100
    rng = np.random.default_rng(1)
    samples = []
    for i in range(8):
        k = rng.integers(0, bins, size=(12, 12))
        smap = ((k + 0.5) / bins).astype(np.float32)
        mask = rng.random((12, 12)) < (0.2 + 0.6 * smap)
        samples.append(_fake(smap, mask, f"f{i}") if i % 2 else _real(smap, f"r{i}"))
    a = feed(samples, bins=bins).compute(bootstrap=0)
    b = feed(samples, exact=True).compute(bootstrap=0)
    for name in ("pixel/auc/pooled/all", "pixel/ap/pooled/all", "pixel/auc/pooled/fakes", "pixel/ap/pooled/fakes"):
        assert close(val(a, name), val(b, name))


def test_eight_bit_maps_are_exact_with_default_bins():
    rng = np.random.default_rng(2)
    samples = []
    for i in range(6):
        smap = (rng.integers(0, 256, size=(20, 20)) / 255).astype(np.float32)
        mask = rng.random((20, 20)) < smap
        samples.append(_fake(smap, mask, f"f{i}"))
    a = feed(samples).compute(bootstrap=0)
    b = feed(samples, exact=True).compute(bootstrap=0)
    for name in ("pixel/auc/pooled/fakes", "pixel/ap/pooled/fakes"):
        assert close(val(a, name), val(b, name))


def test_threshold_rule_and_name():
    smap = np.array([[0.5, 0.3], [0.7, 0.1]], np.float32)
    mask = np.array([[1, 0], [1, 0]], bool)
    ge = MetricState(threshold=0.5).update(smap, mask, 1, sample_id="a")["metrics"]
    gt = MetricState(threshold=0.5, strict=True).update(smap, mask, 1, sample_id="a")["metrics"]
    assert ge["recall@0.5"] == 1.0 and gt["recall@0.5"] == 0.5
    st3 = MetricState(threshold=0.3)
    rec = st3.update(smap, mask, 1, sample_id="a")["metrics"]
    assert rec["precision@0.3"] == pytest.approx(2 / 3)
    res = st3.compute(bootstrap=0)
    assert "pixel/iou@0.3/mean-of-images/fakes" in res["metrics"]
    assert "pixel/fp-area@0.3/mean-of-images/reals" in res["metrics"]
    assert res["info"]["threshold"] == 0.3 and ">=" in res["info"]["threshold_rule"]


def test_image_score_rules():
    smap = np.array([[0.2, 0.6]], np.float32)
    m = np.zeros((1, 2), bool)
    assert MetricState().update(smap, m, 0, sample_id="a")["image_score"] == pytest.approx(0.6)
    assert MetricState(image_score_rule="mean").update(smap, m, 0, sample_id="a")["image_score"] == pytest.approx(0.4)
    rec = MetricState().update(smap, m, 0, 0.1, sample_id="a")
    assert rec["image_score"] == 0.1 and rec["image_score_derived"] is False
    assert "max" in MetricState().compute(bootstrap=0)["info"]["image_score_rule"]


def test_mask_polarity_255_and_neg_zero():
    smap, mask = _rand_pair()
    a = MetricState().update(smap, mask, 1, sample_id="a")
    b = MetricState().update(smap, mask.astype(np.uint8) * 255, 1, sample_id="a")
    assert a == b
    z = np.array([[-0.0, 0.7]], np.float32)
    rec = MetricState().update(z, np.array([[0, 1]], bool), 1, sample_id="z")
    assert rec["metrics"]["auc"] == 1.0


@pytest.mark.parametrize(
    "smap,mask,label,msg",
    [
        (np.array([[np.nan, 0.1]], np.float32), np.zeros((1, 2), bool), 1, "finite"),
        (np.array([[1.5, 0.1]], np.float32), np.zeros((1, 2), bool), 1, "finite"),
        (np.array([[-0.2, 0.1]], np.float32), np.zeros((1, 2), bool), 1, "finite"),
        (np.zeros((2, 2), np.float32), np.zeros((2, 3), bool), 1, "shape"),
        (np.zeros((2, 2), np.float32), np.zeros((2, 2), bool), 2, "label"),
    ],
)
def test_invalid_inputs_name_the_sample(smap, mask, label, msg):
    with pytest.raises(ValueError, match=msg) as e:
        MetricState().update(smap, mask, label, sample_id="bad-one")
    assert "bad-one" in str(e.value)


def test_merge_rejects_other_config():
    with pytest.raises(ValueError):
        MetricState(bins=100).merge(MetricState(bins=200))


# ---------------------------------------------------------------- bootstrap


def _bootstrap_set(n=40, seed=0):
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        smap, mask = _rand_pair(seed=seed * 1000 + i)
        lab = i % 2
        score = float(np.clip(rng.normal(0.4 + 0.2 * lab, 0.15), 0, 1))
        if lab:
            samples.append(_fake(smap, mask, f"f{i}", image_score=score, generator=GENS[i % 3]))
        else:
            samples.append(_real(smap * 0.8, f"r{i}", image_score=score))
    return samples


def test_bootstrap_contains_estimate_and_is_deterministic():
    state = feed(_bootstrap_set())
    a = state.compute(bootstrap=300, seed=11)
    b = state.compute(bootstrap=300, seed=11)
    c = state.compute(bootstrap=300, seed=12)
    assert a == b
    assert a["metrics"]["image/auc/all"]["ci95"] != c["metrics"]["image/auc/all"]["ci95"]
    with_ci = 0
    for name, m in a["metrics"].items():
        if m["ci95"] is None:
            assert "/pooled/" in name or "accuracy" in name or "tpr@" in name or m["value"] is None
            continue
        with_ci += 1
        lo, hi = m["ci95"]
        assert lo <= m["value"] <= hi, name
    assert with_ci >= 10
    g = a["breakdowns"]["generator"]["lama"]["image/auc/all"]
    assert g["ci95"][0] <= g["value"] <= g["ci95"][1]
    assert state.compute(bootstrap=0)["metrics"]["image/auc/all"]["ci95"] is None


def test_bootstrap_matches_naive_stratified_resampling_in_distribution():
    """The vectorised weighted AUC equals sklearn on an explicitly resampled set."""
    rng = np.random.default_rng(5)
    s = np.round(rng.random(30), 1)
    y = np.arange(30) % 3 == 0
    order = np.argsort(s, kind="stable")
    for _ in range(20):
        idx_p = rng.choice(np.flatnonzero(y), y.sum())
        idx_n = rng.choice(np.flatnonzero(~y), (~y).sum())
        idx = np.concatenate([idx_p, idx_n])
        w = np.bincount(idx, minlength=30).astype(float)
        ss, ww, yy = s[order], w[order], y[order]
        starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        gp = np.add.reduceat(ww * yy, starts)
        gn = np.add.reduceat(ww * ~yy, starts)
        auc, ap = auc_ap_from_counts(gp, gn)
        assert close(float(auc), roc_auc_score(y[idx], s[idx]))
        assert close(float(ap), average_precision_score(y[idx], s[idx]))
