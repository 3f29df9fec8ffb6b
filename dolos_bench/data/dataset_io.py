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

The files a build may remove or replace are only those the manifest or the resume state records
(:meth:`DatasetFolder.owned_files`); a folder holding anything else is refused, ``--overwrite`` or
not, with the list of those files (:mod:`dolos_bench.utils.outdir`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from ..utils.files import atomic_path, atomic_write_json, sha256_file
from ..utils.outdir import files_under, refuse_foreign, remove_ours
from .schema import COLUMNS, MAGNITUDE_COLUMNS, features

STATE_DIR = ".dolos-build"
MANIFEST = "manifest.json"
CARD = "README.md"
PLAN = "plan.json"
CARD_RECORD = "card.json"  # in STATE_DIR: sha256 of the card that finish() is about to write
MANIFEST_VERSION = 1


class BuildFolderError(UserError, RuntimeError):
    """The output folder cannot be used as asked (a finished build, another recipe's unfinished one).

    Foreign files are refused with :class:`dolos_bench.utils.outdir.ForeignFilesError` instead,
    whose message never suggests ``--overwrite``.
    """


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


def shard_schema() -> pa.Schema:
    """The Arrow schema of a shard, with the dataset Features in its metadata (imports `datasets`)."""
    return features().arrow_schema


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> pa.Table:
    """An Arrow table with the dataset Features embedded, so ``load_dataset`` restores them.

    Without ``schema`` the rows go through the Features' encoding (any form `datasets` accepts).
    With the :func:`shard_schema` a parent computed, the rows must already be in storage form
    (images as ``{"bytes", "path"}``, labels as ints, as the build makes them): build workers then
    write shards without importing `datasets`, and the bytes are the same.
    """
    # Rows made without the magnitude columns (imports of data that has no originals) hold nulls there.
    columns = {name: [row.get(name) if name in MAGNITUDE_COLUMNS else row[name] for row in rows] for name in COLUMNS}
    if schema is None:
        feats = features()
        return pa.Table.from_pydict(feats.encode_batch(columns), schema=feats.arrow_schema)
    return pa.Table.from_pydict(columns, schema=schema)


@dataclass(frozen=True)
class StagedShard:
    """A shard written and fsynced in the state's tmp folder, waiting for :meth:`DatasetFolder.commit_shard`."""

    path: Path
    sha256: str
    rows: int


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

    def read_plan(self) -> dict[str, Any] | None:
        """The resume state's plan (recipe hash and shard list), or None if there is none readable."""
        try:
            plan = json.loads((self.state / PLAN).read_text())
        except (OSError, ValueError):
            return None
        return plan if isinstance(plan, dict) else None

    def owned_files(self) -> set[str]:
        """The files below the root that a dolos-bench build or import recorded as its own.

        A finished folder records them in its manifest (its shards, the card, the manifest); an
        unfinished one in its resume state (everything under ``.dolos-build/``, the shards that
        ``plan.json`` lists, and the card once ``finish`` has recorded its hash). Nothing else is
        ever ours, whatever its name: a user's README.md or data/*.parquet stays theirs.
        """
        owned = {f for f in files_under(self.root) if f.startswith(f"{STATE_DIR}/")}
        manifest = self._own_manifest()
        if manifest is not None:
            owned |= {MANIFEST, CARD}
            shards = manifest.get("shards", [])
            owned |= {s["file"] for s in shards if isinstance(s, dict) and isinstance(s.get("file"), str)}
        plan = self.read_plan()
        if plan is not None and isinstance(plan.get("shards"), list):
            owned |= {f"data/{name}" for name in plan["shards"] if isinstance(name, str)}
        if self._card_is_recorded():
            owned.add(CARD)
        return owned

    def _own_manifest(self) -> dict[str, Any] | None:
        """The manifest if it is a readable dolos-bench manifest (a user's manifest.json is not ours)."""
        try:
            manifest = self.read_manifest()
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) and manifest.get("format") == "dolos-bench" else None

    def _card_is_recorded(self) -> bool:
        """True when README.md is the card that ``finish`` recorded before a crash cut it short."""
        try:
            recorded = json.loads((self.state / CARD_RECORD).read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            return False
        card = self.root / CARD
        return card.is_file() and sha256_file(card) == recorded

    def prepare(self, recipe_sha256: str, shard_files: list[str], *, overwrite: bool, what: str = "dataset") -> None:
        """Make the folder ready for this build, or refuse with a reason; never deletes user files.

        Any file the folder holds that no build recorded as its own is a refusal that lists it, with
        or without ``overwrite``. Of our own files, ``overwrite`` replaces a finished build or an
        unfinished one; without it a finished build is refused and an unfinished one of the same
        plan is resumed.
        """
        if self.root.exists() and not self.root.is_dir():
            raise BuildFolderError(f"{self.root} is a file, not a folder: choose a folder for the {what}")
        owned = self.owned_files()
        refuse_foreign(self.root, owned, what=what)
        if overwrite:
            remove_ours(self.root, owned)
        elif self._own_manifest() is not None:
            raise BuildFolderError(f"{self.root} holds a finished build; pass --overwrite to build it again")
        elif (plan := self.read_plan()) is not None:
            if plan.get("recipe_sha256") != recipe_sha256 or plan.get("shards") != shard_files:
                raise BuildFolderError(
                    f"{self.root} holds an unfinished build of a different recipe or source list;"
                    " pass --overwrite to discard it, or choose another --out"
                )
        elif files_under(self.root):
            # Only state files without a readable plan (a build killed while writing its plan).
            remove_ours(self.root, owned)
        (self.state / "shards").mkdir(parents=True, exist_ok=True)
        (self.state / "tmp").mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.state / PLAN,
            {"recipe_sha256": recipe_sha256, "shards": shard_files, "version": MANIFEST_VERSION},
        )

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
        return self.commit_shard(file, split, self.stage_shard(file, rows), skipped, notes)

    def stage_shard(self, file: str, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> StagedShard:
        """Write a shard's parquet into the state's tmp folder (what a build worker does).

        The file is complete and fsynced there, but not part of the dataset until the parent
        commits it: shards enter ``data/`` one by one, in plan order, whichever worker wrote them.
        """
        table = rows_to_table(rows, schema)
        staged = self.state / "tmp" / f"{file}.staged"
        with atomic_path(staged, suffix=".parquet", tmp_dir=self.state / "tmp") as tmp:
            pq.write_table(table, tmp, compression="zstd", write_statistics=False)
            digest = sha256_file(tmp)
        return StagedShard(staged, digest, len(rows))

    def commit_shard(self, file: str, split: str, staged: StagedShard, skipped: list[dict[str, str]],
                     notes: list[dict[str, Any]]) -> ShardRecord:
        """Rename a staged shard into ``data/``, then write its record (the order matters for resume)."""
        os.replace(staged.path, self.data / file)
        record = ShardRecord(file, split, staged.sha256, staged.rows, skipped, notes)
        atomic_write_json(self.state / "shards" / f"{file}.json", asdict(record))
        return record

    def finish(self, manifest: dict[str, Any], card: str) -> None:
        """Write the card, then the manifest (the completion mark), then drop the state folder.

        The card's hash goes into the state first, so that a crash between the card and the
        manifest leaves a README.md the next run knows as ours. Both files are written through the
        state's tmp folder: a torn write leaves nothing but state behind.
        """
        data = card.encode()
        atomic_write_json(self.state / CARD_RECORD, {"sha256": hashlib.sha256(data).hexdigest()})
        with atomic_path(self.root / CARD, suffix=".md", tmp_dir=self.state / "tmp") as tmp:
            tmp.write_bytes(data)
        with atomic_path(self.manifest_path, suffix=".json", tmp_dir=self.state / "tmp") as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
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

