"""The perturbation interface, shared by ``bench build`` (post-processing) and ``bench stress``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np


class Perturbation(ABC):
    """A post-processing operation applied to the final image (and its mask when geometric).

    Perturbations are shared between ``bench build`` and ``bench stress``; they must be pure
    functions of (image, mask, rng) so that a stress grid is reproducible.
    """

    name: ClassVar[str] = "perturbation"
    geometric: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        return {}

    def spec(self) -> dict[str, Any]:
        """``{"name": ..., **params}``: the JSON form stored with each sample."""
        return {"name": self.name, **self.params()}

    @abstractmethod
    def apply(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The perturbed image and the mask moved with it (unchanged unless geometric)."""
