"""The ``lama`` generator on a tiny TorchScript model with Big-LaMa's call signature (tests/tiny_inpainters.py).

The model is scripted and written with ``torch.jit.save``, then read back by the generator with
``torch.jit.load``, as big-lama.pt is; like the real one it fails on sizes that are not multiples
of 8, so the padding is exercised, not assumed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from dolos_bench.builder.generators.lama import LamaGenerator, pad_to_multiple  # noqa: E402
from dolos_bench.cli import main  # noqa: E402
from dolos_bench.weights import WeightsError  # noqa: E402

from helpers import make_image_folder, textured_image, tiny_recipe  # noqa: E402
from tiny_inpainters import tiny_lama  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:`torch.jit:FutureWarning")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_lama(tmp_path_factory.mktemp("lama"))


@pytest.fixture(scope="module")
def lama(weights: Path) -> LamaGenerator:
    generator = LamaGenerator(weights=str(weights))
    generator.setup("cpu")
    return generator


def _mask(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = 255
    return mask


def test_the_tiny_model_needs_padding_as_big_lama_does(weights: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.jit.load(str(weights))
    with pytest.raises(RuntimeError):
        model(torch.rand(1, 3, 45, 61), torch.zeros(1, 1, 45, 61))
    image = textured_image(3, (61, 45))  # 45 rows, 61 columns: neither a multiple of 8
    padded = pad_to_multiple(image, 8)
    assert padded.shape == (48, 64, 3) and np.array_equal(padded[:45, :61], image)
    assert np.array_equal(padded[45:48, :61], image[44:41:-1])  # mirrored, as lama-cleaner pads


def test_output_changes_inside_the_mask_only(lama: LamaGenerator) -> None:
    image = textured_image(1, (61, 45))
    mask = _mask(45, 61, (5, 10, 30, 40))
    out = lama.inpaint(image.copy(), mask.copy(), np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.uint8
    outside = mask == 0
    assert np.array_equal(out[outside], image[outside]), "pixels outside the mask must be the real image's"
    assert np.any(out[~outside] != image[~outside], axis=-1).mean() > 0.5


def test_mask_is_binarised_and_the_output_is_deterministic(lama: LamaGenerator, weights: Path) -> None:
    image = textured_image(2, (64, 64))
    mask = _mask(64, 64, (8, 8, 40, 30))
    a = lama.inpaint(image, mask, np.random.default_rng(1))
    b = lama.inpaint(image, (mask > 0).astype(np.uint8), np.random.default_rng(99))  # 0/1 mask, another seed
    fresh = LamaGenerator(weights=str(weights))
    fresh.setup("cpu")
    c = fresh.inpaint(image, mask, np.random.default_rng(1))
    assert a.tobytes() == b.tobytes() == c.tobytes()


def test_batch_equals_single_on_the_cpu(lama: LamaGenerator) -> None:
    images = [textured_image(i, size) for i, size in enumerate([(64, 64), (61, 45), (64, 64)])]
    masks = [_mask(im.shape[0], im.shape[1], (4 + i, 6, 30, 33 + i)) for i, im in enumerate(images)]
    alone = [lama.inpaint(im, m, np.random.default_rng(i)).tobytes() for i, (im, m) in enumerate(zip(images, masks))]
    together = lama.inpaint_batch(images, masks, [np.random.default_rng(i) for i in range(3)])
    assert [o.tobytes() for o in together] == alone


def test_identity_holds_the_weights_hash(lama: LamaGenerator, weights: Path) -> None:
    from dolos_bench.utils.files import sha256_file

    assert lama.identity() == {"weights": str(weights), "sha256": sha256_file(weights), "pad_multiple": 8}


def test_missing_or_wrong_weights_are_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOLOS_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError, match=r"generator lama: big-lama\.pt \(big-lama\) is not in .*bench weights fetch big-lama"):
        LamaGenerator().setup("cpu")
    not_a_model = tmp_path / "big-lama.pt"
    not_a_model.write_bytes(b"this is not TorchScript")
    with pytest.raises(WeightsError, match=r"generator lama: .*big-lama\.pt is not a TorchScript model"):
        LamaGenerator(weights=str(not_a_model)).setup("cpu")


# -- through the command line ----------------------------------------------------------------------------


def _recipe(root: Path, weights: str) -> Path:
    return tiny_recipe(root / "lama.yaml", make_image_folder(root / "src", n=4, size=(80, 72)),
                       generators=[{"type": "lama", "weights": weights}],
                       perturbations={"probability": 0.0, "chains": ["jpeg(80)"]})


def test_bench_build_with_lama_then_bench_eval(tmp_path: Path, weights: Path) -> None:
    out = tmp_path / "ds"
    built = CliRunner().invoke(main, ["build", str(_recipe(tmp_path, str(weights))), "--out", str(out), "--quiet"])
    assert built.exit_code == 0, built.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert "lama" in json.dumps(manifest)
    import datasets

    rows = [r for r in datasets.load_dataset(str(out), split="train") if r["generator"] != "real"]
    assert rows, "no fakes were made"
    config = json.loads(rows[0]["generator_config"])
    assert config["type"] == "lama" and len(config["sha256"]) == 64
    result = CliRunner().invoke(main, ["eval", "noise", "--data", str(out), "--split", "train", "--bootstrap", "0",
                                       "--out", str(tmp_path / "res.json"), "--quiet"])
    assert result.exit_code == 0, result.output


def test_bench_build_without_the_weights_fails_before_any_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOLOS_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "ds"
    result = CliRunner().invoke(main, ["build", str(_recipe(tmp_path, "big-lama")), "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: generators[0] lama: big-lama.pt")
    assert "bench weights fetch big-lama" in result.output
    assert not out.exists() or not any(out.rglob("*.parquet"))
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(b"not a model")
    recipe = yaml.safe_load(_recipe(tmp_path, str(wrong)).read_text())
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["build", str(tmp_path / "wrong.yaml"), "--out", str(tmp_path / "ds2"), "--quiet"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "is not a TorchScript model" in result.output
    assert not any((tmp_path / "ds2").rglob("*.parquet"))


def test_a_sample_the_model_fails_on_is_skipped_with_the_reason(tmp_path: Path) -> None:
    """A model that returns NaN for bright images: that sample is skipped, its batch-mate is made."""

    class NanOnBright(torch.nn.Module):
        def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            bright = image.mean(dim=(1, 2, 3), keepdim=True) > 0.5
            return torch.where(bright, torch.full_like(image, float("nan")), image * (1 - mask) + 0.5 * mask)

    path = tmp_path / "nan.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(NanOnBright()), str(path))
    generator = LamaGenerator(weights=str(path))
    generator.setup("cpu")
    from dolos_bench.builder.stages import InpaintBatch, inpaint

    dark, bright = np.full((16, 16, 3), 40, np.uint8), np.full((16, 16, 3), 220, np.uint8)
    mask = _mask(16, 16, (2, 2, 8, 8))
    out = inpaint(generator, 0, InpaintBatch(["dark", "bright"], [dark, bright], [mask, mask]))
    assert isinstance(out[0], np.ndarray) and out[1] == "lama: the model returned NaN or inf pixels"
