"""``bench import --format dolos``: a Dolos-layout folder turned into a dolos-bench dataset folder.

Reading the layout (what is where, mask polarity, what an export carried beside it) is
:mod:`dolos_bench.data.dolos_layout`'s job. This module writes the dataset folder exactly as a
build does -- the same :class:`~dolos_bench.data.dataset_io.DatasetFolder` (ownership rule,
atomic shards, resume), a manifest with a build's keys (:func:`.manifest.import_manifest`) and a
card without a ``configs:`` block (which would make ``datasets`` serve a stale cache, see
:func:`.manifest.build_card`).

What each row keeps: with the samples file that ``bench export`` writes, every id, generator
label, parts list, source, seed and config of the exported dataset. Without it (Dolos's own data),
the layout's own facts: the split, the label, the generator folder's name, and the file name as the
id -- prefixed with the generator when file names repeat across folders (Dolos names the same
source's fakes alike in every generator folder).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined

from ..data.dataset_io import DatasetFolder, ShardRecord, shard_name
from ..data.dolos_layout import SAMPLES_FILE, LayoutImage, ignored_in_layout, read_carried, read_image, scan_layout
from ..data.images import encode_png
from ..data.magnitude import area_ratio
from ..data.schema import REAL, SPLITS
from ..utils.files import sha256_file
from .manifest import import_manifest

SOURCE = "dolos"


@dataclass(frozen=True)
class ImportedSample:
    """One image to import and the row fields that do not come from its pixels."""

    image: LayoutImage
    fields: dict[str, Any]  # id, generator, parts, source, source_id, masker, generator_config, perturbations, seed

    @property
    def sample_id(self) -> str:
        return self.fields["id"]


@dataclass
class ImportPlan:
    samples: list[ImportedSample]
    skipped: list[dict[str, str]]  # skipped while planning (duplicate ids)
    shards: list[tuple[str, str, list[ImportedSample]]]
    ids: str  # how the ids were chosen, for the manifest


def _default_fields(image: LayoutImage, sample_id: str) -> dict[str, Any]:
    return {
        "id": sample_id, "generator": image.generator, "parts": [], "source": SOURCE, "source_id": image.key,
        "masker": "", "generator_config": json.dumps({"imported_from": "dolos"}), "perturbations": "[]", "seed": 0,
    }


def plan_import(root: Path, shard_size: int) -> ImportPlan:
    """Every image of the layout with its row fields and shard, in build order (split, then id)."""
    images = scan_layout(root)
    carried = read_carried(root)
    keys = [image.key for image in images]
    prefixed = len(set(keys)) != len(keys)
    samples: list[ImportedSample] = []
    for image in images:
        default_id = f"{image.generator}-{image.key}" if prefixed else image.key
        samples.append(ImportedSample(image, carried.get(image.path) or _default_fields(image, default_id)))
    if carried:
        ids = f"from {SAMPLES_FILE} (written by bench export)"
    else:
        ids = "<generator folder>-<file name> (file names repeat)" if prefixed else "file names"
    kept, skipped = _drop_duplicate_ids(samples)
    kept.sort(key=lambda s: (SPLITS.index(s.image.split), s.sample_id))
    shards: list[tuple[str, str, list[ImportedSample]]] = []
    for split in SPLITS:
        members = [s for s in kept if s.image.split == split]
        total = (len(members) + shard_size - 1) // shard_size
        shards += [(shard_name(split, i, total), split, members[i * shard_size : (i + 1) * shard_size])
                   for i in range(total)]
    return ImportPlan(kept, skipped, shards, ids)


def _drop_duplicate_ids(samples: list[ImportedSample]) -> tuple[list[ImportedSample], list[dict[str, str]]]:
    """Ids are unique in a dataset: a second image with an id already taken is skipped, naming both."""
    first: dict[str, str] = {}
    kept, skipped = [], []
    for sample in samples:
        if sample.sample_id in first:
            skipped.append(_skip(sample, f"duplicate id (same id as {first[sample.sample_id]})"))
            continue
        first[sample.sample_id] = sample.image.path
        kept.append(sample)
    return kept, skipped


def _skip(sample: ImportedSample, reason: str) -> dict[str, str]:
    f = sample.fields
    return {"id": f["id"], "source": f["source"], "source_id": f["source_id"], "path": sample.image.path,
            "reason": reason}


def _plan_fingerprint(root: Path, plan: ImportPlan) -> str:
    """What an interrupted import must match to be resumed: the layout's files and carried fields."""
    digest = hashlib.sha256(f"dolos-import\0{Path(root).resolve()}\n".encode())
    for sample in plan.samples:
        digest.update(json.dumps([sample.image.path, sample.fields], sort_keys=True).encode() + b"\n")
    carried = Path(root) / SAMPLES_FILE
    if carried.is_file():
        digest.update(sha256_file(carried).encode())
    return "dolos-import:" + digest.hexdigest()


def _write_shard(folder: DatasetFolder, root: Path, name: str, split: str,
                 members: list[ImportedSample]) -> ShardRecord:
    rows, skipped, notes = [], [], []
    for sample in members:
        try:
            image, mask, converted = read_image(root, sample.image)
        except (OSError, ValueError) as exc:  # DolosLayoutError is a ValueError
            skipped.append(_skip(sample, str(exc)))
            continue
        if converted:
            notes.append({"source": sample.fields["source"], "source_id": sample.fields["source_id"],
                          "path": sample.image.path, "notes": ["re-encoded as PNG"]})
        rows.append({
            # The layout has no originals: a fake's change is unknown, its area is the mask's
            # (an export of a build carries all three in its samples file, and they win).
            "area_ratio": None if sample.image.label == REAL else area_ratio(mask),
            **sample.fields,
            "image": {"bytes": image, "path": None},
            "mask": {"bytes": encode_png(mask), "path": None},
            "label": sample.image.label,
            "split": split,
        })
    return folder.write_shard(name, split, rows, skipped, notes)


def import_dolos(root: Path, out: Path, *, overwrite: bool = False, shard_size: int = 500) -> dict[str, int]:
    """Convert a Dolos-layout folder into a dolos-bench dataset folder (masks to 255 = forged).

    ``out`` follows a build's rule: empty, an earlier build or import (replaced only with
    ``overwrite``), or an interrupted import of the same folder (resumed). Foreign files are refused.
    Returns the number of samples written and skipped, and the manifest's warnings.
    """
    root, out = Path(root), Path(out)
    plan = plan_import(root, shard_size)
    folder = DatasetFolder(out)
    folder.prepare(_plan_fingerprint(root, plan), [name for name, _, _ in plan.shards], overwrite=overwrite,
                   what="imported dataset")
    records = [folder.finished_shard(name) or _write_shard(folder, root, name, split, members)
               for name, split, members in plan.shards]
    skipped = plan.skipped + [s for r in records for s in r.skipped]
    failed = {s["id"] for r in records for s in r.skipped}
    written = [s for s in plan.samples if s.sample_id not in failed]
    sources = sorted({s.fields["source"] for s in written} or {SOURCE})
    manifest = import_manifest(
        name=f"dolos-import-{root.resolve().name}",
        imported_from={"layout": "dolos", "path": str(root), "ids": plan.ids},
        sources=[{"name": name, "type": "dolos-import", "params": {"path": str(root)}} for name in sources],
        shards=records,
        skipped=skipped,
        samples=[(s.image.split, "real" if s.image.label == REAL else "fake", s.fields["generator"]) for s in written],
        planned=len(plan.samples) + len(plan.skipped),
        ignored=[{"source": SOURCE, "path": path, "reason": reason} for path, reason in ignored_in_layout(root)],
    )
    folder.finish(manifest, import_card(manifest))
    return {"total": manifest["counts"]["total"], "skipped": len(skipped), "warnings": manifest["warnings"]}


def import_card(manifest: dict[str, Any]) -> str:
    """README.md of an imported dataset: Hub metadata without ``configs:``, then where it came from."""
    total = manifest["counts"]["total"]
    size = ("n<1K" if total < 1_000 else "1K<n<10K" if total < 10_000
            else "10K<n<100K" if total < 100_000 else "100K<n<1M")
    metadata = {
        "license": "other",
        "pretty_name": manifest["name"],
        "tags": ["image-forensics", "inpainting", "deepfake-localization", "faces", "dolos-bench"],
        "task_categories": ["image-segmentation", "image-classification"],
        "size_categories": [size],
        # No `configs:` block: the shard names say the splits, and a `configs` block makes
        # `datasets.load_dataset(folder)` serve a stale cache for a rebuilt same-named folder.
    }
    env = Environment(loader=PackageLoader("dolos_bench.builder", "templates"), undefined=StrictUndefined,
                      keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    splits = [s for s in SPLITS if s in manifest["counts"]["splits"]]
    body = env.get_template("import_card.md.j2").render(manifest=manifest, splits=splits)
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n\n" + body
