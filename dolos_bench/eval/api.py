"""The localizer protocol: what a model must offer to be scored by ``bench eval``.

A localizer receives a batch of RGB ``uint8`` images ``(H, W, 3)`` and returns one score map per
image -- ``float32`` in [0, 1], higher = more likely forged, any resolution -- and optionally an
image-level score in [0, 1]. No sigmoid is applied for it: a model that outputs logits converts
them itself. The eval runner resizes maps to the mask resolution as the protocol says.

A localizer declares the square ``input_size`` it wants (``None`` = native resolution; the runner
resizes images before calling it) and its ``mean``/``std`` normalisation, which
:meth:`Localizer.to_tensor` applies for torch models. It is built with a ``device`` string and
any ``--model-arg key=value`` options as keyword arguments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
from ..errors import UserError


class LocalizerError(UserError, RuntimeError):
    """A localizer broke the protocol (wrong shape, NaN, raised); the message names the sample."""


@dataclass
class LocalizerOutput:
    """One batch of predictions: a map per image and, optionally, an image-level score each."""

    maps: list[np.ndarray]
    scores: list[float] | None = None


class Localizer(ABC):
    """Base class of every localizer, built-in or outside plug-in."""

    name: ClassVar[str] = "localizer"
    input_size: ClassVar[int | None] = None
    mean: ClassVar[tuple[float, float, float] | None] = None
    std: ClassVar[tuple[float, float, float] | None] = None

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        self.device = device
        self.options = options

    def identity(self) -> dict[str, Any]:
        """Model id and options for the results file; adapters with weights add their sha256."""
        return {"name": self.name, "options": dict(self.options)}

    @abstractmethod
    def predict(
        self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None
    ) -> LocalizerOutput:
        """Score maps (and optional image scores) for a batch of ``uint8`` RGB images.

        ``ids`` are the dataset's sample ids of ``images``, in the same order. The runner always
        passes them; a model ignores them, but a localizer that looks its answers up (such as
        a folder of precomputed predictions) needs them, so it may raise when they are missing.
        """

    def to_tensor(self, images: Sequence[np.ndarray]):  # -> torch.Tensor
        """Stack, scale to [0, 1], normalise with ``mean``/``std`` and move to ``device``."""
        import torch

        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean).view(1, 3, 1, 1)
            std = torch.tensor(self.std).view(1, 3, 1, 1)
            batch = (batch - mean) / std
        return batch.to(self.device)
