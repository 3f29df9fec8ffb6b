"""Face-part masks from a face-parsing network: BiSeNet or ParseNet, facexlib's architectures.

Landmarks give hulls of points; a parser gives the pixels of each part as they are (the real
outline of the lips, the hair, the ears), which is what Dolos-style inpainting of "the nose" or
"the hair" should replace. We use facexlib's two networks with the weight files facexlib expects
(``parsing_bisenet.pth``: face-parsing.PyTorch's BiSeNet, ImageNet normalisation; and
``parsing_parsenet.pth``: PSFRGAN's ParseNet, inputs in [-1, 1]), both at 512 x 512, both with
the 19 CelebAMask-HQ classes (see :mod:`.parsing` for how classes become parts).

facexlib's own ``init_parsing_model`` downloads a missing file without asking; here the weights
come from a local path or the weights cache only (``weights``: the file, a folder holding it under
facexlib's name, or the catalogue name ``parsing-bisenet`` / ``parsing-parsenet`` that `bench
weights fetch` fills), so a build never reaches for the network and a missing file is one clear
error before any sample is made. The network is built and loaded by :meth:`FaceParserMasker.setup`, once per
worker process, into a module-level cache (the masker object itself pickles cheaply).

Licence: both networks were trained on CelebAMask-HQ, whose licence allows non-commercial
research use only; the masker declares it as its ``licence_note``, which the dataset card quotes.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from dolos_bench.builder.masks.parsing import BISENET_CLASSES, DEFAULT_PARSED_PARTS, PARSENET_CLASSES, LabelMapMasker
from dolos_bench.utils.files import sha256_file
from dolos_bench.weights import WeightsError

__all__ = ["FaceParserMasker", "WEIGHT_FILES", "WEIGHT_URLS"]

#: The file names facexlib's ``init_parsing_model`` looks for in its ``model_rootpath``.
WEIGHT_FILES = {"bisenet": "parsing_bisenet.pth", "parsenet": "parsing_parsenet.pth"}
#: Where facexlib publishes them (for the error message; nothing is downloaded from here).
WEIGHT_URLS = {
    "bisenet": "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
    "parsenet": "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
}
_INPUT_SIZE = 512
_NORMALISATION = {"bisenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "parsenet": ((0.5,) * 3, (0.5,) * 3)}
_CLASSES = {"bisenet": BISENET_CLASSES, "parsenet": PARSENET_CLASSES}

_LICENCE_NOTE = (
    "**Face parser.** Face-part masks were drawn by a face-parsing network (facexlib's BiSeNet or "
    "ParseNet) trained on CelebAMask-HQ, whose licence allows non-commercial research use only."
)

_NETS: dict[tuple[str, str, str], Any] = {}
_NETS_LOCK = threading.Lock()


def weights_file(model: str, weights: str | Path) -> Path:
    """The weight file ``weights`` names: itself, or facexlib's file name inside that folder."""
    path = Path(weights).expanduser()
    return path / WEIGHT_FILES[model] if path.is_dir() else path


def _network(model: str, path: str, device: str) -> Any:
    """The parsing network of ``model`` with ``path``'s weights on ``device``, built once per process."""
    key = (model, path, device)
    net = _NETS.get(key)
    if net is None:
        with _NETS_LOCK:
            net = _NETS.get(key)
            if net is None:
                import torch
                from facexlib.parsing import BiSeNet, ParseNet

                net = BiSeNet(num_class=19) if model == "bisenet" else ParseNet(in_size=_INPUT_SIZE, out_size=_INPUT_SIZE,
                                                                                 parsing_ch=19)
                state = torch.load(path, map_location="cpu", weights_only=True)
                try:
                    net.load_state_dict(state, strict=True)
                except RuntimeError as exc:
                    first = str(exc).splitlines()[0]
                    raise WeightsError(f"masker face-parser: {path} is not a {model} parsing checkpoint ({first})") from None
                net = net.eval().to(device)
                _NETS[key] = net
    return net


@functools.lru_cache(maxsize=8)
def _digest(path: str) -> str:
    """The weights' sha256, once per process: every sample's provenance names it."""
    return sha256_file(Path(path))


class FaceParserMasker(LabelMapMasker):
    """One face part per sample from a BiSeNet/ParseNet face parser (weights from a local path).

    Args (keyword-only, as in a recipe):
        weights: ``parsing_bisenet.pth`` / ``parsing_parsenet.pth``, or the folder holding it
            (facexlib's ``model_rootpath``).
        model: ``bisenet`` (default) or ``parsenet``.
        parts, dilation, min_area, max_area: as for the landmark masker; parts may also be
            ``hair``, ``ears`` and ``neck`` (see :mod:`dolos_bench.builder.masks.parsing`).
    """

    name: ClassVar[str] = "face-parser"
    requires: ClassVar[tuple[str, ...]] = ("torch", "facexlib")
    extra: ClassVar[str | None] = "parsing"
    licence_note: ClassVar[str | None] = _LICENCE_NOTE
    weight_params: ClassVar[dict[str, str]] = {"weights": "any"}  # checked before any sample (dolos_bench.weights)

    class Config(LabelMapMasker.Config):
        weights: str
        """``parsing_bisenet.pth`` / ``parsing_parsenet.pth``, the folder holding it, or a catalogue name
        (``parsing-bisenet``, ``parsing-parsenet``): found by the build before any sample, not here, so
        that ``bench build --dry-run`` can list it as missing."""
        model: Literal["bisenet", "parsenet"] = "bisenet"

    def __init__(self, *, parts: Any = DEFAULT_PARSED_PARTS, dilation: Any = (1, 15), min_area: float = 0.001,
                 max_area: float = 0.6, weights: str, model: str = "bisenet") -> None:
        self.configure(weights=weights, model=model, parts=parts, dilation=dilation, min_area=min_area,
                       max_area=max_area)
        self.device = "cpu"

    @property
    def _path(self) -> str:
        """The weight file, through the one resolver (a path, its folder, or a catalogue name); found once."""
        if getattr(self, "_file", None) is None:
            self._file = self._find()
        return self._file

    def _find(self) -> str:
        from dolos_bench.weights import resolve_weights

        found = resolve_weights(self.weights, stage=f"masker {self.name}", expect="any").path
        path = weights_file(self.model, found)
        if not path.is_file():
            raise WeightsError(f"masker {self.name}: weights file {path} not found: download {WEIGHT_URLS[self.model]} "
                               f"by hand or `bench weights fetch parsing-{self.model}`, and pass its path (or folder)")
        return str(path.resolve())

    def setup(self, device: str) -> None:
        """Build the network and load its weights on ``device`` (once per process)."""
        self.device = device
        _network(self.model, self._path, device)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "model": self.model, "weights": self._path,
                "weights_sha256": _digest(self._path)}

    def label_map(self, image: np.ndarray, source_id: str | None) -> tuple[np.ndarray, tuple[str, ...]]:
        """The parser's argmax over the 19 classes at 512 x 512 (resized back by the caller).

        The last image's map is kept: the fakes of one image (``fakes.per_source`` > 1, or each
        generator of a shared mask) are parsed once.
        """
        import cv2
        import torch

        key = hashlib.blake2b(image.tobytes(), digest_size=16).digest() + repr(image.shape).encode()
        last = getattr(self, "_last", None)
        if last is not None and last[0] == key:
            return last[1], _CLASSES[self.model]
        net = _network(self.model, self._path, self.device)
        mean, std = _NORMALISATION[self.model]
        pixels = cv2.resize(image, (_INPUT_SIZE, _INPUT_SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        pixels = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        batch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None].to(self.device)
        with torch.no_grad():
            logits = net(batch)[0]  # BiSeNet: (out, out16, out32); ParseNet: (mask, image)
        labels = logits[0].argmax(0).to("cpu", torch.uint8).numpy()
        self._last = (key, labels)
        return labels, _CLASSES[self.model]
