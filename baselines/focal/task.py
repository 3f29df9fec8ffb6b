"""FOCAL's training task for the shared trainer: a feature extractor, its InfoNCE, clustering at test time.

Training needs the forgery masks (``supervision: full``): the loss is FOCAL's per-image InfoNCE
(:mod:`.loss`) on the L2-normalised features, with the masks resized to the feature grid. At test
time each image's features are clustered (:mod:`.clustering`) into a mask and a score map; the
clustering method and rule are inference options (``--model-arg clustering=kmeans``), not part of
the weights, so they live on the task object (:attr:`FocalTask.clustering`) rather than in its
``Config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from dolos_bench.config import Strict
from dolos_bench.train.task import Batch, TrainTask

__all__ = ["FocalConfig", "FocalTask", "ClusterSettings", "DEFAULT_ARCH"]

DEFAULT_ARCH = {"hrnet": "hrnet_w32", "vit": "vit_large_patch16_224"}


class FocalConfig(Strict):
    """The recipe's ``model:`` section for FOCAL."""

    backbone: Literal["hrnet", "vit"] = Field("hrnet", description="HRNet (H/4 map, FOCAL's HRNet-W32) or ViT (H/16)")
    arch: str | None = Field(None, description="timm model name, or 'tiny' for tests; default hrnet_w32 / vit_large_patch16_224")
    tau: float = Field(0.1, gt=0, description="InfoNCE temperature")
    samples: int = Field(1000, ge=2, description="pixels sampled per class and image")

    @model_validator(mode="after")
    def _default_arch(self) -> "FocalConfig":
        if self.arch is None:
            self.arch = DEFAULT_ARCH[self.backbone]
        return self


@dataclass
class ClusterSettings:
    """How features become a mask at test time (see :func:`dolos_baselines.focal.clustering.cluster`)."""

    method: str = "hdbscan-fast"
    rule: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


class FocalTask(TrainTask):
    """FOCAL (Wu et al., TDSC 2025): pixel-contrastive features, clustered per image at test time."""

    name = "focal"
    Config: ClassVar[type[FocalConfig]] = FocalConfig
    supervisions = ("full",)
    input_size = 256
    mean = (0.0, 0.0, 0.0)  # FOCAL feeds RGB / 255 with no normalisation
    std = (1.0, 1.0, 1.0)

    def __init__(self, config: FocalConfig, supervision: str = "full") -> None:
        super().__init__(config, supervision)  # type: ignore[arg-type]
        self.clustering = ClusterSettings()

    def build_model(self) -> "Any":
        from .model import build_extractor

        return build_extractor(self.config.backbone, self.config.arch)

    def load_pretrained(self, model: Any, source: str | None) -> str:
        from dolos_bench.train.pretrained import load_timm_weights

        from .model import timm_name

        name = timm_name(self.config.backbone, self.config.arch)
        if name is None:
            return f"focal: the tiny {self.config.backbone} has no pretrained weights; training from scratch"
        inner = model.net if self.config.backbone == "hrnet" else model.vit
        return load_timm_weights(inner, name, source)

    def features(self, model: Any, images: Any) -> Any:
        """L2-normalised features ``(B, C, h, w)`` of the extractor's (first) map."""
        import torch.nn.functional as F

        return F.normalize(model(images)[0].float(), dim=1)

    def loss(self, model: Any, batch: Batch) -> tuple[Any, dict[str, float]]:
        from .loss import image_info_nce, masks_at

        if batch.masks is None:
            raise ValueError("focal trains on forgery masks: use supervision: full on a dataset with masks")
        feats = model(batch.images)[0]
        masks = masks_at(batch.masks, tuple(feats.shape[-2:]))
        loss, used = image_info_nce(feats, masks, tau=self.config.tau, samples=self.config.samples)
        return loss, {"images_used": float(used)}

    def predict(self, model: Any, images: Any) -> tuple[Any, Any]:
        return self.maps_from_features(self.features(model, images))

    def _warn_if_subsampled(self, points: int) -> None:
        """Say once when ``hdbscan-fast`` will cluster a subsample (above its device's exact limit)."""
        import warnings

        from .clustering import effective_options

        s = self.clustering
        if s.method != "hdbscan-fast" or getattr(self, "_warned_subsample", False):
            return
        limit = effective_options(s.method, s.options)["max_points"]
        if points > limit:
            self._warned_subsample = True
            warnings.warn(
                f"focal: a {points:,}-point feature grid is above hdbscan-fast's max_points ({limit:,} on"
                f" {s.options.get('device', 'cpu')}): each image is clustered from a subsample, which matches exact"
                " HDBSCAN on clean features but not on fuzzy ones (docs/baselines/focal.md); exact: --device cuda,"
                " or --model-arg clustering=hdbscan (about a minute per 256x256 grid on a CPU)", stacklevel=2)

    def maps_from_features(self, feats: Any) -> tuple[Any, Any]:
        """Cluster each image's features: score maps ``(B, 1, h, w)`` and image scores (the map's maximum)."""
        import numpy as np
        import torch

        from .clustering import cluster

        arrays = feats.detach().float().permute(0, 2, 3, 1).cpu().numpy()
        s = self.clustering
        if len(arrays):
            self._warn_if_subsampled(arrays.shape[1] * arrays.shape[2])
        maps = [cluster(np.ascontiguousarray(a), method=s.method, rule=s.rule, **s.options).score for a in arrays]
        out = torch.from_numpy(np.stack(maps)[:, None]).to(feats.device)
        return out, out.flatten(1).amax(dim=1)
