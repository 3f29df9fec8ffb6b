"""Shared fixtures. Torch runs on one thread: on a busy 2-core machine two threads are 10-20x slower."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

try:  # torch is an optional extra
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass
