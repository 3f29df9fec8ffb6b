"""RePaint (Lugmayr et al., CVPR 2022): inpainting with an unconditional pixel-space diffusion model.

The model is any diffusers ``UNet2DModel`` (a local folder, a pipeline folder with ``unet/``, or a
hub id such as ``google/ddpm-ema-celebahq-256``); the sampling schedule is diffusers'
``RePaintScheduler`` (``diffusers.pipelines.deprecated`` in 0.42: frozen, still shipped), with the
paper's defaults: 250 steps, jump length 10, 10 resamplings per jump.

Why the loop is written here instead of calling ``RePaintPipeline``: the pipeline accepts a list
of generators for the initial noise but then uses the *first* generator for every step's noise
of the whole batch, so a sample's output would depend on its batch-mates. Here every noise draw
(initial, per step, per undo step) comes from the sample's own ``torch.Generator``
(:mod:`.torch_common`); with the scheduler's own ``step``/``undo_step``, which accept a list.

Masks: the project's polarity is 255 = forged (inpaint); the scheduler wants 1 = keep, so it gets
``1 - mask``. The known region is re-noised from the real image at every step, as RePaint does;
the network's output is then pasted back only inside the mask, so every pixel outside it is the
real image's, bit for bit (``preserves_unmasked``).

Learned variance (models with 6 output channels: OpenAI guided-diffusion / ADM and the
P2-weighting CelebA-HQ and FFHQ models the Dolos data was made with). The first 3 channels are
epsilon; the last 3 are ``v``, ADM's "learned range": the step's log-variance is
``frac * log(beta_t) + (1 - frac) * log(beta~_t)`` with ``frac = (v + 1) / 2``, where ``beta_t``
and ``beta~_t`` (the posterior variance) are those of the respaced schedule (one step of
``num_train_timesteps / steps`` training steps). With ``variance: learned`` (the default, ``auto``,
for 6-channel models) each reverse step is ADM's: the posterior mean of the predicted (clipped)
``x_0`` and ``x_t`` plus that learned standard deviation times the sample's noise, and the known
region is ``q(x_{t-1} | x_0)`` of the real image with fresh noise, as the original RePaint code
does. With ``variance: fixed`` the extra channels are dropped and the scheduler's DDIM-form step
with ``eta`` is used (``eta = 1``: DDPM's posterior variance; diffusers' docs use ``eta = 0``).
The undo (forward jump) steps are diffusers' ``undo_step`` in both modes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np

from dolos_bench.builder.base import LearnedGenerator
from dolos_bench.config import Strict
from dolos_bench.errors import UserError
from dolos_bench.utils.numbers import number

__all__ = ["RePaintGenerator", "check_inputs", "repaint_sample", "uses_learned_variance"]

WHERE = ("a diffusers UNet2DModel folder (config.json + weights), a pipeline folder with unet/, or a hub id"
         " such as google/ddpm-ema-celebahq-256; `bench convert guided-diffusion CKPT OUT` makes one from an"
         " OpenAI guided-diffusion / P2-weighting checkpoint")


class RePaintGenerator(LearnedGenerator):
    """RePaint over any pixel-space diffusers UNet2DModel (DDPM, ADM/P2 with learned variance)."""

    name: ClassVar[str] = "repaint"
    requires: ClassVar[tuple[str, ...]] = ("torch", "diffusers")
    extra: ClassVar[str | None] = "diffusion"
    licence_note: ClassVar[str | None] = (
        "repaint: RePaint sampling (Lugmayr et al., 2022) via diffusers (Apache-2.0); the diffusion model's"
        " weights carry their own licence (see its model card or repository) and the terms of the data it was"
        " trained on (CelebA-HQ and FFHQ: non-commercial research use)")
    weight_params: ClassVar[dict[str, str]] = {"model": "folder"}  # checked before any sample (dolos_bench.weights)
    max_batch: ClassVar[int | None] = None
    default_batch: ClassVar[int | None] = 8  # 256² ADM in fp16: ~8 images per call fit a 16 GB GPU
    preserves_unmasked: ClassVar[bool] = True

    class Config(Strict):
        model: str
        """A diffusers UNet2DModel: local folder, pipeline folder (its unet/ is used) or hub id."""
        subfolder: str | None = None
        """The UNet's subfolder inside ``model`` (default: ``unet`` when that folder exists, else none)."""
        steps: Annotated[int, number(integer=True, lo=1)] = 250
        """Denoising steps (the paper: 250 of the model's 1000 training steps)."""
        jump_length: Annotated[int, number(integer=True, lo=1)] = 10
        """Steps taken forward in time per resampling jump (the paper's j)."""
        jump_n_sample: Annotated[int, number(integer=True, lo=1)] = 10
        """Resamplings per jump (the paper's r); 1 = no resampling."""
        eta: Annotated[float, number(lo=0, hi=1)] = 1.0
        """Noise of a fixed-variance step (DDIM form): 1 = DDPM sampling, as in the paper."""
        variance: Literal["auto", "learned", "fixed"] = "auto"
        """learned: ADM's learned range from output channels 4-6; fixed: the scheduler's; auto: learned
        when the model has twice as many output as input channels."""
        precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
        """The network's dtype: auto = float32 on the CPU, float16 on CUDA; sampling stays float32."""

    def __init__(self, model: str, subfolder: str | None = None, steps: int = 250, jump_length: int = 10,
                 jump_n_sample: int = 10, eta: float = 1.0, variance: str = "auto", precision: str = "auto") -> None:
        self.configure(model=model, subfolder=subfolder, steps=steps, jump_length=jump_length,
                       jump_n_sample=jump_n_sample, eta=eta, variance=variance, precision=precision)

    # -- loading ------------------------------------------------------------------------------------
    def load(self, device: str) -> None:
        """Load the UNet and the schedule once; a missing or wrong model is one WeightsError line."""
        from diffusers import RePaintScheduler, UNet2DModel

        from .torch_common import choose_device, load_model, resolve_location, weights_identity

        self.device, self.dtype = choose_device(device, self.precision, self.name)  # type: ignore[arg-type]
        location = resolve_location(self.model, generator=self.name, hint=WHERE)
        subfolder = self.subfolder
        if subfolder is None and Path(location, "unet", "config.json").is_file():
            subfolder = "unet"
        self.unet = load_model(UNet2DModel, location, self.device, self.dtype, generator=self.name, hint=WHERE,
                               subfolder=subfolder)
        cfg = self.unet.config
        self.channels = int(cfg.in_channels)
        if cfg.out_channels not in (self.channels, 2 * self.channels):
            from .torch_common import WeightsError

            raise WeightsError(f"{self.name}: {self.model!r} outputs {cfg.out_channels} channels for"
                               f" {cfg.in_channels} in; expected epsilon ({cfg.in_channels}) or epsilon + variance"
                               f" ({2 * cfg.in_channels}); expected {WHERE}")
        self.learned = uses_learned_variance(self.name, self.model, self.variance, cfg)
        self.scheduler, self.schedule_from = _scheduler(RePaintScheduler, location, subfolder)
        self.weights = weights_identity(self.model)
        self.down = 2 ** sum(1 for _ in cfg.down_block_types[1:])  # the UNet's size divisor

    def identity(self) -> dict[str, Any]:
        from .torch_common import runtime_identity

        sched = self.scheduler.config
        return {
            **self.weights, "subfolder": self.subfolder, "steps": self.steps, "jump_length": self.jump_length,
            "jump_n_sample": self.jump_n_sample, "eta": self.eta,
            "variance": "learned" if self.learned else "fixed",
            "schedule": {"from": self.schedule_from, "beta_schedule": sched.beta_schedule,
                         "beta_start": sched.beta_start, "beta_end": sched.beta_end,
                         "num_train_timesteps": sched.num_train_timesteps, "clip_sample": sched.clip_sample},
            **runtime_identity(self.device, self.dtype),
        }

    # -- inpainting ---------------------------------------------------------------------------------
    def inpaint_batch(self, images: list[np.ndarray], masks: list[np.ndarray],
                      rngs: list[np.random.Generator]) -> list[np.ndarray]:
        """One RePaint run over the batch; sample ``b``'s noise comes from ``rngs[b]`` alone."""
        import torch

        from .torch_common import (images_to_tensor, masks_to_tensor, paste_back, per_sample_randn,
                                   tensor_to_images, torch_generators)

        if not images:
            return []
        self.ensure_loaded()
        check_inputs(self.name, images, masks, self.down)
        gens = torch_generators(rngs)
        with torch.inference_mode():
            known = images_to_tensor(images, self.device)
            keep = 1.0 - masks_to_tensor(masks, self.device)  # RePaint's polarity: 1 = keep
            x = per_sample_randn(gens, known.shape[1:], self.device)
            x = repaint_sample(self.unet, self.dtype, self.scheduler, x, known, keep, gens, steps=self.steps,
                               jump_length=self.jump_length, jump_n_sample=self.jump_n_sample, eta=self.eta,
                               learned=self.learned)
        return paste_back(images, masks, tensor_to_images(x))


def uses_learned_variance(name: str, model: str, variance: str, config: Any) -> bool:
    """Whether :func:`repaint_sample` takes ADM's learned-range steps for a UNet with ``config``.

    ``variance`` is the recipe's: ``auto`` = learned when the UNet outputs twice its input channels
    (epsilon + ``v``), ``fixed`` never, ``learned`` always (a ValueError for a UNet without ``v``).
    """
    learned = config.out_channels == 2 * config.in_channels
    if variance == "learned" and not learned:
        raise ValueError(f"{name}: variance 'learned' needs a model with {2 * config.in_channels} output"
                         f" channels; {model!r} has {config.out_channels}")
    return learned and variance != "fixed"


def repaint_sample(unet: Any, dtype: Any, scheduler: Any, x: Any, known: Any, keep: Any, gens: list[Any], *,
                   steps: int, jump_length: int, jump_n_sample: int, eta: float, learned: bool) -> Any:
    """RePaint's reverse process from ``x`` (``x_T``) to ``x_0``: the loop ``repaint`` runs on pixels and
    ``repaint-ldm`` on latents, the one place it is written.

    ``scheduler`` is a ``RePaintScheduler`` (its betas are the model's); ``known`` the real image (or
    its latent), ``keep`` 1 where it is kept (RePaint's polarity), both shaped like ``x``; sample
    ``b``'s every noise draw comes from ``gens[b]``. ``learned``: ``unet`` outputs epsilon and ADM's
    ``v`` (twice ``x``'s channels) and each reverse step is ADM's learned-range step (module
    docstring); otherwise the scheduler's own DDIM-form step with ``eta`` on the first ``x.shape[1]``
    output channels. The undo (forward jump) steps are the scheduler's ``undo_step``.
    """
    import torch

    from .torch_common import run_network

    channels = x.shape[1]
    scheduler.set_timesteps(steps, jump_length, jump_n_sample)  # on the CPU: plain ints
    scheduler.eta = eta
    timesteps = [int(t) for t in scheduler.timesteps]
    t_last = timesteps[0] + 1
    for t in timesteps:
        if t < t_last:
            stamp = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            out = run_network(unet, dtype, x, stamp)
            if learned:
                x = _learned_step(scheduler, out, t, x, known, keep, gens)
            else:
                x = scheduler.step(out[:, :channels], t, x, known, keep, gens).prev_sample
        else:
            x = scheduler.undo_step(x, t_last, gens)
        t_last = t
    return x


def _learned_step(sched: Any, out: Any, t: int, x: Any, known: Any, keep: Any, gens: list[Any]) -> Any:
    """One reverse step with ADM's learned-range variance (see the module docstring)."""
    import torch

    from .torch_common import per_sample_randn

    channels = x.shape[1]
    prev = t - sched.config.num_train_timesteps // sched.num_inference_steps
    a_t = float(sched.alphas_cumprod[t])
    a_prev = float(sched.alphas_cumprod[prev]) if prev >= 0 else 1.0
    beta = 1.0 - a_t / a_prev
    eps, v = out[:, :channels], out[:, channels:]
    x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
    if sched.config.clip_sample:
        x0 = x0.clamp(-1.0, 1.0)
    mean = (beta * math.sqrt(a_prev) / (1.0 - a_t)) * x0 + ((1.0 - a_prev) * math.sqrt(1.0 - beta) / (1.0 - a_t)) * x
    noise = per_sample_randn(gens, x.shape[1:], x.device)
    if prev >= 0:
        posterior = beta * (1.0 - a_prev) / (1.0 - a_t)
        if posterior <= 0.0:  # a first step of length 1: ADM clips to the next posterior variance
            posterior = beta
        frac = (v.clamp(-1.0, 1.0) + 1.0) / 2.0
        log_var = frac * math.log(beta) + (1.0 - frac) * math.log(posterior)
        unknown = mean + torch.exp(0.5 * log_var) * noise
    else:
        unknown = mean
    fresh = per_sample_randn(gens, x.shape[1:], x.device)
    known_part = math.sqrt(a_prev) * known + math.sqrt(1.0 - a_prev) * fresh
    return keep * known_part + (1.0 - keep) * unknown


def _scheduler(cls: Any, location: str, subfolder: str | None) -> tuple[Any, str]:
    """The model's own schedule (``scheduler/`` or a ``scheduler_config.json`` beside the UNet), else
    the DDPM default (linear 1e-4..0.02 over 1000 steps, what DDPM and ADM/P2 models were trained with)."""
    local = os.path.isdir(location)
    candidates = ["scheduler", None] if subfolder else [None, "scheduler"]
    for where in candidates:
        if local and not Path(location, where or "", "scheduler_config.json").is_file():
            continue
        try:
            return cls.from_pretrained(location, subfolder=where), f"{location}/{where}" if where else location
        except (OSError, ValueError):
            continue
    return cls(), "default (linear, 1000 steps)"


def check_inputs(name: str, images: list[np.ndarray], masks: list[np.ndarray], down: int) -> None:
    """Refuse a batch the torch generators cannot take: not uint8 RGB, mixed sizes, a mask of another
    size (ValueError: a bug upstream), or sides not a multiple of ``down`` (a recipe the user fixes)."""
    shape = images[0].shape
    for image, mask in zip(images, masks):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name}: images must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if image.shape != shape:
            raise ValueError(f"{name}: a batch needs images of one size, got {shape} and {image.shape}")
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{name}: mask {mask.shape} does not match the image {image.shape[:2]}")
    if shape[0] % down or shape[1] % down:
        raise UserError(f"{name}: image size {shape[1]}x{shape[0]} is not a multiple of {down}, which this"
                         " UNet needs; set the recipe's resolution to the model's (e.g. 256)")
