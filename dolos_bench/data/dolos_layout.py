"""The folder layout of the Dolos paper's released data, in and out.

Dolos (Tantaru, Oneata & Oneata, WACV 2024) ships its data as::

    real/<split>/<key>.png
    fake/<generator>/images/<split>/<key>.png      partially inpainted images
    fake/<generator>/masks/<split>/<key>.png       RGB masks, 255 = REAL (unchanged), 0 = fake
    fake/<generator>/<split>/<key>.png             fully generated images (no masks)

with splits ``train``, ``valid`` and ``test``. Its masks have the opposite polarity of ours
(255 = forged): the conversion happens here and nowhere else.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from ..errors import UserError
from .dataset_io import DatasetFolder, shard_name
from .images import decode_png, encode_png
from .reader import DatasetReadError, read_rows
from .schema import FAKE, REAL, SPLITS
from .sources import IMAGE_EXTENSIONS, Source, SourceItem, slugify

DOLOS_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
OUR_SPLITS = {v: k for k, v in DOLOS_SPLITS.items()}


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

    def __init__(self, path: str, *, split: str = "all", licence: str | None = None) -> None:
        super().__init__(licence)
        self.root = Path(path).expanduser()
        if not (self.root / "real").is_dir():
            raise ValueError(f"dolos source: {self.root} has no real/ folder (not a Dolos layout)")
        allowed = ["all", *DOLOS_SPLITS.values()]
        if split not in allowed:
            raise ValueError(f"dolos source: split must be one of {', '.join(allowed)}, got {split!r}")
        self.split = split

    def items(self) -> Iterator[SourceItem]:
        splits = list(DOLOS_SPLITS.values()) if self.split == "all" else [self.split]
        for split in splits:
            for path in _images(self.root / "real" / split):
                yield SourceItem(slugify(path.stem), f"real/{split}/{path.name}")

    def load(self, ref: str) -> bytes:
        return (self.root / ref).read_bytes()

    def config(self) -> dict[str, Any]:
        return {"path": str(self.root), "split": self.split, "licence": self.licence}


def export_dolos(dataset_dir: Path, out: Path) -> dict[str, int]:
    """Write every split of a dataset folder in the Dolos layout; returns real/fake counts."""
    folder = DatasetFolder(dataset_dir)
    if not folder.is_complete():
        raise DolosLayoutError(f"{dataset_dir} is not a finished dolos-bench dataset (no complete manifest)")
    if out.exists() and any(out.iterdir()):
        raise DolosLayoutError(f"{out} is not empty; choose a new folder")
    counts = {"real": 0, "fake": 0}
    splits = dict.fromkeys(s["split"] for s in (folder.read_manifest() or {}).get("shards", []))
    for split in splits:
        dolos_split = DOLOS_SPLITS.get(split, split)
        try:
            rows = read_rows(dataset_dir, split)
        except DatasetReadError as exc:
            raise DolosLayoutError(str(exc)) from exc
        for row in rows:
            key = row["id"]
            image_bytes = row["image"]["bytes"]
            if row["label"] == REAL:
                target = out / "real" / dolos_split / f"{key}.png"
                _write(target, image_bytes)
                counts["real"] += 1
            else:
                base = out / "fake" / slugify(row["generator"])
                _write(base / "images" / dolos_split / f"{key}.png", image_bytes)
                mask = mask_to_dolos(decode_png(row["mask"]["bytes"]))
                _write(base / "masks" / dolos_split / f"{key}.png", encode_png(mask))
                counts["fake"] += 1
    return counts


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _png_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data
    return encode_png(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def _scan(root: Path) -> list[dict[str, Any]]:
    """Every image of a Dolos folder as a planned row (paths only)."""
    entries: list[dict[str, Any]] = []
    for dolos_split, split in OUR_SPLITS.items():
        for path in _images(root / "real" / dolos_split):
            entries.append({"split": split, "label": REAL, "generator": "real", "image": path, "mask": None,
                            "key": path.stem})
    fake_root = root / "fake"
    for gen_dir in sorted(p for p in fake_root.iterdir() if p.is_dir()) if fake_root.is_dir() else []:
        generator = gen_dir.name
        for dolos_split, split in OUR_SPLITS.items():
            if (gen_dir / "images").is_dir():
                for path in _images(gen_dir / "images" / dolos_split):
                    mask = gen_dir / "masks" / dolos_split / path.name
                    entries.append({"split": split, "label": FAKE, "generator": generator, "image": path,
                                    "mask": mask, "key": path.stem})
            else:  # fully generated: the whole image is forged
                for path in _images(gen_dir / dolos_split):
                    entries.append({"split": split, "label": FAKE, "generator": generator, "image": path,
                                    "mask": "full", "key": path.stem})
    return entries


def import_dolos(root: Path, out: Path, *, overwrite: bool = False, shard_size: int = 500) -> dict[str, int]:
    """Convert a Dolos-layout folder into a dolos-bench dataset folder (masks to 255 = forged)."""
    from ..build.manifest import package_versions

    if not (root / "real").is_dir() and not (root / "fake").is_dir():
        raise DolosLayoutError(f"{root} has neither real/ nor fake/: not a Dolos layout")
    entries = _scan(root)
    if not entries:
        raise DolosLayoutError(f"{root} holds no images under real/<split>/ or fake/<generator>/")
    entries.sort(key=lambda e: (SPLITS.index(e["split"]), e["generator"], e["key"]))
    shards: list[tuple[str, str, list[dict[str, Any]]]] = []
    for split in SPLITS:
        members = [e for e in entries if e["split"] == split]
        total = (len(members) + shard_size - 1) // shard_size
        shards += [(shard_name(split, i, total), split, members[i * shard_size : (i + 1) * shard_size])
                   for i in range(total)]
    folder = DatasetFolder(out)
    folder.prepare(f"dolos-import:{root.resolve()}", [s[0] for s in shards], overwrite=overwrite)
    skipped: list[dict[str, str]] = []
    records = []
    for name, split, members in shards:
        rows, shard_skipped = [], []
        for e in members:
            sample_id = f"{slugify(e['generator'])}-{slugify(e['key'])}"
            try:
                image = _png_bytes(e["image"])
                h, w = decode_png(image).shape[:2]
                if e["mask"] is None:
                    mask = np.zeros((h, w), np.uint8)
                elif e["mask"] == "full":
                    mask = np.full((h, w), 255, np.uint8)
                else:
                    if not e["mask"].exists():
                        raise DolosLayoutError(f"no mask {e['mask'].relative_to(root)}")
                    mask = mask_from_dolos(np.asarray(Image.open(e["mask"])))
                    if mask.shape != (h, w):
                        raise DolosLayoutError(f"mask size {mask.shape[::-1]} differs from image size {(w, h)}")
            except (OSError, ValueError) as exc:
                shard_skipped.append({"id": sample_id, "source": "dolos", "source_id": e["key"], "reason": str(exc)})
                continue
            rows.append({
                "id": sample_id, "image": {"bytes": image, "path": None},
                "mask": {"bytes": encode_png(mask), "path": None}, "label": e["label"], "source": "dolos",
                "source_id": e["key"], "generator": e["generator"],
                "generator_config": json.dumps({"imported_from": "dolos"}), "masker": "",
                "parts": [], "perturbations": "[]", "seed": 0, "split": split,
            })
        records.append(folder.write_shard(name, split, rows, shard_skipped, []))
        skipped += shard_skipped
    counts = {"total": sum(r.rows for r in records), "skipped": len(skipped)}
    manifest = {
        "format": "dolos-bench", "version": 1, "complete": True, "name": f"dolos-import-{root.name}",
        "imported_from": {"layout": "dolos", "path": str(root)}, "packages": package_versions(),
        "mask_polarity": "255 = forged, 0 = pristine; converted from Dolos's 255 = real",
        "shards": [{"file": f"data/{r.file}", "split": r.split, "rows": r.rows, "sha256": r.sha256} for r in records],
        "counts": counts, "skipped": skipped,
    }
    splits = sorted({r.split for r in records if r.rows}, key=SPLITS.index)
    card = (
        "---\nlicense: other\nconfigs:\n- config_name: default\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: data/{s}-*.parquet\n" for s in splits)
        + f"---\n\n# {manifest['name']}\n\nImported by dolos-bench from a Dolos-layout folder. Masks were"
        " converted to 255 = forged. See the Dolos data's own licence before redistributing.\n"
    )
    folder.finish(manifest, card)
    return counts
