"""Evaluation protocols: the choices that make two numbers comparable, named in one place.

A :class:`Protocol` fixes how a map is brought to the mask's resolution, the threshold and its
comparison, which images localization is scored on, and how an image score is derived when the
localizer gives none. ``default`` is this benchmark's own protocol; ``dolos`` reproduces the
evaluation code of the Dolos paper (Tantaru, Oneata, Oneata, "Weakly-supervised deepfake
localization in diffusion-generated images", WACV 2024; github.com/bit-ml/dolos,
``dolos/methods/patch_forensics/evaluate.py`` and ``dolos/metrics/iou_ignite.py``), which the
authors share between their Grad-CAM, Patches and Attention methods:

* Localization, fake test images only: ``Image.fromarray(pred).resize(mask.shape)`` -- PIL on a
  float ("F") image with PIL's default filter, BICUBIC (PIL's cubic, a = -0.5, antialiased when
  shrinking; OpenCV's INTER_CUBIC uses a = -0.75 and flips ~2% of thresholded pixels on a
  19->256 upsample, so it is *not* used for this protocol) -- then ``pred > 0.5`` (strict),
  IoU per image with an empty union counting 1, averaged and multiplied by 100. Masks are
  256x256. (The authors pass ``mask.shape`` = (H, W) where PIL expects (W, H); their masks are
  square, so it does not matter. We pass (W, H).)
* Detection: average precision (sklearn) x100 on ``n = min(#reals, #fakes)`` reals and as many
  fakes, both drawn with ``random.sample`` from Python's ``random`` seeded once with 1337 at
  import; 5 repeats, each drawing reals then fakes; reported as ``mean ± 2 * std`` with numpy's
  population std (ddof = 0). With fewer fakes than reals the fakes are all used each repeat (in
  a new order, which AP ignores) and the reals are subsampled; with fewer reals, the reverse.
  The draw depends on the order of the score lists, as in the original (there: ``os.listdir``).
* Image score when none is given: the mean of the map (the Patches method's ``label_preds``);
  here it is taken on the map at mask resolution, which differs slightly from the mean of the
  native-resolution map -- a localizer that wants the exact value passes its own score.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Sequence

import numpy as np

from dolos_bench.eval.metrics import MetricState, binary_image_metrics
from dolos_bench.metric_specs import metric_name

__all__ = [
    "Protocol",
    "PROTOCOLS",
    "INTERPOLATIONS",
    "get_protocol",
    "resize_map",
    "dolos_iou",
    "dolos_localization_iou",
    "dolos_detection_ap",
    "dolos_results",
]

Interpolation = Literal["nearest", "bilinear", "bicubic", "area", "lanczos", "pil-bicubic", "pil-bilinear"]
INTERPOLATIONS: tuple[str, ...] = (
    "nearest", "bilinear", "bicubic", "area", "lanczos", "pil-bicubic", "pil-bilinear",
)


@dataclass(frozen=True)
class Protocol:
    """Everything that must be equal for two results to be compared."""

    name: str
    description: str
    threshold: float = 0.5
    strict: bool = False  # pred = map > t (True) or map >= t (False)
    interpolation: str = "bilinear"
    localization_on: Literal["fakes", "fakes+reals"] = "fakes+reals"
    image_score_rule: Literal["max", "mean"] = "max"
    bins: int = 10000
    exact: bool = False
    extras: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; one of {INTERPOLATIONS}")

    def make_state(self, **overrides: Any) -> MetricState:
        """A fresh metric state configured as this protocol says (``overrides`` for tests)."""
        kw: dict[str, Any] = dict(
            threshold=self.threshold, bins=self.bins, exact=self.exact,
            strict=self.strict, image_score_rule=self.image_score_rule,
        )
        kw.update(overrides)
        return MetricState(**kw)

    def resize(self, score_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The map at ``size`` = (H, W), the protocol's way."""
        return resize_map(score_map, size, self.interpolation)

    def info(self) -> dict[str, Any]:
        """A JSON-able record for the results file."""
        d = asdict(self)
        d["extras"] = list(self.extras)
        d["threshold_rule"] = f"pred = map {'>' if self.strict else '>='} {self.threshold:g}"
        return d


PROTOCOLS: dict[str, Protocol] = {
    "default": Protocol(
        name="default",
        description=(
            "dolos-bench default: map resized to the mask with bilinear interpolation (OpenCV), "
            "pred = map >= 0.5; localization on fakes (fp-area and pooled/all also use reals); "
            "image score = map max when the localizer gives none."
        ),
    ),
    "dolos": Protocol(
        name="dolos",
        description=(
            "Dolos paper (WACV 2024) evaluation: PIL bicubic resize to the 256x256 mask, "
            "pred = map > 0.5, IoU per fake image (empty union = 1) averaged x100; detection AP "
            "x100 on min(#reals, #fakes) images per class drawn with Python random seeded 1337, "
            "5 repeats, mean ± 2 std."
        ),
        strict=True,
        interpolation="pil-bicubic",
        localization_on="fakes",
        image_score_rule="mean",
        extras=(metric_name("dolos/localization/iou@{t}x100", 0.5),
                f"{metric_name('dolos/detection/ap')} x100 (mean, 2std)"),
    ),
}


def get_protocol(name: str, *, exact: bool = False) -> Protocol:
    """The protocol registered under ``name``; ``exact`` switches pooled AUC/AP to the exact mode.

    Exact mode keeps every distinct pixel score instead of 10,000-bin histograms: exact to the
    last digit, but its memory grows with the number of images, so it is meant for small sets.
    The switch is recorded in the results' ``protocol.details.exact``.
    """
    try:
        protocol = PROTOCOLS[name]
    except KeyError:
        raise KeyError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}") from None
    return replace(protocol, exact=True) if exact else protocol


# --------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------


def resize_map(score_map: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """Resize a float map to ``size`` = (H, W) and clip it to [0, 1].

    OpenCV does the plain interpolations (fast, no antialiasing: maps are usually smaller than
    masks, so this is upsampling). The ``pil-*`` modes use Pillow on a float32 "F" image, which
    is what the Dolos code did; they antialias when shrinking. Clipping removes the overshoot of
    cubic kernels so the result is a valid score map; it never changes a ``> 0.5`` decision.
    """
    import cv2

    h, w = int(size[0]), int(size[1])
    m = np.asarray(score_map, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"score map must be 2-D, got shape {m.shape}")
    if m.shape == (h, w):
        out = m.copy()
    elif interpolation.startswith("pil-"):
        from PIL import Image

        resample = {
            "pil-bicubic": Image.Resampling.BICUBIC,
            "pil-bilinear": Image.Resampling.BILINEAR,
        }[interpolation]
        out = np.array(Image.fromarray(m).resize((w, h), resample), dtype=np.float32)
    else:
        flag = {
            "nearest": cv2.INTER_NEAREST,
            "bilinear": cv2.INTER_LINEAR,
            "bicubic": cv2.INTER_CUBIC,
            "area": cv2.INTER_AREA,
            "lanczos": cv2.INTER_LANCZOS4,
        }.get(interpolation)
        if flag is None:
            raise ValueError(f"unknown interpolation {interpolation!r}; one of {INTERPOLATIONS}")
        out = cv2.resize(m, (w, h), interpolation=flag)
    return np.clip(out, 0.0, 1.0, out=out)


# --------------------------------------------------------------------------------------------
# The Dolos paper's numbers
# --------------------------------------------------------------------------------------------


def dolos_iou(pred: np.ndarray, true: np.ndarray) -> float:
    """IoU of two boolean masks; an empty union counts 1 (Dolos ``iou_ignite.iou``)."""
    inter = np.count_nonzero(pred & true)
    union = np.count_nonzero(pred | true)
    return 1.0 if union == 0 else inter / union


def dolos_localization_iou(
    maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], threshold: float = 0.5
) -> float:
    """Mean per-image IoU x100 on fake images, as the Dolos code computes it.

    ``maps`` at any resolution (resized with PIL bicubic to each mask), ``masks`` in this
    project's polarity (nonzero/True = forged). Returns NaN-free float; raises on no images.
    """
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} maps but {len(masks)} masks")
    if not maps:
        raise ValueError("no images")
    ious = []
    for mp, mk in zip(maps, masks):
        true = np.asarray(mk) != 0
        pred = _pil_bicubic_unclipped(mp, true.shape) > threshold
        ious.append(dolos_iou(pred, true))
    return float(100.0 * np.mean(ious))


def _pil_bicubic_unclipped(score_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Dolos's ``Image.fromarray(pred).resize(shape)`` (float "F" image, default BICUBIC)."""
    from PIL import Image

    m = np.asarray(score_map, dtype=np.float32)
    if m.shape == tuple(size):
        return m
    return np.asarray(Image.fromarray(m).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def dolos_detection_ap(
    real_scores: Sequence[float], fake_scores: Sequence[float], seed: int = 1337, repeats: int = 5
) -> tuple[float, float, list[float]]:
    """Detection AP x100 as in the Dolos code: ``(mean, 2 * std, per_repeat)``.

    One ``random.Random(seed)`` serves all repeats; each repeat draws ``min(#reals, #fakes)``
    reals and then as many fakes with ``random.sample`` (without replacement). The std is the
    population std (ddof=0), as ``np.std``. Depends on the order of the inputs, as the original.
    """
    reals = [float(x) for x in real_scores]
    fakes = [float(x) for x in fake_scores]
    if not reals or not fakes:
        raise ValueError("detection AP needs at least one real and one fake score")
    rng = random.Random(seed)
    n = min(len(reals), len(fakes))
    y = np.concatenate([np.zeros(n), np.ones(n)])
    aps = []
    for _ in range(repeats):
        r = rng.sample(reals, n)
        f = rng.sample(fakes, n)
        ap = binary_image_metrics(np.array(r + f), y)["ap"]  # sklearn's AP, numpy only
        aps.append(100.0 * float(ap))
    return float(np.mean(aps)), float(2.0 * np.std(aps)), aps


def dolos_results(state: MetricState, seed: int = 1337, repeats: int = 5) -> dict[str, Any]:
    """The Dolos paper's two numbers from a state built with the ``dolos`` protocol.

    Localization IoU x100 is the state's mean-of-images IoU on fakes (strict threshold, empty
    union = 1: the same rule). Detection AP draws from the image scores in the state's
    canonical order (sample-id hash), the reproducible stand-in for the original's
    ``os.listdir`` order.
    """
    cfg = state.config()
    if not cfg["strict"] or cfg["threshold"] != 0.5:
        raise ValueError("dolos_results needs a state built by the dolos protocol (map > 0.5)")
    t = cfg["threshold"]
    iou = state.compute(bootstrap=0)["metrics"][metric_name("pixel/iou@{t}/mean-of-images/fakes", t)]["value"]
    scores, labels = state.image_scores()
    ap_name = metric_name("dolos/detection/ap")
    out: dict[str, Any] = {
        metric_name("dolos/localization/iou@{t}x100", t): None if iou is None else 100.0 * iou,
        ap_name: None,
    }
    if labels.any() and (~labels).any():
        mean, two_std, per = dolos_detection_ap(scores[~labels], scores[labels], seed, repeats)
        out[ap_name] = {"mean": mean, "2std": two_std, "per_repeat": per}
    return out
