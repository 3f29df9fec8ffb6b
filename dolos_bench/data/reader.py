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
(``download_mode="force_redownload"``) for the reason above.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import pyarrow.parquet as pq

from ..errors import UserError
from ..utils.files import sha256_file
from .dataset_io import MANIFEST

IMAGE_COLUMNS = ("image", "mask")


class DatasetReadError(UserError, ValueError):
    """The split cannot be read as asked; the message names the folder, split or shard."""


class Split(Protocol):
    """What the scoring loop needs from a split: its length, whole columns, batches, row ranges."""

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
                 stop: int | None = None) -> None:
        self.files = [Path(f) for f in files]
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
        return ParquetSplit(self.files, start=self.start + start, stop=self.start + stop)

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

    def __init__(self, ds: Any, limit: int | None = None) -> None:
        import datasets

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
        return DatasetsSplit(self.ds.select(range(start, stop)))

    def column(self, name: str) -> list[Any]:
        return list(self.ds[name])

    def batches(self, batch_size: int) -> Iterator[dict[str, list[Any]]]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for begin in range(0, len(self.ds), batch_size):
            yield self.ds[begin : begin + batch_size]


def _manifest_files(root: Path, manifest: dict[str, Any], split: str, verify: bool) -> list[Path]:
    if not manifest.get("complete"):
        raise DatasetReadError(f"{root}: the manifest says the build is incomplete; finish it with `bench build` first")
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


def open_split(data: str | Path, split: str, limit: int | None = None, *, verify: bool = True) -> Split:
    """One split of a dolos-bench folder (verified shards), another local folder, or a Hub id."""
    root = Path(data)
    manifest_path = root / MANIFEST
    if root.is_dir() and manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetReadError(f"{manifest_path}: unreadable manifest: {exc}") from exc
        return ParquetSplit(_manifest_files(root, manifest, split, verify), limit)
    import datasets

    kwargs: dict[str, Any] = {}
    if root.is_dir():
        kwargs["download_mode"] = datasets.DownloadMode.FORCE_REDOWNLOAD
    try:
        ds = datasets.load_dataset(str(data), split=split, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub, offline and layout errors become one clear line
        raise DatasetReadError(f"cannot load split {split!r} of {data}: {exc}") from exc
    return DatasetsSplit(ds, limit)


def read_rows(data: str | Path, split: str) -> list[dict[str, Any]]:
    """Every row of a split as dicts (images as bytes dicts); for small data, tools and tests."""
    reader = open_split(data, split)
    rows: list[dict[str, Any]] = []
    for batch in reader.batches(256):
        keys = list(batch)
        rows += [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
    return rows


__all__ = ["DatasetReadError", "DatasetsSplit", "ParquetSplit", "Split", "open_split", "read_rows"]
