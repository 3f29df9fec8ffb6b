"""How much a fake changed its real image: the mask's area, and the change of the pixels inside it.

Detectors' scores depend mostly on how much was changed (Semi-Truths, NeurIPS 2024; SAGI-D,
2025), so every fake records three numbers, computed once at build time from the generator's
output and the preprocessed real image it was made from, *before* any perturbation:

* ``area_ratio``: forged pixels / all pixels of the mask, in [0, 1].
* ``change_ssim``: the mean, over the forged pixels, of the SSIM map (Wang et al., 2004) of the
  output against the original: 7x7 uniform window, K1 = 0.01, K2 = 0.03, data range 255, sample
  covariance, reflected borders, computed per RGB channel and averaged over channels. 1 means
  the region is structurally unchanged; lower means more change. These are scikit-image's
  ``structural_similarity`` defaults, so the value equals the mean of its ``full=True`` map
  over the mask (tests/test_magnitude.py holds them together).
* ``change_ciede2000``: the mean CIEDE2000 colour difference (Sharma, Wu and Dalal, 2005;
  kL = kC = kH = 1) over the forged pixels, in CIELAB from sRGB under D65 / 2 degrees (the
  conversion scikit-image's ``rgb2lab`` uses). 0 means no colour change; about 2.3 is a just
  noticeable difference.

Reals get null for all three; a fully generated fake has ``area_ratio`` 1 and null changes
(there is no original). Pure numpy and scipy (core dependencies): the build does not need
scikit-image, which the tests use as the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .schema import MAGNITUDE_COLUMNS

__all__ = ["MAGNITUDE_COLUMNS", "area_ratio", "change_ciede2000", "change_ssim", "magnitude", "rgb_to_lab"]

_SSIM_WINDOW = 7
_K1, _K2, _RANGE = 0.01, 0.03, 255.0
# sRGB (linear) -> XYZ, and the D65 / 2 degree white point, as in scikit-image's rgb2lab.
_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def _forged(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m.any(axis=-1)
    return m != 0


def area_ratio(mask: np.ndarray) -> float:
    """Share of the mask's pixels that are forged (nonzero)."""
    forged = _forged(mask)
    return float(np.count_nonzero(forged)) / forged.size


def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return a[..., :3].astype(np.float64)


def ssim_map(original: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """The SSIM map of two uint8 images (H, W) or (H, W, C), averaged over channels."""
    from scipy.ndimage import uniform_filter

    x, y = _rgb(original), _rgb(changed)
    n = _SSIM_WINDOW**2
    cov_norm = n / (n - 1.0)
    c1, c2 = (_K1 * _RANGE) ** 2, (_K2 * _RANGE) ** 2

    def mean(v: np.ndarray) -> np.ndarray:  # per channel: the window spans rows and columns only
        return uniform_filter(v, size=(_SSIM_WINDOW, _SSIM_WINDOW, 1))

    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(axis=-1)


def change_ssim(original: np.ndarray, changed: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean SSIM inside the mask (None for an empty mask).

    Only the mask's bounding box, grown by the window's radius, is filtered: a pixel's SSIM
    depends on its 7x7 neighbourhood alone, and where the box meets the image's border it
    reflects there as the whole image does, so the values are the whole map's, exactly.
    """
    forged = _forged(mask)
    if not forged.any():
        return None
    rows, cols = np.flatnonzero(forged.any(axis=1)), np.flatnonzero(forged.any(axis=0))
    r = _SSIM_WINDOW // 2
    y0, y1 = max(rows[0] - r, 0), min(rows[-1] + r + 1, forged.shape[0])
    x0, x1 = max(cols[0] - r, 0), min(cols[-1] + r + 1, forged.shape[1])
    box = (slice(y0, y1), slice(x0, x1))
    return float(ssim_map(np.asarray(original)[box], np.asarray(changed)[box])[forged[box]].mean())


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (L in [0, 100]) of uint8 sRGB pixels (..., 3), D65 / 2 degrees."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    t = (linear @ _XYZ_FROM_RGB.T) / _WHITE_D65
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 difference of CIELAB colours (..., 3), kL = kC = kH = 1 (Sharma et al. 2005, eqs. 1-17)."""
    l1, a1, b1 = np.moveaxis(np.asarray(lab1, dtype=np.float64), -1, 0)
    l2, a2, b2 = np.moveaxis(np.asarray(lab2, dtype=np.float64), -1, 0)
    pow25_7 = 25.0**7
    # a' : a stretched by G, which depends on the mean chroma of the pair (eqs. 2-5).
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2.0
    g = 0.5 * (1.0 - np.sqrt(c_mean**7 / (c_mean**7 + pow25_7)))
    a1p, a2p = a1 * (1.0 + g), a2 * (1.0 + g)
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.mod(np.arctan2(b1, a1p), 2 * np.pi)
    h2p = np.mod(np.arctan2(b2, a2p), 2 * np.pi)
    # Differences (eqs. 8-10); the hue difference is taken the short way round, 0 for achromatic pairs.
    dl = l2 - l1
    dc = c2p - c1p
    chroma = c1p * c2p
    dh = h2p - h1p
    dh = np.where(dh > np.pi, dh - 2 * np.pi, np.where(dh < -np.pi, dh + 2 * np.pi, dh))
    dh = np.where(chroma == 0, 0.0, dh)
    dhh = 2.0 * np.sqrt(chroma) * np.sin(dh / 2.0)
    # Means (eqs. 12-14): the mean hue also goes the short way round.
    l_mean = (l1 + l2) / 2.0
    cp_mean = (c1p + c2p) / 2.0
    h_sum = h1p + h2p
    far = np.abs(h1p - h2p) > np.pi
    h_mean = np.where(far, np.where(h_sum < 2 * np.pi, h_sum + 2 * np.pi, h_sum - 2 * np.pi), h_sum) / 2.0
    h_mean = np.where(chroma == 0, h_sum, h_mean)
    t = (1.0 - 0.17 * np.cos(h_mean - np.radians(30)) + 0.24 * np.cos(2 * h_mean)
         + 0.32 * np.cos(3 * h_mean + np.radians(6)) - 0.20 * np.cos(4 * h_mean - np.radians(63)))
    # Weights and the rotation term (eqs. 15-17).
    sl = 1.0 + 0.015 * (l_mean - 50.0) ** 2 / np.sqrt(20.0 + (l_mean - 50.0) ** 2)
    sc = 1.0 + 0.045 * cp_mean
    sh = 1.0 + 0.015 * cp_mean * t
    rc = 2.0 * np.sqrt(cp_mean**7 / (cp_mean**7 + pow25_7))
    rt = -np.sin(2.0 * np.radians(30) * np.exp(-(((np.degrees(h_mean) - 275.0) / 25.0) ** 2))) * rc
    lt, ct, ht = dl / sl, dc / sc, dhh / sh
    return np.sqrt(np.maximum(lt**2 + ct**2 + ht**2 + rt * ct * ht, 0.0))


def change_ciede2000(original: np.ndarray, changed: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean CIEDE2000 colour difference inside the mask (None for an empty mask)."""
    forged = _forged(mask)
    if not forged.any():
        return None
    a, b = _rgb(original)[forged], _rgb(changed)[forged]
    return float(ciede2000(rgb_to_lab(a), rgb_to_lab(b)).mean())


def magnitude(original: np.ndarray | None, changed: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """The three magnitude columns of a fake; without an original, only its area."""
    out: dict[str, Any] = {"area_ratio": area_ratio(mask), "change_ssim": None, "change_ciede2000": None}
    if original is not None and np.asarray(original).shape[:2] == np.asarray(changed).shape[:2]:
        out["change_ssim"] = change_ssim(original, changed, mask)
        out["change_ciede2000"] = change_ciede2000(original, changed, mask)
    return out
