"""Label-map maskers: CelebAMask-HQ annotations and the BiSeNet/ParseNet face parser.

Part masks are checked against numpy references built from the same synthetic label maps; the
annotation masker reads a folder laid out as CelebAMask-HQ's; the face parser loads a checkpoint
saved the real way (``torch.save`` of a facexlib network's state dict).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dolos_bench.builder.base import SkipSample
from dolos_bench.builder.masks.celebamask_hq import CelebAMaskHQMasker, annotation_index
from dolos_bench.builder.masks.common import choose_part, dilate
from dolos_bench.builder.masks.parsing import BISENET_CLASSES, PARSENET_CLASSES, PARSED_PARTS, part_mask
from dolos_bench.builder.recipe import RecipeError, validate_recipe_data

SIZE = 64


def face_labels(classes: tuple[str, ...], size: int = SIZE) -> np.ndarray:
    """A cartoon face as a label map: skin oval, two eyes, two brows, nose, lips, hair band, ears."""
    labels = np.zeros((size, size), np.uint8)
    c = classes.index
    s = size / 64
    cv2.ellipse(labels, (int(32 * s), int(34 * s)), (int(20 * s), int(26 * s)), 0, 0, 360, c("skin"), -1)
    labels[: int(8 * s)] = c("hair")
    for x, eye, brow, ear in ((22, "l_eye", "l_brow", "l_ear"), (42, "r_eye", "r_brow", "r_ear")):
        cv2.circle(labels, (int(x * s), int(28 * s)), int(3 * s), c(eye), -1)
        labels[int(21 * s): int(23 * s), int((x - 4) * s): int((x + 4) * s)] = c(brow)
        side = 9 if x < 32 else 55
        labels[int(30 * s): int(38 * s), int((side - 2) * s): int((side + 2) * s)] = c(ear)
    labels[int(32 * s): int(40 * s), int(30 * s): int(34 * s)] = c("nose")
    labels[int(45 * s): int(47 * s), int(26 * s): int(38 * s)] = c("u_lip")
    labels[int(47 * s): int(49 * s), int(26 * s): int(38 * s)] = c("l_lip")
    return labels


# -- label maps to parts ---------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [BISENET_CLASSES, PARSENET_CLASSES], ids=["bisenet", "parsenet"])
def test_parts_from_a_label_map_match_numpy(classes: tuple[str, ...]) -> None:
    labels = face_labels(classes)
    is_ = lambda *names: np.isin(labels, [classes.index(n) for n in names])  # noqa: E731
    expected = {
        "eyes": is_("l_eye", "r_eye"),
        "brows": is_("l_brow", "r_brow"),
        "nose": is_("nose"),
        "mouth": is_("mouth", "u_lip", "l_lip"),
        "skin": is_("skin"),
        "face": is_("skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "nose", "mouth", "u_lip", "l_lip"),
        "hair": is_("hair"),
        "ears": is_("l_ear", "r_ear"),
        "neck": is_("neck"),
    }
    for part, want in expected.items():
        got = part_mask(labels, classes, part)
        assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 255}
        assert np.array_equal(got > 0, want), part
    # left/right from the image: the subject's right eye is on the image's left
    right, left = part_mask(labels, classes, "right_eye") > 0, part_mask(labels, classes, "left_eye") > 0
    assert right.any() and left.any() and not (right & left).any()
    assert (right | left).sum() == expected["eyes"].sum()
    assert np.nonzero(right)[1].max() < np.nonzero(left)[1].min()


def test_unknown_part_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown part 'teeth'"):
        part_mask(face_labels(BISENET_CLASSES), BISENET_CLASSES, "teeth")


def test_choose_part_draws_a_dilation_for_every_tried_part() -> None:
    """The rng stream does not depend on which part was tried, only on how many."""
    labels = face_labels(BISENET_CLASSES)

    def draw(part: str, grow: int) -> np.ndarray:
        return dilate(part_mask(labels, BISENET_CLASSES, part), grow)

    result = choose_part("t", ("neck", "nose"), np.random.default_rng(3), dilation=(2, 2),
                         small_parts=frozenset({"nose"}), draw=draw, min_area=0.001, max_area=0.5)
    assert result.parts == ["nose"] and result.info["dilation_px"] == 2
    assert np.array_equal(result.mask, dilate(part_mask(labels, BISENET_CLASSES, "nose"), 2))
    with pytest.raises(SkipSample, match=r"no part with area in \[0.001, 0.5\] \(neck 0.0000\)"):
        choose_part("t", ("neck",), np.random.default_rng(0), dilation=(1, 15), small_parts=frozenset(),
                    draw=draw, min_area=0.001, max_area=0.5)


# -- CelebAMask-HQ annotations ------------------------------------------------------------------------


def write_annotations(root: Path, index: int, size: int = 128) -> np.ndarray:
    """CelebAMask-HQ's layout: CelebAMask-HQ-mask-anno/<index // 2000>/<index:05d>_<class>.png."""
    labels = face_labels(PARSENET_CLASSES, size)
    folder = root / "CelebAMask-HQ-mask-anno" / str(index // 2000)
    folder.mkdir(parents=True, exist_ok=True)
    for value, name in enumerate(PARSENET_CLASSES):
        if value and (labels == value).any():
            cv2.imwrite(str(folder / f"{index:05d}_{name}.png"), ((labels == value) * 255).astype(np.uint8))
    return labels


def test_annotation_index_from_source_ids() -> None:
    assert annotation_index("123") == 123
    assert annotation_index("CelebA-HQ-img/29999.jpg") == 29999
    assert annotation_index("portrait") is None


def test_celebamask_masks_follow_the_annotation_files(tmp_path: Path) -> None:
    labels = write_annotations(tmp_path, 2345)  # folder 1: 2345 // 2000
    masker = CelebAMaskHQMasker(root=str(tmp_path), parts=["nose", "hair"], dilation=(0, 0))
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    small = cv2.resize(labels, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
    seen = set()
    for seed in range(8):
        result = masker(image, np.random.default_rng(seed), source_id="CelebA-HQ-img/2345.jpg")
        part = result.parts[0]
        seen.add(part)
        assert np.array_equal(result.mask > 0, small == PARSENET_CLASSES.index(part))
    assert seen == {"nose", "hair"}


def test_celebamask_reads_a_folder_of_label_maps_and_dilates_small_parts(tmp_path: Path) -> None:
    labels = face_labels(PARSENET_CLASSES)
    cv2.imwrite(str(tmp_path / "7.png"), labels)
    masker = CelebAMaskHQMasker(root=str(tmp_path), parts=["mouth"], dilation=(3, 3))
    result = masker(np.zeros((SIZE, SIZE, 3), np.uint8), np.random.default_rng(0), source_id="7")
    assert np.array_equal(result.mask, dilate(part_mask(labels, PARSENET_CLASSES, "mouth"), 3))
    assert result.info["dilation_px"] == 3


def test_celebamask_skips_with_the_reason(tmp_path: Path) -> None:
    write_annotations(tmp_path, 5)
    masker = CelebAMaskHQMasker(root=str(tmp_path))
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    with pytest.raises(SkipSample, match="no annotation for image 6"):
        masker(image, np.random.default_rng(0), source_id="6")
    with pytest.raises(SkipSample, match="names no CelebA-HQ image index"):
        masker(image, np.random.default_rng(0), source_id="portrait")
    with pytest.raises(SkipSample, match="framed as CelebA-HQ's"):
        masker(np.zeros((SIZE, 2 * SIZE, 3), np.uint8), np.random.default_rng(0), source_id="5")


def test_celebamask_build_masks_are_the_annotations(tmp_path: Path) -> None:
    """Through the build: the masker gets each sample's source id, so each fake's mask is its own image's nose."""
    from dolos_bench.builder.pipeline import run_build
    import datasets

    source = tmp_path / "CelebA-HQ-img"
    source.mkdir()
    annotations = tmp_path / "anno"
    expected = {}
    for index in (0, 1, 2):
        labels = write_annotations(annotations, index)
        # each image's nose sits elsewhere, so a mask from the wrong image would show
        labels = np.roll(labels, 4 * index, axis=1)
        for value, name in enumerate(PARSENET_CLASSES):
            path = annotations / "CelebAMask-HQ-mask-anno" / "0" / f"{index:05d}_{name}.png"
            if path.exists():
                cv2.imwrite(str(path), ((labels == value) * 255).astype(np.uint8))
        rng = np.random.default_rng(index)
        cv2.imwrite(str(source / f"{index}.jpg"), rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
        nose = cv2.resize(labels, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST) == PARSENET_CLASSES.index("nose")
        expected[str(index)] = nose
    recipe = validate_recipe_data({
        "name": "celebamask", "seed": 1, "resolution": SIZE,
        "sources": [{"type": "folder", "path": str(source)}],
        "reals": False,
        "maskers": [{"type": "celebamask-hq", "root": str(annotations), "parts": ["nose"], "dilation": [0, 0]}],
        "generators": [{"type": "telea"}],
        "splits": {"train": 1.0, "validation": 0.0, "test": 0.0},
    })
    run_build(recipe, tmp_path / "out")
    dataset = datasets.load_dataset(str(tmp_path / "out"), split="train")
    assert len(dataset) == 3
    for row in dataset:
        mask = np.asarray(row["mask"])
        assert np.array_equal(mask > 0, expected[Path(row["source_id"]).stem]), row["source_id"]


def test_celebamask_recipe_errors_name_the_problem(tmp_path: Path) -> None:
    base = {"name": "x", "sources": [{"type": "sample"}], "generators": [{"type": "telea"}]}
    with pytest.raises(RecipeError, match="root .* is not a folder"):
        validate_recipe_data({**base, "maskers": [{"type": "celebamask-hq", "root": str(tmp_path / "nope")}]})
    with pytest.raises(RecipeError, match="unknown part"):
        validate_recipe_data({**base, "maskers": [{"type": "celebamask-hq", "root": str(tmp_path), "parts": ["teeth"]}]})


def test_parsed_parts_extend_the_landmark_parts() -> None:
    from dolos_bench.builder.masks.landmarks import PARTS

    assert set(PARTS) < set(PARSED_PARTS) and {"hair", "ears", "neck"} <= set(PARSED_PARTS)


# -- the face parser ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bisenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    parsing = pytest.importorskip("facexlib.parsing")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("facexlib")
    torch.save(parsing.BiSeNet(num_class=19).state_dict(), folder / "parsing_bisenet.pth")
    return folder


def test_face_parser_loads_facexlib_weights_and_masks(bisenet_weights: Path) -> None:
    from dolos_bench.builder.masks.face_parser import FaceParserMasker

    masker = FaceParserMasker(weights=str(bisenet_weights), parts=list(PARSED_PARTS), max_area=1.0, dilation=(0, 0))
    masker.setup("cpu")
    image = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    labels, classes = masker.label_map(image, None)
    assert labels.shape == (512, 512) and labels.dtype == np.uint8 and classes == BISENET_CLASSES
    assert int(labels.max()) < 19
    again, _ = masker.label_map(image, None)
    assert np.array_equal(labels, again)
    try:
        result = masker(image, np.random.default_rng(1))
    except SkipSample as exc:  # random weights may label no face part at all
        assert "no part with area" in str(exc)
    else:
        small = cv2.resize(labels, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(result.mask, part_mask(small, BISENET_CLASSES, result.parts[0]))
    identity = masker.identity()
    assert identity["model"] == "bisenet" and len(identity["weights_sha256"]) == 64


def test_face_parser_errors_are_one_clear_line(bisenet_weights: Path, tmp_path: Path) -> None:
    import torch
    from dolos_bench.builder.masks.face_parser import FaceParserMasker

    from dolos_bench.builder.recipe import StageSpec
    from dolos_bench.weights import WeightsError, check_stage_weights

    with pytest.raises(WeightsError, match=r"parsing_bisenet.pth not found: download https://github.com/xinntao"):
        FaceParserMasker(weights=str(tmp_path)).setup("cpu")
    with pytest.raises(WeightsError, match=r"maskers\[0\] face-parser: weights 'nowhere.pth' is no existing file"):
        check_stage_weights({"maskers": [StageSpec(type="face-parser", weights="nowhere.pth")]})
    wrong = tmp_path / "parsing_parsenet.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    masker = FaceParserMasker(weights=str(wrong), model="bisenet")
    with pytest.raises(WeightsError, match="is not a bisenet parsing checkpoint"):
        masker.setup("cpu")
