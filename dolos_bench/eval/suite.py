"""Stress suites: the YAML that says which perturbations ``bench stress`` applies, at which severities.

A suite is a list of named perturbations, each a chain of the build's perturbations (the same
spec language as a recipe's ``perturbations.chains``) at several severities, written either as a
template plus values::

    - name: jpeg
      chain: jpeg(quality={severity})
      severities: [100, 90, 80, 70]

or as explicit levels, for chains whose steps change together::

    - name: social
      levels:
        - {severity: 1, chain: "resize(scale=0.9)|jpeg(quality=90)"}

Like a recipe, a suite is checked as a whole before any work starts, and every problem is
reported with its path in the YAML (``perturbations.2.severities.1``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from dolos_bench.perturbations import Chain, parse_chain
from dolos_bench.config import ConfigError, Strict, validate_collecting
from dolos_bench.metric_specs import higher_is_better, metric_names, primary_metric
from dolos_bench.registry import did_you_mean

BUILTIN_SUITES = ("default", "photometric")
"""Suites shipped with the package; ``--suite default`` finds them without a path."""

SEVERITY_PLACEHOLDER = "{severity}"


class SuiteError(ConfigError):
    """A suite with problems: every ``(path, message)`` pair, like a recipe error."""


class Level(Strict):
    """One hand-written severity level: its x value on the curve and its chain."""

    severity: float | str
    chain: str | list[Any]


class SuiteEntry(Strict):
    """One perturbation axis of the grid (one panel of the robustness figure)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][\w.\-]*$")
    description: str = ""
    axis: str = Field("severity", description="x-axis label of the panel, e.g. 'JPEG quality'")
    chain: str | None = None
    severities: list[float | str] | None = None
    levels: list[Level] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "SuiteEntry":
        templated = self.chain is not None or self.severities is not None
        if templated and self.levels is not None:
            raise ValueError("give either chain + severities or levels, not both")
        if self.levels is None:
            if self.chain is None or not self.severities:
                raise ValueError("needs chain (with {severity}) and a non-empty severities list, or levels")
            if SEVERITY_PLACEHOLDER not in self.chain:
                raise ValueError(f"chain {self.chain!r} has no {SEVERITY_PLACEHOLDER} placeholder")
        elif not self.levels:
            raise ValueError("levels is empty")
        return self

    def points(self) -> list[tuple[float | str, str | list[Any]]]:
        """(severity, chain spec) for each level, in the suite's order (mild to harsh)."""
        if self.levels is not None:
            return [(level.severity, level.chain) for level in self.levels]
        assert self.chain is not None and self.severities is not None
        return [(s, self.chain.replace(SEVERITY_PLACEHOLDER, _format_severity(s))) for s in self.severities]


class Suite(Strict):
    """A whole stress suite."""

    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 0
    metric: str = primary_metric(0.5)
    plot_metrics: list[str] = Field(default_factory=list)
    perturbations: list[SuiteEntry] = Field(min_length=1)

    @field_validator("perturbations")
    @classmethod
    def _unique_names(cls, entries: list[SuiteEntry]) -> list[SuiteEntry]:
        names = [p.name for p in entries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"perturbation names must be unique; repeated: {', '.join(dupes)}")
        return entries

    def curve_metrics(self) -> list[str]:
        """The headline metric first, then the other plotted metrics, without repeats."""
        return list(dict.fromkeys([self.metric, *self.plot_metrics]))

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class GridPoint:
    """One cell of the stress grid: a perturbation axis, a severity, the parsed chain."""

    perturbation: str
    severity: float | str
    chain: Chain

    @property
    def key(self) -> str:
        return f"{self.perturbation}@{_format_severity(self.severity)}"


def _format_severity(value: float | str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) >= 1 else repr(value)
    return str(value)


def _metric_problems(suite_data: dict[str, Any], threshold: float = 0.5) -> list[tuple[str, str]]:
    """The suite's metrics must be ones every run computes (the metric table's names), and the
    headline one whose higher values are better: the summary reads a falling curve as damage."""
    known = metric_names(threshold)
    problems: list[tuple[str, str]] = []
    metric = suite_data.get("metric")
    if isinstance(metric, str):
        if metric not in known:
            problems.append(("metric", f"unknown metric {metric!r}.{did_you_mean(metric, known)}"))
        elif not higher_is_better(metric):
            problems.append(("metric", f"{metric!r} is lower-is-better; the stress summary (relative drop, "
                                       "area under the curve) needs a higher-is-better headline metric"))
    for i, name in enumerate(suite_data.get("plot_metrics") or []):
        if isinstance(name, str) and name not in known:
            problems.append((f"plot_metrics.{i}", f"unknown metric {name!r}.{did_you_mean(name, known)}"))
    return problems


def validate_suite_data(data: Any, origin: str = "suite") -> Suite:
    """Validate a suite mapping; raise :class:`SuiteError` listing every problem."""
    if not isinstance(data, dict):
        raise SuiteError([("", "a stress suite must be a YAML mapping")], origin)
    suite, problems = validate_collecting(Suite, data)
    problems += _metric_problems(data)
    entries = data.get("perturbations")
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        try:
            parsed = SuiteEntry.model_validate(entry)
        except ValidationError:
            continue  # reported above
        seen: set[str] = set()
        for j, (severity, spec) in enumerate(parsed.points()):
            where = f"perturbations.{i}.{'levels' if parsed.levels is not None else 'severities'}.{j}"
            try:
                chain = parse_chain(spec)
            except (KeyError, ValueError, TypeError) as exc:
                problems.append((where, str(exc)))
                continue
            if not len(chain):
                problems.append((where, "empty chain: a grid point must perturb the image"))
            if str(severity) in seen:
                problems.append((where, f"severity {severity!r} appears twice in {parsed.name!r}"))
            seen.add(str(severity))
    if problems:
        raise SuiteError(problems, origin)
    assert suite is not None
    return suite


def suite_path(name_or_path: str | Path) -> Path:
    """A suite file: a path as given, or one of :data:`BUILTIN_SUITES` by name."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or str(name_or_path) not in BUILTIN_SUITES:
        return path
    return Path(str(resources.files("dolos_bench.eval") / "suites" / f"{name_or_path}.yaml"))


def load_suite(name_or_path: str | Path) -> tuple[Suite, Path]:
    """Read and validate a suite (path or built-in name); return it with the file it came from."""
    path = suite_path(name_or_path)
    try:
        text = path.read_text()
    except OSError as exc:
        hint = f" Built-in suites: {', '.join(BUILTIN_SUITES)}." if not path.exists() else ""
        raise SuiteError([("", f"cannot read suite: {exc.strerror or exc}.{hint}")], str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SuiteError([("", f"not valid YAML: {exc}")], str(path)) from exc
    return validate_suite_data(data, str(path)), path


def expand(suite: Suite, only: list[str] | None = None) -> list[GridPoint]:
    """The grid, perturbation by perturbation in suite order; ``only`` keeps the named axes."""
    names = [p.name for p in suite.perturbations]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise SuiteError(
                [("", f"no perturbation {n!r} in suite {suite.name!r}.{did_you_mean(n, names)}"
                      f" It has: {', '.join(names)}") for n in unknown],
                "--only",
            )
    return [
        GridPoint(entry.name, severity, parse_chain(spec))
        for entry in suite.perturbations
        if not only or entry.name in only
        for severity, spec in entry.points()
    ]


__all__ = [
    "BUILTIN_SUITES",
    "GridPoint",
    "Level",
    "Suite",
    "SuiteEntry",
    "SuiteError",
    "expand",
    "load_suite",
    "suite_path",
    "validate_suite_data",
]
