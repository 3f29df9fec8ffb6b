"""``bench convert FORMAT CKPT OUT``: checkpoints in their authors' formats -> diffusers folders.

One subcommand per format, each a thin layer over :mod:`dolos_bench.convert`; a new format adds
its subcommand to the :func:`convert` group (``@convert.command(...)``) in its own module or here.
"""

from __future__ import annotations

import click

from .commands import main


def _ints(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@main.group(short_help="Convert a checkpoint into a diffusers model folder.")
def convert() -> None:
    """Convert checkpoints in their authors' formats into the diffusers folders the generators load."""


@convert.command("guided-diffusion", short_help="OpenAI guided-diffusion (ADM, P2-weighting) UNet -> UNet2DModel.")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--image-size", default=256, show_default=True, type=click.IntRange(8), help="--image_size of training.")
@click.option("--num-channels", default=None, type=click.IntRange(1),
              help="--num_channels (default: read from the checkpoint).")
@click.option("--num-res-blocks", default=1, show_default=True, type=click.IntRange(1), help="--num_res_blocks.")
@click.option("--channel-mult", default=None, metavar="M,M,...",
              help="--channel_mult (default: guided-diffusion's for the image size; 1,1,2,2,4,4 at 256).")
@click.option("--attention-resolutions", default="16", show_default=True, metavar="R,R,...",
              help="--attention_resolutions: feature-map sizes with self-attention.")
@click.option("--num-heads", default=4, show_default=True, type=click.IntRange(1),
              help="--num_heads (used when --num-head-channels is -1).")
@click.option("--num-head-channels", default=64, show_default=True, type=int, help="--num_head_channels (-1: use --num-heads).")
@click.option("--learn-sigma/--no-learn-sigma", default=None,
              help="--learn_sigma (default: read from the checkpoint's output channels).")
@click.option("--resblock-updown/--no-resblock-updown", default=True, show_default=True, help="--resblock_updown.")
@click.option("--use-scale-shift-norm/--no-use-scale-shift-norm", default=True, show_default=True,
              help="--use_scale_shift_norm.")
@click.option("--use-new-attention-order", is_flag=True, help="--use_new_attention_order True.")
@click.option("--diffusion-steps", default=1000, show_default=True, type=click.IntRange(1), help="--diffusion_steps.")
@click.option("--noise-schedule", type=click.Choice(["linear", "cosine"]), default="linear", show_default=True,
              help="--noise_schedule (written to scheduler_config.json).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier conversion in OUT.")
def guided_diffusion(checkpoint: str, out: str, image_size: int, num_channels: int | None, num_res_blocks: int,
                     channel_mult: str | None, attention_resolutions: str, num_heads: int, num_head_channels: int,
                     learn_sigma: bool | None, resblock_updown: bool, use_scale_shift_norm: bool,
                     use_new_attention_order: bool, diffusion_steps: int, noise_schedule: str, overwrite: bool) -> None:
    """Convert the guided-diffusion CHECKPOINT (.pt state dict) into the diffusers folder OUT.

    The defaults are the P2-weighting 256² flags (CelebA-HQ / FFHQ, the Dolos models); give the
    training flags of another model. OUT then works as `repaint`'s and `ddpm-full`'s `model`.
    """
    from ..convert.guided_diffusion import ADMOptions, convert_guided_diffusion

    options = ADMOptions(
        image_size=image_size, num_channels=num_channels, num_res_blocks=num_res_blocks,
        channel_mult=_ints(channel_mult), attention_resolutions=_ints(attention_resolutions) or (),
        num_heads=num_heads, num_head_channels=num_head_channels, learn_sigma=learn_sigma,
        resblock_updown=resblock_updown, use_scale_shift_norm=use_scale_shift_norm,
        use_new_attention_order=use_new_attention_order, diffusion_steps=diffusion_steps,
        noise_schedule=noise_schedule)  # type: ignore[arg-type]
    folder = convert_guided_diffusion(checkpoint, out, options, overwrite=overwrite)
    click.echo(f"wrote a diffusers UNet2DModel to {folder} (use it as `model: {folder}` of repaint or ddpm-full)")


@convert.command("compvis-ldm", short_help="CompVis latent-diffusion inpainting last.ckpt -> vqvae/ + unet/ + scheduler/.")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--ema/--no-ema", default=None, help="Use the EMA UNet weights (default: when the checkpoint has them,"
              " as the repository's scripts/inpaint.py samples).")
@click.option("--trust-pickle", is_flag=True, help="Unpickle a checkpoint that holds more than tensors (runs code"
              " from the file: only for files you trust).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier conversion in OUT.")
@click.option("--in-channels", type=click.IntRange(1), help="unet in_channels [7].")
@click.option("--out-channels", type=click.IntRange(1), help="unet out_channels [3].")
@click.option("--model-channels", type=click.IntRange(1), help="unet model_channels [256].")
@click.option("--channel-mult", metavar="M,M,...", help="unet channel_mult [1,2,3,4].")
@click.option("--num-res-blocks", type=click.IntRange(1), help="unet num_res_blocks [2].")
@click.option("--attention-resolutions", metavar="F,F,...", help="unet attention_resolutions, down-sampling factors [8,4,2].")
@click.option("--num-heads", type=click.IntRange(1), help="unet num_heads [8].")
@click.option("--num-head-channels", type=int, help="unet num_head_channels [-1: use --num-heads].")
@click.option("--resblock-updown/--no-resblock-updown", default=None, help="unet resblock_updown [true].")
@click.option("--use-scale-shift-norm/--no-use-scale-shift-norm", default=None, help="unet use_scale_shift_norm [false].")
@click.option("--image-size", type=click.IntRange(1), help="unet image_size, the latent side [64].")
@click.option("--embed-dim", type=click.IntRange(1), help="first stage embed_dim [3].")
@click.option("--n-embed", type=click.IntRange(1), help="first stage n_embed, codebook size [8192].")
@click.option("--z-channels", type=click.IntRange(1), help="ddconfig z_channels [3].")
@click.option("--ch", type=click.IntRange(1), help="ddconfig ch [128].")
@click.option("--ch-mult", metavar="M,M,...", help="ddconfig ch_mult [1,2,4].")
@click.option("--vq-num-res-blocks", type=click.IntRange(1), help="ddconfig num_res_blocks [2].")
@click.option("--vq-mid-attention/--no-vq-mid-attention", default=None,
              help="attention in the autoencoder's middle blocks [false: attn_type none].")
@click.option("--resolution", type=click.IntRange(1), help="ddconfig resolution [256].")
@click.option("--timesteps", type=click.IntRange(1), help="timesteps [1000].")
@click.option("--linear-start", type=float, help="linear_start [0.0015].")
@click.option("--linear-end", type=float, help="linear_end [0.0205].")
def compvis_ldm(checkpoint: str, out: str, ema: bool | None, trust_pickle: bool, overwrite: bool,
                channel_mult: str | None, attention_resolutions: str | None, ch_mult: str | None,
                **architecture: object) -> None:
    """Convert the CompVis latent-diffusion inpainting CHECKPOINT (models/ldm/inpainting_big/last.ckpt)
    into the folder OUT that the `ldm-inpaint` generator loads.

    Architecture options default to the released model's config.yaml (values in brackets); give
    another model's values to convert it. Every checkpoint key must find its place, or nothing is
    written and the leftovers are listed.
    """
    from pathlib import Path

    from ..convert.compvis_ldm import arch_from_options, convert_compvis_ldm, describe

    arch = arch_from_options(channel_mult=_ints(channel_mult), attention_resolutions=_ints(attention_resolutions),
                             ch_mult=_ints(ch_mult), **architecture)
    sidecar = convert_compvis_ldm(Path(checkpoint), Path(out), arch, use_ema=ema, trust_pickle=trust_pickle,
                                  overwrite=overwrite, progress=lambda message: click.echo(message, err=True))
    click.echo(f"{describe(sidecar)}; wrote {out} (use it as `model: {out}` of ldm-inpaint)")
