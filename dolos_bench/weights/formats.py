"""What a ``bench convert`` output folder holds that its converter and its generator must agree on.

The converters (``dolos_bench.convert``) and the generators (``dolos_bench.builder``) are one layer
and may not import each other, so the names and defaults both read live here, below both: plain
data, no torch.

* ``LDM_SIDECAR``: the file ``bench convert compvis-ldm`` writes beside ``vqvae/``, ``unet/`` and
  ``scheduler/`` (architecture, source sha256, the UNet's head count); ``ldm-inpaint`` reads it.
* :func:`compvis_ddim`: the ``DDIMScheduler`` settings that reproduce latent-diffusion's
  ``DDIMSampler`` over ldm's "linear" schedule. ldm's "linear" betas are
  ``linspace(sqrt(start), sqrt(end)) ** 2`` (diffusers' ``scaled_linear``); its uniform DDIM
  timesteps are ``range(0, T, T // steps) + 1`` (``leading`` spacing, ``steps_offset`` 1); its last
  step's ``alpha_prev`` is ``alphas_cumprod[0]`` (``set_alpha_to_one`` False); no clipping of the
  predicted latent. The converter writes it for the checkpoint's schedule; ``ldm-inpaint`` uses
  ``COMPVIS_DDIM`` (the released inpainting model's: 0.0015..0.0205 over 1000 steps) for a folder
  without ``scheduler/``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["COMPVIS_DDIM", "LDM_SIDECAR", "compvis_ddim"]

LDM_SIDECAR = "dolos_ldm.json"


def compvis_ddim(timesteps: int = 1000, linear_start: float = 0.0015, linear_end: float = 0.0205) -> dict[str, Any]:
    """``DDIMScheduler`` keyword arguments for ldm's schedule ``linear_start..linear_end`` over ``timesteps``."""
    return {"num_train_timesteps": timesteps, "beta_start": linear_start, "beta_end": linear_end,
            "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
            "timestep_spacing": "leading", "prediction_type": "epsilon"}


#: The released CompVis inpainting model's (``models/ldm/inpainting_big/config.yaml``).
COMPVIS_DDIM: dict[str, Any] = compvis_ddim()
