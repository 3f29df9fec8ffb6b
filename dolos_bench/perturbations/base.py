"""The perturbation interface, shared by ``bench build`` (post-processing) and ``bench stress``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..stage import Stage


class Perturbation(Stage, ABC):
    """A post-processing operation applied to the final image (and its mask when geometric).

    Perturbations are shared between ``bench build`` and ``bench stress``; they must be pure
    functions of (image, mask, rng) so that a stress grid is reproducible.
    """

    name: ClassVar[str] = "perturbation"
    geometric: ClassVar[bool] = False

    def identity(self) -> dict[str, Any]:
        """``{"name": ..., **params}``: the JSON form stored with each sample; ``parse_chain`` reads it back.

        The parameters are the fields of :attr:`Config`, in their order, as validated. A
        perturbation without a ``Config`` (an outside plug-in) overrides this method.
        """
        config = type(self).Config
        if config is None:
            return {"name": self.name}
        return {"name": self.name, **{field: getattr(self, field) for field in config.model_fields}}

    @abstractmethod
    def apply(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The perturbed image and the mask moved with it (unchanged unless geometric)."""
