"""The CompVis latent-diffusion inpainting model (Rombach et al., CVPR 2022), as a DDIM loop.

diffusers has no pipeline for it; the model is a VQ-f4 autoencoder (``VQModel``) and a UNet
(``UNet2DModel``) whose 7 input channels are the noisy latent ``z_t`` (3), the encoded masked
image (3) and the mask on the latent grid (1). ``bench convert compvis-ldm last.ckpt OUT`` makes
the folder this generator loads (``vqvae/``, ``unet/``, ``scheduler/``, ``dolos_ldm.json``) from
the checkpoint of the latent-diffusion repository (``models/ldm/inpainting_big/last.ckpt``).

Each step follows the repository's ``scripts/inpaint.py`` and ``DDIMSampler``:

1. the image in [-1, 1]; the mask binarised (any value > 0 = inpaint, the project's polarity);
   the masked image is the image with the region set to black (-1);
2. conditioning ``c`` = the VQ encoder's output for the masked image (before quantisation), and
   the mask resized to the latent grid by nearest-neighbour sampling and mapped to {-1, 1}, as
   the model was trained; the UNet's input is ``cat(z_t, c, mask)``;
3. ``z_T`` from the sample's own noise; DDIM with ``eta`` = 0 over ``steps`` (50) of the 1000
   training steps (diffusers' ``DDIMScheduler``: ``scaled_linear`` 0.0015..0.0205 = ldm's
   "linear" schedule, ``timestep_spacing="leading"`` with ``steps_offset=1`` = ldm's uniform DDIM
   timesteps 1, 21, ..., 981, ``set_alpha_to_one=False`` = ldm's last ``alpha_prev``);
4. ``z_0`` decoded through the codebook; with ``paste_back`` (the script's default, and ours)
   every pixel outside the mask is the input's, bit for bit. Without it the whole image is the
   decoder's and the dataset card says so (:meth:`LDMInpaintGenerator.unmasked_note`).

Differences from the script, on purpose: output rounded to uint8 (the script truncates), and an
image whose sides are not a multiple of 4 x 8 = 32 is edge-padded and cropped back
(:mod:`.latent_common`).

Heads: the released UNet has 8 attention heads at every width (``num_heads: 8``), which a
``UNet2DModel`` config cannot say (it fixes the head *size*); the converter records it in
``dolos_ldm.json`` (``attention_heads``) and :func:`set_attention_heads` applies it after loading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping

import numpy as np

from dolos_bench.builder.base import LearnedGenerator
from dolos_bench.config import Strict
from dolos_bench.utils.numbers import number
from dolos_bench.weights.formats import COMPVIS_DDIM
from dolos_bench.weights.formats import LDM_SIDECAR as SIDECAR

__all__ = ["COMPVIS_DDIM", "LDMInpaintGenerator", "set_attention_heads", "read_sidecar", "SIDECAR"]

WHERE = ("a folder with vqvae/ (VQModel), unet/ (UNet2DModel with 2 x latent + 1 input channels) and scheduler/;"
         " `bench convert compvis-ldm last.ckpt OUT` makes one from the CompVis latent-diffusion inpainting"
         " checkpoint (https://ommer-lab.com/files/latent-diffusion/inpainting_big.zip)")


def read_sidecar(location: str) -> dict[str, Any]:
    """``dolos_ldm.json`` of a converted folder ({} when absent, e.g. a hub id)."""
    path = Path(location, SIDECAR)
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def set_attention_heads(unet: Any, heads: int) -> None:
    """Give every attention layer of ``unet`` ``heads`` heads (see the module docstring)."""
    from diffusers.models.attention_processor import Attention

    for module in unet.modules():
        if isinstance(module, Attention):
            inner = module.to_q.out_features
            if inner % heads:
                raise ValueError(f"attention width {inner} is not divisible by {heads} heads")
            module.heads = heads
            module.scale = (inner // heads) ** -0.5


class LDMInpaintGenerator(LearnedGenerator):
    """CompVis latent-diffusion inpainting (VQ-f4 + 7-channel UNet), DDIM over diffusers models."""

    name: ClassVar[str] = "ldm-inpaint"
    requires: ClassVar[tuple[str, ...]] = ("torch", "diffusers")
    extra: ClassVar[str | None] = "diffusion"
    licence_note: ClassVar[str | None] = (
        "ldm-inpaint: the CompVis latent-diffusion inpainting model (Rombach et al., 2022; code and weights"
        " MIT-licensed by CompVis, trained on Places), sampled with diffusers (Apache-2.0)")
    weight_params: ClassVar[dict[str, str]] = {"model": "folder"}  # checked before any sample (dolos_bench.weights)
    max_batch: ClassVar[int | None] = None
    default_batch: ClassVar[int | None] = 16
    preserves_unmasked: ClassVar[bool] = True  # with paste_back (the default)

    class Config(Strict):
        model: str
        """A folder (or hub id) with vqvae/, unet/ and scheduler/, as `bench convert compvis-ldm` writes."""
        steps: Annotated[int, number(integer=True, lo=1, hi=1000)] = 50
        """DDIM steps (CompVis's scripts/inpaint.py default: 50)."""
        eta: Annotated[float, number(lo=0, hi=1)] = 0.0
        """DDIM noise (0: deterministic, as the script samples)."""
        paste_back: bool = True
        """Put every pixel outside the mask back from the input (the script does)."""
        precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
        """The networks' dtype: auto = float32 on the CPU, float16 on CUDA; sampling stays float32."""

    def __init__(self, model: str, steps: int = 50, eta: float = 0.0, paste_back: bool = True,
                 precision: str = "auto") -> None:
        self.configure(model=model, steps=steps, eta=eta, paste_back=paste_back, precision=precision)

    @classmethod
    def unmasked_note(cls, params: Mapping[str, Any]) -> str | None:
        if params.get("paste_back", True):
            return None
        return ("pixels outside the mask are not the source image's: the whole image was decoded by the"
                " VQ autoencoder (paste_back: false), so they carry its reconstruction error")

    # -- loading ------------------------------------------------------------------------------------
    def load(self, device: str) -> None:
        """Load autoencoder, UNet and schedule once; a missing or wrong folder is one WeightsError line."""
        from diffusers import DDIMScheduler, UNet2DModel

        from .latent_common import load_autoencoder, unet_factor
        from .torch_common import WeightsError, choose_device, load_model, load_pretrained, resolve_location
        from .torch_common import weights_identity

        self.device, self.dtype = choose_device(device, self.precision, self.name)  # type: ignore[arg-type]
        location = resolve_location(self.model, generator=self.name, hint=WHERE)
        self.vae = load_autoencoder(location, self.device, self.dtype, generator=self.name, hint=WHERE)
        self.unet = load_model(UNet2DModel, location, self.device, self.dtype, generator=self.name, hint=WHERE,
                               subfolder="unet")
        heads = read_sidecar(location).get("attention_heads")
        if heads:
            set_attention_heads(self.unet, int(heads))
        want = 2 * self.vae.channels + 1
        if self.unet.config.in_channels != want or self.unet.config.out_channels != self.vae.channels:
            raise WeightsError(f"{self.name}: the UNet of {self.model!r} takes {self.unet.config.in_channels} and"
                               f" gives {self.unet.config.out_channels} channels; an inpainting UNet over a"
                               f" {self.vae.channels}-channel latent takes {want} (z_t, masked image, mask) and"
                               f" gives {self.vae.channels}; expected {WHERE}")
        if Path(location, "scheduler", "scheduler_config.json").is_file():
            self.scheduler = load_pretrained(DDIMScheduler, location, generator=self.name, hint=WHERE,
                                             subfolder="scheduler")
            self.schedule_from = f"{self.model}/scheduler"
        else:
            self.scheduler = DDIMScheduler(**COMPVIS_DDIM)
            self.schedule_from = "default (the CompVis inpainting model's)"
        self.multiple = self.vae.factor * unet_factor(self.unet)
        self.weights = weights_identity(self.model)

    def identity(self) -> dict[str, Any]:
        from .torch_common import runtime_identity

        sched = self.scheduler.config
        return {
            **self.weights, "steps": self.steps, "eta": self.eta, "paste_back": self.paste_back,
            "autoencoder": self.vae.kind, "schedule": {
                "from": self.schedule_from, "beta_schedule": sched.beta_schedule, "beta_start": sched.beta_start,
                "beta_end": sched.beta_end, "num_train_timesteps": sched.num_train_timesteps},
            **runtime_identity(self.device, self.dtype),
        }

    # -- inpainting ---------------------------------------------------------------------------------
    def inpaint_batch(self, images: list[np.ndarray], masks: list[np.ndarray],
                      rngs: list[np.random.Generator]) -> list[np.ndarray]:
        """One DDIM run over the batch; sample ``b``'s noise comes from ``rngs[b]`` alone."""
        import torch
        import torch.nn.functional as F

        from .latent_common import pad_to
        from .repaint import check_inputs
        from .torch_common import (images_to_tensor, masks_to_tensor, paste_back, per_sample_randn, run_network,
                                   tensor_to_images, torch_generators)

        if not images:
            return []
        self.ensure_loaded()
        check_inputs(self.name, images, masks, 1)
        height, width = images[0].shape[:2]
        gens = torch_generators(rngs)
        with torch.inference_mode():
            x, m = pad_to(images_to_tensor(images, self.device), masks_to_tensor(masks, self.device), self.multiple)
            masked = (x + 1.0) * (1.0 - m) - 1.0  # the region black, as ((1 - m) * image) * 2 - 1
            c = self.vae.encode(masked)
            cm = F.interpolate(m * 2.0 - 1.0, size=c.shape[-2:], mode="nearest")
            cond = torch.cat([c, cm], dim=1)
            z = per_sample_randn(gens, (self.vae.channels, *c.shape[-2:]), self.device)
            sched = self.scheduler
            sched.set_timesteps(self.steps)
            for t in sched.timesteps:
                stamp = torch.full((z.shape[0],), int(t), device=self.device, dtype=torch.long)
                eps = run_network(self.unet, self.dtype, torch.cat([z, cond], dim=1), stamp)
                z = sched.step(eps, t, z, eta=self.eta, generator=gens).prev_sample
            out = self.vae.decode(z)[..., :height, :width]
        made = tensor_to_images(out)
        return paste_back(images, masks, made) if self.paste_back else made
