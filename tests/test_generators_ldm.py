"""repaint-ldm and ldm-inpaint on tiny random latent-diffusion models saved with save_pretrained.

What is checked: the output changes inside the mask; it equals the input outside the mask where the
variant pastes back (``repaint-ldm`` ``paste``, ``ldm-inpaint`` ``paste_back``) and does not where
the whole image is decoded (``full``); the same seed repeats exactly; a sample gives the same bytes
alone or in a batch on the CPU; the mask reaches the latent grid as documented; a ``full`` build's
card says that the rest of the image went through the autoencoder while its masks mark only the
inpainted region; a missing model folder is one clear line before any sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from dolos_bench.builder.generators.latent_common import latent_mask, pad_to  # noqa: E402
from dolos_bench.builder.generators.ldm_inpaint import LDMInpaintGenerator  # noqa: E402
from dolos_bench.builder.generators.repaint_ldm import RePaintLDMGenerator  # noqa: E402
from dolos_bench.builder.generators.torch_common import WeightsError  # noqa: E402
from dolos_bench.cli import main  # noqa: E402

import ldm_fixtures  # noqa: E402
from helpers import make_image_folder, textured_image, tiny_recipe  # noqa: E402

FAST_REPAINT = {"steps": 4, "jump_length": 2, "jump_n_sample": 2}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ldm")
    return {
        "vq": ldm_fixtures.save_unconditional_ldm(root / "vq"),
        "kl": ldm_fixtures.save_unconditional_ldm(root / "kl", autoencoder="kl"),
        "inpaint": ldm_fixtures.save_inpainting_ldm(root / "inpaint"),
    }


def _inputs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [textured_image(21 + i, (64, 64)) for i in range(3)]
    masks = []
    for i in range(3):
        mask = np.zeros((64, 64), np.uint8)
        mask[8 + 5 * i : 30 + 5 * i, 10 : 34 + 3 * i] = 255
        masks.append(mask)
    return images, masks


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _generators(models: dict[str, Path]) -> dict[str, object]:
    return {
        "full": RePaintLDMGenerator(model=str(models["vq"]), **FAST_REPAINT),
        "paste": RePaintLDMGenerator(model=str(models["vq"]), variant="paste", **FAST_REPAINT),
        "kl-paste": RePaintLDMGenerator(model=str(models["kl"]), variant="paste", **FAST_REPAINT),
        "inpaint": LDMInpaintGenerator(model=str(models["inpaint"]), steps=3),
        "inpaint-nopaste": LDMInpaintGenerator(model=str(models["inpaint"]), steps=3, paste_back=False),
        "inpaint-eta": LDMInpaintGenerator(model=str(models["inpaint"]), steps=3, eta=1.0),
    }


PASTES = {"full": False, "paste": True, "kl-paste": True, "inpaint": True, "inpaint-nopaste": False, "inpaint-eta": True}


@pytest.mark.parametrize("which", list(PASTES))
def test_inside_changes_outside_kept_where_pasted_and_seed_repeats(models: dict[str, Path], which: str) -> None:
    generator = _generators(models)[which]
    generator.setup("cpu")
    images, masks = _inputs()
    for index, (image, mask) in enumerate(zip(images, masks)):
        out = generator.inpaint(image.copy(), mask.copy(), _rng(index))
        assert out.dtype == np.uint8 and out.shape == image.shape
        inside, outside = mask > 0, mask == 0
        assert np.count_nonzero(np.any(out[inside] != image[inside], axis=-1)) > 0.5 * inside.sum()
        changed_outside = int(np.count_nonzero(np.any(out[outside] != image[outside], axis=-1)))
        if PASTES[which]:
            assert changed_outside == 0, f"{which}: {changed_outside} pixels outside the mask changed"
        else:
            assert changed_outside > 0.5 * outside.sum(), f"{which}: the whole image should be re-decoded"
        again = generator.inpaint(image.copy(), mask.copy(), _rng(index))
        assert again.tobytes() == out.tobytes(), f"{which}: the same seed gave different bytes"
    other = generator.inpaint(images[0], masks[0], _rng(99))
    assert other.tobytes() != generator.inpaint(images[0], masks[0], _rng(0)).tobytes(), "the seed is ignored"


@pytest.mark.parametrize("which", ["full", "inpaint-eta"])
def test_a_sample_is_the_same_alone_or_in_a_batch_on_the_cpu(models: dict[str, Path], which: str) -> None:
    generator = _generators(models)[which]
    generator.setup("cpu")
    images, masks = _inputs()
    alone = [generator.inpaint(i, m, _rng(40 + k)) for k, (i, m) in enumerate(zip(images, masks))]
    order = [2, 0, 1]
    batch = generator.inpaint_batch([images[k] for k in order], [masks[k] for k in order], [_rng(40 + k) for k in order])
    for position, k in enumerate(order):
        assert batch[position].tobytes() == alone[k].tobytes(), f"{which}: sample {k} differs in a batch"


def test_sides_that_are_not_a_multiple_of_the_grid_are_padded_and_cropped_back(models: dict[str, Path]) -> None:
    image = textured_image(5, (64, 48))[:46, :50]  # 46 x 50: neither side a multiple of 4
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[10:30, 12:30] = 255
    for which in ("paste", "inpaint"):
        out = _generators(models)[which].inpaint(image, mask, _rng(3))
        assert out.shape == image.shape and np.array_equal(out[mask == 0], image[mask == 0])


def test_the_mask_reaches_the_latent_grid_by_area_then_threshold() -> None:
    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, 0, 0] = 1.0  # one pixel of the first 2x2 cell
    m[0, 0, 2:4, 2:4] = 1.0  # a whole cell
    m[0, 0, 4, 4:6] = 1.0  # half a cell
    any_pixel = latent_mask(m, 2, 0.0)[0, 0]
    assert any_pixel[0, 0] == 1 and any_pixel[1, 1] == 1 and any_pixel[2, 2] == 1 and any_pixel.sum() == 3
    half = latent_mask(m, 2, 0.5)[0, 0]
    assert half[1, 1] == 1 and half.sum() == 1  # more than half of the cell's pixels must be masked
    x, padded = pad_to(torch.zeros(1, 3, 6, 7), torch.ones(1, 1, 6, 7), 4)
    assert x.shape[-2:] == (8, 8) and padded[..., 6:, :].sum() == 0 and padded[..., :, 7:].sum() == 0


def test_identity_names_the_weights_variant_and_latent_mask(models: dict[str, Path]) -> None:
    generators = _generators(models)
    for which in ("full", "inpaint"):
        generators[which].setup("cpu")
    full, inpaint = generators["full"].identity(), generators["inpaint"].identity()
    assert full["variant"] == "full" and full["autoencoder"]["kind"] == "vq" and len(full["sha256"]) == 64
    assert full["schedule"]["from"].endswith("scheduler") and full["schedule"]["clip_sample"] is False
    assert inpaint["schedule"]["beta_end"] == 0.0205 and inpaint["paste_back"] is True
    json.dumps(full), json.dumps(inpaint)  # provenance must be JSON


def test_a_folder_that_is_not_the_model_is_one_clear_error(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"ldm-inpaint: .*nothing-here.*bench convert compvis-ldm"):
        LDMInpaintGenerator(model=str(tmp_path / "nothing-here")).setup("cpu")
    with pytest.raises(WeightsError, match=r"ldm-inpaint: the UNet of .* takes 3 and gives 3 channels"):
        LDMInpaintGenerator(model=str(models["vq"])).setup("cpu")  # an unconditional LDM is not an inpainting one
    with pytest.raises(WeightsError, match=r"repaint-ldm: .* has no vqvae/ or vae/ folder"):
        RePaintLDMGenerator(model=str(models["vq"] / "unet")).setup("cpu")
    with pytest.raises(WeightsError, match=r"repaint-ldm: the UNet of .* maps 7 to 3 channels"):
        RePaintLDMGenerator(model=str(models["inpaint"])).setup("cpu")


def test_the_card_note_follows_the_variant() -> None:
    assert RePaintLDMGenerator.unmasked_note({"variant": "paste"}) is None
    assert "autoencoder" in (RePaintLDMGenerator.unmasked_note({}) or "")
    assert LDMInpaintGenerator.unmasked_note({}) is None
    assert "autoencoder" in (LDMInpaintGenerator.unmasked_note({"paste_back": False}) or "")


# -- through the command line ----------------------------------------------------------------------------


def _recipe(root: Path, name: str, generator: dict) -> Path:
    source = root / "src"
    if not source.exists():
        make_image_folder(source, n=3, size=(80, 72))
    return tiny_recipe(root / f"{name}.yaml", source, generators=[generator],
                       perturbations={"probability": 0.0, "chains": ["jpeg(80)"]})


def _build(root: Path, name: str, generator: dict) -> Path:
    out = root / name
    result = CliRunner().invoke(main, ["build", str(_recipe(root, name, generator)), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def _fakes(out: Path) -> dict[str, dict]:
    import datasets

    rows = {}
    for split in ("train", "validation", "test"):
        try:
            data = datasets.load_dataset(str(out), split=split)
        except ValueError:  # a split this tiny build did not get
            continue
        rows |= {r["id"]: r for r in data if r["generator"] != "real"}
    return rows


@pytest.mark.slow
def test_bench_build_with_repaint_ldm_full_and_paste_then_eval(models: dict[str, Path], tmp_path: Path) -> None:
    spec = {"type": "repaint-ldm", "model": str(models["vq"]), **FAST_REPAINT}
    full = _build(tmp_path, "full", spec)
    paste = _build(tmp_path, "paste", {**spec, "variant": "paste"})
    card = (full / "README.md").read_text()
    assert "went through the latent diffusion model's autoencoder" in card
    assert "went through" not in (paste / "README.md").read_text()
    full_rows, paste_rows = _fakes(full), _fakes(paste)
    assert full_rows and set(full_rows) == set(paste_rows)
    for sample_id, row in full_rows.items():
        config = json.loads(row["generator_config"])
        assert config["type"] == "repaint-ldm" and config["variant"] == "full" and len(config["sha256"]) == 64
        mask = np.array(row["mask"])
        # the mask marks the inpainted region only: the one the paste build (pixels kept outside) has
        assert 0 < np.count_nonzero(mask) < mask.size
        assert np.array_equal(mask, np.array(paste_rows[sample_id]["mask"]))
    result = CliRunner().invoke(main, ["eval", "noise", "--data", str(full), "--split", "train", "--bootstrap", "0",
                                       "--out", str(tmp_path / "res.json"), "--quiet"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_bench_build_with_ldm_inpaint_then_eval(models: dict[str, Path], tmp_path: Path) -> None:
    out = _build(tmp_path, "inpaint", {"type": "ldm-inpaint", "model": str(models["inpaint"]), "steps": 3})
    rows = _fakes(out)
    assert rows and all(json.loads(r["generator_config"])["type"] == "ldm-inpaint" for r in rows.values())
    assert "went through" not in (out / "README.md").read_text()
    result = CliRunner().invoke(main, ["eval", "noise", "--data", str(out), "--split", "train", "--bootstrap", "0",
                                       "--out", str(tmp_path / "res.json"), "--quiet"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("generator", ["repaint-ldm", "ldm-inpaint"])
def test_bench_build_with_a_missing_model_folder_fails_in_one_line_before_any_sample(tmp_path: Path,
                                                                                      generator: str) -> None:
    out = tmp_path / "ds"
    recipe = _recipe(tmp_path, "missing", {"type": generator, "model": str(tmp_path / "no-such-model")})
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    assert generator in result.output and "no-such-model" in result.output
    assert not out.exists() or not any(out.rglob("*.parquet"))
