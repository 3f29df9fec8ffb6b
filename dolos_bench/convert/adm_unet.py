"""The one mapping of the ADM / openaimodel UNet onto diffusers' ``UNet2DModel``, with its key accounting.

OpenAI guided-diffusion's ``unet.py`` (the P2-weighting models) and latent-diffusion's
``openaimodel.py`` (the CompVis LDMs) are the same UNet under the same parameter names, so both
converters (:mod:`.guided_diffusion`, :mod:`.compvis_ldm`) describe their model as a
:class:`UNetLayout` and call :func:`map_unet` and :func:`target_problems` here:

=====================================================  ==========================================
ADM / openaimodel                                        diffusers
=====================================================  ==========================================
``time_embed.0`` / ``time_embed.2``                      ``time_embedding.linear_1`` / ``linear_2``
``input_blocks.0.0``                                     ``conv_in``
``input_blocks.k.0`` ResBlock (level l, j-th)            ``down_blocks.l.resnets.j``
``input_blocks.k.1`` AttentionBlock                      ``down_blocks.l.attentions.j``
``input_blocks.k.0`` ResBlock(down) / Downsample.op      ``down_blocks.l.downsamplers.0`` (/ ``.conv``)
``middle_block.0`` / ``.1`` / ``.2``                     ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``
``output_blocks.k.0`` / ``.1`` (level i from the top)    ``up_blocks.i.resnets.j`` / ``attentions.j``
``output_blocks.k.{1,2}`` ResBlock(up) / Upsample.conv   ``up_blocks.i.upsamplers.0`` (/ ``.conv``)
``out.0`` / ``out.2``                                    ``conv_norm_out`` / ``conv_out``
ResBlock ``in_layers.0/2``, ``emb_layers.1``,            ``norm1``/``conv1``, ``time_emb_proj``,
``out_layers.0/3``, ``skip_connection``                  ``norm2``/``conv2``, ``conv_shortcut``
AttentionBlock ``norm``, ``qkv`` (Conv1d), ``proj_out``  ``group_norm``, ``to_q/to_k/to_v``, ``to_out.0``
=====================================================  ==========================================

``ResnetDownsampleBlock2D`` / ``AttnDownBlock2D`` (``downsample_type="resnet"`` for
``resblock_updown``, plain convolutions otherwise), ``resnet_time_scale_shift="scale_shift"`` for
``use_scale_shift_norm``, ``flip_sin_to_cos=True, freq_shift=0`` (ADM's timestep embedding puts the
cosines first and divides by ``half``). The fused ``qkv`` is split per head: the legacy order lays
its rows out head by head as ``[q_h, k_h, v_h]``; ``new_attention_order`` as ``[q, k, v]``, each
head-major.

**Heads.** ADM fixes either the head *size* (``num_head_channels``) or the head *count*
(``num_heads``); a ``UNet2DModel`` config can only state a size. :attr:`UNetLayout.head_count`
says what to do with a fixed count: ``"as_size"`` (guided-diffusion) turns it into the one head
size it gives at every attended width, and refuses a count that gives several; ``"recorded"``
(the CompVis inpainting UNet: 8 heads at every width) writes one head into the config and leaves
the count to the caller to record (:meth:`UNetLayout.recorded_heads`) and apply after loading
(``builder/generators/ldm_inpaint.set_attention_heads``).

**The guarantee.** :func:`map_unet` takes every tensor by name and says which source keys were
left over and which the layout expected but the checkpoint lacks; :func:`target_problems` holds
the mapped tensors against the model diffusers builds (every key filled, none unknown, every
shape equal). A converter writes nothing unless both lists are empty, so a half-mapped model
never loads and samples noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from . import ConversionError

__all__ = ["ConversionError", "Mapped", "UNetLayout", "listed", "map_unet", "target_problems", "unet_config"]

LISTED = 8


def listed(keys: list[str], limit: int = LISTED) -> str:
    """The first ``limit`` keys, and how many more there are."""
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


@dataclass(frozen=True)
class UNetLayout:
    """The ADM UNet's architecture, as both converters state it (module docstring)."""

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention: tuple[bool, ...]  # per level, highest resolution first
    resblock_updown: bool
    use_scale_shift_norm: bool
    image_size: int
    num_head_channels: int = -1  # > 0: a fixed head size
    num_heads: int = 1  # the fixed head count when num_head_channels <= 0
    head_count: Literal["as_size", "recorded"] = "as_size"
    new_attention_order: bool = False

    @property
    def channels(self) -> list[int]:
        return [self.model_channels * m for m in self.channel_mult]

    def heads(self, channels: int) -> int:
        """Heads of an attention layer over ``channels`` (how its fused ``qkv`` is split)."""
        if self.num_head_channels > 0:
            return max(1, channels // self.num_head_channels)
        if self.head_count == "as_size":
            return max(1, channels // self.head_dim())
        return self.num_heads

    def head_dim(self) -> int | None:
        """``attention_head_dim`` of the config: the head size, or None (one head) for a recorded count."""
        if self.num_head_channels > 0:
            return self.num_head_channels
        if self.head_count == "recorded":
            return None
        attended = {c for c, a in zip(self.channels, self.attention) if a} | {self.channels[-1]}  # + the middle
        dims = {c // self.num_heads for c in attended}
        if len(dims) != 1:
            raise ConversionError(f"num_heads={self.num_heads} gives a different head size at each attention level"
                                  f" ({sorted(dims)}); UNet2DModel has one attention_head_dim")
        return dims.pop()

    def recorded_heads(self) -> int | None:
        """The head count the caller must record and apply after loading (None: the config says it all)."""
        return self.num_heads if self.num_head_channels <= 0 and self.head_count == "recorded" else None


def unet_config(layout: UNetLayout) -> dict[str, Any]:
    """The ``UNet2DModel`` config that computes what the ADM UNet with ``layout`` computes."""
    plain_down = "ResnetDownsampleBlock2D" if layout.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if layout.resblock_updown else "UpBlock2D"
    config: dict[str, Any] = {
        "sample_size": layout.image_size, "in_channels": layout.in_channels, "out_channels": layout.out_channels,
        "block_out_channels": layout.channels, "layers_per_block": layout.num_res_blocks,
        "down_block_types": ["AttnDownBlock2D" if a else plain_down for a in layout.attention],
        "up_block_types": ["AttnUpBlock2D" if a else plain_up for a in reversed(layout.attention)],
        "downsample_type": "resnet" if layout.resblock_updown else "conv",
        "upsample_type": "resnet" if layout.resblock_updown else "conv",
        "attention_head_dim": layout.head_dim(),
        "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
        "resnet_time_scale_shift": "scale_shift" if layout.use_scale_shift_norm else "default",
        "add_attention": True, "center_input_sample": False, "time_embedding_type": "positional",
    }
    if layout.use_scale_shift_norm:  # diffusers drops the attention's GroupNorm(32) for scale_shift unless told
        config["attn_norm_num_groups"] = 32
    return config


@dataclass
class Mapped:
    """ADM tensors under diffusers names, and what of the source was not accounted for."""

    tensors: dict[str, Any] = field(default_factory=dict)
    leftover: list[str] = field(default_factory=list)  # source keys nothing took (sorted)
    absent: list[str] = field(default_factory=list)  # source keys the layout expects, not in the checkpoint


class _Mapper:
    """Moves source tensors to target names, remembering which source keys were consumed."""

    def __init__(self, source: Mapping[str, Any], layout: UNetLayout) -> None:
        self.source, self.layout, self.used = source, layout, set()
        self.out = Mapped()

    def take(self, key: str) -> Any:
        if key not in self.source:
            self.out.absent.append(key)
            return None
        self.used.add(key)
        return self.source[key]

    def copy(self, src: str, dst: str, *, squeeze: bool = False) -> None:
        for suffix in ("weight", "bias"):
            tensor = self.take(f"{src}.{suffix}")
            if tensor is not None:
                flat = squeeze and suffix == "weight"  # a 1x1 Conv1d weight as the linear weight diffusers holds
                self.out.tensors[f"{dst}.{suffix}"] = tensor.reshape(tensor.shape[:2]) if flat else tensor

    def resblock(self, src: str, dst: str) -> None:
        self.copy(f"{src}.in_layers.0", f"{dst}.norm1")
        self.copy(f"{src}.in_layers.2", f"{dst}.conv1")
        self.copy(f"{src}.emb_layers.1", f"{dst}.time_emb_proj")
        self.copy(f"{src}.out_layers.0", f"{dst}.norm2")
        self.copy(f"{src}.out_layers.3", f"{dst}.conv2")
        if f"{src}.skip_connection.weight" in self.source:
            self.copy(f"{src}.skip_connection", f"{dst}.conv_shortcut")

    def attention(self, src: str, dst: str) -> None:
        self.copy(f"{src}.norm", f"{dst}.group_norm")
        weight, bias = self.take(f"{src}.qkv.weight"), self.take(f"{src}.qkv.bias")
        if weight is not None and bias is not None:
            rows, width = weight.shape[0], weight.shape[1]
            channels = rows // 3
            heads = self.layout.heads(channels)
            w, b = weight.reshape(rows, width), bias.reshape(rows)
            if self.layout.new_attention_order:
                parts_w, parts_b = w.chunk(3, dim=0), b.chunk(3, dim=0)
            else:  # legacy: per head, [q_h, k_h, v_h]
                w4, b3 = w.reshape(heads, 3, channels // heads, width), b.reshape(heads, 3, channels // heads)
                parts_w = tuple(w4[:, i].reshape(channels, width) for i in range(3))
                parts_b = tuple(b3[:, i].reshape(channels) for i in range(3))
            for name, pw, pb in zip(("to_q", "to_k", "to_v"), parts_w, parts_b):
                self.out.tensors[f"{dst}.{name}.weight"] = pw.contiguous()
                self.out.tensors[f"{dst}.{name}.bias"] = pb.contiguous()
        self.copy(f"{src}.proj_out", f"{dst}.to_out.0", squeeze=True)


def map_unet(state: Mapping[str, Any], layout: UNetLayout) -> Mapped:
    """Every tensor of the ADM UNet ``state`` (keys without a prefix) under its ``UNet2DModel`` name."""
    levels = len(layout.channel_mult)
    m = _Mapper(state, layout)
    m.copy("time_embed.0", "time_embedding.linear_1")
    m.copy("time_embed.2", "time_embedding.linear_2")
    m.copy("input_blocks.0.0", "conv_in")
    k = 1
    for level in range(levels):
        for j in range(layout.num_res_blocks):
            m.resblock(f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}")
            if layout.attention[level]:
                m.attention(f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}")
            k += 1
        if level != levels - 1:
            if layout.resblock_updown:
                m.resblock(f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0")
            else:
                m.copy(f"input_blocks.{k}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            k += 1
    m.resblock("middle_block.0", "mid_block.resnets.0")
    m.attention("middle_block.1", "mid_block.attentions.0")
    m.resblock("middle_block.2", "mid_block.resnets.1")
    k = 0
    for i, level in enumerate(reversed(range(levels))):
        for j in range(layout.num_res_blocks + 1):
            m.resblock(f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}")
            index = 1
            if layout.attention[level]:
                m.attention(f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}")
                index = 2
            if level != 0 and j == layout.num_res_blocks:
                if layout.resblock_updown:
                    m.resblock(f"output_blocks.{k}.{index}", f"up_blocks.{i}.upsamplers.0")
                else:
                    m.copy(f"output_blocks.{k}.{index}.conv", f"up_blocks.{i}.upsamplers.0.conv")
            k += 1
    m.copy("out.0", "conv_norm_out")
    m.copy("out.2", "conv_out")
    m.out.leftover = sorted(set(state) - m.used)
    return m.out


def target_problems(name: str, produced: Mapping[str, Any], model: Any) -> list[str]:
    """What keeps ``produced`` from loading into ``model`` with ``strict=True``, each kind listed."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    missing = sorted(set(expected) - set(produced))
    if missing:
        problems.append(f"{len(missing)} {name} key(s) that nothing in the checkpoint fills: {listed(missing)}")
    extra = sorted(set(produced) - set(expected))
    if extra:
        problems.append(f"{len(extra)} mapped {name} key(s) the target model does not have: {listed(extra)}")
    wrong = [f"{k} {tuple(produced[k].shape)} vs {expected[k]}" for k in sorted(set(produced) & set(expected))
             if tuple(produced[k].shape) != expected[k]]
    if wrong:
        problems.append(f"{len(wrong)} {name} shape mismatch(es) (checkpoint vs options): {listed(wrong)}")
    return problems
