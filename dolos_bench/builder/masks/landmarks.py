"""Face-part masks from dlib's 68-point facial landmarks, as in the Dolos benchmark.

Dolos inpaints semantic face parts (eyes, nose, mouth, skin...) with a random dilation of
1-15 px so that a localizer cannot key on the exact landmark outline. We find the largest face
with dlib's HOG detector, fit the 68-point shape predictor and turn point groups into regions.

Licence: the 68-point predictor (``shape_predictor_68_face_landmarks.dat``, shipped by the
``face-recognition-models`` package) was trained on the iBUG 300-W dataset, whose licence
allows research use only; datasets built with this masker inherit that restriction. The masker
declares it as its ``licence_note``, which the dataset card quotes.

Model loading costs about 3 s, so detector and predictor are loaded by ``setup`` (or on first
use), once per process and per predictor file, into a module-level cache. A masker object itself
holds only plain arguments, so pickling it to worker processes stays cheap.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import cv2
import numpy as np
from pydantic import field_validator, model_validator

from dolos_bench.builder.base import Masker, MaskResult, SkipSample
from dolos_bench.builder.masks.common import Area, AreaBounds, choose_part, dilate, image_hw
from dolos_bench.utils.numbers import number, pair

PREDICTOR_FILENAME = "shape_predictor_68_face_landmarks.dat"

_LICENCE_NOTE = (
    "Face-part masks were placed with dlib's 68-point shape predictor "
    f"({PREDICTOR_FILENAME}), which was trained on the iBUG 300-W dataset; the 300-W licence "
    "allows research use only, so masks derived from it are for research use only."
)

# Point groups of the iBUG 300-W 68-point markup. Left/right are the *subject's*, as in the
# 300-W annotation: the subject's right eye (36-41) appears on the image's left in an
# unmirrored frontal photo.
JAW = tuple(range(0, 17))
RIGHT_BROW = tuple(range(17, 22))
LEFT_BROW = tuple(range(22, 27))
NOSE = tuple(range(27, 36))
RIGHT_EYE = tuple(range(36, 42))
LEFT_EYE = tuple(range(42, 48))
MOUTH = tuple(range(48, 68))

#: Every part name a recipe may ask for.
PARTS: tuple[str, ...] = ("eyes", "left_eye", "right_eye", "brows", "nose", "mouth", "skin", "face")
#: Parts that get the random dilation (Dolos: 1-15 px); "skin" and "face" are not dilated.
SMALL_PARTS: frozenset[str] = frozenset({"eyes", "left_eye", "right_eye", "brows", "nose", "mouth"})
DEFAULT_PARTS: tuple[str, ...] = ("eyes", "brows", "nose", "mouth", "skin", "face")

# Brows are 5-point arcs whose hull is a sliver; they are drawn as a thick line instead, this
# thick relative to the distance between the outer eye corners (about 0.7 face widths).
_BROW_THICKNESS = 0.08
# "skin" leaves out the features grown by this much (same unit), so that eyelashes, lip edges
# and nostril shadows, which reach a little past the landmark hulls, stay pristine. A fraction
# of the face rather than the random pixel dilation: 15 px would swallow the skin of a 75 px face.
_SKIN_MARGIN = 0.05


def landmark_licence_note() -> str:
    """The research-use-only sentence for dataset cards built with the landmark masker."""
    return _LICENCE_NOTE


def predictor_file() -> Path:
    """Where ``face-recognition-models`` keeps the 68-point predictor.

    The package is located with ``importlib.util.find_spec`` rather than imported, because its
    ``__init__`` imports ``pkg_resources``, which recent setuptools no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    roots: list[str] = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        candidate = Path(root) / "models" / PREDICTOR_FILENAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{PREDICTOR_FILENAME} not found: install the faces extra "
        "(pip install 'dolos-bench[faces]', i.e. dlib-bin and face-recognition-models) "
        "or pass predictor_path= to the landmarks masker"
    )


# -- process-wide model cache ------------------------------------------------------------------
_MODELS: dict[str, tuple[Any, Any]] = {}
_MODELS_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _default_predictor() -> str:
    # find_spec walks sys.path: once per process is enough (failures are not cached).
    return str(predictor_file())


def _models(predictor_path: str) -> tuple[Any, Any]:
    """(HOG face detector, shape predictor), loaded on first use in this process."""
    models = _MODELS.get(predictor_path)
    if models is None:
        with _MODELS_LOCK:
            models = _MODELS.get(predictor_path)
            if models is None:
                import dlib  # heavy; only maskers that are actually used pay for it

                models = (dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_path))
                _MODELS[predictor_path] = models
    return models


@dataclass(frozen=True)
class Face:
    """The chosen face: its 68 landmarks as ``(68, 2)`` int32 ``(x, y)`` and its detector box.

    ``box`` is ``[x0, y0, x1, y1]`` clipped to the image; ``count`` is how many faces the
    detector found (the largest one is used).
    """

    points: np.ndarray
    box: list[int]
    count: int


class LandmarkMasker(Masker):
    """One face part per sample, chosen by ``rng`` among ``parts``, from dlib's 68 landmarks.

    The 68-point predictor was trained on iBUG 300-W, whose licence allows research use only;
    see :attr:`licence_note`.

    Parts: ``eyes`` (both eyes, points 36-47), ``left_eye`` (42-47) and ``right_eye`` (36-41),
    the subject's left and right as in the 300-W markup; ``brows`` (17-26, drawn as thick
    lines since the points follow an arc); ``nose`` (27-35); ``mouth`` (48-67); ``face`` (the
    hull of all 68 points, extended up into the forehead, see ``forehead``); ``skin`` (``face``
    minus eyes, brows, nose and mouth, with a small margin).

    Args (keyword-only, as in a recipe):
        parts: candidate parts; one is chosen per call, the others are tried in ``rng`` order
            when the first misses the area bounds.
        dilation: ``[low, high]`` pixels of random dilation (elliptic kernel) of the small
            parts, as in the Dolos paper (1-15 px, meant for its 256 px aligned faces; lower it
            for small faces). ``face`` and ``skin`` are not dilated; ``skin``'s holes are the
            features grown by 5% of the outer-eye-corner distance, so that eyelashes and lip
            edges stay pristine.
        forehead: how far the face hull reaches above the brows, in nose lengths (points 27 to
            33). The 68 points stop at the brows, which leaves the forehead out of "face" and
            "skin"; by the rule of facial thirds the hairline sits about one nose length above
            the brows, so the default 0.5 covers the lower forehead without reaching into hair.
            0 gives the plain 68-point hull.
        min_area, max_area: accepted forged fraction of the image (inclusive).
        upsample: times the HOG detector upsamples the image; 1 finds faces down to about
            40 px, at roughly 4x the cost of 0.
        predictor_path: a ``shape_predictor_68_face_landmarks.dat``; by default the one from
            ``face-recognition-models`` (:func:`predictor_file`).
    """

    name: ClassVar[str] = "landmarks"
    requires: ClassVar[tuple[str, ...]] = ("dlib", "face_recognition_models")
    extra: ClassVar[str | None] = "faces"
    licence_note: ClassVar[str | None] = f"**Face landmarks.** {_LICENCE_NOTE}"

    class Config(AreaBounds):
        parts: tuple[str, ...] = DEFAULT_PARTS
        dilation: Annotated[tuple[int, int], pair(integer=True, lo=0, hi=200)] = (1, 15)
        forehead: Annotated[float, number(lo=0.0, hi=2.0)] = 0.5
        min_area: Area = 0.001
        max_area: Area = 0.6
        upsample: Annotated[int, number(integer=True, lo=0, hi=4)] = 1
        predictor_path: str | None = None

        @field_validator("parts", mode="before")
        @classmethod
        def _known_parts(cls, parts: Any) -> tuple[str, ...]:
            if isinstance(parts, str) or not isinstance(parts, Sequence) or len(parts) == 0:
                raise ValueError(f"parts must be a non-empty list of part names from {', '.join(PARTS)}; got {parts!r}")
            unknown = [p for p in parts if p not in PARTS]
            if unknown:
                raise ValueError(
                    f"unknown part(s) {', '.join(repr(p) for p in unknown)} in parts; known parts: {', '.join(PARTS)}"
                )
            if len(set(parts)) != len(parts):
                raise ValueError(f"parts lists a part twice: {list(parts)!r}")
            return tuple(str(p) for p in parts)

        @field_validator("predictor_path", mode="before")
        @classmethod
        def _predictor_is_a_file(cls, path: Any) -> str | None:
            if path is None:
                return None
            if not isinstance(path, (str, Path)) or not Path(path).is_file():
                raise ValueError(f"predictor_path {path!r} is not a file")
            return str(path)

        @model_validator(mode="after")
        def _predictor_found(self):  # noqa: ANN202 - pydantic reads no annotation here
            if self.predictor_path is None:
                try:
                    predictor_file()  # fail at recipe validation, not at the first sample
                except FileNotFoundError as exc:
                    raise ValueError(str(exc)) from None
            return self

    def __init__(
        self,
        *,
        parts: Sequence[str] = DEFAULT_PARTS,
        dilation: Sequence[int] | int = (1, 15),
        forehead: float = 0.5,
        min_area: float = 0.001,
        max_area: float = 0.6,
        upsample: int = 1,
        predictor_path: str | None = None,
    ) -> None:
        self.configure(parts=parts, dilation=dilation, forehead=forehead, min_area=min_area, max_area=max_area,
                       upsample=upsample, predictor_path=predictor_path)

    def setup(self, device: str) -> None:
        """Load the HOG detector and the shape predictor into this process (once; CPU only)."""
        _models(self.predictor_path or _default_predictor())

    def identity(self) -> dict[str, Any]:
        return {
            "parts": list(self.parts),
            "dilation": list(self.dilation),
            "forehead": self.forehead,
            "min_area": self.min_area,
            "max_area": self.max_area,
            "upsample": self.upsample,
            "predictor_path": self.predictor_path,
        }

    # -- detection ----------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> Face | None:
        """The largest face and its landmarks, or None when the detector finds no face."""
        _check_face_image(type(self).__name__, image)
        detector, predictor = _models(self.predictor_path or _default_predictor())
        pixels = np.ascontiguousarray(image)
        rects = list(detector(pixels, self.upsample))
        if not rects:
            return None
        # max() keeps the first of equals, and dlib's order is deterministic for an image.
        rect = max(rects, key=lambda r: r.width() * r.height())
        shape = predictor(pixels, rect)
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.int32)
        height, width = pixels.shape[:2]
        box = [
            int(min(max(rect.left(), 0), width)),
            int(min(max(rect.top(), 0), height)),
            int(min(max(rect.right() + 1, 0), width)),
            int(min(max(rect.bottom() + 1, 0), height)),
        ]
        return Face(points=points, box=box, count=len(rects))

    def part_mask(self, face: Face, part: str, dilation: int, shape: tuple[int, int]) -> np.ndarray:
        """The ``(H, W)`` uint8 mask of one part of ``face``, grown by ``dilation`` pixels.

        ``dilation`` applies to the small parts only (see the class docstring). A pure function
        of its inputs, so tests and tools can draw every part of one detection.
        """
        if part not in PARTS:
            raise ValueError(f"unknown part {part!r}; known parts: {', '.join(PARTS)}")
        pts = face.points
        if part == "face":
            return self._face_hull(pts, shape)
        if part == "skin":
            margin = int(round(_SKIN_MARGIN * _eye_span(pts)))
            holes = dilate(_features(pts, shape), margin)
            skin = self._face_hull(pts, shape)
            skin[holes > 0] = 0
            return skin
        return dilate(_SMALL_PART_DRAWERS[part](pts, shape), dilation)

    def _face_hull(self, pts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Hull of the 68 points plus the brow points lifted ``forehead`` nose lengths up.

        "Up" is the chin-to-nose-bridge direction, so a tilted head gets a tilted forehead.
        """
        points = pts.astype(np.float64)
        if self.forehead > 0.0:
            up = points[27] - points[8]
            norm = float(np.hypot(*up))
            if norm > 0.0:
                nose_length = float(np.hypot(*(points[33] - points[27])))
                lift = up / norm * self.forehead * nose_length
                points = np.vstack([points, points[list(RIGHT_BROW + LEFT_BROW)] + lift])
        return _hull_mask(points, shape)

    # -- the masker ---------------------------------------------------------------------------
    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> MaskResult:
        face = self.detect(image)
        if face is None:
            raise SkipSample("no face detected")
        shape = image_hw(type(self).__name__, image)
        return choose_part("landmarks", self.parts, rng, dilation=self.dilation, small_parts=SMALL_PARTS,
                           draw=lambda part, grow: self.part_mask(face, part, grow, shape),
                           min_area=self.min_area, max_area=self.max_area,
                           info={"face_box": face.box, "faces": face.count})


# -- drawing helpers -----------------------------------------------------------------------------
def _check_face_image(owner: str, image: Any) -> None:
    image_hw(owner, image)
    if image.dtype != np.uint8 or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(
            f"{owner}: image must be a uint8 (H, W, 3) RGB or (H, W) grey array, got "
            f"{image.dtype} {image.shape}"
        )


def _hull_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    hull = cv2.convexHull(np.round(points).astype(np.int32).reshape(-1, 1, 2))
    cv2.fillConvexPoly(mask, hull, 255, cv2.LINE_8)
    return mask


def _union(*masks: np.ndarray) -> np.ndarray:
    out = masks[0].copy()
    for m in masks[1:]:
        np.maximum(out, m, out=out)
    return out


def _eye_span(pts: np.ndarray) -> float:
    """Distance between the outer eye corners: the face's scale, robust to open/closed mouth."""
    return float(np.hypot(*(pts[45] - pts[36]).astype(np.float64)))


def _brows(pts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    thickness = max(2, int(round(_BROW_THICKNESS * _eye_span(pts))))
    for group in (RIGHT_BROW, LEFT_BROW):
        line = pts[list(group)].reshape(-1, 1, 2).astype(np.int32)
        cv2.polylines(mask, [line], False, 255, thickness, cv2.LINE_8)
        cv2.fillConvexPoly(mask, cv2.convexHull(line), 255, cv2.LINE_8)
    return mask


_SMALL_PART_DRAWERS = {
    "right_eye": lambda p, s: _hull_mask(p[list(RIGHT_EYE)], s),
    "left_eye": lambda p, s: _hull_mask(p[list(LEFT_EYE)], s),
    "eyes": lambda p, s: _union(_hull_mask(p[list(RIGHT_EYE)], s), _hull_mask(p[list(LEFT_EYE)], s)),
    "brows": _brows,
    "nose": lambda p, s: _hull_mask(p[list(NOSE)], s),
    "mouth": lambda p, s: _hull_mask(p[list(MOUTH)], s),
}


def _features(pts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Eyes, brows, nose and mouth together: what "skin" leaves out."""
    return _union(*(_SMALL_PART_DRAWERS[p](pts, shape) for p in ("eyes", "brows", "nose", "mouth")))


__all__ = [
    "DEFAULT_PARTS",
    "Face",
    "LandmarkMasker",
    "PARTS",
    "PREDICTOR_FILENAME",
    "landmark_licence_note",
    "predictor_file",
]
