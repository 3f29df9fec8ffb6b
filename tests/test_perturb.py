"""Perturbations and chains: determinism, what each one does to pixels and masks, and the spec language."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dolos_bench.builder.base import Perturbation
from dolos_bench.perturbations import (
    INTERPOLATIONS,
    JPEG,
    WEBP,
    Chain,
    GaussianBlur,
    GaussianNoise,
    PerturbationSpecError,
    Resize,
    UnknownPerturbationError,
    describe_perturbation,
    parse_chain,
    parse_perturbation,
)
from dolos_bench.registry import PERTURBATIONS, UnknownNameError


def _image(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus luminance texture: compressible like a photo, but not flat.

    (Independent per-channel noise would be high-frequency chroma, which 4:2:0 subsampling
    destroys at any quality, so even quality 100 would look poor.)
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([xx / w * 200 + 20, yy / h * 180 + 30, (xx + yy) / (h + w) * 150 + 50], axis=-1)
    tex = np.random.default_rng(seed).normal(0, 12, size=(h, w, 1))
    return np.clip(base + tex, 0, 255).astype(np.uint8)


def _mask(h: int = 48, w: int = 64) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[8:16, 20:32] = 255
    return m


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


ALL = [
    JPEG(quality=75),
    WEBP(quality=75),
    GaussianBlur(sigma=1.5),
    GaussianNoise(sigma=8.0),
    Resize(scale=0.5),
    Resize(scale=1.7, interpolation="lanczos"),
    Resize(scale=0.37, interpolation="nearest"),
]


# -- the operations --------------------------------------------------------------------------


@pytest.mark.parametrize("p", ALL, ids=describe_perturbation)
def test_shapes_dtypes_and_determinism(p: Perturbation) -> None:
    img, mask = _image(), _mask()
    out1, m1 = p.apply(img, mask, np.random.default_rng(7))
    out2, m2 = p.apply(img, mask, np.random.default_rng(7))
    assert out1.dtype == np.uint8 and out1.ndim == 3 and out1.shape[2] == 3
    assert out1.flags.c_contiguous
    assert m1 is not None and m1.dtype == np.uint8 and m1.shape == out1.shape[:2]
    assert out1.tobytes() == out2.tobytes() and m1.tobytes() == m2.tobytes()
    if not p.geometric:
        assert out1.shape == img.shape and np.array_equal(m1, mask)
    # inputs are never modified in place
    assert np.array_equal(img, _image()) and np.array_equal(mask, _mask())
    # no mask to move is fine too
    out3, m3 = p.apply(img, None, np.random.default_rng(7))
    assert m3 is None and out3.tobytes() == out1.tobytes()


def test_registry_entries_resolve_to_these_classes() -> None:
    assert isinstance(PERTURBATIONS.create("jpeg", quality=75), JPEG)
    assert isinstance(PERTURBATIONS.create("webp", quality=75), WEBP)
    assert isinstance(PERTURBATIONS.create("blur", sigma=1.0), GaussianBlur)
    assert isinstance(PERTURBATIONS.create("noise", sigma=1.0), GaussianNoise)
    assert isinstance(PERTURBATIONS.create("resize", scale=0.5), Resize)


@pytest.mark.parametrize("cls", [JPEG, WEBP])
def test_compression_quality_orders_psnr(cls: type) -> None:
    img = _image()
    rng = np.random.default_rng(0)
    hi = _psnr(img, cls(quality=100).apply(img, None, rng)[0])
    mid = _psnr(img, cls(quality=50).apply(img, None, rng)[0])
    lo = _psnr(img, cls(quality=10).apply(img, None, rng)[0])
    assert hi > 40 and hi > mid > lo


def test_noise_sigma_zero_is_identity_and_sigma_is_respected() -> None:
    img = _image()
    out, _ = GaussianNoise(sigma=0).apply(img, None, np.random.default_rng(1))
    assert np.array_equal(out, img) and out is not img
    flat = np.full((64, 64, 3), 128, np.uint8)  # far from clipping
    noisy, _ = GaussianNoise(sigma=10).apply(flat, None, np.random.default_rng(1))
    assert abs(float(np.std(noisy.astype(np.float64) - 128)) - 10) < 0.5
    other, _ = GaussianNoise(sigma=10).apply(flat, None, np.random.default_rng(2))
    assert not np.array_equal(noisy, other)


def test_blur_reduces_variance_and_keeps_borders_sane() -> None:
    img = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    out, _ = GaussianBlur(sigma=2.0).apply(img, None, np.random.default_rng(0))
    assert out.var() < img.var() / 4
    flat = np.full((9, 7, 3), 200, np.uint8)  # kernel larger than the image
    assert np.array_equal(GaussianBlur(sigma=5).apply(flat, None, np.random.default_rng(0))[0], flat)
    assert GaussianBlur(sigma=1.5).ksize == 11


@pytest.mark.parametrize("interp", sorted(INTERPOLATIONS))
def test_resize_moves_the_mask_with_the_image(interp: str) -> None:
    h, w = 40, 60
    img = np.full((h, w, 3), 20, np.uint8)
    img[8:16, 20:32] = 230
    mask = np.zeros((h, w), np.uint8)
    mask[8:16, 20:32] = 255
    out, m = Resize(scale=0.5, interpolation=interp).apply(img, mask, np.random.default_rng(0))
    assert out.shape == (20, 30, 3) and m is not None and m.shape == (20, 30)
    expected = np.zeros((20, 30), np.uint8)
    expected[4:8, 10:16] = 255
    assert np.array_equal(m, expected)
    # the bright square of the image lands under the moved mask
    assert out[m > 0].mean() > 200 and out[m == 0].mean() < 60

    up_img, up = Resize(scale=2, interpolation=interp).apply(img, mask, np.random.default_rng(0))
    expected = np.zeros((80, 120), np.uint8)
    expected[16:32, 40:64] = 255
    assert up is not None and np.array_equal(up, expected)
    assert up_img[up > 0].mean() > 200


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 50),
    w=st.integers(1, 50),
    scale=st.floats(0.05, 3.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_resize_size_rule_and_mask_stays_binary(h: int, w: int, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = (rng.random((h, w)) < 0.3).astype(np.uint8) * 255
    p = Resize(scale=scale)
    out, m = p.apply(img, mask, rng)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    assert out.shape == (nh, nw, 3) and m is not None and m.shape == (nh, nw)
    assert set(np.unique(m).tolist()) <= {0, 255}


def test_bad_inputs_are_rejected_clearly() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="uint8 RGB"):
        JPEG(quality=75).apply(np.zeros((8, 8), np.uint8), None, rng)
    with pytest.raises(ValueError, match="uint8 RGB"):
        GaussianBlur(sigma=1).apply(np.zeros((8, 8, 3), np.float32), None, rng)
    with pytest.raises(ValueError, match="mask"):
        Resize(scale=0.5).apply(np.zeros((8, 8, 3), np.uint8), np.zeros((4, 8), np.uint8), rng)


# -- chains ----------------------------------------------------------------------------------


def test_chain_applies_in_order_with_per_step_rngs() -> None:
    img, mask = _image(), _mask()
    noise = Chain([GaussianNoise(sigma=6)])
    longer = Chain([GaussianNoise(sigma=6), Resize(scale=0.5)])
    a, _ = noise.apply(img, mask, np.random.default_rng(11))
    b, bm = longer.apply(img, mask, np.random.default_rng(11))
    # appending a step leaves the earlier step's noise draw unchanged
    expected, em = Resize(scale=0.5).apply(a, mask, np.random.default_rng(0))
    assert np.array_equal(b, expected) and np.array_equal(bm, em)
    # the caller's later draws do not depend on the chain's length
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    Chain().apply(img, mask, r1)
    longer.apply(img, mask, r2)
    assert r1.integers(1 << 62) == r2.integers(1 << 62)
    # two noise steps get different draws
    twice = Chain([GaussianNoise(sigma=6), GaussianNoise(sigma=6)])
    c1, _ = twice.apply(np.full((16, 16, 3), 128, np.uint8), None, np.random.default_rng(3))
    d = c1.astype(int) - 128
    # independent draws: std ~ sqrt(2)*6 = 8.5; the same draw twice would double it to 12
    assert 7.5 < d.std() < 10
    assert longer.geometric and not noise.geometric


def test_empty_chain_is_identity_and_none() -> None:
    img, mask = _image(), _mask()
    chain = parse_chain(None)
    out, m = chain.apply(img, mask, np.random.default_rng(0))
    assert np.array_equal(out, img) and np.array_equal(m, mask)
    assert chain.describe() == "none" and chain.identity() == [] and len(chain) == 0
    assert parse_chain("none") == chain == parse_chain([]) == parse_chain("")


# -- the spec language -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "jpeg", "quality": 75},
        {"jpeg": {"quality": 75}},
        {"jpeg": 75},
        {"jpeg": [75]},
        "jpeg(quality=75)",
        "jpeg(75)",
        " jpeg ( 75 ) ",
        "JPEG(75)",
        JPEG(quality=75),
    ],
)
def test_all_forms_of_one_perturbation(spec: object) -> None:
    p = parse_perturbation(spec)  # type: ignore[arg-type]
    assert isinstance(p, JPEG) and p.identity() == {"name": "jpeg", "quality": 75}


def test_multi_parameter_and_default_forms() -> None:
    for spec in ["resize(0.5, bicubic)", "resize(scale=0.5, interpolation='bicubic')",
                 {"resize": [0.5, "bicubic"]}, {"resize": {"scale": 0.5, "interpolation": "BICUBIC"}}]:
        assert parse_perturbation(spec).identity() == {"name": "resize", "scale": 0.5, "interpolation": "bicubic"}
    p = parse_perturbation("resize(0.5)")
    assert p.identity() == {"name": "resize", "scale": 0.5, "interpolation": "bilinear"}
    assert describe_perturbation(p) == "resize(scale=0.5)"
    assert parse_perturbation("blur(sigma=1.5)").identity() == {"name": "blur", "sigma": 1.5}


def test_chain_string_and_describe() -> None:
    chain = parse_chain("resize(0.5)|jpeg(75)")
    assert chain.describe() == "resize(scale=0.5)|jpeg(quality=75)"
    assert [type(s) for s in chain] == [Resize, JPEG]
    assert parse_chain(chain.identity()) == chain
    assert parse_chain(["resize(0.5)", {"jpeg": 75}]) == chain
    assert parse_chain(["resize(0.5)|jpeg(75)"]) == chain
    assert parse_chain({"jpeg": 75}).describe() == "jpeg(quality=75)"
    assert json.loads(json.dumps(chain.identity())) == chain.identity()


_STEP = st.one_of(
    st.builds(lambda q: {"name": "jpeg", "quality": q}, st.integers(1, 100)),
    st.builds(lambda q: {"name": "webp", "quality": q}, st.integers(1, 100)),
    st.builds(
        lambda s: {"name": "blur", "sigma": s},
        st.floats(0, 50, exclude_min=True, allow_nan=False, allow_infinity=False),
    ),
    st.builds(lambda s: {"name": "noise", "sigma": s}, st.floats(0, 255, allow_nan=False)),
    st.builds(
        lambda s, i: {"name": "resize", "scale": s, "interpolation": i},
        st.floats(1e-3, 8, allow_nan=False),
        st.sampled_from(sorted(INTERPOLATIONS)),
    ),
)


def _as_string(step: dict) -> str:
    args = ", ".join(repr(v) for k, v in step.items() if k != "name")
    return f"{step['name']}({args})"


@settings(max_examples=150, deadline=None)
@given(st.lists(_STEP, max_size=5))
def test_chain_spec_round_trips(steps: list[dict]) -> None:
    chain = parse_chain(steps)
    spec = chain.identity()
    assert spec == steps
    assert parse_chain(spec).identity() == spec
    assert parse_chain(json.loads(json.dumps(spec))).identity() == spec
    assert parse_chain(chain.describe()).identity() == spec  # the breakdown key is itself a spec
    assert parse_chain("|".join(_as_string(s) for s in steps)).identity() == spec
    one_key = [{s["name"]: {k: v for k, v in s.items() if k != "name"}} for s in steps]
    assert parse_chain(one_key).identity() == spec


@pytest.mark.parametrize(
    "spec, words",
    [
        ("jpg(75)", ["Did you mean", "'jpeg'"]),
        ({"name": "blurr", "sigma": 1}, ["Did you mean", "'blur'"]),
        ("jpeg(0)", ["jpeg", "quality", "1..100"]),
        ("jpeg(101)", ["jpeg", "quality", "1..100"]),
        ({"webp": 0}, ["webp", "quality", "1..100"]),
        ("jpeg(75.5)", ["quality", "integer"]),
        ("jpeg(True)", ["quality", "integer"]),
        ("jpeg('75')", ["quality", "integer"]),
        ("blur(-1)", ["blur", "sigma", "> 0"]),
        ("blur(0)", ["blur", "sigma", "> 0"]),
        ("blur(inf)", ["blur", "sigma", "finite"]),
        ("noise(-0.5)", ["noise", "sigma", "0..255"]),
        ("noise(300)", ["noise", "sigma", "0..255"]),
        ("resize(0)", ["resize", "scale", "> 0"]),
        ("resize(0.5, cubic)", ["resize", "interpolation", "Did you mean 'bicubic'"]),
        ("resize(0.5, interpolation=3)", ["resize", "interpolation"]),
        ("jpeg(qualty=75)", ["jpeg", "'qualty'", "Did you mean 'quality'"]),
        ("jpeg(75, 3)", ["jpeg", "at most 1"]),
        ("jpeg(75, quality=75)", ["quality", "twice"]),
        ("blur", ["blur", "'sigma'"]),
        ({"blur": None}, ["blur", "'sigma'"]),
        ("jpeg(75", ["malformed"]),
        ("jpeg 75", ["malformed"]),
        ("jpeg(int(3))", ["malformed"]),
        ("jpeg(quality=)", ["malformed"]),
        ("jpeg(1), print(2)", ["malformed"]),
        ("resize(0.5)||jpeg(75)", ["malformed", "empty step"]),
        ("resize(0.5)|", ["empty step"]),
        ({"jpeg": 75, "blur": 1}, ["one-key"]),
        ({"name": 3}, ["'name' must be a string"]),
        (42, ["int"]),
    ],
)
def test_bad_specs_raise_clear_errors(spec: object, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        parse_chain(spec)  # type: ignore[arg-type]
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_unknown_name_is_both_a_registry_error_and_a_value_error() -> None:
    with pytest.raises(UnknownPerturbationError) as info:
        parse_perturbation("webpp(75)")
    assert isinstance(info.value, UnknownNameError) and isinstance(info.value, ValueError)
    assert "Did you mean 'webp'?" in str(info.value)
    with pytest.raises(PerturbationSpecError, match="use parse_chain"):
        parse_perturbation("resize(0.5)|jpeg(75)")


def test_direct_constructors_validate() -> None:
    with pytest.raises(ValueError, match="quality"):
        JPEG(quality=0)
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise(sigma=float("nan"))
    with pytest.raises(ValueError, match="interpolation"):
        Resize(scale=1.0, interpolation="cubic")
    assert JPEG(quality=np.int64(80)).identity() == {"name": "jpeg", "quality": 80}
    assert type(JPEG(quality=80.0).quality) is int
