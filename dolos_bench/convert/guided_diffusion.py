"""OpenAI guided-diffusion (ADM) UNet checkpoints -> a diffusers ``UNet2DModel`` folder.

The P2-weighting CelebA-HQ and FFHQ models the Dolos data was made with (Choi et al., CVPR 2022)
are ADM UNets saved as a plain ``state_dict`` (``torch.save(model.state_dict())``). The key
mapping onto ``UNet2DModel`` and its accounting (every key consumed, every target filled) are
:mod:`.adm_unet`'s, shared with the CompVis converter; this module reads guided-diffusion's flags
into an :class:`~.adm_unet.UNetLayout` (attention at feature-map *sizes*, ``out_channels = 2 x in``
for ``learn_sigma``: epsilon, then the variance interpolation ``v``; a fixed head count must give
one head size, which the config then states) and writes the folder.

Hyperparameters come from :class:`ADMOptions`; ``in``/``out``/base channels are read from the
checkpoint's own tensors. Its defaults are the flags of the P2-weighting README for its 256²
models (``--attention_resolutions 16 --diffusion_steps 1000 --image_size 256
--learn_sigma True --noise_schedule linear --num_channels 128 --num_head_channels 64
--num_res_blocks 1 --resblock_updown True --use_scale_shift_norm True``, channel multipliers
``1,1,2,2,4,4``, its ``script_util``'s default at 256²), checked against that README and
``script_util.py`` (docs/generators.md); for another checkpoint, check its own README. A wrong option shows as a shape mismatch or as keys left over, each
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

from ..utils.outdir import prepare_output, write_record
from . import ConversionError
from .adm_unet import UNetLayout, listed, map_unet, target_problems, unet_config
from .checkpoints import read_state_dict

ADM_FLAGS = "adm_options.json"

__all__ = ["ADMOptions", "ConversionError", "convert_guided_diffusion", "diffusers_config", "map_state_dict"]


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
    path = Path(path)
    state = read_state_dict(path, unwrap=("state_dict", "model", "ema"), not_found=(
        f"no checkpoint at {str(path)!r}: give the guided-diffusion .pt file (e.g. the"
        " P2-weighting celebahq_p2.pt / ffhq_p2.pt from its README's links)"))
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


def layout(options: ADMOptions) -> UNetLayout:
    """The UNet layout ``options`` (channel counts filled in, :func:`_infer`) describe."""
    assert options.num_channels and options.in_channels and options.learn_sigma is not None
    mult = options.multipliers()
    sizes = [options.image_size // 2**level for level in range(len(mult))]  # feature-map side per level
    return UNetLayout(
        in_channels=options.in_channels, out_channels=options.in_channels * (2 if options.learn_sigma else 1),
        model_channels=options.num_channels, channel_mult=mult, num_res_blocks=options.num_res_blocks,
        attention=tuple(size in options.attention_resolutions for size in sizes),
        resblock_updown=options.resblock_updown, use_scale_shift_norm=options.use_scale_shift_norm,
        image_size=options.image_size, num_head_channels=options.num_head_channels, num_heads=options.num_heads,
        head_count="as_size", new_attention_order=options.use_new_attention_order)


def diffusers_config(options: ADMOptions) -> dict[str, Any]:
    """The ``UNet2DModel`` configuration equivalent to ``options`` (channel counts filled in)."""
    return {**unet_config(layout(options)), "attn_norm_num_groups": 32, "dropout": options.dropout,
            "mid_block_type": "UNetMidBlock2D", "num_train_timesteps": options.diffusion_steps}


def map_state_dict(state: Mapping[str, Any], options: ADMOptions) -> tuple[dict[str, Any], list[str], list[str]]:
    """ADM tensors under diffusers names; also the source keys left over and the ADM keys the options expected but are absent."""
    mapped = map_unet(state, layout(options))
    return mapped.tensors, mapped.leftover, mapped.absent


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
            parts.append(f"{len(leftover)} checkpoint key(s) not used: {listed(leftover)}")
        if absent:
            parts.append(f"{len(absent)} key(s) the options expect are not in the checkpoint: {listed(absent)}")
        raise ConversionError("; ".join(parts) + " (check --num-res-blocks, --channel-mult, --attention-resolutions,"
                              " --resblock-updown against the model's training flags)")
    unet = UNet2DModel(**{k: v for k, v in diffusers_config(options).items() if k != "num_train_timesteps"})
    problems = target_problems("unet", mapped, unet)
    if problems:
        raise ConversionError("; ".join(problems))
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
