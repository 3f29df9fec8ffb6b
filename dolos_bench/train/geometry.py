"""Geometric training augmentations that move image and mask together and keep the input size.

FOCAL's and MPC's training pipelines (albumentations) start with two geometric steps before any
photometric one: ``RandomScale(scale_limit=(-0.5, 0))`` then ``PadIfNeeded`` back to the input
size (border ``BORDER_REFLECT_101``, the library's default), and ``OneOf{HorizontalFlip,
VerticalFlip, RandomRotate90, Transpose}``. A localizer trained on pixel labels must see its mask
moved exactly as its pixels are, so these are not perturbations of ``bench build`` (which
transform an image and keep or resize its mask) but their own small set, applied in
:class:`~dolos_bench.train.data.StreamDataset` after the resize to the input size and before the
photometric ``augment`` steps.

``dihedral``
    With probability ``p``, one of ``choices`` (default all four, equally likely): ``hflip``,
    ``vflip``, ``rot90`` (a quarter turn ``k`` times, ``k`` uniform in 0..3, as
    ``RandomRotate90`` draws it, so it may be the identity), ``transpose``.
``scale``
    With probability ``p``, shrink by a factor uniform in ``factor`` (``[0.5, 1.0]`` is
    ``scale_limit=(-0.5, 0)``): the image bilinearly, the mask by nearest neighbour; then pad back
    to the input size around the centre, ``reflect`` (OpenCV's REFLECT_101, NumPy's ``reflect``:
    the edge row is not repeated) or ``constant`` (zeros; the mask's padding is pristine).
    Reflection copies forged pixels into the border as well, and the mask follows them.

Every draw comes from the ``rng`` the caller derives from ``(seed, stream position)``, so a
resumed run sees the same pixels, with any number of DataLoader workers.
"""

from __future__ import annotations

from typing import Literal, Sequence, Union

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from ..config import Strict

__all__ = ["DIHEDRAL", "DihedralStep", "GeometricStep", "ScaleStep", "apply_geometric"]

DIHEDRAL: tuple[str, ...] = ("hflip", "vflip", "rot90", "transpose")


class DihedralStep(Strict):
    """One flip, quarter turn or transpose of image and mask (``OneOf`` of FOCAL's four)."""

    op: Literal["dihedral"]
    p: float = Field(1.0, ge=0.0, le=1.0)
    choices: list[Literal["hflip", "vflip", "rot90", "transpose"]] = Field(
        default_factory=lambda: list(DIHEDRAL), min_length=1, description="the transforms drawn from, equally likely")


class ScaleStep(Strict):
    """Shrink image and mask by a random factor and pad back to the input size (RandomScale + PadIfNeeded)."""

    op: Literal["scale"]
    p: float = Field(1.0, ge=0.0, le=1.0)
    factor: tuple[float, float] = Field((0.5, 1.0), description="[lo, hi], 0 < lo <= hi <= 1")
    pad: Literal["reflect", "constant"] = "reflect"

    @model_validator(mode="after")
    def _shrinks(self) -> "ScaleStep":
        lo, hi = self.factor
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"scale: factor {list(self.factor)} must be [lo, hi] with 0 < lo <= hi <= 1"
                             " (the input size is kept, so a scale only shrinks and pads)")
        return self


GeometricStep = Union[DihedralStep, ScaleStep]
"""A ``data.geometric`` entry of a training recipe, told apart by ``op``."""


def _dihedral(array: np.ndarray, name: str, turns: int) -> np.ndarray:
    if name == "hflip":
        return array[:, ::-1]
    if name == "vflip":
        return array[::-1]
    if name == "rot90":
        return np.rot90(array, turns, axes=(0, 1))
    return np.swapaxes(array, 0, 1)


def _scale(image: np.ndarray, mask: np.ndarray | None, factor: float, pad: str) -> tuple[np.ndarray, np.ndarray | None]:
    h, w = image.shape[:2]
    nh, nw = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
    if (nh, nw) == (h, w):
        return image, mask
    small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    top, left = (h - nh) // 2, (w - nw) // 2
    widths = ((top, h - nh - top), (left, w - nw - left))
    mode = "reflect" if pad == "reflect" and min(nh, nw) > 1 else "constant"  # one pixel cannot reflect
    image = np.pad(small, widths + ((0, 0),), mode=mode)
    if mask is not None:
        small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((nw, nh), Image.Resampling.NEAREST)) > 127
        mask = np.pad(small_mask, widths, mode=mode)
    return image, mask


def apply_geometric(image: np.ndarray, mask: np.ndarray | None, steps: Sequence[GeometricStep],
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` ``(S, S, 3)`` uint8 and ``mask`` ``(S, S)`` bool (or None) through ``steps``, jointly.

    Each step draws, in order, whether it runs and then its parameters, all from ``rng``; a step
    that does not run draws nothing more, so the draws of later steps do not depend on parameters
    that were never used.
    """
    for step in steps:
        if rng.random() >= step.p:
            continue
        if isinstance(step, DihedralStep):
            name = step.choices[int(rng.integers(len(step.choices)))]
            turns = int(rng.integers(4)) if name == "rot90" else 0
            image = _dihedral(image, name, turns)
            mask = None if mask is None else _dihedral(mask, name, turns)
        else:
            lo, hi = step.factor
            image, mask = _scale(image, mask, float(rng.uniform(lo, hi)), step.pad)
    return np.ascontiguousarray(image), None if mask is None else np.ascontiguousarray(mask)
