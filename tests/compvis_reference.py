"""Small re-implementations of the CompVis modules, named exactly as their checkpoints name them.

``RefUNet`` follows ``ldm.modules.diffusionmodules.openaimodel.UNetModel`` (ResBlock with
``in_layers`` / ``emb_layers`` / ``out_layers`` / ``skip_connection``, ``resblock_updown``, the
legacy attention whose ``qkv`` holds q, k, v per head), ``RefVQ`` the taming / ldm ``VQModel``
(``encoder.down.I.block.J``, ``decoder.up.I`` numbered from the lowest resolution, ``quantize``).
Their state dicts are what ``last.ckpt`` holds; their outputs are what the converted diffusers
models must reproduce. Written from the architecture, for the converter's tests only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb: int, out: int, up: bool = False, down: bool = False) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, out))
        self.out_layers = nn.Sequential(nn.GroupNorm(32, out), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)
        self.up, self.down = up, down

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, 2, 2) if self.down else x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers[:-1](x)
        h, x = self._resample(h), self._resample(x)
        h = self.in_layers[-1](h) + self.emb_layers(emb)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(32, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        self.heads = heads

    def forward(self, x: torch.Tensor, emb: Any = None) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        length, ch = qkv.shape[-1], c // self.heads
        q, k, v = qkv.reshape(b * self.heads, 3 * ch, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)
        return (flat + self.proj_out(a)).reshape(b, c, *spatial)


class Step(nn.Sequential):
    """TimestepEmbedSequential: the embedding goes to the ResBlocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


class RefUNet(nn.Module):
    def __init__(self, arch: Any) -> None:
        super().__init__()
        mc, emb = arch.model_channels, 4 * arch.model_channels
        self.mc = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([Step(nn.Conv2d(arch.in_channels, mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        last = len(arch.channel_mult) - 1
        for level, mult in enumerate(arch.channel_mult):
            for _ in range(arch.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb, mult * mc)]
                ch = mult * mc
                if ds in arch.attention_resolutions:
                    layers.append(AttentionBlock(ch, arch.heads(ch)))
                self.input_blocks.append(Step(*layers))
                chans.append(ch)
            if level != last:
                self.input_blocks.append(Step(ResBlock(ch, emb, ch, down=True)))
                chans.append(ch)
                ds *= 2
        self.middle_block = Step(ResBlock(ch, emb, ch), AttentionBlock(ch, arch.heads(ch)), ResBlock(ch, emb, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(arch.channel_mult))):
            for i in range(arch.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb, mc * mult)]
                ch = mc * mult
                if ds in arch.attention_resolutions:
                    layers.append(AttentionBlock(ch, arch.heads(ch)))
                if level and i == arch.num_res_blocks:
                    layers.append(ResBlock(ch, emb, ch, up=True))
                    ds //= 2
                self.output_blocks.append(Step(*layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(mc, arch.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.mc))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


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


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter random (norms too), so that a wrong mapping cannot hide behind ones and zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module.eval()
