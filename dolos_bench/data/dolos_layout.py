"""The folder layout of the Dolos paper's released data, in and out.

Dolos (Tantaru, Oneata & Oneata, WACV 2024) ships its data as::

    real/<split>/<key>.png
    fake/<generator>/images/<split>/<key>.png      partially inpainted images
    fake/<generator>/masks/<split>/<key>.png       RGB masks, 255 = REAL (unchanged), 0 = fake
    fake/<generator>/<split>/<key>.png             fully generated images (no masks)

with splits ``train``, ``valid`` and ``test``. Its masks have the opposite polarity of ours
(255 = forged): the conversion happens here and nowhere else.

The layout itself carries a sample's split, label, generator (the folder name) and key (the file
name). What it cannot carry -- our ids when they are not file-name safe, generator labels that
are not folder-name safe, mask parts, sources, seeds -- an export writes beside it in
:data:`SAMPLES_FILE` (one JSON object per image, keyed by the image's path), which Dolos's own
readers never look at (they list ``<split>/`` folders) and an import reads back. An export also
writes the ownership record of :mod:`dolos_bench.utils.outdir`, so that a later export may
replace it, and nothing else.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
from PIL import Image
from pydantic import field_validator

from ..config import Strict
from ..errors import UserError
from ..utils.files import atomic_write_bytes, atomic_write_text
from ..utils.outdir import prepare_output, write_record
from .dataset_io import DatasetFolder
from .images import decode_png, encode_png
from .reader import DatasetReadError, read_rows
from .schema import FAKE, MAGNITUDE_COLUMNS, REAL
from .sources import IMAGE_EXTENSIONS, Source, SourceItem, slugify

DOLOS_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
OUR_SPLITS = {v: k for k, v in DOLOS_SPLITS.items()}
SAMPLES_FILE = "dolos-bench-samples.jsonl"
EXPORT_KIND = "export"
# Row fields an export keeps in SAMPLES_FILE (image, mask, label and split are in the layout itself).
CARRIED = ("id", "generator", "parts", "source", "source_id", "masker", "generator_config", "perturbations", "seed")


class DolosLayoutError(UserError, ValueError):
    """A folder that is not in the Dolos layout, or a dataset that cannot be exported to it."""


def mask_from_dolos(mask: np.ndarray) -> np.ndarray:
    """Dolos mask (255 = real, read from the first channel) -> ours (255 = forged)."""
    first = mask[..., 0] if mask.ndim == 3 else mask
    return np.where(first == 255, 0, 255).astype(np.uint8)


def mask_to_dolos(mask: np.ndarray) -> np.ndarray:
    """Our mask (255 = forged) -> a Dolos RGB mask (255 = real, 0 = forged)."""
    dolos = np.where(mask > 0, 0, 255).astype(np.uint8)
    return np.stack([dolos] * 3, axis=-1)


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


class DolosRealSource(Source):
    """The real images of a Dolos-layout folder (``real/<split>/``), as a build source."""

    name = "dolos"

    class Config(Strict):
        path: str
        split: str = "all"
        licence: str | None = None

        @field_validator("path")
        @classmethod
        def _is_a_layout(cls, path: str) -> str:
            if not (Path(path).expanduser() / "real").is_dir():
                raise ValueError(f"{Path(path).expanduser()} has no real/ folder (not a Dolos layout)")
            return path

        @field_validator("split")
        @classmethod
        def _known_split(cls, split: str) -> str:
            allowed = ["all", *DOLOS_SPLITS.values()]
            if split not in allowed:
                raise ValueError(f"split must be one of {', '.join(allowed)}, got {split!r}")
            return split

    def __init__(self, path: str, *, split: str = "all", licence: str | None = None) -> None:
        self.configure(path=path, split=split, licence=licence)
        super().__init__(licence)
        self.root = Path(path).expanduser()

    def items(self) -> Iterator[SourceItem]:
        splits = list(DOLOS_SPLITS.values()) if self.split == "all" else [self.split]
        for split in splits:
            for path in _images(self.root / "real" / split):
                yield SourceItem(slugify(path.stem), f"real/{split}/{path.name}")

    def load(self, ref: str) -> bytes:
        return (self.root / ref).read_bytes()

    def identity(self) -> dict[str, Any]:
        return {"path": str(self.root), "split": self.split, "licence": self.licence}


def export_dolos(dataset_dir: Path, out: Path, *, overwrite: bool = False) -> dict[str, int]:
    """Write every split of a dataset folder in the Dolos layout; returns real/fake counts.

    ``out`` must be empty or hold an earlier export (replaced only with ``overwrite``); a folder
    with anything else in it is refused with the list of those files and left untouched.
    """
    folder = DatasetFolder(dataset_dir)
    if not folder.is_complete():
        raise DolosLayoutError(f"{dataset_dir} is not a finished dolos-bench dataset (no complete manifest)")
    prepare_output(out, kind=EXPORT_KIND, what="Dolos export", replace=overwrite)
    counts = {"real": 0, "fake": 0}
    written: list[str] = []
    carried: list[str] = []
    splits = dict.fromkeys(s["split"] for s in (folder.read_manifest() or {}).get("shards", []))
    for split in splits:
        try:
            rows = read_rows(dataset_dir, split)
        except DatasetReadError as exc:
            raise DolosLayoutError(str(exc)) from exc
        planned = [(row, _export_paths(row, DOLOS_SPLITS.get(split, split))) for row in rows]
        _check_unique(planned)
        # The record lists the files before they exist: an interrupted export is still ours to replace.
        written += [p for _, paths in planned for p in paths]
        write_record(out, EXPORT_KIND, [*written, SAMPLES_FILE])
        for row, paths in planned:
            _write_sample(out, row, paths)
            counts["real" if row["label"] == REAL else "fake"] += 1
            magnitude = {k: row[k] for k in MAGNITUDE_COLUMNS if row.get(k) is not None}
            carried.append(json.dumps({"file": paths[0], **{k: row[k] for k in CARRIED}, **magnitude}, sort_keys=True))
    atomic_write_text(out / SAMPLES_FILE, "".join(line + "\n" for line in carried))
    return counts


def _export_paths(row: dict[str, Any], dolos_split: str) -> tuple[str, ...]:
    """Relative paths of a row's image (and mask, for a fake) in the Dolos layout."""
    key = slugify(row["id"])
    if row["label"] == REAL:
        return (f"real/{dolos_split}/{key}.png",)
    base = f"fake/{slugify(row['generator'])}"
    return (f"{base}/images/{dolos_split}/{key}.png", f"{base}/masks/{dolos_split}/{key}.png")


def _check_unique(planned: list[tuple[dict[str, Any], tuple[str, ...]]]) -> None:
    """Two ids that become one file name would overwrite each other: refuse instead."""
    seen: dict[str, str] = {}
    for row, paths in planned:
        if paths[0] in seen:
            raise DolosLayoutError(
                f"samples {seen[paths[0]]!r} and {row['id']!r} would both be written to {paths[0]}"
            )
        seen[paths[0]] = row["id"]


def _write_sample(out: Path, row: dict[str, Any], paths: tuple[str, ...]) -> None:
    atomic_write_bytes(out / paths[0], row["image"]["bytes"])
    if len(paths) > 1:
        atomic_write_bytes(out / paths[1], encode_png(mask_to_dolos(decode_png(row["mask"]["bytes"]))))


# -- reading a Dolos-layout folder (bench import) -----------------------------------------------


@dataclass(frozen=True)
class LayoutImage:
    """One image of a Dolos-layout folder, as its place in the layout describes it."""

    path: str  # relative to the layout root, POSIX
    split: str  # ours: train / validation / test
    label: int
    generator: str  # the generator folder's name, "real" for reals
    key: str  # the file name without its extension
    mask: Literal["none", "file", "full"]  # reals: none; partial fakes: a mask file; full fakes: all forged

    @property
    def mask_path(self) -> str:
        """Where the layout keeps this image's mask: same name under masks/ instead of images/."""
        generator_dir, _, rest = self.path.partition("/images/")
        return f"{generator_dir}/masks/{rest}"


def scan_layout(root: Path) -> list[LayoutImage]:
    """Every image of a Dolos-layout folder, sorted by path; refuses a folder that is not one."""
    root = Path(root)
    if not (root / "real").is_dir() and not (root / "fake").is_dir():
        raise DolosLayoutError(f"{root} has neither real/ nor fake/: not a Dolos layout")
    found: list[LayoutImage] = []
    for dolos_split, split in OUR_SPLITS.items():
        found += [LayoutImage(f"real/{dolos_split}/{p.name}", split, REAL, "real", p.stem, "none")
                  for p in _images(root / "real" / dolos_split)]
    fake_root = root / "fake"
    for gen_dir in sorted(p for p in fake_root.iterdir() if p.is_dir()) if fake_root.is_dir() else []:
        partial = (gen_dir / "images").is_dir()
        for dolos_split, split in OUR_SPLITS.items():
            folder = gen_dir / "images" / dolos_split if partial else gen_dir / dolos_split
            sub = f"images/{dolos_split}" if partial else dolos_split
            found += [LayoutImage(f"fake/{gen_dir.name}/{sub}/{p.name}", split, FAKE, gen_dir.name, p.stem,
                                  "file" if partial else "full")
                      for p in _images(folder)]
    if not found:
        raise DolosLayoutError(f"{root} holds no images under real/<split>/ or fake/<generator>/")
    return sorted(found, key=lambda image: image.path)


def ignored_in_layout(root: Path) -> list[tuple[str, str]]:
    """``(relative path, reason)`` of the files in the layout's image folders that are not images.

    Masks are not listed (they are read with their image), nor anything outside the image folders.
    """
    root = Path(root)
    folders = [root / "real" / s for s in OUR_SPLITS]
    fake_root = root / "fake"
    for gen_dir in sorted(p for p in fake_root.iterdir() if p.is_dir()) if fake_root.is_dir() else []:
        base = gen_dir / "images" if (gen_dir / "images").is_dir() else gen_dir
        folders += [base / s for s in OUR_SPLITS]
    ignored = []
    for folder in folders:
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.is_file() and path.suffix.lower() not in IMAGE_EXTENSIONS:
                what = f"extension {path.suffix!r}" if path.suffix else "no extension"
                ignored.append((path.relative_to(root).as_posix(),
                                f"{what} is not read (reads {', '.join(IMAGE_EXTENSIONS)})"))
    return ignored


def read_image(root: Path, image: LayoutImage) -> tuple[bytes, np.ndarray, bool]:
    """The image as PNG bytes, its mask in our polarity (255 = forged) and whether the image had to
    be re-encoded as PNG (the manifest lists such conversions); image and mask sizes are checked.

    Raises :class:`DolosLayoutError` (or ``OSError``/``ValueError`` from the decoders) for a sample
    that cannot be imported; the importer records the reason and goes on.
    """
    png, converted = _png_bytes(Path(root) / image.path)
    h, w = decode_png(png).shape[:2]
    if image.mask == "none":
        return png, np.zeros((h, w), np.uint8), converted
    if image.mask == "full":
        return png, np.full((h, w), 255, np.uint8), converted
    mask_file = Path(root) / image.mask_path
    if not mask_file.is_file():
        raise DolosLayoutError(f"no mask {image.mask_path}")
    mask = mask_from_dolos(np.asarray(Image.open(mask_file)))
    if mask.shape != (h, w):
        raise DolosLayoutError(f"mask size {mask.shape[::-1]} differs from image size {(w, h)}")
    return png, mask, converted


def read_carried(root: Path) -> dict[str, dict[str, Any]]:
    """What an export wrote in :data:`SAMPLES_FILE`, by image path; empty for Dolos's own data.

    A malformed line is an error naming it: guessing would import wrong ids or generators.
    """
    path = Path(root) / SAMPLES_FILE
    if not path.is_file():
        return {}
    carried: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise DolosLayoutError(f"{path} line {number}: not JSON ({exc})") from exc
        problem = _carried_problem(entry)
        if problem:
            raise DolosLayoutError(f"{path} line {number}: {problem}")
        carried[entry["file"]] = {k: entry[k] for k in CARRIED}
        carried[entry["file"]].update({k: float(entry[k]) for k in MAGNITUDE_COLUMNS  # optional: newer exports
                                       if isinstance(entry.get(k), (int, float)) and not isinstance(entry[k], bool)})
    return carried


_CARRIED_TYPES: dict[str, type | tuple[type, ...]] = {
    "file": str, "id": str, "generator": str, "parts": list, "source": str, "source_id": str, "masker": str,
    "generator_config": str, "perturbations": str, "seed": int,
}


def _carried_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "expected a JSON object"
    for key, kind in _CARRIED_TYPES.items():
        if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
            return f"{key!r} is missing or not a {kind.__name__}"
    if not entry["id"]:
        return "'id' is empty"
    if not all(isinstance(part, str) for part in entry["parts"]):
        return "'parts' must be a list of strings"
    return None


def _png_bytes(path: Path) -> tuple[bytes, bool]:
    """The file's bytes if it is a PNG, else the image re-encoded as RGB PNG; and whether it was."""
    data = path.read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data, False
    return encode_png(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))), True
