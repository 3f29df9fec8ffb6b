"""Error level analysis (ELA): the oldest training-free localizer, kept as a floor to beat.

Reference: N. Krawetz, "A Picture's Worth... Digital Image Analysis and Forensics",
Black Hat Briefings USA, 2007 (https://www.hackerfactor.com/papers/bh-usa-07-krawetz-wp.pdf).

Idea: re-save the image as JPEG at quality ``q`` and look at how much each pixel changes. Content
that was already JPEG-compressed at about that quality sits near a fixed point of the codec and
changes little; content that was pasted, inpainted or compressed differently has not been
through the same quantisation and changes more. Smooth synthetic fills (OpenCV inpainting) can
instead change *less* than grainy camera content -- ELA measures compression history, not
"forgedness" -- which is exactly why it is a useful, honest baseline.

This file uses only :mod:`dolos_bench.eval.api`, like any outside plug-in.
"""

from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np

from dolos_bench.eval.api import Localizer, LocalizerOutput

__all__ = ["ELALocalizer", "ela_map"]


def ela_map(
    image: np.ndarray,
    *,
    quality: int = 90,
    reduce: str = "max",
    sigma: float = 2.0,
    scale: float = 4.0,
) -> np.ndarray:
    """The ELA map of one ``uint8`` RGB image, float32 in [0, 1).

    The per-pixel error (max or mean of the absolute RGB difference, Gaussian-smoothed with
    ``sigma`` pixels because single-pixel errors are dominated by the 8x8 block grid) is mapped
    through ``e / (e + scale)``. A *fixed* half-saturation ``scale`` (in grey levels) rather than
    dividing by each image's own maximum or percentile keeps maps comparable across images: a
    pristine image must be able to score low everywhere, which per-image normalisation forbids.
    """
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - libjpeg does not fail on valid uint8 input
        raise RuntimeError("JPEG encoding failed")
    resaved = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    diff = cv2.absdiff(np.ascontiguousarray(image), np.ascontiguousarray(resaved))
    err = diff.max(axis=2) if reduce == "max" else diff.mean(axis=2)
    err = err.astype(np.float32)
    if sigma > 0:
        err = cv2.GaussianBlur(err, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)
    return err / (err + np.float32(scale))


class ELALocalizer(Localizer):
    """Error level analysis (Krawetz 2007): JPEG re-save residual as a forgery map.

    Options: ``quality`` (re-save JPEG quality, default 90), ``reduce`` (``max`` or ``mean``
    over RGB), ``sigma`` (smoothing, pixels), ``scale`` (grey levels of error that map to 0.5),
    ``percentile`` (image score = this percentile of the map; a high percentile because a
    forgery is usually a small part of the image and a mean would drown it).
    """

    name = "ela"
    devices = ("cpu",)  # OpenCV on the CPU: --device cuda is refused, not silently ignored

    def __init__(
        self,
        device: str = "cpu",
        quality: int = 90,
        reduce: str = "max",
        sigma: float = 2.0,
        scale: float = 4.0,
        percentile: float = 99.0,
    ) -> None:
        quality, sigma, scale, percentile = int(quality), float(sigma), float(scale), float(percentile)
        if not 1 <= quality <= 100:
            raise ValueError(f"quality={quality} must be in 1..100")
        if reduce not in ("max", "mean"):
            raise ValueError(f"reduce={reduce!r} must be 'max' or 'mean'")
        if not scale > 0 or not sigma >= 0 or not 0 <= percentile <= 100:
            raise ValueError("need scale > 0, sigma >= 0 and 0 <= percentile <= 100")
        super().__init__(
            device=device, quality=quality, reduce=reduce, sigma=sigma, scale=scale, percentile=percentile
        )
        self._kw: dict[str, Any] = dict(quality=quality, reduce=reduce, sigma=sigma, scale=scale)
        self.percentile = percentile

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        maps = [ela_map(np.asarray(im, dtype=np.uint8), **self._kw) for im in images]
        scores = [float(np.percentile(m, self.percentile)) for m in maps]
        return LocalizerOutput(maps=maps, scores=scores)
