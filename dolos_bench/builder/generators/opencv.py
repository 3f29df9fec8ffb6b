"""Classical OpenCV inpainting: Telea's fast marching method and the Navier-Stokes method.

They need no weights and no accelerator, so they are the generators of the quickstart and of the
tests; they are also a useful "easy" forgery family, since their smooth fills are what early
localizers learned to find. Both are deterministic: ``rng`` is accepted for the interface only.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import cv2
import numpy as np

from dolos_bench.builder.base import Generator, SkipSample
from dolos_bench.config import Strict
from dolos_bench.utils.numbers import number

__all__ = ["TeleaGenerator", "NavierStokesGenerator"]


class _OpenCVInpainter(Generator):
    """Shared body of the two ``cv2.inpaint`` methods; subclasses pick the flag."""

    name: ClassVar[str] = "opencv"
    max_batch: ClassVar[int | None] = None  # one image at a time inside: a batch of any size is a loop
    _flag: ClassVar[int]

    class Config(Strict):
        radius: Annotated[int, number(integer=True, lo=1)] = 3
        """The radius (pixels) of the neighbourhood each filled pixel is estimated from."""

    def __init__(self, radius: int = 3) -> None:
        self.configure(radius=radius)

    def identity(self) -> dict[str, Any]:
        # The OpenCV version is part of the identity: the fill is not promised stable across releases.
        return {"radius": self.radius, "opencv": cv2.__version__}

    def inpaint(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The image with pixels where ``mask > 0`` filled; every other pixel is the input's, bit for bit.

        Raises :class:`SkipSample` when the mask covers the whole image: there is nothing to
        inpaint from, and cv2 would silently hand back the original, a "fake" that is real.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"{self.name}: image must be a uint8 RGB array of shape (H, W, 3), got {desc}")
        if not isinstance(mask, np.ndarray) or mask.shape != image.shape[:2]:
            got = mask.shape if isinstance(mask, np.ndarray) else type(mask).__name__
            raise ValueError(f"{self.name}: mask must be an (H, W) array matching the image {image.shape[:2]}, got {got}")
        region = mask > 0  # accepts 0/255, 0/1 and bool masks alike
        out = image.copy()
        if not region.any():
            return out
        if region.all():
            raise SkipSample(f"{self.name}: the mask covers the whole image, nothing to inpaint from")
        bgr = np.ascontiguousarray(image[..., ::-1])
        cv_mask = region.astype(np.uint8) * np.uint8(255)
        filled = cv2.inpaint(bgr, cv_mask, float(self.radius), self._flag)
        # cv2.inpaint leaves unmasked pixels alone today; pasting only the region makes that a
        # guarantee, so a localizer can never find the forgery from changes outside the mask.
        out[region] = filled[..., ::-1][region]
        return out


class TeleaGenerator(_OpenCVInpainter):
    """OpenCV inpainting, Telea's fast marching method (smooth, slightly blurry fills)."""

    name: ClassVar[str] = "telea"
    _flag: ClassVar[int] = cv2.INPAINT_TELEA


class NavierStokesGenerator(_OpenCVInpainter):
    """OpenCV inpainting, Navier-Stokes based (continues isophotes into the hole)."""

    name: ClassVar[str] = "ns"
    _flag: ClassVar[int] = cv2.INPAINT_NS
