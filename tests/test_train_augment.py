"""Photometric training augmentations (recipe data.augment): validated, seeded per stream position, mask untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("timm")

from dolos_bench.seeding import rng_for  # noqa: E402
from dolos_bench.train.data import StreamDataset, augment_image, load_rows  # noqa: E402
from dolos_bench.train.recipe import AugmentStep, TrainRecipeError  # noqa: E402
from dolos_bench.train.trainer import fit  # noqa: E402
from test_train import dataset, pf_task, recipe  # noqa: E402,F401  (dataset is a fixture)

FOCAL_LIKE = [{"op": "jpeg", "p": 0.6, "params": {"quality": [50, 95]}},
              {"op": "blur", "p": 0.3, "params": {"sigma": [0.5, 1.5]}},
              {"op": "noise", "p": 0.3, "params": {"sigma": [2.0, 8.0]}}]


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_bad_steps_are_refused_with_their_reason() -> None:
    for step, words in [({"op": "sharpen"}, "sharpen"), ({"op": "resize", "params": {"scale": 0.5}}, "photometric"),
                        ({"op": "jpeg", "params": {"quality": [95, 50]}}, "lo <= hi"),
                        ({"op": "jpeg", "params": {"quality": [50, 101]}}, "jpeg"),
                        ({"op": "blur", "p": 1.5}, "less than or equal to 1"),
                        ({"op": "median", "params": {"size": [3, 7]}}, "odd"),  # 4 and 6 would be drawn
                        ({"op": "motion-blur", "params": {"length": [2, 7]}}, "3..255")]:
        with pytest.raises(TrainRecipeError, match=words):
            recipe(data={"augment": [step]})


def test_the_new_photometric_ops_augment_too() -> None:
    steps = [AugmentStep.model_validate(s) for s in [
        {"op": "median", "params": {"size": 5}}, {"op": "motion-blur", "params": {"length": [3, 7], "angle": [0.0, 180.0]}},
        {"op": "gamma", "params": {"gamma": [0.8, 1.2]}},
        {"op": "brightness-contrast", "params": {"brightness": [-51.0, 51.0], "contrast": [0.8, 1.2]}}]]
    outs = {augment_image(image(), steps, rng_for(0, "augment-ops", p)).tobytes() for p in range(6)}
    assert len(outs) == 6 and image().tobytes() not in outs


def test_no_augment_hashes_as_before() -> None:
    plain = recipe()
    assert "augment" not in json.loads(plain.canonical_json())["data"]
    assert recipe(data={"augment": FOCAL_LIKE}).sha256() != plain.sha256()


def test_draws_depend_only_on_the_generator() -> None:
    steps = [AugmentStep.model_validate(s) for s in FOCAL_LIKE]
    a = augment_image(image(), steps, rng_for(3, "augment-ops", 7))
    b = augment_image(image(), steps, rng_for(3, "augment-ops", 7))
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == (32, 32, 3)
    outs = [augment_image(image(), steps, rng_for(3, "augment-ops", p)) for p in range(20)]
    assert sum(not np.array_equal(o, image()) for o in outs) >= 10  # most positions change the image
    assert len({o.tobytes() for o in outs}) > 5  # and differently
    never = [AugmentStep(op="jpeg", p=0.0, params={"quality": 50})]
    assert np.array_equal(augment_image(image(), never, rng_for(0, "augment-ops", 0)), image())


def test_a_fixed_parameter_is_the_perturbation_itself() -> None:
    from dolos_bench.perturbations.ops import JPEG

    steps = [AugmentStep(op="jpeg", params={"quality": 70})]
    want, _ = JPEG(quality=70).apply(image(), None, np.random.default_rng(0))
    assert np.array_equal(augment_image(image(), steps, rng_for(0, "augment-ops", 0)), want)


def test_the_dataset_augments_images_not_masks(dataset: Path) -> None:
    rows = load_rows(str(dataset), "train", include="fakes")
    kwargs = dict(size=32, mean=(0.5,) * 3, std=(0.5,) * 3, seed=1)
    plain = StreamDataset(rows, **kwargs)
    augmented = StreamDataset(rows, **kwargs, augment=[AugmentStep.model_validate(s) for s in FOCAL_LIKE])
    again = StreamDataset(rows, **kwargs, augment=[AugmentStep.model_validate(s) for s in FOCAL_LIKE])
    changed = 0
    for position in range(len(rows)):
        p, a, b = plain[position], augmented[position], again[position]
        assert torch.equal(p[2], a[2]) and p[1] == a[1] and p[3] == a[3]  # mask, label, id unchanged
        assert torch.equal(a[0], b[0])  # same position, same pixels
        changed += not torch.equal(p[0], a[0])
    assert changed >= 1
    validation = StreamDataset(rows, **kwargs, train=False, augment=[AugmentStep(op="noise", params={"sigma": 50.0})])
    assert torch.equal(validation[0][0], StreamDataset(rows, **kwargs, train=False)[0][0])  # never on validation


def test_a_run_with_augmentations_trains(dataset: Path, tmp_path: Path) -> None:
    result = fit(pf_task(), recipe(epochs=1, iterations_per_epoch=2, data={"augment": FOCAL_LIKE}), dataset, tmp_path / "run")
    assert result.steps == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["recipe"]["data"]["augment"][0]["op"] == "jpeg"
