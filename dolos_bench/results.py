"""The versioned results file: what ``bench eval`` / ``bench stress`` write and the leaderboard reads.

One JSON document per (model, dataset split, protocol) run. The schema is strict
(``extra="forbid"``) so that a typo in a writer fails loudly instead of producing a file that the
leaderboard silently misreads; free-form content goes into the few dicts meant for it
(``model.options``, ``protocol.details``, ``info``, extra ``counts``, perturbation parameters).
``model.options`` holds the options the user passed (they are part of a run's key);
``info["model_identity"]`` what the localizer reports it ran with, its defaults included.

``complete`` is true only for a run that scored every sample of its split: a run cut short by
``--limit`` says ``complete: false`` (and ``dataset.split_samples`` says how big the split is),
and readers refuse such files unless asked, as they refuse any file whose writer did not finish.
``dataset.verified`` says whether the data was a dolos-bench build checked against its
manifest. Both fields are optional: schema 1.0 files written before them load with ``None``
("not recorded"), and a ``None`` is left out when writing, so those files round-trip unchanged.
Every write is atomic (temporary file + :func:`os.replace`), so a reader never sees a torn file.

Schema 1.1 records each metric's direction: ``metric_directions`` maps every metric name that
appears in the file (top-level, breakdowns, stress grid) to ``"higher"`` or ``"lower"`` (which
values are better), so a reader ranks by what the writer meant rather than by guessing from the
name. A writer that builds :class:`Results` without it gets the directions of the metric table
(:mod:`dolos_bench.metric_specs`); names the table does not know are left out unless the writer
gives them. Schema 1.0 files, which carry no directions, still load: their directions come from
the metric table (:meth:`Results.higher_is_better`), and they are written back as 1.0, unchanged.

Bump :data:`SCHEMA_VERSION` on any change a reader must know about; the golden tests
(``tests/golden/results_v1.json`` for 1.0, ``results_v1_1.json`` for 1.1) are there to make such
changes deliberate.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from . import metric_specs
from .config import Strict
from .errors import UserError
from .utils.files import atomic_write_text
from .utils.versions import package_versions as installed_versions
from pydantic import (
    BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, field_validator, model_serializer,
    model_validator,
)

SCHEMA_VERSION = "1.1"
"""Version written into every new results file."""

SUPPORTED_VERSIONS = ("1.0", SCHEMA_VERSION)
"""Versions this reader understands; it refuses any other."""

SchemaVersion = Literal["1.0", "1.1"]
Direction = Literal["higher", "lower"]

ModelKind = Literal["registry", "class", "torchscript", "onnx", "predictions"]
BreakdownKey = Literal["generator", "parts", "perturbation", "source", "area"]  # area: bins named with their edges
ResizeMode = Literal["bilinear", "bicubic"]

_HEX64 = r"^[0-9a-f]{64}$"

DEFAULT_PACKAGES: tuple[str, ...] = (
    "dolos-bench",
    "numpy",
    "pillow",
    "datasets",
    "opencv-python-headless",
    "scipy",
    "torch",
    "onnxruntime",
)
"""Packages whose versions change scores enough to be worth recording in provenance."""


class ResultsError(UserError, ValueError):
    """A results file cannot be used; the message names the file and what to do."""


class SchemaVersionError(ResultsError):
    """The file was written by a schema version this reader does not understand."""


class IncompleteResultsError(ResultsError):
    """The file is marked ``complete: false``: its writer was interrupted or is still running."""


class Metric(Strict):
    """One metric value with its 95% confidence interval and the number of units it averages.

    ``value`` is ``None`` when the metric is undefined (e.g. an AUC over one class); non-finite
    floats are stored as ``None`` too, because JSON has no NaN and a reader should not have to
    guess what a NaN meant.
    """

    value: float | None
    ci95: tuple[float, float] | None = None
    n: int = Field(ge=0)

    @field_validator("value", mode="after")
    @classmethod
    def _finite_or_none(cls, v: float | None) -> float | None:
        return v if v is None or math.isfinite(v) else None

    @field_validator("ci95", mode="after")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is None:
            return None
        lo, hi = v
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return None
        if lo > hi:
            raise ValueError(f"ci95 lower bound {lo} is above the upper bound {hi}")
        return v


Metrics = dict[str, Metric]
"""Metric name (e.g. ``pixel/iou@0.5/mean-of-images/fakes``) to value."""


class ModelInfo(Strict):
    """Which localizer was scored; ``weights_sha256`` ties the score to exact weights."""

    id: str = Field(min_length=1)
    kind: ModelKind
    path: str | None = None
    weights_sha256: str | None = Field(default=None, pattern=_HEX64)
    options: dict[str, Any] = Field(default_factory=dict)


class DatasetInfo(Strict):
    """Which data it was scored on; ``fingerprint`` (sha256 hex) identifies the exact bytes.

    ``verified``: true for a dolos-bench build whose shards matched its manifest, false for any
    other data (a folder in another layout, whose fingerprint then hashes its files, or a Hub
    id); ``None`` in files written before the field existed. ``split_samples``: the size of the
    whole split, of which ``num_samples`` were scored (fewer with ``--limit``).
    """

    path: str = Field(min_length=1)
    fingerprint: str = Field(pattern=_HEX64)
    split: str = Field(min_length=1)
    recipe: str | None = None
    num_samples: int = Field(ge=0)
    verified: bool | None = None
    split_samples: int | None = Field(default=None, ge=0)

    @model_serializer(mode="wrap")
    def _omit_unrecorded(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Optional fields added within schema 1.0: absent stays absent, so older files round-trip.
        data = handler(self)
        for name in _OPTIONAL_DATASET_FIELDS:
            if data.get(name) is None:
                data.pop(name, None)
        return data

    @property
    def partial(self) -> bool:
        """True when only part of the split was scored (``--limit``)."""
        return self.split_samples is not None and self.num_samples < self.split_samples


_OPTIONAL_DATASET_FIELDS = ("verified", "split_samples")


class ProtocolInfo(Strict):
    """The scoring choices; two results are only comparable if their protocols match."""

    name: str = Field(min_length=1)
    threshold: float
    resize: ResizeMode = "bilinear"
    details: dict[str, Any] = Field(default_factory=dict)


class Counts(BaseModel):
    """Sample counts; writers may add more integer counts (e.g. ``skipped``, ``failed``)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, int] = Field(init=False)  # type: ignore[assignment]

    samples: int = Field(ge=0)
    real: int = Field(ge=0)
    fake: int = Field(ge=0)


class Provenance(Strict):
    """Everything needed to tell how a number was produced and to reproduce it."""

    package_versions: dict[str, str] = Field(default_factory=dict)
    git_revision: str | None = None
    seeds: dict[str, int] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    created: str
    command: str

    @field_validator("created")
    @classmethod
    def _iso_utc(cls, v: str) -> str:
        # fromisoformat accepts "Z" only from Python 3.11; normalise so 3.10 reads the same files.
        try:
            dt = datetime.fromisoformat(v[:-1] + "+00:00" if v.endswith("Z") else v)
        except ValueError as exc:
            raise ValueError(f"created must be an ISO 8601 timestamp, got {v!r}") from exc
        if dt.utcoffset() is None or dt.utcoffset().total_seconds() != 0:  # type: ignore[union-attr]
            raise ValueError(f"created must be in UTC (e.g. '2024-05-01T12:00:00Z'), got {v!r}")
        return v


class PerturbationSpec(BaseModel):
    """One step of a perturbation chain: ``{"name": "jpeg", "quality": 50}`` (flat params).

    Same shape as the ``perturbations`` column of the dataset, so a grid entry can be replayed.
    """

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)


class StressPoint(Strict):
    """The metrics at one (perturbation, severity) cell of a stress grid."""

    perturbation: str = Field(min_length=1)
    severity: float | str
    spec: list[PerturbationSpec] = Field(default_factory=list)
    metrics: Metrics = Field(default_factory=dict)


class StressSummary(BaseModel):
    """Per-perturbation summary; ``None`` where undefined (e.g. a clean score of 0)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float | None] = Field(init=False)  # type: ignore[assignment]

    relative_drop: float | None = None
    area_under_curve: float | None = None


class StressInfo(Strict):
    """A robustness sweep: ``metric`` is the y axis of the curves drawn from ``grid``."""

    suite: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    grid: list[StressPoint] = Field(default_factory=list)
    summary: dict[str, StressSummary] = Field(default_factory=dict)


class Results(Strict):
    """A whole results file."""

    schema_version: SchemaVersion = SCHEMA_VERSION
    kind: Literal["eval", "stress"]
    model: ModelInfo
    dataset: DatasetInfo
    protocol: ProtocolInfo
    metrics: Metrics = Field(default_factory=dict)
    breakdowns: dict[BreakdownKey, dict[str, Metrics]] = Field(default_factory=dict)
    metric_directions: dict[str, Direction] | None = None
    """Schema 1.1: metric name -> which values are better; ``None`` in a 1.0 file (not recorded)."""
    counts: Counts
    complete: bool = False
    provenance: Provenance
    info: dict[str, Any] = Field(default_factory=dict)
    stress: StressInfo | None = None

    @model_validator(mode="after")
    def _stress_matches_kind(self) -> "Results":
        if self.kind == "stress" and self.stress is None:
            raise ValueError("kind 'stress' needs a 'stress' section")
        if self.kind == "eval" and self.stress is not None:
            raise ValueError("kind 'eval' must not carry a 'stress' section (use kind 'stress')")
        return self

    @model_validator(mode="after")
    def _directions_match_version(self) -> "Results":
        if self.schema_version == "1.0":
            if self.metric_directions is not None:
                raise ValueError("metric_directions needs schema_version 1.1 (1.0 files do not record directions)")
        elif self.metric_directions is None:
            # A writer that did not say: the metric table's directions for the names it knows.
            self.metric_directions = {
                name: d for name in self.metric_names() if (d := metric_specs.direction(name)) is not None
            }
        return self

    @model_serializer(mode="wrap")
    def _omit_unrecorded(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # 1.0 files have no directions: absent stays absent, so they round-trip unchanged.
        data = handler(self)
        if data.get("metric_directions") is None:
            data.pop("metric_directions", None)
        return data

    def metric_names(self) -> list[str]:
        """Every metric name in the file, top-level first, then breakdowns and the stress grid."""
        names = list(self.metrics)
        names += [n for groups in self.breakdowns.values() for ms in groups.values() for n in ms]
        if self.stress is not None:
            names += [self.stress.metric] + [n for p in self.stress.grid for n in p.metrics]
        return list(dict.fromkeys(names))

    def recorded_direction(self, metric: str) -> Direction | None:
        """The direction this file records for ``metric`` (``None`` if it records none, as 1.0 files)."""
        return (self.metric_directions or {}).get(metric)

    def higher_is_better(self, metric: str) -> bool | None:
        """Whether larger values of ``metric`` are better: as recorded, else as the metric table says.

        ``None`` for a metric that neither the file nor the table knows.
        """
        recorded = self.recorded_direction(metric)
        if recorded is not None:
            return recorded == "higher"
        return metric_specs.higher_is_better(metric)

    def to_json(self) -> str:
        """The canonical serialisation: 2-space indented, key order as declared, no NaN."""
        return json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"


# --------------------------------------------------------------------------------------- I/O


def save_results(results: Results, path: str | os.PathLike[str]) -> Path:
    """Write ``results`` to ``path`` atomically and return the path.

    The JSON goes to a temporary file in the same directory (same filesystem, so
    :func:`os.replace` is atomic), is fsynced, then renamed over ``path``. A crash leaves either
    the old file or the new one, never a torn mix that a leaderboard would half-read.
    """
    path = Path(path)
    atomic_write_text(path, results.to_json())
    return path


def load_results(path: str | os.PathLike[str], *, allow_incomplete: bool = False) -> Results:
    """Read and validate a results file.

    Raises :class:`ResultsError` (a ``ValueError``) naming the file for unreadable or malformed
    JSON and schema violations, :class:`SchemaVersionError` for a version this code does not
    know, and :class:`IncompleteResultsError` for ``complete: false`` unless
    ``allow_incomplete`` (for a writer resuming its own file).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read results file: {exc.strerror or exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "the file may be truncated or not a results file"
        ) from exc
    if not isinstance(raw, dict):
        raise ResultsError(f"{path}: a results file is a JSON object, got {type(raw).__name__}")
    version = raw.get("schema_version")
    if version not in SUPPORTED_VERSIONS:
        raise SchemaVersionError(
            f"{path}: unknown results schema_version {version!r}; this dolos-bench reads "
            f"{', '.join(SUPPORTED_VERSIONS)}. Upgrade dolos-bench or re-run the evaluation."
        )
    if version != "1.0" and not isinstance(raw.get("metric_directions"), dict):
        raise ResultsError(
            f"{path}: a schema_version {version} results file must record metric_directions "
            "(metric name -> \"higher\" or \"lower\"); the file was not written by dolos-bench or was edited"
        )
    try:
        results = Results.model_validate(raw)
    except ValidationError as exc:
        raise ResultsError(f"{path}: invalid results file:\n{exc}") from exc
    if not results.complete and not allow_incomplete and results.dataset.partial:
        raise IncompleteResultsError(
            f"{path}: results cover {results.dataset.num_samples} of the {results.dataset.split_samples} samples of "
            f"split {results.dataset.split!r} (a --limit run), so they say complete: false; score the whole split "
            "to compare or rank them."
        )
    if not results.complete and not allow_incomplete:
        raise IncompleteResultsError(
            f"{path}: results file is incomplete (complete: false); its run was interrupted or is "
            "still writing. Re-run or resume the evaluation before using it."
        )
    return results


# -------------------------------------------------------------------------- provenance helpers


def utc_now() -> str:
    """The current time as ``YYYY-MM-DDTHH:MM:SSZ``, the form ``provenance.created`` expects."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def package_versions(names: Sequence[str] = DEFAULT_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (default: what can change a score); missing ones left out."""
    return installed_versions(names)


def git_revision(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The git commit of ``cwd`` (default: this package's checkout), ``None`` outside a repo.

    A ``-dirty`` suffix marks uncommitted changes, which make the revision alone insufficient
    to reproduce a run.
    """
    cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40", "--match=NO-TAGS"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def collect_provenance(
    command: str,
    *,
    seeds: Mapping[str, int] | None = None,
    timings: Mapping[str, float] | None = None,
    packages: Sequence[str] = DEFAULT_PACKAGES,
) -> Provenance:
    """Provenance of the current process, for writers that do not want to assemble it by hand."""
    return Provenance(
        package_versions=package_versions(packages),
        git_revision=git_revision(),
        seeds=dict(seeds or {}),
        timings=dict(timings or {}),
        created=utc_now(),
        command=command,
    )


__all__ = [
    "SCHEMA_VERSION",
    "SUPPORTED_VERSIONS",
    "Direction",
    "ResultsError",
    "SchemaVersionError",
    "IncompleteResultsError",
    "Metric",
    "Metrics",
    "ModelInfo",
    "DatasetInfo",
    "ProtocolInfo",
    "Counts",
    "Provenance",
    "PerturbationSpec",
    "StressPoint",
    "StressSummary",
    "StressInfo",
    "Results",
    "save_results",
    "load_results",
    "utc_now",
    "package_versions",
    "git_revision",
    "collect_provenance",
]
