"""median, motion-blur, gamma, brightness-contrast: checked against independent references (scipy, numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dolos_bench.perturbations import BrightnessContrast, Gamma, MedianBlur, MotionBlur, PerturbationSpecError, parse_chain, parse_perturbation


def image(seed: int = 0, shape: tuple[int, int] = (37, 45)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(128, 60, (*shape, 3)), (2, 2, 0))
    return np.clip(np.rint(smooth + rng.normal(0, 10, smooth.shape)), 0, 255).astype(np.uint8)


def apply(p, img: np.ndarray) -> np.ndarray:
    out, mask = p.apply(img.copy(), None, np.random.default_rng(0))
    assert mask is None and out.dtype == np.uint8 and out.shape == img.shape
    return out


@pytest.mark.parametrize("size", [3, 5, 7])
def test_median_is_scipys_median_filter_with_replicated_borders(size: int) -> None:
    img = image(size)
    want = np.stack([ndimage.median_filter(img[..., c], size=size, mode="nearest") for c in range(3)], axis=-1)
    assert np.array_equal(apply(MedianBlur(size), img), want)


@pytest.mark.parametrize("angle, axis", [(0.0, 1), (90.0, 0), (180.0, 1)])
def test_motion_blur_along_an_axis_is_a_mirrored_box_filter_along_it(angle: float, axis: int) -> None:
    img = image(1)
    box = ndimage.uniform_filter1d(img.astype(np.float64), size=7, axis=axis, mode="mirror")  # mirror = REFLECT_101
    out = apply(MotionBlur(7, angle), img)
    assert np.abs(out.astype(int) - np.rint(box)).max() <= 1  # float32 kernel weights: at most one level off
    assert (out == np.rint(box)).mean() > 0.99


def test_motion_blur_kernel_is_a_centred_line_summing_to_one() -> None:
    for length, angle in [(3, 0.0), (9, 30.0), (15, 45.0), (7, -60.0), (5, 400 - 360)]:
        k = MotionBlur(length, angle).kernel()
        assert k.shape == (length, length) and k.sum() == pytest.approx(1.0)
        c = length // 2
        assert k[c, c] > 0  # through the centre
        assert np.allclose(k, k[::-1, ::-1])  # symmetric about it: no shift of the image
    diagonal = MotionBlur(5, 45.0).kernel() > 0
    assert diagonal[1, 3] and diagonal[3, 1] and not diagonal[1, 1]  # 45 degrees counter-clockwise: up and right


@pytest.mark.parametrize("gamma", [0.5, 0.8, 1.2, 2.2])
def test_gamma_is_the_power_curve_rounded(gamma: float) -> None:
    img = image(2)
    want = np.clip(np.rint(255.0 * (img / 255.0) ** gamma), 0, 255).astype(np.uint8)
    assert np.array_equal(apply(Gamma(gamma), img), want)


@pytest.mark.parametrize("brightness, contrast", [(0.0, 1.5), (-30.0, 1.0), (20.0, 0.6), (0.0, 0.0)])
def test_brightness_contrast_is_the_linear_map_about_mid_grey(brightness: float, contrast: float) -> None:
    img = image(3)
    want = np.clip(np.rint((img.astype(np.float64) - 127.5) * contrast + 127.5 + brightness), 0, 255).astype(np.uint8)
    assert np.array_equal(apply(BrightnessContrast(brightness, contrast), img), want)


def test_identity_settings_return_the_image() -> None:
    img = image(4)
    for p in (Gamma(1.0), BrightnessContrast(), BrightnessContrast(0.0, 1.0)):
        assert np.array_equal(apply(p, img), img)


def test_spellings_identities_and_bad_values() -> None:
    chain = parse_chain("median(5)|motion-blur(length=9, angle=30)|gamma(0.8)|brightness-contrast(contrast=1.2)")
    assert [p.identity() for p in chain.steps] == [
        {"name": "median", "size": 5}, {"name": "motion-blur", "length": 9, "angle": 30.0},
        {"name": "gamma", "gamma": 0.8}, {"name": "brightness-contrast", "brightness": 0.0, "contrast": 1.2}]
    assert parse_chain([p.identity() for p in chain.steps]).identity() == chain.identity()
    for bad, words in [("median(4)", "odd"), ("median(1)", "3..255"), ("gamma(0)", r"\(0, 10\]"),
                       ("motion-blur(2)", "3..255"), ("brightness-contrast(contrast=-1)", "0..10"),
                       ("brightness-contrast(brightness=300)", "-255..255")]:
        with pytest.raises(PerturbationSpecError, match=words):
            parse_perturbation(bad)
