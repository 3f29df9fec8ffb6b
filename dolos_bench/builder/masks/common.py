"""Argument checks and small mask utilities shared by the maskers.

Masker arguments come from YAML recipes, so they arrive as plain ints, floats and lists. The
checks here turn a bad value into a ``ValueError`` that names the argument and says what was
expected, because a recipe typo should be fixed in seconds, not decoded from a cv2 traceback
half-way through a build.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np

#: How many fresh draws a random masker makes before giving up on the area bounds.
DEFAULT_MAX_TRIES = 20


def _is_number(value: Any) -> bool:
    # bool is an int subclass; `true` in a YAML recipe is never a size.
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    integer: bool = False,
    lo: float | None = None,
    hi: float | None = None,
) -> float | int:
    """``value`` as a float (or int), or a ``ValueError`` naming ``owner``'s argument ``name``."""
    kind = "an integer" if integer else "a number"
    bounds = _describe_bounds(lo, hi)
    if not _is_number(value) or (integer and int(value) != value):
        raise ValueError(f"{owner}: {name} must be {kind}{bounds}, got {value!r}")
    out: float | int = int(value) if integer else float(value)
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise ValueError(f"{owner}: {name} must be {kind}{bounds}, got {value!r}")
    return out


def check_range(
    owner: str,
    name: str,
    value: Any,
    *,
    integer: bool = False,
    lo: float | None = None,
    hi: float | None = None,
) -> tuple[Any, Any]:
    """A ``[low, high]`` pair (inclusive) with ``lo <= low <= high <= hi``.

    A single number is accepted as the fixed range ``[v, v]``, since that is what a recipe
    author means by ``width: 0.05``.
    """
    if _is_number(value):
        value = [value, value]
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        kind = "integers" if integer else "numbers"
        raise ValueError(
            f"{owner}: {name} must be a [low, high] pair of {kind}"
            f"{_describe_bounds(lo, hi)}, got {value!r}"
        )
    low = check_number(owner, f"{name}[0]", value[0], integer=integer, lo=lo, hi=hi)
    high = check_number(owner, f"{name}[1]", value[1], integer=integer, lo=lo, hi=hi)
    if low > high:
        raise ValueError(f"{owner}: {name} must have low <= high, got {list(value)!r}")
    return low, high


def check_area_bounds(owner: str, min_area: Any, max_area: Any) -> tuple[float, float]:
    """``(min_area, max_area)`` as fractions of the image with ``0 <= min <= max <= 1``."""
    lo = check_number(owner, "min_area", min_area, lo=0.0, hi=1.0)
    hi = check_number(owner, "max_area", max_area, lo=0.0, hi=1.0)
    if lo > hi:
        raise ValueError(
            f"{owner}: min_area must be <= max_area, got min_area={min_area!r}, "
            f"max_area={max_area!r}"
        )
    if hi == 0.0:
        raise ValueError(f"{owner}: max_area must be > 0 (an empty mask forges nothing)")
    return float(lo), float(hi)


def image_hw(owner: str, image: Any) -> tuple[int, int]:
    """(height, width) of an ``(H, W)`` or ``(H, W, C)`` array, or a ``ValueError``."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or 0 in image.shape[:2]:
        shape = getattr(image, "shape", None)
        raise ValueError(
            f"{owner}: image must be a non-empty (H, W, 3) uint8 array, got "
            f"{type(image).__name__} with shape {shape}"
        )
    return int(image.shape[0]), int(image.shape[1])


def area_fraction(mask: np.ndarray) -> float:
    """Fraction of pixels marked as forged (non-zero)."""
    return float(np.count_nonzero(mask)) / float(mask.size)


def in_bounds(area: float, min_area: float, max_area: float) -> bool:
    """Whether ``area`` lies in the closed interval, and the mask is not empty."""
    return area > 0.0 and min_area <= area <= max_area


def _describe_bounds(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo:g}, {hi:g}]"
    if lo is not None:
        return f" >= {lo:g}"
    if hi is not None:
        return f" <= {hi:g}"
    return ""
