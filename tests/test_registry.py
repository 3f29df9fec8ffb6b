"""The generic registry: decorators, lazy entries, entry points, did-you-mean."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest

from dolos_bench import registry as reg
from dolos_bench.registry import PluginLoadError, Registry, UnknownNameError


def test_decorator_and_create():
    r: Registry = Registry("widget")

    @r.register("square")
    class Square:
        """A square widget."""

        def __init__(self, side: int = 1) -> None:
            self.side = side

    assert r.names() == ["square"] and r.create("square", side=3).side == 3
    assert r.describe() == [("square", "A square widget.", "runtime")]
    with pytest.raises(ValueError, match="already registered"):
        r.register("square")(type("Other", (), {}))


def test_lazy_entries_import_only_on_use():
    r: Registry = Registry("thing")
    r.add_lazy("decoder", "json:JSONDecoder", "stdlib decoder")
    assert r.describe()[0][:2] == ("decoder", "stdlib decoder")
    import json

    assert r.get("decoder") is json.JSONDecoder
    r.add_lazy("broken", "no_such_module_xyz:Thing")
    with pytest.raises(PluginLoadError, match="no_such_module_xyz"):
        r.get("broken")
    r.add_lazy("badattr", "json:Nope")
    with pytest.raises(PluginLoadError, match="no attribute"):
        r.get("badattr")


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownNameError) as info:
        reg.GENERATORS.get("teela")
    assert "Did you mean 'telea'" in str(info.value)
    with pytest.raises(UnknownNameError, match=r"Known: [a-z, -]*\bns, [a-z, -]*\btelea\b"):
        reg.GENERATORS.get("zzzzzz")


def test_entry_points_are_discovered(monkeypatch):
    ep = EntryPoint(name="plugged", value="json:JSONEncoder", group="test.group")
    monkeypatch.setattr(reg, "entry_points", lambda group: [ep] if group == "test.group" else [])
    r: Registry = Registry("plugin", "test.group")
    import json

    assert "plugged" in r and r.get("plugged") is json.JSONEncoder


def test_builtin_names_and_installed_baselines():
    assert {"folder", "hf", "sample", "dolos"} <= set(reg.SOURCES.names())
    assert {"strokes", "boxes", "landmarks"} <= set(reg.MASKERS.names())
    assert {"jpeg", "webp", "blur", "noise", "resize"} <= set(reg.PERTURBATIONS.names())
    assert {"ela", "noise"} <= set(reg.LOCALIZERS.names())  # through the package's entry points


def test_listing_does_not_import_heavy_modules():
    import subprocess

    code = (
        "import sys; from dolos_bench.registry import REGISTRIES;"
        "[r.describe() for r in REGISTRIES.values()];"
        "print(any(m in sys.modules for m in ('dlib', 'torch', 'cv2')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
