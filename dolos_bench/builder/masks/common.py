"""What the maskers share: the area bounds of their ``Config`` and small mask utilities.

The number checks themselves are :mod:`dolos_bench.utils.numbers`, shared with every stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Callable

import numpy as np
from pydantic import model_validator

from dolos_bench.builder.base import MaskResult, SkipSample
from dolos_bench.config import Strict
from dolos_bench.utils.numbers import number

#: How many fresh draws a random masker makes before giving up on the area bounds.
DEFAULT_MAX_TRIES = 20


Area = Annotated[float, number(lo=0.0, hi=1.0)]
"""A forged fraction of the image, ``0..1`` (the ``min_area`` / ``max_area`` of a masker)."""


class AreaBounds(Strict):
    """Base of the maskers' ``Config``: ``min_area <= max_area`` and a mask that can be non-empty.

    Each masker declares ``min_area: Area`` and ``max_area: Area`` with its own defaults.
    """

    @model_validator(mode="after")
    def _area_order(self) -> "AreaBounds":
        low, high = getattr(self, "min_area"), getattr(self, "max_area")
        if low > high:
            raise ValueError(f"min_area must be <= max_area, got min_area={low!r}, max_area={high!r}")
        if high == 0.0:
            raise ValueError("max_area must be > 0 (an empty mask forges nothing)")
        return self


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


def draw_within_area(
    kind: str,
    draw: Callable[[], tuple[np.ndarray, dict[str, Any]]],
    *,
    min_area: float,
    max_area: float,
    max_tries: int,
) -> MaskResult:
    """Fresh draws until one's forged area is within bounds (rejection sampling).

    ``draw()`` returns an unconstrained mask and what describes it; the result carries the area,
    the tries it took and that description. After ``max_tries`` misses the sample is skipped,
    with the last area in the reason, since no mask of the asked size could be drawn.
    """
    area = 0.0
    for attempt in range(1, max_tries + 1):
        mask, info = draw()
        area = area_fraction(mask)
        if in_bounds(area, min_area, max_area):
            return MaskResult(mask=mask, parts=[kind], info={"area": area, "tries": attempt, **info})
    raise SkipSample(
        f"{kind}: no mask with area in [{min_area:g}, {max_area:g}] after {max_tries} tries (last {area:.3f})"
    )


def choose_part(
    kind: str,
    parts: Sequence[str],
    rng: np.random.Generator,
    *,
    dilation: tuple[int, int],
    small_parts: frozenset[str],
    draw: Callable[[str, int], np.ndarray],
    min_area: float,
    max_area: float,
    info: dict[str, Any] | None = None,
) -> MaskResult:
    """One face part, in ``rng`` order, whose mask (``draw(part, dilation_px)``) is within bounds.

    What every face-part masker (landmarks, face parser, annotations) does the same way, so that
    the same seed tries the parts in the same order and draws the same dilation whatever drew the
    parts. A dilation in ``dilation`` (Dolos: 1-15 px) is drawn for every tried part, small or not,
    so the draws do not depend on the part; only ``small_parts`` are grown by it. The parts that
    missed the bounds are kept in ``info["rejected"]``; none in bounds skips the sample.
    """
    order = [parts[i] for i in rng.permutation(len(parts))]
    areas: dict[str, float] = {}
    for part in order:
        drawn = int(rng.integers(dilation[0], dilation[1] + 1))
        grow = drawn if part in small_parts else 0
        mask = draw(part, grow)
        area = area_fraction(mask)
        if in_bounds(area, min_area, max_area):
            return MaskResult(mask=mask, parts=[part],
                              info={"part": part, "dilation_px": grow, **(info or {}), "area": area, "rejected": areas})
        areas[part] = area
    tried = ", ".join(f"{p} {a:.4f}" for p, a in areas.items())
    raise SkipSample(f"{kind}: no part with area in [{min_area:g}, {max_area:g}] ({tried})")


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow ``mask`` by ``pixels`` with a disc, so corners round off like a brush would."""
    if pixels <= 0:
        return mask
    import cv2

    size = 2 * int(pixels) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    return cv2.dilate(mask, kernel)
