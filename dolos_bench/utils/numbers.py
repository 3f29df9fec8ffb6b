"""Number checks for stage parameters: one copy, one wording, used by every stage's ``Config``.

Parameters come from YAML recipes and command lines, so they arrive as plain ints, floats, lists
(and sometimes ``true`` or ``"75"``). A bad one must be refused with a sentence that names the
parameter and says what was expected, because a recipe typo should be fixed in seconds, not
decoded from a cv2 traceback half-way through a build. :func:`number` and :func:`pair` put the
checks on a pydantic field; the messages are the checks' own, so they read the same wherever
they are raised.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

from pydantic import BeforeValidator, ValidationInfo

__all__ = ["check_number", "check_pair", "number", "pair"]


def _is_number(value: Any) -> bool:
    # bool is an int subclass; `true` in a YAML recipe is never a size or a quality.
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(integer: bool, lo: float | None, hi: float | None, lo_open: bool) -> str:
    fmt = "{}" if integer else "{:g}"
    if lo is not None and hi is not None:
        if lo_open:
            return f" in ({fmt.format(lo)}, {fmt.format(hi)}]"
        return f" in {fmt.format(lo)}..{fmt.format(hi)}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {fmt.format(lo)}"
    if hi is not None:
        return f" <= {fmt.format(hi)}"
    return ""


def check_number(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> Any:
    """``value`` as a plain ``int`` (``integer``) or ``float`` within the bounds, else a ``ValueError``.

    Integral floats (``75.0`` from YAML) pass as integers; NaN, infinities, bools and strings never
    pass. ``lo_open`` makes the lower bound exclusive (``sigma > 0``).
    """
    kind = "an integer" if integer else "a finite number"
    problem = f"{name} must be {kind}{_bounds(integer, lo, hi, lo_open)}, got {value!r}"
    if not _is_number(value) or (integer and int(value) != value):
        raise ValueError(problem)
    out: Any = int(value) if integer else float(value)
    too_low = lo is not None and (out <= lo if lo_open else out < lo)
    if too_low or (hi is not None and out > hi):
        raise ValueError(problem)
    return out


def check_pair(
    name: str, value: Any, *, integer: bool = False, lo: float | None = None, hi: float | None = None
) -> tuple[Any, Any]:
    """A ``(low, high)`` pair, inclusive, with ``lo <= low <= high <= hi``.

    A single number is the fixed range ``(v, v)``, since that is what a recipe author means by
    ``width: 0.05``.
    """
    if _is_number(value):
        value = [value, value]
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        kind = "integers" if integer else "numbers"
        raise ValueError(f"{name} must be a [low, high] pair of {kind}{_bounds(integer, lo, hi, False)}, got {value!r}")
    low = check_number(f"{name}[0]", value[0], integer=integer, lo=lo, hi=hi)
    high = check_number(f"{name}[1]", value[1], integer=integer, lo=lo, hi=hi)
    if low > high:
        raise ValueError(f"{name} must have low <= high, got {list(value)!r}")
    return low, high


def number(
    *, integer: bool = False, lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> BeforeValidator:
    """:func:`check_number` on a pydantic field: ``Annotated[int, number(integer=True, lo=1)]``."""

    def check(value: Any, info: ValidationInfo) -> Any:
        return check_number(info.field_name or "value", value, integer=integer, lo=lo, hi=hi, lo_open=lo_open)

    return BeforeValidator(check)


def pair(*, integer: bool = False, lo: float | None = None, hi: float | None = None) -> BeforeValidator:
    """:func:`check_pair` on a pydantic field: ``Annotated[tuple[int, int], pair(integer=True, lo=1)]``."""

    def check(value: Any, info: ValidationInfo) -> tuple[Any, Any]:
        return check_pair(info.field_name or "value", value, integer=integer, lo=lo, hi=hi)

    return BeforeValidator(check)
