"""A generator that fails on one sample: that sample is skipped with the reason, the build goes on.

The failing sample is found by retrying its batch one sample at a time, so its batch-mates come
out exactly as they would alone; a user error (missing weights, a device that is not there) is
not about one sample and still stops the build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from dolos_bench.builder.base import Generator
from dolos_bench.builder.pipeline import run_build
from dolos_bench.builder.recipe import load_recipe
from dolos_bench.errors import UserError
from dolos_bench.registry import GENERATORS

from helpers import folder_hashes, make_image_folder, tiny_recipe


class PickyGenerator(Generator):
    """Fills the mask with grey, but raises on any image whose top-left red value is 1 mod 4 (in any batch).

    ``fail_with`` picks the exception; ``fail_all`` makes every sample fail (a broken model).
    """

    name: ClassVar[str] = "picky-test"
    max_batch: ClassVar[int | None] = 4
    fail_with: ClassVar[type[Exception]] = RuntimeError
    fail_all: ClassVar[bool] = False

    def inpaint(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.inpaint_batch([image], [mask], [rng])[0]

    def inpaint_batch(self, images: list[np.ndarray], masks: list[np.ndarray],
                      rngs: list[np.random.Generator]) -> list[np.ndarray]:
        for image in images:
            if self.fail_all or int(image[0, 0, 0]) % 4 == 1:
                raise self.fail_with("CUDA out of memory (simulated)")
        out = []
        for image, mask in zip(images, masks):
            filled = image.copy()
            filled[mask > 0] = 128
            out.append(filled)
        return out


@pytest.fixture(autouse=True)
def registered(monkeypatch) -> None:
    """The test generator is registered only while a test of this file runs (others list the registry)."""
    GENERATORS.names()  # entry points loaded into the registry itself, not into the copy
    monkeypatch.setattr(GENERATORS, "_entries", dict(GENERATORS._entries))
    GENERATORS.register("picky-test")(PickyGenerator)


def _build(tmp_path: Path, name: str, **overrides: Any) -> tuple[Path, dict]:
    src = tmp_path / "src"
    if not src.exists():
        make_image_folder(src, n=8, size=(64, 64))
    recipe = load_recipe(tiny_recipe(tmp_path / f"{name}.yaml", src, generators=[{"type": "picky-test"}],
                                     perturbations={"probability": 0.0, "chains": []}, **overrides))
    out = tmp_path / name
    run_build(recipe, out)
    return out, json.loads((out / "manifest.json").read_text())


def test_a_sample_the_generator_fails_on_is_skipped_and_the_build_goes_on(tmp_path: Path) -> None:
    out, manifest = _build(tmp_path, "picky")
    failed = [s for s in manifest["skipped"] if "picky-test failed on this sample" in s["reason"]]
    assert failed, manifest["skipped"]
    assert all("RuntimeError: CUDA out of memory (simulated)" in s["reason"] for s in failed)
    made = manifest["counts"]["generators"]["picky-test"]
    assert made > 0  # the others were made
    assert made + len(failed) == manifest["counts"]["generators"]["real"]  # one fake planned per real


def test_batch_mates_of_a_failing_sample_are_what_they_would_be_alone(tmp_path: Path, monkeypatch) -> None:
    batched, _ = _build(tmp_path, "batched")
    monkeypatch.setattr(PickyGenerator, "max_batch", 1)
    alone, _ = _build(tmp_path, "alone")
    assert folder_hashes(batched) == folder_hashes(alone)


def test_a_user_error_still_stops_the_build(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(PickyGenerator, "fail_with", UserError)
    monkeypatch.setattr(PickyGenerator, "fail_all", True)
    with pytest.raises(UserError, match="simulated"):
        _build(tmp_path, "stopped")
    assert not (tmp_path / "stopped" / "manifest.json").exists()
