"""More photometric perturbations: median and motion blur, gamma, brightness and contrast.

Each is a common degradation of shared images and a step of FOCAL's and MPC's training pipeline
(albumentations' MedianBlur, MotionBlur, RandomGamma and RandomBrightnessContrast), so one
definition serves ``bench build`` post-processing, ``bench stress`` grids and training
augmentation (``data.augment``). None moves pixels between positions by more than its kernel, so
none is geometric: the mask stays as it is. All are deterministic functions of the image (none
draws from ``rng``); tone changes go through a 256-entry lookup table, rounded to nearest and
clipped, so the identity setting returns the image unchanged.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import cv2
import numpy as np
from pydantic import field_validator

from ..config import Strict
from ..utils.numbers import number
from .base import Perturbation
from .ops import _check_inputs

__all__ = ["MedianBlur", "MotionBlur", "Gamma", "BrightnessContrast"]


class MedianBlur(Perturbation):
    """Median filter over a ``size`` x ``size`` window (odd, 3 or more); removes impulse noise and fine traces.

    OpenCV's ``medianBlur`` replicates the border pixels.
    """

    name: ClassVar[str] = "median"

    class Config(Strict):
        size: Annotated[int, number(integer=True, lo=3, hi=255)]

        @field_validator("size")
        @classmethod
        def _odd(cls, size: int) -> int:
            if size % 2 == 0:
                raise ValueError(f"size must be odd (the window has a centre pixel), got {size}")
            return size

    def __init__(self, size: int) -> None:
        self.configure(size=size)

    def apply(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        image = _check_inputs(self.name, image, mask)
        return np.ascontiguousarray(cv2.medianBlur(image, int(self.size))), mask


class MotionBlur(Perturbation):
    """Blur along a straight line of ``length`` pixels at ``angle`` degrees (0 = horizontal, counter-clockwise).

    The kernel is a ``length`` x ``length`` square with a one-pixel line through its centre (half
    drawn by OpenCV without anti-aliasing, half its mirror image, so the blur does not shift the
    image) and normalised to sum 1, so the bytes depend only on the two parameters; borders
    reflect without repeating the edge pixel (BORDER_REFLECT_101).
    """

    name: ClassVar[str] = "motion-blur"

    class Config(Strict):
        length: Annotated[int, number(integer=True, lo=3, hi=255)]
        angle: Annotated[float, number(lo=-360.0, hi=360.0)] = 0.0

    def __init__(self, length: int, angle: float = 0.0) -> None:
        self.configure(length=length, angle=angle)

    def kernel(self) -> np.ndarray:
        """The normalised ``length`` x ``length`` line kernel (float32)."""
        n = int(self.length)
        half = (n - 1) / 2.0
        dx, dy = math.cos(math.radians(self.angle)) * half, -math.sin(math.radians(self.angle)) * half
        line = np.zeros((n, n), np.uint8)
        # one half from the centre, in 1/16-pixel fixed point (shift 4), then mirrored through the centre:
        # a rasterised line is not point-symmetric by itself, and an asymmetric kernel would shift the image
        centre = int(round(half * 16))
        end = (int(round((half + dx) * 16)), int(round((half + dy) * 16)))
        cv2.line(line, (centre, centre), end, 1, thickness=1, lineType=cv2.LINE_8, shift=4)
        line |= line[::-1, ::-1]
        kernel = line.astype(np.float32)
        return kernel / kernel.sum()

    def apply(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        image = _check_inputs(self.name, image, mask)
        out = cv2.filter2D(image, -1, self.kernel(), borderType=cv2.BORDER_REFLECT_101)
        return np.ascontiguousarray(out, dtype=np.uint8), mask


def _through_table(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    lut = np.clip(np.rint(table), 0, 255).astype(np.uint8)
    return lut[image]


class Gamma(Perturbation):
    """Gamma curve ``255 * (x / 255) ** gamma``: above 1 darkens the mid-tones, below 1 lightens them."""

    name: ClassVar[str] = "gamma"

    class Config(Strict):
        gamma: Annotated[float, number(lo=0.0, lo_open=True, hi=10.0)]

    def __init__(self, gamma: float) -> None:
        self.configure(gamma=gamma)

    def apply(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        image = _check_inputs(self.name, image, mask)
        levels = np.arange(256, dtype=np.float64) / 255.0
        return _through_table(image, 255.0 * levels ** float(self.gamma)), mask


class BrightnessContrast(Perturbation):
    """Contrast about mid-grey, then a brightness shift: ``(x - 127.5) * contrast + 127.5 + brightness``.

    ``contrast`` 1 and ``brightness`` 0 are the identity; ``brightness`` is in 0..255 units.
    """

    name: ClassVar[str] = "brightness-contrast"

    class Config(Strict):
        brightness: Annotated[float, number(lo=-255.0, hi=255.0)] = 0.0
        contrast: Annotated[float, number(lo=0.0, hi=10.0)] = 1.0

    def __init__(self, brightness: float = 0.0, contrast: float = 1.0) -> None:
        self.configure(brightness=brightness, contrast=contrast)

    def apply(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        image = _check_inputs(self.name, image, mask)
        levels = np.arange(256, dtype=np.float64)
        return _through_table(image, (levels - 127.5) * float(self.contrast) + 127.5 + float(self.brightness)), mask
