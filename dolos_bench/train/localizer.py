"""The localizer side of a trainable baseline: one base class that scores a run folder.

A baseline registers a subclass of :class:`TrainedLocalizer` in the ``dolos_bench.localizers``
entry-point group and names its :class:`~dolos_bench.train.task.TrainTask` in ``task``; then

* ``bench train NAME`` finds the task through :func:`trainable_task`, and
* ``bench eval NAME --weights runs/RUN`` (or ``bench stress``) builds the subclass, which reads
  the run's ``config.json`` (task, supervision, model config, input size), refuses a run of
  another model, loads ``model.safetensors`` and predicts through ``task.predict``.

``--weights`` may also name a bare state-dict file (``.safetensors``, or a torch ``.pt``/``.pth``
such as the Dolos authors' released checkpoints); the model config then comes from
``--model-arg`` options. Without ``--weights`` the network is freshly initialised from a fixed
seed, with a warning: that keeps the registry's contract tests meaningful, but its scores are
those of an untrained model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from ..errors import UserError
from ..eval.api import Localizer, LocalizerOutput
from ..eval.localizers import resize_input
from ..registry import LOCALIZERS, import_target
from ..utils.files import sha256_file
from .pretrained import read_state_dict
from .run import CONFIG, RUN_KIND, WEIGHTS
from .task import TrainTask

if TYPE_CHECKING:
    import torch

__all__ = ["TrainedLocalizer", "WrongModelError", "NotTrainableError", "trainable_task", "trainable_names"]


class WrongModelError(UserError, ValueError):
    """The weights belong to another model (another task, or keys that do not fit)."""


class NotTrainableError(UserError, ValueError):
    """``bench train NAME`` for a localizer that has no training task."""


def trainable_task(name: str) -> tuple[type["TrainedLocalizer"], type[TrainTask]]:
    """The localizer class registered as ``name`` (or a ``module:Class``) and its task; a clear error when it has none."""
    if ":" in name:  # module:Class, as `bench eval` takes it: an outside model trains without an install
        factory: Any = import_target(name, from_cwd=True)
    else:
        factory = LOCALIZERS.get(name)  # UnknownNameError with did-you-mean for typos
    task = getattr(factory, "task", None)
    if not (isinstance(task, type) and issubclass(task, TrainTask)):
        known = ", ".join(trainable_names()) or "(none installed)"
        raise NotTrainableError(f"localizer {name!r} cannot be trained (it names no TrainTask); trainable: {known}")
    return factory, task  # type: ignore[return-value]


def is_trainable(factory: object) -> bool:
    task = getattr(factory, "task", None)
    return isinstance(task, type) and issubclass(task, TrainTask)


def trainable_names() -> list[str]:
    """Registered localizers that name a task (those that fail to import are left out)."""
    names = []
    for name in LOCALIZERS.names():
        try:
            if is_trainable(LOCALIZERS.get(name)):
                names.append(name)
        except Exception:  # noqa: BLE001 - a broken plug-in must not hide the others
            continue
    return names


def _to_numpy_maps(maps: "torch.Tensor", scores: "torch.Tensor") -> LocalizerOutput:
    m = maps.detach().float().clamp_(0.0, 1.0).cpu().numpy()
    s = scores.detach().float().clamp_(0.0, 1.0).cpu().numpy().reshape(-1)
    return LocalizerOutput(maps=[np.ascontiguousarray(x[0], dtype=np.float32) for x in m], scores=[float(v) for v in s])


class TrainedLocalizer(Localizer):
    """Scores a trained network of ``task``: a run folder of ``bench train`` or a state-dict file.

    Options: ``weights`` (run folder or file), ``supervision`` (only for a bare file; a run folder
    records its own), ``batch`` (images per forward pass, default 16) and the task's ``Config``
    fields (only for a bare file or no weights: a run folder's config wins, and a different value
    is an error rather than silently ignored).
    """

    task: ClassVar[type[TrainTask]]
    devices = ("cpu", "cuda", "mps")

    def __init__(self, device: str = "cpu", weights: str | None = None, supervision: str | None = None,
                 batch: int = 16, **model_args: Any) -> None:
        import torch

        super().__init__(device=device, weights=weights, supervision=supervision, batch=batch, **model_args)
        self.batch = max(1, int(batch))
        self.run: dict[str, Any] | None = None
        weights_file: Path | None = None
        if weights is not None and Path(weights).is_dir():
            self.run = self._read_run(Path(weights))
            recorded = self.run["task"]
            config = dict(recorded.get("config") or {})
            for key, value in model_args.items():
                if key in config and config[key] != value:
                    raise WrongModelError(
                        f"--model-arg {key}={value!r} differs from the run's {key}={config[key]!r}: a run folder's"
                        " model config is fixed by its recipe; drop the option")
            config.update({k: v for k, v in model_args.items() if k not in config})
            supervision = recorded["supervision"]
            self.input_size = int(self.run.get("input_size") or self.task.input_size)  # type: ignore[misc]
            weights_file = Path(weights) / WEIGHTS
            if not weights_file.is_file():
                raise WrongModelError(f"{weights}: run folder has no {WEIGHTS}: the run has not finished (resume it with bench train)")
        else:
            config = dict(model_args)
            supervision = supervision or self.task.supervisions[-1]
            self.input_size = self.task.input_size  # type: ignore[misc]
            weights_file = Path(weights) if weights is not None else None
        try:
            self.task_obj = self.task(self.task.Config.model_validate(config), supervision)  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise WrongModelError(f"{self.name}: bad model options {config}: {str(exc).splitlines()[0]}") from exc
        self.mean, self.std = self.task.mean, self.task.std  # type: ignore[misc]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = self.task_obj.build_model()
        self._weights_sha256: str | None = None
        if weights_file is not None:
            self._load(weights_file)
            self._weights_sha256 = sha256_file(weights_file)
        else:
            warnings.warn(f"{self.name}: no --weights given: scoring an untrained network (train one with bench train)",
                          stacklevel=2)
        self.model.to(device).eval()

    @classmethod
    def from_model(cls, task: TrainTask, model: "torch.nn.Module", device: str, input_size: int) -> "TrainedLocalizer":
        """A localizer around a live network (the trainer's validation), without loading anything."""
        self = cls.__new__(cls)
        Localizer.__init__(self, device=device)
        self.task_obj, self.model, self.batch, self.run = task, model, 16, None
        self.input_size, self.mean, self.std = input_size, task.mean, task.std  # type: ignore[misc]
        self._weights_sha256 = None
        return self

    # -- loading ----------------------------------------------------------------------------------
    def _read_run(self, folder: Path) -> dict[str, Any]:
        try:
            run = json.loads((folder / CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise WrongModelError(f"{folder}: not a bench train run folder (no readable {CONFIG}): {exc}") from exc
        if not isinstance(run, dict) or run.get("kind") != RUN_KIND or not isinstance(run.get("task"), dict):
            raise WrongModelError(f"{folder}: {CONFIG} is not a bench train run record")
        other = run["task"].get("name")
        if other != self.task.name:
            raise WrongModelError(
                f"{folder} is a checkpoint of another model ({other!r}), not {self.task.name!r};"
                f" score it with: bench eval {run.get('baseline', other)} --weights {folder}")
        return run

    def _load(self, path: Path) -> None:
        state = read_state_dict(path)
        own = self.model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
        if missing or unexpected or shapes:
            parts = []
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
                if keys:
                    parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
            raise WrongModelError(
                f"weights {path} do not fit {self.task.name} with config {self.task_obj.config.model_dump()}:"
                f" {', '.join(parts)}; a checkpoint of another model, or pass the matching --model-arg options")
        self.model.load_state_dict(state)

    def identity(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "options": dict(self.options),
                                "task": self.task_obj.identity(), "weights_sha256": self._weights_sha256}
        if self.run is not None:
            info["run"] = {k: self.run.get(k) for k in ("recipe_sha256", "run_key")}
            info["run"]["recipe"] = (self.run.get("recipe") or {}).get("name")
        return info

    # -- scoring ----------------------------------------------------------------------------------
    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        import torch

        size = int(self.input_size)  # type: ignore[arg-type]
        ready = [resize_input(np.asarray(im), size, "pil-bilinear") for im in images]
        maps: list[np.ndarray] = []
        scores: list[float] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(ready), self.batch):
                tensor = self.to_tensor(ready[start:start + self.batch])
                with torch.no_grad():
                    out_maps, out_scores = self.task_obj.predict(self.model, tensor)
                chunk = _to_numpy_maps(out_maps, out_scores)
                maps += chunk.maps
                scores += chunk.scores or []
        finally:
            self.model.train(was_training)
        return LocalizerOutput(maps=maps, scores=scores)
