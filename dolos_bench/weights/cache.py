"""Where fetched weights live, and whether a file there (or anywhere) is the one the catalogue names.

The cache folder is ``$DOLOS_BENCH_CACHE/weights`` when that variable is set, else
``$XDG_CACHE_HOME/dolos-bench/weights``, else ``~/.cache/dolos-bench/weights``. A file entry
lives at ``<cache>/<entry name>/<file name>``; Hub entries stay in the Hugging Face cache
(``$HF_HOME`` / ``$HF_HUB_CACHE``), shared with every other tool that uses the Hub, so that a
10 GB pipeline is never stored twice.

Hashing a multi-GB file on every build would cost seconds, so a cached file's size,
modification time and digests are remembered in ``<cache>/verified.json``; a file that changed
since is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..utils.files import atomic_write_json, sha256_path
from .catalogue import Entry

__all__ = ["CACHE_ENV", "Check", "cache_dir", "check_file", "entry_folder", "entry_path", "file_digests", "find_file",
           "missing_files", "weights_digest"]

CACHE_ENV = "DOLOS_BENCH_CACHE"
STAMPS = "verified.json"


def cache_dir() -> Path:
    """The weights cache folder (not created here)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "weights"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dolos-bench" / "weights"


def entry_path(entry: Entry) -> Path:
    """Where ``bench weights fetch`` puts a file entry."""
    assert entry.filename is not None
    return cache_dir() / entry.name / entry.filename


def entry_folder(entry: Entry) -> Path:
    """Where ``bench weights fetch`` puts a folder entry's files."""
    return cache_dir() / entry.name


def missing_files(entry: Entry) -> list[str]:
    """The files of a folder entry that its cache folder lacks (all of them when it does not exist)."""
    folder = entry_folder(entry)
    return [name for name in entry.files if not (folder / name).is_file()]


def find_file(entry: Entry) -> Path | None:
    """The first existing copy of a file entry: the cache, then its ``also_at`` places."""
    for path in (entry_path(entry), *entry.locations()):
        if path.is_file():
            return path
    return None


def _load_stamps() -> dict[str, dict[str, object]]:
    try:
        data = json.loads((cache_dir() / STAMPS).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_digests(path: Path, remember: bool | None = None) -> tuple[str, str]:
    """(sha256, md5) of a file, one read; remembered by size and mtime in the cache's stamps.

    By default only files inside the cache are remembered: stamps of every path hashed elsewhere
    (temporary folders, a user's own files) would pile up in a folder the user never looks into.
    ``remember=True`` remembers any path (:func:`weights_digest`: the few model folders a build loads).
    """
    stat = path.stat()
    key = str(path.resolve())
    if remember is None:
        remember = path.resolve().is_relative_to(cache_dir().resolve())
    stamp = _load_stamps().get(key) if remember else None
    if isinstance(stamp, dict) and stamp.get("size") == stat.st_size and stamp.get("mtime_ns") == stat.st_mtime_ns:
        return str(stamp["sha256"]), str(stamp["md5"])
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            sha.update(block)
            md5.update(block)
    digests = sha.hexdigest(), md5.hexdigest()
    if not remember:
        return digests
    stamps = _load_stamps()
    stamps[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digests[0], "md5": digests[1]}
    try:
        atomic_write_json(cache_dir() / STAMPS, stamps)
    except OSError:
        pass  # a read-only cache: hash again next time rather than fail
    return digests


def weights_digest(path: str | os.PathLike[str]) -> str:
    """The sha256 a build records for the weights it loaded: of a file, or of a folder's tree.

    The same value as :func:`dolos_bench.utils.files.sha256_path` (a folder: its sorted relative
    paths, each with its file's sha256), but every file's digest is remembered by path, size and
    modification time in the cache's stamps, so a multi-GB model folder (SDXL, a Hub snapshot) is
    read once per machine rather than once per worker and build. A file rewritten in place gets a
    new mtime and is hashed again.
    """
    return sha256_path(path, lambda file: file_digests(file, remember=True)[0])


@dataclass(frozen=True)
class Check:
    """A file against its entry: ``verified``, ``mismatch`` or ``unverifiable`` (no published hash)."""

    status: Literal["verified", "mismatch", "unverifiable"]
    sha256: str
    expected: str | None  # "sha256:..." / "md5:..." the file was held against

    @property
    def ok(self) -> bool:
        return self.status != "mismatch"


def check_file(entry: Entry, path: Path) -> Check:
    """Hold ``path`` against the entry's published checksum."""
    sha256, md5 = file_digests(path)
    if entry.sha256:
        return Check("verified" if sha256 == entry.sha256.lower() else "mismatch", sha256, entry.checksum)
    if entry.md5:
        return Check("verified" if md5 == entry.md5.lower() else "mismatch", sha256, entry.checksum)
    return Check("unverifiable", sha256, None)
