"""A synthetic forgery task for over-fitting localizers: noisy regions on smooth textures.

Each base image (a smooth texture) is a real -- ``reals`` identical copies of it -- and has four
fakes that carry strong pixel noise (+-40) in a region: the top, bottom, left or right half
(``halves``), or a disc of radius a quarter of the side around one of four interior centres
(``discs``). Every fake's base is also a real, so an image label can only be explained by the
noisy region: weak supervision has something to localize. ``import_synthetic`` writes it in the
Dolos layout and imports it with ``bench import``, so training and scoring read it through the
verified reader; its test split holds the training images (an over-fit check).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from dolos_bench.cli import main
from helpers import textured_image

__all__ = ["DISC_CENTRES", "DISC_RADIUS", "disc", "halves", "import_synthetic", "synthetic"]


def halves(index: int, size: int = 64) -> np.ndarray:
    """The top, bottom, left or right half (``index`` 0-3) of a ``size`` x ``size`` image."""
    mask = np.zeros((size, size), bool)
    half = size // 2
    [mask[:half], mask[half:], mask[:, :half], mask[:, half:]][index][...] = True
    return mask


DISC_CENTRES = ((0.5, 0.5), (0.42, 0.4), (0.58, 0.6), (0.42, 0.6))  # (y, x) as fractions of the side
DISC_RADIUS = 0.25


def disc(index: int, size: int) -> np.ndarray:
    """A disc of radius ``DISC_RADIUS * size`` around the ``index``-th of four interior centres."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = DISC_CENTRES[index]
    return (yy - cy * size) ** 2 + (xx - cx * size) ** 2 <= (DISC_RADIUS * size) ** 2


def synthetic(bases: int = 3, size: int = 64, shape: str = "halves", reals: int = 1
              ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """(images, masks, labels): each base as ``reals`` identical reals, then its four fakes (noisy halves, or discs)."""
    rng = np.random.default_rng(0)
    images, masks, labels = [], [], []
    for b in range(bases):
        base = textured_image(b, (size, size)).astype(np.int16)
        for _ in range(reals):
            images.append(base.astype(np.uint8))
            masks.append(np.zeros((size, size), bool))
            labels.append(0)
        for q in range(4):
            mask = halves(q, size) if shape == "halves" else disc(q, size)
            noise = rng.integers(-40, 41, (size, size, 3)) * mask[..., None]
            images.append(np.clip(base + noise, 0, 255).astype(np.uint8))
            masks.append(mask)
            labels.append(1)
    return images, masks, labels


def import_synthetic(root: Path, size: int, bases: int = 3, shape: str = "halves", reals: int = 1) -> Path:
    """The synthetic task as a verified dataset (a Dolos layout through ``bench import``); test = train images."""
    layout = root / "layout"
    images, masks, labels = synthetic(bases=bases, size=size, shape=shape, reals=reals)
    for split in ("train", "test"):
        for i, (image, mask, label) in enumerate(zip(images, masks, labels)):
            key = f"{split}-{i:02d}.png"
            if label == 0:
                folder = layout / "real" / split
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(folder / key)
                continue
            for kind, array in (("images", image), ("masks", np.where(mask, 0, 255).astype(np.uint8))):
                folder = layout / "fake" / "noise" / kind / split
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(folder / key)
    out = root / "ds"
    result = CliRunner().invoke(main, ["import", str(layout), "--format", "dolos", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out
