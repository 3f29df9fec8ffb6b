"""Training rows read through the verified reader, and a sample order that depends only on the seed.

Rows come from :func:`dolos_bench.data.reader.open_split`, the reader ``bench eval`` uses, so a
build's shards are checked against its manifest before a single step is taken. The encoded image
and mask bytes of the split are held in memory and decoded per sample (a PNG is 5-10x smaller than
its pixels), which keeps a CelebA-HQ-sized split in a few GB.

Order: the training stream is an endless sequence of passes over the rows, each pass a permutation
drawn from ``rng_for(seed, "train-order", pass)``; step ``s`` takes stream positions
``[s * batch, (s + 1) * batch)``, and each sample's augmentation draws from
``rng_for(seed, "augment", position)`` (the flip), ``"augment-geometric"`` (``data.geometric``)
and ``"augment-ops"`` (``data.augment``). So the batch of every step is a pure function of
``(seed, step)``: resuming at step ``k`` sees exactly the batches an uninterrupted run sees, with
any number of DataLoader workers or processes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from PIL import Image

from ..data.images import load_rgb
from ..data.reader import Split, open_split
from ..errors import UserError
from ..seeding import rng_for
from .geometry import apply_geometric
from .recipe import is_integer_range

if TYPE_CHECKING:
    import torch

__all__ = ["IndexedSplit", "TrainDataError", "TrainRows", "augment_image", "load_rows", "decode_mask", "StreamDataset",
           "stream_positions"]

_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


class TrainDataError(UserError, ValueError):
    """The dataset cannot train this recipe (no such split, no masks for full supervision, no rows)."""


def decode_mask(value: Any) -> np.ndarray:
    """A mask cell (bytes dict or array) as a bool ``(H, W)`` array, True = forged (255 or 1)."""
    if isinstance(value, dict):
        array = np.asarray(Image.open(io.BytesIO(value["bytes"])))
    else:
        array = np.asarray(value)
    if array.ndim == 3:
        return (array > 0).any(axis=-1)
    return array > 0


def decode_image(value: Any) -> np.ndarray:
    """An image cell as uint8 RGB ``(H, W, 3)``, through the toolkit's robust decoder."""
    if isinstance(value, dict):
        return load_rgb(value["bytes"]).array
    return load_rgb(Image.fromarray(np.asarray(value))).array


@dataclass
class TrainRows:
    """The encoded cells of the rows that train (or validate); ``masks`` is None without a mask column."""

    ids: list[str]
    labels: np.ndarray
    images: list[Any]
    masks: list[Any] | None
    split: Split
    indices: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def kept_split(self) -> Split:
        """The split restricted to exactly these rows, in order: what validation scores."""
        n = len(self.indices)
        if self.indices == tuple(range(n)):
            return self.split if n == len(self.split) else self.split.select(0, n)
        return IndexedSplit(self.split, self.indices)


class IndexedSplit:
    """Some rows of a split, by index (a generator or label filter): the reader's Split interface."""

    def __init__(self, base: Split, indices: Sequence[int]) -> None:
        self.base, self.indices = base, tuple(int(i) for i in indices)
        self.origin = base.origin

    def __len__(self) -> int:
        return len(self.indices)

    def column(self, name: str) -> list[Any]:
        values = self.base.column(name)
        return [values[i] for i in self.indices]

    def select(self, start: int, stop: int) -> "IndexedSplit":
        return IndexedSplit(self.base, self.indices[start:stop])

    def batches(self, batch_size: int) -> Iterator[dict[str, list[Any]]]:
        wanted, position, pending = set(self.indices), 0, {}
        for batch in self.base.batches(batch_size):
            n = len(next(iter(batch.values())))
            keep = [k for k in range(n) if position + k in wanted]
            position += n
            for key, values in batch.items():
                pending.setdefault(key, []).extend(values[k] for k in keep)
            while pending and len(next(iter(pending.values()))) >= batch_size:
                yield {k: v[:batch_size] for k, v in pending.items()}
                pending = {k: v[batch_size:] for k, v in pending.items()}
        if pending and next(iter(pending.values())):
            yield pending


def load_rows(data: str, split_name: str, *, include: str = "all", limit: int | None = None,
              need_masks: bool = False, generators: Sequence[str] | None = None) -> TrainRows:
    """The rows of ``split_name`` that ``include`` keeps (first ``limit`` of them), read and verified.

    ``need_masks`` (full supervision) refuses a dataset without a mask column, and one whose fakes
    carry no forged pixel at all (fully generated fakes have no region to learn), in one line each.
    """
    split = open_split(data, split_name)
    columns = set(_column_names(split))
    for needed in ("image", "label", "id"):
        if needed not in columns:
            raise TrainDataError(f"{data}: split {split_name!r} has no {needed!r} column; it has {', '.join(sorted(columns))}")
    if need_masks and "mask" not in columns:
        raise TrainDataError(
            f"{data}: split {split_name!r} has no masks, which full supervision needs;"
            " use supervision: weak (image labels only) or a dataset with a mask column")
    labels = np.asarray(split.column("label"), dtype=np.int64)
    keep = np.arange(len(labels))
    if include == "fakes":
        keep = keep[labels == 1]
    elif include == "reals":
        keep = keep[labels == 0]
    if generators is not None:  # fakes of the listed generators only; reals stay
        if "generator" not in columns:
            raise TrainDataError(f"{data}: split {split_name!r} has no 'generator' column to select generators by")
        wanted, made_by = set(generators), split.column("generator")
        keep = keep[np.asarray([labels[i] == 0 or made_by[i] in wanted for i in keep], dtype=bool)]
    if limit is not None:
        keep = keep[:limit]
    if len(keep) == 0:
        raise TrainDataError(f"{data}: split {split_name!r} has no rows to train on (include: {include})")
    ids = split.column("id")
    images = split.column("image")
    masks = split.column("mask") if "mask" in columns else None
    rows = TrainRows(
        ids=[str(ids[i]) for i in keep], labels=labels[keep], images=[images[i] for i in keep],
        masks=None if masks is None else [masks[i] for i in keep], split=split,
        indices=tuple(int(i) for i in keep))
    if need_masks:
        assert rows.masks is not None
        fakes = [m for m, y in zip(rows.masks, rows.labels) if y == 1]
        if fakes and not any(decode_mask(m).any() for m in fakes):
            raise TrainDataError(
                f"{data}: the fakes of split {split_name!r} have empty masks (fully generated images?);"
                " full supervision needs forged regions: use supervision: weak")
    return rows


def _column_names(split: Split) -> list[str]:
    """Column names of a split without reading its rows."""
    files = getattr(split, "files", None)
    if files:
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(files[0]).schema_arrow.names)
    ds = getattr(split, "ds", None)
    return list(ds.column_names) if ds is not None else []


def stream_positions(step: int, batch_size: int, rank: int = 0, world: int = 1) -> range:
    """The stream positions that process ``rank`` of ``world`` takes at ``step`` (a contiguous slice)."""
    per = batch_size // world
    start = step * batch_size + rank * per
    return range(start, start + per)


class StreamDataset:
    """Map-style dataset over stream positions: ``ds[p]`` is the sample at position ``p`` of the stream.

    Returns ``(image (3, S, S) float normalised, label, mask (1, S, S) float or empty, id)``.
    ``train=False`` gives position ``p`` = row ``p`` with no augmentation (validation loss).
    """

    def __init__(self, rows: TrainRows, *, size: int, mean: Sequence[float], std: Sequence[float],
                 seed: int, resize: str = "bilinear", hflip: float = 0.0, train: bool = True,
                 augment: Sequence[Any] = (), geometric: Sequence[Any] = ()) -> None:
        self.rows, self.size, self.seed, self.train = rows, int(size), int(seed), train
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)
        self.filter = _FILTERS[resize]
        self.hflip = float(hflip)
        self.augment = list(augment)
        self.geometric = list(geometric)

    def __len__(self) -> int:
        return len(self.rows)

    @lru_cache(maxsize=4)
    def _permutation(self, pass_index: int) -> np.ndarray:
        return rng_for(self.seed, "train-order", pass_index).permutation(len(self.rows))

    def row_at(self, position: int) -> int:
        """Which row the stream position shows."""
        if not self.train:
            return position
        n = len(self.rows)
        return int(self._permutation(position // n)[position % n])

    def __getitem__(self, position: int) -> tuple[Any, ...]:
        import torch

        row = self.row_at(int(position))
        image = decode_image(self.rows.images[row])
        image = np.asarray(Image.fromarray(image).resize((self.size, self.size), self.filter))
        mask = None
        if self.rows.masks is not None:
            forged = decode_mask(self.rows.masks[row]).astype(np.uint8) * 255
            mask = np.asarray(Image.fromarray(forged).resize((self.size, self.size), Image.Resampling.NEAREST)) > 127
        if self.train and self.hflip > 0 and rng_for(self.seed, "augment", int(position)).random() < self.hflip:
            image = image[:, ::-1]
            mask = None if mask is None else mask[:, ::-1]
        if self.train and self.geometric:
            image, mask = apply_geometric(image, mask, self.geometric, rng_for(self.seed, "augment-geometric", int(position)))
        if self.train and self.augment:
            image = augment_image(np.ascontiguousarray(image), self.augment, rng_for(self.seed, "augment-ops", int(position)))
        pixels = (np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0) - self.mean) / self.std
        mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None] if mask is not None else torch.zeros(0)
        return torch.from_numpy(pixels), int(self.rows.labels[row]), mask_t, self.rows.ids[row]


def augment_image(image: np.ndarray, steps: Sequence[Any], rng: np.random.Generator) -> np.ndarray:
    """``image`` through each :class:`~dolos_bench.train.recipe.AugmentStep` that ``rng`` picks.

    Every draw (whether a step runs, its parameters, its own randomness) comes from ``rng``, which
    the caller derives from ``(seed, stream position)``: the same position gets the same pixels in
    any run, resumed or not, with any number of DataLoader workers.
    """
    from ..perturbations.ops import parse_perturbation

    for step in steps:
        if rng.random() >= step.p:
            continue
        params = {}
        for key, value in step.params.items():
            if isinstance(value, (list, tuple)):
                lo, hi = value
                params[key] = int(rng.integers(lo, hi + 1)) if is_integer_range(value) else float(rng.uniform(lo, hi))
            else:
                params[key] = value
        image, _ = parse_perturbation({"name": step.op, **params}).apply(image, None, rng)
    return image


def collate(items: list[tuple[Any, ...]]) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor | None", list[str]]:
    """Stack a list of samples; masks become None when the rows have none."""
    import torch

    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([it[1] for it in items], dtype=torch.long)
    masks = None if items[0][2].numel() == 0 else torch.stack([it[2] for it in items])
    return images, labels, masks, [it[3] for it in items]
