"""Any diffusers inpainting pipeline (SD 2 inpainting, SDXL inpainting, FLUX Fill, ...) as a generator.

The Dolos paper had no text-guided inpainting; these are the generators of today's forgeries. The
model is a hub id, a catalogue name (``sd2-inpainting``, ``sdxl-inpainting``, ``flux-fill``:
``bench weights fetch NAME``) or a local pipeline folder (``save_pretrained`` layout). The
pipeline class is the one its ``model_index.json`` names (``FluxFillPipeline`` is not among
``AutoPipelineForInpainting``'s tasks); a text-to-image pipeline is turned into its inpainting
twin with ``AutoPipelineForInpainting.from_pipe``.

Mask polarity: SD-style pipelines take white (1) = inpaint, black = keep, which is this project's
polarity (255 = forged) and the opposite of RePaint's. Masks are handed over unchanged.

Prompts follow the face part the masker chose (``MaskResult.parts``, which the build passes to
generators that declare ``uses_parts``): ``prompt`` is a template whose ``{parts}`` is replaced
by the ``part_prompts`` of the sample's parts (a part without an entry is named by itself). The
same prompt for every sample: leave ``{parts}`` out.

Sizes: the image (and mask) may first be resized so that the longer side is ``work_size`` (SD 2
inpainting is trained at 512 px, SDXL at 1024 px), then mirrored up to a multiple of
``pad_multiple``; the result is cropped and resized back. With ``paste_back`` (the default) only
the pixels inside the mask are taken from the result; without it the whole image is the
pipeline's decode, and the class then claims nothing about pixels outside the mask.

Randomness: one CPU ``torch.Generator`` per sample, from its numpy rng (``torch_common``), passed
as the pipeline's ``generator`` list, so a sample's noise never depends on its batch-mates. On the
CPU each sample runs alone (bytes independent of the batch); on CUDA one call takes a batch of
samples of one size, in float16 (bfloat16 for FLUX) unless ``precision`` says otherwise.
"""

from __future__ import annotations

import inspect
import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Iterator, Literal

import numpy as np

from dolos_bench.builder.base import LearnedGenerator, SkipSample
from dolos_bench.config import Strict
from dolos_bench.utils.numbers import number
from dolos_bench.weights import resolve_weights

from .lama import pad_to_multiple

__all__ = ["DEFAULT_PART_PROMPTS", "DiffusersInpaintGenerator", "prompt_for"]

WHERE = ("a diffusers inpainting pipeline: a folder written by save_pretrained, a hub id, or a catalogue name"
         " (sd2-inpainting, sdxl-inpainting, flux-fill: `bench weights fetch NAME`)")

DEFAULT_PROMPT = "a high-resolution photograph of a person's face, {parts}"
DEFAULT_PART_PROMPTS: dict[str, str] = {
    "eyes": "natural eyes", "left_eye": "a natural eye", "right_eye": "a natural eye",
    "brows": "natural eyebrows", "nose": "a natural nose", "mouth": "a natural mouth and lips",
    "skin": "natural skin", "face": "a natural face", "hair": "natural hair",
}
NO_PARTS = "a natural face"


def prompt_for(template: str, part_prompts: dict[str, str], parts: list[str] | None) -> str:
    """The prompt of one sample: ``template`` with ``{parts}`` replaced by its parts' prompts."""
    described = [part_prompts.get(p, p.replace("_", " ")) for p in (parts or [])]
    unique = list(dict.fromkeys(described))
    return template.replace("{parts}", ", ".join(unique) if unique else NO_PARTS)


class DiffusersInpaintGenerator(LearnedGenerator):
    """A diffusers inpainting pipeline (SD 2, SDXL, FLUX Fill) with per-part prompts."""

    name: ClassVar[str] = "diffusers-inpaint"
    requires: ClassVar[tuple[str, ...]] = ("torch", "diffusers", "transformers")
    extra: ClassVar[str | None] = "diffusion"
    licence_note: ClassVar[str | None] = (
        "diffusers-inpaint: the pipeline's weights carry their own licence (SD 2 / SDXL inpainting: CreativeML"
        " Open RAIL++-M; FLUX.1 Fill [dev]: FLUX.1 [dev] Non-Commercial License); see `bench weights ls`")
    max_batch: ClassVar[int | None] = None
    default_batch: ClassVar[int | None] = 4  # SD 2 at 512² in fp16 with guidance: 8 UNet rows per step
    preserves_unmasked: ClassVar[bool] = True  # with paste_back (the default); an instance without says False
    uses_parts: ClassVar[bool] = True
    """The build passes each sample's mask parts (``inpaint_batch(..., parts=)``) for the prompt."""
    weight_params: ClassVar[dict[str, str]] = {"model": "folder"}

    class Config(Strict):
        model: str
        """Pipeline folder, hub id or catalogue name."""
        prompt: str = DEFAULT_PROMPT
        """Prompt template; ``{parts}`` becomes the sample's part prompts."""
        part_prompts: dict[str, str] = dict(DEFAULT_PART_PROMPTS)
        """Prompt of each face part (the masker's part names)."""
        negative_prompt: str | None = "blurry, deformed, distorted, low quality, painting, cartoon"
        """For pipelines that take one (FLUX Fill does not)."""
        steps: Annotated[int, number(integer=True, lo=1)] = 50
        guidance: Annotated[float, number(lo=0)] | None = None
        """Guidance scale; None: the pipeline's default (SD 7.5, FLUX Fill 30)."""
        strength: Annotated[float, number(lo=0, hi=1, lo_open=True)] = 1.0
        """1 = the masked region starts from pure noise."""
        paste_back: bool = True
        """Keep the real pixels outside the mask (else the whole decoded image is kept)."""
        work_size: Annotated[int, number(integer=True, lo=8)] | None = None
        """Resize so the longer side has this many pixels for the pipeline (None: as it comes)."""
        pad_multiple: Annotated[int, number(integer=True, lo=1)] = 64
        """Mirror-pad height and width up to this multiple (VAE x UNet downsampling)."""
        precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
        """Network dtype: auto = float32 on the CPU; float16 on CUDA (bfloat16 for FLUX)."""

    def __init__(self, model: str, prompt: str = DEFAULT_PROMPT, part_prompts: Mapping[str, str] = DEFAULT_PART_PROMPTS,
                 negative_prompt: str | None = "blurry, deformed, distorted, low quality, painting, cartoon",
                 steps: int = 50, guidance: float | None = None, strength: float = 1.0, paste_back: bool = True,
                 work_size: int | None = None, pad_multiple: int = 64, precision: str = "auto") -> None:
        self.configure(model=model, prompt=prompt,
                       part_prompts=dict(part_prompts),
                       negative_prompt=negative_prompt, steps=steps, guidance=guidance, strength=strength,
                       paste_back=paste_back, work_size=work_size, pad_multiple=pad_multiple, precision=precision)
        self.preserves_unmasked = self.paste_back  # type: ignore[misc]  # the instance states its own claim

    # -- loading ------------------------------------------------------------------------------------
    def load(self, device: str) -> None:
        """Load the pipeline once per worker; a missing or wrong model is one WeightsError line."""
        import torch

        from .torch_common import choose_device, load_pretrained, weights_identity

        resolved = resolve_weights(self.model, stage=f"generator {self.name}", expect="folder")
        class_name = _pipeline_class(resolved.path)
        precision = self.precision
        if precision == "auto" and class_name.startswith("Flux") and device not in ("cpu", None):
            precision = "bf16"  # FLUX overflows in float16
        self.device, self.dtype = choose_device(device, precision, self.name)  # type: ignore[arg-type]
        from diffusers import AutoPipelineForInpainting, DiffusionPipeline

        with _quiet_loading():
            pipe = load_pretrained(DiffusionPipeline, str(resolved.path), generator=self.name, hint=WHERE,
                                   torch_dtype=self.dtype)
        if "mask_image" not in inspect.signature(pipe.__call__).parameters:
            try:
                pipe = AutoPipelineForInpainting.from_pipe(pipe)
            except (ValueError, KeyError) as exc:
                from dolos_bench.weights import WeightsError

                raise WeightsError(f"generator {self.name}: {self.model!r} is a {type(pipe).__name__}, which has"
                                   f" no inpainting variant ({exc}); expected {WHERE}") from None
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        self.accepts = set(inspect.signature(self.pipe.__call__).parameters)
        self.weights = {**weights_identity(str(resolved.path)), "model": self.model}
        if resolved.revision:
            self.weights["revision"] = resolved.revision
        self._torch = torch

    def identity(self) -> dict[str, Any]:
        import diffusers

        return {
            **getattr(self, "weights", {"model": self.model}),
            "pipeline": type(self.pipe).__name__ if hasattr(self, "pipe") else None,
            "prompt": self.prompt, "part_prompts": dict(sorted(self.part_prompts.items())),
            "negative_prompt": self.negative_prompt, "steps": self.steps, "guidance": self.guidance,
            "strength": self.strength, "paste_back": self.paste_back, "work_size": self.work_size,
            "pad_multiple": self.pad_multiple, "precision": str(getattr(self, "dtype", self.precision)),
            "diffusers": diffusers.__version__,
        }

    # -- inpainting ---------------------------------------------------------------------------------
    def inpaint(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                parts: list[str] | None = None) -> np.ndarray:
        return self.inpaint_batch([image], [mask], [rng], parts=[parts or []])[0]

    def inpaint_batch(self, images: list[np.ndarray], masks: list[np.ndarray], rngs: list[np.random.Generator],
                      parts: list[list[str]] | None = None) -> list[np.ndarray]:
        from .torch_common import torch_generators

        self.ensure_loaded()
        gens = torch_generators(rngs)  # drawn in order, one per sample, before any grouping
        parts = parts or [[] for _ in images]
        if self.device.type == "cpu":
            groups = [[i] for i in range(len(images))]
        else:
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, image in enumerate(images):
                by_shape.setdefault(image.shape, []).append(i)
            groups = list(by_shape.values())
        out: list[np.ndarray | None] = [None] * len(images)
        for group in groups:
            results = self._run([images[i] for i in group], [masks[i] for i in group],
                                [gens[i] for i in group], [parts[i] for i in group])
            for i, result in zip(group, results):
                out[i] = result
        return [o for o in out if o is not None]

    def _run(self, images: list[np.ndarray], masks: list[np.ndarray], gens: list[Any],
             parts: list[list[str]]) -> list[np.ndarray]:
        """One pipeline call on same-size images."""
        from PIL import Image

        from .torch_common import paste_back

        height, width = images[0].shape[:2]
        work = [self._to_work(np.asarray(im, np.uint8), Image.BICUBIC) for im in images]
        work_masks = [self._to_work(((np.asarray(m) > 0) * 255).astype(np.uint8), Image.NEAREST) for m in masks]
        wh, ww = work[0].shape[:2]
        padded = [pad_to_multiple(im, self.pad_multiple) for im in work]
        padded_masks = [pad_to_multiple(m, self.pad_multiple) for m in work_masks]
        ph, pw = padded[0].shape[:2]
        kwargs: dict[str, Any] = {
            "prompt": [prompt_for(self.prompt, self.part_prompts, p) for p in parts],
            "image": [Image.fromarray(im) for im in padded],
            "mask_image": [Image.fromarray(m, mode="L") for m in padded_masks],
            "height": ph, "width": pw, "num_inference_steps": self.steps, "strength": self.strength,
            "generator": gens, "output_type": "np",
        }
        if self.guidance is not None:
            kwargs["guidance_scale"] = self.guidance
        if self.negative_prompt is not None and "negative_prompt" in self.accepts:
            kwargs["negative_prompt"] = [self.negative_prompt] * len(images)
        with self._torch.inference_mode():
            result = self.pipe(**{k: v for k, v in kwargs.items() if k in self.accepts})
        decoded = np.asarray(result.images, dtype=np.float32)
        if not np.isfinite(decoded).all():  # half precision overflowing: this sample is skipped, the build goes on
            raise SkipSample(f"{self.name}: the pipeline returned NaN or inf pixels in {self.dtype};"
                             " try precision: fp32 or bf16")
        outputs = []
        for b in range(len(images)):
            y = (np.clip(decoded[b], 0, 1) * 255.0).round().astype(np.uint8)[:wh, :ww]
            if (wh, ww) != (height, width):
                y = np.asarray(Image.fromarray(y).resize((width, height), Image.BICUBIC))
            outputs.append(np.ascontiguousarray(y))
        return paste_back(images, masks, outputs) if self.paste_back else outputs

    def _to_work(self, array: np.ndarray, resample: Any) -> np.ndarray:
        """``array`` resized so its longer side is ``work_size`` (unchanged without one)."""
        if self.work_size is None:
            return array
        from PIL import Image

        height, width = array.shape[:2]
        scale = self.work_size / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return array if size == (width, height) else np.asarray(Image.fromarray(array).resize(size, resample))


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No per-component loading bars from diffusers and transformers: the build draws its own bar."""
    import transformers
    from diffusers.utils import logging as diffusers_logging

    states = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers.utils.logging)]
    for lib, _ in states:
        lib.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # diffusers >= 0.36 renames torch_dtype; older ones know only that name
            warnings.filterwarnings("ignore", message=".*torch_dtype.* is deprecated")
            yield
    finally:
        for lib, enabled in states:
            if enabled:
                lib.enable_progress_bar()


def _pipeline_class(folder: Path) -> str:
    """The pipeline class ``model_index.json`` names ('' when there is none: diffusers then says why)."""
    try:
        return str(json.loads((folder / "model_index.json").read_text()).get("_class_name", ""))
    except (OSError, ValueError):
        return ""
