"""Pluralistic Image Completion (Zheng et al., CVPR 2019): the VAE-GAN inpainter of one Dolos subset.

The released CelebA-HQ models (lyndonzheng/Pluralistic-Inpainting: ``latest_net_E.pth``,
``latest_net_G.pth``, trained on 256 x 256 faces with centre or random masks) load into the module
trees of :mod:`.pluralistic_net` with ``strict=True``. At test time the encoder sees the visible
pixels (the image in [-1, 1] times the keep-mask), predicts a normal prior over the hole's latent;
one latent is drawn per sample (from the sample's own seed, so the output is batch-invariant on
the CPU) and decoded with short+long attention; the completion is pasted into the hole, so every
pixel outside the mask is the real image's, bit for bit.

Inputs whose sides are not multiples of 32 (the network downsamples five times) are
reflect-padded to the next multiple and cropped back; the released models were trained at 256 x
256, the toolkit's default resolution.

``weights`` is the checkpoint folder (holding ``latest_net_E.pth`` and ``latest_net_G.pth``, as
the authors' ``--checkpoints_dir/--name`` layout does), a catalogue name or a path. Licence: the
authors' code and models are released for non-commercial research (CC BY-NC 4.0 per their README;
check the model page); the card quotes :attr:`PluralisticGenerator.licence_note`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from dolos_bench.builder.base import LearnedGenerator
from dolos_bench.config import Strict

__all__ = ["PluralisticInpainter"]

_FILES = {"encoder": "latest_net_E.pth", "generator": "latest_net_G.pth"}
_MULTIPLE = 32


class PluralisticInpainter(LearnedGenerator):
    """Pluralistic image completion from the authors' released E/G checkpoints."""

    name: ClassVar[str] = "pluralistic"
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    extra: ClassVar[str | None] = "diffusion"
    licence_note: ClassVar[str | None] = (
        "**Pluralistic.** Fakes were completed with the Pluralistic Image Completion models of Zheng et al. "
        "(CVPR 2019), released for non-commercial research use."
    )
    weight_params: ClassVar[dict[str, str]] = {"weights": "folder"}
    max_batch: ClassVar[int | None] = 16
    preserves_unmasked: ClassVar[bool] = True

    class Config(Strict):
        weights: str
        """The folder with ``latest_net_E.pth`` and ``latest_net_G.pth`` (a path or catalogue name)."""
        precision: Literal["auto", "fp32", "fp16", "bf16"] = "fp32"
        """The networks' dtype; fp32 by default (a GAN's spectral-normalised weights gain little from fp16)."""

    def __init__(self, weights: str, precision: str = "fp32") -> None:
        self.configure(weights=weights, precision=precision)

    def load(self, device: str) -> None:
        """Build both networks and load the checkpoints (once per worker and device)."""
        import torch

        from .pluralistic_net import PluralisticEncoder, PluralisticGenerator
        from .torch_common import WeightsError, choose_device, resolve_location, weights_identity

        self.device, self.dtype = choose_device(device, self.precision, self.name)  # type: ignore[arg-type]
        folder = Path(resolve_location(self.weights, generator=self.name, expect="folder",
                                       hint="the folder of Pluralistic's latest_net_E.pth and latest_net_G.pth"))
        nets = {"encoder": PluralisticEncoder(), "generator": PluralisticGenerator()}
        for part, net in nets.items():
            path = folder / _FILES[part]
            if not path.is_file():
                raise WeightsError(f"{self.name}: {path} not found; the weights folder must hold "
                                   f"{_FILES['encoder']} and {_FILES['generator']} (the authors' CelebA-HQ models)")
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = net.load_state_dict(state, strict=False)
            if missing or unexpected:
                listed = ", ".join([*(f"missing {k}" for k in missing[:3]), *(f"unexpected {k}" for k in unexpected[:3])])
                raise WeightsError(f"{self.name}: {path} is not a Pluralistic {part} checkpoint "
                                   f"({len(missing)} missing, {len(unexpected)} unexpected keys: {listed})")
            net.to(self.device, self.dtype).eval()
        self.encoder, self.generator = nets["encoder"], nets["generator"]
        self._weights = weights_identity(self.weights)

    def identity(self) -> dict[str, Any]:
        identity: dict[str, Any] = {"weights": self.weights, "precision": self.precision}
        if self.loaded_on is not None:
            identity.update(weights_sha256=self._weights["sha256"], device=self.device.type)
        return identity

    def inpaint_batch(self, images: list[np.ndarray], masks: list[np.ndarray],
                      rngs: list[np.random.Generator]) -> list[np.ndarray]:
        import torch
        from torch.nn import functional as F

        from .pluralistic_net import scale_down
        from .torch_common import images_to_tensor, masks_to_tensor, paste_back, per_sample_randn, tensor_to_images

        self.ensure_loaded()
        gens = [torch.Generator(device="cpu").manual_seed(int(rng.integers(0, 2**63 - 1))) for rng in rngs]
        height, width = images[0].shape[:2]
        pad_h, pad_w = -height % _MULTIPLE, -width % _MULTIPLE
        outputs = []
        # one sample at a time on the CPU (CPU kernels are not bit-exact across batch shapes), one batch on CUDA
        groups = [[i] for i in range(len(images))] if self.device.type == "cpu" else [list(range(len(images)))]
        with torch.no_grad():
            for group in groups:
                image = images_to_tensor([images[i] for i in group], self.device)
                keep = 1.0 - masks_to_tensor([masks[i] for i in group], self.device)  # 1 = visible
                if pad_h or pad_w:
                    image = F.pad(image, (0, pad_w, 0, pad_h), mode="reflect")
                    keep = F.pad(keep, (0, pad_w, 0, pad_h), mode="reflect")
                visible = (image * keep).to(self.dtype)
                mu, std, features = self.encoder(visible)
                eps = per_sample_randn([gens[i] for i in group], mu.shape[1:], self.device, self.dtype)
                z = mu + std * eps
                completed = self.generator(z, features[-1], features[2], scale_down(keep, 8).to(self.dtype))
                outputs.append(completed.float()[:, :, :height, :width])
        done = tensor_to_images(torch.cat(outputs))
        return paste_back(images, masks, done)
