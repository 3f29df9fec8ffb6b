"""Bad real-world image files: each is converted (and noted) or skipped with a reason."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from dolos_bench.builder.pipeline import run_build
from dolos_bench.data.images import ImageLoadError, LoadedImage, load_rgb, preprocess
from dolos_bench.builder.recipe import load_recipe

from helpers import make_image_folder, textured_image, tiny_recipe


def _save(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = Image.fromarray(textured_image(1, (80, 60)))


def test_rgb_passes_unchanged():
    loaded = load_rgb(_save(RGB))
    assert loaded.notes == [] and np.array_equal(loaded.array, np.asarray(RGB))


@pytest.mark.parametrize(
    "image, note",
    [
        (RGB.convert("CMYK"), "CMYK"),
        (RGB.convert("L"), "grayscale"),
        (RGB.convert("P"), "P converted"),
        (RGB.convert("1"), "grayscale"),
    ],
)
def test_odd_modes_are_converted_and_noted(image, note):
    fmt = "JPEG" if image.mode == "CMYK" else "PNG"
    loaded = load_rgb(_save(image, fmt))
    assert loaded.array.shape == (60, 80, 3) and loaded.array.dtype == np.uint8
    assert any(note in n for n in loaded.notes)


def test_sixteen_bit_is_scaled_not_clipped():
    arr = (np.linspace(0, 65535, 80 * 60).reshape(60, 80)).astype(np.uint16)
    loaded = load_rgb(_save(Image.fromarray(arr)))
    assert loaded.array.max() == 255 and loaded.array.min() == 0
    assert any("8-bit" in n for n in loaded.notes)


def test_rgba_transparency_is_composited_on_white():
    rgba = RGB.convert("RGBA")
    alpha = np.full((60, 80), 255, np.uint8)
    alpha[:, :40] = 0
    rgba.putalpha(Image.fromarray(alpha))
    loaded = load_rgb(_save(rgba))
    assert (loaded.array[:, :40] == 255).all()
    assert any("transparency" in n for n in loaded.notes)


def test_exif_rotation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    loaded = load_rgb(_save(RGB, "JPEG", exif=exif.tobytes(), quality=95))
    assert loaded.array.shape == (80, 60, 3)
    assert any("EXIF orientation 6" in n for n in loaded.notes)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not a readable image"),
        (_save(RGB, "JPEG")[:200], "(?i)truncated"),
        (_save(RGB, "PNG")[:60], "truncated"),
    ],
)
def test_unusable_files_raise_with_reason(data, reason):
    with pytest.raises(ImageLoadError, match=reason):
        load_rgb(data)


def test_small_images_are_skipped_or_upscaled_on_request():
    small = LoadedImage(textured_image(2, (100, 120)))
    with pytest.raises(ImageLoadError, match="smaller than the target size"):
        preprocess(small, 128)
    up = preprocess(small, 128, upscale="allow")
    assert up.array.shape == (128, 128, 3) and any("upscaled" in n for n in up.notes)


def test_build_never_dies_on_bad_files(tmp_path):
    src = make_image_folder(tmp_path / "src", n=4)
    bad = src / "bad"
    bad.mkdir()
    (bad / "zero.png").write_bytes(b"")
    (bad / "garbage.jpg").write_bytes(b"\x00" * 500)
    (bad / "truncated.jpg").write_bytes(_save(Image.fromarray(textured_image(3)), "JPEG")[:300])
    (bad / "tiny.png").write_bytes(_save(Image.fromarray(textured_image(4, (20, 20)))))
    Image.fromarray(textured_image(5)).convert("CMYK").save(bad / "cmyk.jpg")
    Image.fromarray(textured_image(6)).convert("L").save(bad / "gray.png")
    (bad / "notes.txt").write_text("not an image extension: ignored")
    # two files whose ids collide once the extension is dropped
    Image.fromarray(textured_image(7)).save(bad / "twin.png")
    Image.fromarray(textured_image(8)).save(bad / "twin.jpg")
    recipe = tiny_recipe(tmp_path / "r.yaml", src, perturbations={"probability": 0.0})
    out = tmp_path / "out"
    report = run_build(load_recipe(recipe), out)
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {s["source_id"]: s["reason"] for s in manifest["skipped"]}
    assert "empty file" in reasons["bad__zero"]
    assert "not a readable image" in reasons["bad__garbage"]
    assert "truncated" in reasons["bad__truncated"].lower()
    assert "smaller than the target size" in reasons["bad__tiny"]
    assert "duplicate id" in reasons["bad__twin"]
    converted = {c["source_id"]: c["notes"] for c in manifest["conversions"]}
    assert any("CMYK" in n for n in converted["bad__cmyk"])
    assert any("grayscale" in n for n in converted["bad__gray"])
    # every real (4 good + cmyk + gray + one twin) and its 2 fakes made it
    assert manifest["counts"]["total"] == 7 * 3
    assert report.counts["skipped"] == len(manifest["skipped"])
    summary = {s["reason"]: s["count"] for s in manifest["skipped_summary"]}
    assert summary["empty file"] == 3
