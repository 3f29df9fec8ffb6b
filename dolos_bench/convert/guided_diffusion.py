"""OpenAI guided-diffusion (ADM) UNet checkpoints -> a diffusers ``UNet2DModel`` folder.

The P2-weighting CelebA-HQ and FFHQ models the Dolos data was made with (Choi et al., CVPR 2022)
are ADM UNets saved as a plain ``state_dict`` (``torch.save(model.state_dict())``). ADM's layout
maps one to one onto diffusers' ``UNet2DModel``:

=====================================================  ==========================================
ADM (``guided_diffusion/unet.py``)                       diffusers
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

with ``ResnetDownsampleBlock2D``/``AttnDownBlock2D`` (``downsample_type="resnet"`` when the model
was trained with ``resblock_updown``, plain convolutions otherwise), ``resnet_time_scale_shift=
"scale_shift"`` for ``use_scale_shift_norm`` (ADM: ``norm(h) * (1 + scale) + shift``, scale
first), ``flip_sin_to_cos=True, freq_shift=0`` (ADM's ``timestep_embedding`` puts the cosines
first and divides by ``half``), and ``out_channels = 2 x in`` for ``learn_sigma`` (epsilon, then
the variance interpolation ``v``). The fused ``qkv`` is split per head: ADM's default
("legacy") attention lays its rows out head by head as ``[q_h, k_h, v_h]``;
``use_new_attention_order`` checkpoints as ``[q, k, v]``, each head-major.

Hyperparameters come from :class:`ADMOptions`; ``in``/``out``/base channels are read from the
checkpoint's own tensors. Its defaults are the flags of the P2-weighting README for its 256²
models as we read them (``--attention_resolutions 16 --diffusion_steps 1000 --image_size 256
--learn_sigma True --noise_schedule linear --num_channels 128 --num_head_channels 64
--num_res_blocks 1 --resblock_updown True --use_scale_shift_norm True``, channel multipliers
``1,1,2,2,4,4``, guided-diffusion's default at 256²); check them against the README of the
checkpoint you convert. A wrong option shows as a shape mismatch or as keys left over, each
named, never as a model that loads and samples noise.

Besides the UNet the folder gets a ``scheduler_config.json`` (``DDPMScheduler``: the training
noise schedule, ``learned_range`` variance for ``learn_sigma``), which ``repaint`` and
``ddpm-full`` read, and ``adm_options.json``: the flags used and the source checkpoint's sha256.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from ..errors import UserError
from ..utils.outdir import prepare_output, write_record

ADM_FLAGS = "adm_options.json"

__all__ = ["ADMOptions", "ConversionError", "convert_guided_diffusion", "diffusers_config", "map_state_dict"]


class ConversionError(UserError, ValueError):
    """A checkpoint that does not fit the options: what is left over or missing, named."""


@dataclass(frozen=True)
class ADMOptions:
    """guided-diffusion's model flags (``script_util.create_model``'s arguments)."""

    image_size: int = 256
    num_channels: int | None = None  # None: read from input_blocks.0.0.weight
    num_res_blocks: int = 1
    channel_mult: tuple[int, ...] | None = None  # None: guided-diffusion's default for image_size
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sizes with attention (not factors)
    num_heads: int = 4  # used only when num_head_channels == -1
    num_head_channels: int = 64
    learn_sigma: bool | None = None  # None: read from the output channels
    resblock_updown: bool = True
    use_scale_shift_norm: bool = True
    use_new_attention_order: bool = False
    dropout: float = 0.0
    in_channels: int | None = None  # None: read from the checkpoint
    diffusion_steps: int = 1000
    noise_schedule: Literal["linear", "cosine"] = "linear"
    extra: dict[str, Any] = field(default_factory=dict)

    def multipliers(self) -> tuple[int, ...]:
        if self.channel_mult:
            return tuple(self.channel_mult)
        defaults = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
        if self.image_size not in defaults:
            raise ConversionError(f"no default channel_mult for image size {self.image_size}: pass --channel-mult")
        mult = defaults[self.image_size]
        if any(m != int(m) for m in mult):
            raise ConversionError("the 512² default channel_mult starts at 0.5, which UNet2DModel cannot express")
        return tuple(int(m) for m in mult)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state dict in ``path`` (``.pt``/``.pth`` via ``torch.load(weights_only=True)``, or ``.safetensors``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"no checkpoint at {str(path)!r}: give the guided-diffusion .pt file (e.g. the"
                              " P2-weighting celebahq_p2.pt / ffhq_p2.pt from its README's links)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safetensors errors have no common base
        raise ConversionError(f"cannot read {str(path)!r} as a torch checkpoint: {exc}") from None
    for key in ("state_dict", "model", "ema"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConversionError(f"{str(path)!r} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _infer(options: ADMOptions, state: Mapping[str, Any]) -> ADMOptions:
    """Options with the channel counts the checkpoint's tensors state filled in."""
    try:
        conv_in, conv_out = state["input_blocks.0.0.weight"], state["out.2.weight"]
    except KeyError as exc:
        raise ConversionError(f"not a guided-diffusion UNet: no {exc.args[0]!r} among its {len(state)} keys") from None
    inc = options.in_channels or int(conv_in.shape[1])
    sigma = options.learn_sigma if options.learn_sigma is not None else int(conv_out.shape[0]) == 2 * inc
    channels = options.num_channels or int(conv_in.shape[0])
    return ADMOptions(**{**asdict(options), "in_channels": inc, "learn_sigma": sigma, "num_channels": channels})


def _head_dim(options: ADMOptions, channel_sets: set[int]) -> int:
    if options.num_head_channels > 0:
        return options.num_head_channels
    dims = {c // options.num_heads for c in channel_sets}
    if len(dims) != 1:
        raise ConversionError(f"num_heads={options.num_heads} gives a different head size at each attention level"
                              f" ({sorted(dims)}); UNet2DModel has one attention_head_dim")
    return dims.pop()


def diffusers_config(options: ADMOptions) -> dict[str, Any]:
    """The ``UNet2DModel`` configuration equivalent to ``options`` (channel counts filled in)."""
    assert options.num_channels and options.in_channels and options.learn_sigma is not None
    mult = options.multipliers()
    attn = [options.image_size // 2**level in options.attention_resolutions for level in range(len(mult))]
    channels = [options.num_channels * m for m in mult]
    attended = {c for c, a in zip(channels, attn) if a} | {channels[-1]}  # the middle block attends too
    down = "resnet" if options.resblock_updown else "conv"
    plain_down = "ResnetDownsampleBlock2D" if options.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if options.resblock_updown else "UpBlock2D"
    return {
        "sample_size": options.image_size,
        "in_channels": options.in_channels,
        "out_channels": options.in_channels * (2 if options.learn_sigma else 1),
        "block_out_channels": channels,
        "layers_per_block": options.num_res_blocks,
        "down_block_types": ["AttnDownBlock2D" if a else plain_down for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else plain_up for a in reversed(attn)],
        "downsample_type": down,
        "upsample_type": down,
        "attention_head_dim": _head_dim(options, attended),
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "scale_shift" if options.use_scale_shift_norm else "default",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "time_embedding_type": "positional",
        "act_fn": "silu",
        "dropout": options.dropout,
        "add_attention": True,
        "mid_block_type": "UNetMidBlock2D",
        "center_input_sample": False,
        "num_train_timesteps": options.diffusion_steps,
    }


class _Mapper:
    """Moves source tensors to target names, remembering which source keys were consumed."""

    def __init__(self, source: Mapping[str, Any]) -> None:
        self.source, self.used, self.target = source, set(), {}
        self.missing: list[str] = []

    def take(self, key: str) -> Any:
        if key not in self.source:
            self.missing.append(key)
            return None
        self.used.add(key)
        return self.source[key]

    def copy(self, src: str, dst: str, *, squeeze: bool = False) -> None:
        for suffix in ("weight", "bias"):
            tensor = self.take(f"{src}.{suffix}")
            if tensor is not None:
                self.target[f"{dst}.{suffix}"] = tensor.squeeze(-1) if squeeze and suffix == "weight" else tensor

    def resblock(self, src: str, dst: str) -> None:
        self.copy(f"{src}.in_layers.0", f"{dst}.norm1")
        self.copy(f"{src}.in_layers.2", f"{dst}.conv1")
        self.copy(f"{src}.emb_layers.1", f"{dst}.time_emb_proj")
        self.copy(f"{src}.out_layers.0", f"{dst}.norm2")
        self.copy(f"{src}.out_layers.3", f"{dst}.conv2")
        if f"{src}.skip_connection.weight" in self.source:
            self.copy(f"{src}.skip_connection", f"{dst}.conv_shortcut")

    def attention(self, src: str, dst: str, head_dim: int, new_order: bool) -> None:
        self.copy(f"{src}.norm", f"{dst}.group_norm")
        weight, bias = self.take(f"{src}.qkv.weight"), self.take(f"{src}.qkv.bias")
        if weight is not None and bias is not None:
            rows, width = weight.shape[0], weight.shape[1]
            channels = rows // 3
            heads = max(1, channels // head_dim)
            w, b = weight.reshape(rows, width), bias.reshape(rows)
            if new_order:
                parts_w, parts_b = w.chunk(3, dim=0), b.chunk(3, dim=0)
            else:  # legacy: per head, [q_h, k_h, v_h]
                w4, b3 = w.reshape(heads, 3, channels // heads, width), b.reshape(heads, 3, channels // heads)
                parts_w = tuple(w4[:, i].reshape(channels, width) for i in range(3))
                parts_b = tuple(b3[:, i].reshape(channels) for i in range(3))
            for name, pw, pb in zip(("to_q", "to_k", "to_v"), parts_w, parts_b):
                self.target[f"{dst}.{name}.weight"] = pw.contiguous()
                self.target[f"{dst}.{name}.bias"] = pb.contiguous()
        self.copy(f"{src}.proj_out", f"{dst}.to_out.0", squeeze=True)


def map_state_dict(state: Mapping[str, Any], options: ADMOptions) -> tuple[dict[str, Any], list[str], list[str]]:
    """ADM tensors under diffusers names; also the source keys left over and the ADM keys the options expected but are absent."""
    config = diffusers_config(options)
    head_dim, new_order = config["attention_head_dim"], options.use_new_attention_order
    mult = options.multipliers()
    levels = len(mult)
    attn = [options.image_size // 2**level in options.attention_resolutions for level in range(levels)]
    m = _Mapper(state)
    m.copy("time_embed.0", "time_embedding.linear_1")
    m.copy("time_embed.2", "time_embedding.linear_2")
    m.copy("input_blocks.0.0", "conv_in")
    k = 1
    for level in range(levels):
        for j in range(options.num_res_blocks):
            m.resblock(f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}")
            if attn[level]:
                m.attention(f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", head_dim, new_order)
            k += 1
        if level != levels - 1:
            if options.resblock_updown:
                m.resblock(f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0")
            else:
                m.copy(f"input_blocks.{k}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            k += 1
    m.resblock("middle_block.0", "mid_block.resnets.0")
    m.attention("middle_block.1", "mid_block.attentions.0", head_dim, new_order)
    m.resblock("middle_block.2", "mid_block.resnets.1")
    k = 0
    for i, level in enumerate(reversed(range(levels))):
        for j in range(options.num_res_blocks + 1):
            m.resblock(f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}")
            index = 1
            if attn[level]:
                m.attention(f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}", head_dim, new_order)
                index = 2
            if level != 0 and j == options.num_res_blocks:
                if options.resblock_updown:
                    m.resblock(f"output_blocks.{k}.{index}", f"up_blocks.{i}.upsamplers.0")
                else:
                    m.copy(f"output_blocks.{k}.{index}.conv", f"up_blocks.{i}.upsamplers.0.conv")
            k += 1
    m.copy("out.0", "conv_norm_out")
    m.copy("out.2", "conv_out")
    leftover = sorted(set(state) - m.used)
    return m.target, leftover, m.missing


def _listed(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def build_unet(state: Mapping[str, Any], options: ADMOptions) -> Any:
    """A ``UNet2DModel`` holding the checkpoint's weights, every key on both sides accounted for."""
    import torch
    from diffusers import UNet2DModel

    options = _infer(options, state)
    if "label_emb.weight" in state:
        raise ConversionError("a class-conditional checkpoint (label_emb): only unconditional ADM models convert")
    mapped, leftover, absent = map_state_dict(state, options)
    if leftover or absent:
        parts = []
        if leftover:
            parts.append(f"{len(leftover)} checkpoint key(s) not used: {_listed(leftover)}")
        if absent:
            parts.append(f"{len(absent)} key(s) the options expect are not in the checkpoint: {_listed(absent)}")
        raise ConversionError("; ".join(parts) + " (check --num-res-blocks, --channel-mult, --attention-resolutions,"
                              " --resblock-updown against the model's training flags)")
    unet = UNet2DModel(**{k: v for k, v in diffusers_config(options).items() if k != "num_train_timesteps"})
    expected = unet.state_dict()
    unfilled = sorted(set(expected) - set(mapped))
    unknown = sorted(set(mapped) - set(expected))
    wrong = [f"{k} {tuple(mapped[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in mapped and tuple(mapped[k].shape) != tuple(v.shape)]
    if unfilled or unknown or wrong:
        parts = [f"{len(unfilled)} diffusers key(s) left unfilled: {_listed(unfilled)}"] if unfilled else []
        parts += [f"{len(unknown)} mapped key(s) diffusers does not have: {_listed(unknown)}"] if unknown else []
        parts += [f"{len(wrong)} shape mismatch(es) (checkpoint vs options): {_listed(wrong)}"] if wrong else []
        raise ConversionError("; ".join(parts))
    unet.load_state_dict({k: v.to(torch.float32) for k, v in mapped.items()}, strict=True)
    return unet


def scheduler_config(options: ADMOptions) -> dict[str, Any]:
    """The ``DDPMScheduler`` settings of the model's training noise schedule."""
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": options.diffusion_steps,
        "beta_schedule": "linear" if options.noise_schedule == "linear" else "squaredcos_cap_v2",
        # guided-diffusion's linear schedule is scaled to 1000 steps: 1e-4 .. 0.02 at 1000
        "beta_start": 0.0001 * 1000 / options.diffusion_steps,
        "beta_end": 0.02 * 1000 / options.diffusion_steps,
        "variance_type": "learned_range" if options.learn_sigma else "fixed_small",
        "clip_sample": True,
        "prediction_type": "epsilon",
    }


def convert_guided_diffusion(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str],
                             options: ADMOptions | None = None, *, overwrite: bool = False) -> Path:
    """Convert ``checkpoint`` into the diffusers folder ``out`` (``config.json``, weights, scheduler config).

    Nothing is written unless the whole checkpoint converted; ``out`` must be new, empty, or an
    earlier conversion (replaced with ``overwrite``).
    """
    import json

    from ..utils.files import atomic_write_text, sha256_file

    options = options or ADMOptions()
    state = load_checkpoint(checkpoint)
    unet = build_unet(state, options)
    resolved = _infer(options, state)
    out = Path(out)
    prepare_output(out, kind="convert", what="converted model", replace=overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        unet.save_pretrained(str(staging))
        written = []
        for file in sorted(staging.iterdir()):
            os.replace(file, out / file.name)
            written.append(file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_text(out / "scheduler_config.json", json.dumps(scheduler_config(resolved), indent=2) + "\n")
    flags = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(resolved).items() if k != "extra"}
    flags["source"] = {"checkpoint": str(checkpoint), "sha256": sha256_file(checkpoint)}
    atomic_write_text(out / ADM_FLAGS, json.dumps(flags, indent=2) + "\n")  # what it was converted with
    write_record(out, "convert", [*written, "scheduler_config.json", ADM_FLAGS])
    return out
