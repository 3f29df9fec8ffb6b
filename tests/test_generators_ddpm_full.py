"""`ddpm-full`: whole images from a tiny pixel (DDPM / learned-variance) or latent (VQ + UNet) model.

Checked: images come at the requested size, repeat for a seed, differ across seeds, do not depend
on the batch on the CPU; the build gives such a fake an all-forged mask without any masker, and
names the model as its `source`.
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

from dolos_bench.builder.generators.ddpm_full import DDPMFullGenerator  # noqa: E402
from dolos_bench.cli import main  # noqa: E402

from helpers import make_image_folder  # noqa: E402
from tiny_diffusion import tiny_ldm, tiny_unet  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"pixel": tiny_unet(root / "pixel", out_channels=6), "latent": tiny_ldm(root / "ldm")}


@pytest.mark.parametrize("kind, sampler, expected", [("pixel", "auto", "ddpm"), ("pixel", "ddim", "ddim"),
                                                     ("latent", "auto", "ddim")])
def test_samples_repeat_per_seed_and_ignore_the_batch(models, kind, sampler, expected) -> None:
    generator = DDPMFullGenerator(str(models[kind]), sampler=sampler, steps=4)
    generator.setup("cpu")
    identity = generator.identity()
    assert identity["kind"] == kind and identity["sampler"] == expected and len(identity["sha256"]) == 64
    if expected == "ddpm":
        assert identity["variance"] == "learned_range"  # a 6-channel model's learned variance is used
    blank = [np.zeros((32, 24, 3), np.uint8)] * 3  # what the build hands in: ignored, only its size counts
    full = [np.full((32, 24), 255, np.uint8)] * 3
    alone = [generator.inpaint(b, m, np.random.default_rng(s)) for s, (b, m) in enumerate(zip(blank, full))]
    batch = generator.inpaint_batch(blank, full, [np.random.default_rng(s) for s in range(3)])
    for one, many in zip(alone, batch):
        assert one.shape == (32, 24, 3) and one.dtype == np.uint8 and one.std() > 1.0
        assert np.array_equal(one, many)
    assert not np.array_equal(alone[0], alone[1])
    assert np.array_equal(generator.inpaint(blank[0], full[0], np.random.default_rng(0)), alone[0])


def test_build_makes_whole_fakes_with_all_forged_masks_and_the_model_as_source(tmp_path: Path, models) -> None:
    import datasets
    from PIL import Image

    recipe = {
        "name": "tiny-full", "seed": 1, "resolution": 32,
        "sources": [{"type": "folder", "path": str(make_image_folder(tmp_path / "src", n=3, size=(40, 40)))}],
        "generators": [{"type": "ddpm-full", "model": str(models["pixel"]), "steps": 3, "batch_size": 2}],
        "splits": {"train": 1.0, "validation": 0.0, "test": 0.0},
    }  # no maskers: a fully generated fake needs none
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = datasets.load_dataset(str(out), split="train")
    fakes = [r for r in rows if r["label"] == 1]
    reals = [r for r in rows if r["label"] == 0]
    assert len(fakes) == len(reals) == 3
    for row in fakes:
        mask = np.asarray(row["mask"] if isinstance(row["mask"], Image.Image) else Image.open(row["mask"]))
        assert mask.shape == (32, 32) and (mask == 255).all()
        assert row["source"] == str(models["pixel"]) and row["source_id"] == row["id"] and row["masker"] == ""
        assert json.loads(row["generator_config"])["model"] == str(models["pixel"])
    assert {r["source"] for r in reals} == {"folder"}
