"""Converters from checkpoints in their authors' formats into the diffusers folders the generators load.

One module per source format (``guided_diffusion``: OpenAI ADM / P2-weighting UNets;
``compvis_ldm``: the CompVis latent-diffusion inpainting model), and ``adm_unet``: the one mapping
of the UNet both share. Each maps every key of the source onto a diffusers model and refuses,
listing them, when a source key is left over or a target key is left unfilled: a half-converted
model would sample noise quietly. torch and diffusers are imported inside the functions that need
them.
"""

from ..errors import UserError

__all__ = ["ConversionError"]


class ConversionError(UserError, ValueError):
    """A checkpoint that does not fit the options: what is left over or missing, named."""
