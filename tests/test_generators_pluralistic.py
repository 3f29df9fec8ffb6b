"""Pluralistic: the released checkpoints' key layout, and the generator on checkpoints saved the real way.

The key/shape rows below were read off the authors' network definition (lyndonzheng/Pluralistic-
Inpainting, model/network.py + base_function.py + external_function.py, with the released models'
configuration from model/pluralistic_model.py), independently of our module tree: if a refactor
renamed an attribute or changed a channel count, the released weights would stop loading, and
these rows fail first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dolos_bench.builder.generators.pluralistic import PluralisticInpainter  # noqa: E402
from dolos_bench.builder.generators.pluralistic_net import PluralisticEncoder, PluralisticGenerator  # noqa: E402

ENCODER_KEYS = {
    "block0.conv1.module.weight_bar": (32, 3, 3, 3),
    "block0.model.0.module.weight_bar": (32, 3, 3, 3),  # the same conv again, inside `model`
    "block0.model.2.module.weight_u": (32,),
    "block0.shortcut.1.module.weight_v": (3,),
    "block0.bypass.module.bias": (32,),
    "encoder0.model.1.module.weight_bar": (32, 32, 3, 3),
    "encoder0.model.3.module.weight_bar": (64, 32, 3, 3),
    "encoder1.conv2.module.weight_bar": (128, 64, 3, 3),
    "encoder3.shortcut.0.module.weight_v": (128,),
    "infer_prior5.conv1.module.weight_v": (1152,),
    "posterior.conv2.module.weight_bar": (256, 128, 3, 3),
    "prior.bypass.module.weight_bar": (256, 128, 1, 1),
}
GENERATOR_KEYS = {
    "generator.conv1.module.weight_bar": (128, 128, 3, 3),
    "generator.model.1.module.weight_bar": (128, 128, 3, 3),
    "decoder0.model.0.weight": (128,),  # affine instance norm
    "decoder0.model.3.bias": (128,),
    "decoder0.conv2.module.weight_bar": (128, 128, 3, 3),  # ConvTranspose2d: (in, out, k, k)
    "decoder2.conv1.module.weight_bar": (128, 131, 3, 3),  # + the previous scale's RGB output
    "decoder3.bypass.module.weight_bar": (131, 64, 3, 3),
    "decoder4.bypass.module.weight_u": (67,),
    "out1.conv1.module.weight_bar": (3, 128, 3, 3),
    "out4.model.2.module.bias": (3,),
    "attn1.query_conv.weight": (32, 128, 1, 1),
    "attn1.gamma": (1,),
    "attn1.alpha": (1,),
    "attn1.model.conv1.module.weight_bar": (128, 256, 3, 3),
    "attn1.model.shortcut.0.module.weight_bar": (128, 256, 1, 1),
}


@pytest.mark.parametrize(("net", "rows", "absent"), [
    (PluralisticEncoder, ENCODER_KEYS, ("encoder4", "infer_prior6")),
    (PluralisticGenerator, GENERATOR_KEYS, ("out0.", "attn0", "decoder5", "generator0")),
], ids=["encoder", "generator"])
def test_state_dict_has_the_released_layout(net, rows, absent) -> None:
    state = net().state_dict()
    for key, shape in rows.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, (key, tuple(state[key].shape))
    assert not [k for k in state if k.startswith(absent)]
    assert not [k for k in state if k.endswith(".weight") and ".module." in k]  # spectral norm replaced them


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random networks saved as the authors' test script expects: <folder>/latest_net_{E,G}.pth."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("celeba_random")
    generator = PluralisticGenerator()
    with torch.no_grad():  # the released gamma/alpha are trained; zeros would hide the attention path
        generator.attn1.gamma.fill_(0.5)
        generator.attn1.alpha.fill_(0.5)
    torch.save(PluralisticEncoder().state_dict(), folder / "latest_net_E.pth")
    torch.save(generator.state_dict(), folder / "latest_net_G.pth")
    return folder


def _sample(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4: size // 2, size // 3: 2 * size // 3] = 255
    return image, mask


def test_inpaints_inside_the_mask_only_and_repeats(checkpoints: Path) -> None:
    generator = PluralisticInpainter(weights=str(checkpoints))
    generator.setup("cpu")
    image, mask = _sample()
    out = generator.inpaint(image, mask, np.random.default_rng(1))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[mask == 0], image[mask == 0])
    assert not np.array_equal(out[mask > 0], image[mask > 0])
    again = generator.inpaint(image, mask, np.random.default_rng(1))
    assert np.array_equal(out, again)  # no spectral-norm state carried from one call to the next
    other = generator.inpaint(image, mask, np.random.default_rng(2))
    assert not np.array_equal(out, other)  # the latent is drawn from the sample's own seed


def test_batch_equals_single_and_odd_sizes_are_padded(checkpoints: Path) -> None:
    generator = PluralisticInpainter(weights=str(checkpoints))
    samples = [_sample(48, seed) for seed in range(3)]  # 48: not a multiple of 32
    images, masks = [s[0] for s in samples], [s[1] for s in samples]
    batch = generator.inpaint_batch(images, masks, [np.random.default_rng(s) for s in range(3)])
    for k in range(3):
        alone = generator.inpaint_batch([images[k]], [masks[k]], [np.random.default_rng(k)])[0]
        assert np.array_equal(batch[k], alone)
        assert batch[k].shape == (48, 48, 3)
    identity = generator.identity()
    assert identity["weights"] == str(checkpoints) and len(identity["weights_sha256"]) == 64


def test_wrong_or_missing_checkpoints_are_one_clear_line(checkpoints: Path, tmp_path: Path) -> None:
    from dolos_bench.weights import WeightsError

    (tmp_path / "latest_net_E.pth").write_bytes((checkpoints / "latest_net_E.pth").read_bytes())
    with pytest.raises(WeightsError, match="latest_net_G.pth not found"):
        PluralisticInpainter(weights=str(tmp_path)).setup("cpu")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "latest_net_G.pth")
    with pytest.raises(WeightsError, match=r"is not a Pluralistic generator checkpoint \(\d+ missing, 1 unexpected"):
        PluralisticInpainter(weights=str(tmp_path)).setup("cpu")
    with pytest.raises(WeightsError):
        PluralisticInpainter(weights=str(tmp_path / "nowhere")).setup("cpu")


def test_build_then_eval_with_pluralistic(checkpoints: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dolos_bench.cli import main

    from helpers import make_image_folder

    source = make_image_folder(tmp_path / "src", n=4, size=(64, 64))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: pluralistic-smoke\nseed: 3\nresolution: 64\n"
        f"sources: [{{type: folder, path: {source}}}]\n"
        "maskers: [{type: boxes}]\n"
        f"generators: [{{type: pluralistic, weights: {checkpoints}}}]\n"
        "splits: {train: 0.0, validation: 0.0, test: 1.0}\n"
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    scored = CliRunner().invoke(main, ["eval", "noise", "--data", str(out), "--split", "test",
                                       "--out", str(tmp_path / "r.json"), "--quiet"])
    assert scored.exit_code == 0, scored.output
    import json

    results = json.loads((tmp_path / "r.json").read_text())
    assert results["counts"] == {"samples": 8, "real": 4, "fake": 4}
    assert "pluralistic" in json.dumps(results["breakdowns"])  # the per-generator breakdown names it
    card = (out / "README.md").read_text()
    assert "Pluralistic" in card
