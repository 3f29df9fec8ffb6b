"""Tiny random models for the learned inpainting generators, saved and loaded the real way.

* :func:`tiny_lama`: a TorchScript module with Big-LaMa's call signature
  (``model(image[B,3,H,W] in [0, 1], mask[B,1,H,W] in {0, 1}) -> [B,3,H,W]``) that, like the real
  one, fails unless H and W are multiples of 8 -- written with ``torch.jit.save``.
* :func:`tiny_sd_inpaint`: a Stable-Diffusion-style inpainting pipeline (9-channel
  ``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel`` and a ``CLIPTokenizer`` built from an
  in-code vocabulary, ``DDIMScheduler``) written with ``save_pretrained``.

Each is made once per folder; the ``*_params`` functions are the rows tests/test_contracts.py's
``FIXTURES`` uses.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any


def tiny_lama(folder: Path) -> Path:
    """``folder/big-lama.pt``: a scripted conv over an 8x-pooled masked image (needs H, W % 8 == 0)."""
    import torch
    import torch.nn.functional as F

    path = Path(folder) / "big-lama.pt"
    if path.exists():
        return path

    class TinyLama(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.conv = torch.nn.Conv2d(4, 3, 3, padding=1)
            with torch.no_grad():
                self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.5)
                self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=generator) * 0.1)  # every weight seeded

        def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            masked = image * (1 - mask)
            coarse = F.interpolate(F.avg_pool2d(masked, 8), scale_factor=8.0, mode="nearest")
            fill = torch.sigmoid(self.conv(torch.cat([coarse, mask], 1)))
            return masked + mask * fill

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated in torch >= 2.9; big-lama.pt is TorchScript
        torch.jit.save(torch.jit.script(TinyLama().eval()), str(path))
    return path


def _tokenizer(folder: Path) -> Any:
    """A CLIPTokenizer over letters only (every word splits into characters), from files written here."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz,.'-":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def tiny_sd_inpaint(folder: Path) -> Path:
    """``folder/sd-inpaint``: a tiny StableDiffusionInpaintPipeline written with ``save_pretrained``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(folder) / "sd-inpaint"
    if (out / "model_index.json").exists():
        return out
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=9, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4, sample_size=32)
    tokenizer = _tokenizer(Path(folder) / "vocab")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(str(out))
    return out


def lama_params(folder: Path) -> dict[str, Any]:
    """Contract-test parameters of the ``lama`` generator."""
    return {"weights": str(tiny_lama(folder))}


def sd_inpaint_params(folder: Path) -> dict[str, Any]:
    """Contract-test parameters of the ``diffusers-inpaint`` generator (2 steps: seconds on a CPU)."""
    return {"model": str(tiny_sd_inpaint(folder)), "steps": 2}
