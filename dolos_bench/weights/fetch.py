"""``bench weights fetch``: download an entry with checksum verification into the cache.

URLs go through ``pooch`` (streamed to a temporary file, hash checked, progress bar); Hub
repositories through ``huggingface_hub.snapshot_download`` (its own per-file sha256 checks and
bars, into the Hugging Face cache). A file is downloaded into a private staging folder of the
cache and moved into place only once its checksum matched, so a failed or wrong download leaves
nothing behind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..utils.files import atomic_path
from .cache import Check, cache_dir, check_file, entry_folder, entry_path
from .catalogue import Entry

__all__ = ["FetchError", "Fetched", "fetch", "fetch_hub"]


class FetchError(UserError, RuntimeError):
    """A download that failed, or a file whose checksum is not the catalogue's."""


@dataclass(frozen=True)
class Fetched:
    """Where an entry now is, and what its check said (None for Hub snapshots)."""

    path: Path
    check: Check | None


def fetch(entry: Entry, *, from_file: str | Path | None = None, progress: bool = True) -> Fetched:
    """Put ``entry`` into the cache: from its source, or from a file downloaded by hand."""
    if entry.kind == "hub":
        if from_file is not None:
            raise FetchError(f"{entry.name} is a Hub repository ({entry.source}): --from takes single files only")
        return Fetched(fetch_hub(entry.source, revision=entry.revision, allow_patterns=entry.allow_patterns,
                                 progress=progress, gated=entry.gated), None)
    if entry.kind == "folder":
        if from_file is None:
            raise FetchError(f"{entry.name} has no direct download link: download {', '.join(entry.files)} by hand from "
                             f"{entry.page or entry.source} into one folder, then run "
                             f"`bench weights fetch {entry.name} --from FOLDER`")
        return _copy_folder_in(entry, Path(from_file).expanduser())
    if from_file is not None:
        return _copy_in(entry, Path(from_file).expanduser())
    if entry.manual:
        raise FetchError(f"{entry.name} has no direct download link: download {entry.filename} by hand from "
                         f"{entry.page or entry.source}, then run `bench weights fetch {entry.name} --from FILE`")
    return _download(entry, progress=progress)


def _staging() -> Path:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".partial-", dir=root))


def _download(entry: Entry, *, progress: bool) -> Fetched:
    import pooch

    assert entry.filename is not None
    staging = _staging()  # ours alone: removed whatever happens
    try:
        logging.getLogger("pooch").setLevel(logging.ERROR)  # we report the hash ourselves
        try:
            got = Path(pooch.retrieve(entry.source, known_hash=entry.checksum, fname=entry.filename,
                                      path=staging, progressbar=progress))
        except ValueError as exc:  # pooch's hash mismatch
            raise FetchError(f"{entry.name}: the file downloaded from {entry.source} does not match the catalogue's "
                             f"{entry.checksum} ({_first_line(exc)}); nothing was kept") from exc
        except Exception as exc:  # requests' connection and HTTP errors
            raise FetchError(f"{entry.name}: cannot download {entry.source}: {_first_line(exc)}") from exc
        return _place(entry, got)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_in(entry: Entry, source: Path) -> Fetched:
    """A hand-downloaded file, checked, then copied into the cache (the original is left alone)."""
    if not source.is_file():
        raise FetchError(f"{entry.name}: no file {source}")
    check = check_file(entry, source)
    if not check.ok:
        raise FetchError(f"{entry.name}: {source} does not match the catalogue's {check.expected} "
                         f"(its sha256 is {check.sha256}); nothing was copied")
    staging = _staging()
    try:
        staged = staging / source.name
        shutil.copyfile(source, staged)
        return _place(entry, staged)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_folder_in(entry: Entry, source: Path) -> Fetched:
    """A hand-downloaded folder: its named files copied into the cache together (the originals left alone).

    The files are staged first and the cache folder replaced in one rename, so an interrupted copy
    leaves the old folder (or none), never half of the files.
    """
    if not source.is_dir():
        raise FetchError(f"{entry.name}: --from takes the folder holding {', '.join(entry.files)}; {source} is not a folder")
    missing = [name for name in entry.files if not (source / name).is_file()]
    if missing:
        raise FetchError(f"{entry.name}: {source} lacks {', '.join(missing)}; nothing was copied")
    staging = _staging()
    try:
        staged = staging / entry.name
        staged.mkdir()
        for name in entry.files:
            shutil.copyfile(source / name, staged / name)
        target = entry_folder(entry)
        old = staging / ".old"
        if target.exists():
            target.rename(old)  # moved aside, then dropped with the staging folder
        staged.rename(target)
        return Fetched(target, None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _place(entry: Entry, staged: Path) -> Fetched:
    """Move a checked file to its cache path (atomically, over an older copy)."""
    target = entry_path(entry)
    with atomic_path(target) as tmp:
        shutil.move(staged, tmp)
    return Fetched(target, check_file(entry, target))


def fetch_hub(repo_id: str, *, revision: str | None = None, allow_patterns: tuple[str, ...] = (),
              progress: bool = True, gated: bool = False) -> Path:
    """A Hub repository's snapshot in the Hugging Face cache (downloaded where missing)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if not progress:
        disable_progress_bars()
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(allow_patterns) or None))
    except Exception as exc:  # offline, unknown repository, gated without a token, ...
        hint = " (a gated repository: accept its licence on the Hub and set HF_TOKEN)" if gated else ""
        raise FetchError(f"cannot download {repo_id} from the Hugging Face Hub{hint}: {_first_line(exc)}") from exc
    finally:
        if not progress:
            enable_progress_bars()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
