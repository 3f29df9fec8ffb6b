"""OpenCV inpainting generators: untouched pixels stay bit-exact, the hole is filled, plugs into the registry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dolos_bench.builder.base import Generator, SkipSample
from dolos_bench.builder.generators.opencv import NavierStokesGenerator, TeleaGenerator
from dolos_bench.registry import GENERATORS

NAMES = ["telea", "ns"]


def _image(h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([xx / w * 200 + 20, yy / h * 180 + 30, 120 + 60 * np.sin(xx / 5)], axis=-1)
    tex = np.random.default_rng(0).normal(0, 10, size=(h, w, 3))
    return np.clip(base + tex, 0, 255).astype(np.uint8)


def _mask(h: int = 48, w: int = 64) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[16:32, 20:44] = 255
    m[5, 5] = 255  # a lone pixel too
    return m


@pytest.mark.parametrize("name", NAMES)
def test_registry_creates_each_generator(name: str) -> None:
    gen = GENERATORS.create(name, radius=3)
    assert isinstance(gen, Generator) and gen.name == name
    assert type(gen) is {"telea": TeleaGenerator, "ns": NavierStokesGenerator}[name]
    assert gen.identity() == {"radius": 3, "opencv": cv2.__version__}
    assert GENERATORS.create(name).identity()["radius"] == 3  # the default


@pytest.mark.parametrize("name", NAMES)
def test_outside_is_bit_exact_inside_is_filled_and_deterministic(name: str) -> None:
    img, mask = _image(), _mask()
    gen = GENERATORS.create(name, radius=4)
    out = gen.inpaint(img, mask, np.random.default_rng(0))
    again = gen.inpaint(img, mask, np.random.default_rng(99))  # rng is not used: same bytes
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert out.tobytes() == again.tobytes()
    outside = mask == 0
    assert np.array_equal(out[outside], img[outside])
    inside = mask > 0
    assert np.abs(out[inside].astype(int) - img[inside].astype(int)).mean() > 3
    # the fill is plausible: near the local colours, not black or saturated
    assert np.abs(out[inside].astype(int) - img[inside].astype(int)).mean() < 60
    assert np.array_equal(img, _image()) and np.array_equal(mask, _mask())  # inputs untouched


@pytest.mark.parametrize("name", NAMES)
def test_colour_order_survives_the_bgr_round_trip(name: str) -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 220  # pure red in RGB
    mask = np.zeros((32, 32), np.uint8)
    mask[10:20, 10:20] = 255
    out = GENERATORS.create(name).inpaint(img, mask, np.random.default_rng(0))
    # still red (Telea's fixed-point weights may wobble the level by a few units), never blue
    assert np.all(out[..., 1:] == 0)
    assert np.abs(out[..., 0].astype(int) - 220).max() <= 4


@pytest.mark.parametrize("name", NAMES)
def test_mask_polarity_variants_agree(name: str) -> None:
    img, mask = _image(), _mask()
    gen = GENERATORS.create(name)
    ref = gen.inpaint(img, mask, np.random.default_rng(0))
    for variant in (mask > 0, (mask > 0).astype(np.uint8)):
        assert np.array_equal(gen.inpaint(img, variant, np.random.default_rng(0)), ref)


@pytest.mark.parametrize("name", NAMES)
def test_empty_and_full_masks(name: str) -> None:
    img = _image()
    gen = GENERATORS.create(name)
    out = gen.inpaint(img, np.zeros(img.shape[:2], np.uint8), np.random.default_rng(0))
    assert np.array_equal(out, img) and out is not img
    with pytest.raises(SkipSample, match="whole image"):
        gen.inpaint(img, np.full(img.shape[:2], 255, np.uint8), np.random.default_rng(0))


@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments(name: str) -> None:
    for radius in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="radius"):
            GENERATORS.create(name, radius=radius)
    gen = GENERATORS.create(name)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="mask"):
        gen.inpaint(_image(), np.zeros((10, 10), np.uint8), rng)
    with pytest.raises(ValueError, match="uint8 RGB"):
        gen.inpaint(_image().astype(np.float32), _mask(), rng)


def test_methods_differ() -> None:
    img, mask = _image(), _mask()
    telea = TeleaGenerator().inpaint(img, mask, np.random.default_rng(0))
    ns = NavierStokesGenerator().inpaint(img, mask, np.random.default_rng(0))
    assert not np.array_equal(telea, ns)
