"""Tiny random diffusion models the tests save and load the real way, and a reference ADM UNet.

* :func:`tiny_unet`: a 2-level diffusers ``UNet2DModel`` (epsilon, or epsilon + learned variance);
* :func:`tiny_ldm`: ``vqvae/`` + ``unet/`` + ``scheduler/``, the layout of ``CompVis/ldm-celebahq-256``;
* :class:`ADMUNet`: an unconditional OpenAI guided-diffusion UNet written from its published
  architecture (parameter names as in ``guided_diffusion/unet.py``), so the converter's output
  can be held against the model it came from, not only against itself;
* ``*_params``: rows for ``tests/test_contracts.py``'s ``FIXTURES``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def tiny_unet(folder: Path, out_channels: int = 3, sample_size: int = 32) -> Path:
    """A random 2-level UNet2DModel (8/16 channels, attention at the lower level), saved with save_pretrained."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=sample_size, in_channels=3, out_channels=out_channels, layers_per_block=1,
                block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                attention_head_dim=8).save_pretrained(str(folder))
    return folder


def tiny_ldm(folder: Path) -> Path:
    """A random VQ-f2 autoencoder + latent UNet + DDIM scheduler in diffusers' LDM folder layout."""
    from diffusers import DDIMScheduler, VQModel

    tiny_unet(folder / "unet", sample_size=8)
    torch.manual_seed(1)
    VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=3,
            norm_num_groups=4, num_vq_embeddings=16, sample_size=16).save_pretrained(str(folder / "vqvae"))
    DDIMScheduler().save_pretrained(str(folder / "scheduler"))
    return folder


def repaint_params(folder: Path) -> dict[str, Any]:
    """A learned-variance UNet (the ADM/P2 case) and a few steps with one resampling jump."""
    return {"model": str(tiny_unet(folder / "unet6", out_channels=6)), "steps": 4, "jump_length": 2,
            "jump_n_sample": 2}


def ddpm_full_params(folder: Path) -> dict[str, Any]:
    return {"model": str(tiny_unet(folder / "unet", out_channels=6)), "steps": 4}


# -- a reference guided-diffusion UNet ------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, ch: int, emb: int, out: int | None = None, *, up: bool = False, down: bool = False,
                 scale_shift: bool = True) -> None:
        super().__init__()
        out = out or ch
        self.up, self.down, self.scale_shift = up, down, scale_shift
        self.in_layers = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * out if scale_shift else out))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, out), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == ch else nn.Conv2d(ch, out, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers[:-1](x)
        h, x = self._resample(h), self._resample(x)
        h = self.in_layers[-1](h)
        e = self.emb_layers(emb)[..., None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch: int, heads: int, new_order: bool = False) -> None:
        super().__init__()
        self.heads, self.new_order = heads, new_order
        self.norm = nn.GroupNorm(32, ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, hh, ww = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        per = c // self.heads
        if self.new_order:
            q, k, v = (part.reshape(b * self.heads, per, -1) for part in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * self.heads, 3 * per, -1).split(per, dim=1)
        scale = 1 / math.sqrt(math.sqrt(per))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
        return (flat + self.proj_out(a)).reshape(b, c, hh, ww)


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Step(nn.Sequential):
    """guided-diffusion's TimestepEmbedSequential."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if not isinstance(layer, nn.Conv2d) else layer(x)
        return x


class ADMUNet(nn.Module):
    """guided-diffusion's unconditional UNetModel (2-D, no class labels), which latent-diffusion's
    ``openaimodel.UNetModel`` is too (``tests/compvis_reference.py`` builds it with the CompVis
    options: attention by down-sampling factor, a fixed head count, no scale-shift norm).

    ``attention_resolutions`` are feature-map sizes (guided-diffusion's flag); ``attention_ds``,
    when given, down-sampling factors instead (latent-diffusion's). Heads: ``num_head_channels``
    per head when > 0, else ``num_heads`` at every width. Every parameter is drawn from ``seed``.
    """

    def __init__(self, *, image_size: int, in_channels: int = 3, model_channels: int = 32, out_channels: int = 6,
                 num_res_blocks: int = 1, attention_resolutions: tuple[int, ...] = (8,),
                 channel_mult: tuple[int, ...] = (1, 2), num_head_channels: int = 16, num_heads: int = 1,
                 attention_ds: tuple[int, ...] | None = None, resblock_updown: bool = True,
                 scale_shift: bool = True, new_order: bool = False, seed: int = 0) -> None:
        super().__init__()
        mc, emb = model_channels, 4 * model_channels
        self.model_channels = mc
        if attention_ds is None:
            attention_ds = tuple(image_size // r for r in attention_resolutions)
        res = dict(scale_shift=scale_shift)

        def heads(ch: int) -> int:
            return ch // num_head_channels if num_head_channels > 0 else num_heads

        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([Step(nn.Conv2d(in_channels, mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb, mult * mc, **res)]
                ch = mult * mc
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, heads(ch), new_order))
                self.input_blocks.append(Step(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Step(ResBlock(ch, emb, ch, down=True, **res) if resblock_updown
                                              else Downsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = Step(ResBlock(ch, emb, **res), AttentionBlock(ch, heads(ch), new_order),
                                 ResBlock(ch, emb, **res))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb, mc * mult, **res)]
                ch = mc * mult
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, heads(ch), new_order))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, emb, ch, up=True, **res) if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Step(*layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(mc, out_channels, 3, padding=1))
        randomise(self, seed)  # every parameter random (ADM zero-initialises some): a meaningful comparison

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter random (norms too), so that a wrong mapping cannot hide behind ones and zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module.eval()
