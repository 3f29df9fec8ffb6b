"""Turn whatever a user hands ``bench eval`` into a :class:`~dolos_bench.eval.api.Localizer`.

A model arrives in one of five shapes, tried in this order by :func:`load_localizer`:

1. a TorchScript file (``.pt``, ``.pth``, ``.ts``)            -> :class:`TorchScriptLocalizer`
2. an ONNX file (``.onnx``)                                    -> :class:`ONNXLocalizer`
3. a folder or archive of precomputed maps                     -> ``PredictionsLocalizer``
4. ``"package.module:ClassName"``                              -> that class, imported
5. a name registered in :data:`~dolos_bench.registry.LOCALIZERS` (entry points included)

Paths are tried first because a path may contain ``:`` and a name may look like a file stem.
``--device`` is checked once, by :func:`resolve_device`, before any of the five is built, so a
missing GPU reads the same for all of them.
Every adapter reports an :meth:`identity` with ``name``, ``kind``, ``path`` and
``weights_sha256``, so a results file ties a score to exact weights rather than a file name.

Models are outside code, so nothing they return is trusted: :func:`check_output` checks every
batch (count, 2-D, finite, in [0, 1]) and names the offending sample, because "NaN in batch 812"
is useless while "sample #3 (id 'ffhq/00042_telea') map has NaN" is a one-minute fix.
"""

from __future__ import annotations

from abc import abstractmethod

import inspect
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from dolos_bench.eval.api import Localizer, LocalizerError, LocalizerOutput
from dolos_bench.registry import LOCALIZERS, import_target
from dolos_bench.utils.files import sha256_file, sha256_path

from .checks import (  # noqa: F401  (re-exported: the checks are part of this module's API)
    ARCHIVE_SUFFIXES,
    LocalizerLoadError,
    _as_int,
    _fail,
    _id_list,
    _where,
    _as_triplet,
    _reject_unknown,
    check_output,
    parse_model_args,
)

__all__ = [
    "ARCHIVE_SUFFIXES",
    "DeviceError",
    "LocalizerLoadError",
    "ONNXLocalizer",
    "TorchScriptLocalizer",
    "call_localizer",
    "check_output",
    "sha256_file",
    "load_localizer",
    "parse_model_args",
    "resize_input",
    "resolve_device",
    "weights_sha256",
]

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
ONNX_SUFFIXES = (".onnx",)
class DeviceError(LocalizerLoadError):
    """``--device`` names no device, or one that this machine does not have."""


# -- devices --------------------------------------------------------------------------------------

DEVICE_KINDS = ("cpu", "cuda", "mps")
_DEVICE = re.compile(rf"^({'|'.join(DEVICE_KINDS)})(?::(\d+))?$")
_DEVICE_HELP = "use cpu, cuda, cuda:N (N = GPU index, as torch counts them) or mps"


def device_kind(device: str) -> str:
    """``"cuda:1"`` -> ``"cuda"``: what :attr:`Localizer.devices` lists."""
    return device.partition(":")[0]


def resolve_device(device: str) -> str:
    """Check ``--device`` once, the same way for every adapter, and return it in canonical form.

    Accepted: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (case and surrounding blanks ignored). A
    device that this machine does not have is an error here, before any model is built, because
    each framework fails differently on its own -- torch raises deep inside ``load``, and
    onnxruntime quietly runs on the CPU provider -- and a score computed on the wrong device (or
    an hour of CPU time the user did not ask for) is worse than a one-line refusal.

    Visibility is asked of torch, which every GPU adapter here uses. Without torch installed a
    CUDA request is passed on unchecked, and the adapter that runs the model checks it (the ONNX
    adapter refuses a session that did not get the CUDA provider).
    """
    text = str(device).strip().lower()
    match = _DEVICE.match(text)
    if match is None:
        raise DeviceError(f"unknown device {str(device)!r}: {_DEVICE_HELP}")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index is not None:
            raise DeviceError(f"unknown device {str(device)!r}: {_DEVICE_HELP} (cpu takes no index)")
        return "cpu"
    try:
        import torch
    except ImportError:
        return text
    if kind == "mps":
        if index not in (None, "0"):
            raise DeviceError(f"unknown device {str(device)!r}: {_DEVICE_HELP} (there is one mps device)")
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(
                f"device {text!r} asked for, but no Apple MPS device is available"
                " (torch.backends.mps.is_available() is False); use --device cpu"
            )
        return "mps"
    with warnings.catch_warnings(record=True) as caught:  # a broken driver warns: say it in the error
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        why = "".join(f"; torch said: {str(w.message).splitlines()[0]}" for w in caught[:1])
        raise DeviceError(
            f"device {text!r} asked for, but no CUDA GPU is visible (torch.cuda.is_available() is"
            f" False; torch {torch.__version__}{why}); use --device cpu, or check"
            " CUDA_VISIBLE_DEVICES and that this torch build has CUDA"
        )
    count = int(torch.cuda.device_count())
    if index is not None and int(index) >= count:
        visible = ", ".join(f"cuda:{i}" for i in range(count))
        raise DeviceError(
            f"device {text!r} asked for, but only {count} CUDA GPU{'s are' if count != 1 else ' is'}"
            f" visible ({visible})"
        )
    return text


def _check_supported(localizer_cls: Any, spec: str, device: str) -> None:
    """Refuse a device the localizer says it cannot use, instead of letting it run on the CPU."""
    devices = getattr(localizer_cls, "devices", None)
    if devices is None or device_kind(device) in devices:
        return
    raise DeviceError(
        f"{spec!r} runs on {', '.join(devices)} only, so --device {device} would not be used;"
        f" pass --device {devices[0]}"
    )


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file, or of a weights folder (e.g. a diffusers/transformers directory).

    A folder hashes the sorted list of (relative path, file sha256) pairs, so the digest names
    the exact bytes of every file and where it lies, whatever order the filesystem lists them in.
    """
    path = Path(path)
    if not path.exists():
        raise LocalizerLoadError(f"weights {str(path)!r}: no such file or folder")
    if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
        raise LocalizerLoadError(f"weights folder {str(path)!r} holds no files")
    return sha256_path(path)


def _accepts_ids(localizer: Localizer) -> bool:
    try:
        params = inspect.signature(localizer.predict).parameters
    except (TypeError, ValueError):  # builtins without a signature: assume the new contract
        return True
    return "ids" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def call_localizer(
    localizer: Localizer,
    images: Sequence[np.ndarray],
    ids: Sequence[str] | None = None,
    *,
    strict_size: bool = False,
) -> LocalizerOutput:
    """Run one batch through any localizer and check the result; what the runner should call.

    Passes ``ids`` only to a ``predict`` that accepts them, so a plug-in written against the
    older ``predict(images)`` signature keeps working; turns any exception the model raises into
    a :class:`LocalizerError` that names the batch's ids.
    """
    name = str(getattr(localizer, "name", None) or type(localizer).__name__)
    try:
        if ids is not None and _accepts_ids(localizer):
            output = localizer.predict(images, ids=list(ids))
        else:
            output = localizer.predict(images)
    except LocalizerError:
        raise
    except Exception as exc:  # the model is outside code; anything can come out of it
        raise _fail(
            name,
            f"batch of {len(images)}{_id_list(ids)}",
            f"predict() raised {type(exc).__name__}: {exc}",
            "predict() must not raise",
        ) from exc
    return check_output(
        output, ids, [np.shape(im) for im in images], name=name, strict_size=strict_size
    )


# -- tensor models: shared pre-/post-processing ----------------------------------------------------

InputKernel = Literal["pil-bilinear", "cv2-area"]
"""How :func:`resize_input` resamples; each is what one path has always used, so neither path's numbers move."""


def resize_input(image: np.ndarray, size: int, kernel: InputKernel) -> np.ndarray:
    """``image`` (uint8 RGB ``(H, W, 3)``) as the ``size`` x ``size`` square a model declared it takes.

    The one model-input resize, with the kernel named by the caller because two paths use two:

    * ``"pil-bilinear"``: the eval runner (:func:`~dolos_bench.eval.work.score_split`), for every
      localizer with an ``input_size``, before the model sees the batch: PIL's bilinear, which
      widens its support when it shrinks (so it antialiases);
    * ``"cv2-area"``: the TorchScript and ONNX adapters' own, for images handed to ``predict``
      directly at another size: OpenCV's area average when either side shrinks, bilinear
      otherwise. Under ``bench eval`` their images arrive at ``size`` already and pass unchanged.

    An image already at ``size`` x ``size`` is returned as it is (both kernels would copy it).
    """
    if image.shape[:2] == (size, size):
        return image
    if kernel == "pil-bilinear":
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    if kernel == "cv2-area":
        import cv2

        shrink = image.shape[0] > size or image.shape[1] > size
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    raise ValueError(f"unknown resize kernel {kernel!r}; use one of {InputKernel.__args__}")


_MAP_KEYS = ("map", "maps", "mask", "heatmap", "localization", "pred")
_SCORE_KEYS = ("score", "scores", "image_score", "detection", "label")


class _ArrayModelLocalizer(Localizer):
    """Common body of the TorchScript and ONNX adapters: options, batching, output parsing.

    Subclasses implement :meth:`_forward` on a float32 ``(B, 3, H, W)`` numpy batch and return
    the raw model output converted to numpy (array, tuple/list or dict of arrays).
    """

    kind = "model"
    _options = ("input_size", "mean", "std", "batch", "name")

    def __init__(self, path: str | Path, device: str = "cpu", **options: Any) -> None:
        _reject_unknown(self.kind, options, self._options)
        device = resolve_device(device)
        _check_supported(type(self), f"{self.kind} model {Path(path).name}", device)
        super().__init__(device=device, **options)
        self.path = Path(path).resolve()
        self.name = str(options.get("name") or self.path.stem)  # type: ignore[misc]
        size = options.get("input_size")
        self.input_size = None if size in (None, "", 0, "native") else _as_int("input_size", size, minimum=1)  # type: ignore[misc]
        self.mean = _as_triplet("mean", options.get("mean"))  # type: ignore[misc]
        self.std = _as_triplet("std", options.get("std"))  # type: ignore[misc]
        if (self.mean is None) != (self.std is None):
            raise LocalizerLoadError("options mean and std must be given together")
        if self.std is not None and any(s == 0 for s in self.std):
            raise LocalizerLoadError(f"option std={self.std} has a zero")
        self.batch = _as_int("batch", options.get("batch", 0))
        self._sha256: str | None = None

    def identity(self) -> dict[str, Any]:
        if self._sha256 is None:
            self._sha256 = sha256_file(self.path)
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "weights_sha256": self._sha256,
            "options": dict(self.options),
        }

    # -- preprocessing --------------------------------------------------------------------------
    def _prepare(self, images: Sequence[np.ndarray], ids: Sequence[str] | None) -> list[np.ndarray]:
        prepared = []
        for i, img in enumerate(images):
            img = np.asarray(img)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise LocalizerError(
                    f"localizer {self.name!r}: {_where(i, ids)}: image has shape {img.shape} and"
                    f" dtype {img.dtype} [rule: images are uint8 RGB (H, W, 3)]"
                )
            if self.input_size is not None:
                img = resize_input(img, self.input_size, "cv2-area")
            prepared.append(img)
        return prepared

    def _to_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
        if self.mean is not None and self.std is not None:
            mean = np.asarray(self.mean, np.float32).reshape(1, 3, 1, 1)
            std = np.asarray(self.std, np.float32).reshape(1, 3, 1, 1)
            batch = (batch - mean) / std
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _groups(self, images: Sequence[np.ndarray]) -> list[list[int]]:
        """Index groups fed to the model together: same size, at most ``batch`` long.

        A batch of mixed sizes at native resolution cannot be stacked, so it goes one by one
        rather than padded, since padding would change what a fully convolutional model sees.
        """
        n = len(images)
        if n == 0:
            return []
        same = all(im.shape == images[0].shape for im in images)
        if not same:
            return [[i] for i in range(n)]
        step = self.batch or n
        return [list(range(i, min(i + step, n))) for i in range(0, n, step)]

    # -- output parsing -------------------------------------------------------------------------
    def _split(self, raw: Any, n: int, ids: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(maps ``(n, H, W)``, scores ``(n,)`` or None) from whatever the model returned."""
        score = None
        if isinstance(raw, dict):
            map_key = next((k for k in _MAP_KEYS if k in raw), None)
            if map_key is None:
                raise self._error(ids, f"output dict has keys {sorted(raw)}", f"a dict output needs a map under one of {_MAP_KEYS}")
            score_key = next((k for k in _SCORE_KEYS if k in raw), None)
            maps, score = raw[map_key], (raw[score_key] if score_key else None)
        elif isinstance(raw, (tuple, list)):
            if not 1 <= len(raw) <= 2:
                raise self._error(ids, f"output is a sequence of {len(raw)}", "a model returns a map or (map, score)")
            maps = raw[0]
            score = raw[1] if len(raw) == 2 else None
        else:
            maps = raw
        maps = np.asarray(maps)
        if maps.ndim == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if maps.ndim != 3 or maps.shape[0] != n:
            raise self._error(
                ids,
                f"map output has shape {tuple(maps.shape)} for a batch of {n}",
                "map output must be (B, 1, H, W) or (B, H, W)",
            )
        if score is not None:
            score = np.asarray(score)
            if score.ndim == 2 and score.shape[1] == 1:
                score = score[:, 0]
            if score.shape != (n,):
                raise self._error(
                    ids,
                    f"score output has shape {tuple(score.shape)} for a batch of {n}",
                    "score output must be (B,) or (B, 1)",
                )
        return maps, score

    def _error(self, ids: Sequence[str] | None, problem: str, rule: str) -> LocalizerError:
        return _fail(self.name, f"batch{_id_list(ids)}", problem, rule)

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> Any:
        """Run the model on a prepared float batch (B, 3, H, W); return its raw output."""

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        prepared = self._prepare(images, ids)
        maps: list[np.ndarray | None] = [None] * len(prepared)
        scores: list[float] | None = []
        for group in self._groups(prepared):
            group_ids = [ids[i] for i in group] if ids is not None else None
            batch = self._to_batch([prepared[i] for i in group])
            try:
                raw = self._forward(batch)
            except LocalizerError:
                raise
            except Exception as exc:
                raise self._error(
                    group_ids or [f"#{i}" for i in group],
                    f"the model raised {type(exc).__name__}: {exc}",
                    "the model must run on a (B, 3, H, W) float batch",
                ) from exc
            group_maps, group_scores = self._split(raw, len(group), group_ids)
            for j, i in enumerate(group):
                maps[i] = group_maps[j]
            if group_scores is None:
                scores = None
            elif scores is not None:
                scores.extend(float(s) for s in group_scores)
        output = LocalizerOutput(maps=maps, scores=scores if scores else None)  # type: ignore[arg-type]
        return check_output(output, ids, [im.shape for im in prepared], name=self.name)


class TorchScriptLocalizer(_ArrayModelLocalizer):
    """A TorchScript file saved with ``torch.jit.script(m).save(p)`` or ``torch.jit.trace``.

    TorchScript rather than a pickled ``nn.Module`` because it loads without the author's code,
    which is exactly what a third party can hand over. The model takes a float ``(B, 3, H, W)``
    batch (scaled to [0, 1], then ``(x - mean) / std`` if those options are given) and returns
    maps already in [0, 1]: ``(B, 1, H, W)`` or ``(B, H, W)``, or ``(map, score)``, or a dict
    with ``"map"`` and optionally ``"score"``.

    Options: ``input_size`` (square side; default native size), ``mean``/``std``
    (``"0.485,0.456,0.406"``), ``batch`` (largest chunk fed at once; 0 = the whole batch), ``name``.
    """

    name = "torchscript"  # type: ignore[misc]
    kind = "torchscript"
    devices = ("cpu", "cuda", "mps")

    def __init__(self, path: str | Path, device: str = "cpu", **options: Any) -> None:
        super().__init__(path, device=device, **options)
        import torch

        device = self.device  # checked and canonical: resolve_device ran in the base class
        try:
            with warnings.catch_warnings():
                # torch>=2.9 deprecates TorchScript; loading an existing file is still the point.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(self.path), map_location=device)
        except Exception as exc:
            raise LocalizerLoadError(
                f"cannot load {str(self.path)!r} as TorchScript: {str(exc).splitlines()[0]}."
                " Save the model with torch.jit.script(model).save(path) (or torch.jit.trace);"
                " a plain state_dict needs its model code: wrap it in a Localizer class and"
                " pass 'module.path:ClassName'."
            ) from exc
        self.model.eval()

    def _forward(self, batch: np.ndarray) -> Any:
        import torch

        with torch.inference_mode():
            raw = self.model(torch.from_numpy(batch).to(self.device))
        return _torch_to_numpy(raw)


def _torch_to_numpy(raw: Any) -> Any:
    import torch

    if isinstance(raw, torch.Tensor):
        return raw.detach().float().cpu().numpy()
    if isinstance(raw, dict):
        return {k: _torch_to_numpy(v) for k, v in raw.items()}
    if isinstance(raw, (tuple, list)):
        return type(raw)(_torch_to_numpy(v) for v in raw)
    return raw


def _onnx_providers(device: str, available: Sequence[str]) -> list[Any]:
    """The provider list for ``device``; a CUDA request never degrades to CPU without a word."""
    if device_kind(device) != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise DeviceError(
            f"device {device!r} asked for, but this onnxruntime has no CUDA provider (it has"
            f" {', '.join(available) or 'none'}); install onnxruntime-gpu, or use --device cpu"
        )
    device_id = int(device.partition(":")[2] or 0)
    return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]


def _check_onnx_session(device: str, providers: Sequence[str]) -> None:
    """onnxruntime falls back to the CPU provider when CUDA fails to start; refuse that run."""
    if device_kind(device) == "cuda" and (not providers or providers[0] != "CUDAExecutionProvider"):
        raise DeviceError(
            f"device {device!r} asked for, but onnxruntime could not start its CUDA provider and"
            f" fell back to {', '.join(providers) or 'nothing'} (are the CUDA and cuDNN libraries"
            " that onnxruntime-gpu needs installed?); use --device cpu to run on the CPU"
        )


class ONNXLocalizer(_ArrayModelLocalizer):
    """An ONNX file run with onnxruntime; same input/output conventions as TorchScript.

    ONNX is the framework-neutral door (TensorFlow, JAX and PaddlePaddle models export to it).
    The input name is read from the session. If the file fixes the spatial size of its input
    and no ``input_size`` is given, that size is used, and a fixed batch dimension of 1 sets
    ``batch=1``, so such exports work without options. Two outputs are (map, score) unless
    their names say otherwise (``map``/``score``). Extra option: ``threads`` (intra-op threads;
    0 = onnxruntime's default).

    ``device="cuda[:N]"`` needs onnxruntime-gpu and a session that really got the CUDA provider;
    onnxruntime's own habit of falling back to the CPU provider is turned into a
    :class:`DeviceError`. ``mps`` is refused (no CoreML provider is wired up).
    """

    name = "onnx"  # type: ignore[misc]
    kind = "onnx"
    devices = ("cpu", "cuda")
    _options = _ArrayModelLocalizer._options + ("threads",)

    def __init__(self, path: str | Path, device: str = "cpu", **options: Any) -> None:
        super().__init__(path, device=device, **options)
        import onnxruntime as ort

        providers = _onnx_providers(self.device, ort.get_available_providers())
        so = ort.SessionOptions()
        threads = _as_int("threads", options.get("threads", 0))
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as exc:
            raise LocalizerLoadError(f"cannot load {str(self.path)!r} as ONNX: {exc}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise LocalizerLoadError(
                f"{self.path.name}: the model has {len(inputs)} inputs"
                f" ({', '.join(i.name for i in inputs)}); expected one (B, 3, H, W) image input"
            )
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) == 4:
            if self.input_size is None and all(isinstance(d, int) and d > 0 for d in shape[2:]):
                if shape[2] != shape[3]:
                    raise LocalizerLoadError(
                        f"{self.path.name}: fixed input {shape[2]}x{shape[3]} is not square;"
                        " export with dynamic height/width axes"
                    )
                self.input_size = shape[2]  # type: ignore[misc]
            if shape[0] == 1 and not self.batch:
                self.batch = 1
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()
        _check_onnx_session(self.device, self.providers)

    def identity(self) -> dict[str, Any]:
        info = super().identity()
        info["provider"] = self.providers[0] if self.providers else None
        return info

    def _forward(self, batch: np.ndarray) -> Any:
        outputs = self.session.run(None, {self.input_name: batch})
        names = [n.lower() for n in self.output_names]
        if len(outputs) == 2 and any(n in _SCORE_KEYS for n in names) and any(n in _MAP_KEYS for n in names):
            return dict(zip(names, outputs))
        return tuple(outputs) if len(outputs) > 1 else outputs[0]


# -- loading --------------------------------------------------------------------------------------


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def _takes_keyword(factory: Any, keyword: str) -> bool:
    """Whether ``factory(keyword=...)`` is accepted (by name or ``**kwargs``); unknown = yes."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _instantiate(factory: Any, spec: str, kind: str, device: str, options: dict[str, Any],
                 weights_digest: str | None = None) -> Localizer:
    if isinstance(factory, type) and not issubclass(factory, Localizer):
        raise LocalizerLoadError(
            f"{spec!r} is the class {factory.__module__}.{factory.__qualname__}, which is not a"
            " subclass of dolos_bench.eval.api.Localizer"
        )
    if not callable(factory):
        raise LocalizerLoadError(f"{spec!r} is a {type(factory).__name__}, not a Localizer class or factory")
    _check_supported(factory, spec, device)
    if "weights" in options and not _takes_keyword(factory, "weights"):
        raise LocalizerLoadError(
            f"--weights was given, but {spec!r} takes no 'weights' argument; add"
            " `weights: str | None = None` to its __init__ (see dolos_bench.eval.api.Localizer)"
        )
    try:
        localizer = factory(device=device, **options)
    except TypeError as exc:
        raise LocalizerLoadError(f"cannot build {spec!r} with device={device!r} and options {options}: {exc}") from exc
    if not isinstance(localizer, Localizer):
        raise LocalizerLoadError(
            f"{spec!r} returned a {type(localizer).__name__}, not a dolos_bench.eval.api.Localizer"
        )
    _stamp_identity(localizer, kind=kind, path=spec, weights_digest=weights_digest)
    return localizer


def _stamp_identity(localizer: Localizer, *, kind: str, path: str, weights_digest: str | None = None) -> None:
    """Give a plug-in's own ``identity()`` the fields every results file needs.

    The plug-in's answer wins for anything it sets (it may know its weights' hash); we only add
    ``name``, ``kind``, ``path`` and ``weights_sha256`` where missing. Done by shadowing the
    bound method on the instance, not by wrapping the object, so ``isinstance`` checks and
    attribute access (``input_size``, ``mean``) on the localizer are untouched.
    """
    base = localizer.identity

    def identity() -> dict[str, Any]:
        info = dict(base())
        info.setdefault("name", getattr(localizer, "name", type(localizer).__name__))
        info["kind"] = kind
        info.setdefault("path", path)
        if weights_digest is not None and not info.get("weights_sha256"):
            info["weights_sha256"] = weights_digest  # what `--weights` pointed at, hashed by us
        info.setdefault("weights_sha256", None)
        return info

    try:
        localizer.identity = identity  # type: ignore[method-assign]
    except AttributeError:  # __slots__ without __dict__: leave the plug-in's identity as is
        pass


def load_localizer(
    spec: str | Path, *, device: str = "cpu", options: Mapping[str, Any] | None = None
) -> Localizer:
    """Build the localizer that ``spec`` names (file, folder/archive, ``module:Class`` or name).

    ``options`` are the parsed ``--model-arg`` values, passed to the adapter or class as keyword
    arguments. A ``weights`` option (``--weights PATH``) must name an existing file or folder; it
    is passed on as a path string and hashed (:func:`weights_sha256`) into the identity's
    ``weights_sha256`` unless the plug-in reports its own. Unknown registry names raise
    :class:`~dolos_bench.registry.UnknownNameError` with did-you-mean suggestions.

    ``device`` goes through :func:`resolve_device` first, whatever the spec names, so an absent
    GPU is the same one-line :class:`DeviceError` for every adapter; a localizer whose class
    lists :attr:`~dolos_bench.eval.api.Localizer.devices` is refused any other device rather
    than run on the CPU unannounced. A ``module:Class`` spec is imported with the current
    folder on the import path, as ``python -m`` does (see :func:`~dolos_bench.registry.import_target`).
    """
    device = resolve_device(device)
    opts = dict(options or {})
    text = str(spec)
    path = Path(text).expanduser()
    weights_digest = None
    if opts.get("weights") not in (None, ""):
        if path.is_file() and _has_suffix(path, TORCHSCRIPT_SUFFIXES + ONNX_SUFFIXES + ARCHIVE_SUFFIXES) or path.is_dir():
            raise LocalizerLoadError(
                f"--weights is for registered and module:Class localizers; {text!r} is a model file or "
                "predictions, which carries its own weights"
            )
        weights_path = Path(str(opts["weights"])).expanduser()
        weights_digest = weights_sha256(weights_path)
        opts["weights"] = str(weights_path)
    if path.is_file() and _has_suffix(path, TORCHSCRIPT_SUFFIXES):
        return TorchScriptLocalizer(path, device=device, **opts)
    if path.is_file() and _has_suffix(path, ONNX_SUFFIXES):
        return ONNXLocalizer(path, device=device, **opts)
    if path.is_dir() or (path.is_file() and _has_suffix(path, ARCHIVE_SUFFIXES)):
        from dolos_bench.eval.predictions import PredictionsLocalizer

        return PredictionsLocalizer(path, device=device, **opts)
    if path.is_file():
        raise LocalizerLoadError(
            f"{text!r} is a file but not a model or predictions archive; expected one of"
            f" {', '.join(TORCHSCRIPT_SUFFIXES + ONNX_SUFFIXES + ARCHIVE_SUFFIXES)}"
        )
    if _has_suffix(path, TORCHSCRIPT_SUFFIXES + ONNX_SUFFIXES + ARCHIVE_SUFFIXES) or (
        "/" in text and ":" not in text
    ):
        raise LocalizerLoadError(f"{text!r} looks like a path, but no such file or folder exists")
    if ":" in text:
        factory: Callable[..., Any] = import_target(text, from_cwd=True)  # type: ignore[assignment]
        return _instantiate(factory, text, "class", device, opts, weights_digest)
    factory = LOCALIZERS.get(text)  # UnknownNameError with did-you-mean for typos
    target = f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', text)}"
    return _instantiate(factory, target, "registry", device, opts, weights_digest)
