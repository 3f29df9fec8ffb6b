"""A generator in its own pool works while the CPU stages prepare the next shard and finish the last.

The masker (prepare) and the generator both cost a fixed sleep per image, so the serial build
(the generator inside the CPU worker: prepare, generate and finish one after another) takes at
least the sum of both, and a build with the generator in its own pool should hide most of the
smaller one. Checked two ways, with margins for a shared, noisy machine: the recorded calls of
the masker and the generator overlap in time, and the build takes clearly less than the serial
one. The bytes are the same either way, after an interrupted build resumed, too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from dolos_bench.builder.base import Generator, Masker, MaskResult
from dolos_bench.builder.pipeline import BuildInterrupted, run_build
from dolos_bench.builder.recipe import load_recipe
from dolos_bench.registry import GENERATORS, MASKERS

from helpers import folder_hashes, make_image_folder, tiny_recipe

PREPARE = 0.05  # seconds the masker sleeps per fake
GENERATE = 0.05  # seconds the generator sleeps per image
FAKES = 32


class SleepingMasker(Masker):
    """A box at a random place, after a sleep; records when each call ran."""

    name = "overlap-test-sleep"
    calls: ClassVar[list[tuple[float, float]]] = []

    def __init__(self, cost: float = PREPARE) -> None:
        self.cost = cost

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> MaskResult:
        start = time.perf_counter()
        time.sleep(self.cost)
        h, w = image.shape[:2]
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        mask = np.zeros((h, w), np.uint8)
        mask[y : y + h // 3, x : x + w // 3] = 255
        SleepingMasker.calls.append((start, time.perf_counter()))
        return MaskResult(mask, ["box"])


class SleepingGenerator(Generator):
    """Noise inside the mask from the sample's rng, after a sleep per image; records its calls."""

    name = "overlap-test-sleep"
    max_batch: ClassVar[int | None] = 2
    calls: ClassVar[list[tuple[float, float]]] = []

    def __init__(self, cost: float = GENERATE) -> None:
        self.cost = cost

    def identity(self) -> dict[str, Any]:
        return {"cost": self.cost}

    def inpaint(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = image.copy()
        inside = mask > 0
        out[inside] = rng.integers(0, 256, size=(int(inside.sum()), 3), dtype=np.uint8)
        return out

    def inpaint_batch(self, images, masks, rngs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        time.sleep(self.cost * len(images))
        out = [self.inpaint(i, m, r) for i, m, r in zip(images, masks, rngs)]
        SleepingGenerator.calls.append((start, time.perf_counter()))
        return out


@pytest.fixture(autouse=True)
def _registered_for_this_test(monkeypatch):
    """The sleeping stages exist only while a test of this file runs (others list the registries)."""
    for registry in (GENERATORS, MASKERS):
        registry.names()  # entry points loaded into the registry itself, not into the copy
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    GENERATORS.register("overlap-test-sleep")(SleepingGenerator)
    MASKERS.register("overlap-test-sleep")(SleepingMasker)
    SleepingMasker.calls.clear()
    SleepingGenerator.calls.clear()


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("src"), n=FAKES // 2, size=(72, 64))


def _recipe(tmp_path: Path, src: Path, **stage: float):
    return load_recipe(tiny_recipe(
        tmp_path / "r.yaml", src, fakes={"per_source": 2, "assignment": "each"},
        maskers=[{"type": "overlap-test-sleep", **({"cost": stage["prepare"]} if "prepare" in stage else {})}],
        generators=[{"type": "overlap-test-sleep", **({"cost": stage["generate"]} if "generate" in stage else {})}],
        output={"shard_size": 3}))


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Seconds during which a call of ``a`` and a call of ``b`` ran at the same time."""
    return sum(max(0.0, min(x1, y1) - max(x0, y0)) for x0, x1 in a for y0, y1 in b)


def _timed(recipe, out: Path, **kwargs) -> float:
    start = time.perf_counter()
    run_build(recipe, out, **kwargs)
    return time.perf_counter() - start


def test_a_generator_in_its_own_pool_overlaps_the_cpu_stages_same_bytes(tmp_path, src):
    recipe = _recipe(tmp_path, src)
    serial = _timed(recipe, tmp_path / "inside")  # the generator inside the CPU worker: one after another
    assert len(SleepingGenerator.calls) > 0 and _overlap(SleepingMasker.calls, SleepingGenerator.calls) == 0
    assert serial >= FAKES * (PREPARE + GENERATE)
    SleepingMasker.calls.clear()
    SleepingGenerator.calls.clear()

    overlapped = _timed(recipe, tmp_path / "pool", inpaint_devices=("cpu",))

    hidden = FAKES * min(PREPARE, GENERATE)  # the most that overlapping can save
    assert _overlap(SleepingMasker.calls, SleepingGenerator.calls) > 0.4 * hidden
    assert serial - overlapped > 0.4 * hidden, (serial, overlapped)
    assert folder_hashes(tmp_path / "pool") == folder_hashes(tmp_path / "inside")


def test_an_interrupted_build_with_its_own_pool_resumes_to_the_same_bytes(tmp_path, src):
    recipe = _recipe(tmp_path, src, prepare=0.0, generate=0.002)
    run_build(recipe, tmp_path / "ref")
    out = tmp_path / "out"
    with pytest.raises(BuildInterrupted):
        run_build(recipe, out, inpaint_devices=("cpu",), stop_after_shards=2)
    assert len(list((out / "data").glob("*.parquet"))) == 2
    report = run_build(recipe, out, inpaint_devices=("cpu",))
    assert report.resumed_shards == 2 and folder_hashes(out) == folder_hashes(tmp_path / "ref")


def test_a_generator_failing_in_its_own_thread_fails_the_build_with_its_error(tmp_path, src, monkeypatch):
    """An error that is not about one sample (a user error: weights, device) stops the build from
    the generator's thread; an error on a sample only skips it (tests/test_generator_failures.py)."""
    from dolos_bench.errors import UserError

    recipe = _recipe(tmp_path, src, prepare=0.0, generate=0.0)

    def broken(self, images, masks, rngs):  # type: ignore[no-untyped-def]
        raise UserError("the model broke")

    monkeypatch.setattr(SleepingGenerator, "inpaint_batch", broken)
    with pytest.raises(UserError, match="the model broke"):
        run_build(recipe, tmp_path / "out", inpaint_devices=("cpu",))
    assert not (tmp_path / "out" / "manifest.json").exists()
