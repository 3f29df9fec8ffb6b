"""Strict YAML configuration: every problem reported at once, by its path, with suggestions.

A bad recipe or stress suite must stop a command before any work is done and name the bad key by
its path in the YAML (``maskers.0.max_aera``), with a did-you-mean when it looks like a typo. So
validation collects *every* problem instead of stopping at the first. ``--set key.sub=value``
overrides are applied on top, and a problem they cause says it came from ``--set``. Used by the
build's recipes and by stress suites alike; it knows nothing about either.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import UserError
from .utils.text import did_you_mean

M = TypeVar("M", bound=BaseModel)


class ConfigError(UserError, ValueError):
    """A recipe or suite with problems; ``problems`` holds ``(path, message)`` pairs, all of them."""

    def __init__(self, problems: list[tuple[str, str]], origin: str = "config") -> None:
        self.problems = problems
        self.origin = origin
        lines = [f"{origin}: {len(problems)} problem(s)"]
        lines += [f"  {path or '<top>'}: {message}" for path, message in problems]
        super().__init__("\n".join(lines))


class Strict(BaseModel):
    """Base of every configuration and schema model: unknown keys are errors, never dropped."""

    model_config = ConfigDict(extra="forbid")


def read_yaml(path: str | Path, *, error: type[ConfigError] = ConfigError, what: str = "file") -> Any:
    """The YAML document at ``path``; unreadable files and YAML syntax errors raise ``error``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise error([("", f"cannot read {what}: {exc.strerror or exc}")], str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error([("", f"not valid YAML: {exc}")], str(path)) from exc
    return {} if data is None else data


OVERRIDE_FORM = "key.sub=value"
"""How a ``--set`` is written; list items are picked by index (``maskers.0.weight=2``)."""


@dataclass(frozen=True)
class Override:
    """One ``--set key.sub=value``: as typed, where it points in the recipe, and the value it puts there."""

    text: str
    path: tuple[str, ...]
    value: Any

    @property
    def where(self) -> str:
        return ".".join(self.path)

    def covers(self, problem_path: str) -> bool:
        """Whether a problem reported at ``problem_path`` is about the value this override set.

        Either the problem lies inside what was set (``maskers.0`` set, ``maskers.0.type`` wrong) or
        what was set lies inside the problem (``splits.train`` set, ``splits`` no longer sums to 1).
        """
        where = self.where
        return problem_path == where or problem_path.startswith(where + ".") or where.startswith(problem_path + ".")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"fakes.per_source=2"`` -> (["fakes", "per_source"], 2); the value is YAML."""
    key, sep, raw = text.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        raise ConfigError(
            [(f"--set {text}", f"not of the form {OVERRIDE_FORM} (e.g. --set fakes.per_source=2)")], "overrides"
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or _first_line(str(exc))
        raise ConfigError(
            [(".".join(path), f"value {raw!r} is not valid YAML: {problem} (from --set {text});"
              f" write a text value in quotes: {key.strip()}=\"...\"")],
            "overrides",
        ) from exc
    return path, value


def _set_value(data: Any, override: Override) -> tuple[str, str] | None:
    """Put ``override.value`` at ``override.path`` in ``data``; the ``(path, message)`` problem if it cannot."""
    node: Any = data
    for i, part in enumerate(override.path):
        last = i == len(override.path) - 1
        where = ".".join(override.path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return where, f"no list item {part!r} (the list has {len(node)}; items count from 0)"
            if last:
                node[int(part)] = override.value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = override.value
            else:
                node = node.setdefault(part, {})
        else:
            return where, f"cannot set a key inside the value {node!r}"
    return None


def apply_collecting(data: Any, overrides: list[str]) -> tuple[list[Override], list[tuple[str, str]]]:
    """Apply every override that can be applied; return those and the problems of the others (all of them)."""
    applied: list[Override] = []
    problems: list[tuple[str, str]] = []
    for text in overrides:
        try:
            path, value = parse_override(text)
        except ConfigError as exc:
            problems += exc.problems
            continue
        override = Override(text, tuple(path), value)
        problem = _set_value(data, override)
        if problem is None:
            applied.append(override)
        else:
            problems.append((problem[0], f"{problem[1]} (from --set {text})"))
    return applied, problems


def apply_overrides(data: dict[str, Any], overrides: list[str], *, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """Set each ``key.sub=value`` in ``data`` (list items by index), returning ``data``.

    Raises ``error`` listing every override that cannot be applied.
    """
    _, problems = apply_collecting(data, overrides)
    if problems:
        raise error(problems, "overrides")
    return data


def attribute_overrides(problems: list[tuple[str, str]], applied: list[Override]) -> list[tuple[str, str]]:
    """Add ``(from --set ...)`` to each problem about a value an override set, so the user looks there.

    The most specific override wins when several cover one path.
    """
    out: list[tuple[str, str]] = []
    for path, message in problems:
        covering = [o for o in applied if o.covers(path)]
        if covering and "(from --set" not in message:
            best = max(covering, key=lambda o: len(o.path))
            message = f"{message} (from --set {best.text})"
        out.append((path, message))
    return out


def _model_of(annotation: Any, value: Any = None) -> type[BaseModel] | None:
    """The model an annotation validates ``value`` as: itself, or the member of a tagged union
    (``Annotated[A | B, Field(discriminator=...)]``) whose ``Literal`` fields ``value`` matches."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is Annotated:
        return _model_of(get_args(annotation)[0], value)
    if get_origin(annotation) in (Union, UnionType) and isinstance(value, dict):
        for member in get_args(annotation):
            model = _model_of(member)
            if model is None:
                continue
            tags = {k: get_args(f.annotation) for k, f in model.model_fields.items() if get_origin(f.annotation) is Literal}
            if tags and all(k in value and value[k] in allowed for k, allowed in tags.items()):
                return model
    return None


def unknown_keys(data: Any, model: type[BaseModel], path: str) -> list[tuple[str, str]]:
    """Unknown keys of strict models, with did-you-mean suggestions (pydantic gives none)."""
    problems: list[tuple[str, str]] = []
    if not isinstance(data, dict):
        return problems
    fields = model.model_fields
    strict = model.model_config.get("extra") == "forbid"
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            if strict:
                hint = did_you_mean(str(key), list(fields)) or f" Keys here: {', '.join(fields)}."
                problems.append((where, f"unknown key.{hint}"))
            continue
        annotation = fields[key].annotation
        sub = _model_of(annotation, value)
        if sub is not None:
            problems += unknown_keys(value, sub, where)
        elif get_origin(annotation) is list and isinstance(value, list):
            for i, element in enumerate(value):
                item = _model_of(get_args(annotation)[0], element)
                if item is not None:
                    problems += unknown_keys(element, item, f"{where}.{i}")
    return problems


def _same_place(where: str, loc: str) -> bool:
    """Whether ``unknown_keys``' path ``where`` names pydantic's ``loc`` (which adds union tags)."""
    wanted, parts = where.split("."), iter(loc.split("."))
    return wanted[-1] == loc.split(".")[-1] and all(part in parts for part in wanted)


def validate_collecting(model: type[M], data: dict[str, Any]) -> tuple[M | None, list[tuple[str, str]]]:
    """Validate ``data`` as ``model``; return it (or ``None``) and every ``(path, message)`` problem.

    Unknown keys come from :func:`unknown_keys` (with suggestions, which pydantic does not give)
    and everything else from pydantic, with paths joined by dots as a YAML author reads them.
    """
    problems = unknown_keys(data, model, "")
    try:
        return model.model_validate(data), problems
    except ValidationError as exc:
        reported = {where for where, _ in problems}
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                if not any(_same_place(where, loc) for where in reported):
                    problems.append((loc, "unknown key"))  # one unknown_keys could not reach: still said
                continue  # otherwise reported by unknown_keys, with a suggestion
            problems.append((loc, err["msg"].removeprefix("Value error, ")))
        return None, problems
