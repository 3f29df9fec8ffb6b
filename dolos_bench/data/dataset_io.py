"""The dataset folder: parquet shards written atomically, build state for resume, the manifest.

The output folder is a Hugging Face dataset repository as it stands::

    DIR/
      data/<split>-00000-of-00004.parquet   shards with `datasets` Features (schema.features())
      README.md                              dataset card (YAML metadata + how it was built)
      manifest.json                          recipe, versions, shard hashes, counts, skips
      .dolos-build/                          resume state; removed when the build completes

A shard is the unit of resume: it is written to ``.dolos-build/tmp`` and renamed into
``data/`` (atomic on one filesystem), then its record is written the same way. After a crash,
a shard whose record exists and whose bytes still hash to it is done; anything else is redone.
``manifest.json`` is written last and is the mark of a finished build.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from ..utils.files import atomic_path, atomic_write_bytes, atomic_write_json, sha256_file
from .schema import COLUMNS, features

STATE_DIR = ".dolos-build"
MANIFEST = "manifest.json"
CARD = "README.md"
MANIFEST_VERSION = 1


class BuildFolderError(UserError, RuntimeError):
    """The output folder cannot be used as asked (finished build, other recipe, foreign files)."""


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.parquet"


@dataclass
class ShardRecord:
    """What the state folder remembers of a finished shard."""

    file: str
    split: str
    sha256: str
    rows: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """An Arrow table with the dataset Features embedded, so ``load_dataset`` restores them."""
    columns = {name: [row[name] for row in rows] for name in COLUMNS}
    feats = features()
    return pa.Table.from_pydict(feats.encode_batch(columns), schema=feats.arrow_schema)


class DatasetFolder:
    """Reads and writes one build's output folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.state = self.root / STATE_DIR

    # -- state ----------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text())

    def is_complete(self) -> bool:
        manifest = self.read_manifest()
        return bool(manifest and manifest.get("complete"))

    def prepare(self, recipe_sha256: str, shard_files: list[str], *, overwrite: bool) -> None:
        """Make the folder ready for this build, or refuse with a reason; never deletes user files."""
        plan_path = self.state / "plan.json"
        if overwrite:
            self.clear()
        elif self.is_complete():
            raise BuildFolderError(
                f"{self.root} holds a finished build; pass --overwrite to build it again"
            )
        elif plan_path.exists():
            plan = json.loads(plan_path.read_text())
            if plan.get("recipe_sha256") != recipe_sha256 or plan.get("shards") != shard_files:
                raise BuildFolderError(
                    f"{self.root} holds an unfinished build of a different recipe or source list;"
                    " pass --overwrite to discard it, or choose another --out"
                )
        elif self.root.exists() and any(self.root.iterdir()):
            raise BuildFolderError(
                f"{self.root} is not empty and holds no dolos-bench build; choose an empty or new"
                " folder (or pass --overwrite to replace the dataset files in it)"
            )
        (self.state / "shards").mkdir(parents=True, exist_ok=True)
        (self.state / "tmp").mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            plan_path,
            {"recipe_sha256": recipe_sha256, "shards": shard_files, "version": MANIFEST_VERSION},
        )

    def clear(self) -> None:
        """Remove only what a build writes: data/, the card, the manifest and the state folder."""
        for path in (self.data, self.state):
            if path.exists():
                shutil.rmtree(path)
        for path in (self.manifest_path, self.root / CARD):
            path.unlink(missing_ok=True)

    def finished_shard(self, file: str) -> ShardRecord | None:
        """The record of a shard that is complete on disk, or None if it must be (re)built."""
        record_path = self.state / "shards" / f"{file}.json"
        shard_path = self.data / file
        if not record_path.exists() or not shard_path.exists():
            return None
        record = ShardRecord(**json.loads(record_path.read_text()))
        if sha256_file(shard_path) != record.sha256:
            return None
        return record

    def write_shard(
        self,
        file: str,
        split: str,
        rows: list[dict[str, Any]],
        skipped: list[dict[str, str]],
        notes: list[dict[str, Any]],
    ) -> ShardRecord:
        """Write one shard atomically, then its record (the order matters for resume)."""
        table = rows_to_table(rows)
        with atomic_path(self.data / file, suffix=".parquet", tmp_dir=self.state / "tmp") as tmp:
            pq.write_table(table, tmp, compression="zstd", write_statistics=False)
            digest = sha256_file(tmp)
        record = ShardRecord(file, split, digest, len(rows), skipped, notes)
        atomic_write_json(self.state / "shards" / f"{file}.json", asdict(record))
        return record

    def finish(self, manifest: dict[str, Any], card: str) -> None:
        """Write the card, then the manifest (the completion mark), then drop the state folder."""
        atomic_write_bytes(self.root / CARD, card.encode())
        atomic_write_json(self.manifest_path, manifest)
        shutil.rmtree(self.state, ignore_errors=True)


def verify_shards(root: Path) -> list[str]:
    """Problems of a finished folder: missing shards or shards whose hash differs from the manifest."""
    folder = DatasetFolder(root)
    manifest = folder.read_manifest()
    if manifest is None:
        return [f"{root} has no {MANIFEST}: not a dolos-bench dataset folder"]
    problems = []
    if not manifest.get("complete"):
        problems.append("the manifest says the build is incomplete")
    for shard in manifest.get("shards", []):
        path = folder.root / shard["file"]
        if not path.exists():
            problems.append(f"missing shard {shard['file']}")
        elif sha256_file(path) != shard["sha256"]:
            problems.append(f"shard {shard['file']} does not match its sha256 in the manifest")
    return problems

