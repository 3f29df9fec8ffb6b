"""Face-part masks from CelebAMask-HQ's hand annotations, for CelebA-HQ sources.

CelebAMask-HQ (Lee et al., CVPR 2020) annotates each of CelebA-HQ's 30,000 images with 18
binary part masks at 512 x 512, stored as ``CelebAMask-HQ-mask-anno/<k>/<index:05d>_<class>.png``
(``k = index // 2000``). Where a face parser guesses, these are the parts as people drew them:
the best masks a CelebA-HQ build can have. The masker finds an image's annotations by the
number at the end of its source id (``123`` or ``CelebA-HQ-img/123.jpg`` -> index 123), paints the
class files into one label map in the order CelebAMask-HQ's own ``g_mask.py`` uses (later classes
win where two overlap), and brings the map to the image with nearest-neighbour resizing.

``root`` may be the dataset folder (holding ``CelebAMask-HQ-mask-anno``), the annotation folder
itself, or a folder of ready label maps ``<index>.png`` (values in that same class order, as
``g_mask.py`` writes them). The source images must be framed as CelebA-HQ's (square, aligned): an
image whose aspect ratio differs from its annotation's is skipped with the reason, since a crop
would no longer line up.

Licence: CelebAMask-HQ's annotations are for non-commercial research use only; the masker
declares it as its ``licence_note``, which the dataset card quotes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from pydantic import field_validator

from dolos_bench.builder.base import SkipSample
from dolos_bench.builder.masks.parsing import (CELEBAMASK_FILE_CLASSES, DEFAULT_PARSED_PARTS, PARSENET_CLASSES,
                                               LabelMapMasker)

__all__ = ["CelebAMaskHQMasker", "annotation_index"]

ANNOTATION_FOLDER = "CelebAMask-HQ-mask-anno"
IMAGES_PER_FOLDER = 2000

_LICENCE_NOTE = (
    "**CelebAMask-HQ annotations.** Face-part masks were taken from the CelebAMask-HQ part "
    "annotations (Lee et al., CVPR 2020), which are for non-commercial research use only."
)


def annotation_index(source_id: str) -> int | None:
    """The CelebA-HQ image index a source id ends with (``"CelebA-HQ-img/123.jpg"`` -> 123), or None."""
    found = re.search(r"(\d+)$", Path(str(source_id)).stem)
    return int(found.group(1)) if found else None


def _layout(root: Path) -> tuple[str, Path]:
    """(``"files"``, the annotation folder) or (``"maps"``, the folder of label maps)."""
    if (root / ANNOTATION_FOLDER).is_dir():
        return "files", root / ANNOTATION_FOLDER
    if (root / "0").is_dir():
        return "files", root
    return "maps", root


class CelebAMaskHQMasker(LabelMapMasker):
    """One face part per sample from CelebAMask-HQ's annotations of the sample's CelebA-HQ image.

    Args (keyword-only, as in a recipe):
        root: the CelebAMask-HQ folder, its ``CelebAMask-HQ-mask-anno`` folder, or a folder of
            label maps ``<index>.png``.
        parts, dilation, min_area, max_area: as for the landmark masker; parts may also be
            ``hair``, ``ears`` and ``neck`` (see :mod:`dolos_bench.builder.masks.parsing`).
    """

    name: ClassVar[str] = "celebamask-hq"
    uses_source_id: ClassVar[bool] = True
    licence_note: ClassVar[str | None] = _LICENCE_NOTE

    class Config(LabelMapMasker.Config):
        root: str

        @field_validator("root", mode="before")
        @classmethod
        def _root_is_a_folder(cls, root: Any) -> str:
            if not isinstance(root, (str, Path)) or not Path(root).expanduser().is_dir():
                raise ValueError(f"root {root!r} is not a folder (the CelebAMask-HQ folder, its {ANNOTATION_FOLDER} "
                                 "folder, or a folder of <index>.png label maps)")
            return str(Path(root).expanduser())

    def __init__(self, *, parts: Any = DEFAULT_PARSED_PARTS, dilation: Any = (1, 15), min_area: float = 0.001,
                 max_area: float = 0.6, root: str) -> None:
        self.configure(root=root, parts=parts, dilation=dilation, min_area=min_area, max_area=max_area)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "root": self.root}

    def label_map(self, image: np.ndarray, source_id: str | None) -> tuple[np.ndarray, tuple[str, ...]]:
        index = annotation_index(source_id) if source_id is not None else None
        if index is None:
            raise SkipSample(f"celebamask-hq: source id {source_id!r} names no CelebA-HQ image index")
        labels = self._read(index)
        if labels is None:
            raise SkipSample(f"celebamask-hq: no annotation for image {index} under {self.root}")
        height, width = image.shape[:2]
        if abs(labels.shape[0] * width - labels.shape[1] * height) > max(height, width):
            raise SkipSample(f"celebamask-hq: image {index} is {width}x{height} but its annotation is "
                             f"{labels.shape[1]}x{labels.shape[0]}: the source must be framed as CelebA-HQ's")
        return labels, PARSENET_CLASSES

    def _read(self, index: int) -> np.ndarray | None:
        kind, folder = _layout(Path(self.root))
        if kind == "maps":
            path = folder / f"{index}.png"
            return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
        files = folder / str(index // IMAGES_PER_FOLDER)
        labels: np.ndarray | None = None
        for value, name in enumerate(CELEBAMASK_FILE_CLASSES, start=1):
            path = files / f"{index:05d}_{name}.png"
            if not path.is_file():
                continue
            part = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if part is None:
                raise SkipSample(f"celebamask-hq: cannot read {path}")
            if labels is None:
                labels = np.zeros(part.shape, np.uint8)
            labels[part > 127] = value
        return labels
