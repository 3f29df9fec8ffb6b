"""Words for messages: the closest known names to a typo."""

from __future__ import annotations

import difflib


def closest_names(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Known names closest to ``name`` (difflib ratio), best first."""
    return difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)


def did_you_mean(name: str, candidates: list[str]) -> str:
    """A ``" Did you mean 'x' or 'y'?"`` sentence, or an empty string when nothing is close."""
    close = closest_names(name, candidates)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
