"""The one resolver of a stage's ``weights`` / ``model`` parameter, and the build's check before any sample.

A value is, in this order:

1. a path to an existing file or folder (``~`` expanded): used as it is;
2. a catalogue name (``big-lama``): its file in the cache (or an ``also_at`` place such as
   ``$TORCH_HOME/hub/checkpoints``), held against the published checksum; a Hub entry: its
   snapshot in the local Hugging Face cache;
3. a Hub id (``org/name``): its snapshot in the local Hugging Face cache.

Resolving never downloads: a build must not start fetching gigabytes by surprise, and a missing
model must be one line before any sample, not a stack trace in a worker. The line says which
value, which stage and how to get it (``bench weights fetch NAME``).

A stage declares which of its parameters hold weights with a class attribute
``weight_params = {"weights": "file"}`` (``"file"``, ``"folder"`` or ``"any"``); the build calls
:func:`check_stage_weights` for every stage of a recipe before planning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError
from ..registry import REGISTRIES
from .cache import Check, check_file, entry_folder, entry_path, find_file, missing_files
from .catalogue import Entry, catalogue, find_entry

__all__ = ["Resolved", "WeightNeed", "WeightsError", "check_stage_weights", "hub_snapshot", "resolve_weights",
           "stage_weights"]

Expect = Literal["file", "folder", "any"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".onnx", ".pkl", ".zip"}


class WeightsError(UserError, FileNotFoundError):
    """Weights that are missing, not where a stage looks, or not the file the catalogue names."""


@dataclass(frozen=True)
class Resolved:
    """Where a weights value points, and how it was found."""

    value: str  # what the recipe said
    path: Path
    origin: Literal["path", "cache", "hub-cache"]
    entry: Entry | None = None
    check: Check | None = None  # for catalogue files: the checksum verdict
    revision: str | None = None  # for Hub snapshots: the commit the snapshot folder is named by

    def identity(self) -> dict[str, Any]:
        """JSON-ready provenance: the value, and the checksum or Hub commit where one is known cheaply."""
        out: dict[str, Any] = {"weights": self.value}
        if self.check is not None:
            out["weights_sha256"] = self.check.sha256
        if self.revision is not None:
            out["weights_revision"] = self.revision
        return out


def _fetch_hint(name: str) -> str:
    return f"run `bench weights fetch {name}`"


def hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The repository's snapshot folder in the local Hugging Face cache, without any network access."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, or a malformed id
        return None


def _looks_like_path(text: str) -> bool:
    """``models/big-lama.pt`` is a missing file, not a Hub repository called ``big-lama.pt``."""
    return text.startswith((".", "/", "~")) or "\\" in text or Path(text).suffix.lower() in _FILE_SUFFIXES


def _kind_problem(path: Path, expect: Expect) -> str | None:
    if expect == "file" and not path.is_file():
        return "is a folder, not a file"
    if expect == "folder" and not path.is_dir():
        return "is a file, not a model folder"
    return None


def resolve_weights(value: str | Path, *, stage: str, expect: Expect = "any") -> Resolved:
    """Resolve a weights value for ``stage`` (e.g. ``"generator lama"``); :class:`WeightsError` when absent or wrong."""
    text = str(value)
    path = Path(text).expanduser()
    if path.exists():
        problem = _kind_problem(path, expect)
        if problem:
            raise WeightsError(f"{stage}: weights {text!r} {problem}")
        return Resolved(text, path, "path")
    entry = find_entry(text)
    if entry is not None and entry.kind == "file":
        return _resolve_file(text, entry, stage=stage, expect=expect)
    if entry is not None and entry.kind == "folder":
        return _resolve_folder(text, entry, stage=stage, expect=expect)
    repo_id, revision = (entry.source, entry.revision) if entry is not None else (text, None)
    if entry is not None or (_HUB_ID.match(text) and not _looks_like_path(text)):
        snapshot = hub_snapshot(repo_id, revision)
        if snapshot is None:
            raise WeightsError(f"{stage}: the Hub model {repo_id} is not in the local Hugging Face cache; "
                               f"{_fetch_hint(entry.name if entry else repo_id)} (needs a connection)")
        if expect == "file":
            raise WeightsError(f"{stage}: weights {text!r} is a Hub repository; this stage takes a file")
        return Resolved(text, snapshot, "hub-cache", entry, revision=snapshot.name)
    names = ", ".join(sorted(catalogue()))
    raise WeightsError(f"{stage}: weights {text!r} is no existing file or folder, catalogue name or Hub id "
                       f"(catalogue: {names}; see `bench weights ls`)")


def _resolve_file(value: str, entry: Entry, *, stage: str, expect: Expect) -> Resolved:
    if expect == "folder":
        raise WeightsError(f"{stage}: {entry.name} is a single file ({entry.filename}); this stage takes a model "
                           f"folder: {entry.convert_hint or 'convert it first'}")
    found = find_file(entry)
    if found is None:
        raise WeightsError(f"{stage}: {entry.filename} ({entry.name}) is not in {entry_path(entry).parent}; "
                           f"{_fetch_hint(entry.name)}")
    check = check_file(entry, found)
    if not check.ok:
        raise WeightsError(f"{stage}: {found} is not the {entry.name} file (expected {check.expected}, its sha256 is "
                           f"{check.sha256}); {_fetch_hint(entry.name)} to replace it")
    return Resolved(value, found, "cache", entry, check)


def _resolve_folder(value: str, entry: Entry, *, stage: str, expect: Expect) -> Resolved:
    if expect == "file":
        raise WeightsError(f"{stage}: {entry.name} is a folder ({', '.join(entry.files)}); this stage takes a file")
    missing = missing_files(entry)
    if missing:
        raise WeightsError(f"{stage}: {entry.name} lacks {', '.join(missing)} in {entry_folder(entry)}; download"
                           f" them by hand from {entry.page or entry.source}, then run"
                           f" `bench weights fetch {entry.name} --from FOLDER`")
    return Resolved(value, entry_folder(entry), "cache", entry)


# -- the build's check --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightNeed:
    """One weights parameter of one recipe stage, resolved or not (what ``--dry-run`` can print)."""

    stage: str  # "generators[1] lama"
    param: str
    value: str
    resolved: Resolved | None
    error: str | None


def _declared(factory: object) -> Mapping[str, Expect]:
    declared = getattr(factory, "weight_params", None)
    return declared if isinstance(declared, Mapping) else {}


def _value(factory: object, params: Mapping[str, Any], name: str) -> Any:
    if name in params:
        return params[name]
    config = getattr(factory, "Config", None)
    field = getattr(config, "model_fields", {}).get(name) if config is not None else None
    return None if field is None or field.is_required() else field.default


def stage_weights(stages: Mapping[str, Iterable[Any]]) -> list[WeightNeed]:
    """Every declared weights parameter of ``stages`` (``{"generators": recipe.generators, ...}``: specs
    with ``.type`` and ``.params``), each resolved or with the reason it could not be."""
    needs = []
    for kind, specs in stages.items():
        registry = REGISTRIES[kind]
        for index, spec in enumerate(specs):
            try:
                factory = registry.get(spec.type)
            except UserError:  # unknown or not importable: the build's own checks say so, as before
                continue
            for param, expect in _declared(factory).items():
                value = _value(factory, spec.params, param)
                if value is None:
                    continue
                where = f"{kind}[{index}] {spec.type}"
                try:
                    needs.append(WeightNeed(where, param, str(value), resolve_weights(value, stage=where, expect=expect), None))
                except WeightsError as exc:
                    needs.append(WeightNeed(where, param, str(value), None, str(exc)))
    return needs


def check_stage_weights(stages: Mapping[str, Iterable[Any]]) -> list[WeightNeed]:
    """:func:`stage_weights`, raising one :class:`WeightsError` naming every missing or wrong one."""
    needs = stage_weights(stages)
    problems = [n.error for n in needs if n.error]
    if problems:
        raise WeightsError("; ".join(problems))
    return needs
