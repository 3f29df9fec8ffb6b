"""``bench eval focal``: a trained FOCAL run scored through its clustering, alone or fused with others.

Options (``--model-arg``), on top of :class:`~dolos_bench.train.localizer.TrainedLocalizer`'s:

* ``clustering``: ``hdbscan-fast`` (default), ``hdbscan`` (exact, about a minute per image at 256x256 on a CPU),
  ``kmeans`` (FOCAL's released code); ``rule``: ``largest-pristine`` or ``minority-forged``
  (default: the method's own); ``min_cluster_size``, ``min_samples``, ``max_points``, ``seed``:
  the method's parameters (:mod:`dolos_baselines.focal.clustering`); ``cluster_device``: where
  ``hdbscan-fast`` clusters (default: ``--device``). On a CUDA device it clusters up to 262,144
  points (a 512x512 grid) exactly by brute force; on a CPU up to 4,096, and a subsample above.
* ``fuse``: more FOCAL run folders, comma-separated (``fuse=runs/focal-vit,runs/focal-hrnet``).
  Each run computes its features at its own input size; each map is L2-normalised, resampled
  (nearest, as FOCAL does) to the first run's grid and concatenated on channels; the fused
  features are clustered. No retraining. The first run is ``--weights`` when given, else the
  first folder of ``fuse``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from dolos_bench.errors import UserError
from dolos_bench.eval.api import LocalizerOutput
from dolos_bench.eval.localizers import resize_input
from dolos_bench.train.localizer import TrainedLocalizer

from .clustering import check_settings, effective_options
from .task import ClusterSettings, FocalTask

__all__ = ["FocalLocalizer", "FocalOptionError"]


class FocalOptionError(UserError, ValueError):
    """A clustering or fusion option that FOCAL does not take (``--model-arg``)."""

_CLUSTER_OPTIONS = ("min_cluster_size", "min_samples", "max_points", "seed", "approx_min_span_tree")


def _run_list(fuse: Any) -> list[str]:
    if fuse is None:
        return []
    items = fuse.split(",") if isinstance(fuse, str) else list(fuse)
    runs = [str(x).strip() for x in items if str(x).strip()]
    if not runs:
        raise ValueError("fuse names no run folder: pass fuse=RUN1,RUN2")
    return runs


class FocalLocalizer(TrainedLocalizer):
    """FOCAL (Wu et al., TDSC 2025): contrastive pixel features clustered per image into a mask."""

    name = "focal"
    task = FocalTask
    requires = ("torch", "timm", "hdbscan")
    extra = "train"
    licence_note = "FOCAL's method and released code: MIT (HighwayWu/FOCAL); weights: your own runs"

    def __init__(self, device: str = "cpu", weights: str | None = None, supervision: str | None = None,
                 batch: int = 16, clustering: str = "hdbscan-fast", rule: str | None = None,
                 fuse: Any = None, **model_args: Any) -> None:
        cluster_options = {k: model_args.pop(k) for k in _CLUSTER_OPTIONS if k in model_args}
        cluster_device = model_args.pop("cluster_device", None)
        if clustering == "hdbscan-fast":  # exact on a GPU's whole grid; see clustering.default_max_points
            cluster_options["device"] = str(cluster_device or device)
        elif cluster_device is not None:
            raise FocalOptionError(f"focal: cluster_device applies to clustering=hdbscan-fast only, not {clustering}")
        try:
            resolved_rule = check_settings(clustering, rule, cluster_options)
            runs = _run_list(fuse)
        except ValueError as exc:
            raise FocalOptionError(f"focal: {exc}") from exc
        if weights is None and runs:
            weights, runs = runs[0], runs[1:]
        super().__init__(device=device, weights=weights, supervision=supervision, batch=batch, **model_args)
        # the identity states what runs, defaults included (the results' info.model_identity)
        self.options.update(clustering=clustering, rule=resolved_rule, **effective_options(clustering, cluster_options))
        if fuse is not None:
            self.options["fuse"] = fuse
        self.task_obj.clustering = ClusterSettings(clustering, rule, cluster_options)
        self.members = [FocalLocalizer(device=device, weights=run, batch=batch) for run in runs]

    def identity(self) -> dict[str, Any]:
        info = super().identity()
        if self.members:
            info["fused"] = [m.identity() for m in self.members]
        return info

    def features(self, images: Sequence[np.ndarray]) -> Any:
        """This run's L2-normalised features ``(B, C, h, w)`` of ``uint8`` images, at its own input size."""
        import torch

        size = int(self.input_size)  # type: ignore[arg-type]
        ready = [resize_input(np.asarray(im), size, "pil-bilinear") for im in images]
        chunks = []
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(ready), self.batch):
                chunks.append(self.task_obj.features(self.model, self.to_tensor(ready[start:start + self.batch])).cpu())
        return torch.cat(chunks)

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        if not self.members:
            return super().predict(images, ids)
        import torch
        import torch.nn.functional as F

        first = self.features(images)
        grid = tuple(first.shape[-2:])
        parts = [first] + [F.interpolate(m.features(images), size=grid, mode="nearest") for m in self.members]
        maps, scores = self.task_obj.maps_from_features(torch.cat(parts, dim=1))
        return LocalizerOutput(maps=[np.ascontiguousarray(m[0].numpy(), dtype=np.float32) for m in maps],
                               scores=[float(s) for s in scores])
