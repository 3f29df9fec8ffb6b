"""Geometric training augmentations (recipe data.geometric): image and mask move together, seeded, validated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("timm")

from dolos_bench.seeding import rng_for  # noqa: E402
from dolos_bench.train.data import StreamDataset, load_rows  # noqa: E402
from dolos_bench.train.geometry import DihedralStep, ScaleStep, apply_geometric  # noqa: E402
from dolos_bench.train.recipe import TrainRecipeError  # noqa: E402
from dolos_bench.train.trainer import fit  # noqa: E402
from test_train import dataset, pf_task, recipe  # noqa: E402,F401  (dataset is a fixture)

FOCAL_GEOMETRY = [{"op": "scale", "p": 0.56, "factor": [0.5, 1.0], "pad": "reflect"}, {"op": "dihedral", "p": 0.56}]


def marked(size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel is its mask (255 forged, 0 pristine) and whose other channels are noise."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), bool)
    mask[3:13, 5:21] = True  # off-centre and not symmetric, so every transform moves it
    mask[20:27, 24:30] = True
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    image[..., 0] = mask * 255
    return image, mask


def test_bad_steps_are_refused_with_their_reason() -> None:
    for step, words in [({"op": "shear"}, "dihedral"), ({"op": "scale", "factor": [0.5, 1.5]}, "0 < lo <= hi <= 1"),
                        ({"op": "scale", "factor": [0.9, 0.5]}, "0 < lo <= hi <= 1"),
                        ({"op": "scale", "factor": [0.0, 0.5]}, "0 < lo <= hi <= 1"),
                        ({"op": "dihedral", "choices": ["flop"]}, "hflip"),
                        ({"op": "dihedral", "choices": []}, "at least 1"),
                        ({"op": "scale", "pad": "wrap"}, "reflect"), ({"op": "dihedral", "p": 1.5}, "less than or equal to 1"),
                        ({"op": "dihedral", "probability": 0.5}, "probability")]:
        with pytest.raises(TrainRecipeError, match=words):
            recipe(data={"geometric": [step]})


def test_no_geometry_hashes_as_before() -> None:
    plain = recipe()
    assert "geometric" not in json.loads(plain.canonical_json())["data"]
    changed = recipe(data={"geometric": FOCAL_GEOMETRY})
    assert changed.sha256() != plain.sha256()
    assert [type(s) for s in changed.data.geometric] == [ScaleStep, DihedralStep]


@pytest.mark.parametrize("name, reference", [
    ("hflip", lambda a: a[:, ::-1]), ("vflip", lambda a: a[::-1]), ("transpose", lambda a: np.swapaxes(a, 0, 1))])
def test_each_flip_moves_image_and_mask_alike(name: str, reference) -> None:
    image, mask = marked()
    out, out_mask = apply_geometric(image, mask, [DihedralStep(op="dihedral", choices=[name])], rng_for(0, "g", 0))
    assert np.array_equal(out, reference(image)) and np.array_equal(out_mask, reference(mask))
    assert out.flags.c_contiguous and out_mask.flags.c_contiguous


def test_rot90_draws_each_quarter_turn_as_random_rotate90_does() -> None:
    image, mask = marked()
    step = [DihedralStep(op="dihedral", choices=["rot90"])]
    turns = set()
    for position in range(40):
        out, out_mask = apply_geometric(image, mask, step, rng_for(1, "g", position))
        k = next(k for k in range(4) if np.array_equal(out, np.rot90(image, k)))
        assert np.array_equal(out_mask, np.rot90(mask, k))
        turns.add(k)
    assert turns == {0, 1, 2, 3}  # identity included, like albumentations' factor in 0..3


def test_scale_shrinks_then_pads_back_and_the_mask_follows() -> None:
    image, mask = marked()
    for pad in ("reflect", "constant"):
        out, out_mask = apply_geometric(image, mask, [ScaleStep(op="scale", factor=(0.5, 0.5), pad=pad)], rng_for(0, "g", 0))
        assert out.shape == image.shape and out_mask.shape == mask.shape and out.dtype == np.uint8
        small = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BILINEAR))
        assert np.array_equal(out[8:24, 8:24], small)  # the shrunk image sits in the middle
        small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((16, 16), Image.Resampling.NEAREST)) > 127
        assert np.array_equal(out_mask[8:24, 8:24], small_mask)
        if pad == "constant":
            assert not out[:8].any() and not out_mask[:8].any()  # zeros, pristine
        else:
            assert np.array_equal(out[7], out[9]) and np.array_equal(out_mask[7], out_mask[9])  # REFLECT_101
        # the red channel (the mask drawn into the pixels) agrees with the mask wherever bilinear did not
        # blend forged and pristine pixels
        red = out[..., 0]
        unblended = (red == 0) | (red == 255)
        assert unblended.mean() > 0.8 and np.array_equal(red[unblended] == 255, out_mask[unblended])


def test_a_shrink_to_one_pixel_pads_with_zeros_since_one_pixel_cannot_reflect() -> None:
    image, mask = marked()
    out, out_mask = apply_geometric(image, mask, [ScaleStep(op="scale", factor=(0.01, 0.01))], rng_for(0, "g", 0))
    assert out.shape == image.shape and out_mask.shape == mask.shape
    assert (out.reshape(-1, 3).any(axis=1)).sum() <= 1 and out_mask.sum() <= 1  # one pixel of content, the rest 0


def test_draws_depend_only_on_the_generator_and_p_zero_is_the_identity() -> None:
    image, mask = marked()
    steps = [ScaleStep.model_validate(FOCAL_GEOMETRY[0] | {"p": 1.0}), DihedralStep(op="dihedral")]
    a = apply_geometric(image, mask, steps, rng_for(5, "g", 3))
    b = apply_geometric(image, mask, steps, rng_for(5, "g", 3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    outs = {apply_geometric(image, mask, steps, rng_for(5, "g", p))[0].tobytes() for p in range(12)}
    assert len(outs) > 8
    never = [DihedralStep(op="dihedral", p=0.0), ScaleStep(op="scale", p=0.0)]
    out, out_mask = apply_geometric(image, mask, never, rng_for(0, "g", 0))
    assert np.array_equal(out, image) and np.array_equal(out_mask, mask)
    out, none = apply_geometric(image, None, steps, rng_for(5, "g", 3))  # weak supervision: no mask
    assert none is None and np.array_equal(out, a[0])


def test_the_dataset_moves_masks_with_images_and_never_on_validation(dataset: Path) -> None:
    rows = load_rows(str(dataset), "train", include="fakes")
    kwargs = dict(size=32, mean=(0.0,) * 3, std=(1.0,) * 3, seed=2)
    steps = [DihedralStep(op="dihedral", choices=["vflip"])]
    plain = StreamDataset(rows, **kwargs)
    moved = StreamDataset(rows, **kwargs, geometric=steps)
    for position in range(len(rows)):
        p, m = plain[position], moved[position]
        assert torch.equal(m[0], p[0].flip(1)) and torch.equal(m[2], p[2].flip(1))  # (C, H, W): H is dim 1
        assert p[1] == m[1] and p[3] == m[3]
    validation = StreamDataset(rows, **kwargs, train=False, geometric=steps)
    assert torch.equal(validation[0][0], StreamDataset(rows, **kwargs, train=False)[0][0])


def test_a_run_with_geometry_trains_and_records_it(dataset: Path, tmp_path: Path) -> None:
    result = fit(pf_task(), recipe(epochs=1, iterations_per_epoch=2, data={"geometric": FOCAL_GEOMETRY}), dataset, tmp_path / "run")
    assert result.steps == 2
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["recipe"]["data"]["geometric"]
    assert recorded == [{"op": "scale", "p": 0.56, "factor": [0.5, 1.0], "pad": "reflect"},
                        {"op": "dihedral", "p": 0.56, "choices": ["hflip", "vflip", "rot90", "transpose"]}]
