"""What a build will make, decided before any image is touched: samples, shards, file accounting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PlannedSample:
    """Everything a worker needs to make one row, decided before any image is touched."""

    sample_id: str
    split: str
    source_index: int
    source_name: str
    source_id: str
    ref: Any
    path: str  # the source item's label (relative path or id), for skip entries
    generator_index: int | None  # None: the real image itself
    mask_key: str  # keys the masker's randomness (shared across generators if share_mask)
    chain: int | None  # index into recipe.perturbations.chains, or None
    seed: int


@dataclass
class FileAccount:
    """Every source file once: how many were read, and which were skipped, converted or ignored.

    Entries name the file by its path relative to the source root (its id for sources without
    files), so that a user can find and fix it.
    """

    read: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # source, source_id, path, reason, samples
    converted: list[dict[str, Any]] = field(default_factory=list)  # source, source_id, path, notes
    ignored: list[dict[str, Any]] = field(default_factory=list)  # source, path, reason


@dataclass
class Plan:
    samples: list[PlannedSample]
    # Planned samples not made because their file was skipped while planning (one per sample).
    skipped: list[dict[str, Any]] = field(default_factory=list)
    shards: list[tuple[str, str, list[PlannedSample]]] = field(default_factory=list)
    files: FileAccount = field(default_factory=FileAccount)
