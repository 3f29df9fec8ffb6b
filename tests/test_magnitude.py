"""Magnitude of change: area ratio, SSIM and CIEDE2000 inside the mask, the columns a build writes,
and `bench eval`'s breakdown by area bins."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dolos_bench.cli import main
from dolos_bench.data.magnitude import (area_ratio, change_ciede2000, change_ssim, ciede2000, magnitude,
                                        rgb_to_lab)
from dolos_bench.data.schema import MAGNITUDE_COLUMNS
from dolos_bench.eval.metrics import AREA_EDGES, MetricState, area_bin, area_labels

from helpers import build_tiny

skimage = pytest.importorskip("skimage")


def _pair(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth image, a copy changed inside a box (colour shift + noise), and the box mask (255)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (size // 8, size // 8, 3))
    image = np.kron(coarse, np.ones((8, 8, 1))).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[10:40, 20:50] = 255
    changed = image.astype(np.int16)
    changed[mask > 0] += np.array([30, -20, 10]) + rng.integers(-15, 16, (int((mask > 0).sum()), 3))
    return image, np.clip(changed, 0, 255).astype(np.uint8), mask


def test_area_ratio_is_the_forged_share():
    mask = np.zeros((40, 50), np.uint8)
    mask[:10, :20] = 255
    assert area_ratio(mask) == pytest.approx(200 / 2000)
    assert area_ratio(mask > 0) == area_ratio(mask)
    assert area_ratio(np.zeros((8, 8))) == 0.0 and area_ratio(np.full((8, 8), 1)) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_change_ssim_equals_scikit_image_inside_the_mask(seed):
    from skimage.metrics import structural_similarity

    image, changed, mask = _pair(seed)
    _, full = structural_similarity(image, changed, channel_axis=-1, data_range=255, full=True)
    reference = full.mean(axis=-1)[mask > 0].mean()
    assert change_ssim(image, changed, mask) == pytest.approx(reference, abs=1e-10)
    assert change_ssim(image, image, mask) == pytest.approx(1.0)
    corner = np.zeros_like(mask)  # touches two borders: the cropped computation must still be exact
    corner[:20, 44:] = 255
    corner[60:, :3] = 255
    assert change_ssim(image, changed, corner) == pytest.approx(full.mean(axis=-1)[corner > 0].mean(), abs=1e-10)
    assert change_ssim(image, changed, np.zeros_like(mask)) is None


def test_ciede2000_matches_sharma_and_scikit_image():
    from skimage.color import deltaE_ciede2000, rgb2lab

    # Sharma, Wu and Dalal (2005), table 1: pairs 1, 7, 13, 17 and 25 with their published differences.
    pairs = np.array([[[50.0, 2.6772, -79.7751], [50.0, 0.0, -82.7485]],
                      [[50.0, 0.0, 0.0], [50.0, -1.0, 2.0]],
                      [[50.0, 2.5, 0.0], [56.0, -27.0, -3.0]],
                      [[50.0, 2.5, 0.0], [73.0, 25.0, -18.0]],
                      [[60.2574, -34.0099, 36.2677], [60.4626, -34.1751, 39.4387]]])
    assert np.allclose(ciede2000(pairs[:, 0], pairs[:, 1]), [2.0425, 2.3669, 31.9030, 27.1492, 1.2644], atol=1e-4)
    rng = np.random.default_rng(3)
    rgb1, rgb2 = rng.integers(0, 256, (2, 500, 3), dtype=np.uint8)
    assert np.allclose(rgb_to_lab(rgb1), rgb2lab(rgb1[None])[0], atol=1e-9)
    lab1, lab2 = rgb2lab(rgb1[None])[0], rgb2lab(rgb2[None])[0]
    assert np.allclose(ciede2000(lab1, lab2), deltaE_ciede2000(lab1, lab2), atol=1e-9)
    image, changed, mask = _pair(4)
    reference = deltaE_ciede2000(rgb2lab(image), rgb2lab(changed))[mask > 0].mean()
    assert change_ciede2000(image, changed, mask) == pytest.approx(reference, rel=1e-10)
    assert change_ciede2000(image, image, mask) == 0.0


def test_magnitude_without_an_original_records_the_area_only():
    image, changed, mask = _pair(5)
    full = magnitude(image, changed, mask)
    assert set(full) == set(MAGNITUDE_COLUMNS) and all(v is not None for v in full.values())
    assert full["change_ssim"] < 0.9 and full["change_ciede2000"] > 5
    alone = magnitude(None, changed, np.full(mask.shape, 255, np.uint8))
    assert alone == {"area_ratio": 1.0, "change_ssim": None, "change_ciede2000": None}


def test_area_bins_name_their_edges():
    assert area_labels() == ["small(<0.05)", "medium(0.05-0.2)", "large(>=0.2)"]
    assert [area_bin(a) for a in (0.0, 0.049, 0.05, 0.19, 0.2, 1.0)] == [
        "small(<0.05)", "small(<0.05)", "medium(0.05-0.2)", "medium(0.05-0.2)", "large(>=0.2)", "large(>=0.2)"]
    assert area_bin(None) == "" and area_bin(math.nan) == ""
    with pytest.raises(ValueError):
        area_labels((0.3, 0.1))


def test_metric_state_breaks_down_by_area_bin():
    rng = np.random.default_rng(0)
    state = MetricState(bins=100)
    areas = {"s": 0.01, "m": 0.1, "l": 0.5}
    for i in range(30):
        key = "sml"[i % 3]
        mask = np.zeros((16, 16), bool)
        mask[: 1 + i % 8, :8] = True
        state.update(rng.uniform(0, 1, (16, 16)).astype(np.float32), mask, 1, sample_id=f"f{i}", area=areas[key])
    for i in range(6):
        state.update(rng.uniform(0, 1, (16, 16)).astype(np.float32), np.zeros((16, 16), bool), 0, sample_id=f"r{i}")
    state.update(rng.uniform(0, 1, (16, 16)).astype(np.float32), np.ones((16, 16), bool), 1, sample_id="old")  # no area
    out = state.compute(bootstrap=0)
    assert sorted(out["breakdowns"]["area"]) == sorted(area_labels())
    assert out["counts"]["breakdowns"]["area"]["small(<0.05)"] == {"fakes": 10, "reals": 6}
    assert out["info"]["area_bins"]["edges"] == list(AREA_EDGES)
    assert out["info"]["area_bins"]["labels"] == area_labels()
    small = out["breakdowns"]["area"]["small(<0.05)"]
    assert small["pixel/iou@0.5/mean-of-images/fakes"]["n"] == 10
    # the state survives a round trip, and one written before the area bins existed still loads
    again = MetricState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again.compute(bootstrap=0)["breakdowns"] == out["breakdowns"]
    old = state.to_dict()
    old["vocab"].pop("area")
    old["ints"].pop("area")
    old["config"].pop("area_bins")
    assert MetricState.from_dict(old).compute(bootstrap=0)["breakdowns"]["area"] == {}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("mag"), images=6)


def test_a_build_records_magnitude_and_eval_breaks_down_by_area(built, tmp_path):
    import datasets

    rows = [r for split in datasets.load_dataset(str(built)).values() for r in split]
    assert rows
    for row in rows:
        if row["label"] == 0:
            assert all(row[c] is None for c in MAGNITUDE_COLUMNS)
            continue
        assert 0 < row["change_ssim"] <= 1 and row["change_ciede2000"] >= 0
        if row["perturbations"] == "[]":  # the area is the mask's before any perturbation
            assert row["area_ratio"] == pytest.approx(area_ratio(np.asarray(row["mask"])))
    res = tmp_path / "noise.json"
    result = CliRunner().invoke(main, ["eval", "noise", "--data", str(built), "--split", "train", "--bootstrap", "0",
                                       "--out", str(res), "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads(res.read_text())
    fakes = [r for r in rows if r["label"] == 1 and r["split"] == "train"]
    assert set(data["breakdowns"]["area"]) == {area_bin(r["area_ratio"]) for r in fakes}
    assert data["info"]["area_bins"]["labels"] == area_labels()


def test_a_dataset_without_the_magnitude_columns_still_scores(built, tmp_path):
    old = tmp_path / "old"
    (old / "data").mkdir(parents=True)
    for shard in sorted((built / "data").glob("train-*.parquet")):
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns(list(MAGNITUDE_COLUMNS)), old / "data" / shard.name)
    shutil.copy(built / "README.md", old / "README.md")
    res = tmp_path / "old.json"
    result = CliRunner().invoke(main, ["eval", "noise", "--data", str(old), "--split", "train", "--bootstrap", "0",
                                       "--out", str(res), "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads(res.read_text())
    assert data["breakdowns"].get("area", {}) == {} and data["breakdowns"]["generator"]
