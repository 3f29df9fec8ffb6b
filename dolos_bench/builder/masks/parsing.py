"""Face parts from a semantic label map: what the face-parser and the CelebAMask-HQ maskers share.

Both see a face as a label map of the 19 CelebAMask-HQ classes (skin, brows, eyes, glasses,
ears, earring, nose, mouth, lips, neck, necklace, cloth, hair, hat, background); they differ only
in where the map comes from (a parsing network, or the dataset's hand annotations). This module
turns such a map into the part names of the landmark masker, so that one recipe can swap the
three maskers and a breakdown by part means the same thing for each:

=========  ==========================================================================
part       label classes
=========  ==========================================================================
eyes       l_eye, r_eye
left_eye   the eye pixels right of the face's centre column in the image (the subject's left)
right_eye  the eye pixels left of it (the subject's right, as in the 300-W markup)
brows      l_brow, r_brow
nose       nose
mouth      mouth, u_lip, l_lip
skin       skin
face       skin, brows, eyes, eye_g, nose, mouth, lips (not ears, hair or neck)
hair       hair
ears       l_ear, r_ear
neck       neck
=========  ==========================================================================

Left and right come from the image, not from the class names: the label orders of
face-parsing.PyTorch (BiSeNet), PSFRGAN/ParseNet and the CelebAMask-HQ annotation files disagree
on which side ``l_`` means, and a frontal aligned face (CelebA-HQ, FFHQ) has its eyes on either
side of the face's centre whatever a file calls them.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import cv2
import numpy as np
from pydantic import field_validator

from dolos_bench.builder.base import Masker, MaskResult
from dolos_bench.builder.masks.common import Area, AreaBounds, choose_part, dilate, image_hw
from dolos_bench.builder.masks.landmarks import PARTS as LANDMARK_PARTS
from dolos_bench.utils.numbers import pair

__all__ = ["BISENET_CLASSES", "CELEBAMASK_FILE_CLASSES", "DEFAULT_PARSED_PARTS", "LabelMapMasker", "PARSED_PARTS", "PARSENET_CLASSES",
           "SMALL_PARSED_PARTS", "part_mask"]

#: Label order of face-parsing.PyTorch's BiSeNet (facexlib's ``parsing_bisenet.pth``).
BISENET_CLASSES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
#: Label order of PSFRGAN's ParseNet (facexlib's ``parsing_parsenet.pth``), which is also the order in
#: which CelebAMask-HQ's own ``g_mask.py`` paints the per-class annotation files into one map.
PARSENET_CLASSES: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
#: The per-class annotation files of CelebAMask-HQ (``{index:05d}_{class}.png``), painted in this order.
CELEBAMASK_FILE_CLASSES: tuple[str, ...] = PARSENET_CLASSES[1:]

_FEATURES = ("l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "nose", "mouth", "u_lip", "l_lip")
_PART_CLASSES: dict[str, tuple[str, ...]] = {
    "eyes": ("l_eye", "r_eye"),
    "left_eye": ("l_eye", "r_eye"),
    "right_eye": ("l_eye", "r_eye"),
    "brows": ("l_brow", "r_brow"),
    "nose": ("nose",),
    "mouth": ("mouth", "u_lip", "l_lip"),
    "skin": ("skin",),
    "face": ("skin", *_FEATURES),
    "hair": ("hair",),
    "ears": ("l_ear", "r_ear"),
    "neck": ("neck",),
}
#: Every part a label map gives: the landmark masker's, plus hair, ears and neck.
PARSED_PARTS: tuple[str, ...] = (*LANDMARK_PARTS, "hair", "ears", "neck")
#: What a recipe gets without ``parts``: the landmark masker's default parts.
DEFAULT_PARSED_PARTS: tuple[str, ...] = ("eyes", "brows", "nose", "mouth", "skin", "face")
#: Parts grown by the random dilation (as the landmark masker's small parts, plus the ears).
SMALL_PARSED_PARTS: frozenset[str] = frozenset({"eyes", "left_eye", "right_eye", "brows", "nose", "mouth", "ears"})
assert set(_PART_CLASSES) == set(PARSED_PARTS)


def part_mask(labels: np.ndarray, classes: tuple[str, ...], part: str) -> np.ndarray:
    """The ``(H, W)`` uint8 mask (255 = part) of ``part`` in a label map whose values index ``classes``."""
    if part not in _PART_CLASSES:
        raise ValueError(f"unknown part {part!r}; known parts: {', '.join(PARSED_PARTS)}")
    wanted = [classes.index(name) for name in _PART_CLASSES[part] if name in classes]
    region = np.isin(labels, wanted)
    if part in ("left_eye", "right_eye") and region.any():
        face = np.isin(labels, [classes.index(name) for name in _PART_CLASSES["face"] if name in classes])
        centre = float(np.nonzero(face)[1].mean())
        columns = np.arange(labels.shape[1])[None, :]
        region &= columns >= centre if part == "left_eye" else columns < centre
    return region.astype(np.uint8) * np.uint8(255)


def labels_at(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``labels`` resized to ``shape`` with nearest-neighbour (classes are not averaged)."""
    if labels.shape == shape:
        return labels
    return cv2.resize(labels.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


class LabelMapMasker(Masker):
    """One face part per sample, chosen by ``rng`` among ``parts``, from a label map of the face.

    Subclasses say where the map comes from (:meth:`label_map`); the part choice, the Dolos random
    dilation of small parts (1-15 px by default) and the area bounds are the landmark masker's
    (:func:`~dolos_bench.builder.masks.common.choose_part`), so the three are interchangeable.
    """

    uses_source_id: ClassVar[bool] = False
    """True for a masker whose map depends on which source image this is (annotations): the
    build then passes ``source_id=`` to :meth:`__call__`."""

    class Config(AreaBounds):
        parts: tuple[str, ...] = DEFAULT_PARSED_PARTS
        dilation: Annotated[tuple[int, int], pair(integer=True, lo=0, hi=200)] = (1, 15)
        min_area: Area = 0.001
        max_area: Area = 0.6

        @field_validator("parts", mode="before")
        @classmethod
        def _known_parts(cls, parts: Any) -> tuple[str, ...]:
            if isinstance(parts, str) or not isinstance(parts, Sequence) or len(parts) == 0:
                raise ValueError(f"parts must be a non-empty list of part names from {', '.join(PARSED_PARTS)}; "
                                 f"got {parts!r}")
            unknown = [p for p in parts if p not in PARSED_PARTS]
            if unknown:
                raise ValueError(f"unknown part(s) {', '.join(repr(p) for p in unknown)} in parts; "
                                 f"known parts: {', '.join(PARSED_PARTS)}")
            if len(set(parts)) != len(parts):
                raise ValueError(f"parts lists a part twice: {list(parts)!r}")
            return tuple(str(p) for p in parts)

    parts: tuple[str, ...]
    dilation: tuple[int, int]
    min_area: float
    max_area: float

    @abstractmethod
    def label_map(self, image: np.ndarray, source_id: str | None) -> tuple[np.ndarray, tuple[str, ...]]:
        """The face's label map (any size; resized here) and the class order its values index."""

    def identity(self) -> dict[str, Any]:
        return {"parts": list(self.parts), "dilation": list(self.dilation), "min_area": self.min_area,
                "max_area": self.max_area}

    def __call__(self, image: np.ndarray, rng: np.random.Generator, *, source_id: str | None = None) -> MaskResult:
        shape = image_hw(type(self).__name__, image)
        labels, classes = self.label_map(image, source_id)
        labels = labels_at(labels, shape)
        return choose_part(self.name, self.parts, rng, dilation=self.dilation, small_parts=SMALL_PARSED_PARTS,
                           draw=lambda part, grow: dilate(part_mask(labels, classes, part), grow),
                           min_area=self.min_area, max_area=self.max_area)
