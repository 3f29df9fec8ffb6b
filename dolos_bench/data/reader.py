"""Reading one split of a dataset for scoring: the exact bytes on disk, batch by batch.

``datasets.load_dataset(folder)`` is *not* safe for this. For a folder whose README declares
``configs`` (every dolos-bench dataset does, so the Hub viewer finds the splits), ``datasets``
keys its Arrow cache on the folder's name and the config, not on the files' contents: a second
dataset called ``ds`` -- or the same folder rebuilt from another recipe -- is served from the
first one's cache, and a score is silently computed on the wrong images. So a finished
dolos-bench folder is read straight from its parquet shards with pyarrow, after checking each
shard's sha256 against the manifest (the same hashes that make up the results' dataset
fingerprint). Streaming by record batches keeps memory flat however big the split is.

Anything else -- a Hub id, a folder in another layout -- goes through ``datasets`` (Hub data is
cached per commit, which is sound); a local folder without a manifest is re-read every time
(``download_mode="force_redownload"``) for the reason above. Such data is *unverified*: nothing
says its files are the ones a build wrote, so the split's :class:`DataOrigin` says so and lists
the files read, whose hashes then stand in for the manifest's in the results' fingerprint.

What ``--data`` names is decided before anything is loaded, so a typo costs no network time: an
existing folder is read from disk; ``hf://owner/name`` is a Hub id; so is a bare ``owner/name``
whose ``owner`` is not a local folder; anything else is a local path that does not exist, and
the error names the closest folders that do. An unfinished build (resume state, no manifest) is
refused rather than scored on the shards it has so far.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol, Sequence

import pyarrow.parquet as pq

from ..errors import UserError
from ..registry import closest_names
from ..utils.files import sha256_file
from .dataset_io import MANIFEST, STATE_DIR

IMAGE_COLUMNS = ("image", "mask")
HUB_PREFIX = "hf://"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class DatasetReadError(UserError, ValueError):
    """The split cannot be read as asked; the message names the folder, split or shard."""


class UnfinishedBuildError(DatasetReadError):
    """The folder holds a build that has not finished: scoring it would score part of a dataset."""


class NoSuchFolderError(DatasetReadError):
    """``--data`` names a local path that does not exist (raised before any network access)."""


@dataclass(frozen=True)
class DataOrigin:
    """Where a split's rows come from and how far they were checked.

    ``verified`` is true only for a finished dolos-bench build whose shards were checked against
    its manifest. ``content_key`` is what the results' fingerprint hashes for the data itself.
    """

    kind: Literal["build", "folder", "hub"]
    location: str
    verified: bool
    shard_sha256: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()

    def content_key(self) -> str:
        """Manifest shard hashes (a build), hashes of the files read (a folder), or the Hub id.

        A build's key is the one earlier versions used, so its fingerprints stay comparable.
        """
        if self.kind == "build":
            return json.dumps(sorted(self.shard_sha256))
        if self.kind == "folder":
            return files_sha256(Path(self.location), self.files)
        return self.location


def files_sha256(root: Path, files: Sequence[Path]) -> str:
    """One digest for a set of files: sorted paths relative to ``root``, each with its sha256."""
    digest = hashlib.sha256()
    for file in sorted(Path(f) for f in files):
        name = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.as_posix()
        digest.update(f"{name}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


class Split(Protocol):
    """What the scoring loop needs from a split: its length, whole columns, batches, row ranges."""

    origin: "DataOrigin"

    def __len__(self) -> int: ...

    def column(self, name: str) -> list[Any]: ...

    def batches(self, batch_size: int) -> Iterator[dict[str, list[Any]]]: ...

    def select(self, start: int, stop: int) -> "Split": ...


def _check_range(start: int, stop: int, length: int) -> None:
    if not 0 <= start <= stop <= length:
        raise ValueError(f"row range [{start}, {stop}) is outside a split of {length} rows")


class ParquetSplit:
    """Rows ``[start, stop)`` of a list of parquet shards taken end to end, in order.

    Image columns come back as ``{"bytes": ..., "path": ...}`` dicts, undecoded, as from a
    ``datasets.Image(decode=False)`` column. Only the row groups that overlap the range are read.
    """

    def __init__(self, files: Sequence[Path], limit: int | None = None, *, start: int = 0,
                 stop: int | None = None, origin: DataOrigin | None = None) -> None:
        self.files = [Path(f) for f in files]
        self.origin = origin or DataOrigin("folder", str(Path(self.files[0]).parent) if self.files else ".",
                                           verified=False, files=tuple(self.files))
        self._rows = [pq.ParquetFile(f).metadata.num_rows for f in self.files]
        total = sum(self._rows)
        stop = total if stop is None else stop
        if limit is not None:
            stop = min(stop, start + limit)
        _check_range(start, stop, total)
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def select(self, start: int, stop: int) -> "ParquetSplit":
        """Rows ``[start, stop)`` of this split (relative to it)."""
        _check_range(start, stop, len(self))
        return ParquetSplit(self.files, start=self.start + start, stop=self.start + stop, origin=self.origin)

    def _pieces(self) -> Iterator[tuple[Path, int, int]]:
        """(file, first row, end row) of each file's part of the range, in file-local rows."""
        offset = 0
        for path, rows in zip(self.files, self._rows):
            lo, hi = max(self.start - offset, 0), min(self.stop - offset, rows)
            if lo < hi:
                yield path, lo, hi
            offset += rows

    def column(self, name: str) -> list[Any]:
        values: list[Any] = []
        for path, lo, hi in self._pieces():
            values += pq.read_table(path, columns=[name]).column(name).slice(lo, hi - lo).to_pylist()
        return values

    def _record_batches(self, batch_size: int) -> Iterator[dict[str, list[Any]]]:
        for path, lo, hi in self._pieces():
            position = 0
            for record_batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
                begin, end = position, position + record_batch.num_rows
                position = end
                if end <= lo:
                    continue
                if begin >= hi:
                    break
                a, b = max(lo - begin, 0), min(hi, end) - begin
                yield record_batch.slice(a, b - a).to_pydict()

    def batches(self, batch_size: int) -> Iterator[dict[str, list[Any]]]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        pending: dict[str, list[Any]] = {}
        for rows in self._record_batches(batch_size):
            for key, values in rows.items():
                pending.setdefault(key, []).extend(values)
            while pending and len(next(iter(pending.values()))) >= batch_size:
                yield {k: v[:batch_size] for k, v in pending.items()}
                pending = {k: v[batch_size:] for k, v in pending.items()}
        if pending and next(iter(pending.values())):
            yield pending


class DatasetsSplit:
    """A ``datasets.Dataset`` behind the same small interface, image columns undecoded."""

    def __init__(self, ds: Any, limit: int | None = None, *, origin: DataOrigin | None = None) -> None:
        import datasets

        self.origin = origin or DataOrigin("hub", "(a datasets.Dataset)", verified=False)
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        for name in IMAGE_COLUMNS:
            if name in ds.column_names and isinstance(ds.features[name], datasets.Image):
                ds = ds.cast_column(name, datasets.Image(decode=False))
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def select(self, start: int, stop: int) -> "DatasetsSplit":
        _check_range(start, stop, len(self))
        return DatasetsSplit(self.ds.select(range(start, stop)), origin=self.origin)

    def column(self, name: str) -> list[Any]:
        return list(self.ds[name])

    def batches(self, batch_size: int) -> Iterator[dict[str, list[Any]]]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for begin in range(0, len(self.ds), batch_size):
            yield self.ds[begin : begin + batch_size]


def _manifest_files(root: Path, manifest: dict[str, Any], split: str, verify: bool) -> list[Path]:
    if not manifest.get("complete"):
        raise UnfinishedBuildError(
            f"{root}: unfinished build: run `bench build` again to finish it (its manifest says incomplete)")
    shards = [s for s in manifest.get("shards", []) if s.get("split") == split]
    if not shards:
        available = sorted({s.get("split") for s in manifest.get("shards", [])})
        raise DatasetReadError(f"{root} has no split {split!r}; it has: {', '.join(available) or '(none)'}")
    files = []
    for shard in shards:
        path = root / shard["file"]
        if not path.is_file():
            raise DatasetReadError(f"{root}: shard {shard['file']} listed in the manifest is missing")
        if verify and sha256_file(path) != shard["sha256"]:
            raise DatasetReadError(
                f"{root}: shard {shard['file']} was modified after the build (sha256 differs from the "
                "manifest); rebuild the dataset or restore the file"
            )
        files.append(path)
    return files


def _missing_folder_hint(path: Path) -> str:
    """Closest existing folders to the first missing part of ``path`` (difflib over its siblings)."""
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    missing = path
    while missing.parent != parent and missing != missing.parent:
        missing = missing.parent
    try:
        siblings = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return ""
    close = closest_names(missing.name, siblings)
    if not close:
        return ""
    prefix = "" if str(parent) == "." else f"{parent.as_posix().rstrip('/')}/"
    return " Did you mean " + " or ".join(repr(prefix + c) for c in close) + "?"


def resolve_data(data: str | Path) -> tuple[Literal["local", "hub"], str]:
    """Decide, without touching the network, whether ``data`` is a local folder or a Hub id.

    A :class:`~pathlib.Path` is always local. A string is a Hub id when it starts with ``hf://``,
    or when it is ``owner/name``, is not an existing path and ``owner`` is not a local folder.
    Everything else must be an existing folder: a typo fails here, at once.
    """
    text = str(data)
    if isinstance(data, str) and text.startswith(HUB_PREFIX):
        repo = text[len(HUB_PREFIX):].strip("/")
        if not repo:
            raise DatasetReadError(f"{text}: no Hub dataset id after {HUB_PREFIX}")
        return "hub", repo
    path = Path(text)
    if path.is_dir():
        return "local", text
    if path.exists():
        raise DatasetReadError(f"{text} is a file, not a dataset folder")
    if isinstance(data, str) and _HUB_ID.match(text) and not Path(text.split("/")[0]).is_dir():
        return "hub", text
    hub = f" For a Hub dataset, write {HUB_PREFIX}{text}." if isinstance(data, str) else ""
    raise NoSuchFolderError(f"no such folder: {text}.{_missing_folder_hint(path)}{hub}")


def _open_build(root: Path, split: str, limit: int | None, verify: bool) -> ParquetSplit:
    manifest_path = root / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetReadError(f"{manifest_path}: unreadable manifest: {exc}") from exc
    files = _manifest_files(root, manifest, split, verify)
    origin = DataOrigin("build", str(root), verified=verify,
                        shard_sha256=tuple(s["sha256"] for s in manifest.get("shards", [])))
    return ParquetSplit(files, limit, origin=origin)


def _open_with_datasets(location: str, split: str, limit: int | None, *, local: bool) -> DatasetsSplit:
    """A local folder in another layout (re-read, never from the cache) or a Hub dataset."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(location)
        files: tuple[Path, ...] = ()
        if local:
            data_files = builder.config.data_files or {}
            files = tuple(Path(f) for f in data_files.get(split, []))
        builder.download_and_prepare(
            download_mode=datasets.DownloadMode.FORCE_REDOWNLOAD if local else None)
        ds = builder.as_dataset(split=split)
    except Exception as exc:  # noqa: BLE001 - hub, offline and layout errors become one clear line
        raise DatasetReadError(f"cannot load split {split!r} of {location}: {exc}") from exc
    origin = DataOrigin("folder" if local else "hub", str(Path(location).resolve()) if local else location,
                        verified=False, files=files)
    return DatasetsSplit(ds, limit, origin=origin)


def open_split(data: str | Path, split: str, limit: int | None = None, *, verify: bool = True) -> Split:
    """One split of a dolos-bench folder (verified shards), another local folder, or a Hub id.

    Raises :class:`UnfinishedBuildError` for a build with resume state and no manifest, and
    :class:`NoSuchFolderError` for a local path that does not exist (see :func:`resolve_data`).
    """
    kind, location = resolve_data(data)
    if kind == "hub":
        return _open_with_datasets(location, split, limit, local=False)
    root = Path(location)
    if (root / MANIFEST).is_file():
        return _open_build(root, split, limit, verify)
    if (root / STATE_DIR).is_dir():
        raise UnfinishedBuildError(f"{root}: unfinished build: run `bench build` again to finish it")
    return _open_with_datasets(location, split, limit, local=True)


def read_rows(data: str | Path, split: str) -> list[dict[str, Any]]:
    """Every row of a split as dicts (images as bytes dicts); for small data, tools and tests."""
    reader = open_split(data, split)
    rows: list[dict[str, Any]] = []
    for batch in reader.batches(256):
        keys = list(batch)
        rows += [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
    return rows


__all__ = [
    "DataOrigin", "DatasetReadError", "DatasetsSplit", "NoSuchFolderError", "ParquetSplit", "Split",
    "UnfinishedBuildError", "files_sha256", "open_split", "read_rows", "resolve_data",
]
