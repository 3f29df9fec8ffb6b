"""The dataset schema and the conventions that must not drift.

* Masks are one channel, 255 = forged, 0 = pristine; real images carry an all-zero mask.
  (Dolos's released data uses 255 = real; :mod:`dolos_bench.data.dolos_layout` converts at the
  border and nowhere else.)
* Labels are a ClassLabel with names ``["real", "fake"]`` (0 = real, 1 = fake).
* ``generator_config``, ``parts`` and ``perturbations`` are JSON strings / lists so that a row
  carries its full provenance and the schema stays flat enough for any parquet reader.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets

MASK_FORGED = 255
MASK_PRISTINE = 0
LABEL_NAMES = ["real", "fake"]
REAL, FAKE = 0, 1
SPLITS = ("train", "validation", "test")

COLUMNS = [
    "id", "image", "mask", "label", "source", "source_id", "generator", "generator_config",
    "masker", "parts", "perturbations", "seed", "split", "area_ratio", "change_ssim", "change_ciede2000",
]
# How much a fake changed (see data/magnitude.py); null for reals. Datasets made before these
# columns existed lack them: readers take a missing column as all null.
MAGNITUDE_COLUMNS = ("area_ratio", "change_ssim", "change_ciede2000")


@lru_cache(maxsize=1)
def features() -> "datasets.Features":
    """The `datasets` Features of a shard (built lazily: build workers never import `datasets`)."""
    import datasets

    feats = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "label": datasets.ClassLabel(names=LABEL_NAMES),
            "source": datasets.Value("string"),
            "source_id": datasets.Value("string"),
            "generator": datasets.Value("string"),  # "real" for pass-through reals
            "generator_config": datasets.Value("string"),  # JSON
            "masker": datasets.Value("string"),  # "" for reals
            "parts": datasets.Sequence(datasets.Value("string")),
            "perturbations": datasets.Value("string"),  # JSON list of {"name": ..., params}
            "seed": datasets.Value("int64"),
            "split": datasets.Value("string"),
            "area_ratio": datasets.Value("float64"),  # forged share of the mask; null for reals
            "change_ssim": datasets.Value("float64"),  # mean SSIM inside the mask vs the original
            "change_ciede2000": datasets.Value("float64"),  # mean CIEDE2000 inside the mask vs the original
        }
    )
    assert list(feats) == COLUMNS
    return feats
