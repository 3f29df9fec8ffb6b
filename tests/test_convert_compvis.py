"""`bench convert compvis-ldm`: a tiny checkpoint in CompVis's key layout -> the folder ldm-inpaint loads.

The checkpoint is built from :mod:`compvis_reference` (the openaimodel UNet and the taming VQ
autoencoder, named as the latent-diffusion repository names them), with the extras a real
``last.ckpt`` carries: the EMA copy (``model_ema.*``), ``cond_stage_model.*`` (the autoencoder
again) and the schedule's buffers. The converted diffusers models must compute what the
reference modules compute; a key too many or too few is a clear error listing it.
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
from diffusers import DDIMScheduler, UNet2DModel, VQModel  # noqa: E402

from dolos_bench.builder.generators import ldm_inpaint  # noqa: E402
from dolos_bench.builder.generators.ldm_inpaint import LDMInpaintGenerator, set_attention_heads  # noqa: E402
from dolos_bench.cli import main  # noqa: E402
from dolos_bench.convert import compvis_ldm  # noqa: E402
from dolos_bench.convert.compvis_ldm import ConversionError, InpaintArch, convert_state_dict  # noqa: E402

from compvis_reference import RefUNet, RefVQ, randomise  # noqa: E402
from helpers import textured_image  # noqa: E402

#: The released architecture shrunk: two levels, attention at factor 2 and in the middle, two heads
#: (so the per-head qkv layout matters), a 16-code VQ with two stages.
TINY = InpaintArch(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,), num_heads=2,
                   image_size=8, n_embed=16, ch=32, ch_mult=(1, 2), vq_num_res_blocks=1, resolution=16)
TINY_FLAGS = ["--model-channels", "32", "--channel-mult", "1,2", "--num-res-blocks", "1", "--attention-resolutions", "2",
              "--num-heads", "2", "--image-size", "8", "--n-embed", "16", "--ch", "32", "--ch-mult", "1,2",
              "--vq-num-res-blocks", "1", "--resolution", "16"]


def _betas(arch: InpaintArch) -> torch.Tensor:
    return torch.linspace(arch.linear_start**0.5, arch.linear_end**0.5, arch.timesteps, dtype=torch.float64) ** 2


def _state(arch: InpaintArch = TINY, vq_attention: bool = False) -> tuple[dict, RefUNet, RefUNet, RefVQ]:
    """A CompVis state dict, and the reference modules holding its raw UNet, its EMA UNet and its VQ."""
    if vq_attention:
        arch = InpaintArch(**{**arch.__dict__, "vq_mid_attention": True})
    raw, ema, vq = randomise(RefUNet(arch), 0), randomise(RefUNet(arch), 1), randomise(RefVQ(arch), 2)
    state = {f"model.diffusion_model.{k}": v for k, v in raw.state_dict().items()}
    state |= {"model_ema." + f"diffusion_model.{k}".replace(".", ""): v for k, v in ema.state_dict().items()}
    state |= {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000, dtype=torch.int32)}
    state |= {f"first_stage_model.{k}": v for k, v in vq.state_dict().items()}
    state |= {f"cond_stage_model.{k}": v.clone() for k, v in vq.state_dict().items()}
    betas = _betas(arch).to(torch.float32)
    alphas = torch.cumprod(1 - betas, 0)
    state |= {"betas": betas, "alphas_cumprod": alphas, "alphas_cumprod_prev": torch.cat([torch.ones(1), alphas[:-1]]),
              "sqrt_alphas_cumprod": alphas.sqrt(), "posterior_variance": betas}
    return state, raw, ema, vq


def _checkpoint(folder: Path, state: dict) -> Path:
    path = folder / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 1000}, path)
    return path


def _error_line(output: str) -> str:
    """The one error line (progress lines, on stderr, may come before it)."""
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and output.rstrip("\n").endswith(errors[0]), output
    return errors[0]


def _unet_outputs(unet: UNet2DModel, ref: RefUNet) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 7, 8, 8, generator=g), torch.tensor([3, 640])
    with torch.no_grad():
        return unet(x, t).sample, ref(x, t)


@pytest.mark.parametrize("vq_attention", [False, True], ids=["attn-none", "mid-attention"])
def test_converted_models_compute_what_the_compvis_modules_compute(vq_attention: bool) -> None:
    arch = InpaintArch(**{**TINY.__dict__, "vq_mid_attention": vq_attention})
    state, raw, ema, vq = _state(arch)
    converted = convert_state_dict(state, arch)
    assert converted.weights == "ema"  # as scripts/inpaint.py samples (ema_scope)
    unet = UNet2DModel(**compvis_ldm.unet_config(arch))
    unet.load_state_dict(converted.unet, strict=True)
    set_attention_heads(unet, arch.num_heads)
    got, want = _unet_outputs(unet.eval(), ema)
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    model = VQModel(**compvis_ldm.vq_config(arch))
    model.load_state_dict(converted.vq, strict=True)
    g = torch.Generator().manual_seed(1)
    image, latent = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    with torch.no_grad():
        assert torch.allclose(model.encode(image).latents, vq.encode(image), atol=1e-4)
        assert torch.allclose(model.decode(latent, force_not_quantize=True).sample, vq.decode_unquantized(latent), atol=1e-4)
    raw_converted = convert_state_dict(state, arch, use_ema=False)
    unet.load_state_dict(raw_converted.unet, strict=True)
    got, want = _unet_outputs(unet, raw)
    assert raw_converted.weights == "raw" and torch.allclose(got, want, atol=1e-4)


def test_the_head_count_matters_and_is_what_the_folder_records() -> None:
    state, _, ema, _ = _state()
    unet = UNet2DModel(**compvis_ldm.unet_config(TINY))
    unet.load_state_dict(convert_state_dict(state, TINY).unet)
    got, want = _unet_outputs(unet.eval(), ema)  # one head per layer (no head count applied)
    assert not torch.allclose(got, want, atol=1e-3), "a test with one head would not catch a wrong split"


def test_convert_writes_a_folder_that_ldm_inpaint_loads_and_runs(tmp_path: Path) -> None:
    state, _, ema, _ = _state()
    out = tmp_path / "ldm"
    result = CliRunner().invoke(main, ["convert", "compvis-ldm", str(_checkpoint(tmp_path, state)), str(out), *TINY_FLAGS])
    assert result.exit_code == 0, result.output
    assert "ema weights" in result.output
    sidecar = json.loads((out / compvis_ldm.SIDECAR).read_text())
    assert sidecar["attention_heads"] == 2 and sidecar["weights"] == "ema" and len(sidecar["source"]["sha256"]) == 64
    assert (out / "vqvae" / "config.json").is_file() and (out / "unet" / "config.json").is_file()
    scheduler = DDIMScheduler.from_pretrained(out, subfolder="scheduler")
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.steps_offset == 1
    generator = LDMInpaintGenerator(model=str(out), steps=2)
    generator.setup("cpu")
    got, want = _unet_outputs(generator.unet, ema)  # the loaded UNet has the recorded heads
    assert torch.allclose(got, want, atol=1e-4)
    image = textured_image(3, (32, 32))
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 6:22] = 255
    made = generator.inpaint(image, mask, np.random.default_rng(0))
    assert np.array_equal(made[mask == 0], image[mask == 0]) and not np.array_equal(made, image)
    again = CliRunner().invoke(main, ["convert", "compvis-ldm", str(tmp_path / "last.ckpt"), str(out), *TINY_FLAGS])
    assert again.exit_code == 2 and "--overwrite" in again.output
    replaced = CliRunner().invoke(main, ["convert", "compvis-ldm", str(tmp_path / "last.ckpt"), str(out), "--overwrite",
                                         "--no-ema", *TINY_FLAGS])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / compvis_ldm.SIDECAR).read_text())["weights"] == "raw"


def test_an_extra_or_missing_key_is_a_clear_error_and_nothing_is_written(tmp_path: Path) -> None:
    state, *_ = _state()
    extra = {**state, "model.diffusion_model.label_emb.weight": torch.zeros(4, 128)}
    with pytest.raises(ConversionError, match=r"1 source key\(s\) that this architecture has no place for: "
                                              r"model\.diffusion_model\.label_emb\.weight"):
        convert_state_dict(extra, TINY)
    missing = {k: v for k, v in state.items() if k != "model.diffusion_model.out.2.bias"}
    with pytest.raises(ConversionError, match=r"1 unet key\(s\) that nothing in the checkpoint fills: conv_out\.bias"):
        convert_state_dict(missing, TINY)
    with pytest.raises(ConversionError, match=r"vqvae key\(s\) that nothing in the checkpoint fills: "
                                              r"decoder\.mid_block\.attentions"):
        convert_state_dict(state, InpaintArch(**{**TINY.__dict__, "vq_mid_attention": True}))
    odd = {**state, "cond_stage_model.encoder.conv_in.bias": state["cond_stage_model.encoder.conv_in.bias"] + 1}
    with pytest.raises(ConversionError, match=r"cond_stage_model\.encoder\.conv_in\.bias"):
        convert_state_dict(odd, TINY)  # a conditioning encoder that is not the autoencoder is not this model
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", "compvis-ldm", str(_checkpoint(tmp_path, extra)), str(out), *TINY_FLAGS])
    assert result.exit_code == 2 and _error_line(result.output).count("label_emb.weight") == 1, result.output
    assert not any(out.rglob("*.safetensors"))


def test_wrong_options_and_a_wrong_schedule_are_named(tmp_path: Path) -> None:
    state, *_ = _state()
    with pytest.raises(ConversionError, match=r"shape mismatch"):
        convert_state_dict(state, InpaintArch(**{**TINY.__dict__, "model_channels": 64}))
    with pytest.raises(ConversionError, match=r"betas .* are not ldm's linear schedule 0\.0015\.\.0\.0195"):
        convert_state_dict(state, InpaintArch(**{**TINY.__dict__, "linear_end": 0.0195}))
    with pytest.raises(ConversionError, match=r"no EMA weights"):
        convert_state_dict({k: v for k, v in state.items() if not k.startswith("model_ema.")}, TINY, use_ema=True)
    result = CliRunner().invoke(main, ["convert", "compvis-ldm", str(tmp_path / "nope.ckpt"), str(tmp_path / "o")])
    assert result.exit_code == 2 and "checkpoint not found" in _error_line(result.output)


def test_the_generator_default_schedule_is_the_converter_one() -> None:
    assert compvis_ldm.scheduler_config(InpaintArch()) == ldm_inpaint.COMPVIS_DDIM
    # ldm's DDIM timesteps for 50 steps: 1, 21, ..., 981 (make_ddim_timesteps, 'uniform', + 1)
    scheduler = DDIMScheduler(**ldm_inpaint.COMPVIS_DDIM)
    scheduler.set_timesteps(50)
    assert sorted(int(t) for t in scheduler.timesteps) == list(range(1, 1000, 20))
    assert torch.allclose(scheduler.betas.double(), _betas(InpaintArch()), atol=1e-7)
