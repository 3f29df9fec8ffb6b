"""Robust decoding of real-world image files into RGB arrays, and the shared preprocessing.

Face datasets scraped from the web contain everything: CMYK JPEGs, 16-bit PNGs, palette GIFs,
RGBA with transparency, grayscale scans, EXIF-rotated phone photos, truncated downloads and
zero-byte files. A build must never die on one of them: each is either converted (and the
conversion noted, so the manifest says what happened to which file) or refused with a reason
(:class:`ImageLoadError`), which the pipeline records as a skip.

Reals and fakes go through exactly the same :func:`preprocess` (the fakes are made from the
preprocessed real), so resizing history cannot give the label away.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Decompression-bomb guard: PIL warns at 89 Mpx and raises at twice that; we refuse above it.
MAX_PIXELS = 89_478_485


class ImageLoadError(ValueError):
    """An image that cannot be used; the message is the skip reason written to the manifest."""


@dataclass
class LoadedImage:
    """An RGB ``uint8`` array and the notes of every conversion applied to get it."""

    array: np.ndarray
    notes: list[str] = field(default_factory=list)


def _open(data: bytes | str | Path | Image.Image) -> Image.Image:
    if isinstance(data, Image.Image):
        return data
    if isinstance(data, (str, Path)):
        path = Path(data)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ImageLoadError(f"cannot read file: {exc.strerror or exc}") from exc
        if size == 0:
            raise ImageLoadError("empty file (0 bytes)")
        data = path.read_bytes()
    if len(data) == 0:
        raise ImageLoadError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageLoadError("not a readable image (unidentified format)") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder error is a skip reason, not a crash
        raise ImageLoadError(f"not a readable image ({type(exc).__name__}: {exc})") from exc
    return image


def load_rgb(data: bytes | str | Path | Image.Image) -> LoadedImage:
    """Decode to an RGB ``uint8`` array, converting odd modes and applying EXIF orientation."""
    image = _open(data)
    notes: list[str] = []
    if image.width * image.height > MAX_PIXELS:
        raise ImageLoadError(f"image too large ({image.width}x{image.height} px)")
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data
        raise ImageLoadError(f"corrupt or truncated image data ({exc})") from exc

    if getattr(image, "n_frames", 1) > 1:
        notes.append(f"multi-frame image: first of {image.n_frames} frames used")
    orientation = image.getexif().get(0x0112, 1)
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        notes.append(f"EXIF orientation {orientation} applied")

    mode = image.mode
    if mode == "RGB":
        rgb = image
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "F":
            top = 1.0 if arr.max() <= 1.0 else 255.0
        arr8 = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        rgb = Image.fromarray(np.stack([arr8] * 3, axis=-1))
        notes.append(f"{mode} grayscale scaled to 8-bit RGB")
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
        if alpha.min() < 255:
            notes.append(f"{mode} with transparency composited on white")
        else:
            notes.append(f"{mode} converted to RGB (alpha was opaque)")
    elif mode == "CMYK":
        rgb = image.convert("RGB")
        notes.append("CMYK converted to RGB")
    elif mode in ("L", "1"):
        rgb = image.convert("RGB")
        notes.append("grayscale converted to RGB")
    else:
        rgb = image.convert("RGB")
        notes.append(f"{mode} converted to RGB")
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageLoadError(f"unexpected decoded shape {array.shape}")
    return LoadedImage(np.ascontiguousarray(array), notes)


_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}


def size_notes(shape: tuple[int, ...], resolution: int, *, upscale: Literal["skip", "allow"] = "skip") -> list[str]:
    """The note of an image smaller than ``resolution`` (upscaled), or its refusal (skipped).

    Split out of :func:`preprocess` so that a build can refuse a small file while planning,
    from the decoded shape alone, without resizing it.
    """
    h, w = shape[:2]
    if min(h, w) >= resolution:
        return []
    if upscale == "skip":
        raise ImageLoadError(
            f"smaller than the target size ({w}x{h} < {resolution}x{resolution});"
            " set preprocess.upscale: allow to upscale instead"
        )
    return [f"upscaled from {w}x{h}"]


def pixel_digest(array: np.ndarray) -> str:
    """sha256 of an image's content: its shape, dtype and decoded pixels, not its file bytes.

    Two files with this digest show the same picture whatever their names or (lossless)
    formats; a build uses it to keep one image out of two splits. The input is the array that
    :func:`load_rgb` returns (RGB ``uint8`` after conversions and EXIF orientation), so a PNG
    and a BMP of the same pixels match, and a JPEG re-encoding of them (different pixels) does not.
    """
    digest = hashlib.sha256(f"{array.shape}|{array.dtype.str}|RGB|".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def preprocess(
    loaded: LoadedImage,
    resolution: int,
    *,
    crop: Literal["center", "none"] = "center",
    upscale: Literal["skip", "allow"] = "skip",
    interpolation: str = "lanczos",
) -> LoadedImage:
    """Square-crop and resize to ``resolution``; the single path every real and fake takes.

    Images smaller than the target are skipped by default: an upscaled real looks blurrier
    than a native one, and a detector could learn that instead of the forgery.
    """
    arr = loaded.array
    notes = list(loaded.notes) + size_notes(arr.shape, resolution, upscale=upscale)
    h, w = arr.shape[:2]
    if crop == "center" and h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        arr = arr[top : top + side, left : left + side]
    if arr.shape[0] != resolution or arr.shape[1] != resolution:
        image = Image.fromarray(arr).resize(
            (resolution, resolution), _INTERPOLATIONS[interpolation], reducing_gap=None
        )
        arr = np.asarray(image, dtype=np.uint8)
    return LoadedImage(np.ascontiguousarray(arr), notes)


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an RGB or single-channel ``uint8`` array; deterministic for fixed settings."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))
