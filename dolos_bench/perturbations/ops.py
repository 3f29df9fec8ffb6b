"""Post-processing perturbations (re-compression, blur, noise, resize) and chains of them.

The same objects serve ``bench build`` (a recipe's post-processing of every sample) and
``bench stress`` (a grid of degradations applied to a finished dataset), so they are parsed from
one small spec language that both a YAML recipe and a command line can write:

* a dict ``{"name": "jpeg", "quality": 75}`` -- the form stored with each sample (``identity()``),
* a one-key dict ``{"jpeg": {"quality": 75}}``, ``{"jpeg": 75}`` or ``{"resize": [0.5, "area"]}``,
* a string ``"jpeg(quality=75)"``, ``"jpeg(75)"``, ``"resize(0.5, bicubic)"`` or ``"jpeg"``,
* for chains, a list of the above or a string ``"resize(0.5)|jpeg(75)"``.

Every perturbation is a pure function of ``(image, mask, rng)`` with every encoder setting fixed,
so the same inputs and seed give the same bytes (on the same library builds: libjpeg, libwebp
and OpenCV are not promised to agree bit for bit across versions).
"""

from __future__ import annotations

import ast
import inspect
import io
import keyword
import math
import re
from typing import Annotated, Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np
from PIL import Image
from pydantic import field_validator

from ..config import Strict
from ..errors import UserError
from ..registry import PERTURBATIONS, UnknownNameError, did_you_mean
from ..utils.numbers import number
from .base import Perturbation

__all__ = [
    "JPEG",
    "WEBP",
    "GaussianBlur",
    "GaussianNoise",
    "Resize",
    "Chain",
    "PerturbationSpecError",
    "UnknownPerturbationError",
    "parse_perturbation",
    "parse_chain",
    "describe_perturbation",
    "INTERPOLATIONS",
]


class PerturbationSpecError(UserError, ValueError):
    """A perturbation or chain spec that cannot be understood or has invalid parameters.

    A ``ValueError`` so that a pydantic validator of a recipe turns it into a ValidationError.
    """


class UnknownPerturbationError(PerturbationSpecError, UnknownNameError):
    """An unknown perturbation name; the message is the registry's, with its did-you-mean.

    It is both the registry's :class:`UnknownNameError` (a ``KeyError``, what every registry
    lookup raises) and a ``ValueError`` (what spec validation raises), so either ``except`` works.
    """


def _check_inputs(owner: str, image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The image as a C-contiguous array, after checking the project's image/mask conventions."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{owner}: image must be a uint8 RGB array of shape (H, W, 3), got {desc}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{owner}: image is empty, shape {image.shape}")
    if mask is not None:
        if not isinstance(mask, np.ndarray) or mask.shape != image.shape[:2]:
            got = mask.shape if isinstance(mask, np.ndarray) else type(mask).__name__
            raise ValueError(
                f"{owner}: mask must be None or an (H, W) array matching the image {image.shape[:2]}, got {got}"
            )
    return np.ascontiguousarray(image)


# -- codecs ----------------------------------------------------------------------------------


def _decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)


class _Recompression(Perturbation):
    """Encode with a lossy codec at ``quality`` and decode back; subclasses pin the codec settings."""

    _MAX_SIDE: ClassVar[int]
    _FORMAT: ClassVar[str]

    class Config(Strict):
        quality: Annotated[int, number(integer=True, lo=1, hi=100)]

    def __init__(self, quality: int) -> None:
        self.configure(quality=quality)

    def _save_options(self) -> dict[str, Any]:
        return {}

    def apply(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        image = _check_inputs(self.name, image, mask)
        if max(image.shape[:2]) > self._MAX_SIDE:
            raise ValueError(
                f"{self.name}: image {image.shape[:2]} exceeds {self._FORMAT}'s {self._MAX_SIDE} px limit"
            )
        buf = io.BytesIO()
        Image.fromarray(image, "RGB").save(buf, format=self._FORMAT, quality=self.quality, **self._save_options())
        return _decode_rgb(buf.getvalue()), mask


class JPEG(_Recompression):
    """JPEG re-compression: the most common laundering of an image shared online.

    Chroma subsampling is pinned to 4:2:0 and Huffman optimisation off, so the bytes depend only
    on the quality (Pillow's defaults could change under us otherwise).
    """

    name: ClassVar[str] = "jpeg"
    _FORMAT: ClassVar[str] = "JPEG"
    _MAX_SIDE: ClassVar[int] = 65500  # the JPEG format's limit

    def _save_options(self) -> dict[str, Any]:
        return {"subsampling": "4:2:0", "optimize": False, "progressive": False}


class WEBP(_Recompression):
    """Lossy WEBP re-compression, as platforms that transcode uploads to WEBP do.

    ``method`` (speed/effort) is pinned because it changes the bytes; lossless mode is off.
    """

    name: ClassVar[str] = "webp"
    _FORMAT: ClassVar[str] = "WEBP"
    METHOD: ClassVar[int] = 4  # libwebp's default effort level, fixed for determinism
    _MAX_SIDE: ClassVar[int] = 16383  # the WEBP format's limit

    def _save_options(self) -> dict[str, Any]:
        return {"method": self.METHOD, "lossless": False, "exact": False}


# -- filters ---------------------------------------------------------------------------------


class GaussianBlur(Perturbation):
    """Gaussian blur with ``sigma`` in pixels; hides the high-frequency traces of inpainting.

    The kernel covers +-3 sigma (``2*ceil(3*sigma)+1``) and borders reflect without repeating
    the edge pixel (BORDER_REFLECT_101), so edges are neither darkened nor smeared.
    """

    name: ClassVar[str] = "blur"

    class Config(Strict):
        sigma: Annotated[float, number(lo=0.0, lo_open=True)]

    def __init__(self, sigma: float) -> None:
        self.configure(sigma=sigma)

    @property
    def ksize(self) -> int:
        return 2 * math.ceil(3 * self.sigma) + 1

    def apply(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        image = _check_inputs(self.name, image, mask)
        k = self.ksize
        out = cv2.GaussianBlur(
            image, (k, k), sigmaX=self.sigma, sigmaY=self.sigma, borderType=cv2.BORDER_REFLECT_101
        )
        return np.ascontiguousarray(out, dtype=np.uint8), mask


class GaussianNoise(Perturbation):
    """Additive i.i.d. Gaussian noise per pixel and channel, ``sigma`` in 0..255 intensity units.

    The only perturbation that uses ``rng``; values are rounded to nearest and clipped, so
    ``sigma=0`` is exactly the identity.
    """

    name: ClassVar[str] = "noise"

    class Config(Strict):
        sigma: Annotated[float, number(lo=0.0, hi=255.0)]

    def __init__(self, sigma: float) -> None:
        self.configure(sigma=sigma)

    def apply(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        image = _check_inputs(self.name, image, mask)
        if self.sigma == 0:
            return image.copy(), mask
        noise = rng.standard_normal(image.shape, dtype=np.float32)
        noisy = image.astype(np.float32) + noise * np.float32(self.sigma)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), mask


# -- geometry --------------------------------------------------------------------------------

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel, sampling at pixel centres: floor((i + 0.5) * n_in / n_out).

    Integer arithmetic, so the mask lands on exactly the pixels the image filter centres on,
    without float rounding that could differ between platforms.
    """
    i = np.arange(n_out, dtype=np.int64)
    return np.minimum(((2 * i + 1) * n_in) // (2 * n_out), n_in - 1)


class Resize(Perturbation):
    """Rescale by ``scale``; the mask moves with the image (nearest neighbour, values kept).

    The image goes through Pillow's resampling filters, which widen their support when
    downscaling (anti-aliasing) as photo pipelines do; OpenCV's INTER_LINEAR would alias.
    ``nearest`` uses the same pixel-centre sampling as the mask. The new size is
    ``round(H*scale) x round(W*scale)`` (Python's round, at least 1 px).
    """

    name: ClassVar[str] = "resize"
    geometric: ClassVar[bool] = True

    class Config(Strict):
        scale: Annotated[float, number(lo=0.0, lo_open=True)]
        interpolation: str = "bilinear"

        @field_validator("interpolation", mode="before")
        @classmethod
        def _known(cls, interpolation: Any) -> str:
            if not isinstance(interpolation, str) or interpolation.lower() not in INTERPOLATIONS:
                hint = did_you_mean(interpolation, list(INTERPOLATIONS)) if isinstance(interpolation, str) else ""
                raise ValueError(
                    f"interpolation must be one of {', '.join(map(repr, INTERPOLATIONS))}, got {interpolation!r}.{hint}"
                )
            return interpolation.lower()

    def __init__(self, scale: float, interpolation: str = "bilinear") -> None:
        self.configure(scale=scale, interpolation=interpolation)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(new height, new width) for an input of ``height`` x ``width``."""
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def apply(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        image = _check_inputs(self.name, image, mask)
        h, w = image.shape[:2]
        nh, nw = self.output_size(h, w)
        rows, cols = _nearest_indices(h, nh), _nearest_indices(w, nw)
        if self.interpolation == "nearest":
            out = np.ascontiguousarray(image[rows[:, None], cols[None, :]])
        else:
            resized = Image.fromarray(image, "RGB").resize((nw, nh), INTERPOLATIONS[self.interpolation])
            out = np.array(resized, dtype=np.uint8)
        new_mask = None if mask is None else np.ascontiguousarray(mask[rows[:, None], cols[None, :]])
        return out, new_mask


# -- chains ----------------------------------------------------------------------------------


def _defaults(obj: object) -> dict[str, Any]:
    """Constructor defaults of ``type(obj)``, so a description can leave them out."""
    try:
        sig = inspect.signature(type(obj))
    except (TypeError, ValueError):
        return {}
    return {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def _format_value(value: Any) -> str:
    if isinstance(value, str) and value.isidentifier() and not keyword.iskeyword(value):
        return value  # bare word, as a user would type it: resize(0.5, bicubic)
    return repr(value)


def describe_perturbation(p: Perturbation) -> str:
    """``name(k=v, ...)``, leaving out parameters at their default; parseable by parse_perturbation."""
    defaults = _defaults(p)
    params = {k: v for k, v in p.identity().items() if k != "name"}
    items = [f"{k}={_format_value(v)}" for k, v in params.items() if not (k in defaults and defaults[k] == v)]
    return f"{p.name}({', '.join(items)})"


def _child_rng(entropy: Sequence[int], index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(entropy), spawn_key=(index,))))


class Chain:
    """Perturbations applied in order; the post-processing of a recipe or one point of a stress grid.

    Each step gets its own child generator, keyed by its position, from one draw of the caller's
    ``rng``: appending a step never changes the draws of earlier ones, and the caller's later
    draws do not depend on the chain's length.
    """

    def __init__(self, steps: Iterable[Perturbation] = ()) -> None:
        self.steps: list[Perturbation] = list(steps)
        for s in self.steps:
            if not (callable(getattr(s, "apply", None)) and callable(getattr(s, "identity", None))):
                raise TypeError(f"chain steps must be Perturbation objects, got {s!r}")

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Perturbation]:
        return iter(self.steps)

    def __getitem__(self, index: int) -> Perturbation:
        return self.steps[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chain) and self.identity() == other.identity()

    def __hash__(self) -> int:
        return hash(self.describe())

    def __repr__(self) -> str:
        return f"Chain({self.describe()!r})"

    @property
    def geometric(self) -> bool:
        """True when some step moves pixels (so the mask must travel with the image)."""
        return any(getattr(s, "geometric", False) for s in self.steps)

    def identity(self) -> list[dict[str, Any]]:
        """JSON form, one ``{"name": ..., **params}`` per step; ``parse_chain`` reads it back."""
        return [dict(s.identity()) for s in self.steps]

    def describe(self) -> str:
        """Short key such as ``resize(scale=0.5)|jpeg(quality=75)`` for breakdowns; ``none`` if empty."""
        return "|".join(describe_perturbation(s) for s in self.steps) or "none"

    def apply(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        entropy = [int(x) for x in rng.integers(0, 2**64, size=2, dtype=np.uint64)]
        for i, step in enumerate(self.steps):
            image, mask = step.apply(image, mask, _child_rng(entropy, i))
        return image, mask


# -- parsing ---------------------------------------------------------------------------------

_STEP_RE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)
_NO_STEPS = {"", "none"}


def _split_top_level(text: str, sep: str = "|") -> list[str]:
    """Split on ``sep`` outside brackets and quotes, so ``f('a|b')`` stays one step."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _arg_value(node: ast.expr, text: str) -> Any:
    if isinstance(node, ast.Name):  # bare word: resize(0.5, bicubic)
        return node.id
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise PerturbationSpecError(
            f"malformed perturbation {text!r}: arguments must be numbers, words or quoted strings"
        ) from exc


def _parse_string(text: str) -> tuple[str, list[Any], dict[str, Any]]:
    if len(_split_top_level(text)) > 1:
        raise PerturbationSpecError(f"{text!r} is a chain of several perturbations; use parse_chain")
    m = _STEP_RE.match(text)
    if not m:
        raise PerturbationSpecError(
            f"malformed perturbation {text!r}: expected name or name(args), e.g. 'jpeg(quality=75)'"
        )
    name, inner = m.group(1), m.group(2)
    if inner is None or not inner.strip():
        return name, [], {}
    try:
        tree = ast.parse(f"_f({inner})", mode="eval")
    except SyntaxError as exc:
        raise PerturbationSpecError(
            f"malformed perturbation {text!r}: cannot read the arguments ({exc.msg})"
        ) from exc
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.func.id != "_f":
        raise PerturbationSpecError(f"malformed perturbation {text!r}: unbalanced parentheses")
    args: list[Any] = []
    for a in call.args:
        if isinstance(a, ast.Starred):
            raise PerturbationSpecError(f"malformed perturbation {text!r}: '*' is not allowed")
        args.append(_arg_value(a, text))
    kwargs: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise PerturbationSpecError(f"malformed perturbation {text!r}: '**' is not allowed")
        if kw.arg in kwargs:
            raise PerturbationSpecError(f"malformed perturbation {text!r}: {kw.arg!r} given twice")
        kwargs[kw.arg] = _arg_value(kw.value, text)
    return name, args, kwargs


def _parse_mapping(spec: Mapping[Any, Any]) -> tuple[str, list[Any], dict[str, Any]]:
    if not all(isinstance(k, str) for k in spec):
        raise PerturbationSpecError(f"perturbation spec {dict(spec)!r} must have string keys")
    if "name" in spec:
        name = spec["name"]
        if not isinstance(name, str):
            raise PerturbationSpecError(f"perturbation spec {dict(spec)!r}: 'name' must be a string")
        return name, [], {k: v for k, v in spec.items() if k != "name"}
    if len(spec) != 1:
        raise PerturbationSpecError(
            f"perturbation spec {dict(spec)!r} must be {{'name': ..., <params>}} or a one-key"
            " dict such as {'jpeg': {'quality': 75}}"
        )
    ((name, value),) = spec.items()
    if value is None:
        return name, [], {}
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise PerturbationSpecError(f"parameters of {name!r} must have string keys, got {value!r}")
        return name, [], dict(value)
    if isinstance(value, (list, tuple)):
        return name, list(value), {}
    return name, [value], {}


def _lookup(name: str) -> Callable[..., Perturbation]:
    if name not in PERTURBATIONS and name.lower() in PERTURBATIONS:
        name = name.lower()  # "JPEG(75)" is not worth an error
    try:
        return PERTURBATIONS.get(name)
    except UnknownNameError as exc:
        raise UnknownPerturbationError(str(exc)) from None


def _bind(name: str, factory: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], text: str) -> dict[str, Any]:
    """Positional args onto parameter names, with messages that name the perturbation."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        if args:
            raise PerturbationSpecError(f"{text}: perturbation {name!r} takes keyword parameters only")
        return kwargs
    params = [
        p for p in sig.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    names = [p.name for p in params]
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    if len(args) > len(names):
        raise PerturbationSpecError(
            f"{text}: perturbation {name!r} takes at most {len(names)} parameter(s)"
            f" ({', '.join(names) or 'none'}), got {len(args)}"
        )
    bound = dict(zip(names, args))
    for k, v in kwargs.items():
        if k in bound:
            raise PerturbationSpecError(f"{text}: parameter {k!r} of perturbation {name!r} given twice")
        if k not in names and not open_kwargs:
            raise PerturbationSpecError(
                f"{text}: perturbation {name!r} has no parameter {k!r}.{did_you_mean(k, names)}"
                f" Parameters: {', '.join(names) or '(none)'}."
            )
        bound[k] = v
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in bound]
    if missing:
        raise PerturbationSpecError(
            f"{text}: perturbation {name!r} needs parameter(s) {', '.join(map(repr, missing))}"
        )
    return bound


def parse_perturbation(spec: Perturbation | Mapping[str, Any] | str) -> Perturbation:
    """A perturbation from any of the spec forms in the module docstring.

    Unknown names raise :class:`UnknownPerturbationError` (with the registry's did-you-mean);
    anything else wrong raises :class:`PerturbationSpecError` naming the perturbation.
    """
    if isinstance(spec, Perturbation):
        return spec
    if isinstance(spec, str):
        name, args, kwargs = _parse_string(spec)
        text = spec.strip()
    elif isinstance(spec, Mapping):
        name, args, kwargs = _parse_mapping(spec)
        text = repr(dict(spec))
    else:
        raise PerturbationSpecError(
            f"a perturbation spec must be a string like 'jpeg(75)' or a dict, got {type(spec).__name__}: {spec!r}"
        )
    factory = _lookup(name)
    bound = _bind(name, factory, args, kwargs, text)
    try:
        obj = factory(**bound)
    except (TypeError, ValueError) as exc:
        raise PerturbationSpecError(f"invalid perturbation {text}: {exc}") from exc
    if not (callable(getattr(obj, "apply", None)) and callable(getattr(obj, "identity", None))):
        raise PerturbationSpecError(f"perturbation {name!r} built {obj!r}, which is not a Perturbation")
    return obj


def parse_chain(spec: Chain | Perturbation | Mapping[str, Any] | str | Sequence[Any] | None) -> Chain:
    """A :class:`Chain` from a list of perturbation specs, a single one, or ``"a(..)|b(..)"``.

    ``None``, ``[]``, ``""`` and ``"none"`` (what ``Chain.describe()`` says for an empty chain)
    give the empty chain. Strings inside a list may themselves be ``|`` chains.
    """
    if spec is None:
        return Chain()
    if isinstance(spec, Chain):
        return Chain(spec.steps)
    if isinstance(spec, (str, Mapping, Perturbation)):
        items: Sequence[Any] = [spec]
    elif isinstance(spec, (list, tuple)):
        items = spec
    else:
        raise PerturbationSpecError(
            f"a chain spec must be a list, a string like 'resize(0.5)|jpeg(75)' or a dict,"
            f" got {type(spec).__name__}: {spec!r}"
        )
    steps: list[Perturbation] = []
    for item in items:
        if isinstance(item, str):
            if item.strip().lower() in _NO_STEPS:
                continue
            parts = _split_top_level(item)
            if any(not part.strip() for part in parts):
                raise PerturbationSpecError(f"malformed chain {item!r}: empty step around '|'")
            steps.extend(parse_perturbation(part) for part in parts)
        else:
            steps.append(parse_perturbation(item))
    return Chain(steps)
