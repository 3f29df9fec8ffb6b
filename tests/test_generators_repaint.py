"""`repaint`: RePaint over a tiny random UNet2DModel saved with save_pretrained, end to end on the CPU.

Checked: the region changes, every pixel outside it comes back bit for bit, a seed repeats, a
sample's bytes do not depend on its batch (per-sample noise and per-sample network calls on the
CPU), both variance modes run; a missing model is one line before any sample; a build through
`bench build` (in the CPU workers, and in its own pool with --device) gives the same bytes for
any batch size, and `bench eval` scores it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from click.testing import CliRunner  # noqa: E402

from dolos_bench.builder.generators.repaint import RePaintGenerator  # noqa: E402
from dolos_bench.cli import main  # noqa: E402
from dolos_bench.weights import WeightsError  # noqa: E402

from helpers import folder_hashes, make_image_folder, textured_image  # noqa: E402
from tiny_diffusion import tiny_unet  # noqa: E402

FEW = dict(steps=6, jump_length=2, jump_n_sample=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("unets")
    return {3: tiny_unet(root / "eps"), 6: tiny_unet(root / "eps-var", out_channels=6)}


def _inputs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [textured_image(i, (32, 32)) for i in range(3)]
    masks = [np.zeros((32, 32), np.uint8) for _ in range(3)]
    for i, mask in enumerate(masks):
        mask[4 + 3 * i : 16 + 3 * i, 6:20] = 255
    return images, masks


@pytest.mark.parametrize("channels, variance", [(3, "auto"), (6, "auto"), (6, "fixed")])
def test_inpaints_inside_keeps_outside_repeats_and_is_batch_invariant(models, channels, variance) -> None:
    generator = RePaintGenerator(str(models[channels]), variance=variance, **FEW)
    generator.setup("cpu")
    assert generator.identity()["variance"] == ("learned" if channels == 6 and variance == "auto" else "fixed")
    images, masks = _inputs()
    alone = [generator.inpaint(im, m, np.random.default_rng(10 + i)) for i, (im, m) in enumerate(zip(images, masks))]
    batch = generator.inpaint_batch(images, masks, [np.random.default_rng(10 + i) for i in range(3)])
    for image, mask, one, many in zip(images, masks, alone, batch):
        assert np.array_equal(one, many)  # bytes independent of the batch
        assert np.array_equal(one[mask == 0], image[mask == 0])  # outside: bit-exact
        assert np.mean(one[mask > 0] != image[mask > 0]) > 0.5  # inside: replaced
    again = generator.inpaint(images[0], masks[0], np.random.default_rng(10))
    other = generator.inpaint(images[0], masks[0], np.random.default_rng(11))
    assert np.array_equal(again, alone[0]) and not np.array_equal(other, alone[0])


def test_learned_variance_needs_six_channels(models) -> None:
    generator = RePaintGenerator(str(models[3]), variance="learned", **FEW)
    with pytest.raises(ValueError, match="needs a model with 6 output channels"):
        generator.setup("cpu")


def test_missing_model_is_one_line(tmp_path: Path) -> None:
    generator = RePaintGenerator(str(tmp_path / "nowhere"), **FEW)
    with pytest.raises(WeightsError, match=r"generator repaint.*nowhere.*bench convert guided-diffusion"):
        generator.setup("cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=r"repaint: cannot load a UNet2DModel from .*empty"):
        RePaintGenerator(str(tmp_path / "empty"), **FEW).setup("cpu")


def _recipe(tmp_path: Path, model: Path, **generator: object) -> Path:
    recipe = {
        "name": "tiny-repaint", "seed": 3, "resolution": 32,
        "sources": [{"type": "folder", "path": str(make_image_folder(tmp_path / "src", n=4, size=(40, 40)))}],
        "maskers": [{"type": "boxes"}],
        "generators": [{"type": "repaint", "model": str(model), **FEW, **generator}],
        "splits": {"train": 1.0, "validation": 0.0, "test": 0.0},
        "output": {"shard_size": 4},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _build(recipe: Path, out: Path, *extra: str) -> None:
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--quiet", *extra])
    assert result.exit_code == 0, result.output


def test_missing_model_stops_the_build_before_any_sample(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, tmp_path / "no-such-unet")
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "repaint" in lines[0] and "no-such-unet" in lines[0], result.output
    assert not list((tmp_path / "out").glob("data/*.parquet"))


@pytest.mark.slow
def test_build_then_eval_same_bytes_for_any_batch_and_placement(tmp_path: Path, models) -> None:
    import datasets

    inline = tmp_path / "inline"
    _build(_recipe(tmp_path / "a", models[6], batch_size=1), inline)
    apart = tmp_path / "apart"
    _build(_recipe(tmp_path / "b", models[6], batch_size=3), apart, "--device", "cpu")  # own pool, batches of 3
    hashes = folder_hashes(inline), folder_hashes(apart)
    data = {k: v for k, v in hashes[0].items() if k.startswith("data/")}
    assert data and data == {k: v for k, v in hashes[1].items() if k.startswith("data/")}

    rows = datasets.load_dataset(str(inline), split="train")
    fakes = [r for r in rows if r["label"] == 1]
    assert fakes and all(r["generator"] == "repaint" for r in fakes)
    config = json.loads(fakes[0]["generator_config"])
    assert config["model"] == str(models[6]) and len(config["sha256"]) == 64 and config["variance"] == "learned"

    results = tmp_path / "noise.json"
    result = CliRunner().invoke(main, ["eval", "noise", "--data", str(inline), "--split", "train",
                                       "--bootstrap", "20", "--out", str(results), "--quiet"])
    assert result.exit_code == 0, result.output
    from dolos_bench.results import load_results

    assert load_results(results).complete


def test_pipeline_options_are_checked_and_leave_the_recipe_hash_alone(tmp_path: Path, models) -> None:
    from dolos_bench.builder.recipe import RecipeError, load_recipe

    plain = load_recipe(_recipe(tmp_path / "a", models[6]))
    placed = load_recipe(_recipe(tmp_path / "b", models[6], batch_size=4, device="cuda"))
    assert placed.generators[0].batch_size == 4 and placed.generators[0].device == "cuda"
    assert "batch_size" not in plain.canonical_json() and "device" not in plain.canonical_json()
    assert placed.generators[0].params == plain.generators[0].params  # options are not generator parameters
    with pytest.raises(RecipeError, match="batch_size"):
        load_recipe(_recipe(tmp_path / "c", models[6], batch_size=0))


def test_device_places_learned_generators_in_their_own_pool(tmp_path: Path, models) -> None:
    from dolos_bench.builder.pipeline import _apart
    from dolos_bench.builder.recipe import load_recipe
    from dolos_bench.builder.stages import batch_size

    path = _recipe(tmp_path, models[6])
    data = yaml.safe_load(path.read_text())
    data["generators"] = [{"type": "telea"}, data["generators"][0], {**data["generators"][0], "name": "b", "device": "cuda:1",
                                                                   "batch_size": 2}]
    path.write_text(yaml.safe_dump(data))
    recipe = load_recipe(path)
    assert _apart(recipe, None, None, ray=False) == {2: ("cuda:1",)}  # only the entry that asks
    assert _apart(recipe, None, "cuda", ray=False) == {1: ("cuda",), 2: ("cuda:1",)}  # OpenCV stays on the CPU workers
    assert [batch_size(recipe, g) for g in range(3)] == [None, 8, 2]  # telea: a shard at once; repaint: its default
