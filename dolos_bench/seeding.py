"""Randomness that depends only on (recipe seed, sample id, stage), never on order or workers.

Every random choice of a sample is drawn from a generator made here, so a build split over any
number of processes gives the same bytes, and adding a sample never shifts another one's draws.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *keys: object) -> int:
    """A 64-bit integer seed from the recipe seed and any number of string-able keys."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(int(seed)).encode())
    for key in keys:
        h.update(b"\x1f")
        h.update(str(key).encode())
    return int.from_bytes(h.digest(), "little")


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """A numpy Generator seeded from ``derive_seed(seed, *keys)``."""
    return np.random.Generator(np.random.PCG64(derive_seed(seed, *keys)))
