"""RePaint in the latent space of a latent diffusion model: the RePaint-LDM generator of the Dolos data.

The model is a diffusers LDM folder or hub id: an autoencoder (``vqvae/`` VQModel or ``vae/``
AutoencoderKL), ``unet/`` (an unconditional ``UNet2DModel`` over the latent) and ``scheduler/``,
e.g. ``CompVis/ldm-celebahq-256``. Sampling is ``repaint``'s own loop (:func:`.repaint.repaint_sample`)
(diffusers' ``RePaintScheduler``, the paper's 250 steps, jump length 10, 10 resamplings, every
noise draw from the sample's generator), run on latents instead of pixels:

1. the image is encoded (:mod:`.latent_common`: VQ latents before quantisation, KL latents the
   posterior mode times ``scaling_factor``); that latent is RePaint's known region;
2. the mask is brought to the latent grid by **area down-sampling, then thresholding**: a latent
   cell is inpainted when more than ``mask_coverage`` of its pixels are masked (default 0: any
   masked pixel), so every masked pixel is regenerated and none is only re-encoded;
3. after the loop the whole latent is decoded. Variant ``full`` (the default, as the Dolos data
   was made) keeps that decoded image: pixels outside the mask went through the autoencoder and
   are not the source's (``preserves_unmasked`` is False and the dataset card says so, while the
   sample's mask still marks only the inpainted region). Variant ``paste`` puts every pixel outside
   the mask back from the input, bit for bit.

Without a ``scheduler/`` the schedule is the CompVis face LDMs' (``scaled_linear`` 0.0015..0.0195,
1000 steps). ``clip_sample`` is always off: latents are not bounded by [-1, 1].
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping

import numpy as np

from dolos_bench.utils.numbers import number

from .repaint import RePaintGenerator, check_inputs, repaint_sample, uses_learned_variance

__all__ = ["RePaintLDMGenerator"]

WHERE = ("a diffusers latent-diffusion folder with vqvae/ (VQModel) or vae/ (AutoencoderKL), unet/ (UNet2DModel)"
         " and scheduler/, or a hub id such as CompVis/ldm-celebahq-256")

#: The CompVis CelebA-HQ / FFHQ LDM schedule (configs: linear_start 0.0015, linear_end 0.0195).
LDM_SCHEDULE: dict[str, Any] = {"num_train_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0195,
                                "beta_schedule": "scaled_linear", "clip_sample": False}


class RePaintLDMGenerator(RePaintGenerator):
    """RePaint in an LDM's latent space (VQ or KL + UNet2DModel), variants full (as Dolos) and paste."""

    name: ClassVar[str] = "repaint-ldm"
    licence_note: ClassVar[str | None] = (
        "repaint-ldm: RePaint sampling (Lugmayr et al., 2022) in the latent space of a latent diffusion model"
        " (Rombach et al., 2022) via diffusers (Apache-2.0); the model's weights carry their own licence"
        " (CompVis/ldm-celebahq-256: Apache-2.0 on the Hub, trained on CelebA-HQ, non-commercial research terms)")
    preserves_unmasked: ClassVar[bool] = False  # the default variant, full, decodes the whole image
    default_batch: ClassVar[int | None] = 8

    class Config(RePaintGenerator.Config):
        variant: Literal["full", "paste"] = "full"
        """full: the whole image decoded (as in the Dolos data); paste: pixels outside the mask put back."""
        mask_coverage: Annotated[float, number(lo=0, hi=0.99)] = 0.0
        """A latent cell is inpainted when more than this share of its pixels is masked (0: any)."""

    def __init__(self, model: str, subfolder: str | None = None, steps: int = 250, jump_length: int = 10,
                 jump_n_sample: int = 10, eta: float = 1.0, variance: str = "auto", precision: str = "auto",
                 variant: str = "full", mask_coverage: float = 0.0) -> None:
        self.configure(model=model, subfolder=subfolder, steps=steps, jump_length=jump_length,
                       jump_n_sample=jump_n_sample, eta=eta, variance=variance, precision=precision,
                       variant=variant, mask_coverage=mask_coverage)

    @classmethod
    def unmasked_note(cls, params: Mapping[str, Any]) -> str | None:
        if params.get("variant", "full") == "paste":
            return None
        return ("pixels outside the mask are not the source image's: the whole image went through the latent"
                " diffusion model's autoencoder (encoded, then decoded with the inpainted latent; variant full,"
                " as in the Dolos data), so they carry its reconstruction error")

    # -- loading ------------------------------------------------------------------------------------
    def load(self, device: str) -> None:
        """Load autoencoder, UNet and schedule once; a missing or wrong folder is one WeightsError line."""
        from diffusers import RePaintScheduler, UNet2DModel

        from .latent_common import load_autoencoder, unet_factor
        from .torch_common import WeightsError, choose_device, load_model, resolve_location, weights_identity

        self.device, self.dtype = choose_device(device, self.precision, self.name)  # type: ignore[arg-type]
        location = resolve_location(self.model, generator=self.name, hint=WHERE)
        self.vae = load_autoencoder(location, self.device, self.dtype, generator=self.name, hint=WHERE)
        unet = load_model(UNet2DModel, location, self.device, self.dtype, generator=self.name, hint=WHERE,
                          subfolder=self.subfolder or "unet")
        cfg = unet.config
        self.channels = int(cfg.in_channels)
        if self.channels != self.vae.channels or cfg.out_channels not in (self.channels, 2 * self.channels):
            raise WeightsError(f"{self.name}: the UNet of {self.model!r} maps {cfg.in_channels} to"
                               f" {cfg.out_channels} channels, the autoencoder's latent has {self.vae.channels};"
                               f" expected an unconditional UNet over that latent; expected {WHERE}")
        self.learned = uses_learned_variance(self.name, self.model, self.variance, cfg)
        self.unet = unet
        if not Path(location, "scheduler", "scheduler_config.json").is_file():
            self.scheduler, self.schedule_from = RePaintScheduler(**LDM_SCHEDULE), "default (CompVis face LDMs)"
        else:
            try:  # often a DDIMScheduler's config (the hub LDMs'): keep what RePaint's schedule reads
                config = RePaintScheduler.load_config(location, subfolder="scheduler")
            except (OSError, ValueError) as exc:
                raise WeightsError(f"{self.name}: cannot read {self.model!r}/scheduler ({exc}); expected {WHERE}") from None
            known = inspect.signature(RePaintScheduler.__init__).parameters
            self.scheduler = RePaintScheduler(**{**{k: v for k, v in config.items() if k in known}, "clip_sample": False})
            self.schedule_from = f"{self.model}/scheduler"
        self.multiple = self.vae.factor * unet_factor(unet)
        self.weights = weights_identity(self.model)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "variant": self.variant, "mask_coverage": self.mask_coverage,
                "latent_mask": "area-downsampled, inpainted where the masked share > mask_coverage",
                "autoencoder": {"kind": self.vae.kind, "subfolder": self.vae.subfolder, "scale": self.vae.scale}}

    # -- inpainting ---------------------------------------------------------------------------------
    def inpaint_batch(self, images: list[np.ndarray], masks: list[np.ndarray],
                      rngs: list[np.random.Generator]) -> list[np.ndarray]:
        """RePaint on the batch's latents; sample ``b``'s noise comes from ``rngs[b]`` alone."""
        import torch

        from .latent_common import latent_mask, pad_to
        from .torch_common import images_to_tensor, masks_to_tensor, paste_back, per_sample_randn, tensor_to_images
        from .torch_common import torch_generators

        if not images:
            return []
        self.ensure_loaded()
        check_inputs(self.name, images, masks, 1)
        height, width = images[0].shape[:2]
        gens = torch_generators(rngs)
        with torch.inference_mode():
            x, m = pad_to(images_to_tensor(images, self.device), masks_to_tensor(masks, self.device), self.multiple)
            known = self.vae.encode(x)
            keep = 1.0 - latent_mask(m, self.vae.factor, self.mask_coverage)  # RePaint's polarity: 1 = keep
            z = per_sample_randn(gens, known.shape[1:], self.device)
            z = repaint_sample(self.unet, self.dtype, self.scheduler, z, known, keep, gens, steps=self.steps,
                               jump_length=self.jump_length, jump_n_sample=self.jump_n_sample, eta=self.eta,
                               learned=self.learned)
            out = self.vae.decode(z)[..., :height, :width]
        made = tensor_to_images(out)
        return paste_back(images, masks, made) if self.variant == "paste" else made
