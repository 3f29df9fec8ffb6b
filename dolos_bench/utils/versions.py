"""Installed package versions, for provenance: which code made a dataset or a score."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Iterable


def package_versions(names: Iterable[str], *, with_python: bool = False) -> dict[str, str]:
    """Versions of the installed ``names`` (missing ones left out); ``python`` first when asked."""
    found = {"python": platform.python_version()} if with_python else {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
