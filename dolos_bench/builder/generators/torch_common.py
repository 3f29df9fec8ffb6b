"""What every learned (torch) generator shares: device and precision, array <-> tensor, per-sample
noise, loading a model with one clear error, and the weights' identity.

A learned generator follows one shape (see ``repaint.py``, the first of them)::

    class MyGenerator(LearnedGenerator):  # builder/base.py: setup() loads once per device, inpaint() = a batch of one
        requires = ("torch", "diffusers"); extra = "diffusion"
        weight_params = {"model": "folder"}  # the build checks it before any sample
        class Config(Strict):
            model: str                      # a folder, catalogue name or cached hub id
            precision: Precision = "auto"
        def load(self, device):             # once per worker and device, before any sample
            self.device, self.dtype = choose_device(device, self.precision, self.name)
            self.unet = load_model(UNet2DModel, self.model, self.device, self.dtype, generator=self.name,
                                   hint="a diffusers UNet2DModel folder")  # dtype set at load, never cast
            self.weights = weights_identity(self.model)       # {"model": ..., "sha256": ...}
        def inpaint_batch(self, images, masks, rngs):
            self.ensure_loaded()            # a direct call outside a build loads on the CPU
            gens = torch_generators(rngs)   # one torch.Generator per sample, from its numpy rng
            x = per_sample_randn(gens, (3, H, W), self.device)  # noise of sample b from gens[b] only
            eps = run_network(self.unet, self.dtype, x, t)       # per sample on the CPU, batched on CUDA
            ...                             # scheduler steps with generator=gens (a list)
            return paste_back(images, masks, tensor_to_images(x))

Why each piece is here:

* **Batch invariance.** The build gives every sample its own numpy rng keyed by (recipe seed,
  sample id); output ``b`` must depend only on image ``b``, mask ``b`` and rng ``b``. One torch
  generator for a batch would make a sample's noise depend on its position and batch-mates, so
  :func:`torch_generators` makes one ``torch.Generator`` per sample (seeded from a draw of that
  sample's rng) and :func:`per_sample_randn` draws each sample's noise from its own generator,
  on the CPU, then moves it to the device: the noise is the same bytes on CPU and CUDA, and for
  any batch. Pass the list to diffusers' ``randn_tensor`` (scheduler ``step(generator=[...])``)
  too: it draws one sample per generator the same way. On the CPU, in float32, a sample's output is then the same
  alone or in any batch (the contract tests check it). On CUDA, kernels chosen per batch shape
  are not bit-reproducible across batch sizes: same seed and same batch make the same bytes on
  the same GPU and software, nothing more (docs/generators.md).
* **Precision.** ``"auto"`` is float32 on the CPU (half precision is slow there and changes
  bytes) and float16 on CUDA, where diffusion UNets are routinely run in half precision; the
  sampling arithmetic (scheduler steps, noise, pasting) stays float32 in every generator, only
  the network runs in the chosen dtype (:func:`run_network`), one sample at a time on the CPU
  (CPU kernels are not bit-exact across batch sizes) and as one batch on CUDA.
* **Errors before any sample.** The build checks every ``weight_params`` value first
  (:func:`dolos_bench.weights.check_stage_weights`); ``setup`` then loads, and
  :func:`load_pretrained` (which :func:`load_model` calls) turns a missing folder, a Hub id not in
  the local cache, a catalogue name not fetched or a folder of the wrong kind into one
  :class:`WeightsError` line naming the generator, the value and where to get it. Declare
  ``weight_params = {"model": "folder"}``.
* **Dtype.** :func:`load_model` gives the dtype to ``from_pretrained``; no module is cast with
  ``.to(dtype)`` afterwards, which diffusers answers with a "should be kept in float32" warning
  every time, even for float32.
* **Provenance.** :func:`weights_identity` hashes the model's files (a local folder, or the hub
  snapshot in the local cache) so each sample's ``generator_config`` names the exact weights.

Only import this module from a generator's module: it imports torch at import time, and the core
never imports generator modules at start-up (the registry loads them lazily).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal, Sequence

import numpy as np
import torch

from dolos_bench.errors import UserError
from dolos_bench.weights import WeightsError, resolve_weights
from dolos_bench.weights.cache import weights_digest

__all__ = [
    "Precision", "WeightsError", "DeviceError", "choose_device", "images_to_tensor", "masks_to_tensor",
    "tensor_to_images", "paste_back", "torch_generators", "per_sample_randn",
    "resolve_location", "load_pretrained", "load_model", "weights_identity", "runtime_identity", "model_dtype_call",
    "run_network",
]

Precision = Literal["auto", "fp32", "fp16", "bf16"]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class DeviceError(UserError, ValueError):
    """A device that this machine does not have (``cuda`` without a GPU, a bad name)."""


# -- device and precision ------------------------------------------------------------------------


def choose_device(device: str | None, precision: Precision, generator: str) -> tuple[torch.device, torch.dtype]:
    """The torch device and the network dtype for ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``auto``).

    ``auto`` (or None) takes the first GPU when there is one. A CUDA device asked for on a machine
    without one is a :class:`DeviceError`, not a silent fall-back to a build 100x slower.
    ``precision="auto"``: float32 on the CPU, float16 on CUDA; half precision asked for on the CPU
    is honoured only for bf16 (fp16 convolutions are not implemented there for every op).
    """
    name = (device or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"{generator}: unknown device {device!r} ({exc}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{generator}: device {device!r} asked for, but torch sees no CUDA GPU here"
                              " (use --device cpu, or install a CUDA build of torch)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"{generator}: device {device!r} asked for, but this machine has "
                              f"{torch.cuda.device_count()} GPU(s)")
    if precision == "auto":
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
    else:
        dtype = _DTYPES[precision]
        if dev.type == "cpu" and dtype is torch.float16:
            raise DeviceError(f"{generator}: precision fp16 is not supported on the CPU; use fp32 or bf16")
    return dev, dtype


def model_dtype_call(module: Any, dtype: torch.dtype, *args: Any, **kwargs: Any) -> Any:
    """Call ``module`` with its floating-point tensor arguments cast to ``dtype``.

    The network runs in ``dtype``; the caller casts the output back to float32 for the sampler.
    """
    cast = [a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    kw = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
    return module(*cast, **kw)


def run_network(module: Any, dtype: torch.dtype, x: torch.Tensor, *args: Any) -> torch.Tensor:
    """``module(x, *args)`` in ``dtype``, its output (``.sample`` of a diffusers output) as float32.

    On the CPU the batch runs one sample at a time: CPU kernels (oneDNN convolutions, attention
    matmuls) give results that differ in the last bits with the batch size (measured on a tiny
    UNet2DModel: 1.7e-6, enough to move a pixel by one uint8 level), and the build promises that a
    CPU sample's bytes do not depend on its batch. On CUDA the batch is one call: that is what
    batching is for, and bit-exactness across batch shapes is not promised there. Tensor
    arguments whose first dimension is the batch (per-sample timesteps) are split with ``x``.
    """
    def call(x_part: torch.Tensor, rest: list[Any]) -> torch.Tensor:
        out = model_dtype_call(module, dtype, x_part, *rest)
        return getattr(out, "sample", out).to(torch.float32)

    if x.device.type != "cpu" or x.shape[0] == 1:
        return call(x, list(args))
    batch = x.shape[0]
    rows = []
    for i in range(batch):
        rest = [a[i : i + 1] if torch.is_tensor(a) and a.ndim and a.shape[0] == batch else a for a in args]
        rows.append(call(x[i : i + 1], rest))
    return torch.cat(rows)


# -- arrays <-> tensors --------------------------------------------------------------------------


def images_to_tensor(images: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """``uint8 (H, W, 3)`` RGB images (one size) as a float32 ``(B, 3, H, W)`` batch in [-1, 1]."""
    batch = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(torch.float32)
    return (x / 127.5 - 1.0).to(device)


def masks_to_tensor(masks: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """``(H, W)`` masks (255/1 = forged) as a float32 ``(B, 1, H, W)`` batch: 1.0 = to inpaint, 0.0 = keep.

    This is the project's polarity; RePaint's scheduler wants the opposite (1 = keep): use ``1 - m``.
    """
    batch = np.stack([(np.asarray(m) > 0) for m in masks]).astype(np.float32)
    return torch.from_numpy(batch)[:, None].to(device)


def tensor_to_images(x: torch.Tensor) -> list[np.ndarray]:
    """A ``(B, 3, H, W)`` batch in [-1, 1] as ``uint8 (H, W, 3)`` images (rounded, clipped)."""
    y = ((x.detach().to(torch.float32).cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return list(y.permute(0, 2, 3, 1).numpy())


def paste_back(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each output where its mask is forged, its input elsewhere: unmasked pixels bit-exact, by construction."""
    result = []
    for image, mask, out in zip(images, masks, outputs):
        region = np.asarray(mask) > 0
        merged = np.array(image, dtype=np.uint8, copy=True)
        merged[region] = out[region]
        result.append(merged)
    return result


# -- per-sample randomness -----------------------------------------------------------------------


def torch_generators(rngs: Sequence[np.random.Generator]) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per sample, seeded from one draw of that sample's numpy rng.

    CPU generators on purpose: :func:`per_sample_randn` (and diffusers' ``randn_tensor``) then draw
    on the CPU and move the noise, so a seed gives the same noise on every device.
    """
    return [torch.Generator(device="cpu").manual_seed(int(rng.integers(0, 2**63 - 1))) for rng in rngs]


def per_sample_randn(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A ``(B, *shape)`` standard normal batch whose row ``b`` comes from ``generators[b]`` alone."""
    rows = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype)


# -- loading weights -----------------------------------------------------------------------------


def resolve_location(location: str, *, generator: str, hint: str, expect: str = "folder") -> str:
    """The local folder (or file) ``location`` names, through the one weights resolver.

    ``location`` is a path, a catalogue name (``bench weights ls``) or a Hub id whose snapshot is
    in the local cache (:func:`dolos_bench.weights.resolve_weights`: it never downloads). Anything
    else is a :class:`WeightsError` naming the generator, the value and what was ``hint``-ed.
    """
    try:
        return str(resolve_weights(location, stage=f"generator {generator}", expect=expect).path)  # type: ignore[arg-type]
    except WeightsError as exc:
        raise WeightsError(f"{exc}; expected {hint}") from None


def load_pretrained(cls: Any, location: str, *, generator: str, hint: str, subfolder: str | None = None,
                    **kwargs: Any) -> Any:
    """``cls.from_pretrained(location)`` with every way it can fail as one :class:`WeightsError` line.

    ``hint`` says what was expected and where to get it (``"a diffusers UNet2DModel folder
    (bench convert guided-diffusion CKPT OUT makes one from an ADM checkpoint)"``).
    """
    where = resolve_location(location, generator=generator, hint=hint)
    what = f"{location}/{subfolder}" if subfolder else location
    try:
        if subfolder:
            kwargs["subfolder"] = subfolder
        return cls.from_pretrained(where, **kwargs)
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())
        if len(reason) > 200:
            reason = reason[:197] + "..."
        raise WeightsError(f"{generator}: cannot load a {cls.__name__} from {what!r} ({reason}); expected {hint}") from None


def load_model(cls: Any, location: str, device: torch.device, dtype: torch.dtype, *, generator: str, hint: str,
               subfolder: str | None = None) -> Any:
    """:func:`load_pretrained` in ``dtype``, on ``device``, in eval mode: how every learned generator loads a network.

    The dtype is set while loading (``torch_dtype``), never by casting the module afterwards:
    diffusers' ``ModelMixin.to(dtype)`` logs "should be kept in float32" on every call, even a
    float32-to-float32 one, and ``from_pretrained`` is where it wants the dtype. The weights end up
    the same as a load followed by a cast (float32 on the CPU: the file's own bytes).
    """
    module = load_pretrained(cls, location, generator=generator, hint=hint, subfolder=subfolder, torch_dtype=dtype)
    return module.to(device).eval()


@lru_cache(maxsize=32)
def _hash_location(location: str) -> str:
    return weights_digest(resolve_weights(location, stage="weights", expect="any").path)


def weights_identity(location: str) -> dict[str, str]:
    """``{"model": location, "sha256": digest of its files}`` for provenance.

    ``location`` as the recipe gave it; the digest is of what it resolves to (a local folder or
    file in place, a catalogue file, a Hub id's snapshot in the local cache: what was loaded;
    :func:`~dolos_bench.weights.cache.weights_digest`). Each file's digest is remembered by path,
    size and mtime in the weights cache's stamps, and the result per process: a multi-GB model is
    read once per machine.
    """
    return {"model": str(location), "sha256": _hash_location(str(location))}


def runtime_identity(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """What a sample's ``generator_config`` records of how the network ran: precision, device type and
    the diffusers / torch versions (a CUDA build's pixels are not promised across these)."""
    import diffusers

    return {"precision": str(dtype).removeprefix("torch."), "device": device.type,
            "diffusers": diffusers.__version__, "torch": torch.__version__}
