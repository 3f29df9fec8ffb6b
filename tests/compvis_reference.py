"""Small re-implementations of the CompVis modules, named exactly as their checkpoints name them.

``RefUNet`` follows ``ldm.modules.diffusionmodules.openaimodel.UNetModel``: the same UNet as
guided-diffusion's, so it is ``tests/tiny_diffusion.ADMUNet`` with the CompVis options (ResBlock
with ``in_layers`` / ``emb_layers`` / ``out_layers`` / ``skip_connection``, ``resblock_updown``,
the legacy attention whose ``qkv`` holds q, k, v per head, a fixed head count), ``RefVQ`` the taming / ldm ``VQModel``
(``encoder.down.I.block.J``, ``decoder.up.I`` numbered from the lowest resolution, ``quantize``).
Their state dicts are what ``last.ckpt`` holds; their outputs are what the converted diffusers
models must reproduce. Written from the architecture, for the converter's tests only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tiny_diffusion import ADMUNet, randomise

__all__ = ["RefUNet", "RefVQ", "randomise"]


def RefUNet(arch: Any) -> ADMUNet:  # noqa: N802 - it stands for the module class it builds
    """``openaimodel.UNetModel`` with ``arch``'s options: guided-diffusion's UNet (tests/tiny_diffusion.py)
    with attention at down-sampling factors, ``arch.heads`` heads, plain GroupNorm + bias time
    conditioning (``use_scale_shift_norm`` false) and ResBlock up/down sampling."""
    assert arch.resblock_updown and not arch.use_scale_shift_norm, "the reference covers the released layout"
    return ADMUNet(image_size=arch.image_size, in_channels=arch.in_channels, model_channels=arch.model_channels,
                   out_channels=arch.out_channels, num_res_blocks=arch.num_res_blocks,
                   channel_mult=tuple(arch.channel_mult), attention_ds=tuple(arch.attention_resolutions),
                   num_head_channels=arch.num_head_channels, num_heads=arch.num_heads, resblock_updown=True,
                   scale_shift=False)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class VQResnet(nn.Module):
    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(channels), nn.Conv2d(channels, out, 3, padding=1)
        self.norm2, self.conv2 = _norm(out), nn.Conv2d(out, out, 3, padding=1)
        if channels != out:
            self.nin_shortcut = nn.Conv2d(channels, out, 1)
        self.same = channels == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.same else self.nin_shortcut(x)) + h


class VQAttention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        w = torch.bmm(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1)) * c**-0.5
        a = torch.bmm(v.reshape(b, c, -1), w.softmax(dim=2).permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(a)


class Mid(nn.Module):
    def __init__(self, channels: int, attention: bool) -> None:
        super().__init__()
        self.block_1 = VQResnet(channels, channels)
        self.attn_1 = VQAttention(channels) if attention else nn.Identity()
        self.block_2 = VQResnet(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    def __init__(self, blocks: list[VQResnet], resample: str | None, channels: int) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if resample == "down":
            self.downsample = nn.Module()
            self.downsample.conv = nn.Conv2d(channels, channels, 3, stride=2)
        elif resample == "up":
            self.upsample = nn.Module()
            self.upsample.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        if self.resample == "down":
            return self.downsample.conv(F.pad(x, (0, 1, 0, 1)))
        if self.resample == "up":
            return self.upsample.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        return x


class Encoder(nn.Module):
    def __init__(self, arch: Any) -> None:
        super().__init__()
        ch, n = arch.ch, len(arch.ch_mult)
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(arch.ch_mult):
            blocks = []
            for _ in range(arch.vq_num_res_blocks):
                blocks.append(VQResnet(block_in, ch * mult))
                block_in = ch * mult
            self.down.append(Level(blocks, "down" if i != n - 1 else None, block_in))
        self.mid = Mid(block_in, arch.vq_mid_attention)
        self.norm_out, self.conv_out = _norm(block_in), nn.Conv2d(block_in, arch.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, arch: Any) -> None:
        super().__init__()
        ch, n = arch.ch, len(arch.ch_mult)
        block_in = ch * arch.ch_mult[-1]
        self.conv_in = nn.Conv2d(arch.z_channels, block_in, 3, padding=1)
        self.mid = Mid(block_in, arch.vq_mid_attention)
        levels: list[Level] = []
        for i in reversed(range(n)):
            blocks = []
            for _ in range(arch.vq_num_res_blocks + 1):
                blocks.append(VQResnet(block_in, ch * arch.ch_mult[i]))
                block_in = ch * arch.ch_mult[i]
            levels.insert(0, Level(blocks, "up" if i != 0 else None, block_in))
        self.up = nn.ModuleList(levels)
        self.norm_out, self.conv_out = _norm(block_in), nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class RefVQ(nn.Module):
    def __init__(self, arch: Any) -> None:
        super().__init__()
        self.encoder, self.decoder = Encoder(arch), Decoder(arch)
        self.quant_conv = nn.Conv2d(arch.z_channels, arch.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(arch.embed_dim, arch.z_channels, 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(arch.n_embed, arch.embed_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode_unquantized(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(h))
