"""Score precomputed predictions: a folder or archive with one score map per sample id.

This is the door for models that cannot be shipped as TorchScript/ONNX (closed code, another
framework, a remote API): run the model anywhere, write ``<id>.png`` / ``<id>.npy`` /
``<id>.npz`` per sample plus an optional ``scores.csv`` (``id,score``), and hand the folder,
``.zip`` or ``.tar[.gz]`` to ``bench eval``.

Such a bundle often comes from someone else, so it is read as untrusted input:

* nothing is ever extracted to a path taken from the archive; members are read into memory by
  name (a compressed tar is decompressed once into a private temporary folder under generated
  names, because random access into a gzip stream would re-decompress from the start);
* members with absolute paths, ``..`` components, links pointing outside the archive and device
  or FIFO entries are refused, naming the member;
* archive bombs are stopped by limits on member count, per-member and total uncompressed size,
  and compression ratio, checked on headers before any data is inflated;
* in folder mode, symlinks pointing outside the folder are refused.

Layout mistakes (missing ids, extra ids, ids of another split, stray files) and, with
``deep=True``, every unreadable or invalid map are all reported at once by
:meth:`PredictionsLocalizer.validate`, before any scoring, because a benchmark run that fails
on sample 9,000 of 10,000 wastes an afternoon -- and so does one that names only the first of
twelve bad files. Errors list up to :data:`MAX_LISTED` files and count the rest.

A map need not have its image's size (the runner resizes it: patch-level maps of 19x19 or 37x37
for a square image are fine), but it must have its image's aspect ratio, since a map of the
wrong proportions was computed on some other crop or resize of the image and would be stretched
onto the mask. :func:`same_aspect` defines "the same aspect ratio" as the rounding of one
downscale (or upscale): some factor ``f`` gives the map's height and width from the image's,
both rounded the same way (down, up or to nearest). So a 256x384 image takes 128x192, 19x28 or
19x29, but not 19x19.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import csv
import hashlib
import io
import json
import math
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from dolos_bench.data.dataset_io import MANIFEST
from dolos_bench.data.reader import DatasetReadError, open_split
from dolos_bench.eval.api import Localizer, LocalizerError, LocalizerOutput
from dolos_bench.eval.checks import (
    ARCHIVE_SUFFIXES,
    LocalizerLoadError,
    _as_int,
    _reject_unknown,
    check_output,
)

__all__ = [
    "ArchiveLimits",
    "MAX_LISTED",
    "PREDICTION_SUFFIXES",
    "PredictionsError",
    "PredictionsLocalizer",
    "SCORES_FILE",
    "dataset_split_ids",
    "same_aspect",
]

PREDICTION_SUFFIXES = (".png", ".npy", ".npz")
SCORES_FILE = "scores.csv"
_JUNK_NAMES = {"thumbs.db", "desktop.ini"}
MAX_LISTED = 20
"""Bad prediction files named one per line in one error; the rest are counted."""

SplitIds = Mapping[str, Sequence[str]]
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class PredictionsError(LocalizerError):
    """A predictions folder/archive is unsafe, incomplete or holds an invalid map."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds that stop archive bombs; each is a ``--model-arg`` of the same name.

    The defaults let any honest bundle through: deflate/gzip cannot exceed about 1032:1, so a
    folder of all-zero maps (real images!) compresses near 1000:1 and must pass ``max_ratio``;
    a ratio above 2000 can only come from bzip2/lzma bombs or overlapping zip entries. The size
    limits bound the rest: a 16k x 16k float32 map is 1 GiB.
    """

    max_members: int = 1_000_000
    max_member_bytes: int = 1 << 30
    max_total_bytes: int = 64 << 30
    max_ratio: float = 2000.0
    ratio_min_bytes: int = 1 << 20
    """Ratios are only judged once this many bytes are involved (tiny files compress oddly)."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def _parse_bytes(name: str, value: Any) -> int:
    """``1048576``, ``"512MiB"``, ``"2GB"`` (binary multiples either way) -> bytes."""
    if isinstance(value, bool):
        raise LocalizerLoadError(f"option {name}={value!r} is not a size")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise LocalizerLoadError(f"option {name}={value!r} is not a size like 1048576 or 512MiB")
        number = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")
    if not math.isfinite(number) or number < 0:
        raise LocalizerLoadError(f"option {name}={value!r} must be a non-negative size")
    return int(number)


def _as_ratio(value: Any) -> float:
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        ratio = float("nan")
    if not ratio >= 1.0:
        raise LocalizerLoadError(f"option max_ratio={value!r} must be a number >= 1")
    return ratio


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise LocalizerLoadError(f"option {name}={value!r} is not true/false")


def _listing(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    more = len(items) - limit
    return shown + (f" ... and {more} more" if more > 0 else "")


def _lines(problems: Sequence[str], limit: int = MAX_LISTED, indent: str = "\n    ") -> str:
    """One problem per line, at most ``limit`` of them, then how many were left out."""
    shown = indent.join(problems[:limit])
    more = len(problems) - limit
    return indent + shown + (f"{indent}... and {more} more" if more > 0 else "")


def _raise_all(problems: Sequence[str], header: str) -> None:
    """Raise one error for every problem: a single one as is, several under ``header``."""
    if len(problems) == 1:
        raise PredictionsError(problems[0])
    if problems:
        raise PredictionsError(f"{header}:{_lines(problems, indent=chr(10) + '  ')}")


# -- geometry -------------------------------------------------------------------------------------

_ROUNDINGS = (Fraction(0), Fraction(-1), Fraction(-1, 2))
"""Offsets ``a`` of the rounding modes: side * f lies in [n + a, n + a + 1) for floor, ceil, nearest."""


def same_aspect(map_shape: Sequence[int], image_shape: Sequence[int]) -> bool:
    """Whether an ``(h, w)`` map is the ``(H, W)`` image scaled by one factor, each side rounded alike.

    For a rounding mode with offset ``a`` the factors that give ``h`` from ``H`` form the interval
    ``[(h + a) / H, (h + a + 1) / H)``; the map fits when, for some mode, the interval of the
    height and that of the width overlap. Exact fractions, so no float edge decides a verdict.
    """
    (h, w), (big_h, big_w) = (int(map_shape[0]), int(map_shape[1])), (int(image_shape[0]), int(image_shape[1]))
    for a in _ROUNDINGS:
        low = max((h + a) / Fraction(big_h), (w + a) / Fraction(big_w))
        high = min((h + a + 1) / Fraction(big_h), (w + a + 1) / Fraction(big_w))
        if low < high and high > 0:
            return True
    return False


def _aspect_shapes(map_shape: Sequence[int], image_shape: Sequence[int]) -> str:
    """The shapes that would fit: the image's own, and the map's height (or width) kept."""
    (h, w), (big_h, big_w) = map_shape[:2], image_shape[:2]
    options = [(big_h, big_w), (h, max(1, round(h * big_w / big_h))), (max(1, round(w * big_h / big_w)), w)]
    unique = list(dict.fromkeys(o for o in options if same_aspect(o, image_shape)))
    return " or ".join(f"{a}x{b}" for a, b in unique)


# -- other splits ---------------------------------------------------------------------------------


def dataset_split_ids(data: str | Path, scored: str | None = None) -> dict[str, list[str]]:
    """``{split: ids}`` for every split of a dolos-bench folder, read from its manifest's shards.

    Used only to explain predictions whose ids are not in the scored split, so it never fails:
    data without a manifest (another local layout, a Hub id) gives only the ``scored`` split's
    ids when it is named (so that ``--limit`` is still told apart from a wrong bundle), and a
    split that cannot be read is left out. Shards are not re-hashed here (the scored split's were).
    """
    root = Path(str(data))
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        names = sorted({str(s["split"]) for s in manifest.get("shards", [])})
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        names = [scored] if scored is not None else []
    found: dict[str, list[str]] = {}
    for name in names:
        try:
            found[name] = [str(i) for i in open_split(data, name, verify=False).column("id")]
        except (DatasetReadError, OSError, KeyError):
            continue
    return found


def _by_split(ids: Iterable[str], splits: SplitIds) -> tuple[dict[str, list[str]], list[str]]:
    """``ids`` grouped by the split they belong to, and those that belong to none."""
    owner: dict[str, str] = {}
    for name, members in splits.items():
        for sample_id in members:
            owner.setdefault(sample_id, name)
    grouped: dict[str, list[str]] = {}
    unknown: list[str] = []
    for sample_id in ids:
        if sample_id in owner:
            grouped.setdefault(owner[sample_id], []).append(sample_id)
        else:
            unknown.append(sample_id)
    return grouped, unknown


# -- stores: where bytes come from ----------------------------------------------------------------


def _unsafe_reason(name: str) -> str | None:
    """Why an archive member name could escape the archive, or ``None`` if it cannot."""
    if "\x00" in name:
        return "contains a NUL byte"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "contains a '..' component"
    return None


def _inside(target: str) -> bool:
    """``target`` (already normalised, relative to the archive root) stays inside the archive."""
    return not (target.startswith("/") or target == ".." or target.startswith("../"))


class _Store(ABC):
    """Flat name -> bytes; ``names`` are file paths relative to the root, '/'-separated."""

    kind = "store"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names: list[str] = []
        self.dirs: list[str] = []

    @abstractmethod
    def read(self, name: str) -> bytes:
        """The bytes of one member."""

    def close(self) -> None:
        pass


class _FolderStore(_Store):
    kind = "folder"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.root = Path(os.path.realpath(path))
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if os.path.commonpath([str(self.root), target]) != str(self.root):
                    raise PredictionsError(
                        f"predictions folder {str(path)!r}: {entry.name!r} is a symlink pointing"
                        f" outside the folder (-> {target!r}); copy the file in instead"
                    )
            if entry.is_dir():
                self.dirs.append(entry.name)
            elif entry.is_file():
                self.names.append(entry.name)
            else:
                self.dirs.append(entry.name)  # sockets, fifos: reported as stray entries

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


class _ZipStore(_Store):
    kind = "zip"

    def __init__(self, path: Path, limits: ArchiveLimits) -> None:
        super().__init__(path)
        self._pid = -1
        self._zf: zipfile.ZipFile | None = None
        self._infos: dict[str, zipfile.ZipInfo] = {}
        self.limits = limits
        try:
            infos = self._open().infolist()
        except zipfile.BadZipFile as exc:
            raise PredictionsError(f"{str(path)!r} is not a readable zip archive: {exc}") from exc
        where = f"zip archive {str(path)!r}"
        if len(infos) > limits.max_members:
            raise PredictionsError(
                f"{where} has {len(infos)} members, more than max_members={limits.max_members}"
            )
        total = 0
        links: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            reason = _unsafe_reason(name)
            if reason:
                raise PredictionsError(f"{where}: member {name!r} {reason}; refusing the archive")
            if info.is_dir():
                continue
            size = info.file_size
            if size > limits.max_member_bytes:
                raise PredictionsError(
                    f"{where}: member {name!r} inflates to {size} bytes, more than"
                    f" max_member_bytes={limits.max_member_bytes} (an archive bomb?)"
                )
            ratio = size / max(info.compress_size, 1)
            if size >= limits.ratio_min_bytes and ratio > limits.max_ratio:
                raise PredictionsError(
                    f"{where}: member {name!r} has compression ratio {ratio:.0f}:1, more than"
                    f" max_ratio={limits.max_ratio:g} (an archive bomb?)"
                )
            total += size
            if total > limits.max_total_bytes:
                raise PredictionsError(
                    f"{where}: members inflate to more than max_total_bytes="
                    f"{limits.max_total_bytes} by member {name!r} (an archive bomb?)"
                )
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                links[name] = info
            elif mode and not stat.S_ISREG(mode) and stat.S_IFMT(mode):
                raise PredictionsError(f"{where}: member {name!r} is not a regular file")
            self._infos[name] = info
        archive_size = max(path.stat().st_size, 1)
        if total >= limits.ratio_min_bytes and total / archive_size > limits.max_ratio:
            raise PredictionsError(
                f"{where}: {archive_size} bytes inflate to {total} bytes, ratio"
                f" {total / archive_size:.0f}:1 above max_ratio={limits.max_ratio:g}"
                " (overlapping members? an archive bomb?)"
            )
        self._aliases: dict[str, str] = {}
        for name, info in links.items():
            raw = self._open().open(info).read(4097)
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), raw.decode("utf-8", "replace")))
            if len(raw) > 4096 or not _inside(target) or raw.startswith(b"/"):
                raise PredictionsError(
                    f"{where}: member {name!r} is a symlink pointing outside the archive"
                    f" ({raw[:200].decode('utf-8', 'replace')!r})"
                )
            if target not in self._infos or target in links:
                raise PredictionsError(f"{where}: symlink member {name!r} points to missing {target!r}")
            self._aliases[name] = target
        self.names = sorted(self._infos)

    def _open(self) -> zipfile.ZipFile:
        # One handle per process: a forked worker must not share the parent's file offset.
        if self._zf is None or self._pid != os.getpid():
            self._zf = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._zf

    def read(self, name: str) -> bytes:
        info = self._infos[self._aliases.get(name, name)]
        with self._open().open(info) as fh:
            data = fh.read(self.limits.max_member_bytes + 1)
        if len(data) > self.limits.max_member_bytes:
            raise PredictionsError(f"zip member {name!r} is larger than max_member_bytes")
        return data

    def close(self) -> None:
        if self._zf is not None:
            self._zf.close()
            self._zf = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_zf"] = None
        return state


class _TarStore(_Store):
    """Plain tar: members read by offset. Compressed tar: spilled once to generated file names."""

    kind = "tar"

    def __init__(self, path: Path, limits: ArchiveLimits) -> None:
        super().__init__(path)
        self.limits = limits
        with open(path, "rb") as fh:
            magic = fh.read(6)
        self.compressed = magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))
        self._spill: str | None = None
        self._where: dict[str, tuple[int, int] | str] = {}  # name -> (offset, size) or spill path
        where = f"tar archive {str(path)!r}"
        archive_size = max(path.stat().st_size, 1)
        if self.compressed:
            self._spill = tempfile.mkdtemp(prefix="dolos-predictions-")
            weakref.finalize(self, shutil.rmtree, self._spill, True)
        try:
            tf = tarfile.open(path, "r:*")
        except tarfile.TarError as exc:
            raise PredictionsError(f"{str(path)!r} is not a readable tar archive: {exc}") from exc
        total = 0
        count = 0
        with tf:
            while True:
                try:
                    member = tf.next()
                except tarfile.TarError as exc:
                    raise PredictionsError(f"{where} is corrupt: {exc}") from exc
                if member is None:
                    break
                count += 1
                name = member.name
                if count > limits.max_members:
                    raise PredictionsError(f"{where} has more than max_members={limits.max_members} members")
                reason = _unsafe_reason(name)
                if reason:
                    raise PredictionsError(f"{where}: member {name!r} {reason}; refusing the archive")
                name = posixpath.normpath(name)
                if member.isdir():
                    continue
                if member.issym() or member.islnk():
                    base = posixpath.dirname(name) if member.issym() else ""
                    target = posixpath.normpath(posixpath.join(base, member.linkname))
                    kind = "symlink" if member.issym() else "hardlink"
                    if member.linkname.startswith("/") or not _inside(target):
                        raise PredictionsError(
                            f"{where}: member {name!r} is a {kind} pointing outside the archive"
                            f" ({member.linkname!r})"
                        )
                    if target not in self._where:
                        raise PredictionsError(f"{where}: {kind} member {name!r} points to missing {target!r}")
                    self._where[name] = self._where[target]
                    continue
                if not member.isreg() or member.issparse():
                    raise PredictionsError(f"{where}: member {name!r} is not a regular file")
                if member.size > limits.max_member_bytes:
                    raise PredictionsError(
                        f"{where}: member {name!r} is {member.size} bytes, more than"
                        f" max_member_bytes={limits.max_member_bytes} (an archive bomb?)"
                    )
                total += member.size
                if total > limits.max_total_bytes:
                    raise PredictionsError(
                        f"{where}: members inflate to more than max_total_bytes="
                        f"{limits.max_total_bytes} by member {name!r} (an archive bomb?)"
                    )
                if self.compressed and total >= limits.ratio_min_bytes and total / archive_size > limits.max_ratio:
                    raise PredictionsError(
                        f"{where}: {archive_size} bytes inflate past {total} bytes by member"
                        f" {name!r}, ratio above max_ratio={limits.max_ratio:g} (an archive bomb?)"
                    )
                if self._spill is not None:
                    fh = tf.extractfile(member)
                    assert fh is not None
                    spilled = os.path.join(self._spill, f"{len(self._where):09d}")
                    with open(spilled, "wb") as out:
                        shutil.copyfileobj(fh, out)
                    self._where[name] = spilled
                else:
                    self._where[name] = (member.offset_data, member.size)
        self.names = sorted(self._where)

    def read(self, name: str) -> bytes:
        where = self._where[name]
        if isinstance(where, str):
            with open(where, "rb") as fh:
                return fh.read()
        offset, size = where
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            raise PredictionsError(f"tar archive {str(self.path)!r}: member {name!r} is truncated")
        return data


def _is_junk(name: str) -> bool:
    """OS litter that zip tools add; never a prediction and never worth an error."""
    parts = name.split("/")
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in _JUNK_NAMES


def _open_store(path: Path, limits: ArchiveLimits) -> _Store:
    if path.is_dir():
        return _FolderStore(path)
    lower = path.name.lower()
    if lower.endswith(".zip"):
        return _ZipStore(path, limits)
    if any(lower.endswith(s) for s in ARCHIVE_SUFFIXES):
        return _TarStore(path, limits)
    raise PredictionsError(
        f"{str(path)!r} is neither a folder nor an archive ({', '.join(ARCHIVE_SUFFIXES)})"
    )


# -- decoding -------------------------------------------------------------------------------------


def _decode_png(data: bytes) -> np.ndarray:
    import cv2

    if not data.startswith(_PNG_MAGIC):
        raise ValueError("not a PNG file (bad signature)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("the PNG cannot be decoded")
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    else:  # pragma: no cover - PNG has no other sample types
        raise ValueError(f"unsupported PNG sample type {img.dtype}")
    if img.ndim == 3:
        if img.shape[2] == 4:
            if not (img[..., 3] == img[..., 3].max()).all() or img[..., 3].max() != int(scale):
                raise ValueError("PNG has a non-opaque alpha channel; save a single-channel map")
            img = img[..., :3]
        if img.shape[2] == 2:
            img = img[..., :1]
        if not all((img[..., 0] == img[..., c]).all() for c in range(1, img.shape[2])):
            raise ValueError(
                f"PNG has {img.shape[2]} different color channels; a map has one (save grayscale)"
            )
        img = img[..., 0]
    return img.astype(np.float32) / np.float32(scale)


def _decode_array(data: bytes, suffix: str) -> np.ndarray:
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read the {suffix} file: {exc}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if not loaded.files:
                raise ValueError("the .npz file holds no arrays")
            arr = loaded["map"] if "map" in loaded.files else loaded[loaded.files[0]]
    else:
        arr = loaded
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"array has dtype {arr.dtype}; save float maps in [0, 1]")
    return arr


def _decode(data: bytes, suffix: str) -> np.ndarray:
    arr = _decode_png(data) if suffix == ".png" else _decode_array(data, suffix)
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
    return arr  # 2-D, finiteness and range are checked by check_output


# -- the localizer --------------------------------------------------------------------------------


class PredictionsLocalizer(Localizer):
    """Look up each sample's precomputed map (and score) by id; no model runs.

    Options (all ``--model-arg``): ``strict_size`` (reject maps whose size differs from the
    image instead of letting the runner resize them; without it a map of another size must
    still have the image's aspect ratio, see :func:`same_aspect`), ``allow_extra`` (predictions
    for ids that are not in the evaluated split are not an error -- e.g. one bundle for all
    splits), ``name``, and the :class:`ArchiveLimits` fields.

    ``device`` is checked like every adapter's (:func:`~dolos_bench.eval.localizers.resolve_device`)
    and then unused: no model runs here.
    """

    name = "predictions"  # type: ignore[misc]
    kind = "predictions"
    _options = ("strict_size", "allow_extra", "name") + tuple(ArchiveLimits.__dataclass_fields__)

    def __init__(self, path: str | Path, device: str = "cpu", **options: Any) -> None:
        _reject_unknown("predictions", options, self._options)
        super().__init__(device=device, **options)
        self.path = Path(path).expanduser().resolve()
        if not self.path.exists():
            raise PredictionsError(f"predictions path {str(path)!r} does not exist")
        stem = self.path.name
        for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        self.name = str(options.get("name") or stem)  # type: ignore[misc]
        self.strict_size = _as_bool("strict_size", options.get("strict_size", False))
        self.allow_extra = _as_bool("allow_extra", options.get("allow_extra", False))
        defaults = ArchiveLimits()
        self.limits = ArchiveLimits(
            max_members=_as_int("max_members", options.get("max_members", defaults.max_members), minimum=1),
            max_member_bytes=_parse_bytes("max_member_bytes", options.get("max_member_bytes", defaults.max_member_bytes)),
            max_total_bytes=_parse_bytes("max_total_bytes", options.get("max_total_bytes", defaults.max_total_bytes)),
            max_ratio=_as_ratio(options.get("max_ratio", defaults.max_ratio)),
            ratio_min_bytes=_parse_bytes("ratio_min_bytes", options.get("ratio_min_bytes", defaults.ratio_min_bytes)),
        )
        self._store = _open_store(self.path, self.limits)
        self._files: dict[str, tuple[str, str]] = {}  # id -> (store name, suffix)
        self._others: list[str] = [d + "/" for d in self._store.dirs if not _is_junk(d)]
        self._scores: dict[str, float] | None = None
        self._scores_name: str | None = None
        self._sha256: str | None = None
        self._index(self._store.names)

    # -- layout ---------------------------------------------------------------------------------
    def _index(self, names: Iterable[str]) -> None:
        names = [n for n in names if not _is_junk(n)]
        # Archives made with `zip -r preds.zip preds/` wrap everything in one folder: look inside.
        prefix = ""
        if self._store.kind != "folder" and names and all("/" in n for n in names):
            heads = {n.split("/", 1)[0] for n in names}
            if len(heads) == 1:
                prefix = heads.pop() + "/"
        dupes: list[str] = []
        for name in names:
            flat = name[len(prefix):]
            if "/" in flat:
                self._others.append(flat)
                continue
            if flat == SCORES_FILE:
                self._scores_name = name
                continue
            suffix = next((s for s in PREDICTION_SUFFIXES if flat.lower().endswith(s)), None)
            if suffix is None or len(flat) == len(suffix):
                self._others.append(flat)
                continue
            sample_id = flat[: -len(suffix)]
            if sample_id in self._files:
                dupes.append(f"{sample_id!r} ({self._files[sample_id][0]} and {name})")
            self._files[sample_id] = (name, suffix)
        if dupes:
            raise PredictionsError(
                f"predictions {str(self.path)!r}: more than one prediction for {len(dupes)} ids:"
                f" {', '.join(dupes[:10])}{' ...' if len(dupes) > 10 else ''}"
            )
        if self._scores_name is not None:
            self._scores = self._read_scores(self._store.read(self._scores_name))

    def _read_scores(self, data: bytes) -> dict[str, float]:
        where = f"predictions {str(self.path)!r}: {SCORES_FILE}"
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PredictionsError(f"{where} is not UTF-8 text: {exc}") from None
        reader = csv.reader(io.StringIO(text))
        header = [h.strip().lower() for h in next(reader, [])]
        if "id" not in header or "score" not in header:
            raise PredictionsError(f"{where} needs a header 'id,score', found {header}")
        id_col, score_col = header.index("id"), header.index("score")
        scores: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) <= max(id_col, score_col):
                raise PredictionsError(f"{where} line {line}: expected id,score, found {row}")
            sample_id, raw = row[id_col].strip(), row[score_col].strip()
            try:
                score = float(raw)
            except ValueError:
                raise PredictionsError(f"{where} line {line}: score {raw!r} of id {sample_id!r} is not a number") from None
            if not math.isfinite(score) or not 0.0 <= score <= 1.0:
                raise PredictionsError(
                    f"{where} line {line}: score {raw} of id {sample_id!r} is not a finite number in [0, 1]"
                )
            if sample_id in scores:
                raise PredictionsError(f"{where} line {line}: id {sample_id!r} appears twice")
            scores[sample_id] = score
        return scores

    @property
    def ids(self) -> list[str]:
        """Sample ids that have a map, sorted."""
        return sorted(self._files)

    def validate(
        self,
        expected_ids: Iterable[str],
        *,
        deep: bool = False,
        split: str | None = None,
        splits: SplitIds | Callable[[], SplitIds] | None = None,
    ) -> None:
        """Raise one :class:`PredictionsError` listing every problem of the bundle against the dataset.

        Missing ids, extra ids (unless ``allow_extra``), files that are not predictions, and ids
        without a score when ``scores.csv`` exists. ``deep=True`` also decodes and checks every
        expected map, which reads the whole bundle, and names every bad file, not just the first.

        ``split`` is the name of the split scored and ``splits`` its dataset's ``{split: ids}``
        (or a function returning it, called only when some ids are extra, since reading every
        split's ids costs a pass over the shards' id columns). With them, an extra id that
        belongs to another split is reported as such (``ids ... belong to split 'train', not
        'test'``), and one of the scored split itself that ``--limit`` left out is no error.
        """
        expected = list(dict.fromkeys(expected_ids))
        wanted = set(expected)
        missing = [i for i in expected if i not in self._files]
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} ids: {_listing(missing)}")
        resolved: list[SplitIds] = []

        def known_splits() -> SplitIds:
            if not resolved:
                resolved.append((splits() if callable(splits) else splits) or {})
            return resolved[0]

        if not self.allow_extra:
            problems += self._extra_problems(sorted(set(self._files) - wanted), "", split, known_splits)
        if self._others:
            problems.append(
                f"{len(self._others)} files that are not predictions"
                f" (expected <id>{'|'.join(PREDICTION_SUFFIXES)} and an optional {SCORES_FILE}):"
                f" {_listing(sorted(self._others))}"
            )
        if self._scores is not None:
            unscored = [i for i in expected if i not in self._scores]
            if unscored:
                problems.append(f"{len(unscored)} ids without a score in {SCORES_FILE}: {_listing(unscored)}")
            if not self.allow_extra:
                problems += self._extra_problems(
                    sorted(set(self._scores) - wanted), f" in {SCORES_FILE}", split, known_splits
                )
        if deep:
            _, bad = self._read_checked([i for i in expected if i in self._files], None)
            if bad:
                problems.append(f"{len(bad)} bad prediction files:{_lines(bad)}")
        if problems:
            raise PredictionsError(
                f"predictions {str(self.path)!r} do not match the dataset ({len(expected)} ids):\n  "
                + "\n  ".join(problems)
            )

    def _extra_problems(
        self, extra: list[str], where: str, split: str | None, known_splits: Callable[[], SplitIds]
    ) -> list[str]:
        """Problem lines for ids not among the expected ones, by the split they belong to."""
        if not extra:
            return []
        grouped, unknown = _by_split(extra, known_splits() if split is not None else {})
        lines = []
        for name in sorted(grouped):
            if name == split:
                continue  # the scored split's own ids that --limit left out: not an error
            ids = grouped[name]
            lines.append(
                f"{len(ids)} ids{where} belong to split {name!r}, not {split!r}: {_listing(ids)}"
                f" (score them with --split {name}, or pass --model-arg allow_extra=true for a bundle"
                " that covers several splits)"
            )
        if unknown:
            lines.append(f"{len(unknown)} {'extra ids' if not where else 'ids'}{where} not in the dataset: {_listing(unknown)}")
        return lines

    def _read_checked(
        self, ids: Sequence[str], shapes: Sequence[Sequence[int]] | None
    ) -> tuple[list[np.ndarray], list[str]]:
        """The checked maps of ``ids``, and the problem of every one that is unreadable or invalid.

        Goes on past a bad file so that one error can name them all.
        """
        maps, bad = [], []
        for k, sample_id in enumerate(ids):
            try:
                maps.append(self._check(sample_id, self._load(sample_id), shapes[k] if shapes is not None else None))
            except PredictionsError as exc:
                bad.append(str(exc))
        return maps, bad

    # -- reading --------------------------------------------------------------------------------
    def _load(self, sample_id: str) -> np.ndarray:
        entry = self._files.get(sample_id)
        if entry is None:
            raise PredictionsError(
                f"predictions {self.name!r}: no prediction for id {sample_id!r}"
                f" (expected {sample_id}.png, .npy or .npz in {str(self.path)!r})"
            )
        member, suffix = entry
        try:
            return _decode(self._store.read(member), suffix)
        except ValueError as exc:
            raise PredictionsError(f"predictions {self.name!r}: id {sample_id!r} ({member}): {exc}") from None

    def _check(self, sample_id: str, arr: np.ndarray, shape: Sequence[int] | None) -> np.ndarray:
        try:
            out = check_output(
                LocalizerOutput(maps=[arr]),
                [sample_id],
                [shape if shape is not None else arr.shape],
                name=self.name,
                strict_size=self.strict_size and shape is not None,
            )
        except PredictionsError:
            raise
        except LocalizerError as exc:
            raise PredictionsError(f"{exc} (file {self._files[sample_id][0]})") from None
        if shape is not None and not same_aspect(out.maps[0].shape, shape):
            h, w = out.maps[0].shape
            raise PredictionsError(
                f"predictions {self.name!r}: id {sample_id!r} ({self._files[sample_id][0]}): map is"
                f" {h}x{w} but the image is {shape[0]}x{shape[1]}, another aspect ratio; expected"
                f" {_aspect_shapes((h, w), shape)} [rule: a map has its image's size, or its aspect"
                " ratio at another scale]"
            )
        return out.maps[0]

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        if ids is None:
            raise LocalizerError(
                f"predictions {self.name!r} looks maps up by sample id: call predict(images, ids=...)"
            )
        if len(ids) != len(images):
            raise LocalizerError(f"predictions {self.name!r}: {len(images)} images but {len(ids)} ids")
        maps, bad = self._read_checked(ids, [np.shape(im)[:2] for im in images])
        _raise_all(bad, f"predictions {self.name!r}: {len(bad)} bad prediction files in a batch of {len(ids)}")
        scores = None
        if self._scores is not None:
            absent = [i for i in ids if i not in self._scores]
            if absent:
                raise PredictionsError(f"predictions {self.name!r}: no score in {SCORES_FILE} for ids {_listing(absent)}")
            scores = [self._scores[i] for i in ids]
        return LocalizerOutput(maps=maps, scores=scores)

    def identity(self) -> dict[str, Any]:
        """``weights_sha256`` hashes a canonical listing (name + content hash of each prediction
        file and ``scores.csv``), so the same predictions give the same hash as a folder, zip or
        tar, and stray files do not change it."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            members = sorted(
                [(f"{i}{s}", m) for i, (m, s) in self._files.items()]
                + ([(SCORES_FILE, self._scores_name)] if self._scores_name else [])
            )
            for flat, member in members:
                digest.update(f"{flat}\t{hashlib.sha256(self._store.read(member)).hexdigest()}\n".encode())
            self._sha256 = digest.hexdigest()
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "weights_sha256": self._sha256,
            "options": dict(self.options),
        }

    def close(self) -> None:
        """Release the archive handle (a compressed tar's temporary copy goes with the object)."""
        self._store.close()
