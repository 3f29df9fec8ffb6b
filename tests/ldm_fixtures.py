"""Tiny random latent-diffusion models, saved the real way (``save_pretrained``), for the LDM tests.

A VQ autoencoder with two stages (factor 2, 3 latent channels, 64 codes) and a two-stage UNet of
16/32 channels with attention in its second stage: a 64 px image is a 32 px latent and one UNet
call takes a few milliseconds on one CPU thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LATENT = 3


def tiny_vq(seed: int = 0) -> Any:
    import torch
    from diffusers import VQModel

    torch.manual_seed(seed)
    return VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                   up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                   latent_channels=LATENT, num_vq_embeddings=64, norm_num_groups=4, scaling_factor=1.0,
                   mid_block_add_attention=False).eval()


def tiny_kl(seed: int = 0) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4, sample_size=32).eval()


def tiny_unet(in_channels: int, out_channels: int, seed: int = 1) -> Any:
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=16, in_channels=in_channels, out_channels=out_channels,
                       block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
                       downsample_type="resnet", upsample_type="resnet", norm_num_groups=8,
                       attention_head_dim=8, flip_sin_to_cos=True, freq_shift=0).eval()


def save_unconditional_ldm(folder: Path, autoencoder: str = "vq") -> Path:
    """vqvae/ (or vae/), unet/ (latent -> latent) and scheduler/ (DDIM config, as the hub LDM has)."""
    from diffusers import DDIMScheduler

    vae = tiny_vq() if autoencoder == "vq" else tiny_kl()
    vae.save_pretrained(folder / ("vqvae" if autoencoder == "vq" else "vae"))
    channels = vae.config.latent_channels
    tiny_unet(channels, channels).save_pretrained(folder / "unet")
    DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                  clip_sample=False).save_pretrained(folder / "scheduler")
    return folder


def save_inpainting_ldm(folder: Path) -> Path:
    """vqvae/ and a 7-channel unet/ (no scheduler/: the generator's CompVis default applies)."""
    tiny_vq().save_pretrained(folder / "vqvae")
    tiny_unet(2 * LATENT + 1, LATENT).save_pretrained(folder / "unet")
    return folder


def repaint_ldm_params(folder: Path) -> dict[str, Any]:
    """Parameters of a fast repaint-ldm (few steps) over a tiny model written into ``folder``."""
    return {"model": str(save_unconditional_ldm(folder)), "steps": 4, "jump_length": 2, "jump_n_sample": 2}


def ldm_inpaint_params(folder: Path) -> dict[str, Any]:
    """Parameters of a fast ldm-inpaint (3 DDIM steps) over a tiny model written into ``folder``."""
    return {"model": str(save_inpainting_ldm(folder)), "steps": 3}
