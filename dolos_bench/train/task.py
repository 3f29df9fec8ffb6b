"""What a trainable localizer gives the shared trainer: one :class:`TrainTask` per baseline.

The trainer (:mod:`dolos_bench.train.trainer`) owns everything that is the same for every model:
data loading through the verified reader, the accelerate loop, mixed precision, checkpoints,
resume, validation, logs, progress. A baseline owns only what makes it itself: its network, its
loss for each kind of supervision, and how the network's output becomes a score map. So the
Dolos baselines (Patch-Forensics, GradCAM, Attention) and the contrastive ones (FOCAL, MPC) are
five small task classes, not five training scripts.

A task is registered through its localizer: the class registered in the ``dolos_bench.localizers``
entry-point group (exactly as an outside model is) names its task in ``task``; ``bench train
NAME`` trains that task and ``bench eval NAME --weights RUN`` scores the run folder it wrote.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Literal

from pydantic import BaseModel

if TYPE_CHECKING:  # torch is an optional extra; nothing here imports it at import time
    import torch

__all__ = ["Batch", "Supervision", "TrainTask"]

Supervision = Literal["weak", "full"]
"""``weak``: image labels only (real 0 / fake 1); ``full``: the forgery masks as well."""


@dataclass
class Batch:
    """One training or validation batch, already on the trainer's device.

    ``images``: ``(B, 3, S, S)`` float, resized to the task's ``input_size`` and normalised with its
    ``mean``/``std``; ``labels``: ``(B,)`` long, 1 = fake; ``masks``: ``(B, 1, S, S)`` float in
    {0, 1}, 1 = forged (all zero for real images), resized with nearest-neighbour; ``None`` only for
    weak supervision on a dataset without masks. ``ids``: the samples' dataset ids.
    """

    images: "torch.Tensor"
    labels: "torch.Tensor"
    masks: "torch.Tensor | None"
    ids: list[str]


class TrainTask(ABC):
    """A trainable localizer: network, loss per supervision, and score maps from its output.

    ``Config`` is the strict pydantic model of the recipe's ``model:`` section (the task's own
    hyperparameters: which block to cut at, loss weights); it is validated before anything is
    built. Every method must be deterministic given torch's seeded state: the trainer seeds
    torch, numpy and the data order, and resuming must equal an uninterrupted run on CPU.
    """

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    supervisions: ClassVar[tuple[str, ...]] = ("weak", "full")
    input_size: ClassVar[int] = 299
    mean: ClassVar[tuple[float, float, float]] = (0.5, 0.5, 0.5)
    std: ClassVar[tuple[float, float, float]] = (0.5, 0.5, 0.5)

    def __init__(self, config: BaseModel, supervision: Supervision) -> None:
        if supervision not in self.supervisions:
            raise ValueError(f"{self.name}: supervision must be one of {', '.join(self.supervisions)}, got {supervision!r}")
        self.config, self.supervision = config, supervision

    @abstractmethod
    def build_model(self) -> "torch.nn.Module":
        """A fresh network (random init, or timm's pretrained backbone when the config asks)."""

    @abstractmethod
    def loss(self, model: "torch.nn.Module", batch: Batch) -> tuple["torch.Tensor", dict[str, float]]:
        """The scalar training loss for ``batch`` and named parts of it for the logs."""

    @abstractmethod
    def predict(self, model: "torch.nn.Module", images: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """Score maps ``(B, 1, h, w)`` in [0, 1] (any h, w) and image scores ``(B,)`` in [0, 1].

        Called in eval mode under ``torch.no_grad()`` unless the method needs gradients (Grad-CAM
        enables them itself). Higher = more likely forged; no sigmoid is applied afterwards.
        """

    def parameters(self, model: "torch.nn.Module") -> Iterable[Any]:
        """What the optimiser updates (parameter groups allowed); a second stage may freeze a part."""
        return model.parameters()

    def load_pretrained(self, model: "torch.nn.Module", source: str | None) -> str:
        """Optional hook: put pretrained backbone weights into a fresh ``model``; return a one-line note.

        Called by the trainer after :meth:`build_model` when the recipe (or ``--pretrained``) asks
        for pretrained weights: ``source`` is ``None`` for the library's own weights (timm's, where
        they can be reached) or the path of a local file. A task whose weights cannot be had says
        so in the note and leaves the model as built (training then starts from scratch), rather
        than failing: the note goes to the console and the run's ``config.json``.
        :func:`dolos_bench.train.pretrained.load_timm_weights` does this for timm backbones.
        The default: this task has no pretrained weights.
        """
        return f"{self.name} has no pretrained weights; training starts from scratch"

    @classmethod
    def recipe_problems(cls, config: BaseModel, recipe: dict[str, Any]) -> list[tuple[str, str]]:
        """Optional hook: ``(path, message)`` problems between a valid ``model:`` ``config`` and the rest
        of the raw ``recipe`` mapping (a stage switch the schedule does not follow, say). Default: none."""
        return []

    def identity(self) -> dict[str, Any]:
        """What the run's ``config.json`` records about the task."""
        return {"name": self.name, "supervision": self.supervision, "config": self.config.model_dump(mode="json")}
