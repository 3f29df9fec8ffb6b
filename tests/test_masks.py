"""Tests of the three maskers: strokes, boxes (pure numpy/cv2) and landmarks (dlib).

The landmark tests run on two redistributable portraits shipped inside installed packages
(scikit-image's astronaut, matplotlib's Grace Hopper) and share one masker, so the 68-point
predictor is loaded once per test session.
"""

from __future__ import annotations

import json
import pickle

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dolos_bench.builder.base import Masker, MaskResult, SkipSample
from dolos_bench.builder.masks.boxes import BoxMasker
from dolos_bench.builder.masks.strokes import StrokeMasker
from dolos_bench.registry import MASKERS

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RANDOM_MASKERS = [StrokeMasker, BoxMasker]


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def blank(height: int, width: int) -> np.ndarray:
    return np.zeros((height, width, 3), np.uint8)


def check_mask(result: MaskResult, shape: tuple[int, int]) -> None:
    assert isinstance(result, MaskResult)
    assert result.mask.shape == shape
    assert result.mask.dtype == np.uint8
    assert set(np.unique(result.mask)) <= {0, 255}
    assert np.count_nonzero(result.mask) > 0


# -- strokes and boxes ------------------------------------------------------------------------
@pytest.mark.parametrize("cls", RANDOM_MASKERS)
def test_registry_builds_the_maskers(cls: type[Masker]) -> None:
    masker = MASKERS.create(cls.name)
    assert type(masker) is cls
    assert isinstance(masker, Masker)


@pytest.mark.parametrize("cls", RANDOM_MASKERS)
def test_same_seed_same_bytes_other_seed_other_mask(cls: type[Masker]) -> None:
    masker = cls()
    image = blank(200, 240)
    first = masker(image, rng(7))
    again = masker(image, rng(7))
    assert first.mask.tobytes() == again.mask.tobytes()
    assert first.info == again.info
    others = [masker(image, rng(seed)).mask.tobytes() for seed in range(8, 14)]
    assert first.mask.tobytes() not in others
    assert len(set(others)) == len(others)


@pytest.mark.parametrize("cls", RANDOM_MASKERS)
def test_global_random_state_is_never_read(cls: type[Masker]) -> None:
    import random

    masker = cls()
    np.random.seed(0)
    random.seed(0)
    a = masker(blank(64, 64), rng(3)).mask
    np.random.seed(1)
    random.seed(1)
    b = masker(blank(64, 64), rng(3)).mask
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("cls", RANDOM_MASKERS)
@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    height=st.integers(8, 320),
    width=st.integers(8, 320),
)
def test_area_bounds_respected(cls: type[Masker], seed: int, height: int, width: int) -> None:
    masker = cls(min_area=0.08, max_area=0.3)
    try:
        result = masker(blank(height, width), rng(seed))
    except SkipSample as exc:
        assert "area" in str(exc)
        return
    check_mask(result, (height, width))
    area = np.count_nonzero(result.mask) / result.mask.size
    assert 0.08 <= area <= 0.3
    assert result.info["area"] == pytest.approx(area)
    assert result.parts == [cls.name]


@pytest.mark.parametrize("cls", RANDOM_MASKERS)
@FAST
@given(seed=st.integers(0, 2**32 - 1), height=st.integers(1, 64), width=st.integers(1, 64))
def test_any_size_gives_a_valid_mask(cls: type[Masker], seed: int, height: int, width: int) -> None:
    result = cls(min_area=0.0, max_area=1.0)(blank(height, width), rng(seed))
    check_mask(result, (height, width))


@pytest.mark.parametrize("cls", RANDOM_MASKERS)
def test_defaults_rarely_skip(cls: type[Masker]) -> None:
    """The retry budget should make skips rare with default arguments."""
    masker = cls()
    skips = 0
    for seed in range(100):
        try:
            masker(blank(128, 128), rng(seed))
        except SkipSample:
            skips += 1
    assert skips <= 2


@pytest.mark.parametrize("cls", RANDOM_MASKERS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resolution_invariance(cls: type[Masker], seed: int) -> None:
    """One seed draws the same picture at 256 and 1024: a recipe means the same at any size."""
    masker = cls(min_area=0.0, max_area=1.0)
    small = masker(blank(256, 256), rng(seed)).mask
    large = masker(blank(1024, 1024), rng(seed)).mask
    down = cv2.resize(large, (256, 256), interpolation=cv2.INTER_AREA) >= 128
    ref = small > 0
    iou = np.logical_and(down, ref).sum() / np.logical_or(down, ref).sum()
    assert iou > 0.9
    assert abs(ref.mean() - (large > 0).mean()) < 0.02


@pytest.mark.parametrize(
    "masker",
    [
        StrokeMasker(min_area=0.95, max_area=1.0, width=[0.01, 0.02], max_tries=5),
        StrokeMasker(min_area=0.0001, max_area=0.001, width=[0.2, 0.3]),
        BoxMasker(min_area=0.0001, max_area=0.001, side=[0.2, 0.4]),
        BoxMasker(count=[1, 1], min_area=0.245, max_area=0.25, side=[0.1, 0.5], max_tries=3),
    ],
    ids=["strokes-too-big", "strokes-too-small", "boxes-too-small", "boxes-unlikely"],
)
def test_unreachable_bounds_skip(masker: Masker) -> None:
    for seed in range(3):
        with pytest.raises(SkipSample, match="area"):
            masker(blank(96, 96), rng(seed))


def test_retries_continue_the_same_rng() -> None:
    """A retried sample is still a pure function of the seed (no fresh entropy)."""
    masker = StrokeMasker(min_area=0.3, max_area=0.4)
    results = []
    for seed in range(30):
        try:
            results.append((seed, masker(blank(64, 64), rng(seed))))
        except SkipSample:
            pass
    retried = [(s, r) for s, r in results if r.info["tries"] > 1]
    assert retried
    seed, result = retried[0]
    assert masker(blank(64, 64), rng(seed)).mask.tobytes() == result.mask.tobytes()


@pytest.mark.parametrize(
    "cls, kwargs, needle",
    [
        (StrokeMasker, {"strokes": [3, 1]}, "strokes"),
        (StrokeMasker, {"strokes": [0, 2]}, "strokes"),
        (StrokeMasker, {"strokes": "many"}, "strokes"),
        (StrokeMasker, {"max_vertices": 1}, "max_vertices"),
        (StrokeMasker, {"max_vertices": 2.5}, "max_vertices"),
        (StrokeMasker, {"max_length": 0}, "max_length"),
        (StrokeMasker, {"width": [0.1, 0.05]}, "width"),
        (StrokeMasker, {"width": [0.0, 0.0]}, "width"),
        (StrokeMasker, {"max_angle": -1}, "max_angle"),
        (StrokeMasker, {"min_area": 0.5, "max_area": 0.4}, "min_area"),
        (StrokeMasker, {"max_area": 1.5}, "max_area"),
        (StrokeMasker, {"min_area": float("nan")}, "min_area"),
        (StrokeMasker, {"max_tries": 0}, "max_tries"),
        (StrokeMasker, {"max_tries": True}, "max_tries"),
        (BoxMasker, {"count": [2, 1]}, "count"),
        (BoxMasker, {"count": [1, 2, 3]}, "count"),
        (BoxMasker, {"side": [0.2, 1.2]}, "side"),
        (BoxMasker, {"side": [0.1, 0.9], "margin": 0.1}, "margin"),
        (BoxMasker, {"margin": -0.1}, "margin"),
        (BoxMasker, {"count": [1, 1], "side": [0.1, 0.3], "min_area": 0.2}, "min_area"),
        (BoxMasker, {"max_area": 0.0, "min_area": 0.0}, "max_area"),
    ],
)
def test_bad_arguments_name_the_argument(cls: type[Masker], kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        cls(**kwargs)


@pytest.mark.parametrize("cls", RANDOM_MASKERS)
def test_unknown_keyword_and_positional_args_fail(cls: type[Masker]) -> None:
    with pytest.raises(TypeError):
        cls(nonsense=1)
    with pytest.raises(TypeError):
        cls(0.1)  # keyword-only: a recipe never passes positional arguments


@pytest.mark.parametrize("cls", RANDOM_MASKERS)
def test_bad_image_is_a_value_error(cls: type[Masker]) -> None:
    with pytest.raises(ValueError, match="image"):
        cls()(np.zeros((0, 10, 3), np.uint8), rng(0))
    with pytest.raises(ValueError, match="image"):
        cls()([[0, 0], [0, 0]], rng(0))  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", RANDOM_MASKERS)
def test_config_is_json_and_rebuilds_the_same_masker(cls: type[Masker]) -> None:
    masker = cls()
    config = json.loads(json.dumps(masker.identity()))
    rebuilt = cls(**config)
    assert rebuilt.identity() == masker.identity()
    assert rebuilt(blank(80, 120), rng(5)).mask.tobytes() == masker(blank(80, 120), rng(5)).mask.tobytes()
    again = pickle.loads(pickle.dumps(masker))
    assert again(blank(80, 120), rng(5)).mask.tobytes() == masker(blank(80, 120), rng(5)).mask.tobytes()


@pytest.mark.parametrize("cls", RANDOM_MASKERS)
def test_info_is_json_and_does_not_shadow_config(cls: type[Masker]) -> None:
    """The pipeline stores ``{**config(), **info}``: an info key must not hide an argument."""
    masker = cls()
    info = masker(blank(90, 90), rng(1)).info
    json.dumps(info)
    assert not set(info) & set(masker.identity())


def test_scalar_ranges_mean_fixed_values() -> None:
    masker = StrokeMasker(strokes=2, width=0.05, min_area=0.0, max_area=1.0)
    assert masker.identity()["strokes"] == [2, 2]
    assert masker(blank(64, 64), rng(0)).info["n_strokes"] == 2
    boxes = BoxMasker(count=2, side=0.3, min_area=0.0, max_area=1.0)(blank(100, 100), rng(0))
    assert len(boxes.info["boxes"]) == 2
    for x0, y0, x1, y1 in boxes.info["boxes"]:
        assert (x1 - x0, y1 - y0) == (30, 30)


def test_boxes_keep_the_margin_and_match_info() -> None:
    masker = BoxMasker(margin=0.1, side=[0.1, 0.8], min_area=0.0, max_area=1.0)
    for seed in range(20):
        result = masker(blank(100, 150), rng(seed))
        assert not result.mask[:10].any() and not result.mask[-10:].any()
        assert not result.mask[:, :10].any() and not result.mask[:, -10:].any()
        redrawn = np.zeros_like(result.mask)
        for x0, y0, x1, y1 in result.info["boxes"]:
            redrawn[y0:y1, x0:x1] = 255
        assert redrawn.tobytes() == result.mask.tobytes()


# -- landmarks ----------------------------------------------------------------------------------
# The landmarks module imports without dlib (it loads it lazily); only its use needs the extra.
from dolos_bench.builder.masks import landmarks as lm  # noqa: E402
from dolos_bench.builder.masks.landmarks import (  # noqa: E402
    PARTS,
    LandmarkMasker,
    landmark_licence_note,
    predictor_file,
)
from dolos_bench.registry import MASKERS  # noqa: E402
from stage_marks import stage_missing  # noqa: E402


def _faces_extra_missing() -> str:
    reason = stage_missing(MASKERS, "landmarks")
    if reason is not None:
        return reason
    try:
        predictor_file()
    except FileNotFoundError as exc:
        return str(exc)
    return ""


needs_faces = pytest.mark.skipif(bool(_faces_extra_missing()), reason=_faces_extra_missing() or "-")

SMALL = ["eyes", "left_eye", "right_eye", "brows", "nose", "mouth"]


@pytest.fixture(scope="module")
def masker() -> LandmarkMasker:
    reason = _faces_extra_missing()
    if reason:  # pragma: no cover - depends on the environment
        pytest.skip(reason)
    return LandmarkMasker()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    crop = np.ascontiguousarray(skimage_data.astronaut()[0:300, 100:400])
    return cv2.resize(crop, (256, 256), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    cbook = pytest.importorskip("matplotlib.cbook")
    from PIL import Image

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = np.asarray(Image.open(path).convert("RGB"))  # 600 x 512
    return cv2.resize(image[60:460, 56:456], (256, 256), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module", params=["astronaut", "hopper"])
def portrait(request: pytest.FixtureRequest, masker: LandmarkMasker):
    """(image, detected face, {part: undilated mask}) for each sample portrait."""
    image = request.getfixturevalue(request.param)
    face = masker.detect(image)
    assert face is not None, f"no face found in {request.param}"
    parts = {p: masker.part_mask(face, p, 0, image.shape[:2]) for p in PARTS}
    return image, face, parts


def centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def test_licence_note() -> None:
    note = landmark_licence_note()
    assert "300-W" in note and "research use only" in note
    assert "research use only" in (LandmarkMasker.__doc__ or "")
    assert "300-W" in (LandmarkMasker.__doc__ or "")


@needs_faces
def test_predictor_file() -> None:
    path = predictor_file()
    assert path.name == "shape_predictor_68_face_landmarks.dat" and path.is_file()


def test_registry_builds_the_landmark_masker(masker: LandmarkMasker) -> None:
    assert type(MASKERS.create("landmarks")) is LandmarkMasker


def test_every_part_is_found(portrait) -> None:
    image, face, parts = portrait
    assert face.points.shape == (68, 2)
    x0, y0, x1, y1 = face.box
    assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
    for part, mask in parts.items():
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8, part
        assert set(np.unique(mask)) <= {0, 255}, part
        assert np.count_nonzero(mask) > 20, part


def test_parts_are_where_faces_have_them(portrait) -> None:
    _, face, parts = portrait
    brow_y = centroid(parts["brows"])[1]
    eye_y = centroid(parts["eyes"])[1]
    nose_y = centroid(parts["nose"])[1]
    mouth_y = centroid(parts["mouth"])[1]
    assert brow_y < eye_y < nose_y < mouth_y
    # Subject's right eye (points 36-41) shows on the image's left in an unmirrored photo.
    assert centroid(parts["right_eye"])[0] < centroid(parts["left_eye"])[0]
    assert np.array_equal(parts["eyes"], np.maximum(parts["left_eye"], parts["right_eye"]))
    # Everything lies inside the face box (give the box some slack: dlib boxes are tight).
    x0, y0, x1, y1 = face.box
    pad = (x1 - x0) // 4
    for part in SMALL:
        ys, xs = np.nonzero(parts[part])
        assert xs.min() >= x0 - pad and xs.max() <= x1 + pad, part
        assert ys.min() >= y0 - pad and ys.max() <= y1 + pad, part


def test_skin_is_face_without_features(portrait, masker: LandmarkMasker) -> None:
    _, face_, parts = portrait
    skin, face = parts["skin"] > 0, parts["face"] > 0
    assert not (skin & ~face).any()
    for part in SMALL:
        assert not (skin & (parts[part] > 0)).any(), part
        # ... with a margin: the features grown by 1 px still miss the skin.
        grown = masker.part_mask(face_, part, 1, parts[part].shape)
        assert not (skin & (grown > 0)).any(), part
    assert skin.sum() > 0.4 * face.sum()


def test_dilation_grows_small_parts_only(portrait, masker: LandmarkMasker) -> None:
    image, face, parts = portrait
    for part in SMALL:
        grown = masker.part_mask(face, part, 6, image.shape[:2])
        assert np.count_nonzero(grown) > np.count_nonzero(parts[part]), part
        assert not ((parts[part] > 0) & (grown == 0)).any(), part
        more = masker.part_mask(face, part, 12, image.shape[:2])
        assert np.count_nonzero(more) > np.count_nonzero(grown), part
    for part in ("skin", "face"):
        assert np.array_equal(masker.part_mask(face, part, 6, image.shape[:2]), parts[part])


def test_forehead_extends_the_face_upwards(portrait, masker: LandmarkMasker) -> None:
    image, face, parts = portrait
    plain = LandmarkMasker(forehead=0.0).part_mask(face, "face", 0, image.shape[:2])
    extended = parts["face"]
    assert not ((plain > 0) & (extended == 0)).any()
    assert np.count_nonzero(extended) > np.count_nonzero(plain)
    top_plain = np.nonzero(plain.any(axis=1))[0][0]
    top_extended = np.nonzero(extended.any(axis=1))[0][0]
    assert top_extended < top_plain
    # Without the lift the hull's top is the brows.
    assert top_plain == pytest.approx(face.points[17:27, 1].min(), abs=1)


def test_call_is_deterministic_and_records_its_choices(astronaut, masker: LandmarkMasker) -> None:
    first = masker(astronaut, rng(11))
    again = masker(astronaut, rng(11))
    assert first.mask.tobytes() == again.mask.tobytes()
    assert first.info == again.info
    check_mask(first, astronaut.shape[:2])
    info = first.info
    assert first.parts == [info["part"]] and info["part"] in masker.parts
    assert 0 <= info["dilation_px"] <= 15
    assert info["area"] == pytest.approx(np.count_nonzero(first.mask) / first.mask.size)
    assert len(info["face_box"]) == 4 and info["faces"] == 1
    json.dumps(info)
    assert not set(info) & set(masker.identity())  # the pipeline stores {**config, **info}


def test_seeds_spread_over_parts_and_dilations(astronaut, masker: LandmarkMasker) -> None:
    results = [masker(astronaut, rng(seed)) for seed in range(24)]
    chosen = {r.info["part"] for r in results}
    assert len(chosen) >= 4
    dilations = {r.info["dilation_px"] for r in results if r.info["part"] in SMALL}
    assert len(dilations) >= 3
    assert len({r.mask.tobytes() for r in results}) >= 12


def test_single_part_with_fixed_dilation(astronaut, masker: LandmarkMasker) -> None:
    one = LandmarkMasker(parts=["mouth"], dilation=[3, 3])
    result = one(astronaut, rng(0))
    assert result.parts == ["mouth"] and result.info["dilation_px"] == 3
    face = masker.detect(astronaut)
    assert face is not None
    expected = masker.part_mask(face, "mouth", 3, astronaut.shape[:2])
    assert np.array_equal(result.mask, expected)


@needs_faces
def test_parts_out_of_bounds_fall_back_then_skip(astronaut) -> None:
    # On this crop the face covers ~9% of the image and the eyes under 4% even dilated by 2 px.
    fallback = LandmarkMasker(parts=["face", "eyes"], dilation=[0, 2], max_area=0.05)
    for seed in range(6):
        result = fallback(astronaut, rng(seed))
        assert result.parts == ["eyes"]
        assert set(result.info["rejected"]) <= {"face"}
    impossible = LandmarkMasker(parts=["eyes", "mouth"], min_area=0.5, max_area=0.9)
    with pytest.raises(SkipSample, match="no part with area"):
        impossible(astronaut, rng(0))


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_face_skips(kind: str, masker: LandmarkMasker) -> None:
    if kind == "blank":
        image = np.full((200, 200, 3), 127, np.uint8)
    else:
        image = rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    with pytest.raises(SkipSample, match="no face detected"):
        masker(image, rng(0))


def test_largest_face_wins(astronaut, hopper, masker: LandmarkMasker) -> None:
    both = np.ascontiguousarray(np.hstack([astronaut, hopper]))
    result = masker(both, rng(0))
    assert result.info["faces"] == 2
    x0, _, x1, _ = result.info["face_box"]
    assert x0 >= 256  # Hopper's face (~130 px) beats the astronaut's (~75 px)


def test_masker_pickles_small_and_loads_models_once(astronaut, masker: LandmarkMasker) -> None:
    data = pickle.dumps(masker)
    assert len(data) < 1000
    clone = pickle.loads(data)
    assert clone(astronaut, rng(4)).mask.tobytes() == masker(astronaut, rng(4)).mask.tobytes()
    assert len(lm._MODELS) == 1


def test_config_round_trip(astronaut, masker: LandmarkMasker) -> None:
    config = json.loads(json.dumps(masker.identity()))
    assert config["parts"] == ["eyes", "brows", "nose", "mouth", "skin", "face"]
    assert config["dilation"] == [1, 15]
    rebuilt = LandmarkMasker(**config)
    assert rebuilt.identity() == masker.identity()
    explicit = LandmarkMasker(predictor_path=str(predictor_file()))
    assert explicit(astronaut, rng(2)).mask.tobytes() == masker(astronaut, rng(2)).mask.tobytes()


@needs_faces
@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"parts": ["eyes", "ears"]}, r"unknown part.*'ears'.*known parts: eyes, left_eye"),
        ({"parts": []}, "parts"),
        ({"parts": "eyes"}, "parts"),
        ({"parts": ["eyes", "eyes"]}, "parts"),
        ({"dilation": [-1, 3]}, "dilation"),
        ({"dilation": [5, 2]}, "dilation"),
        ({"dilation": [1.5, 2]}, "dilation"),
        ({"forehead": -0.1}, "forehead"),
        ({"min_area": 0.3, "max_area": 0.2}, "min_area"),
        ({"upsample": -1}, "upsample"),
        ({"predictor_path": "/nonexistent/shape_predictor.dat"}, "predictor_path"),
    ],
)
def test_bad_landmark_arguments(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        LandmarkMasker(**kwargs)


def test_bad_image_for_landmarks(masker: LandmarkMasker) -> None:
    with pytest.raises(ValueError, match="uint8"):
        masker(np.zeros((64, 64, 3), np.float32), rng(0))
    with pytest.raises(ValueError, match="uint8"):
        masker(np.zeros((64, 64, 4), np.uint8), rng(0))


def test_landmarks_module_needs_no_dlib_until_used() -> None:
    """`bench ls`, recipe checks and the dataset card import the module; only masking needs dlib."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['dlib'] = None\n"
        "from dolos_bench.builder.masks.landmarks import landmark_licence_note\n"
        "assert '300-W' in landmark_licence_note()\n"
        "import dolos_bench.builder.masks.landmarks as lm\n"
        "try:\n"
        "    lm.LandmarkMasker()\n"
        "except ImportError as exc:\n"
        "    assert 'dlib' in str(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
