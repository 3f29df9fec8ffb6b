"""`bench convert guided-diffusion`: an ADM checkpoint becomes a diffusers UNet2DModel that computes the same function.

The checkpoint is made by a reference guided-diffusion UNet (tests/tiny_diffusion.py, written from
the published architecture with its parameter names); the converted folder is loaded with
``UNet2DModel.from_pretrained`` and must give the reference's outputs, for each layout switch
(``resblock_updown``, ``use_new_attention_order``, ``use_scale_shift_norm``, ``learn_sigma``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from click.testing import CliRunner  # noqa: E402

from dolos_bench.cli import main  # noqa: E402
from dolos_bench.convert.guided_diffusion import ADMOptions, ConversionError, convert_guided_diffusion  # noqa: E402

from tiny_diffusion import ADMUNet  # noqa: E402

TINY = dict(image_size=16, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(8,), num_head_channels=16)
TINY_FLAGS = ["--image-size", "16", "--channel-mult", "1,2", "--attention-resolutions", "8", "--num-head-channels", "16"]


def _checkpoint(folder: Path, **layout) -> tuple[Path, ADMUNet]:
    model = ADMUNet(image_size=16, **layout).eval()
    path = folder / "adm.pt"
    torch.save(model.state_dict(), path)
    return path, model


def _same_function(model: ADMUNet, folder: Path) -> None:
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(str(folder)).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 777])
    with torch.no_grad():
        want, got = model(x, t), unet(x, t).sample
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())


@pytest.mark.parametrize("layout", [
    {},  # P2-weighting: resblock_updown, scale-shift norm, legacy attention, learned sigma
    {"resblock_updown": False, "new_order": True},
    {"scale_shift": False, "out_channels": 3},
], ids=["p2-layout", "conv-resample-new-attention", "plain-norm-epsilon-only"])
def test_converted_unet_computes_the_checkpoints_function(tmp_path: Path, layout: dict) -> None:
    ckpt, model = _checkpoint(tmp_path, **layout)
    options = ADMOptions(**TINY, resblock_updown=layout.get("resblock_updown", True),
                         use_new_attention_order=layout.get("new_order", False),
                         use_scale_shift_norm=layout.get("scale_shift", True))
    out = convert_guided_diffusion(ckpt, tmp_path / "unet", options)
    _same_function(model, out)
    config = json.loads((out / "config.json").read_text())
    assert config["out_channels"] == layout.get("out_channels", 6)
    scheduler = json.loads((out / "scheduler_config.json").read_text())
    assert scheduler["variance_type"] == ("learned_range" if config["out_channels"] == 6 else "fixed_small")
    flags = json.loads((out / "adm_options.json").read_text())
    assert flags["source"]["sha256"] and flags["num_channels"] == 32  # read from the checkpoint


def test_cli_converts_and_repaint_loads_the_folder(tmp_path: Path) -> None:
    from dolos_bench.builder.generators.repaint import RePaintGenerator

    ckpt, model = _checkpoint(tmp_path)
    out = tmp_path / "p2"
    result = CliRunner().invoke(main, ["convert", "guided-diffusion", str(ckpt), str(out), *TINY_FLAGS])
    assert result.exit_code == 0, result.output
    _same_function(model, out)
    again = CliRunner().invoke(main, ["convert", "guided-diffusion", str(ckpt), str(out), *TINY_FLAGS])
    assert again.exit_code == 2 and "--overwrite" in again.output  # an earlier conversion is not replaced silently
    generator = RePaintGenerator(str(out), steps=3, jump_length=1, jump_n_sample=1)
    generator.setup("cpu")
    assert generator.identity()["variance"] == "learned"
    assert generator.identity()["schedule"]["from"] == str(out)
    image = np.full((16, 16, 3), 120, np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:10, 4:10] = 255
    made = generator.inpaint(image, mask, np.random.default_rng(0))
    assert np.array_equal(made[mask == 0], image[mask == 0]) and not np.array_equal(made, image)


def test_extra_key_is_named_and_nothing_written(tmp_path: Path) -> None:
    ckpt, model = _checkpoint(tmp_path)
    state = model.state_dict()
    state["input_blocks.1.0.extra.weight"] = torch.zeros(3)
    torch.save(state, ckpt)
    with pytest.raises(ConversionError, match=r"1 checkpoint key\(s\) not used: input_blocks\.1\.0\.extra\.weight"):
        convert_guided_diffusion(ckpt, tmp_path / "out", ADMOptions(**TINY))
    assert not (tmp_path / "out").exists()


def test_missing_key_is_named(tmp_path: Path) -> None:
    ckpt, model = _checkpoint(tmp_path)
    state = model.state_dict()
    del state["middle_block.1.qkv.weight"]
    torch.save(state, ckpt)
    result = CliRunner().invoke(main, ["convert", "guided-diffusion", str(ckpt), str(tmp_path / "out"), *TINY_FLAGS])
    assert result.exit_code == 2
    assert "middle_block.1.qkv.weight" in result.output and "not in the checkpoint" in result.output
    assert "Traceback" not in result.output


def test_wrong_options_are_named(tmp_path: Path) -> None:
    ckpt, _ = _checkpoint(tmp_path)
    with pytest.raises(ConversionError, match="not in the checkpoint.*--num-res-blocks"):
        convert_guided_diffusion(ckpt, tmp_path / "out", ADMOptions(**{**TINY, "num_res_blocks": 2}))
    with pytest.raises(ConversionError, match="no checkpoint at"):
        convert_guided_diffusion(tmp_path / "absent.pt", tmp_path / "out", ADMOptions(**TINY))
