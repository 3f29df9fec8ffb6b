"""What ``bench eval`` checks of a model's options and of everything a model returns.

Models are outside code, so nothing they return is trusted: :func:`check_output` checks every
batch (count, 2-D, finite, in [0, 1]) and names the offending sample. Shared by every adapter
(:mod:`~dolos_bench.eval.localizers`, :mod:`~dolos_bench.eval.predictions`), so it imports neither.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from dolos_bench.eval.api import LocalizerError, LocalizerOutput
from dolos_bench.registry import did_you_mean

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")

RANGE_TOLERANCE = 1e-6
"""How far outside [0, 1] a value may stray (float rounding of a sigmoid) before it is an error;
values within the tolerance are clipped."""


class LocalizerLoadError(LocalizerError):
    """A localizer spec cannot be turned into a localizer (bad file, bad class, bad option)."""



# -- options --------------------------------------------------------------------------------------

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


def parse_model_args(args: Iterable[str]) -> dict[str, Any]:
    """Parse ``--model-arg key=value`` strings into typed options.

    Values go through ``yaml.safe_load`` so that ``batch=8`` is an int, ``strict_size=true`` a
    bool and ``mean=[0.5,0.5,0.5]`` a list, while ``mean=0.485,0.456,0.406`` stays a string
    that the adapter splits. ``1e-3`` (which YAML 1.1 leaves as a string) becomes a float.
    An empty value (``key=``) is the empty string, not ``None``.
    """
    import yaml

    options: dict[str, Any] = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"model argument {arg!r} has no '='; expected key=value")
        if not key:
            raise ValueError(f"model argument {arg!r} has an empty key; expected key=value")
        if key in options:
            raise ValueError(f"model argument {key!r} is given twice")
        if raw == "":
            options[key] = ""
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw  # e.g. "a: b" -- keep the string rather than refuse a free-form value
        if isinstance(value, str) and _NUMBER.match(value):
            value = float(value)
        options[key] = value
    return options


def _as_int(name: str, value: Any, *, minimum: int = 0) -> int:
    try:
        number = int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
    except (TypeError, ValueError):
        raise LocalizerLoadError(f"option {name}={value!r} is not an integer") from None
    if number < minimum:
        raise LocalizerLoadError(f"option {name}={value!r} must be >= {minimum}")
    return number


def _as_triplet(name: str, value: Any) -> tuple[float, float, float] | None:
    """``"0.485,0.456,0.406"``, ``[0.485, 0.456, 0.406]`` or a single number (used for all three)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts: list[Any] = [p for p in value.replace(" ", "").strip("[]()").split(",") if p]
    elif isinstance(value, (int, float)):
        parts = [value] * 3
    else:
        parts = list(value)
    try:
        numbers = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise LocalizerLoadError(f"option {name}={value!r} is not three comma-separated numbers") from None
    if len(numbers) == 1:
        numbers = numbers * 3
    if len(numbers) != 3 or not all(math.isfinite(n) for n in numbers):
        raise LocalizerLoadError(f"option {name}={value!r} must be three finite numbers (R,G,B)")
    return numbers  # type: ignore[return-value]


def _reject_unknown(kind: str, options: Mapping[str, Any], known: Iterable[str]) -> None:
    """A typo in ``--model-arg`` must not silently run the model with defaults."""
    known = sorted(known)
    for key in options:
        if key not in known:
            raise LocalizerLoadError(
                f"unknown option {key!r} for a {kind} model.{did_you_mean(key, known)}"
                f" Known: {', '.join(known)}."
            )


# -- output checking ------------------------------------------------------------------------------


def _where(position: int, batch_ids: Sequence[str] | None) -> str:
    if batch_ids is not None and position < len(batch_ids):
        return f"sample #{position} (id {batch_ids[position]!r})"
    return f"sample #{position}"


def _id_list(ids: Sequence[str] | None, limit: int = 5) -> str:
    if not ids:
        return ""
    shown = ", ".join(repr(i) for i in list(ids)[:limit])
    return f" (ids {shown}{', ...' if len(ids) > limit else ''})"


def _fail(name: str | None, where: str, problem: str, rule: str) -> LocalizerError:
    who = f"localizer {name!r}" if name else "localizer"
    return LocalizerError(f"{who}: {where}: {problem} [rule: {rule}]")


def _check_map(value: Any, where: str, name: str | None) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise _fail(name, where, f"map is a {type(value).__name__}", "maps must be numpy arrays")
    if value.ndim != 2:
        raise _fail(
            name, where, f"map has shape {value.shape}", "maps must be 2-D (H, W) arrays"
        )
    if value.size == 0:
        raise _fail(name, where, f"map has shape {value.shape}", "maps must not be empty")
    if value.dtype == np.bool_:
        value = value.astype(np.float32)
    if not np.issubdtype(value.dtype, np.floating):
        raise _fail(
            name,
            where,
            f"map has dtype {value.dtype}",
            "maps must be float arrays in [0, 1] (divide 8-bit maps by 255 first)",
        )
    arr = np.ascontiguousarray(value, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise _fail(name, where, f"map has {bad} NaN/inf values", "maps must be finite")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise _fail(
            name,
            where,
            f"map values span [{lo:.6g}, {hi:.6g}]",
            "maps must lie in [0, 1]; logits need a sigmoid in the model",
        )
    if lo < 0 or hi > 1:
        arr = np.clip(arr, 0.0, 1.0)
    return arr


def _check_score(value: Any, where: str, name: str | None) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise _fail(name, where, f"score {value!r} is not a number", "scores must be floats") from None
    if not math.isfinite(score):
        raise _fail(name, where, f"score is {score}", "scores must be finite")
    if score < -RANGE_TOLERANCE or score > 1 + RANGE_TOLERANCE:
        raise _fail(name, where, f"score is {score:.6g}", "scores must lie in [0, 1]")
    return min(max(score, 0.0), 1.0)


def check_output(
    output: Any,
    batch_ids: Sequence[str] | None,
    image_shapes: Sequence[Sequence[int]],
    *,
    name: str | None = None,
    strict_size: bool = False,
) -> LocalizerOutput:
    """Validate one batch's output and return it normalised (float32 maps, clipped to [0, 1]).

    ``image_shapes`` gives the batch size and, with ``strict_size``, the ``(H, W)`` each map must
    have; maps of any other size are legal otherwise (the runner resizes them). Raises
    :class:`LocalizerError` naming the sample position and id and the rule that was broken.
    """
    n = len(image_shapes)
    if not isinstance(output, LocalizerOutput):
        raise _fail(
            name,
            f"batch of {n}",
            f"predict() returned a {type(output).__name__}",
            "predict() must return a LocalizerOutput",
        )
    maps = list(output.maps) if output.maps is not None else []
    if len(maps) != n:
        raise _fail(
            name,
            f"batch of {n}{_id_list(batch_ids)}",
            f"returned {len(maps)} maps",
            "one map per image",
        )
    checked = []
    for i, m in enumerate(maps):
        where = _where(i, batch_ids)
        arr = _check_map(m, where, name)
        if strict_size and tuple(arr.shape) != tuple(image_shapes[i][:2]):
            raise _fail(
                name,
                where,
                f"map is {arr.shape[0]}x{arr.shape[1]} but the image is "
                f"{image_shapes[i][0]}x{image_shapes[i][1]}",
                "strict_size: maps must have the image's size",
            )
        checked.append(arr)
    scores = None
    if output.scores is not None:
        raw_scores = list(output.scores)
        if len(raw_scores) != n:
            raise _fail(
                name, f"batch of {n}", f"returned {len(raw_scores)} scores", "one score per image"
            )
        scores = [_check_score(s, _where(i, batch_ids), name) for i, s in enumerate(raw_scores)]
    return LocalizerOutput(maps=checked, scores=scores)
