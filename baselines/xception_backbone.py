"""timm's ``legacy_xception``: the backbone that the Dolos paper's GradCAM and Attention baselines share.

The Dolos code built both on timm's ``xception`` (which later timm releases renamed
``legacy_xception``, same modules and state-dict keys), so a network made here loads the
backbone part of their checkpoints by name. This module builds it offline (random init), loads
timm's ImageNet weights (or a local file) through the trainer's pretrained hook, runs the network
up to and from one of its blocks (where both baselines attach their heads) and brings masks to a
head's grid.

Only torch and timm are imported, and only inside the functions: the core never imports this file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["ARCH", "MIDDLE_CHANNELS", "BLOCKS", "create_xception", "load_xception_weights", "masks_at",
           "run_to_block", "run_from_block", "set_bn_momentum"]

ARCH = "legacy_xception"
MIDDLE_CHANNELS = 728
"""Channels of blocks 3..11 (the 'middle flow'), all at stride 16: 19x19 at 299."""
BLOCKS = 12
_STEM = ("conv1", "bn1", "act1", "conv2", "bn2", "act2")
_EXIT = ("conv3", "bn3", "act3", "conv4", "bn4", "act4")


def create_xception(num_classes: int = 2) -> "torch.nn.Module":
    """A randomly initialised ``legacy_xception`` with a ``num_classes`` head (pretrained weights come
    later, through :func:`load_xception_weights`, when the recipe asks for them)."""
    import timm

    return timm.create_model(ARCH, pretrained=False, num_classes=num_classes)


def load_xception_weights(model: "torch.nn.Module", source: str | None, prefix: str = "") -> str:
    """timm's ImageNet ``legacy_xception`` weights (``source`` None) or a local file into ``model``.

    Keys are matched by name and shape after ``prefix`` is put in front (the backbone's place in
    ``model``; a key that already has it is kept, so a file of this very network loads too), so the
    1000-class ``fc`` and layers a model dropped are skipped, and a task's head stays as built. Returns the trainer's one-line note (including "training from scratch" when
    timm's weights cannot be reached offline).
    """
    from dolos_bench.train.pretrained import load_timm_weights

    return load_timm_weights(model, ARCH, source, rename=lambda key: key if key.startswith(prefix) else prefix + key)


def run_to_block(model: "torch.nn.Module", x: "torch.Tensor", block: int) -> "torch.Tensor":
    """The stem and blocks ``1..block`` of a ``legacy_xception`` (``block`` in 1..12)."""
    for name in _STEM:
        x = getattr(model, name)(x)
    for i in range(1, block + 1):
        x = getattr(model, f"block{i}")(x)
    return x


def run_from_block(model: "torch.nn.Module", x: "torch.Tensor", block: int) -> "torch.Tensor":
    """Blocks ``block+1..12``, the exit flow and the classifier: logits from block ``block``'s output."""
    for i in range(block + 1, BLOCKS + 1):
        x = getattr(model, f"block{i}")(x)
    for name in _EXIT:
        x = getattr(model, name)(x)
    return model.forward_head(x)


def masks_at(masks: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """Binary ``(B, 1, S, S)`` masks nearest-downsampled to a head's ``size`` grid.

    ``nearest-exact`` samples each cell's centre (as PIL's nearest resize does), where torch's
    plain ``nearest`` takes its top-left pixel and so shifts the target by half a cell.
    """
    import torch.nn.functional as F

    return F.interpolate(masks.float(), size=size, mode="nearest-exact")


def set_bn_momentum(model: "torch.nn.Module", momentum: float | None) -> "torch.nn.Module":
    """Set every BatchNorm's running-statistics momentum (``None`` keeps PyTorch's 0.1).

    Eval-mode predictions use the running statistics, an average over the last ~1/momentum
    steps. Over hundreds of steps that lag is harmless; in a run of a few dozen steps on a
    handful of images the weights move faster than 0.1 follows, and eval-mode maps come out
    flat although the training loss is near zero. Such runs set a larger momentum (1.0 = the
    last batch's statistics).
    """
    import torch.nn as nn

    if momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = momentum
    return model
