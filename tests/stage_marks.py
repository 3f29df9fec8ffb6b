"""Skip markers read from what a stage declares: a test of a stage whose extra is missing skips, never fails.

``requires_stage(MASKERS, "landmarks")`` reads the stage's ``requires`` and ``extra`` (see
:mod:`dolos_bench.stage`), so the reason printed by ``pytest -ra`` is the same sentence
``bench validate`` gives: ``masker 'landmarks' needs dlib: pip install 'dolos-bench[faces]'``.
"""

from __future__ import annotations

import pytest

from dolos_bench.registry import Registry
from dolos_bench.stage import install_hint


def stage_missing(registry: Registry, name: str) -> str | None:
    """Why the stage ``name`` of ``registry`` cannot run here, or None when its packages are installed."""
    hint = install_hint(registry.get(name))
    return None if hint is None else f"{registry.kind} {name!r} {hint}"


def requires_stage(registry: Registry, name: str) -> pytest.MarkDecorator:
    """A ``skipif`` marker for tests that need the stage ``name`` to run."""
    reason = stage_missing(registry, name)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def skip_unless_recipe_stages(data: dict) -> None:
    """Skip the calling test when a stage a recipe mapping names has a missing extra (the quickstart's landmarks)."""
    from dolos_bench.registry import GENERATORS, MASKERS, SOURCES

    for key, registry in (("sources", SOURCES), ("maskers", MASKERS), ("generators", GENERATORS)):
        for item in data.get(key) or []:
            reason = stage_missing(registry, item["type"])
            if reason is not None:
                pytest.skip(reason)
