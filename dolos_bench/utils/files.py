"""Atomic, shareable file writes and content hashes: the one copy every module uses.

Every file the toolkit writes (shards, cards, manifests, results, checkpoints) goes through
:func:`atomic_output`: a temporary file in the target's folder, flushed and fsynced, given the
permissions a plain ``open()`` would have had under the current umask (``mkstemp`` makes 0600
files, which a colleague or a web server could not read), then renamed over the target. A crash
leaves the old file or the new one, never a torn mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file here (0644 under the usual umask 022)."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, suffix: str = ".tmp", tmp_dir: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that want a file name (pyarrow, PIL, matplotlib).

    The caller writes the file at the yielded path; on a clean exit it is fsynced, given the umask's
    permissions and renamed over ``path``. ``tmp_dir`` (same filesystem) keeps the temporary file out
    of the target's folder, e.g. a build's state folder. On an error it is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tmp_dir) if tmp_dir is not None else target.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding if "b" not in mode else None) as fh:
        yield fh


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_output(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_output(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Sorted keys and a final newline: the same object always gives the same bytes."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(folder: str | os.PathLike[str], file_digest: Callable[[Path], str] | None = None) -> str:
    """One digest for a folder: its sorted relative paths, each with its file's sha256.

    ``file_digest`` gives each file's sha256 (default: :func:`sha256_file`, reading it); a caller
    that remembers digests passes its own, and the folder's digest is the same either way.
    """
    root = Path(folder)
    digest_of = file_digest or sha256_file
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(root).as_posix()}\0{digest_of(file)}\n".encode())
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike[str], file_digest: Callable[[Path], str] | None = None) -> str:
    """sha256 of a file, or :func:`sha256_tree` of a folder (``file_digest`` as there)."""
    p = Path(path)
    if p.is_dir():
        return sha256_tree(p, file_digest)
    return (file_digest or sha256_file)(p)
