"""``bench convert compvis-ldm``: the CompVis latent-diffusion inpainting checkpoint to diffusers folders.

The input is the ``last.ckpt`` of the latent-diffusion repository's inpainting model
(``models/ldm/inpainting_big``; https://ommer-lab.com/files/latent-diffusion/inpainting_big.zip),
a Lightning checkpoint whose ``state_dict`` holds

* ``model.diffusion_model.*``: the UNet, in the ``openaimodel.UNetModel`` layout
  (``input_blocks`` / ``middle_block`` / ``output_blocks``; ResBlocks ``in_layers`` / ``emb_layers``
  / ``out_layers`` / ``skip_connection``; attention ``norm`` / ``qkv`` / ``proj_out`` as 1-D convs);
* ``model_ema.*``: its exponential moving average, names without dots (the repository's
  ``scripts/inpaint.py`` samples inside ``ema_scope``, so these are used when present);
* ``first_stage_model.*``: the VQ-f4 autoencoder in the taming / ldm layout (``encoder.down.I.block.J``,
  ``mid.block_1``, ``decoder.up.I`` numbered from the lowest resolution up, ``quantize.embedding``);
* ``cond_stage_model.*`` (``cond_stage_config: __is_first_stage__``: the same module again) and the
  schedule's buffers (``betas``, ``alphas_cumprod``, ...).

The output folder holds ``vqvae/`` (``VQModel``), ``unet/`` (``UNet2DModel``), ``scheduler/``
(``DDIMScheduler``) and ``dolos_ldm.json`` (the architecture, the source's sha256, and the UNet's
head count, which a ``UNet2DModel`` config cannot state: see
:mod:`dolos_bench.builder.generators.ldm_inpaint`). Every source key is consumed (mapped, checked
equal to the tensor it duplicates, or a schedule buffer checked against the schedule) and every
target key filled, or :class:`ConversionError` lists the leftovers.

The UNet is the ADM UNet under ADM's names; its mapping and key accounting are
:mod:`.adm_unet`'s, shared with the guided-diffusion converter (attention at down-sampling
*factors*, a fixed head count recorded, not stated in the config). The VQ autoencoder's mapping is
this module's. The key layout is that of the latent-diffusion repository's modules (the same names
diffusers' LDM conversion scripts map); ``tests/compvis_reference.py`` re-implements those modules under
those names, and the tests check that the converted diffusers models compute what they compute.

Architecture (:class:`InpaintArch` defaults) is the released model's ``models/ldm/inpainting_big/
config.yaml`` of CompVis/latent-diffusion: UNet ``in_channels 7, out_channels 3, model_channels 256,
channel_mult [1, 2, 3, 4], num_res_blocks 2, attention_resolutions [8, 4, 2], num_heads 8,
resblock_updown true`` (``use_scale_shift_norm`` false, ``image_size 64``); VQ ``embed_dim 3,
n_embed 8192, z_channels 3, ch 128, ch_mult [1, 2, 4], num_res_blocks 2, attn_resolutions [],
attn_type none`` (no attention in the middle blocks either); schedule ``timesteps 1000,
linear_start 0.0015, linear_end 0.0205`` (ldm's "linear" = diffusers' ``scaled_linear``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..utils.files import atomic_write_json, sha256_file
from ..utils.outdir import RECORD, files_under, prepare_output, write_record
from ..weights.formats import LDM_SIDECAR as SIDECAR
from ..weights.formats import compvis_ddim
from . import ConversionError
from .adm_unet import UNetLayout, listed, map_unet, target_problems
from .adm_unet import unet_config as adm_unet_config
from .checkpoints import read_state_dict

__all__ = ["ConversionError", "InpaintArch", "convert_compvis_ldm", "convert_state_dict", "unet_config",
           "vq_config", "scheduler_config", "KIND", "SIDECAR"]

KIND = "convert"  # the record kind every `bench convert` output shares

UNET = "model.diffusion_model."
VQ = "first_stage_model."
COND = "cond_stage_model."
EMA = "model_ema."
#: LatentDiffusion's registered schedule buffers (ldm/models/diffusion/ddpm.py, register_schedule).
SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "lvlb_weights", "logvar",
})


@dataclass(frozen=True)
class InpaintArch:
    """The CompVis inpainting model's hyperparameters (defaults: the released config; module docstring)."""

    in_channels: int = 7
    out_channels: int = 3
    model_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (8, 4, 2)
    num_heads: int = 8
    num_head_channels: int = -1  # > 0: a fixed head size instead of a fixed head count
    resblock_updown: bool = True
    use_scale_shift_norm: bool = False
    image_size: int = 64  # latent side the UNet was trained at
    embed_dim: int = 3
    n_embed: int = 8192
    z_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    vq_num_res_blocks: int = 2
    vq_mid_attention: bool = False  # ddconfig attn_type: none
    resolution: int = 256
    timesteps: int = 1000
    linear_start: float = 0.0015
    linear_end: float = 0.0205

    def attention_levels(self) -> list[bool]:
        """Which UNet levels have attention: ``attention_resolutions`` are down-sampling factors."""
        return [2**level in self.attention_resolutions for level in range(len(self.channel_mult))]

    def heads(self, channels: int) -> int:
        """Heads of an attention layer over ``channels`` (the layout's rule, :meth:`.UNetLayout.heads`)."""
        return unet_layout(self).heads(channels)


# -- target configurations ---------------------------------------------------------------------------


def unet_layout(arch: InpaintArch) -> UNetLayout:
    """``arch``'s UNet as :mod:`.adm_unet` states it (a fixed head count is recorded, not configured)."""
    return UNetLayout(
        in_channels=arch.in_channels, out_channels=arch.out_channels, model_channels=arch.model_channels,
        channel_mult=arch.channel_mult, num_res_blocks=arch.num_res_blocks, attention=tuple(arch.attention_levels()),
        resblock_updown=arch.resblock_updown, use_scale_shift_norm=arch.use_scale_shift_norm,
        image_size=arch.image_size, num_head_channels=arch.num_head_channels, num_heads=arch.num_heads,
        head_count="recorded")


def unet_config(arch: InpaintArch) -> dict[str, Any]:
    """The ``UNet2DModel`` config that computes what ``openaimodel.UNetModel`` with ``arch`` computes.

    ``attention_head_dim`` is None (one head) when the model fixes the head *count*;
    :func:`~dolos_bench.builder.generators.ldm_inpaint.set_attention_heads` applies
    ``dolos_ldm.json``'s ``attention_heads`` after loading.
    """
    return adm_unet_config(unet_layout(arch))


def vq_config(arch: InpaintArch) -> dict[str, Any]:
    """The ``VQModel`` config of the taming/ldm VQ autoencoder with ``arch``'s ``ddconfig``."""
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": arch.z_channels, "vq_embed_dim": arch.embed_dim,
        "num_vq_embeddings": arch.n_embed, "block_out_channels": [arch.ch * m for m in arch.ch_mult],
        "down_block_types": ["DownEncoderBlock2D"] * len(arch.ch_mult),
        "up_block_types": ["UpDecoderBlock2D"] * len(arch.ch_mult),
        "layers_per_block": arch.vq_num_res_blocks, "norm_num_groups": 32, "act_fn": "silu",
        "sample_size": arch.resolution, "scaling_factor": 1.0, "mid_block_add_attention": arch.vq_mid_attention,
    }


def scheduler_config(arch: InpaintArch) -> dict[str, Any]:
    """``DDIMScheduler`` settings reproducing ldm's ``DDIMSampler`` over ``arch``'s schedule
    (:func:`dolos_bench.weights.formats.compvis_ddim`, which ``ldm-inpaint`` uses too)."""
    return compvis_ddim(arch.timesteps, arch.linear_start, arch.linear_end)


# -- key maps: (source module prefix, target module prefix, kind) ---------------------------------------


def _vq_modules(arch: InpaintArch) -> list[tuple[str, str, str]]:
    n, nrb = len(arch.ch_mult), arch.vq_num_res_blocks
    out = [("encoder.conv_in", "encoder.conv_in", "plain"), ("decoder.conv_in", "decoder.conv_in", "plain"),
           ("quant_conv", "quant_conv", "plain"), ("post_quant_conv", "post_quant_conv", "plain"),
           ("quantize.embedding", "quantize.embedding", "plain")]
    for i in range(n):
        out += [(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", "vq_resnet") for j in range(nrb)]
        if i < n - 1:
            out.append((f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv", "plain"))
        block = n - 1 - i  # taming numbers decoder levels from the lowest resolution; diffusers in call order
        out += [(f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{block}.resnets.{j}", "vq_resnet") for j in range(nrb + 1)]
        if i > 0:
            out.append((f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{block}.upsamplers.0.conv", "plain"))
    for side in ("encoder", "decoder"):
        out += [(f"{side}.mid.block_1", f"{side}.mid_block.resnets.0", "vq_resnet"),
                (f"{side}.mid.block_2", f"{side}.mid_block.resnets.1", "vq_resnet"),
                (f"{side}.norm_out", f"{side}.conv_norm_out", "plain"), (f"{side}.conv_out", f"{side}.conv_out", "plain")]
        if arch.vq_mid_attention:
            out.append((f"{side}.mid.attn_1", f"{side}.mid_block.attentions.0", "vq_attention"))
    return out


_VQ_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_VQ_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _squeeze(t: Any) -> Any:
    """A 1x1 conv weight (1-D or 2-D) as the linear weight diffusers' attention holds."""
    return t.reshape(t.shape[0], t.shape[1]) if t.ndim > 2 else t


def _rename(kind: str, rest: str, tensor: Any) -> list[tuple[str, Any]] | None:
    """Target (sub-key, tensor) pairs for one source tensor, or None when ``rest`` is not of ``kind``."""
    sub, _, param = rest.rpartition(".")
    if param not in ("weight", "bias"):
        return None
    if kind == "plain":
        return [(param, tensor)] if not sub else None
    if kind == "vq_resnet":
        return [(f"{_VQ_RESNET[sub]}.{param}", tensor)] if sub in _VQ_RESNET else None
    if kind == "vq_attention":
        if sub not in _VQ_ATTENTION:
            return None
        return [(f"{_VQ_ATTENTION[sub]}.{param}", _squeeze(tensor) if sub != "norm" else tensor)]
    raise AssertionError(kind)


def _map(modules: list[tuple[str, str, str]], source: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Renamed tensors and the source keys no module claims (longest prefix wins)."""
    table = {src: (dst, kind) for src, dst, kind in modules}
    target: dict[str, Any] = {}
    leftover = []
    for key, tensor in source.items():
        parts = key.split(".")
        found = None
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in table:
                found = (prefix, *table[prefix])
                break
        renamed = None
        if found is not None:
            prefix, dst, kind = found
            renamed = _rename(kind, key[len(prefix) + 1 :], tensor)
        if renamed is None:
            leftover.append(key)
            continue
        for sub, value in renamed:
            target[f"{dst}.{sub}"] = value
    return target, leftover


# -- the conversion ------------------------------------------------------------------------------------


@dataclass
class Converted:
    """Two diffusers state dicts and what was done with every source key."""

    unet: dict[str, Any]
    vq: dict[str, Any]
    weights: str  # "ema" or "raw"
    counts: dict[str, int]


def _ema_name(key: str) -> str:
    """LitEma's buffer name for ``model.diffusion_model.X``: ``model_ema.diffusion_modelX`` without dots."""
    return EMA + key.removeprefix("model.").replace(".", "")


def _check_schedule(state: dict[str, Any], arch: InpaintArch, problems: list[str]) -> None:
    import torch

    betas = state.get("betas")
    if betas is None:
        return
    want = torch.linspace(arch.linear_start**0.5, arch.linear_end**0.5, arch.timesteps, dtype=torch.float64) ** 2
    got = betas.detach().to(torch.float64).flatten()
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-7):
        first = f"{float(got[0]):.6g}..{float(got[-1]):.6g} over {got.numel()} steps" if got.numel() else "empty"
        problems.append(f"betas ({first}) are not ldm's linear schedule {arch.linear_start}..{arch.linear_end} over"
                        f" {arch.timesteps} steps: pass --linear-start/--linear-end/--timesteps of the model's config")
    scale = state.get("scale_factor")
    if scale is not None and abs(float(scale) - 1.0) > 1e-6:
        problems.append(f"scale_factor is {float(scale):.6g}; the VQ inpainting model uses 1 (this is another LDM)")


def convert_state_dict(state: dict[str, Any], arch: InpaintArch = InpaintArch(), use_ema: bool | None = None,
                       ) -> Converted:
    """Map a CompVis ``state_dict`` onto ``UNet2DModel`` / ``VQModel`` keys (module docstring).

    ``use_ema``: None = the EMA weights when the checkpoint has them (as ``scripts/inpaint.py``).
    Raises :class:`ConversionError` listing leftover source keys, unfilled or unexpected target
    keys and shape mismatches, all at once.
    """
    import torch
    from diffusers import UNet2DModel, VQModel

    problems: list[str] = []
    ema_keys = {k for k in state if k.startswith(EMA)}
    unet_src = {k[len(UNET):]: v for k, v in state.items() if k.startswith(UNET)}
    have_ema = any(_ema_name(UNET + k) in state for k in unet_src)
    ema = have_ema if use_ema is None else use_ema
    if ema and not have_ema:
        raise ConversionError("the checkpoint has no EMA weights (model_ema.*); convert without --ema")
    used = set(f"{UNET}{k}" for k in unet_src)
    if have_ema:
        for k in unet_src:
            name = _ema_name(UNET + k)
            if name in state:
                used.add(name)
                if ema:
                    unet_src[k] = state[name]
        used |= {k for k in ema_keys if k in (f"{EMA}decay", f"{EMA}num_updates")}
    vq_src = {k[len(VQ):]: v for k, v in state.items() if k.startswith(VQ)}
    used |= {VQ + k for k in vq_src}
    for key in (k for k in state if k.startswith(COND)):
        twin = VQ + key[len(COND):]
        if twin in state and torch.equal(state[key], state[twin]):
            used.add(key)  # __is_first_stage__: the autoencoder again
    if "scale_factor" in state:
        used.add("scale_factor")
    used |= SCHEDULE_BUFFERS & set(state)
    _check_schedule(state, arch, problems)

    unet = map_unet(unet_src, unet_layout(arch))
    vq_sd, vq_left = _map(_vq_modules(arch), vq_src)
    leftover = [UNET + k for k in unet.leftover] + [VQ + k for k in vq_left] + sorted(set(state) - used)
    if leftover:
        problems.append(f"{len(leftover)} source key(s) that this architecture has no place for: {listed(leftover)}")
    if unet.absent:
        problems.append(f"{len(unet.absent)} key(s) the architecture expects are not in the checkpoint:"
                        f" {listed([UNET + k for k in unet.absent])}")
    problems += target_problems("unet", unet.tensors, UNet2DModel(**unet_config(arch)))
    problems += target_problems("vqvae", vq_sd, VQModel(**vq_config(arch)))
    if problems:
        raise ConversionError("the checkpoint does not match the CompVis inpainting architecture given: "
                              + "; ".join(problems) + ". Pass the model's own config values (bench convert"
                              " compvis-ldm --help) or check that this is the inpainting model's last.ckpt")
    counts = {"unet": len(unet.tensors), "vqvae": len(vq_sd), "source_keys": len(state)}
    return Converted(unet.tensors, vq_sd, "ema" if ema else "raw", counts)


def load_checkpoint(path: Path, trust_pickle: bool = False) -> dict[str, Any]:
    """The ``state_dict`` of a Lightning ``.ckpt`` (or a plain state dict, ``.pt``, ``.safetensors``).

    Pickled files are read with ``weights_only=True``; one that needs arbitrary objects is refused
    unless ``trust_pickle`` (a pickle can run code: only for files from a source you trust).
    """
    return read_state_dict(path, trust_pickle=trust_pickle, not_found=(
        f"checkpoint not found: {path} (the CompVis inpainting model's last.ckpt, from"
        " https://ommer-lab.com/files/latent-diffusion/inpainting_big.zip)"))


def convert_compvis_ldm(checkpoint: Path, out: Path, arch: InpaintArch = InpaintArch(), *,
                        use_ema: bool | None = None, trust_pickle: bool = False, overwrite: bool = False,
                        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Convert ``checkpoint`` into ``out`` (vqvae/, unet/, scheduler/, dolos_ldm.json); returns the sidecar.

    Nothing is written until the whole checkpoint has mapped; the folder follows the toolkit's
    output rule (:func:`~dolos_bench.utils.outdir.prepare_output`: a previous conversion is
    replaced only with ``overwrite``, a folder with foreign files is refused).
    """
    from diffusers import DDIMScheduler, UNet2DModel, VQModel

    say = progress or (lambda message: None)
    checkpoint, out = Path(checkpoint), Path(out)
    say(f"reading {checkpoint}")
    state = load_checkpoint(checkpoint, trust_pickle)
    converted = convert_state_dict(state, arch, use_ema)
    say("building the diffusers models")
    unet = UNet2DModel(**unet_config(arch))
    unet.load_state_dict(converted.unet, strict=True)
    vq = VQModel(**vq_config(arch))
    vq.load_state_dict(converted.vq, strict=True)
    del state
    sidecar = {
        "format": "compvis-ldm-inpaint", "source": {"file": checkpoint.name, "sha256": sha256_file(checkpoint)},
        "weights": converted.weights, "architecture": dataclasses.asdict(arch),
        "attention_heads": unet_layout(arch).recorded_heads(),
        "keys": converted.counts,
    }
    prepare_output(out, kind=KIND, what="converted model", replace=overwrite)
    say(f"writing {out}")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        unet.save_pretrained(staging / "unet")
        vq.save_pretrained(staging / "vqvae")
        DDIMScheduler(**scheduler_config(arch)).save_pretrained(staging / "scheduler")
        atomic_write_json(staging / SIDECAR, sidecar)
        for entry in sorted(staging.iterdir()):
            os.replace(entry, out / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # our own staging folder, emptied by the moves
    write_record(out, KIND, [f for f in files_under(out) if f != RECORD])
    return sidecar


def arch_from_options(**options: Any) -> InpaintArch:
    """An :class:`InpaintArch` from CLI options (None = the released config's value)."""
    fields = {f.name for f in dataclasses.fields(InpaintArch)}
    return InpaintArch(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items()
                          if v is not None and k in fields})


def describe(sidecar: dict[str, Any]) -> str:
    """One line for the CLI: what was written."""
    keys = sidecar["keys"]
    return (f"converted {sidecar['source']['file']} ({sidecar['weights']} weights): {keys['unet']} UNet and"
            f" {keys['vqvae']} VQ tensors from {keys['source_keys']} source keys")

