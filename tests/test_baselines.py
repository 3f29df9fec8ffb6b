"""Training-free baselines: protocol conformance, determinism, speed and a real forensic signal."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from dolos_baselines.ela import ELALocalizer, ela_map
from dolos_baselines.noise import NoiseLocalizer, noise_map
from dolos_bench.eval.localizers import call_localizer

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

SIZE = 256


def _camera_like(seed: int = 0, size: int = SIZE, noise: float = 6.0) -> np.ndarray:
    """Smooth colour structure plus sensor-like Gaussian noise, as a camera image has."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 6, 3)
    base = np.stack(
        [
            110 + 60 * np.sin(xx / 23 + phase[0]) + 30 * np.cos(yy / 17),
            120 + 50 * np.cos(xx / 31 + yy / 29 + phase[1]),
            95 + 40 * np.sin((xx + yy) / 19 + phase[2]),
        ],
        axis=-1,
    )
    return np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def _region() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[80:160, 96:176] = True
    return mask


def _inside_outside(m: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    return float(m[mask].mean()), float(m[~mask].mean())


@pytest.mark.parametrize("cls", [ELALocalizer, NoiseLocalizer])
def test_protocol_shape_range_determinism(cls: type) -> None:
    loc = cls()
    images = [_camera_like(0), _camera_like(1, size=100)[:, :70], np.zeros((17, 9, 3), np.uint8)]
    out = call_localizer(loc, images, ["a", "b", "c"])
    assert [m.shape for m in out.maps] == [(256, 256), (100, 70), (17, 9)]
    for m in out.maps:
        assert m.dtype == np.float32 and 0.0 <= m.min() and m.max() <= 1.0
    assert out.scores is not None and all(0.0 <= s <= 1.0 for s in out.scores)
    again = cls().predict(images, ids=["a", "b", "c"])
    for a, b in zip(out.maps, again.maps):
        np.testing.assert_array_equal(a, b)
    assert out.scores == again.scores
    # A map is not a constant: it varies over a real-looking image.
    assert out.maps[0].std() > 1e-3


@pytest.mark.parametrize("cls", [ELALocalizer, NoiseLocalizer])
def test_fast_enough(cls: type) -> None:
    loc, image = cls(), _camera_like(3)
    loc.predict([image])
    start = time.perf_counter()
    for _ in range(10):
        loc.predict([image])
    per_image = (time.perf_counter() - start) / 10
    assert per_image < 0.030, f"{cls.name}: {per_image * 1000:.1f} ms per 256x256 image"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ela_finds_a_region_compressed_differently(seed: int) -> None:
    """A camera JPEG (q=90) with a never-compressed patch pasted in: ELA lights up the patch."""
    raw = _camera_like(seed)
    mask = _region()
    forged = _jpeg(raw, 90)
    forged[mask] = raw[mask]
    inside, outside = _inside_outside(ela_map(forged), mask)
    assert inside > outside + 0.3, (inside, outside)
    # Re-compressed at a lower quality instead: weaker, still there.
    forged = _jpeg(raw, 90)
    forged[mask] = _jpeg(raw, 60)[mask]
    inside, outside = _inside_outside(ela_map(forged), mask)
    assert inside > 2 * outside and inside > outside + 0.05, (inside, outside)


def test_ela_finds_inpainting_on_a_jpeg() -> None:
    """cv2.inpaint on a camera JPEG: the synthesised fill was never through the codec."""
    jpeg = _jpeg(_camera_like(4), 90)
    mask = _region()
    forged = cv2.inpaint(jpeg[..., ::-1].copy(), mask.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)[..., ::-1]
    inside, outside = _inside_outside(ELALocalizer().predict([forged]).maps[0], mask)
    assert inside > outside + 0.1, (inside, outside)


def test_ela_scores_separate_pristine_from_forged() -> None:
    """Fixed-scale normalisation: a pristine JPEG scores low rather than being stretched to 1."""
    raw, mask = _camera_like(5), _region()
    pristine = _jpeg(raw, 90)
    forged = pristine.copy()
    forged[mask] = raw[mask]
    out = ELALocalizer().predict([pristine, forged])
    assert out.scores is not None and out.scores[0] < 0.2 < out.scores[1]
    assert out.maps[0].max() < 0.3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_finds_inpainting(seed: int) -> None:
    """cv2.inpaint fills the region with smooth, noiseless content: its local noise stands out."""
    image = _camera_like(seed)
    mask = _region()
    forged = cv2.inpaint(image[..., ::-1].copy(), mask.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)[..., ::-1]
    m = NoiseLocalizer().predict([forged]).maps[0]
    inside, outside = _inside_outside(m, mask)
    assert inside > outside + 0.25, (inside, outside)
    # The pristine image has no such region.
    p_inside, p_outside = _inside_outside(noise_map(image), mask)
    assert abs(p_inside - p_outside) < 0.1, (p_inside, p_outside)


def test_noise_finds_a_noisier_splice() -> None:
    clean, noisy, mask = _camera_like(6, noise=2.0), _camera_like(6, noise=12.0), _region()
    forged = clean.copy()
    forged[mask] = noisy[mask]
    inside, outside = _inside_outside(noise_map(forged), mask)
    assert inside > outside + 0.25, (inside, outside)


def test_options_are_validated_and_reported() -> None:
    loc = ELALocalizer(quality="75", sigma=0)
    assert loc.identity()["options"]["quality"] == 75
    with pytest.raises(ValueError, match="quality"):
        ELALocalizer(quality=0)
    with pytest.raises(ValueError, match="reduce"):
        ELALocalizer(reduce="median")
    with pytest.raises(ValueError, match="window"):
        NoiseLocalizer(window=1)
    with pytest.raises(TypeError):
        NoiseLocalizer(windw=8)  # type: ignore[call-arg]
