"""The stage interfaces of a build: maskers and generators (perturbations: :mod:`dolos_bench.perturbations`).

Images travel between stages as ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order; masks as
``uint8`` arrays of shape ``(H, W)`` with 255 = forged (to be inpainted) and 0 = pristine, the
convention of the whole project (see ``dolos_bench.data.schema``). Every stage gets its
randomness as an explicit ``numpy.random.Generator`` derived from (recipe seed, sample id), so
that no stage ever reads global random state.

Both are :class:`dolos_bench.stage.Stage`: a ``Config`` recipes validate without building them,
``requires``/``extra``/``licence_note`` declarations, ``setup(device)`` for heavy loading once per
worker and ``identity()``, the JSON written into every shard row (``generator_config``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping

import numpy as np

from ..perturbations.base import Perturbation
from ..stage import Stage

__all__ = ["Generator", "MaskResult", "Masker", "Perturbation", "SkipSample"]


class SkipSample(Exception):
    """Raised by a stage when a sample cannot be made (no face found, mask out of bounds...).

    The pipeline records the message as the skip reason in the manifest and goes on.
    """


@dataclass
class MaskResult:
    """A mask chosen by a masker, with the names of the parts it covers (for breakdowns)."""

    mask: np.ndarray  # (H, W) uint8, 255 = region to inpaint
    parts: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # provenance: dilation, counts, ...


class Masker(Stage, ABC):
    """Chooses the region of a real image that a generator will inpaint."""

    name: ClassVar[str] = "masker"

    @classmethod
    def label(cls) -> str:
        return cls.__name__  # "StrokeMasker: strokes must be ..."

    def identity(self) -> dict[str, Any]:
        """Parameters that define this masker, stored with every sample it produces."""
        return {}

    @abstractmethod
    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> MaskResult:
        """The mask for ``image``; raises :class:`SkipSample` when there is none to choose."""


class Generator(Stage, ABC):
    """Inpaints the masked region of an image. Pixels outside the mask should stay untouched.

    Learned generators override :meth:`inpaint_batch` to run a batch on an accelerator; the
    default loops over :meth:`inpaint`.
    """

    name: ClassVar[str] = "generator"
    preserves_unmasked: ClassVar[bool] = True
    """Every pixel outside the mask comes back bit for bit (tests/test_contracts.py checks it).

    A generator that re-encodes the whole image (a latent-diffusion decode without pasting back)
    sets this to False, so that the claim a localizer's score rests on is stated, not assumed."""
    max_batch: ClassVar[int | None] = 1
    """The most images one :meth:`inpaint_batch` call may take (None: any number). The build's
    inpaint stage sends batches up to this size; output ``b`` must depend only on image ``b``,
    mask ``b`` and rng ``b``, never on the batch it came in."""
    default_batch: ClassVar[int | None] = None
    """The batch size the build uses when the recipe's ``batch_size`` is unset (None: ``max_batch``);
    a learned generator sets what fits a typical GPU at its model's size."""
    full_synthesis: ClassVar[bool] = False
    """It makes whole images from noise (Dolos setup A), ignoring the real image it is given: the
    build then gives the sample an all-forged mask without asking a masker, and names the model
    (``identity()["model"]``) as the sample's ``source``. Such a generator sets
    ``preserves_unmasked = False``."""

    def identity(self) -> dict[str, Any]:
        """Parameters (and weight identities) that define this generator, for provenance."""
        return {}

    @classmethod
    def unmasked_note(cls, params: Mapping[str, Any]) -> str | None:
        """What the dataset card says about the pixels outside the mask for this generator built
        with the recipe's ``params``, when they are not the real image's (None: they are).

        Read without building the generator. The default follows :attr:`preserves_unmasked` (a
        full-synthesis generator has no pixels outside its all-forged mask); a generator whose
        parameters decide it (a paste-back option, a ``full`` variant) overrides this and says
        what happened to them (e.g. "went through the autoencoder")."""
        if cls.preserves_unmasked or cls.full_synthesis:
            return None
        return "pixels outside the mask are not the source image's: the generator re-made the whole image"

    @abstractmethod
    def inpaint(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The image with the masked region replaced; same shape and dtype."""

    def inpaint_batch(
        self, images: list[np.ndarray], masks: list[np.ndarray], rngs: list[np.random.Generator]
    ) -> list[np.ndarray]:
        return [self.inpaint(i, m, r) for i, m, r in zip(images, masks, rngs)]


class LearnedGenerator(Generator):
    """A generator backed by networks: loaded once per worker and device, run a batch at a time.

    The shape every learned generator shares, kept here once: :meth:`setup` calls :meth:`load`
    only when the device changes (a worker may set a stage up twice; loading weights twice
    would cost seconds and memory), :meth:`ensure_loaded` lets a direct call -- a test, a
    notebook, a :meth:`inpaint` outside a build -- load on the CPU first, and :meth:`inpaint` is
    a batch of one, so the single-image and batched paths can never disagree.
    Subclasses implement :meth:`load` and :meth:`inpaint_batch`.
    """

    loaded_on: str | None = None
    """The device the networks were loaded for (None: not loaded yet)."""

    def setup(self, device: str) -> None:
        if self.loaded_on == device:
            return
        self.load(device)
        self.loaded_on = device

    @abstractmethod
    def load(self, device: str) -> None:
        """Build or read the networks for ``device``; a missing or wrong model is one ``WeightsError`` line."""

    def ensure_loaded(self) -> None:
        """Load on the CPU unless :meth:`setup` already loaded for some device."""
        self.setup(self.loaded_on or "cpu")

    def inpaint(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.inpaint_batch([image], [mask], [rng])[0]

    @abstractmethod
    def inpaint_batch(
        self, images: list[np.ndarray], masks: list[np.ndarray], rngs: list[np.random.Generator]
    ) -> list[np.ndarray]:
        """One network run over the batch; output ``b`` depends only on image, mask and rng ``b``."""
