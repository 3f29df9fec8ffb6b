"""What the latent-diffusion generators (``repaint-ldm``, ``ldm-inpaint``, latent ``ddpm-full``) share:
the autoencoder, image padding to the latent grid, the mask brought to that grid, and network calls
that keep a sample's bytes independent of its batch on the CPU.

* **Autoencoder.** A diffusers ``VQModel`` (the CompVis LDMs: ``vqvae/`` of
  ``CompVis/ldm-celebahq-256``, ``bench convert compvis-ldm`` output) or ``AutoencoderKL``
  (``vae/``). Latents follow LDM's own convention: a VQ latent is the encoder's output *before*
  quantisation (what ``VQModelInterface.encode`` gives and the diffusion model was trained on),
  decoded through the codebook (``VQModel.decode`` quantises), and not rescaled (diffusers'
  ``LDMPipeline`` decodes VQ latents unscaled; the VQ LDMs were trained with ``scale_factor`` 1);
  a KL latent is the posterior's mode times the VAE's ``scaling_factor``.
* **Padding.** An image whose sides are not a multiple of the total down-sampling factor
  (autoencoder × UNet) is padded on the bottom and right by replicating its edge, with the padding
  marked "keep", and cropped back after decoding: the model never sees a seam inside the image.
* **Batch invariance on the CPU.** Every network call, the autoencoder's included, goes through
  :func:`.torch_common.run_network` (one sample at a time on the CPU, where oneDNN convolutions
  give different bits for different batch sizes; the whole batch on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .torch_common import WeightsError, load_model, resolve_location, run_network

__all__ = ["Autoencoder", "load_autoencoder", "pad_to", "latent_mask", "unet_factor"]


@dataclass
class Autoencoder:
    """A loaded VQ or KL autoencoder with LDM's latent convention (module docstring)."""

    module: Any
    kind: str  # "vq" or "kl"
    subfolder: str | None
    dtype: torch.dtype

    @property
    def factor(self) -> int:
        """Pixels per latent cell along a side: 2 ** (number of down-sampling stages)."""
        return 2 ** (len(self.module.config.block_out_channels) - 1)

    @property
    def channels(self) -> int:
        return int(self.module.config.latent_channels)

    @property
    def scale(self) -> float:
        return float(self.module.config.scaling_factor) if self.kind == "kl" else 1.0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (float32) to float32 latents."""
        def one(batch: torch.Tensor) -> torch.Tensor:
            out = self.module.encode(batch)
            return out.latents if self.kind == "vq" else out.latent_dist.mode()

        return run_network(one, self.dtype, x) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (float32) to float32 images in about [-1, 1] (VQ latents go through the codebook)."""
        return run_network(self.module.decode, self.dtype, z / self.scale)


def load_autoencoder(location: str, device: torch.device, dtype: torch.dtype, *, generator: str,
                     hint: str) -> Autoencoder:
    """The autoencoder of an LDM folder (``vqvae/`` or ``vae/``), on ``device``.

    ``location`` is what the recipe names (a folder, a catalogue name, a cached hub id: all resolve
    to a local folder, :func:`.torch_common.resolve_location`); the folder is read by what it holds:
    ``vqvae/`` (VQModel), else ``vae/`` with the class its ``config.json`` names (AutoencoderKL or
    VQModel). Anything else is one :class:`WeightsError` line.
    """
    import diffusers

    where = resolve_location(location, generator=generator, hint=hint)
    if Path(where, "vqvae", "config.json").is_file():
        sub, cls_name = "vqvae", "VQModel"
    elif Path(where, "vae", "config.json").is_file():
        named = _class_name(Path(where, "vae", "config.json"))
        sub, cls_name = "vae", named if named == "VQModel" else "AutoencoderKL"
    else:
        raise WeightsError(f"{generator}: {location!r} has no vqvae/ or vae/ folder with a config.json;"
                           f" expected {hint}")
    module = load_model(getattr(diffusers, cls_name), where, device, dtype, generator=generator, hint=hint,
                        subfolder=sub)
    return Autoencoder(module, "vq" if cls_name == "VQModel" else "kl", sub, dtype)


def _class_name(config: Path) -> str:
    import json

    try:
        return str(json.loads(config.read_text()).get("_class_name", "AutoencoderKL"))
    except (OSError, ValueError):
        return "AutoencoderKL"


def unet_factor(unet: Any) -> int:
    """The UNet's size divisor: 2 ** (number of down blocks - 1)."""
    return 2 ** (len(unet.config.down_block_types) - 1)


def pad_to(x: torch.Tensor, m: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (B, C, H, W) and mask ``m`` (B, 1, H, W, 1 = inpaint) padded bottom/right to a multiple.

    The image is padded by replicating its edge; the padding is marked keep (0) in the mask.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return x, m
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate"), F.pad(m, (0, pad_w, 0, pad_h), value=0.0)


def latent_mask(m: torch.Tensor, factor: int, coverage: float) -> torch.Tensor:
    """The pixel mask (B, 1, H, W, 1 = inpaint) on the latent grid: area-downsampled, then thresholded.

    A latent cell is inpainted when the masked share of its ``factor`` x ``factor`` pixels is above
    ``coverage`` (0: any masked pixel), so with the default every masked pixel lies in an
    inpainted cell and a sample's mask never claims pixels that were only re-encoded.
    """
    share = F.avg_pool2d(m, kernel_size=factor, stride=factor)
    return (share > coverage).to(m.dtype)
