"""LaMa (Suvorov et al., WACV 2022): Big-LaMa as the TorchScript file ``big-lama.pt``.

The file is the one lama-cleaner and IOPaint load (``torch.jit.load``), called as
``model(image[B,3,H,W] float in [0, 1], mask[B,1,H,W] in {0, 1}) -> [B,3,H,W] in [0, 1]`` with H
and W multiples of 8. This generator does what those tools do around the call, without depending
on them (they pin an old diffusers, Pillow 9.5 and a web stack; docs/generators-lama-sd.md):

* the mask is binarised (255/1 = inpaint, the project's polarity and LaMa's);
* image and mask are padded to a multiple of 8 by mirroring (``numpy.pad(mode="symmetric")``, as
  lama-cleaner's ``pad_img_to_modulo``) and the output cropped back. The mask is mirrored too: a
  pad beside a masked border must not hold a mirrored copy of the real pixels as known context;
* the model's output is pasted onto the original inside the mask only, so every pixel outside it
  is the real image's, bit for bit.

LaMa is deterministic: the per-sample rngs are not used. On CUDA samples of one padded size run as
one batch; on the CPU each sample runs alone, so its bytes never depend on its batch-mates. The
network runs in float32: its Fourier convolutions (``rfftn``) in half precision need power-of-two
sizes on CUDA, which face crops are not in general.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, ClassVar

import numpy as np

from dolos_bench.builder.base import LearnedGenerator, SkipSample
from dolos_bench.config import Strict
from dolos_bench.utils.numbers import number
from dolos_bench.weights import resolve_weights
from dolos_bench.weights.cache import file_digests

__all__ = ["LamaGenerator", "pad_to_multiple"]

WHERE = ("the Big-LaMa TorchScript file big-lama.pt: `bench weights fetch big-lama`, or a path to it"
         " (lama-cleaner / IOPaint keep it in $TORCH_HOME/hub/checkpoints)")


def pad_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    """``array`` (H, W[, C]) mirrored at the bottom and right up to multiples of ``multiple``."""
    height, width = array.shape[:2]
    pad = [(0, -height % multiple), (0, -width % multiple)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="symmetric") if any(p[1] for p in pad[:2]) else array


class LamaGenerator(LearnedGenerator):
    """Big-LaMa (TorchScript big-lama.pt), pasted back outside the mask."""

    name: ClassVar[str] = "lama"
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    extra: ClassVar[str | None] = "eval"  # torch alone; the `diffusion` extra brings it too
    licence_note: ClassVar[str | None] = (
        "lama: Big-LaMa (Suvorov et al., 2022; advimman/lama, Apache-2.0), trained on Places2;"
        " the TorchScript export of lama-cleaner")
    max_batch: ClassVar[int | None] = None
    default_batch: ClassVar[int | None] = 8  # 256² in float32: a few GB of activations on a GPU
    preserves_unmasked: ClassVar[bool] = True
    weight_params: ClassVar[dict[str, str]] = {"weights": "file"}
    """Parameters holding weights: the build resolves and checks them before any sample."""

    class Config(Strict):
        weights: str = "big-lama"
        """big-lama.pt: a path, or the catalogue name (`bench weights fetch big-lama`)."""
        pad_multiple: Annotated[int, number(integer=True, lo=1)] = 8
        """Pad height and width up to this multiple (Big-LaMa's downsampling needs 8)."""

    def __init__(self, weights: str = "big-lama", pad_multiple: int = 8) -> None:
        self.configure(weights=weights, pad_multiple=pad_multiple)

    def load(self, device: str) -> None:
        """Load the TorchScript file once per worker; a missing or wrong file is one WeightsError line."""
        import torch

        from .torch_common import choose_device

        self.device, _ = choose_device(device, "fp32", self.name)
        resolved = resolve_weights(self.weights, stage=f"generator {self.name}", expect="file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch >= 2.9 deprecates TorchScript; the file is TorchScript
                model = torch.jit.load(str(resolved.path), map_location=self.device)
        except (RuntimeError, ValueError, OSError) as exc:
            from dolos_bench.weights import WeightsError

            reason = " ".join(str(exc).split())[:160]
            raise WeightsError(f"generator {self.name}: {resolved.path} is not a TorchScript model ({reason});"
                               f" expected {WHERE}") from None
        self.model = model.eval()
        self.sha256 = resolved.check.sha256 if resolved.check is not None else file_digests(resolved.path)[0]

    def identity(self) -> dict[str, Any]:
        return {"weights": self.weights, "sha256": getattr(self, "sha256", None), "pad_multiple": self.pad_multiple}

    def inpaint_batch(self, images: list[np.ndarray], masks: list[np.ndarray],
                      rngs: list[np.random.Generator]) -> list[np.ndarray]:
        self.ensure_loaded()
        if self.device.type == "cpu":
            groups = [[i] for i in range(len(images))]
        else:  # one model call per padded size
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, image in enumerate(images):
                by_shape.setdefault(pad_to_multiple(image, self.pad_multiple).shape, []).append(i)
            groups = list(by_shape.values())
        out: list[np.ndarray | None] = [None] * len(images)
        for group in groups:
            for i, result in zip(group, self._run([images[i] for i in group], [masks[i] for i in group])):
                out[i] = result
        return [o for o in out if o is not None]

    def _run(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        """One model call on same-size images: pad, predict, crop, paste back inside the mask."""
        import torch

        from .torch_common import paste_back

        padded = np.stack([pad_to_multiple(np.asarray(im, np.uint8), self.pad_multiple) for im in images])
        binary = np.stack([pad_to_multiple((np.asarray(m) > 0).astype(np.uint8), self.pad_multiple) for m in masks])
        x = torch.from_numpy(padded).permute(0, 3, 1, 2).to(self.device, torch.float32) / 255.0
        m = torch.from_numpy(binary)[:, None].to(self.device, torch.float32)
        with torch.inference_mode():
            y = self.model(x, m)
        if not bool(torch.isfinite(y).all()):  # the sample is skipped with the reason, the build goes on
            raise SkipSample(f"{self.name}: the model returned NaN or inf pixels")
        y = (y.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        cropped = [y[b, : im.shape[0], : im.shape[1]] for b, im in enumerate(images)]
        return paste_back(images, masks, cropped)
