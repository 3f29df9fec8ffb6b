"""The run folder: what ``bench train`` writes, when it may resume, replace or must refuse.

``runs/NAME/`` holds::

    config.json              what made the run: baseline, task, recipe (+ sha256), data, versions, status
    model.safetensors        the run's weights (best by the recipe's validation metric, else the last)
    best.safetensors         the best weights so far (while training)
    checkpoints/last/        accelerate state (model, optimiser, RNG) + trainer.json: resume point
    metrics.csv              step, kind, name, value: training and validation numbers
    tensorboard/             the same numbers for TensorBoard
    .dolos-bench.json        the files this command wrote (utils.outdir ownership record)

The rules are ``bench build``'s: an interrupted run (status ``running``) of the *same* run key
(baseline, task, recipe sha256, data fingerprint) is resumed; one of a different key is refused,
naming both, unless ``--overwrite``; a finished run is replaced only with ``--overwrite``; a file
that no dolos-bench command wrote is never touched and makes the folder unusable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError
from ..utils.files import atomic_write_json
from ..utils.outdir import RECORD, files_under, read_record, refuse_foreign, remove_ours, write_record

__all__ = ["RUN_KIND", "CONFIG", "WEIGHTS", "BEST", "LAST", "METRICS_CSV", "TENSORBOARD", "RunFolder",
           "RunFolderError", "run_key"]

RUN_KIND = "train-run"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
BEST = "best.safetensors"
LAST = "checkpoints/last"
METRICS_CSV = "metrics.csv"
TENSORBOARD = "tensorboard"
_OWN_FOLDERS = ("checkpoints", TENSORBOARD)


class RunFolderError(UserError):
    """``--out`` cannot take this run (a finished run, or an interrupted one of another recipe)."""


def run_key(baseline: str, task_identity: dict[str, Any], recipe_sha256: str, data_key: str) -> str:
    """One digest of what must match for a checkpoint to be resumed."""
    blob = json.dumps({"baseline": baseline, "task": task_identity, "recipe": recipe_sha256, "data": data_key},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class RunFolder:
    """A run folder opened for writing: ``mode`` says whether the run starts or resumes."""

    root: Path
    mode: Literal["start", "resume"]

    @classmethod
    def open(cls, root: Path, key: str, recipe_name: str, *, overwrite: bool) -> "RunFolder":
        """Decide start / resume / refuse for ``root`` without touching anything on a refusal."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise RunFolderError(f"{root} is a file, not a folder: choose a folder for the run")
        if not files_under(root):
            root.mkdir(parents=True, exist_ok=True)
            return cls(root, "start")
        recorded = read_record(root, RUN_KIND)
        ours = set(recorded or ()) | ({RECORD} if recorded is not None else set())
        refuse_foreign(root, ours, what="training run")
        config = _read_config(root)
        status, old_key = config.get("status"), config.get("run_key")
        if status == "running" and old_key == key and (root / LAST / "trainer.json").is_file():
            return cls(root, "resume")
        if not overwrite:
            if status == "running" and old_key != key:
                raise RunFolderError(
                    f"{root} holds an interrupted run of another recipe or dataset"
                    f" ({config.get('recipe', {}).get('name', '?')!r}, recipe sha256 {str(config.get('recipe_sha256'))[:12]},"
                    f" not {recipe_name!r}); nothing was changed: resume it with the recipe and data that started it,"
                    " pass --overwrite to start over, or choose another --out")
            if status == "finished":
                raise RunFolderError(f"{root} holds a finished training run; pass --overwrite to replace it, or choose another --out")
        # Ours and replaceable: an --overwrite, or a run interrupted before its first checkpoint.
        remove_ours(root, ours)
        root.mkdir(parents=True, exist_ok=True)
        return cls(root, "start")

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.root / CONFIG, config)
        self.record()

    def config(self) -> dict[str, Any]:
        return _read_config(self.root)

    def record(self) -> None:
        """Record every file this run wrote: the known top-level files and our own sub-folders."""
        previous = set(read_record(self.root, RUN_KIND) or ())
        top = {name for name in (CONFIG, WEIGHTS, BEST, METRICS_CSV) if (self.root / name).exists()}
        inside = {f for f in files_under(self.root) if f.split("/", 1)[0] in _OWN_FOLDERS}
        write_record(self.root, RUN_KIND, previous | top | inside)


def _read_config(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(root) / CONFIG).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
