"""End-to-end builds on tiny data: format, determinism, resume, and refusal to clobber."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest

from dolos_bench.builder.pipeline import BuildInterrupted, make_plan, build_sources, run_build
from dolos_bench.data.dataset_io import BuildFolderError, STATE_DIR
from dolos_bench.utils.outdir import ForeignFilesError
from dolos_bench.builder.recipe import load_recipe

from helpers import folder_hashes, make_image_folder, tiny_recipe


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("src"), n=12)


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory, source_dir) -> Path:
    return tiny_recipe(tmp_path_factory.mktemp("recipe") / "tiny.yaml", source_dir)


@pytest.fixture(scope="module")
def reference_build(tmp_path_factory, recipe_path) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ds"
    run_build(load_recipe(recipe_path), out)
    return out


def test_output_is_a_hf_dataset_with_features_and_masks(reference_build):
    data = datasets.load_dataset(str(reference_build))
    assert set(data) <= {"train", "validation", "test"}
    total = sum(len(d) for d in data.values())
    manifest = json.loads((reference_build / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["counts"]["total"] == total == 36
    features = data["train"].features
    assert features["label"].names == ["real", "fake"]
    assert isinstance(features["image"], datasets.Image) and isinstance(features["mask"], datasets.Image)
    for split, ds in data.items():
        for row in ds:
            image, mask = np.asarray(row["image"]), np.asarray(row["mask"])
            assert image.ndim == 3 and mask.ndim == 2 and image.shape[:2] == mask.shape
            assert set(np.unique(mask)) <= {0, 255}
            assert row["split"] == split
            if row["label"] == 0:
                assert row["generator"] == "real" and mask.max() == 0
            else:
                assert row["generator"] in {"telea", "ns"} and mask.max() == 255
                assert row["masker"] in {"strokes", "boxes"} and row["parts"]
                assert json.loads(row["generator_config"])["type"] == row["generator"]
            for step in json.loads(row["perturbations"]):
                assert step["name"] in {"jpeg", "resize", "webp", "noise"}
    # shard hashes in the manifest are the files' hashes
    hashes = folder_hashes(reference_build)
    for shard in manifest["shards"]:
        assert hashes[shard["file"]] == shard["sha256"]
    assert not (reference_build / STATE_DIR).exists()


def test_fakes_differ_from_their_real_only_inside_the_mask(reference_build):
    ds = datasets.load_dataset(str(reference_build), split="train")
    rows = {r["id"]: r for r in ds if r["perturbations"] == "[]"}
    checked = 0
    for sid, row in rows.items():
        real_id = sid.rsplit("-", 2)[0] + "-real"
        if row["label"] == 1 and real_id in rows:
            fake, real = np.asarray(row["image"]), np.asarray(rows[real_id]["image"])
            outside = np.asarray(row["mask"]) == 0
            assert np.array_equal(fake[outside], real[outside])
            assert not np.array_equal(fake[~outside], real[~outside])
            checked += 1
    assert checked > 0


def test_splits_are_disjoint_by_source_image(reference_build):
    data = datasets.load_dataset(str(reference_build))
    owners: dict[str, str] = {}
    for split, ds in data.items():
        for source_id in ds["source_id"]:
            assert owners.setdefault(source_id, split) == split


def test_same_recipe_same_bytes_and_workers_do_not_matter(tmp_path, recipe_path, reference_build):
    run_build(load_recipe(recipe_path), tmp_path / "w2", workers=2)
    assert folder_hashes(tmp_path / "w2") == folder_hashes(reference_build)


def test_a_different_seed_gives_different_bytes(tmp_path, recipe_path, reference_build):
    run_build(load_recipe(recipe_path, ["seed=8"]), tmp_path / "s8")
    assert folder_hashes(tmp_path / "s8") != folder_hashes(reference_build)


def test_plan_choices_do_not_depend_on_other_samples(recipe_path, source_dir, tmp_path):
    """Removing one source image leaves every other sample's split and choices unchanged."""
    recipe = load_recipe(recipe_path)
    full = {s.sample_id: s for s in make_plan(recipe, build_sources(recipe)).samples}
    fewer = make_image_folder(tmp_path / "fewer", n=12)
    (fewer / "a" / "img001.png").unlink()
    recipe2 = load_recipe(recipe_path, [f"sources.0.path={fewer}"])
    for s in make_plan(recipe2, build_sources(recipe2)).samples:
        ref = full[s.sample_id]
        assert (s.split, s.chain, s.seed, s.mask_key) == (ref.split, ref.chain, ref.seed, ref.mask_key)


def test_interrupted_build_resumes_to_identical_bytes(tmp_path, recipe_path, reference_build):
    out = tmp_path / "resumed"
    with pytest.raises(BuildInterrupted):
        run_build(load_recipe(recipe_path), out, stop_after_shards=2)
    assert not (out / "manifest.json").exists()
    # a half-written temporary file left by a crash must not matter
    (out / STATE_DIR / "tmp" / "junk.parquet").write_bytes(b"half a shard")
    # a shard corrupted after it was recorded is detected and rebuilt
    first = sorted((out / "data").glob("*.parquet"))[0]
    first.write_bytes(first.read_bytes()[:100])
    report = run_build(load_recipe(recipe_path), out)
    assert report.resumed_shards == 1
    assert folder_hashes(out) == folder_hashes(reference_build)


def test_build_killed_at_random_points_resumes_identically(tmp_path, recipe_path, reference_build):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dolos_bench.cli", "build", str(recipe_path), "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rnd = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(1.0, 3.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if (out / "manifest.json").exists():
            break
    if not (out / "manifest.json").exists():
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    assert folder_hashes(out) == folder_hashes(reference_build)


def test_finished_build_is_not_overwritten_without_flag(tmp_path, recipe_path):
    out = tmp_path / "done"
    run_build(load_recipe(recipe_path, ["fakes.per_source=0"]), out)
    before = folder_hashes(out)
    with pytest.raises(BuildFolderError, match="--overwrite"):
        run_build(load_recipe(recipe_path, ["fakes.per_source=0"]), out)
    with pytest.raises(BuildFolderError, match="--overwrite"):
        run_build(load_recipe(recipe_path), out)
    assert folder_hashes(out) == before
    run_build(load_recipe(recipe_path, ["fakes.per_source=0"]), out, overwrite=True)
    assert folder_hashes(out) == before


def test_unfinished_build_of_another_recipe_is_refused(tmp_path, recipe_path):
    out = tmp_path / "other"
    with pytest.raises(BuildInterrupted):
        run_build(load_recipe(recipe_path), out, stop_after_shards=1)
    with pytest.raises(BuildFolderError, match="different recipe"):
        run_build(load_recipe(recipe_path, ["seed=99"]), out)


def test_foreign_folder_is_refused_and_untouched(tmp_path, recipe_path):
    out = tmp_path / "foreign"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(ForeignFilesError, match="thesis.tex"):
        run_build(load_recipe(recipe_path), out)
    assert (out / "thesis.tex").read_text() == "precious"
    # --overwrite does not make a foreign file ours: still refused, still untouched
    with pytest.raises(ForeignFilesError, match="thesis.tex"):
        run_build(load_recipe(recipe_path, ["fakes.per_source=0"]), out, overwrite=True)
    assert (out / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_random_assignment_and_shared_masks(tmp_path, recipe_path):
    recipe = load_recipe(recipe_path, ["fakes.assignment=random", "fakes.per_source=2", "perturbations.probability=0"])
    plan = make_plan(recipe, build_sources(recipe))
    fakes = [s for s in plan.samples if s.generator_index is not None]
    assert len(fakes) == 2 * 12 and {s.generator_index for s in fakes} == {0, 1}
    shared = load_recipe(recipe_path, ["fakes.share_mask=true", "perturbations.probability=0"])
    out = tmp_path / "shared"
    run_build(shared, out)
    ds = datasets.load_dataset(str(out), split="train")
    masks: dict[str, bytes] = {}
    for row in ds:
        if row["label"] == 1:
            mask = np.asarray(row["mask"]).tobytes()
            assert masks.setdefault(row["source_id"], mask) == mask
