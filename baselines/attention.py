"""Attention: the Dolos paper's FFD-style attention-map baseline, weakly or fully supervised.

References: Dang, Liu, Stehouwer, Liu & Jain, "On the Detection of Digital Face Manipulation",
CVPR 2020 (FFD; code: github.com/JStehouwer/FFD_CVPR2020) for the "reg" attention map; Tantaru,
Oneata & Oneata, WACV 2024 (code: github.com/bit-ml/dolos, ``dolos/methods/xception_attention``)
for its use as a localizer.

The network is an Xception with a regression attention map after block 7: a separable 3x3
convolution 728 -> 1 and a sigmoid give one value per cell (19x19 at 299), which multiplies block
7's features before the rest of the network classifies the image (2-way head).

* **weak** (setups A and B): cross-entropy on the image label plus ``map_weight`` (λ = 1 in the
  paper) times the binary cross-entropy of the map's **maximum** against the label: a fake image
  must light up somewhere, a real one nowhere.
* **full** (setup C): binary cross-entropy of the map against the mask, nearest-downsampled to
  the map's grid; the label head gets no loss (as in the paper).

Both losses are computed on the map's logits (``binary_cross_entropy_with_logits``; the max of a
sigmoid is the sigmoid of the max), which is the same loss in fp32 and is safe under bf16/fp16
autocast, where ``binary_cross_entropy`` on probabilities is refused.

Map: the sigmoid attention. Image score: the softmax fake probability for weak supervision (the
paper used the fake logit; scores must lie in [0, 1]); the map's maximum for full supervision,
whose label head is untrained. The backbone is timm's ``legacy_xception`` (the paper initialised
from FFD's released ``xcp_reg`` checkpoint instead; see ``docs/baselines/attention.md``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dolos_bench.config import Strict
from dolos_bench.errors import UserError
from dolos_bench.train.localizer import TrainedLocalizer
from dolos_bench.train.task import Batch, TrainTask

from .xception_backbone import (
    MIDDLE_CHANNELS, create_xception, load_xception_weights, masks_at, run_from_block, run_to_block, set_bn_momentum,
)

__all__ = ["AttentionConfig", "AttentionLocalizer", "AttentionTask", "RegressionMap", "XceptionAttention"]


class AttentionConfig(Strict):
    """The recipe's ``model:`` section for ``attention``.

    ``block``: the Xception block after which the map sits (7 in the paper; any 728-channel
    block 3..11, all 19x19 at 299). ``map_weight``: λ of the weak loss. The input size (299) and a
    pretrained backbone (timm's ImageNet Xception, or a local file: a timm Xception's state dict or
    this network's) are the recipe's ``input_size`` and ``pretrained``.
    ``bn_momentum``: BatchNorm's running-statistics momentum (PyTorch's 0.1 when unset, as in the
    paper); over-fit runs of a few dozen steps need a larger one (see ``set_bn_momentum``).
    """

    block: int = Field(7, ge=3, le=11)
    map_weight: float = Field(1.0, ge=0.0)
    bn_momentum: float | None = Field(None, gt=0.0, le=1.0)


class RegressionMap(nn.Module):
    """FFD's "reg" map: a separable 3x3 convolution to one channel (logits; the sigmoid is the caller's)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class XceptionAttention(nn.Module):
    """timm's Xception with a :class:`RegressionMap` after ``block``; returns (image logits, map logits)."""

    def __init__(self, block: int = 7) -> None:
        super().__init__()
        self.block = block
        self.backbone = create_xception(num_classes=2)
        self.map = RegressionMap(MIDDLE_CHANNELS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = run_to_block(self.backbone, x, self.block)
        map_logits = self.map(features)
        logits = run_from_block(self.backbone, features * torch.sigmoid(map_logits), self.block)
        return logits, map_logits


class AttentionTask(TrainTask):
    """Xception with an FFD attention map at block 7, trained on labels (weak) or masks (full)."""

    name: ClassVar[str] = "attention"
    Config: ClassVar[type[Strict]] = AttentionConfig

    def build_model(self) -> nn.Module:
        cfg: Any = self.config
        return set_bn_momentum(XceptionAttention(cfg.block), cfg.bn_momentum)

    def load_pretrained(self, model: nn.Module, source: str | None) -> str:
        """timm's ImageNet Xception (or a local file) into ``backbone``; the attention map stays new."""
        return load_xception_weights(model, source, prefix="backbone.")

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits, map_logits = model(batch.images)
        map_logits = map_logits.float()
        if self.supervision == "weak":
            label = F.cross_entropy(logits.float(), batch.labels)
            peak = F.binary_cross_entropy_with_logits(map_logits.amax(dim=(1, 2, 3)), batch.labels.float())
            loss = label + self.config.map_weight * peak  # type: ignore[attr-defined]
            return loss, {"ce": float(label.detach()), "bce_map_max": float(peak.detach())}
        if batch.masks is None:
            raise UserError("attention full supervision needs masks: this dataset has none (train with supervision: weak)")
        target = masks_at(batch.masks, tuple(map_logits.shape[-2:])).round()
        loss = F.binary_cross_entropy_with_logits(map_logits, target)
        return loss, {"bce_map": float(loss.detach())}

    def predict(self, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, map_logits = model(images)
        maps = torch.sigmoid(map_logits.float())
        if self.supervision == "weak":
            return maps, torch.softmax(logits.float(), dim=1)[:, 1]
        return maps, maps.amax(dim=(1, 2, 3))


class AttentionLocalizer(TrainedLocalizer):
    """Attention (Dolos paper): Xception with an FFD attention map at block 7, weak or full supervision.

    Options: ``weights`` (a ``bench train`` run folder, or a state-dict file), ``supervision``,
    ``block`` and ``map_weight`` (for a bare file; a run folder records its own), ``batch``.
    """

    name = "attention"
    task: ClassVar[type[TrainTask]] = AttentionTask
    requires = ("torch", "timm", "safetensors")
    extra = "train"
    input_size = 299
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
