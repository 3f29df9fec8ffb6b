"""Words: the closest known names to a typo, and file-name-safe slugs."""

from __future__ import annotations

import difflib
import re


def closest_names(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Known names closest to ``name`` (difflib ratio), best first."""
    return difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)


def did_you_mean(name: str, candidates: list[str]) -> str:
    """A ``" Did you mean 'x' or 'y'?"`` sentence, or an empty string when nothing is close."""
    close = closest_names(name, candidates)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


_PATH_SEPARATORS = re.compile(r"[\\/]+")


def slugify(
    text: str,
    *,
    keep: str = "._-",
    fill: str = "_",
    squeeze: bool = True,
    lower: bool = False,
    empty: str = "_",
    paths: bool = True,
) -> str:
    """A file-name-safe form of ``text``: every character but ASCII letters, digits and ``keep`` becomes ``fill``.

    ``squeeze`` turns a run of such characters into one ``fill``; the result loses ``fill`` at
    both ends and is ``empty`` when nothing is left. With ``paths``, ``/`` and ``\\`` separate
    parts that are slugged one by one and joined by two ``fill`` (``a/b c`` -> ``a__b_c``), so a
    sample id still shows the folders it came from. The defaults make source ids; a metric's
    file name is ``slugify(name, keep="", fill="-", lower=True, paths=False)``.
    """
    odd = re.compile(f"[^A-Za-z0-9{re.escape(keep)}]" + ("+" if squeeze else ""))
    parts = _PATH_SEPARATORS.split(text) if paths else [text]
    slugged = [odd.sub(fill, part).strip(fill) for part in parts if part]
    out = (fill * 2).join(p for p in slugged if p)
    return (out.lower() if lower else out) or empty
