"""Local noise-level inconsistency: a training-free localizer for spliced and inpainted regions.

References:

* B. Mahdian and S. Saic, "Using noise inconsistencies for blind image forensics",
  Image and Vision Computing 27(10), 2009 -- segment the image by local noise level; regions
  whose noise differs from the rest are suspicious.
* S. Lyu, X. Pan and X. Zhang, "Exposing region splicing forgeries with blind local noise
  estimation", International Journal of Computer Vision 110(2), 2014 -- local noise-level
  estimation and its inconsistency as a splicing cue.
* J. Immerkaer, "Fast noise variance estimation", Computer Vision and Image Understanding
  64(2), 1996 -- the estimator used here.

Why it finds inpainting: a camera image carries sensor noise everywhere, while an inpainted
fill (diffusion-based or OpenCV) is synthesised and is usually smoother -- or noisier -- than
its surroundings. Immerkaer's 3x3 operator is the difference of two Laplacians, so it cancels
locally linear image content and keeps mostly noise; averaging its absolute value over a
window gives a local noise sigma. The anomaly is the distance of that sigma from the image's
median sigma in units of a robust spread (MAD), so the map is comparable across images with
different overall noise. Edges and texture also raise the estimate; that is the method's known
false-positive source and part of what a learned localizer should beat.

This file uses only :mod:`dolos_bench.eval.api`, like any outside plug-in.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from dolos_bench.eval.api import Localizer, LocalizerOutput

__all__ = ["NoiseLocalizer", "local_noise_sigma", "noise_map"]

_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
_MAD_TO_SIGMA = 1.4826


def local_noise_sigma(gray: np.ndarray, window: int = 16) -> np.ndarray:
    """Per-pixel noise sigma (grey levels) from Immerkaer's estimator over a ``window`` box."""
    residual = cv2.filter2D(gray, cv2.CV_32F, _IMMERKAER, borderType=cv2.BORDER_REFLECT)
    np.abs(residual, out=residual)
    mean_abs = cv2.boxFilter(residual, -1, (window, window), borderType=cv2.BORDER_REFLECT)
    return mean_abs * np.float32(math.sqrt(math.pi / 2.0) / 6.0)


def noise_map(
    image: np.ndarray,
    *,
    window: int = 16,
    z_half: float = 3.0,
    min_spread: float = 0.25,
) -> np.ndarray:
    """Noise-inconsistency map of one ``uint8`` RGB image, float32 in [0, 1).

    ``z = |sigma_local - median| / max(1.4826 * MAD, 0.1 * median, min_spread)`` and the map is
    ``z / (z + z_half)``: a region ``z_half`` robust deviations away maps to 0.5. The floors on
    the spread stop a noiseless (synthetic or heavily compressed) image from turning rounding
    noise into certainty.
    """
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    sigma = local_noise_sigma(gray, window)
    med = float(np.median(sigma))
    spread = _MAD_TO_SIGMA * float(np.median(np.abs(sigma - med)))
    spread = max(spread, 0.1 * med, float(min_spread))
    z = np.abs(sigma - np.float32(med)) / np.float32(spread)
    return (z / (z + np.float32(z_half))).astype(np.float32)


class NoiseLocalizer(Localizer):
    """Local noise-level inconsistency (Mahdian & Saic 2009; Lyu, Pan & Zhang 2014).

    Options: ``window`` (box side in pixels over which noise is estimated; larger = steadier
    estimate, blurrier map), ``z_half`` (robust deviations that map to 0.5), ``min_spread``
    (grey levels), ``percentile`` (image score = this percentile of the map).
    """

    name = "noise"
    devices = ("cpu",)  # OpenCV on the CPU: --device cuda is refused, not silently ignored

    def __init__(
        self,
        device: str = "cpu",
        window: int = 16,
        z_half: float = 3.0,
        min_spread: float = 0.25,
        percentile: float = 99.0,
    ) -> None:
        window, z_half, min_spread, percentile = int(window), float(z_half), float(min_spread), float(percentile)
        if window < 3 or not z_half > 0 or not min_spread > 0 or not 0 <= percentile <= 100:
            raise ValueError("need window >= 3, z_half > 0, min_spread > 0 and 0 <= percentile <= 100")
        super().__init__(
            device=device, window=window, z_half=z_half, min_spread=min_spread, percentile=percentile
        )
        self.window, self.z_half, self.min_spread, self.percentile = window, z_half, min_spread, percentile

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        maps = [
            noise_map(
                np.asarray(im, dtype=np.uint8), window=self.window, z_half=self.z_half, min_spread=self.min_spread
            )
            for im in images
        ]
        scores = [float(np.percentile(m, self.percentile)) for m in maps]
        return LocalizerOutput(maps=maps, scores=scores)
