"""Free-form brush-stroke masks in the style of LaMa's "thick/medium" irregular masks.

Generic inpainting models (LaMa, MAT, SD-inpainting) are trained on such masks, so forgeries
made with them test a localizer on region shapes that carry no face semantics at all: the
detector cannot simply learn "the eyes are always fake".

Every length is a fraction of the image's shorter side and every position a fraction of its
width/height, and all draws are made in those units before scaling. So the same seed gives the
same picture at 256 and at 1024 pixels (up to rounding), and a recipe means the same thing
whatever the source resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import cv2
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

_SHIFT = 4  # cv2 fixed-point bits: vertices keep 1/16 px precision, so scaling stays smooth
_ONE = 1 << _SHIFT


class StrokeMasker(Masker):
    """Random thick brush strokes: polylines with round joints, bouncing off the borders.

    Args (keyword-only, as in a recipe):
        strokes: ``[low, high]`` number of strokes per mask (inclusive).
        max_vertices: most vertices per stroke; each stroke has ``2..max_vertices`` vertices,
            i.e. at least one segment.
        max_length: longest segment, as a fraction of the shorter image side; each segment's
            length is uniform in ``[0.2, 1] * max_length`` (LaMa adds a fixed minimum too, so
            that no segment degenerates to a dot).
        width: ``[low, high]`` brush width (diameter) as a fraction of the shorter side, drawn
            once per stroke so that a stroke looks like one brush.
        max_angle: largest change of direction between consecutive segments, in radians
            (LaMa's angle jitter); 0 gives straight strokes.
        min_area, max_area: accepted forged fraction of the image (inclusive).
        max_tries: fresh draws from the same ``rng`` before the sample is skipped.
    """

    name: ClassVar[str] = "strokes"

    class Config(AreaBounds):
        strokes: Annotated[tuple[int, int], pair(integer=True, lo=1)] = (1, 5)
        max_vertices: Annotated[int, number(integer=True, lo=2)] = 6
        max_length: Annotated[float, number(lo=0.0, hi=2.0, lo_open=True)] = 0.3
        width: Annotated[tuple[float, float], pair(lo=0.0, hi=1.0)] = (0.04, 0.12)
        max_angle: Annotated[float, number(lo=0.0, hi=math.pi)] = 1.5
        min_area: Area = 0.05
        max_area: Area = 0.4
        max_tries: Annotated[int, number(integer=True, lo=1)] = DEFAULT_MAX_TRIES

        @model_validator(mode="after")
        def _brush(self):  # noqa: ANN202 - pydantic reads no annotation here
            if self.width[1] <= 0.0:
                raise ValueError(f"width must allow a brush wider than 0, got {list(self.width)!r}")
            return self

    def __init__(
        self,
        *,
        strokes: Sequence[int] | int = (1, 5),
        max_vertices: int = 6,
        max_length: float = 0.3,
        width: Sequence[float] | float = (0.04, 0.12),
        max_angle: float = 1.5,
        min_area: float = 0.05,
        max_area: float = 0.4,
        max_tries: int = DEFAULT_MAX_TRIES,
    ) -> None:
        self.configure(
            strokes=strokes, max_vertices=max_vertices, max_length=max_length, width=width,
            max_angle=max_angle, min_area=min_area, max_area=max_area, max_tries=max_tries,
        )

    def identity(self) -> dict[str, Any]:
        return {
            "strokes": list(self.strokes),
            "max_vertices": self.max_vertices,
            "max_length": self.max_length,
            "width": list(self.width),
            "max_angle": self.max_angle,
            "min_area": self.min_area,
            "max_area": self.max_area,
            "max_tries": self.max_tries,
        }

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> MaskResult:
        height, width = image_hw(type(self).__name__, image)

        def draw() -> tuple[np.ndarray, dict[str, Any]]:
            mask, n_strokes, n_segments = self.draw(height, width, rng)
            return mask, {"n_strokes": n_strokes, "n_segments": n_segments}

        return draw_within_area("strokes", draw, min_area=self.min_area, max_area=self.max_area,
                                max_tries=self.max_tries)

    def draw(self, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
        """One unconstrained stroke mask: ``(mask, number of strokes, number of segments)``.

        The draws do not depend on the image size, only their scaling does.
        """
        mask = np.zeros((height, width), np.uint8)
        side = float(min(height, width))
        n_strokes = int(rng.integers(self.strokes[0], self.strokes[1] + 1))
        n_segments = 0
        for _ in range(n_strokes):
            n_vertices = int(rng.integers(2, self.max_vertices + 1))
            brush = float(rng.uniform(self.width[0], self.width[1])) * side
            x = float(rng.random()) * (width - 1)
            y = float(rng.random()) * (height - 1)
            angle = float(rng.uniform(0.0, 2.0 * math.pi))
            vertices = [(x, y)]
            for _ in range(n_vertices - 1):
                angle += float(rng.uniform(-self.max_angle, self.max_angle))
                length = float(rng.uniform(0.2, 1.0)) * self.max_length * side
                x, y, angle = _bounce(x, y, angle, length, width - 1, height - 1)
                vertices.append((x, y))
            _draw_stroke(mask, vertices, brush)
            n_segments += n_vertices - 1
        return mask, n_strokes, n_segments


def _bounce(
    x: float, y: float, angle: float, length: float, x_max: float, y_max: float
) -> tuple[float, float, float]:
    """Step ``length`` along ``angle``, reflecting off the image borders like a billiard ball.

    Clipping (what LaMa does) would flatten strokes along the border; reflecting keeps their
    length, and hence the area statistics, independent of where they start.
    """
    nx = x + length * math.cos(angle)
    ny = y + length * math.sin(angle)
    if nx < 0.0 or nx > x_max:
        nx = -nx if nx < 0.0 else 2.0 * x_max - nx
        angle = math.pi - angle
    if ny < 0.0 or ny > y_max:
        ny = -ny if ny < 0.0 else 2.0 * y_max - ny
        angle = -angle
    # A segment longer than the image itself can still land outside after one reflection.
    return min(max(nx, 0.0), x_max), min(max(ny, 0.0), y_max), angle


def _draw_stroke(mask: np.ndarray, vertices: list[tuple[float, float]], brush: float) -> None:
    """Thick segments plus a disc at every vertex, so joints and ends are round like a brush."""
    thickness = max(1, int(round(brush)))
    radius = max(1, int(round(brush * _ONE / 2.0)))  # fixed-point, like the centres
    points = [(int(round(x * _ONE)), int(round(y * _ONE))) for x, y in vertices]
    for p, q in zip(points[:-1], points[1:]):
        cv2.line(mask, p, q, 255, thickness, cv2.LINE_8, _SHIFT)
    for p in points:
        cv2.circle(mask, p, radius, 255, -1, cv2.LINE_8, _SHIFT)
