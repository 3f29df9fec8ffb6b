"""GradCAM: the Dolos paper's classifier-explanation baseline, weakly or fully supervised.

Reference: Tantaru, Oneata & Oneata, "Weakly-supervised deepfake localization in diffusion-generated
images", WACV 2024 (code: github.com/bit-ml/dolos, ``dolos/methods/grad_cam``); Grad-CAM: Selvaraju
et al., ICCV 2017, through the ``grad-cam`` package (pytorch-grad-cam) that the paper used.

* **weak** (setups A and B, image labels only): timm's Xception classifier with a 2-way head,
  trained with image cross-entropy. Its map is Grad-CAM of the fake class on block 11's output
  (19x19 at 299): the package weights block 11's activations by their spatially averaged
  gradients, sums over channels, applies ReLU, **min-max normalises each image's map to [0, 1]**
  (``(m - min) / (max - min + 1e-7)``) and resizes it bilinearly to the input size. So every
  image's map that is positive anywhere reaches about 1 somewhere -- even a real image's: at
  threshold 0.5 Grad-CAM then marks a region (a map that the ReLU zeroes everywhere stays 0).
  The Dolos code divides once more by the map's maximum and thresholds at 0.5 (see
  ``docs/baselines/gradcam.md``). ``cam_scale: minmax-times-score`` (ours, not the paper's) multiplies the map by
  the image's fake probability so that confident reals score low everywhere.
  Image score: the softmax fake probability (scores must lie in [0, 1]; the paper ranked by the
  fake logit alone, a 2-way softmax ranks by the logit difference).
* **full** (setup C, masks): the Xception up to block 11 and torchvision's ``FCNHead(728, 2)``,
  trained with per-cell cross-entropy against the mask nearest-downsampled to the head's grid
  (19x19 at 299). Map: softmax fake probability per cell; image score: the map's mean.

Module and key names follow the Dolos code (a timm Xception; ``xcp_backbone`` + ``head`` for
the FCN), so the backbone and head weights of their checkpoints load by name.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dolos_bench.config import Strict
from dolos_bench.errors import UserError
from dolos_bench.train.localizer import TrainedLocalizer
from dolos_bench.train.task import Batch, TrainTask

from .xception_backbone import (
    BLOCKS, MIDDLE_CHANNELS, create_xception, load_xception_weights, masks_at, run_to_block, set_bn_momentum,
)

__all__ = ["GradCAMConfig", "GradCAMLocalizer", "GradCAMTask", "XceptionFCN", "grad_cam_maps"]


class GradCAMConfig(Strict):
    """The recipe's ``model:`` section for ``gradcam``.

    ``block``: the Xception block whose output Grad-CAM explains (weak) or the FCN head reads
    (full); 11 in the paper, any of the 728-channel blocks 3..11 works (all at stride 16).
    ``cam_scale``: see the module docstring. The input size (299) and the pretrained backbone
    (timm's ImageNet weights, the paper's init) are the recipe's ``input_size`` and ``pretrained``.
    ``bn_momentum``: BatchNorm's running-statistics momentum (PyTorch's 0.1 when unset, as in the
    paper); over-fit runs of a few dozen steps need a larger one (see ``set_bn_momentum``).
    """

    block: int = Field(11, ge=3, le=11)
    bn_momentum: float | None = Field(None, gt=0.0, le=1.0)
    cam_scale: Literal["minmax", "minmax-times-score"] = "minmax"


class XceptionFCN(nn.Module):
    """Xception up to ``block`` plus torchvision's ``FCNHead(728, 2)``: 2-class logits per cell (Dolos's ``XcpFcn``).

    The layers after ``block`` are dropped (they would get no gradient, which multi-GPU training
    refuses), so a Dolos checkpoint loads with ``strict=False``, less those keys.
    """

    def __init__(self, block: int = 11) -> None:
        from torchvision.models.segmentation.fcn import FCNHead

        super().__init__()
        self.block = block
        self.xcp_backbone = create_xception(num_classes=2)
        for i in range(block + 1, BLOCKS + 1):
            delattr(self.xcp_backbone, f"block{i}")
        for name in ("conv3", "bn3", "act3", "conv4", "bn4", "act4", "global_pool", "fc"):
            delattr(self.xcp_backbone, name)
        self.head = FCNHead(MIDDLE_CHANNELS, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(run_to_block(self.xcp_backbone, x, self.block))


def grad_cam_maps(model: nn.Module, images: torch.Tensor, layer: nn.Module
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps of the fake class ``(B, 1, S, S)`` in [0, 1] and the logits ``(B, 2)``.

    Gradients are enabled here (the caller may be under ``no_grad``), the hooks are removed on
    return, the parameters' ``.grad`` that the backward pass left are cleared and the model's
    train/eval mode is restored, so a prediction never changes what training does next.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    was_training = model.training
    try:
        with torch.enable_grad(), torch.autocast(images.device.type, enabled=False), \
                GradCAM(model=model, target_layers=[layer]) as cam:
            maps = cam(input_tensor=images.float(), targets=[ClassifierOutputTarget(1)] * images.shape[0])
            logits = cam.outputs.detach().float()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    maps_t = torch.from_numpy(maps).to(images.device).clamp_(0.0, 1.0).unsqueeze(1)
    return maps_t, logits


class GradCAMTask(TrainTask):
    """Xception + Grad-CAM on block 11 (weak) or an FCN head on block 11 (full), as in Dolos."""

    name: ClassVar[str] = "gradcam"
    Config: ClassVar[type[Strict]] = GradCAMConfig

    def build_model(self) -> nn.Module:
        cfg: Any = self.config
        if self.supervision == "weak":
            model = create_xception(num_classes=2)
        else:
            model = XceptionFCN(cfg.block)
        return set_bn_momentum(model, cfg.bn_momentum)

    def load_pretrained(self, model: nn.Module, source: str | None) -> str:
        """timm's ImageNet Xception (or a local file) into the backbone; the 2-way ``fc`` / FCN head stay new."""
        return load_xception_weights(model, source, prefix="" if self.supervision == "weak" else "xcp_backbone.")

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.supervision == "weak":
            loss = F.cross_entropy(model(batch.images).float(), batch.labels)
            return loss, {"ce": float(loss.detach())}
        if batch.masks is None:
            raise UserError("gradcam full supervision needs masks: this dataset has none (train with supervision: weak)")
        logits = model(batch.images).float()
        target = masks_at(batch.masks, tuple(logits.shape[-2:])).squeeze(1).round().long()
        loss = F.cross_entropy(logits, target)
        return loss, {"ce_cells": float(loss.detach())}

    def predict(self, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg: Any = self.config
        if self.supervision == "weak":
            maps, logits = grad_cam_maps(model, images, getattr(model, f"block{cfg.block}"))
            scores = torch.softmax(logits, dim=1)[:, 1]
            if cfg.cam_scale == "minmax-times-score":
                maps = maps * scores.view(-1, 1, 1, 1)
            return maps, scores
        probs = torch.softmax(model(images).float(), dim=1)[:, 1:2]
        return probs, probs.mean(dim=(1, 2, 3))


class GradCAMLocalizer(TrainedLocalizer):
    """GradCAM (Dolos paper): Xception + Grad-CAM on block 11 (weak) or an FCN head on block 11 (full).

    Options: ``weights`` (a ``bench train`` run folder, or a state-dict file), ``supervision``,
    ``block`` and ``cam_scale`` (for a bare file; a run folder records its own), ``batch``.
    """

    name = "gradcam"
    task: ClassVar[type[TrainTask]] = GradCAMTask
    requires = ("torch", "torchvision", "timm", "pytorch_grad_cam", "safetensors")
    extra = "train"
    input_size = 299
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
