"""The networks of FOCAL and MPC: timm's HRNet (one or all of its scales) and a ViT with SAM's neck.

FOCAL's HRNet branch is the pose-estimation HRNet-W32 whose last stage sums every branch into the
high-resolution one: 32 channels at H/4. timm's ``HighResolutionNet`` builds the same stages, and
its stride-4 output of stage 4 *is* that sum (HRNet's fuse layer 0 adds every branch, upsampled,
to branch 0), so :class:`HRNetFeatures` takes timm's network with ``feature_location=''`` and
returns that map (``scales=1``) or all four branch maps (``scales=4``, MPC's multi-scale encoder).
``arch`` is a timm HRNet name (``hrnet_w32``, ``hrnet_w18_small``, ...) or ``"tiny"``, a 4-branch
HRNet with 8/16/32/64 channels and one block per branch, for CPU tests.

FOCAL's ViT branch is SAM's ViT-L image encoder plus its neck (1x1 conv to 256, LayerNorm2d, 3x3
conv, LayerNorm2d), 256 channels at H/16. :class:`ViTFeatures` builds a timm ViT of ``arch``
(``"tiny"``: 2 blocks of width 64) with position embeddings interpolated to the input's grid, and
the same neck. SAM's windowed
attention and relative position embeddings are not reproduced: a plain timm ViT is what can be
had pretrained (ImageNet) at any size.

Stochastic depth (MPC's second "view"): ``drop_path`` > 0 puts a ``DropPath`` in every residual
block of HRNet's stages, the rate growing linearly from 0 to ``drop_path`` with depth, as MPC's
HRFormer does (rate 0.2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["HRNetFeatures", "ViTFeatures", "LayerNorm2d", "TINY_HRNET", "build_extractor", "timm_name"]

TINY_HRNET: dict[str, Any] = dict(
    stem_width=16,
    stage1=dict(num_modules=1, num_branches=1, block_type="BOTTLENECK", num_blocks=(1,), num_channels=(8,), fuse_method="SUM"),
    stage2=dict(num_modules=1, num_branches=2, block_type="BASIC", num_blocks=(1, 1), num_channels=(8, 16), fuse_method="SUM"),
    stage3=dict(num_modules=1, num_branches=3, block_type="BASIC", num_blocks=(1, 1, 1), num_channels=(8, 16, 32),
                fuse_method="SUM"),
    stage4=dict(num_modules=1, num_branches=4, block_type="BASIC", num_blocks=(1, 1, 1, 1), num_channels=(8, 16, 32, 64),
                fuse_method="SUM"),
)
"""A 4-branch HRNet small enough to train on a CPU in a test (about 0.2 M parameters)."""


def timm_name(backbone: str, arch: str) -> str | None:
    """The timm model whose pretrained weights fit, or None for the tiny test networks."""
    return None if arch == "tiny" else arch


class HRNetFeatures(nn.Module):
    """timm HRNet's stage-4 maps: the fused H/4 map (``scales=1``) or the four branch maps (``scales=4``)."""

    def __init__(self, arch: str = "hrnet_w32", scales: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        from timm.models.hrnet import HighResolutionNetFeatures, cfg_cls

        if arch != "tiny" and arch not in cfg_cls:
            hrnets = ", ".join(sorted(k for k in cfg_cls if "small" in k or k.startswith("hrnet_w")))
            raise ValueError(f"unknown HRNet arch {arch!r}; one of tiny, {hrnets}")
        if scales not in (1, 4):
            raise ValueError(f"scales must be 1 or 4, got {scales}")
        cfg = TINY_HRNET if arch == "tiny" else cfg_cls[arch]
        indices = (1,) if scales == 1 else (1, 2, 3, 4)
        self.net = HighResolutionNetFeatures(cfg, feature_location="", out_indices=indices)
        self.channels: list[int] = list(cfg["stage4"]["num_channels"][: len(indices)])
        self.scales = scales
        if drop_path > 0:
            _add_drop_path(self.net, float(drop_path))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net(x)


def _add_drop_path(net: nn.Module, rate: float) -> None:
    """A DropPath in every residual block of HRNet's stages 2-4, rates linear in depth from 0 to ``rate``."""
    from timm.layers import DropPath
    from timm.models.resnet import BasicBlock, Bottleneck

    blocks = [m for name, m in net.named_modules()
              if name.startswith("stage") and isinstance(m, (BasicBlock, Bottleneck))]
    for i, block in enumerate(blocks):
        block.drop_path = DropPath(rate * i / max(1, len(blocks) - 1))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map (SAM's neck)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ViTFeatures(nn.Module):
    """A timm ViT's patch tokens as a map at H/16, through SAM's neck to ``out_channels``."""

    def __init__(self, arch: str = "vit_large_patch16_224", out_channels: int = 256) -> None:
        super().__init__()
        import timm

        if arch == "tiny":
            from timm.models.vision_transformer import VisionTransformer

            self.vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2,
                                         num_classes=0, dynamic_img_size=True)
        else:  # position embeddings are interpolated to the input's grid (any multiple of the patch size)
            self.vit = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True)
        width = int(self.vit.embed_dim)
        self.patch = int(self.vit.patch_embed.patch_size[0])
        self.neck = nn.Sequential(
            nn.Conv2d(width, out_channels, 1, bias=False), LayerNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels),
        )
        self.channels = [out_channels]
        self.scales = 1

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, _, h, w = x.shape
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]
        grid = tokens.transpose(1, 2).reshape(b, -1, h // self.patch, w // self.patch)
        return [self.neck(grid)]


def build_extractor(backbone: str, arch: str, scales: int = 1, drop_path: float = 0.0) -> nn.Module:
    """The feature network of ``backbone`` (``hrnet`` or ``vit``)."""
    if backbone == "hrnet":
        return HRNetFeatures(arch, scales=scales, drop_path=drop_path)
    if backbone == "vit":
        if scales != 1 or drop_path:
            raise ValueError("the ViT extractor has one scale and no stochastic depth")
        return ViTFeatures(arch)
    raise ValueError(f"unknown backbone {backbone!r}; one of hrnet, vit")
