"""The localizer protocol: what a model must offer to be scored by ``bench eval``.

A localizer receives a batch of RGB ``uint8`` images ``(H, W, 3)`` and returns one score map per
image -- ``float32`` in [0, 1], higher = more likely forged, any resolution -- and optionally an
image-level score in [0, 1]. No sigmoid is applied for it: a model that outputs logits converts
them itself. The eval runner resizes maps to the mask resolution as the protocol says.

A localizer declares the square ``input_size`` it wants (``None`` = native resolution; the runner
resizes images before calling it) and its ``mean``/``std`` normalisation, which
:meth:`Localizer.to_tensor` applies for torch models.

How ``bench eval`` builds one -- ``LocalizerClass(device=..., **options)``, all keywords:

* ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` from ``--device``, already checked
  by :func:`dolos_bench.eval.localizers.resolve_device` (a GPU that is not visible never reaches
  the class) and lower-cased. A localizer that can only use some devices lists them in
  :attr:`Localizer.devices`; any other is refused before the class is built.
* ``weights``: only when the user passes ``--weights PATH``. It arrives as a ``str``, ``~``
  expanded, naming an existing file or folder (a checkpoint, a ``safetensors`` file, a
  diffusers/transformers directory); the toolkit hashes it into the results' ``weights_sha256``
  unless :meth:`Localizer.identity` reports its own. A class that declares no ``weights``
  parameter (and no ``**options``) makes ``--weights`` a clear error instead of being ignored.
* every ``--model-arg key=value``, its value parsed as YAML (``8`` an int, ``true`` a bool).

``bench eval my_pkg.models:MyLocalizer`` imports ``my_pkg.models`` with the current folder first on
the import path, as ``python -m my_pkg.models`` would, so a plug-in needs no install to be scored.

A localizer is a :class:`dolos_bench.stage.Stage` like every other plug-in: it may declare the
optional packages it ``requires`` and the ``extra`` that brings them (``bench ls localizers`` then
says when they are missing), a ``licence_note`` for its weights, and a ``setup(device)`` for
loading that can wait until a worker holds it. All of these are optional: a plug-in written
against the constructor protocol above keeps working unchanged, and :meth:`Localizer.identity`
stays what the results file records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
from ..errors import UserError
from ..stage import Stage


class LocalizerError(UserError, RuntimeError):
    """A localizer broke the protocol (wrong shape, NaN, raised); the message names the sample."""


@dataclass
class LocalizerOutput:
    """One batch of predictions: a map per image and, optionally, an image-level score each."""

    maps: list[np.ndarray]
    scores: list[float] | None = None


class Localizer(Stage, ABC):
    """Base class of every localizer, built-in or outside plug-in.

    A plug-in with weights typically looks like::

        class MyLocalizer(Localizer):
            name = "my-net"
            devices = ("cpu", "cuda")

            def __init__(self, device: str = "cpu", weights: str | None = None, threshold: float = 0.5):
                super().__init__(device=device, weights=weights, threshold=threshold)
                self.net = build_net().to(device)
                if weights is not None:          # from --weights PATH
                    self.net.load_state_dict(load_file(weights))
    """

    name: ClassVar[str] = "localizer"
    input_size: ClassVar[int | None] = None
    mean: ClassVar[tuple[float, float, float] | None] = None
    std: ClassVar[tuple[float, float, float] | None] = None
    devices: ClassVar[tuple[str, ...] | None] = None
    """Device kinds (``"cpu"``, ``"cuda"``, ``"mps"``) the localizer can run on; ``None`` = any.

    Declared so that ``--device cuda`` on a CPU-only method is refused with a message rather
    than silently computed on the CPU."""

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        """``device`` and ``options`` (``weights`` included) as described in the module docstring."""
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
