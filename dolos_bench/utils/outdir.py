"""Output folders: which files in them are ours, and the one rule for replacing them.

A command that writes a folder (build, import, export, leaderboard) may delete or replace only the
files that a dolos-bench command recorded as its own: a build's manifest or resume state, or the
ownership record (:data:`RECORD`) that the other commands write beside their output. A folder that
holds anything else is refused with the list of the foreign files, and the refusal never suggests
``--overwrite``: no flag makes the toolkit delete what it did not write.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

from ..errors import UserError
from .files import atomic_write_json

RECORD = ".dolos-bench.json"
LISTED = 12
# What utils.files leaves beside a target when a write is killed: ".<name>.<random>.tmp".
_TEMP_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{6,}\.tmp$")


class ForeignFilesError(UserError):
    """The folder holds files that no dolos-bench command wrote; nothing was touched."""

    def __init__(self, root: Path, foreign: list[str], what: str) -> None:
        self.root, self.foreign = root, foreign
        shown = ", ".join(foreign[:LISTED]) + (f", … ({len(foreign) - LISTED} more)" if len(foreign) > LISTED else "")
        super().__init__(
            f"{root} holds {len(foreign)} file(s) that dolos-bench did not write: {shown}."
            f" Nothing was changed. Write the {what} to an empty or new folder, or move those files away first"
        )


def files_under(root: Path) -> list[str]:
    """Every file (and symlink) below ``root`` as a sorted relative POSIX path; folders are not listed."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in filenames:
            found.append((base / name).relative_to(root).as_posix())
        for name in dirnames:  # symlinked folders are not descended into; list them as entries
            if (base / name).is_symlink():
                found.append((base / name).relative_to(root).as_posix())
    return sorted(found)


def foreign_files(root: Path, ours: Iterable[str]) -> list[str]:
    """Files below ``root`` that are not in ``ours`` (relative POSIX paths).

    The temporary file of an interrupted atomic write of one of ours counts as ours.
    """
    owned = set(ours)
    return [f for f in files_under(root) if f not in owned and not _leftover_of(f, owned)]


def _leftover_of(rel: str, owned: set[str]) -> bool:
    folder, _, name = rel.rpartition("/")
    match = _TEMP_LEFTOVER.match(name)
    return bool(match) and (f"{folder}/{match['name']}" if folder else match["name"]) in owned


def refuse_foreign(root: Path, ours: Iterable[str], *, what: str) -> None:
    """Raise :class:`ForeignFilesError` when ``root`` holds anything outside ``ours``."""
    foreign = foreign_files(root, ours)
    if foreign:
        raise ForeignFilesError(Path(root), foreign, what)


def remove_ours(root: Path, ours: Iterable[str]) -> None:
    """Delete the listed files (and leftovers of their interrupted writes), then the folders they
    leave empty; never ``root`` itself, never anything that is not listed."""
    root = Path(root)
    owned = set(ours)
    parents: set[Path] = set()
    for rel in files_under(root):
        if rel in owned or _leftover_of(rel, owned):
            path = root / rel
            path.unlink()
            parents.update(p for p in path.parents if p != root and root in p.parents)
    for folder in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: something else lives there


def read_record(root: Path, kind: str) -> list[str] | None:
    """The files a previous ``kind`` command recorded in ``root``, or None if there is no such record."""
    try:
        record = json.loads((Path(root) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("tool") != "dolos-bench" or record.get("kind") != kind:
        return None
    files = record.get("files")
    return [str(f) for f in files] if isinstance(files, list) else None


def write_record(root: Path, kind: str, files: Iterable[str]) -> None:
    """Record the files this command wrote, so that a later run may replace them (and only them)."""
    atomic_write_json(Path(root) / RECORD, {"tool": "dolos-bench", "kind": kind, "files": sorted(set(files))})


def prepare_output(root: Path, *, kind: str, what: str, replace: bool, flag: str | None = "--overwrite") -> None:
    """Make ``root`` ready for a ``kind`` command's output, or refuse without touching anything.

    A missing or empty folder is used as it is. A folder holding a previous ``kind`` output and
    nothing else is cleared of that output when ``replace`` is true (otherwise refused, naming
    ``flag``). Any foreign file means a refusal that lists it.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is a file, not a folder: choose a folder for the {what}")
    if not files_under(root):
        root.mkdir(parents=True, exist_ok=True)
        return
    recorded = read_record(root, kind)
    ours = set(recorded or ()) | ({RECORD} if recorded is not None else set())
    refuse_foreign(root, ours, what=what)
    if not replace:
        hint = f"; pass {flag} to replace it" if flag else ""
        raise UserError(f"{root} holds an earlier {what}{hint}")
    remove_ours(root, ours)
    root.mkdir(parents=True, exist_ok=True)
