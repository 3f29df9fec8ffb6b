"""The ``diffusers-inpaint`` generator on a tiny SD-style inpainting pipeline saved the real way.

tests/tiny_inpainters.py builds a 9-channel ``UNet2DConditionModel``, an ``AutoencoderKL``, a
``CLIPTextModel`` with a ``CLIPTokenizer`` from an in-code vocabulary and a ``DDIMScheduler``,
writes them with ``save_pretrained``; the generator loads the folder by path, as it would a Hub
snapshot of SD 2 inpainting.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from dolos_bench.builder.generators.diffusers_inpaint import (  # noqa: E402
    DEFAULT_PART_PROMPTS,
    DiffusersInpaintGenerator,
    prompt_for,
)
from dolos_bench.builder.stages import InpaintBatch, inpaint  # noqa: E402
from dolos_bench.cli import main  # noqa: E402
from dolos_bench.weights import WeightsError  # noqa: E402

from helpers import make_image_folder, textured_image, tiny_recipe  # noqa: E402
from tiny_inpainters import tiny_sd_inpaint  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sd_inpaint(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def generator(model: Path) -> DiffusersInpaintGenerator:
    g = DiffusersInpaintGenerator(model=str(model), steps=2)
    g.setup("cpu")
    return g


def _mask(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = 255
    return mask


def test_prompts_follow_the_parts() -> None:
    template = "a photo of a face, {parts}"
    assert prompt_for(template, DEFAULT_PART_PROMPTS, ["nose"]) == "a photo of a face, a natural nose"
    assert prompt_for(template, DEFAULT_PART_PROMPTS, ["left_eye", "right_eye", "chin"]) == \
        "a photo of a face, a natural eye, chin"  # the same prompt once; an unknown part by its name
    assert prompt_for(template, {}, []) == "a photo of a face, a natural face"
    assert prompt_for("no parts here", DEFAULT_PART_PROMPTS, ["mouth"]) == "no parts here"


def test_output_changes_inside_the_mask_and_is_pasted_back(generator: DiffusersInpaintGenerator) -> None:
    image = textured_image(1, (60, 44))  # 44 rows, 60 columns: padded to 64 x 64, cropped back
    mask = _mask(44, 60, (6, 8, 30, 40))
    out = generator.inpaint(image.copy(), mask.copy(), np.random.default_rng(0), parts=["nose"])
    assert out.shape == image.shape and out.dtype == np.uint8
    outside = mask == 0
    assert np.array_equal(out[outside], image[outside])
    assert np.any(out[~outside] != image[~outside], axis=-1).mean() > 0.5


def test_without_paste_back_the_whole_image_is_the_decode(model: Path) -> None:
    g = DiffusersInpaintGenerator(model=str(model), steps=2, paste_back=False)
    g.setup("cpu")
    assert g.preserves_unmasked is False and DiffusersInpaintGenerator.preserves_unmasked is True
    image = textured_image(2, (64, 64))
    mask = _mask(64, 64, (10, 10, 30, 30))
    out = g.inpaint(image, mask, np.random.default_rng(0))
    assert np.any(out[mask == 0] != image[mask == 0])


def test_same_seed_same_bytes_and_parts_change_the_prompt(generator: DiffusersInpaintGenerator, model: Path) -> None:
    image = textured_image(3, (64, 64))
    mask = _mask(64, 64, (16, 12, 40, 50))
    a = generator.inpaint(image, mask, np.random.default_rng(5), parts=["mouth"])
    fresh = DiffusersInpaintGenerator(model=str(model), steps=2)
    fresh.setup("cpu")
    b = fresh.inpaint(image, mask, np.random.default_rng(5), parts=["mouth"])
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != generator.inpaint(image, mask, np.random.default_rng(6), parts=["mouth"]).tobytes()
    assert a.tobytes() != generator.inpaint(image, mask, np.random.default_rng(5), parts=["eyes"]).tobytes()


def test_batch_equals_single_on_the_cpu_and_the_build_passes_parts(generator: DiffusersInpaintGenerator) -> None:
    images = [textured_image(10 + i, (64, 64)) for i in range(3)]
    masks = [_mask(64, 64, (4 + 5 * i, 6, 30, 40)) for i in range(3)]
    parts = [["nose"], ["eyes"], []]
    alone = [generator.inpaint(im, m, np.random.default_rng(i), parts=p).tobytes()
             for i, (im, m, p) in enumerate(zip(images, masks, parts))]
    batch = generator.inpaint_batch(images, masks, [np.random.default_rng(i) for i in range(3)], parts=parts)
    assert [o.tobytes() for o in batch] == alone
    # the build's inpaint stage hands each sample's mask parts to a generator that declares uses_parts
    from dolos_bench.seeding import rng_for

    staged = inpaint(generator, 7, InpaintBatch(["s0", "s1"], images[:2], masks[:2], parts[:2]))
    direct = [generator.inpaint(images[i], masks[i], rng_for(7, f"s{i}", "generator"), parts=parts[i]) for i in range(2)]
    assert [o.tobytes() for o in staged] == [o.tobytes() for o in direct]  # type: ignore[union-attr]


def test_work_size_resizes_for_the_pipeline_and_back(model: Path) -> None:
    g = DiffusersInpaintGenerator(model=str(model), steps=1, work_size=96)
    g.setup("cpu")
    image = textured_image(4, (48, 40))
    mask = _mask(40, 48, (5, 5, 25, 30))
    out = g.inpaint(image, mask, np.random.default_rng(0))
    assert out.shape == image.shape and np.array_equal(out[mask == 0], image[mask == 0])


def test_a_text_to_image_pipeline_becomes_its_inpainting_twin(model: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    inpainting = StableDiffusionInpaintPipeline.from_pretrained(str(model))
    StableDiffusionPipeline(**inpainting.components).save_pretrained(str(tmp_path / "t2i"))
    g = DiffusersInpaintGenerator(model=str(tmp_path / "t2i"), steps=1)
    g.setup("cpu")
    assert type(g.pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert g.identity()["pipeline"] == "StableDiffusionInpaintPipeline"


def test_missing_or_wrong_models_are_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    (tmp_path / "hf").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # read once, at import: patch the constant
    with pytest.raises(WeightsError, match=r"generator diffusers-inpaint: the Hub model stabilityai/stable-diffusion-2-"
                                           r"inpainting is not in the local Hugging Face cache; run `bench weights fetch sd2-inpainting`"):
        DiffusersInpaintGenerator(model="sd2-inpainting").setup("cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match=r"diffusers-inpaint: cannot load a DiffusionPipeline from") as caught:
        DiffusersInpaintGenerator(model=str(empty)).setup("cpu")
    from dolos_bench.errors import UserError

    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)


# -- through the command line ----------------------------------------------------------------------------


def _recipe(root: Path, model: str) -> Path:
    return tiny_recipe(root / "sd.yaml", make_image_folder(root / "src", n=4, size=(80, 72)),
                       generators=[{"type": "diffusers-inpaint", "model": model, "steps": 2}],
                       perturbations={"probability": 0.0, "chains": ["jpeg(80)"]})


def test_bench_build_with_a_diffusers_pipeline_then_bench_eval(tmp_path: Path, model: Path) -> None:
    out = tmp_path / "ds"
    built = CliRunner().invoke(main, ["build", str(_recipe(tmp_path, str(model))), "--out", str(out), "--quiet"])
    assert built.exit_code == 0, built.output
    import datasets

    rows = [r for r in datasets.load_dataset(str(out), split="train") if r["generator"] != "real"]
    assert rows, "no fakes were made"
    config = json.loads(rows[0]["generator_config"])
    assert config["type"] == "diffusers-inpaint" and config["pipeline"] == "StableDiffusionInpaintPipeline"
    assert len(config["sha256"]) == 64
    result = CliRunner().invoke(main, ["eval", "noise", "--data", str(out), "--split", "train", "--bootstrap", "0",
                                       "--out", str(tmp_path / "res.json"), "--quiet"])
    assert result.exit_code == 0, result.output


def test_bench_build_with_a_missing_model_fails_before_any_sample(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = CliRunner().invoke(main, ["build", str(_recipe(tmp_path, str(tmp_path / "no-such-model"))),
                                       "--out", str(out), "--quiet"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: generators[0] diffusers-inpaint: weights") and "no-such-model" in result.output
    assert not out.exists() or not any(out.rglob("*.parquet"))
