"""One generic registry for every pluggable kind of thing in dolos-bench.

Sources, maskers, generators, perturbations and localizers are all looked up by name through a
:class:`Registry`. Entries can be

* registered eagerly with the :meth:`Registry.register` decorator,
* registered lazily as a ``"module:attr"`` string, so that heavy imports (dlib, torch, diffusers)
  happen only when that entry is actually used,
* discovered from installed packages through an entry-point group such as
  ``dolos_bench.generators`` -- the same door an outside plug-in uses.

An unknown name is answered with the closest known names, because a typo in a recipe should cost
seconds, not a stack trace.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar
from .errors import UserError
from .utils.text import closest_names, did_you_mean  # noqa: F401  (re-exported for plug-ins and old imports)

T = TypeVar("T")


class UnknownNameError(UserError, KeyError):
    """Raised for a name that no registry entry answers to; the message suggests close names."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain sentence.
        return str(self.args[0])


class PluginLoadError(UserError, ImportError):
    """Raised when a lazy entry or an entry point cannot be imported."""


def _put_cwd_on_path() -> str:
    """Put the current folder first on ``sys.path``, as ``python -m`` does; return it.

    It stays there for the rest of the process, not just for one import: a plug-in's module
    may import its siblings lazily (inside ``predict``), and worker processes re-import it by
    the same spec. Only a user's ``module:Class`` spec asks for this; registry entries and
    entry points are imported from the installed packages alone.
    """
    cwd = os.getcwd()
    if not sys.path or os.path.abspath(sys.path[0] or os.curdir) != cwd:
        if cwd in sys.path:
            sys.path.remove(cwd)
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()  # a package created after start-up must be found
    return cwd


def import_target(target: str, *, from_cwd: bool = False) -> object:
    """Import ``"package.module:attr.sub"`` and return the attribute.

    ``from_cwd=True`` (what ``bench eval my_pkg.models:MyLocalizer`` uses) first puts the current
    folder at the front of ``sys.path``, so the spec resolves exactly as ``python -m my_pkg.models``
    would from the same folder, and stays importable in the rest of the run.
    """
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise PluginLoadError(f"{target!r} is not of the form 'module.path:Attribute'")
    where = f" (looked in the current folder {_put_cwd_on_path()!r} and the installed packages)" if from_cwd else ""
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginLoadError(f"cannot import module {module_name!r} for {target!r}{where}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise PluginLoadError(f"module {module_name!r} has no attribute {attr_path!r}") from exc
    return obj


@dataclass(frozen=True)
class Parameter:
    """One parameter a stage takes, as ``bench ls KIND`` shows it: ``radius: int = 3``."""

    name: str
    annotation: str = ""
    default: str | None = None  # the default as Python writes it; None when the parameter is required

    def __str__(self) -> str:
        text = self.name + (f": {self.annotation}" if self.annotation else "")
        return text if self.default is None else f"{text} = {self.default}"


def _annotation_text(annotation: object) -> str:
    """``'int'`` for ``int`` or for the string ``"int"`` (postponed annotations are strings)."""
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def _pydantic_parameters(model: type) -> list[Parameter]:
    params = []
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        if info.is_required():
            default = None
        elif info.default_factory is not None:
            default = repr(info.default_factory())
        else:
            default = repr(info.default)
        params.append(Parameter(name, _annotation_text(info.annotation), default))
    return params


def parameters_of(factory: object) -> list[Parameter]:
    """The parameters a registered factory takes: a pydantic model's fields, a stage's ``Config``, else its signature.

    For a class the signature is its ``__init__`` without ``self``; ``*args`` is left out (stages
    are configured by keyword) and ``**kwargs`` shown as ``**kwargs``.
    """
    if inspect.isclass(factory) and isinstance(getattr(factory, "model_fields", None), dict):
        return _pydantic_parameters(factory)
    config = getattr(factory, "Config", None)  # a stage's declared parameters (dolos_bench.stage.Stage)
    if inspect.isclass(config) and isinstance(getattr(config, "model_fields", None), dict):
        return _pydantic_parameters(config)
    try:
        signature = inspect.signature(factory)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []
    params = []
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            params.append(Parameter(f"**{p.name}"))
            continue
        default = None if p.default is inspect.Parameter.empty else repr(p.default)
        params.append(Parameter(p.name, _annotation_text(p.annotation), default))
    return params


@dataclass(frozen=True)
class EntryDetails:
    """What ``bench ls KIND`` shows of one entry; ``error`` says why it could not be loaded."""

    name: str
    summary: str
    origin: str
    parameters: list[Parameter] = field(default_factory=list)
    error: str | None = None


@dataclass
class _Entry:
    name: str
    summary: str
    target: str | None = None  # "module:attr" for lazy entries
    obj: object | None = None
    origin: str = "builtin"  # "builtin", "entry-point:<dist>" or "runtime"


class Registry(Generic[T]):
    """Name -> factory mapping for one kind of plug-in.

    ``kind`` is the human word used in messages ("generator"), ``group`` the entry-point group
    searched on first use (``dolos_bench.generators``).
    """

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, _Entry] = {}
        self._entry_points_loaded = group is None

    # -- registration -------------------------------------------------------------------------
    def register(
        self, name: str | None = None, *, summary: str | None = None
    ) -> Callable[[T], T]:
        """Decorator: ``@GENERATORS.register("telea")`` on a class or factory function."""

        def decorator(obj: T) -> T:
            entry_name = name or getattr(obj, "name", None) or getattr(obj, "__name__")
            doc = summary if summary is not None else _first_line(getattr(obj, "__doc__", ""))
            self._add(_Entry(entry_name, doc, obj=obj, origin="runtime"))
            return obj

        return decorator

    def add_lazy(self, name: str, target: str, summary: str = "") -> None:
        """Register ``name`` to be imported from ``"module:attr"`` only when first used."""
        self._add(_Entry(name, summary, target=target))

    def _add(self, entry: _Entry) -> None:
        existing = self._entries.get(entry.name)
        if existing is not None and existing.obj is not None and existing.obj is not entry.obj:
            if existing.target is None and entry.target is None:
                raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        if existing is not None and existing.target and entry.obj is not None:
            entry.summary = entry.summary or existing.summary
            entry.target = existing.target
            entry.origin = existing.origin
        self._entries[entry.name] = entry

    # -- lookup -------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._entries:
                continue  # built-ins win; a plug-in cannot silently replace them
            dist = getattr(ep.dist, "name", "?") if ep.dist else "?"
            self._entries[ep.name] = _Entry(
                ep.name, "", target=ep.value, origin=f"entry-point:{dist}"
            )

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """The registered object for ``name``, importing it if it is lazy."""
        self._load_entry_points()
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, self.names())}"
                f" Known: {', '.join(self.names()) or '(none)'}."
            )
        if entry.obj is None:
            assert entry.target is not None
            entry.obj = import_target(entry.target)
            if not entry.summary:
                entry.summary = _first_line(getattr(entry.obj, "__doc__", ""))
        return entry.obj  # type: ignore[return-value]

    def create(self, name: str, /, **kwargs: object) -> object:
        """``get(name)(**kwargs)``: build an instance from its registered factory."""
        factory = self.get(name)
        return factory(**kwargs)  # type: ignore[operator]

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, one-line summary, origin) for every entry, without importing lazy ones."""
        self._load_entry_points()
        return [(e.name, e.summary, e.origin) for _, e in sorted(self._entries.items())]

    def details(self, name: str) -> EntryDetails:
        """Summary, origin and parameters of ``name``, importing it if it is lazy.

        A plug-in that fails to import is described with the error instead of its parameters, so
        that one broken entry does not hide the others from ``bench ls``.
        """
        try:
            factory = self.get(name)
        except PluginLoadError as exc:
            entry = self._entries[name]
            return EntryDetails(name, entry.summary, entry.origin, error=str(exc))
        entry = self._entries[name]
        return EntryDetails(name, entry.summary, entry.origin, parameters_of(factory))


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0].strip() if (doc or "").strip() else ""


SOURCES: Registry = Registry("source", "dolos_bench.sources")
MASKERS: Registry = Registry("masker", "dolos_bench.maskers")
GENERATORS: Registry = Registry("generator", "dolos_bench.generators")
PERTURBATIONS: Registry = Registry("perturbation", "dolos_bench.perturbations")
LOCALIZERS: Registry = Registry("localizer", "dolos_bench.localizers")

REGISTRIES: dict[str, Registry] = {
    "sources": SOURCES,
    "maskers": MASKERS,
    "generators": GENERATORS,
    "perturbations": PERTURBATIONS,
    "localizers": LOCALIZERS,
}

# Built-in entries are lazy so that `bench ls` and recipe validation never import dlib or torch.
_BUILTINS: dict[str, list[tuple[str, str, str]]] = {
    "sources": [
        ("folder", "dolos_bench.data.sources:FolderSource", "Any folder tree of images; ids from relative paths"),
        ("hf", "dolos_bench.data.sources:HFSource", "A Hugging Face dataset (local path or hub id) with column mapping"),
        ("sample", "dolos_bench.data.sources:SampleSource", "Offline redistributable portraits for the quickstart"),
        ("dolos", "dolos_bench.data.dolos_layout:DolosRealSource", "Real images of a Dolos-layout folder (real/<split>/)"),
    ],
    "maskers": [
        ("strokes", "dolos_bench.builder.masks.strokes:StrokeMasker", "LaMa-style free-form brush strokes"),
        ("boxes", "dolos_bench.builder.masks.boxes:BoxMasker", "LaMa-style random rectangles"),
        ("landmarks", "dolos_bench.builder.masks.landmarks:LandmarkMasker", "Face parts from dlib 68-point landmarks"),
        ("face-parser", "dolos_bench.builder.masks.face_parser:FaceParserMasker",
         "Face parts from a BiSeNet/ParseNet face parser (local weights)"),
        ("celebamask-hq", "dolos_bench.builder.masks.celebamask_hq:CelebAMaskHQMasker",
         "Face parts from CelebAMask-HQ's annotations of CelebA-HQ images"),
    ],
    "generators": [
        ("telea", "dolos_bench.builder.generators.opencv:TeleaGenerator", "OpenCV inpainting, Telea's fast marching method"),
        ("ns", "dolos_bench.builder.generators.opencv:NavierStokesGenerator", "OpenCV inpainting, Navier-Stokes based"),
        ("pluralistic", "dolos_bench.builder.generators.pluralistic:PluralisticInpainter",
         "Pluralistic Image Completion (CVPR 2019) from the authors' released checkpoints"),
        ("lama", "dolos_bench.builder.generators.lama:LamaGenerator", "Big-LaMa (TorchScript big-lama.pt), pasted back outside the mask"),
        ("diffusers-inpaint", "dolos_bench.builder.generators.diffusers_inpaint:DiffusersInpaintGenerator",
         "Any diffusers inpainting pipeline (SD 2, SDXL, FLUX Fill) with per-part prompts"),
        ("repaint", "dolos_bench.builder.generators.repaint:RePaintGenerator", "RePaint over a pixel-space diffusers UNet2DModel (DDPM, ADM/P2)"),
        ("ddpm-full", "dolos_bench.builder.generators.ddpm_full:DDPMFullGenerator", "Whole images sampled from a pixel or latent diffusion model (Dolos setup A)"),
        ("repaint-ldm", "dolos_bench.builder.generators.repaint_ldm:RePaintLDMGenerator", "RePaint in a latent diffusion model's latent space (variants full, paste)"),
        ("ldm-inpaint", "dolos_bench.builder.generators.ldm_inpaint:LDMInpaintGenerator", "CompVis latent-diffusion inpainting (VQ-f4 + 7-channel UNet), DDIM"),
    ],
    "perturbations": [
        ("jpeg", "dolos_bench.perturbations:JPEG", "JPEG re-compression at a quality"),
        ("webp", "dolos_bench.perturbations:WEBP", "WEBP re-compression at a quality"),
        ("blur", "dolos_bench.perturbations:GaussianBlur", "Gaussian blur with a sigma in pixels"),
        ("noise", "dolos_bench.perturbations:GaussianNoise", "Additive Gaussian noise, sigma in 0..255 units"),
        ("resize", "dolos_bench.perturbations:Resize", "Rescale by a factor (moves the mask too)"),
        ("median", "dolos_bench.perturbations:MedianBlur", "Median filter over an odd size x size window"),
        ("motion-blur", "dolos_bench.perturbations:MotionBlur", "Blur along a line of a length at an angle"),
        ("gamma", "dolos_bench.perturbations:Gamma", "Gamma curve 255 (x/255)^gamma"),
        ("brightness-contrast", "dolos_bench.perturbations:BrightnessContrast",
         "Contrast about mid-grey, then a brightness shift"),
    ],
    "localizers": [],
}

for _kind, _items in _BUILTINS.items():
    for _name, _target, _summary in _items:
        REGISTRIES[_kind].add_lazy(_name, _target, _summary)
