"""Sources of real face images: a folder tree, a Hugging Face dataset, or the offline sample.

A source lists its items as ``(source_id, ref)`` pairs without decoding anything -- listing
must be cheap because it happens once in the main process -- and loads one item from its
``ref`` inside a worker. ``source_id`` is stable across runs and machines (derived from the
relative path or an id column, never from listing order), because every random choice of a
sample is keyed by it.

An item may name a ``group``: the photo (or person) it was made from. Items of one group share
a split, so that crops of one photo cannot be in train and in test; without a group, every
item is its own. Split assignment hashes ``(seed, source name, group or source_id)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Iterator

import numpy as np
from PIL import Image
from pydantic import field_validator, model_validator

from ..config import Strict
from ..stage import Stage
from ..utils.numbers import number
from ..utils.text import slugify

__all__ = ["FolderSource", "HFSource", "IMAGE_EXTENSIONS", "SampleSource", "Source", "SourceItem", "slugify"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm")


@dataclass(frozen=True)
class SourceItem:
    """One real image of a source, listed without decoding it."""

    source_id: str
    ref: Any  # picklable locator: relative path, row index, (portrait, variant)
    group: str | None = None  # photo of origin: items of one group always share a split
    path: str | None = None  # path relative to the source root, for messages and the manifest

    @property
    def split_key(self) -> str:
        """What split assignment hashes: the group, or the item itself when it has none."""
        return self.group if self.group is not None else self.source_id

    @property
    def label(self) -> str:
        """How the manifest names the item to a user: its relative path, else its id."""
        return self.path if self.path is not None else self.source_id


class Source(Stage, ABC):
    """A collection of real images with stable ids."""

    name: ClassVar[str] = "source"
    default_licence: ClassVar[str] = "unknown"
    # A sentence the dataset card prints about this source (e.g. "a smoke-test set"); "" for none.
    card_note: ClassVar[str] = ""

    @classmethod
    def label(cls) -> str:
        return f"{cls.name} source"  # "folder source: /x is not a directory"

    def __init__(self, licence: str | None = None) -> None:
        self.licence = licence or self.default_licence

    @abstractmethod
    def items(self) -> Iterator[SourceItem]:
        """Every item, in a stable order."""

    @abstractmethod
    def load(self, ref: Any) -> bytes | Image.Image:
        """The raw image of one item (decoded and checked by ``data.images.load_rgb``)."""

    def ignored(self) -> Iterator[tuple[str, str]]:
        """``(relative path, reason)`` of files the source saw but does not read, for the manifest."""
        return iter(())

    def identity(self) -> dict[str, Any]:
        return {"licence": self.licence}


class FolderSource(Source):
    """Any folder tree of images; ids come from the relative path without extension."""

    name = "folder"

    class Config(Strict):
        path: str
        extensions: list[str] | None = None
        recursive: bool = True
        licence: str | None = None

        @field_validator("path")
        @classmethod
        def _is_a_folder(cls, path: str) -> str:
            if not Path(path).expanduser().is_dir():
                raise ValueError(f"{Path(path).expanduser()} is not a directory")
            return path

    def __init__(
        self,
        path: str,
        *,
        extensions: list[str] | None = None,
        recursive: bool = True,
        licence: str | None = None,
    ) -> None:
        self.configure(path=path, extensions=extensions, recursive=recursive, licence=licence)
        super().__init__(licence)
        self.root = Path(path).expanduser()
        self.extensions = tuple(e.lower() for e in (extensions or IMAGE_EXTENSIONS))

    def _files(self) -> list[Path]:
        pattern = "**/*" if self.recursive else "*"
        return sorted(p for p in self.root.glob(pattern) if p.is_file() or p.is_symlink())

    def items(self) -> Iterator[SourceItem]:
        for path in self._files():
            if path.suffix.lower() in self.extensions:
                rel = path.relative_to(self.root).as_posix()
                yield SourceItem(slugify(rel.rsplit(".", 1)[0]), rel, path=rel)

    def ignored(self) -> Iterator[tuple[str, str]]:
        """Files whose extension the source does not read (text files, archives, videos...)."""
        for path in self._files():
            if path.suffix.lower() not in self.extensions:
                what = f"extension {path.suffix!r}" if path.suffix else "no extension"
                yield path.relative_to(self.root).as_posix(), f"{what} is not read (reads {', '.join(self.extensions)})"

    def load(self, ref: str) -> bytes:
        path = self.root / ref
        if path.is_symlink() and not path.resolve().is_relative_to(self.root.resolve()):
            raise OSError(f"symlink points outside the source folder: {ref}")
        return path.read_bytes()

    def identity(self) -> dict[str, Any]:
        return {"path": str(self.root), "licence": self.licence}


@lru_cache(maxsize=4)
def _load_hf(path: str, split: str, revision: str | None, image_column: str):
    import datasets

    try:
        ds = datasets.load_dataset(path, split=split, revision=revision)
    except Exception as exc:  # noqa: BLE001 - surface hub/offline errors as a clear message
        raise ValueError(f"cannot load dataset {path!r} split {split!r}: {exc}") from exc
    if image_column not in ds.column_names:
        raise ValueError(f"no column {image_column!r} in {path!r}; columns: {', '.join(ds.column_names)}")
    # Undecoded bytes: our own loader handles odd modes and records conversions.
    if isinstance(ds.features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    return ds


class HFSource(Source):
    """A Hugging Face dataset by local path or hub id, through ``datasets.load_dataset``."""

    name = "hf"

    class Config(Strict):
        path: str
        split: str = "train"
        image_column: str = "image"
        id_column: str | None = None
        revision: str | None = None
        licence: str | None = None

        @model_validator(mode="after")
        def _columns_exist(self):  # noqa: ANN202 - pydantic reads no annotation here
            # Opening the dataset (cached, once per process) is what tells a typo in a column
            # name from a real column; it reads no image.
            dataset = _load_hf(self.path, self.split, self.revision, self.image_column)
            if self.id_column is not None and self.id_column not in dataset.column_names:
                raise ValueError(f"no id column {self.id_column!r}; columns: {', '.join(dataset.column_names)}")
            return self

    def __init__(
        self,
        path: str,
        *,
        split: str = "train",
        image_column: str = "image",
        id_column: str | None = None,
        revision: str | None = None,
        licence: str | None = None,
    ) -> None:
        self.configure(path=path, split=split, image_column=image_column, id_column=id_column,
                       revision=revision, licence=licence)
        super().__init__(licence)

    def _dataset(self):
        return _load_hf(self.path, self.split, self.revision, self.image_column)

    def items(self) -> Iterator[SourceItem]:
        ds = self._dataset()
        if self.id_column is not None:
            ids = [slugify(str(v)) for v in ds[self.id_column]]
        else:
            width = max(6, len(str(len(ds))))
            ids = [f"{i:0{width}d}" for i in range(len(ds))]
        for index, source_id in enumerate(ids):
            yield SourceItem(source_id, index)

    def load(self, ref: int) -> bytes | Image.Image:
        value = self._dataset()[int(ref)][self.image_column]
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            if value.get("path"):
                return Path(value["path"]).read_bytes()
            raise OSError("row has an empty image")
        if isinstance(value, Image.Image):
            return value
        raise OSError(f"unsupported image value of type {type(value).__name__}")

    def identity(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "split": self.split,
            "revision": self.revision,
            "image_column": self.image_column,
            "id_column": self.id_column,
            "licence": self.licence,
        }


_SAMPLE_LICENCE = (
    "public domain: NASA photograph of Eileen Collins (scikit-image data.astronaut) and the"
    " U.S. Navy portrait of Grace Hopper (matplotlib sample data)"
)


@lru_cache(maxsize=2)
def _portrait(name: str) -> np.ndarray:
    if name == "astronaut":
        try:
            from skimage import data
        except ImportError as exc:
            raise ImportError(
                "the sample source needs scikit-image: pip install 'dolos-bench[sample]'"
            ) from exc
        return np.ascontiguousarray(data.astronaut())
    if name == "grace_hopper":
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB"))
    raise ValueError(f"unknown portrait {name!r}")


# Face boxes (x0, y0, x1, y1) of the portraits; crops always contain the whole face.
_FACES = {"astronaut": (170, 60, 270, 175), "grace_hopper": (175, 125, 370, 335)}


class SampleSource(Source):
    """Redistributable public-domain portraits shipped inside installed packages.

    Two portraits, varied by square crops of different scale and offset around the face and by
    horizontal flips, so that the quickstart works offline. It is a smoke-test set: every item
    shows one of two people, so it says nothing about a localizer's generalisation. Each item's
    group is its photo, so crops of one photo all land in one split.
    """

    name = "sample"
    default_licence = _SAMPLE_LICENCE
    card_note = (
        "a smoke-test set: every image is a crop (some flipped) of one of two photos, and all"
        " crops of one photo are in one split. It shows that the pipeline works; it says nothing"
        " about how well a localizer generalises."
    )

    requires: ClassVar[tuple[str, ...]] = ("skimage",)
    extra: ClassVar[str | None] = "sample"

    class Config(Strict):
        count: Annotated[int, number(integer=True, lo=1)] = 50
        licence: str | None = None

    def __init__(self, *, count: int = 50, licence: str | None = None) -> None:
        self.configure(count=count, licence=licence)
        super().__init__(licence)

    def items(self) -> Iterator[SourceItem]:
        for k in range(self.count):
            portrait = ("astronaut", "grace_hopper")[k % 2]
            yield SourceItem(f"{portrait}-{k // 2:03d}", (portrait, k // 2), group=portrait)

    def load(self, ref: tuple[str, int]) -> Image.Image:
        portrait, variant = ref
        image = _portrait(portrait)
        h, w = image.shape[:2]
        x0, y0, x1, y1 = _FACES[portrait]
        rng = np.random.Generator(np.random.PCG64(variant * 2 + (portrait == "grace_hopper")))
        face = max(x1 - x0, y1 - y0)
        side_max = min(h, w)
        side = int(rng.uniform(min(side_max, max(face * 1.6, 288)), side_max))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left_lo, left_hi = max(0, x1 - side), min(w - side, x0)
        top_lo, top_hi = max(0, y1 - side), min(h - side, y0)
        left = int(rng.integers(left_lo, max(left_lo, left_hi) + 1)) if left_hi >= left_lo else int(
            np.clip(cx - side / 2, 0, w - side)
        )
        top = int(rng.integers(top_lo, max(top_lo, top_hi) + 1)) if top_hi >= top_lo else int(
            np.clip(cy - side / 2, 0, h - side)
        )
        crop = image[top : top + side, left : left + side]
        if variant % 2 == 1:
            crop = crop[:, ::-1]
        return Image.fromarray(np.ascontiguousarray(crop))

    def identity(self) -> dict[str, Any]:
        return {"count": self.count, "licence": self.licence}

