"""Random rectangle masks in the style of LaMa's box masks.

Rectangles are the other half of LaMa's training masks and the shape most "object removal"
tools produce, so they complement the free-form strokes and the semantic face parts: a
localizer that only finds blobs with curved borders, or only finds eyes, shows it here.

Sides are fractions of the image's shorter side and positions fractions of the free room, all
drawn before scaling, so one seed gives the same layout at any resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import model_validator

from dolos_bench.builder.base import Masker, MaskResult
from dolos_bench.builder.masks.common import (
    DEFAULT_MAX_TRIES,
    Area,
    AreaBounds,
    draw_within_area,
    image_hw,
)
from dolos_bench.utils.numbers import number, pair


class BoxMasker(Masker):
    """A random number of axis-aligned rectangles of random size and place.

    Args (keyword-only, as in a recipe):
        count: ``[low, high]`` number of rectangles per mask (inclusive).
        side: ``[low, high]`` side length as a fraction of the shorter image side; width and
            height are drawn independently, so boxes have varied aspect ratios.
        margin: band along the border, as a fraction of the shorter side, that no box
            touches (LaMa keeps 10 px of 256 free, about 0.04).
        min_area, max_area: accepted forged fraction of the image (inclusive).
        max_tries: fresh draws from the same ``rng`` before the sample is skipped.
    """

    name: ClassVar[str] = "boxes"

    class Config(AreaBounds):
        count: Annotated[tuple[int, int], pair(integer=True, lo=1)] = (1, 3)
        side: Annotated[tuple[float, float], pair(lo=0.0, hi=1.0)] = (0.1, 0.5)
        margin: Annotated[float, number(lo=0.0, hi=0.5)] = 0.02
        min_area: Area = 0.05
        max_area: Area = 0.4
        max_tries: Annotated[int, number(integer=True, lo=1)] = DEFAULT_MAX_TRIES

        @model_validator(mode="after")
        def _boxes_fit(self):  # noqa: ANN202 - pydantic reads no annotation here
            if self.side[1] <= 0.0:
                raise ValueError(f"side must allow boxes wider than 0, got {list(self.side)!r}")
            if self.side[1] + 2.0 * self.margin > 1.0:
                raise ValueError(
                    f"side[1] + 2 * margin must be <= 1 so that the largest box fits, "
                    f"got side={list(self.side)!r}, margin={self.margin!r}"
                )
            # Boxes cover at most count_max * side_max**2 of any image (the shorter side squared
            # is at most H * W), so a larger min_area can never be met: say so now, not per sample.
            reachable = min(1.0, self.count[1] * self.side[1] ** 2)
            if self.min_area > reachable:
                raise ValueError(
                    f"min_area={self.min_area:g} cannot be reached: {self.count[1]} boxes "
                    f"of side <= {self.side[1]:g} cover at most {reachable:g} of the image"
                )
            return self

    def __init__(
        self,
        *,
        count: Sequence[int] | int = (1, 3),
        side: Sequence[float] | float = (0.1, 0.5),
        margin: float = 0.02,
        min_area: float = 0.05,
        max_area: float = 0.4,
        max_tries: int = DEFAULT_MAX_TRIES,
    ) -> None:
        self.configure(count=count, side=side, margin=margin, min_area=min_area, max_area=max_area,
                       max_tries=max_tries)

    def identity(self) -> dict[str, Any]:
        return {
            "count": list(self.count),
            "side": list(self.side),
            "margin": self.margin,
            "min_area": self.min_area,
            "max_area": self.max_area,
            "max_tries": self.max_tries,
        }

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> MaskResult:
        height, width = image_hw(type(self).__name__, image)

        def draw() -> tuple[np.ndarray, dict[str, Any]]:
            mask, boxes = self.draw(height, width, rng)
            return mask, {"boxes": boxes}

        return draw_within_area("boxes", draw, min_area=self.min_area, max_area=self.max_area,
                                max_tries=self.max_tries)

    def draw(self, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, list[list[int]]]:
        """One unconstrained box mask and its boxes as ``[x0, y0, x1, y1]`` (x1, y1 exclusive)."""
        mask = np.zeros((height, width), np.uint8)
        short = float(min(height, width))
        margin_x = margin_y = int(round(self.margin * short))
        boxes: list[list[int]] = []
        for _ in range(int(rng.integers(self.count[0], self.count[1] + 1))):
            fw, fh, fx, fy = (float(v) for v in rng.random(4))
            box_w = self._pixels(self.side[0] + fw * (self.side[1] - self.side[0]), short, width - 2 * margin_x)
            box_h = self._pixels(self.side[0] + fh * (self.side[1] - self.side[0]), short, height - 2 * margin_y)
            # Very small images can leave less room than the margin asks; the box then wins.
            mx = min(margin_x, (width - box_w) // 2)
            my = min(margin_y, (height - box_h) // 2)
            x0 = mx + int(round(fx * (width - 2 * mx - box_w)))
            y0 = my + int(round(fy * (height - 2 * my - box_h)))
            mask[y0 : y0 + box_h, x0 : x0 + box_w] = 255
            boxes.append([x0, y0, x0 + box_w, y0 + box_h])
        return mask, boxes

    @staticmethod
    def _pixels(fraction: float, short: float, room: int) -> int:
        """A side in whole pixels: at least 1, at most the room left inside the margins."""
        return int(min(max(1, round(fraction * short)), max(1, room)))
