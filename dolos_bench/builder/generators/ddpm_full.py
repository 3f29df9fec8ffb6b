"""Whole images sampled from an unconditional diffusion model: the fully generated fakes of Dolos setup A.

Two kinds of model, both in diffusers' layout (a local folder or a hub id):

* **pixel**: a ``UNet2DModel`` (DDPM, or ADM / P2-weighting converted with ``bench convert
  guided-diffusion``) with its scheduler (``scheduler/`` or a ``scheduler_config.json`` beside the
  UNet; DDPM's linear 1000-step schedule when there is none). Default sampler: DDPM ancestral
  sampling over every training step. A model with learned variance (6 output channels) is
  sampled with ``DDPMScheduler(variance_type="learned_range")``: ADM's learned interpolation
  between ``beta_t`` and the posterior variance, over the (respaced) steps; DDIM uses only the
  epsilon channels.
* **latent**: an autoencoder, loaded and decoded as the other latent generators do
  (:mod:`.latent_common`: ``vqvae/``: ``VQModel``, decoded with quantisation and no scaling as
  diffusers' ``LDMPipeline`` does; or ``vae/``: ``AutoencoderKL``, latents divided by its
  ``scaling_factor``) + ``unet/`` + ``scheduler/``, like ``CompVis/ldm-celebahq-256``. Default
  sampler: DDIM, 200 steps, ``eta = 0`` (the LDM pipeline's defaults for that model).

The image is made at the model's own size; when the recipe's resolution differs it is resized
(Lanczos) to the size of the real images, and the identity records it. The real image the build
hands in is ignored: this generator declares ``full_synthesis``, so the build gives the sample an
all-forged mask (255 everywhere) without a masker and names the model as the sample's
``source``. Noise is per sample (:mod:`.torch_common`), so output ``b`` depends on ``rng b``
alone, whatever the batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from dolos_bench.builder.base import LearnedGenerator
from dolos_bench.config import Strict
from dolos_bench.utils.numbers import number

__all__ = ["DDPMFullGenerator"]

WHERE = ("a diffusers folder or hub id: a UNet2DModel (+ scheduler) such as google/ddpm-ema-celebahq-256 or the"
         " output of `bench convert guided-diffusion`, or vqvae/ (or vae/) + unet/ + scheduler/ such as"
         " CompVis/ldm-celebahq-256")


class DDPMFullGenerator(LearnedGenerator):
    """Unconditional samples of a pixel or latent diffusion model: fully generated fakes (mask all forged)."""

    name: ClassVar[str] = "ddpm-full"
    requires: ClassVar[tuple[str, ...]] = ("torch", "diffusers")
    extra: ClassVar[str | None] = "diffusion"
    licence_note: ClassVar[str | None] = (
        "ddpm-full: images sampled with diffusers (Apache-2.0) from a diffusion model whose weights carry their"
        " own licence and training-data terms (e.g. CelebA-HQ / FFHQ: non-commercial research)")
    weight_params: ClassVar[dict[str, str]] = {"model": "folder"}  # checked before any sample (dolos_bench.weights)
    max_batch: ClassVar[int | None] = None
    default_batch: ClassVar[int | None] = 8
    preserves_unmasked: ClassVar[bool] = False  # nothing of the input survives: the whole image is made
    full_synthesis: ClassVar[bool] = True

    class Config(Strict):
        model: str
        """A diffusers folder or hub id (pixel UNet2DModel, or vqvae|vae + unet + scheduler)."""
        kind: Literal["auto", "pixel", "latent"] = "auto"
        """latent when the folder has vqvae/ or vae/, else pixel."""
        sampler: Literal["auto", "ddpm", "ddim"] = "auto"
        """auto: DDPM for pixel models, DDIM for latent ones."""
        steps: int | None = Field(None, ge=1)
        """Sampling steps; default: every training step for DDPM, 200 for DDIM."""
        eta: Annotated[float, number(lo=0, hi=1)] = 0.0
        """DDIM's eta (0 = deterministic given the initial noise)."""
        precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
        """The networks' dtype: auto = float32 on the CPU, float16 on CUDA; sampling stays float32."""

    def __init__(self, model: str, kind: str = "auto", sampler: str = "auto", steps: int | None = None,
                 eta: float = 0.0, precision: str = "auto") -> None:
        self.configure(model=model, kind=kind, sampler=sampler, steps=steps, eta=eta, precision=precision)

    # -- loading ------------------------------------------------------------------------------------
    def load(self, device: str) -> None:
        """Load the UNet, the autoencoder (latent models) and the scheduler once, before any sample."""
        import diffusers

        from .latent_common import load_autoencoder
        from .torch_common import choose_device, load_model, resolve_location, weights_identity

        self.device, self.dtype = choose_device(device, self.precision, self.name)  # type: ignore[arg-type]
        location = resolve_location(self.model, generator=self.name, hint=WHERE)
        local = os.path.isdir(location)
        auto_kind = "latent" if local and any(Path(location, d, "config.json").is_file() for d in ("vqvae", "vae")) \
            else "pixel"
        self.resolved_kind = auto_kind if self.kind == "auto" else self.kind
        self.vae = None
        unet_folder: str | None = None
        if self.resolved_kind == "latent":
            unet_folder = "unet"
            self.vae = load_autoencoder(location, self.device, self.dtype, generator=self.name, hint=WHERE)
        elif local and Path(location, "unet", "config.json").is_file():
            unet_folder = "unet"
        self.unet = load_model(diffusers.UNet2DModel, location, self.device, self.dtype, generator=self.name,
                               hint=WHERE, subfolder=unet_folder)
        self.channels = int(self.unet.config.in_channels)
        self.learned = int(self.unet.config.out_channels) == 2 * self.channels
        self.resolved_sampler = self.sampler if self.sampler != "auto" else (
            "ddim" if self.resolved_kind == "latent" else "ddpm")
        self.scheduler = self._scheduler(diffusers, location, unet_folder)
        size = self.unet.config.sample_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
        self.latent_size: tuple[int, int] = size  # type: ignore[assignment]
        self.weights = weights_identity(self.model)

    def _scheduler(self, diffusers: Any, location: str, unet_folder: str | None) -> Any:
        cls = diffusers.DDIMScheduler if self.resolved_sampler == "ddim" else diffusers.DDPMScheduler
        config: dict[str, Any] = {}
        local = os.path.isdir(location)
        for where in ("scheduler", None) if unet_folder else (None, "scheduler"):
            if local and not Path(location, where or "", "scheduler_config.json").is_file():
                continue
            try:
                config = dict(cls.load_config(location, subfolder=where))
                break
            except (OSError, ValueError):
                continue
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        self.schedule_from = "model" if config else "default (linear, 1000 steps)"
        if cls is diffusers.DDPMScheduler and self.learned:
            config["variance_type"] = "learned_range"
        return cls.from_config(config)

    def identity(self) -> dict[str, Any]:
        from .torch_common import runtime_identity

        sched = self.scheduler.config
        return {
            **self.weights, "kind": self.resolved_kind, "sampler": self.resolved_sampler, "steps": self._steps(),
            "eta": self.eta if self.resolved_sampler == "ddim" else None,
            "variance": getattr(sched, "variance_type", None) if self.resolved_sampler == "ddpm" else None,
            "schedule": {"from": self.schedule_from, "beta_schedule": sched.beta_schedule,
                         "num_train_timesteps": sched.num_train_timesteps},
            "model_size": list(self._image_size()),
            **runtime_identity(self.device, self.dtype),
        }

    def _steps(self) -> int:
        if self.steps is not None:
            return int(self.steps)
        return int(self.scheduler.config.num_train_timesteps) if self.resolved_sampler == "ddpm" else 200

    def _image_size(self) -> tuple[int, int]:
        """(height, width) of what the model makes: its sample size, times the autoencoder's factor."""
        h, w = self.latent_size
        factor = 1 if self.vae is None else self.vae.factor
        return h * factor, w * factor

    # -- sampling -----------------------------------------------------------------------------------
    def inpaint_batch(self, images: list[np.ndarray], masks: list[np.ndarray],
                      rngs: list[np.random.Generator]) -> list[np.ndarray]:
        """One sample per rng, at the model's size, resized to each input image's size where it differs."""
        import torch

        from .torch_common import per_sample_randn, run_network, tensor_to_images, torch_generators

        if not images:
            return []
        self.ensure_loaded()
        gens = torch_generators(rngs)
        sched = self.scheduler
        with torch.inference_mode():
            x = per_sample_randn(gens, (self.channels, *self.latent_size), self.device)
            x = x * float(sched.init_noise_sigma)
            sched.set_timesteps(self._steps())
            extra = {"eta": self.eta} if self.resolved_sampler == "ddim" else {}
            for t in [int(t) for t in sched.timesteps]:
                stamp = torch.full((x.shape[0],), t, device=self.device, dtype=torch.long)
                out = run_network(self.unet, self.dtype, sched.scale_model_input(x, t), stamp)
                if self.resolved_sampler == "ddim":
                    out = out[:, : self.channels]
                x = sched.step(out, t, x, generator=gens, **extra).prev_sample
            if self.vae is not None:
                x = self.vae.decode(x)
        made = tensor_to_images(x)
        return [_fit(out, image.shape[:2]) for out, image in zip(made, images)]


def _fit(image: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """``image`` at ``size`` (height, width): itself, or resized with Lanczos as real images are."""
    if image.shape[:2] == tuple(size):
        return np.ascontiguousarray(image)
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.LANCZOS), dtype=np.uint8)
