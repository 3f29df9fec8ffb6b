"""MPC (Lou et al., arXiv 2406.13565, IEEE TIFS 2025): multi-view pixel contrast, then a pixel head.

Network: a 4-branch HRNet encoder (timm's; MPC's HRFormer is not in timm) with stochastic depth,
a 256-channel projection head per scale (1x1 conv, BatchNorm, ReLU), and a per-pixel head on the
four projected maps upsampled to H/4 and concatenated (BN-ReLU-1x1 conv 1024->512->256->128->1,
MPC's ``Decoder``).

Stage 1 (``model.stage: 1``) trains encoder and projection heads with three FOCAL InfoNCE terms
per image (:func:`dolos_baselines.focal.loss.info_nce`: pristine anchors and positives, forged
negatives, mean-cosine positive logit, tau 0.1, at most 5,000 samples per set):

* within the image: finest-scale pristine vs finest-scale forged;
* across scales: finest scale against the three coarser ones pooled, both ways (anchors of one
  set, negatives of the other), as MPC's code does;
* across "views": the image goes through the network twice in train mode, and stochastic depth
  makes the two passes differ (MPC's two "modalities"); finest scale of pass 1 against pass 2,
  both ways.

Images without both classes at the finest scale are skipped (MPC's code has no guard: an image
with no pristine pixel raises there, one with a single pristine pixel gives NaN).

Stage 2 (``model.stage: 2``) trains only the pixel head with sigmoid focal loss (alpha 0.5,
gamma 2, mean over pixels) on the frozen encoder. Unlike the released code, the frozen part is put
in eval mode: its BatchNorm statistics do not drift and stochastic depth is off, so the features
the head learns on are the ones it is scored on. Stage 2 starts from a stage-1 run:
``--pretrained runs/mpc-stage1`` (a run folder or its ``model.safetensors``).

``model.stage: both`` runs stage 1 for ``stage1_steps`` steps and then stage 2 in the same run,
counting its own training steps in a buffer saved with the weights (so a resumed run switches at
the same step); the head's learning rate is ``stage2_lr`` (default: the recipe's). Each stage can
have its own lr schedule: a ``schedule.phases`` entry with ``from_step: stage1_steps`` (checked by
:meth:`MPCTask.recipe_problems`).

Scores: after stage 2, the sigmoid of the head at H/4. A stage-1 run is scored as MPC validates
stage 1: cosine k-means (k = 2) of the concatenated projected features, smaller cluster forged
(:func:`dolos_baselines.focal.clustering.cluster`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from dolos_bench.config import Strict
from dolos_bench.train.localizer import TrainedLocalizer
from dolos_bench.train.task import Batch, TrainTask

__all__ = ["MPCConfig", "MPCTask", "MPCLocalizer", "build_mpc"]


class MPCConfig(Strict):
    """The recipe's ``model:`` section for MPC."""

    arch: str = Field("hrnet_w32", description="timm HRNet name, or 'tiny' for tests")
    stage: Literal[1, 2, "both"] = Field(1, description="1: pixel contrast; 2: pixel head on the frozen encoder; both")
    stage1_steps: int | None = Field(None, ge=1, description="stage: both only: steps of stage 1 before stage 2")
    stage2_lr: float | None = Field(None, gt=0, description="stage: both only: the head's learning rate")
    dim: int = Field(256, ge=4, description="channels of each scale's projection head")
    drop_path: float = Field(0.2, ge=0, lt=1, description="stochastic depth rate (the second view)")
    tau: float = Field(0.1, gt=0)
    samples: int = Field(5000, ge=2, description="pixels sampled per set and image")
    alpha: float = Field(0.5, ge=0, le=1, description="focal loss alpha (stage 2)")
    gamma: float = Field(2.0, ge=0, description="focal loss gamma (stage 2)")

    @model_validator(mode="after")
    def _both_needs_steps(self) -> "MPCConfig":
        if self.stage == "both" and self.stage1_steps is None:
            raise ValueError("stage: both needs stage1_steps (the step at which stage 2 starts)")
        if self.stage != "both" and (self.stage1_steps is not None or self.stage2_lr is not None):
            raise ValueError("stage1_steps and stage2_lr apply to stage: both only")
        return self


def build_mpc(config: MPCConfig) -> Any:
    """The MPC network (encoder, projection heads, pixel head, step counter)."""
    import torch
    from torch import nn

    from dolos_baselines.focal.model import HRNetFeatures

    class MPCNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = HRNetFeatures(config.arch, scales=4, drop_path=config.drop_path)
            d = config.dim
            self.proj = nn.ModuleList(
                nn.Sequential(nn.Conv2d(c, d, 1, bias=False), nn.BatchNorm2d(d, eps=1e-3, momentum=0.03), nn.ReLU(inplace=True))
                for c in self.encoder.channels)
            widths = [4 * d, 2 * d, d, d // 2]
            layers: list[nn.Module] = []
            for a, b in zip(widths, widths[1:]):
                layers += [nn.BatchNorm2d(a), nn.ReLU(inplace=True), nn.Conv2d(a, b, 1)]
            layers += [nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True), nn.Conv2d(widths[-1], 1, 1)]
            self.head = nn.Sequential(*layers)
            self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

        def project(self, x: torch.Tensor) -> list[torch.Tensor]:
            """The four projected maps (H/4 ... H/32), not normalised."""
            return [p(f) for p, f in zip(self.proj, self.encoder(x))]

        def fused(self, maps: list[torch.Tensor]) -> torch.Tensor:
            """The projected maps upsampled (bilinear, align_corners as MPC) to H/4 and concatenated."""
            size = maps[0].shape[-2:]
            return torch.cat([maps[0]] + [nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=True)
                                          for m in maps[1:]], dim=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.fused(self.project(x)))

    return MPCNet()


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)  # DDP under accelerate launch


class MPCTask(TrainTask):
    """MPC's two training stages on the shared trainer."""

    name = "mpc"
    Config: ClassVar[type[MPCConfig]] = MPCConfig
    supervisions = ("full",)
    input_size = 256
    mean = (0.0, 0.0, 0.0)  # MPC (like FOCAL) feeds RGB / 255
    std = (1.0, 1.0, 1.0)

    def build_model(self) -> Any:
        return build_mpc(self.config)

    @classmethod
    def recipe_problems(cls, config: MPCConfig, recipe: dict[str, Any]) -> list[tuple[str, str]]:
        """``stage: both`` with schedule phases: one of them must start where stage 2 does."""
        schedule = recipe.get("schedule")
        phases = schedule.get("phases") if isinstance(schedule, dict) else None
        if config.stage != "both" or not isinstance(phases, list) or not phases:
            return []
        starts = [p.get("from_step") for p in phases if isinstance(p, dict)]
        if config.stage1_steps in starts:
            return []
        return [("schedule.phases", f"mpc stage: both switches to stage 2 at model.stage1_steps = {config.stage1_steps},"
                                    f" but the schedule's phases start at {starts}: start stage 2's schedule there"
                                    f" (a phase with from_step: {config.stage1_steps}), or give no phases")]

    def stage_of(self, model: Any) -> int:
        """The stage the model is in: the config's, or for ``both`` the one its step count says."""
        if self.config.stage != "both":
            return int(self.config.stage)
        return 1 if int(_unwrap(model).steps_done) < int(self.config.stage1_steps) else 2

    def parameters(self, model: Any) -> Any:
        net = _unwrap(model)
        contrast = [*net.encoder.parameters(), *net.proj.parameters()]
        if self.config.stage == 1:
            return contrast
        if self.config.stage == 2:
            return list(net.head.parameters())
        head: dict[str, Any] = {"params": list(net.head.parameters())}
        if self.config.stage2_lr is not None:
            head["lr"] = self.config.stage2_lr
        return [{"params": contrast}, head]  # each group gets gradients only in its own stage

    def load_pretrained(self, model: Any, source: str | None) -> str:
        """A stage-1 MPC run (folder or weights file) for stage 2, else timm HRNet weights for the encoder."""
        from dolos_bench.train.pretrained import WeightsFileError, copy_matching, load_timm_weights, read_state_dict

        if source is not None:
            path = Path(source)
            if path.is_dir():
                path = path / "model.safetensors"
            state = read_state_dict(path)
            if any(k.startswith("encoder.") for k in state):
                keep = {k: v for k, v in state.items() if not k.startswith("head.") and k != "steps_done"}
                wanted = [k for k in _unwrap(model).state_dict() if not k.startswith("head.") and k != "steps_done"]
                copied, total = copy_matching(_unwrap(model), keep)
                if copied != len(wanted):
                    raise WeightsFileError(f"{path}: {copied} of the {len(wanted)} encoder and projection tensors fit this"
                                           " MPC config; train stage 2 with the stage-1 run's arch and dim")
                return f"mpc: encoder and projection heads from {path} ({copied} of {total} tensors)"
        if self.config.arch == "tiny":
            return "mpc: the tiny HRNet has no pretrained weights; training from scratch"
        return load_timm_weights(_unwrap(model).encoder.net, self.config.arch, source)

    def loss(self, model: Any, batch: Batch) -> tuple[Any, dict[str, float]]:
        if batch.masks is None:
            raise ValueError("mpc trains on forgery masks: use supervision: full on a dataset with masks")
        net = _unwrap(model)
        stage = self.stage_of(model)
        if net.training:
            net.steps_done += 1
        if stage == 1:
            return self._contrast_loss(net, batch)
        return self._head_loss(net, batch)

    def _contrast_loss(self, net: Any, batch: Batch) -> tuple[Any, dict[str, float]]:
        import torch
        import torch.nn.functional as F

        from dolos_baselines.focal.loss import info_nce, masks_at, sample_rows

        view1 = [F.normalize(m.float(), dim=1) for m in net.project(batch.images)]
        view2 = F.normalize(net.project(batch.images)[0].float(), dim=1)  # a second stochastic-depth pass
        masks = [masks_at(batch.masks, tuple(m.shape[-2:])) for m in view1]
        n, tau = self.config.samples, self.config.tau

        def term(a: torch.Tensor, a_forged: torch.Tensor, b: torch.Tensor, b_forged: torch.Tensor) -> torch.Tensor | None:
            """Anchors: pristine rows of ``a``; negatives: forged rows of ``b`` (None if either set is too small)."""
            anchors, negatives = a[~a_forged], b[b_forged]
            if anchors.shape[0] < 2 or negatives.shape[0] < 1:
                return None
            return info_nce(sample_rows(anchors, n), sample_rows(negatives, n), tau)

        totals: dict[str, list[torch.Tensor]] = {"intra": [], "scale": [], "view": []}
        for b in range(batch.images.shape[0]):
            x1 = view1[0][b].flatten(1).T
            m1 = masks[0][b].flatten()
            if int(m1.sum()) == 0 or int((~m1).sum()) < 2:
                continue
            coarse = torch.cat([view1[s][b].flatten(1).T for s in (1, 2, 3)])
            coarse_m = torch.cat([masks[s][b].flatten() for s in (1, 2, 3)])
            x2 = view2[b].flatten(1).T
            parts = {
                "intra": [term(x1, m1, x1, m1)],
                "scale": [term(x1, m1, coarse, coarse_m), term(coarse, coarse_m, x1, m1)],
                "view": [term(x1, m1, x2, m1), term(x2, m1, x1, m1)],
            }
            for key, values in parts.items():
                kept = [v for v in values if v is not None]
                if kept:
                    totals[key].append(torch.stack(kept).sum())
        used = len(totals["intra"])
        if used == 0:
            zero = view1[0].sum() * 0.0 + view2.sum() * 0.0
            return zero, {"images_used": 0.0}
        means = {k: torch.stack(v).sum() / used for k, v in totals.items() if v}
        loss = sum(means.values())
        return loss, {"images_used": float(used), **{f"loss_{k}": float(v.detach()) for k, v in means.items()}}

    def _head_loss(self, net: Any, batch: Batch) -> tuple[Any, dict[str, float]]:
        import torch
        import torch.nn.functional as F
        from torchvision.ops import sigmoid_focal_loss

        net.encoder.eval()  # frozen means frozen: no BatchNorm drift, no stochastic depth (the trainer's
        net.proj.eval()     # model.train() before each step is undone here)
        with torch.no_grad():
            feats = net.fused(net.project(batch.images))
        logits = net.head(feats)
        target = F.interpolate(batch.masks.float(), size=logits.shape[-2:], mode="nearest")
        loss = sigmoid_focal_loss(logits.float(), target, alpha=self.config.alpha, gamma=self.config.gamma, reduction="mean")
        return loss, {}

    def predict(self, model: Any, images: Any) -> tuple[Any, Any]:
        import numpy as np
        import torch
        import torch.nn.functional as F

        from dolos_baselines.focal.clustering import cluster

        net = _unwrap(model)
        if self.stage_of(model) == 2:
            maps = torch.sigmoid(net(images).float())
        else:
            maps_ = [F.normalize(m.float(), dim=1) for m in net.project(images)]
            feats = net.fused(maps_).permute(0, 2, 3, 1).cpu().numpy()
            scores = [cluster(np.ascontiguousarray(f), method="kmeans").score for f in feats]
            maps = torch.from_numpy(np.stack(scores)[:, None]).to(images.device)
        return maps, maps.flatten(1).amax(dim=1)


class MPCLocalizer(TrainedLocalizer):
    """MPC (Lou et al., TIFS 2025): multi-view pixel-contrastive HRNet with a per-pixel head."""

    name = "mpc"
    task = MPCTask
    requires = ("torch", "torchvision", "timm")
    extra = "train"
    licence_note = "MPC's method and released code: CC BY-NC 4.0 (multimediaFor/MPC); this re-implementation: the toolkit's"
