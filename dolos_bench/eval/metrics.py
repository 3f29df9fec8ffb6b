"""Streaming metric engine of ``bench eval``: summable states, exact sklearn semantics, pure numpy.

Why this shape
--------------
A benchmark run may cover 10^4-10^5 images of up to 1024^2 pixels, split over processes and
machines. Keeping every pixel score (what sklearn and torchmetrics' exact modes do) costs gigabytes;
binned metrics that compare every pixel with every threshold cost O(pixels x thresholds). This
engine instead keeps, per image, only a handful of float scalars (needed for mean-of-images
metrics, image-level metrics and the bootstrap) and, for pooled pixel metrics, integer histograms
whose size does not depend on the number of images. States add up: :meth:`MetricState.merge` of
any split of the data equals a single pass, bit for bit (rows are put in a canonical order, keyed
by a hash of the sample id, before anything order-dependent is computed).

One sort per image does the work
--------------------------------
Each map is turned into ``uint32`` keys ``(float32 bits << 1) | mask`` and sorted once (non-negative
float32 bit patterns order like the floats; 1.0 fits in 30 bits). From the sorted keys and the
sorted positions of the forged pixels, every per-image quantity is a ``searchsorted`` or a short
vector pass over the forged pixels: confusion counts at the threshold, the exact per-image
ROC-AUC / AP / best F1 (tied scores grouped as sklearn groups them, see ``_curve_metrics``), and
the image's histogram for the pooled metrics (one search of the bin edges; at 256^2 the sort costs
0.2 ms where ``np.bincount(floor(score * bins))`` costs 0.8 ms). The whole default metric set runs
~100x (256^2) to ~250x (1024^2) faster than per-image sklearn calls
(``benchmarks/metrics_throughput.py``).

Conventions (they are also recorded in ``compute()["info"]``)
-----------------------------------------------------------
* Names: every name comes from the metric table (:mod:`dolos_bench.metric_specs`), which also
  gives each metric's direction and interval kind; ``compute`` refers to its rows by template.
* Threshold rule: ``pred = map >= t`` by default, the comparison done in float32 (what ``map >= t``
  does in numpy for a float32 map), so it matches sklearn's curve convention (a threshold
  admits scores equal to it) and the histogram bin edges. ``strict=True`` gives ``map > t``, which
  is what the Dolos paper's code uses.
* Empty rule (per-image IoU, F1, precision, recall, MCC): a ratio 0/0 counts 1 when the
  ground-truth mask and the prediction are both empty, and 0 otherwise. For MCC, whose
  denominator also vanishes for full masks/predictions, the degenerate case counts 1 when the
  prediction equals the ground truth (both empty or both full) and 0 otherwise (sklearn says 0).
  ``f1@best`` of an image with an empty mask is therefore 1 (predicting nothing is perfect).
  Per-image AUC/AP skip fakes whose mask is empty or full; their number is reported.
* Image score: when a localizer gives none, it is the map's maximum (``image_score_rule="max"``;
  ``"mean"`` is available for protocols that need it), taken on the map as the engine receives it.
* Pooled AUC/AP: histogram of ``bins`` uniform bins on [0, 1] (bin = ``floor(score * bins)``,
  exact in float64; 1.0 goes to the last bin). Scores in one bin are treated as tied, exactly
  as sklearn treats tied scores (trapezoid across the bin for AUC, one precision step for AP),
  so the binned value *equals* sklearn's on the bin-quantized scores. The AUC error against the
  raw scores is at most ``0.5 * sum_b pos_b * neg_b / (P * N)`` (only pairs sharing a bin can
  be misordered; reported as ``info["pooled_auc_error_bound"]``). With the default 10,000 bins
  every map quantized to 8 bits (k/255) lands one level per bin, so the result is exact.
  ``exact=True`` keeps (deduplicated) scores instead and reproduces sklearn to ~1e-12.
  Measured on smooth float maps (200 images, 256^2): |binned - exact| is ~1e-8 for AUC and
  ~1e-4 for AP at 10,000 bins (~1e-6 / ~1e-3 at 1,000 bins; 100,000 bins gains one AP decimal
  for ~3x the update cost), hence the default.
* Undefined values (e.g. AUC with one class, a mean over no images) are ``None`` with the reason
  in ``info["undefined"]``; the output never holds NaN.
* Bootstrap: percentile 95% intervals, seeded per metric name so adding a metric does not shift
  another's draws. Mean-of-images metrics resample the per-image values; image AUC/AP resample
  images stratified by label. Pooled pixel metrics get ``ci95: null``: resampling images would
  need each image's histogram, which is exactly the per-image memory this engine avoids.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from array import array
from typing import Any, Iterable, Sequence

import numpy as np

from dolos_bench.metric_specs import format_threshold, metric_name, metric_names, spec

__all__ = [
    "AREA_EDGES",
    "MetricState",
    "area_bin",
    "area_labels",
    "EMPTY_RULE",
    "auc_ap_from_counts",
    "binary_image_metrics",
    "metric_names",
]

FORMAT = "dolos_bench.metric_state/1"
_ONE_BITS = int(np.float32(1.0).view(np.uint32))

EMPTY_RULE = (
    "per-image IoU/F1/precision/recall: a 0/0 ratio counts 1 when ground truth and prediction "
    "are both empty, else 0; MCC with a zero denominator counts 1 when prediction == ground "
    "truth (both empty or both full), else 0; f1@best of an empty mask is 1; per-image AUC/AP "
    "exclude fakes whose mask is empty or full (counted in counts['fakes_excluded_per_image_auc'])"
)

# Column layout of the per-image table: a few float scalars per image, nothing more.
_FLOAT_COLS = (
    "score", "iou", "f1", "precision", "recall", "mcc", "f1best", "auc", "ap", "fparea",
)
_INT_COLS = ("label", "generator", "parts", "perturbation", "source", "area")
_GROUP_KINDS = ("generator", "parts", "perturbation", "source", "area")
_FAKE_ONLY_KINDS = ("generator", "parts", "area")
# Area-ratio bins of the fakes (the dataset's ``area_ratio`` column): small < 0.05 <= medium < 0.2 <= large.
# A face part (an eye, the mouth) covers 1-4% of a 256x256 face crop; the skin or the whole face, 20-50%.
AREA_EDGES = (0.05, 0.2)


def area_labels(edges: Sequence[float] = AREA_EDGES) -> list[str]:
    """The names of the area bins, edges included, as the breakdowns show them: ``small(<0.05)``, ..."""
    e = [float(x) for x in edges]
    if len(e) != 2 or not 0.0 < e[0] < e[1] <= 1.0:
        raise ValueError(f"area bins need two edges 0 < small < large <= 1, got {edges}")
    return [f"small(<{e[0]:g})", f"medium({e[0]:g}-{e[1]:g})", f"large(>={e[1]:g})"]


def area_bin(area: float | None, edges: Sequence[float] = AREA_EDGES) -> str:
    """The area bin of one fake's mask share ("" when the dataset does not record it)."""
    if area is None or (isinstance(area, float) and math.isnan(area)):
        return ""
    labels = area_labels(edges)
    return labels[0] if area < edges[0] else labels[1] if area < edges[1] else labels[2]


# --------------------------------------------------------------------------------------------
# Curve arithmetic shared by pixels, images and the bootstrap
# --------------------------------------------------------------------------------------------


def auc_ap_from_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision from per-score-group counts, in ascending score order.

    Each position along the last axis is one group of tied scores (a distinct value, or a
    histogram bin); leading axes batch independent problems (the bootstrap). The formulas are
    sklearn's: the AUC is the trapezoid under the ROC curve (ties = diagonal segment, i.e.
    half credit), AP = sum over groups of (recall step) x (precision at that group's threshold).
    Returns NaN where a class is absent; callers turn that into ``None`` with a reason.
    """
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    npos = pos.sum(-1)
    nneg = neg.sum(-1)
    neg_below = np.cumsum(neg, -1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (neg_below + 0.5 * neg)).sum(-1) / (npos * nneg)
        tp = npos[..., None] - (np.cumsum(pos, -1) - pos)  # positives scoring >= this group
        fp = nneg[..., None] - neg_below
        denom = tp + fp
        prec = np.divide(tp, denom, out=np.zeros_like(tp), where=denom > 0)
        ap = (pos * prec).sum(-1) / npos
    ap = np.where(npos > 0, ap, np.nan)
    return auc, ap


def _group_sorted(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start indices of runs of equal values in a sorted array, and the run ends."""
    n = values.size
    brk = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate(([0], brk))
    ends = np.concatenate((brk, [n]))
    return starts, ends


def binary_image_metrics(
    scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5, strict: bool = False
) -> dict[str, float | None]:
    """Image-level AUC, AP, accuracy, balanced accuracy and TPR at FPR <= 5% (exact).

    ``tpr@fpr0.05`` is the TPR of the ROC operating point with the highest TPR among those
    whose FPR is at most 0.05 (equivalently: the lowest score threshold whose FPR <= 5%), no
    interpolation; the point (0, 0) of an infinite threshold is included, as in ``roc_curve``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    out: dict[str, float | None] = {
        "auc": None, "ap": None, "accuracy": None, "balanced_accuracy": None, "tpr@fpr0.05": None,
    }
    n = scores.size
    if n == 0:
        return out
    pred = scores > threshold if strict else scores >= threshold
    out["accuracy"] = float(np.mean(pred == labels))
    npos = int(labels.sum())
    nneg = n - npos
    if npos == 0 or nneg == 0:
        return out
    tpr = np.count_nonzero(pred & labels) / npos
    tnr = np.count_nonzero(~pred & ~labels) / nneg
    out["balanced_accuracy"] = float(0.5 * (tpr + tnr))
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    lab = labels[order].astype(np.float64)
    starts, ends = _group_sorted(s)
    cpos = np.concatenate(([0.0], np.cumsum(lab)))
    gpos = cpos[ends] - cpos[starts]
    gneg = (ends - starts) - gpos
    auc, ap = auc_ap_from_counts(gpos, gneg)
    out["auc"] = float(auc)
    out["ap"] = float(ap)
    # ROC points from the highest threshold down: FPR/TPR at "score >= group value".
    fp_at = nneg - (np.cumsum(gneg) - gneg)
    tp_at = npos - (np.cumsum(gpos) - gpos)
    ok = fp_at / nneg <= 0.05
    out["tpr@fpr0.05"] = float(tp_at[ok].max() / npos) if ok.any() else 0.0
    return out


# --------------------------------------------------------------------------------------------
# Histogram edges
# --------------------------------------------------------------------------------------------


def _edge_keys(bins: int) -> np.ndarray:
    """Sorted-key positions of the bin edges: key of the smallest float32 in each bin 1..bins-1.

    ``floor(float64(s) * bins)`` is exact for float32 ``s`` (24 + log2(bins) bits < 53), so each
    bin's first float32 is well defined; the keys let one ``searchsorted`` histogram a sorted map.
    """
    b = np.arange(1, bins, dtype=np.int64)
    approx = (b / bins).astype(np.float32).view(np.uint32).astype(np.int64)
    cand = approx[:, None] + np.arange(-4, 5)
    vals = cand.astype(np.uint32).view(np.float32).astype(np.float64)
    ok = np.floor(vals * bins) >= b[:, None]
    if not (ok[:, -1].all() and not ok[:, 0].any()):  # pragma: no cover - arithmetic guard
        raise RuntimeError("bin edge search window too small")
    first = np.argmax(ok, axis=1)
    bits = cand[np.arange(b.size), first].astype(np.uint32)
    return bits << np.uint32(1)


def _sample_hash(sample_id: Any) -> int:
    digest = hashlib.blake2b(str(sample_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


# --------------------------------------------------------------------------------------------
# The state
# --------------------------------------------------------------------------------------------


class MetricState:
    """Summable state of the whole default metric set, with breakdowns by group.

    Update it with one sample at a time (maps already at the mask's resolution), merge states
    from other batches, processes or machines, ship it with :meth:`to_dict`, and call
    :meth:`compute` once at the end.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        bins: int = 10000,
        exact: bool = False,
        *,
        strict: bool = False,
        image_score_rule: str = "max",
        area_bins: Sequence[float] = AREA_EDGES,
    ) -> None:
        area_labels(area_bins)  # checks the edges
        self.area_bins = tuple(float(x) for x in area_bins)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        if not 2 <= bins <= 2**24:
            raise ValueError(f"bins must lie in [2, 2**24], got {bins}")
        if image_score_rule not in ("max", "mean"):
            raise ValueError(f"image_score_rule must be 'max' or 'mean', got {image_score_rule!r}")
        self.threshold = float(threshold)
        self.bins = int(bins)
        self.exact = bool(exact)
        self.strict = bool(strict)
        self.image_score_rule = image_score_rule
        tbits = int(np.float32(self.threshold).view(np.uint32))
        self._tkey = np.uint32(((tbits + 1) if self.strict else tbits) << 1)
        self._edges = None if self.exact else _edge_keys(self.bins)
        self._floats: dict[str, array] = {c: array("d") for c in _FLOAT_COLS}
        self._ints: dict[str, array] = {c: array("i") for c in _INT_COLS}
        self._hash = array("Q")
        self._vocab: dict[str, list] = {k: [] for k in _GROUP_KINDS}
        self._vocab_index: dict[str, dict] = {k: {} for k in _GROUP_KINDS}
        # Pooled confusion counts of all fake pixels at the threshold (exact integers).
        self._conf = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
        # Pooled pixel scores: key (kind, value, side) -> [pos_hist, neg_hist] (binned) or a
        # list of (bits, pos, neg) triples of per-image distinct scores (exact).
        self._pool: dict[tuple[str, str, str], Any] = {}
        self._pixels = {"fake": 0, "real": 0}
        self._masks = {"empty": 0, "full": 0}  # fakes whose mask is empty / full

    # ---------------------------------------------------------------- config
    def config(self) -> dict[str, Any]:
        """Choices that must agree for two states to merge."""
        return {
            "threshold": self.threshold,
            "bins": self.bins,
            "exact": self.exact,
            "strict": self.strict,
            "image_score_rule": self.image_score_rule,
            "area_bins": list(self.area_bins),
        }

    def __len__(self) -> int:
        return len(self._hash)

    def _code(self, kind: str, value: Any) -> int:
        idx = self._vocab_index[kind]
        code = idx.get(value)
        if code is None:
            code = idx[value] = len(self._vocab[kind])
            self._vocab[kind].append(value)
        return code

    # ---------------------------------------------------------------- update
    def update(
        self,
        score_map: np.ndarray,
        mask: np.ndarray,
        label: int,
        image_score: float | None = None,
        *,
        sample_id: Any,
        generator: str = "",
        parts: Iterable[str] = (),
        perturbation: str = "none",
        source: str = "",
        area: float | None = None,
    ) -> dict[str, Any]:
        """Add one sample; return its per-sample record (for the per-sample JSONL).

        ``area`` is a fake's ``area_ratio`` (its mask's forged share, from the dataset); it puts
        the fake in an area bin (:data:`AREA_EDGES`). Reals, and fakes of datasets made before
        the column existed, are in no area bin.

        ``mask`` is bool or integer, nonzero = forged, and must have the map's shape (the runner
        resizes maps to the mask). Real images normally carry an all-zero mask; their pixels
        count as negatives of the pooled "all" metrics.
        """
        s = np.ascontiguousarray(score_map, dtype=np.float32)
        m = np.asarray(mask)
        if s.shape != m.shape:
            raise ValueError(f"sample {sample_id!r}: map shape {s.shape} != mask shape {m.shape}")
        if s.size == 0:
            raise ValueError(f"sample {sample_id!r}: empty map")
        if label not in (0, 1):
            raise ValueError(f"sample {sample_id!r}: label must be 0 or 1, got {label!r}")
        label = int(label)
        bits = s.reshape(-1).view(np.uint32)
        if int(bits.max()) > _ONE_BITS:
            # Negative numbers, NaN or > 1; -0.0 is harmless and gets normalised.
            if np.isnan(s).any() or (s < 0).any() or (s > 1).any():
                raise ValueError(
                    f"sample {sample_id!r}: score map must be finite and lie in [0, 1] "
                    f"(min {np.nanmin(s):.4g}, max {np.nanmax(s):.4g}); no sigmoid is applied"
                )
            s = s + np.float32(0.0)
            bits = s.reshape(-1).view(np.uint32)
        mb = m.reshape(-1)
        mb = mb.view(np.uint8) if mb.dtype == np.bool_ else (mb != 0).view(np.uint8)
        keys = np.sort((bits << np.uint32(1)) | mb)
        n = keys.size
        # Positions of the forged pixels in score order: every count below is a search in it.
        pidx = np.flatnonzero(keys & np.uint32(1))
        n_pos = int(pidx.size)

        # Confusion counts at the threshold.
        below = int(np.searchsorted(keys, self._tkey))
        pos_below = int(np.searchsorted(pidx, below))
        tp = n_pos - pos_below
        pred_n = n - below
        fp = pred_n - tp
        fn = n_pos - tp
        tn = below - pos_below

        if image_score is None:
            derived = True
            if self.image_score_rule == "max":
                image_score = float(np.uint32(keys[-1] >> np.uint32(1)).view(np.float32))
            else:
                image_score = float(s.mean(dtype=np.float64))
        else:
            derived = False
            image_score = float(image_score)
            if not (0.0 <= image_score <= 1.0):
                raise ValueError(f"sample {sample_id!r}: image_score {image_score} not in [0, 1]")

        nan = math.nan
        vals = dict.fromkeys(_FLOAT_COLS, nan)
        vals["score"] = image_score
        if label == 1:
            vals.update(_ratio_metrics(tp, fp, fn, tn))
            if 0 < n_pos < n:
                vals["auc"], vals["ap"], vals["f1best"] = _curve_metrics(keys, pidx)
            else:
                # Empty mask: predicting nothing is perfect (empty rule). Full mask: the
                # lowest threshold flags everything, F1 = 1.
                vals["f1best"] = 1.0
            if n_pos == 0:
                self._masks["empty"] += 1
            elif n_pos == n:
                self._masks["full"] += 1
            c = self._conf
            c["tp"] += tp
            c["fp"] += fp
            c["fn"] += fn
            c["tn"] += tn
        else:
            vals["fparea"] = pred_n / n

        # Pooled pixel scores.
        side = "fake" if label == 1 else "real"
        self._pixels[side] += n
        parts_t = tuple(sorted({str(p) for p in parts}))
        area_t = area_bin(area, self.area_bins) if label == 1 else ""
        pool_keys = [("all", "", side)]
        if label == 1:
            pool_keys.append(("generator", str(generator), side))
            pool_keys += [("parts", p, side) for p in parts_t]
            if area_t:
                pool_keys.append(("area", area_t, side))
        pool_keys.append(("perturbation", str(perturbation), side))
        pool_keys.append(("source", str(source), side))
        if self.exact:
            item = self._groups(keys, pidx)
            for k in pool_keys:
                self._pool.setdefault(k, []).append(item)
        else:
            pe = np.searchsorted(keys, self._edges)
            cnt = np.diff(pe, prepend=0, append=n)
            if n_pos:
                hpos = np.diff(np.searchsorted(pidx, pe), prepend=0, append=n_pos)
                hneg = cnt - hpos
            else:
                hpos = None
                hneg = cnt
            for k in pool_keys:
                acc = self._pool.get(k)
                if acc is None:
                    acc = self._pool[k] = [
                        np.zeros(self.bins, np.int64), np.zeros(self.bins, np.int64)
                    ]
                if hpos is not None:
                    acc[0] += hpos
                acc[1] += hneg

        # Per-image row.
        for c in _FLOAT_COLS:
            self._floats[c].append(vals[c])
        self._ints["label"].append(label)
        self._ints["generator"].append(self._code("generator", str(generator)))
        self._ints["parts"].append(self._code("parts", parts_t))
        self._ints["perturbation"].append(self._code("perturbation", str(perturbation)))
        self._ints["area"].append(self._code("area", area_t))
        self._ints["source"].append(self._code("source", str(source)))
        self._hash.append(_sample_hash(sample_id))

        t = format_threshold(self.threshold)

        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "id": sample_id,
            "label": label,
            "image_score": image_score,
            "image_score_derived": derived,
            "generator": str(generator),
            "parts": list(parts_t),
            "perturbation": str(perturbation),
            "source": str(source),
            "pixels": n,
            "forged_pixels": n_pos,
            "metrics": {
                f"iou@{t}": clean(vals["iou"]),
                f"f1@{t}": clean(vals["f1"]),
                f"precision@{t}": clean(vals["precision"]),
                f"recall@{t}": clean(vals["recall"]),
                f"mcc@{t}": clean(vals["mcc"]),
                "f1@best": clean(vals["f1best"]),
                "auc": clean(vals["auc"]),
                "ap": clean(vals["ap"]),
                f"fp-area@{t}": clean(vals["fparea"]),
            },
        }

    @staticmethod
    def _groups(keys: np.ndarray, pidx: np.ndarray):
        """Distinct scores (float32 bits) with their forged/pristine pixel counts, ascending."""
        v = keys >> np.uint32(1)
        starts, ends = _group_sorted(v)
        gbits = v[starts]
        size = ends - starts
        gpos = np.searchsorted(pidx, ends) - np.searchsorted(pidx, starts)
        return gbits, gpos.astype(np.int64), (size - gpos).astype(np.int64)

    # ---------------------------------------------------------------- merge
    def merge(self, other: "MetricState") -> "MetricState":
        """Add ``other`` into this state (in place) and return ``self``."""
        if other.config() != self.config():
            raise ValueError(f"cannot merge states with configs {self.config()} and {other.config()}")
        remap = {}
        for kind in _GROUP_KINDS:
            remap[kind] = np.array(
                [self._code(kind, v) for v in other._vocab[kind]], dtype=np.int64
            )
        for c in _FLOAT_COLS:
            self._floats[c].extend(other._floats[c])
        self._ints["label"].extend(other._ints["label"])
        for kind in _GROUP_KINDS:
            codes = np.frombuffer(other._ints[kind], dtype=np.int32) if len(other._ints[kind]) else np.zeros(0, np.int32)
            self._ints[kind].extend(array("i", remap[kind][codes].astype(np.int32).tolist()))
        self._hash.extend(other._hash)
        for k in self._conf:
            self._conf[k] += other._conf[k]
        for k in self._pixels:
            self._pixels[k] += other._pixels[k]
        for k in self._masks:
            self._masks[k] += other._masks[k]
        for key, val in other._pool.items():
            if self.exact:
                self._pool.setdefault(key, []).extend(val)
            else:
                acc = self._pool.get(key)
                if acc is None:
                    self._pool[key] = [val[0].copy(), val[1].copy()]
                else:
                    acc[0] += val[0]
                    acc[1] += val[1]
        return self

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (plain lists and numbers) that :meth:`from_dict` turns back."""
        floats = {}
        for c in _FLOAT_COLS:
            a = np.frombuffer(self._floats[c], dtype=np.float64) if len(self._floats[c]) else np.zeros(0)
            floats[c] = [None if math.isnan(x) else x for x in a.tolist()]
        pool = []
        for (kind, value, side), val in self._pool.items():
            entry: dict[str, Any] = {"kind": kind, "value": value, "side": side}
            if self.exact:
                entry["images"] = [
                    {"bits": b.tolist(), "pos": p.tolist(), "neg": q.tolist()} for b, p, q in val
                ]
            else:
                for name, h in zip(("pos", "neg"), val):
                    nz = np.flatnonzero(h)
                    entry[name] = {"idx": nz.tolist(), "count": h[nz].tolist()}
            pool.append(entry)
        return {
            "format": FORMAT,
            "config": self.config(),
            "vocab": {k: [list(v) if k == "parts" else v for v in self._vocab[k]] for k in _GROUP_KINDS},
            "floats": floats,
            "ints": {c: list(self._ints[c]) for c in _INT_COLS},
            "hash": [str(h) for h in self._hash],  # JSON numbers lose precision above 2**53
            "confusion": dict(self._conf),
            "pixels": dict(self._pixels),
            "masks": dict(self._masks),
            "pool": pool,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MetricState":
        """Rebuild a state written by :meth:`to_dict` (possibly on another machine)."""
        if d.get("format") != FORMAT:
            raise ValueError(f"not a metric state of format {FORMAT}: {d.get('format')!r}")
        st = cls(**d["config"])
        for k in _GROUP_KINDS:
            for v in d["vocab"].get(k, [""] if k == "area" else []):  # states older than the area bins: none
                st._code(k, tuple(v) if k == "parts" else v)
        for c in _FLOAT_COLS:
            st._floats[c] = array("d", [math.nan if x is None else float(x) for x in d["floats"][c]])
        for c in _INT_COLS:
            st._ints[c] = array("i", [int(x) for x in d["ints"].get(c, [0] * len(d["hash"]))])
        st._hash = array("Q", [int(h) for h in d["hash"]])
        st._conf = {k: int(v) for k, v in d["confusion"].items()}
        st._pixels = {k: int(v) for k, v in d["pixels"].items()}
        st._masks = {k: int(v) for k, v in d["masks"].items()}
        for e in d["pool"]:
            key = (e["kind"], e["value"], e["side"])
            if st.exact:
                st._pool[key] = [
                    (
                        np.asarray(im["bits"], dtype=np.uint32),
                        np.asarray(im["pos"], dtype=np.int64),
                        np.asarray(im["neg"], dtype=np.int64),
                    )
                    for im in e["images"]
                ]
            else:
                hs = []
                for name in ("pos", "neg"):
                    h = np.zeros(st.bins, np.int64)
                    h[np.asarray(e[name]["idx"], dtype=np.int64)] = np.asarray(e[name]["count"], dtype=np.int64)
                    hs.append(h)
                st._pool[key] = hs
        return st

    # ---------------------------------------------------------------- compute
    def _table(self) -> dict[str, np.ndarray]:
        """Per-image columns in canonical order (by sample-id hash), so results do not depend
        on how the data was split into batches, processes or machines."""
        n = len(self._hash)
        cols: dict[str, np.ndarray] = {}
        for c in _FLOAT_COLS:
            cols[c] = np.frombuffer(self._floats[c], dtype=np.float64).copy() if n else np.zeros(0)
        for c in _INT_COLS:
            cols[c] = np.frombuffer(self._ints[c], dtype=np.int32).astype(np.int64) if n else np.zeros(0, np.int64)
        h = np.frombuffer(self._hash, dtype=np.uint64) if n else np.zeros(0, np.uint64)
        sort_keys = [np.nan_to_num(cols[c], nan=-1.0) for c in reversed(_FLOAT_COLS)]
        sort_keys += [cols["label"], h]
        order = np.lexsort(sort_keys)
        out = {c: v[order] for c, v in cols.items()}
        out["hash"] = h[order]
        return out

    def image_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(image scores, labels as bool) in canonical order, for protocol-specific numbers."""
        tab = self._table()
        return tab["score"], tab["label"].astype(bool)

    def _pool_counts(self, keys: Sequence[tuple[str, str, str]]) -> tuple[np.ndarray, np.ndarray] | None:
        """Summed (pos, neg) counts per ascending score group over the given pool keys."""
        present = [self._pool[k] for k in keys if k in self._pool]
        if not present:
            return None
        if not self.exact:
            pos = sum(p[0] for p in present)
            neg = sum(p[1] for p in present)
            return pos, neg
        items = [it for lst in present for it in lst]
        bits = np.concatenate([it[0] for it in items])
        pos = np.concatenate([it[1] for it in items])
        neg = np.concatenate([it[2] for it in items])
        uniq, inv = np.unique(bits, return_inverse=True)
        return (
            np.bincount(inv, weights=pos, minlength=uniq.size),
            np.bincount(inv, weights=neg, minlength=uniq.size),
        )

    def compute(self, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
        """All metrics, breakdowns, counts and the choices behind them.

        ``bootstrap=0`` skips the intervals (``ci95`` is then ``None`` everywhere).
        """
        tab = self._table()
        undefined: dict[str, str] = {}
        lab = tab["label"]
        fakes = lab == 1
        reals = lab == 0
        metrics: dict[str, dict[str, Any]] = {}

        def put(target: dict, prefix: str, name: str, value: float | None, n: int,
                ci: list[float] | None, reason: str | None) -> None:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                value = None
                ci = None
                undefined[prefix + name] = reason or "undefined"
            target[name] = {"value": None if value is None else float(value), "ci95": ci, "n": int(n)}

        boot = _Bootstrap(bootstrap, seed)

        def mean_metric(target, prefix, template, values, reason_empty):
            """A mean over images of the table's metric ``template``, with the interval it names."""
            row = spec(template)
            name = row.name(self.threshold)
            v = values[~np.isnan(values)]
            if v.size == 0:
                put(target, prefix, name, None, 0, None, reason_empty)
            else:
                ci = boot.mean_ci(prefix + name, v) if row.interval == "bootstrap" else None
                put(target, prefix, name, float(v.mean()), v.size, ci, None)

        # --- mean-of-images pixel metrics on fakes (the per-image column has the metric's name)
        for col in ("iou", "f1", "precision", "recall", "mcc"):
            mean_metric(metrics, "", f"pixel/{col}@{{t}}/mean-of-images/fakes", tab[col][fakes], "no fake images")
        # --- pooled threshold metrics
        c = self._conf
        pooled = _ratio_metrics(c["tp"], c["fp"], c["fn"], c["tn"])
        n_f = int(fakes.sum())
        for m in ("iou", "f1", "precision", "recall", "mcc"):
            name = metric_name(f"pixel/{m}@{{t}}/pooled/fakes", self.threshold)
            if n_f == 0:
                put(metrics, "", name, None, 0, None, "no fake images")
            else:
                put(metrics, "", name, pooled[m], n_f, None, None)
        mean_metric(metrics, "", "pixel/f1@best/mean-of-images/fakes", tab["f1best"][fakes], "no fake images")
        # --- pooled AUC/AP
        bound: dict[str, float | None] = {}
        for which, keys, n_img in (
            ("all", [("all", "", "fake"), ("all", "", "real")], len(lab)),
            ("fakes", [("all", "", "fake")], n_f),
        ):
            self._pooled_auc_ap(metrics, "", which, keys, n_img, put, bound)
        # --- per-image AUC/AP
        excluded = int(np.count_nonzero(np.isnan(tab["auc"][fakes])))
        for m in ("auc", "ap"):
            mean_metric(metrics, "", f"pixel/{m}/mean-of-images/fakes", tab[m][fakes],
                        "no fake image has a mask that is neither empty nor full")
        mean_metric(metrics, "", "pixel/fp-area@{t}/mean-of-images/reals", tab["fparea"][reals], "no real images")
        # --- image level
        self._image_metrics(metrics, "", tab["score"], lab, put, boot, full=True)

        # --- breakdowns
        breakdowns: dict[str, dict[str, dict[str, Any]]] = {}
        real_keys = [("all", "", "real")]
        group_counts: dict[str, dict[str, dict[str, int]]] = {}
        for kind in _GROUP_KINDS:
            breakdowns[kind] = {}
            codes = tab[kind]
            vocab = self._vocab[kind]
            if kind == "parts":
                values = sorted({p for combo in vocab for p in combo})
            else:
                values = sorted(set(vocab))
            for value in values:
                if kind == "area" and not value:
                    continue  # reals, and fakes whose dataset has no area_ratio
                if kind == "parts":
                    member_codes = [i for i, combo in enumerate(vocab) if value in combo]
                else:
                    member_codes = [vocab.index(value)]
                in_group = np.isin(codes, member_codes)
                if kind in _FAKE_ONLY_KINDS:
                    g_fake = in_group & fakes
                    if not g_fake.any():
                        continue
                    g_img = g_fake | reals
                    fake_keys = [(kind, value, "fake")]
                    all_keys = fake_keys + real_keys
                else:
                    g_fake = in_group & fakes
                    g_img = in_group
                    fake_keys = [(kind, value, "fake")]
                    all_keys = fake_keys + [(kind, value, "real")]
                res: dict[str, Any] = {}
                prefix = f"breakdowns/{kind}/{value}/"
                for col in ("iou", "f1"):
                    mean_metric(res, prefix, f"pixel/{col}@{{t}}/mean-of-images/fakes", tab[col][g_fake], "no fake images")
                self._pooled_auc_ap(res, prefix, "fakes", fake_keys, int(g_fake.sum()), put, None, only_auc=True)
                self._pooled_auc_ap(res, prefix, "all", all_keys, int(g_img.sum()), put, None, only_auc=True)
                self._image_metrics(res, prefix, tab["score"][g_img], lab[g_img], put, boot, full=False)
                breakdowns[kind][value] = res
                group_counts.setdefault(kind, {})[value] = {
                    "fakes": int(g_fake.sum()), "reals": int((g_img & reals).sum())
                }

        dup = int(tab["hash"].size - np.unique(tab["hash"]).size)
        counts = {
            "images": int(lab.size),
            "fakes": n_f,
            "reals": int(reals.sum()),
            "fakes_excluded_per_image_auc": excluded,
            "fakes_empty_mask": self._masks["empty"],
            "fakes_full_mask": self._masks["full"],
            "pixels_fakes": self._pixels["fake"],
            "pixels_reals": self._pixels["real"],
            "duplicate_sample_ids": dup,
            "breakdowns": group_counts,
        }
        info = {
            "threshold": self.threshold,
            "threshold_rule": f"pred = map {'>' if self.strict else '>='} t (float32 comparison)",
            "bins": None if self.exact else self.bins,
            "exact": self.exact,
            "pooled_mode": "exact (all distinct scores kept)" if self.exact else (
                f"histogram, {self.bins} uniform bins on [0,1], scores in a bin treated as tied "
                "(sklearn's tie rule: trapezoid for AUC, one precision step for AP)"
            ),
            "pooled_auc_error_bound": bound,
            "empty_rule": EMPTY_RULE,
            "image_score_rule": (
                f"localizer's image score when given; otherwise the {self.image_score_rule} of the "
                "score map at mask resolution"
            ),
            "tpr_at_fpr_rule": "TPR of the ROC point with the highest TPR among those with FPR <= 0.05 "
                               "(lowest threshold whose FPR <= 5%), no interpolation",
            "generator_part_groups": "fakes of the group; image-level and pixel/.../all metrics "
                                     "compare them against ALL real images",
            "area_bins": {
                "edges": list(self.area_bins),
                "labels": area_labels(self.area_bins),
                "rule": (f"fakes by the dataset's area_ratio (forged share of the mask): small < {self.area_bins[0]:g}"
                         f" <= medium < {self.area_bins[1]:g} <= large; like generator groups, compared against"
                         " ALL real images; fakes without area_ratio (datasets made before it) are in no bin"),
            },
            "bootstrap": {
                "resamples": bootstrap,
                "seed": seed,
                "method": "percentile 2.5/97.5; mean-of-images: resample per-image values; image "
                          "AUC/AP: resample images stratified by label; rows in sample-id-hash order",
                "pooled": "ci95 null: resampling images would need per-image histograms",
            },
            "undefined": undefined,
        }
        return {"metrics": metrics, "breakdowns": breakdowns, "counts": counts, "info": info}

    def _pooled_auc_ap(self, target, prefix, which, keys, n_img, put, bound, only_auc=False) -> None:
        pc = self._pool_counts(keys)
        names = [metric_name(f"pixel/{m}/pooled/{which}") for m in (("auc",) if only_auc else ("auc", "ap"))]
        if pc is None or n_img == 0:
            for name in names:
                put(target, prefix, name, None, 0, None, "no images")
            return
        pos, neg = pc
        auc, ap = auc_ap_from_counts(pos, neg)
        npos, nneg = float(pos.sum()), float(neg.sum())
        reason = "one pixel class only (no forged or no pristine pixels)"
        put(target, prefix, names[0], float(auc) if npos and nneg else None, n_img, None, reason)
        if not only_auc:
            put(target, prefix, names[1], float(ap) if npos and nneg else None, n_img, None, reason)
        if bound is not None:
            if self.exact or not (npos and nneg):
                bound[which] = 0.0 if self.exact else None
            else:
                bound[which] = float(0.5 * np.dot(pos.astype(np.float64), neg) / (npos * nneg))

    def _image_metrics(self, target, prefix, scores, labels, put, boot, full: bool) -> None:
        t = self.threshold
        r = binary_image_metrics(scores, labels, self.threshold, self.strict)
        n = int(scores.size)
        one_class = "needs both real and fake images"
        ci_auc, ci_ap = (None, None)
        # AUC and AP share one stratified resampling of the images (the table says so for both).
        if r["auc"] is not None and spec("image/auc/all").interval == "stratified-bootstrap":
            ci_auc, ci_ap = boot.image_ci(prefix + "image", scores, labels)
        put(target, prefix, metric_name("image/auc/all"), r["auc"], n, ci_auc, one_class)
        put(target, prefix, metric_name("image/ap/all"), r["ap"], n, ci_ap, one_class)
        if full:
            put(target, prefix, metric_name("image/accuracy@{t}/all", t), r["accuracy"], n, None, "no images")
            put(target, prefix, metric_name("image/balanced-accuracy@{t}/all", t), r["balanced_accuracy"], n, None,
                one_class)
            put(target, prefix, metric_name("image/tpr@fpr0.05/all"), r["tpr@fpr0.05"], n, None, one_class)


def _curve_metrics(keys: np.ndarray, pidx: np.ndarray) -> tuple[float, float, float]:
    """Exact per-image ROC-AUC, AP and best F1 from the sorted keys, visiting positives only.

    For the forged pixel at sorted position ``i`` (the ``k``-th forged one), ``a`` is the start
    of its group of tied scores (negatives sort first inside a group: their key's low bit is 0)
    and ``c`` the number of forged pixels before ``a``. Then, summing over forged pixels,

    * AUC numerator = sum of (pristine strictly below + half the tied pristine)
      = 0.5 * sum((a - c) + (i - k)), since ``i - k`` pristine pixels precede ``i``;
    * AP = mean of the precision at its group's threshold, (P - c) / (n - a);
    * best F1 = max of 2 TP / (TP + FP + P) at those thresholds (F1 peaks where a threshold
      just admits a group holding forged pixels).

    These equal sklearn's tie handling exactly, in O(P log n) after the sort.
    """
    n = keys.size
    npos = pidx.size
    a = np.searchsorted(keys, keys[pidx] & np.uint32(0xFFFFFFFE))
    c = np.searchsorted(pidx, a)
    tp = (npos - c).astype(np.float64)
    flagged = (n - a).astype(np.float64)
    k_sum = npos * (npos - 1) / 2.0
    auc = 0.5 * (float(a.sum()) - float(c.sum()) + float(pidx.sum()) - k_sum) / (npos * (n - npos))
    ap = float(np.sum(tp / flagged)) / npos
    f1best = float(np.max(2.0 * tp / (flagged + npos)))
    return auc, ap, f1best


def _ratio_metrics(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """IoU, F1, precision, recall and MCC from confusion counts, with the empty rule."""
    gt_empty = tp + fn == 0
    pred_empty = tp + fp == 0
    both_empty = gt_empty and pred_empty

    def ratio(num: float, den: float) -> float:
        if den == 0:
            return 1.0 if both_empty else 0.0
        return num / den

    out = {
        "iou": ratio(tp, tp + fp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }
    den = float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn)
    if den == 0:
        out["mcc"] = 1.0 if (fp == 0 and fn == 0) else 0.0
    else:
        out["mcc"] = (float(tp) * tn - float(fp) * fn) / math.sqrt(den)
    return out


class _Bootstrap:
    """Seeded percentile bootstrap; one generator per metric name, chunked to bound memory."""

    CHUNK = 1 << 22  # max cells of a (resamples x images) block

    def __init__(self, resamples: int, seed: int) -> None:
        self.b = int(resamples)
        self.seed = int(seed)

    def _rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(name.encode("utf-8"))])

    @staticmethod
    def _pct(x: np.ndarray) -> list[float]:
        lo, hi = np.percentile(x, [2.5, 97.5])
        return [float(lo), float(hi)]

    def mean_ci(self, name: str, v: np.ndarray) -> list[float] | None:
        if self.b <= 0 or v.size == 0:
            return None
        rng = self._rng(name)
        n = v.size
        rows = max(1, self.CHUNK // n)
        out = np.empty(self.b)
        for i in range(0, self.b, rows):
            k = min(rows, self.b - i)
            out[i:i + k] = v[rng.integers(0, n, size=(k, n))].mean(axis=1)
        return self._pct(out)

    def image_ci(self, name: str, scores: np.ndarray, labels: np.ndarray):
        """Intervals of image AUC and AP, resampling reals and fakes separately (stratified)."""
        if self.b <= 0:
            return None, None
        rng = self._rng(name)
        order = np.argsort(scores, kind="stable")
        s = scores[order]
        lab = labels[order].astype(bool)
        starts, _ = _group_sorted(s)
        pos_idx = np.flatnonzero(lab)
        neg_idx = np.flatnonzero(~lab)
        n = s.size
        rows = max(1, self.CHUNK // n)
        aucs = np.empty(self.b)
        aps = np.empty(self.b)
        for i in range(0, self.b, rows):
            k = min(rows, self.b - i)
            wpos = np.zeros((k, n))
            wneg = np.zeros((k, n))
            for idx, w in ((pos_idx, wpos), (neg_idx, wneg)):
                m = idx.size
                draw = rng.integers(0, m, size=(k, m)) + (np.arange(k) * m)[:, None]
                w[:, idx] = np.bincount(draw.ravel(), minlength=k * m).reshape(k, m)
            gp = np.add.reduceat(wpos, starts, axis=1)
            gn = np.add.reduceat(wneg, starts, axis=1)
            a, p = auc_ap_from_counts(gp, gn)
            aucs[i:i + k] = a
            aps[i:i + k] = p
        return self._pct(aucs), self._pct(aps)
