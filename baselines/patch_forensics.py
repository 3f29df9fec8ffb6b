"""Patch-Forensics (Chai, Bau, Lim, Isola, ECCV 2020) as the Dolos paper's "Patches" localizer.

Reference: L. Chai et al., "What makes fake images detectable? Understanding properties that
generalize", ECCV 2020 (arXiv 2008.10588); used for weakly and fully supervised localization of
inpainted faces by Tantaru, Oneata, Oneata, "Weakly-supervised deepfake localization in diffusion-
generated images", WACV 2024 (the Dolos paper).

The network is Xception truncated after ``block2`` with a 1x1 convolution to two classes per
patch: a fully convolutional classifier whose output is a 37x37 grid of patch logits at 299x299
(stride 8, receptive field 43 px). Its modules are timm's ``legacy_xception`` stem and blocks, and
its state-dict keys are those of the ``customnet`` patch-Xception at ``block2`` that the Dolos
authors trained and released (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``block1.*``, ``block2.*``,
``convout``), so their checkpoints load with ``--weights FILE.pt``. Class 1 is fake, as in Dolos
(the original Patch-Forensics code used class 0).

* weak supervision: every patch takes its image's label, cross-entropy averaged over patches;
* full supervision: each patch takes the nearest-downsampled mask (1 = forged);
* score map: the softmax fake probability of each patch; image score: its mean.

Only :mod:`dolos_bench` public modules are used, like any outside plug-in.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from dolos_bench.config import Strict
from dolos_bench.train.localizer import TrainedLocalizer
from dolos_bench.train.task import Batch, TrainTask

__all__ = ["PatchForensicsConfig", "PatchForensicsTask", "PatchForensicsLocalizer", "build_patch_xception"]

_CHANNELS = (32, 64, 128, 256)
"""Xception's stem and entry-flow widths up to block2 (conv1, conv2, block1, block2)."""


class PatchForensicsConfig(Strict):
    """The ``model:`` section of a patch-forensics recipe."""

    width: float = Field(1.0, gt=0, le=4,
                         description="channel multiplier; 1 = the paper's (and the released checkpoints') widths")
    init: Literal["xavier", "default"] = Field(
        "xavier", description="xavier (gain 0.02, BN weight N(1, 0.02)): Dolos weak; default: PyTorch's (Dolos full)")


def build_patch_xception(width: float = 1.0) -> Any:
    """Xception's stem, ``block1`` and ``block2`` (timm ``legacy_xception`` modules) and the 1x1 ``convout``."""
    from collections import OrderedDict

    from timm.models.xception import Block
    from torch import nn

    c1, c2, c3, c4 = (max(2, int(round(c * width))) for c in _CHANNELS)

    layers = [
        ("conv1", nn.Conv2d(3, c1, 3, 2, 0, bias=False)),
        ("bn1", nn.BatchNorm2d(c1)),
        ("act1", nn.ReLU(inplace=True)),
        ("conv2", nn.Conv2d(c1, c2, 3, bias=False)),
        ("bn2", nn.BatchNorm2d(c2)),
        ("act2", nn.ReLU(inplace=True)),
        ("block1", Block(c2, c3, 2, 2, start_with_relu=False)),
        ("block2", Block(c3, c4, 2, 2)),
        ("convout", nn.Conv2d(c4, 2, kernel_size=1)),
    ]
    # A Sequential of named modules, as customnet's CustomXceptionNet is: the same state-dict keys.
    return nn.Sequential(OrderedDict(layers))


def _xavier(model: Any, gain: float = 0.02) -> None:
    """Patch-Forensics' ``init_weights(init_type='xavier', gain=0.02)``: what Dolos's weak runs used."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(module.weight, gain=gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, gain)
            nn.init.zeros_(module.bias)


class PatchForensicsTask(TrainTask):
    """Patch-level cross-entropy on a truncated Xception; weak (image labels) or full (masks)."""

    name = "patch-forensics"
    Config = PatchForensicsConfig
    supervisions = ("weak", "full")
    input_size = 299
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def build_model(self) -> Any:
        model = build_patch_xception(self.config.width)
        if self.config.init == "xavier":
            _xavier(model)
        return model

    def load_pretrained(self, model: Any, source: str | None) -> str:
        """timm's ImageNet ``legacy_xception`` weights for the stem and blocks 1-2 (``convout`` stays new)."""
        from dolos_bench.train.pretrained import load_timm_weights

        return load_timm_weights(model, "legacy_xception", source)

    def targets(self, logits: Any, batch: Batch) -> Any:
        """Per-patch class ids ``(B, h, w)``: the image label everywhere (weak) or the downsampled mask (full)."""
        import torch.nn.functional as F

        n, _, h, w = logits.shape
        if self.supervision == "weak" or batch.masks is None:
            if self.supervision == "full":
                raise ValueError("full supervision needs masks in the batch")
            return batch.labels.view(n, 1, 1).expand(n, h, w)
        # nearest-exact samples each patch's centre, as PIL's nearest resize in the Dolos code does
        # (torch's plain "nearest" takes the top-left pixel and shifts the target by half a patch)
        small = F.interpolate(batch.masks.float(), size=(h, w), mode="nearest-exact")
        return (small[:, 0] > 0.5).long()

    def loss(self, model: Any, batch: Batch) -> tuple[Any, dict[str, float]]:
        import torch.nn.functional as F

        logits = model(batch.images)
        targets = self.targets(logits, batch)
        loss = F.cross_entropy(logits.float(), targets)
        accuracy = (logits.detach().argmax(1) == targets).float().mean()
        return loss, {"patch_accuracy": float(accuracy)}

    def predict(self, model: Any, images: Any) -> tuple[Any, Any]:
        logits = model(images).float()
        fake = logits.softmax(dim=1)[:, 1:2]
        return fake, fake.mean(dim=(1, 2, 3))


class PatchForensicsLocalizer(TrainedLocalizer):
    """Patch-Forensics (Chai et al. 2020): truncated Xception patch classifier, as the Dolos paper's Patches.

    Options: ``weights`` (a ``bench train`` run folder, or a state-dict file such as the Dolos
    authors' released Patches checkpoints), ``width`` and ``init`` (for a bare file; a run folder
    records its own), ``batch``.
    """

    name = "patch-forensics"
    task: ClassVar[type[TrainTask]] = PatchForensicsTask
    requires = ("torch", "timm", "safetensors")
    extra = "train"
    input_size = 299
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
