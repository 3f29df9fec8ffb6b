"""``LearnedGenerator``: the loading and single-image shape every learned generator shares."""

from __future__ import annotations

import numpy as np

from dolos_bench.builder.base import LearnedGenerator


class CountingGenerator(LearnedGenerator):
    """Records each load and each batch; fills the mask with a value drawn from each sample's rng."""

    name = "counting"

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.batches: list[int] = []

    def load(self, device: str) -> None:
        self.loads.append(device)

    def inpaint_batch(self, images, masks, rngs):
        self.ensure_loaded()
        self.batches.append(len(images))
        return [np.where(m[..., None] > 0, int(r.integers(0, 256)), im).astype(np.uint8)
                for im, m, r in zip(images, masks, rngs)]


def test_setup_loads_once_per_device() -> None:
    gen = CountingGenerator()
    gen.setup("cpu")
    gen.setup("cpu")
    assert gen.loads == ["cpu"] and gen.loaded_on == "cpu"
    gen.setup("cuda:0")
    assert gen.loads == ["cpu", "cuda:0"] and gen.loaded_on == "cuda:0"


def test_a_direct_call_loads_on_the_cpu_and_keeps_an_earlier_device() -> None:
    image, mask = np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 255, np.uint8)
    fresh = CountingGenerator()
    fresh.inpaint(image, mask, np.random.default_rng(0))
    assert fresh.loads == ["cpu"]
    set_up = CountingGenerator()
    set_up.setup("cuda:0")
    set_up.inpaint(image, mask, np.random.default_rng(0))
    assert set_up.loads == ["cuda:0"]


def test_inpaint_is_a_batch_of_one_with_the_same_output() -> None:
    gen = CountingGenerator()
    image, mask = np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 255, np.uint8)
    alone = gen.inpaint(image, mask, np.random.default_rng(3))
    batched = gen.inpaint_batch([image, image], [mask, mask], [np.random.default_rng(3), np.random.default_rng(4)])
    assert gen.batches == [1, 2]
    assert np.array_equal(alone, batched[0]) and alone.shape == image.shape and alone.dtype == np.uint8
