"""What a build tells about its inputs: duplicates by content, every file once, no silent 0-fake
success, crops of one photo in one split, the quickstart's files, and Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from dolos_bench.builder.manifest import summarize_skips
from dolos_bench.builder.pipeline import BuildInterrupted, build_sources, make_plan, run_build
from dolos_bench.cli import main
from dolos_bench.data.images import pixel_digest
from dolos_bench.data.sources import FolderSource, SampleSource
from stage_marks import skip_unless_recipe_stages
from dolos_bench.builder.recipe import load_recipe

from helpers import folder_hashes, make_image_folder, textured_image, tiny_recipe

ROOT = Path(__file__).resolve().parents[1]

COPIES = ["b/copy.png", "c/copy.bmp", "d/copy.tiff", "e/copy.webp", "f/copy.png", "g/copy.ppm", "h/copy.png"]


def _folder_with_copies(root: Path) -> Path:
    """Six distinct images, and seven copies of a/img001.png under other names and lossless formats."""
    src = make_image_folder(root, n=6)
    original = Image.open(src / "a" / "img001.png")
    for rel in COPIES:
        (src / rel).parent.mkdir(exist_ok=True)
        options = {"lossless": True} if rel.endswith(".webp") else {}
        original.save(src / rel, **options)
    return src


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


# -- item 3: no picture in two splits, by content ------------------------------------------------


def test_copies_of_one_image_end_in_one_split_and_are_named(tmp_path):
    src = _folder_with_copies(tmp_path / "src")
    recipe = tiny_recipe(tmp_path / "r.yaml", src, perturbations={"probability": 0.0})
    out = tmp_path / "out"
    result = _cli("build", str(recipe), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    splits_of: dict[str, set[str]] = defaultdict(set)
    for split, ds in datasets.load_dataset(str(out)).items():
        for row in ds:
            if row["label"] == 0:
                splits_of[pixel_digest(np.asarray(row["image"]))].add(split)
    assert len(splits_of) == 6 and all(len(s) == 1 for s in splits_of.values())
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = {f["path"]: f for f in manifest["skipped_files"]}
    assert sorted(skipped) == sorted(COPIES)
    for entry in skipped.values():
        assert entry["reason"] == "duplicate of a/img001.png (same decoded pixels)" and entry["samples"] == 3
    assert manifest["counts"]["files"] == {"read": 13, "skipped": 7, "converted": 0, "ignored": 0}
    assert "skipped 7 files (21 samples not made): 7× duplicate image" in result.output


def test_duplicates_are_found_by_decoded_pixels_not_bytes_or_names(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pixels = Image.fromarray(textured_image(1, (96, 80)))
    pixels.save(src / "a.png")
    pixels.save(src / "b.bmp")
    pixels.save(src / "c.jpg", quality=95)  # lossy: other pixels, another image
    pixels.convert("L").save(src / "d.png")  # grey: other pixels
    Image.fromarray(textured_image(1, (80, 96))).save(src / "e.png")  # other shape
    other = tmp_path / "other"
    other.mkdir()
    (other / "same.png").write_bytes((src / "a.png").read_bytes())
    recipe = load_recipe(tiny_recipe(
        tmp_path / "r.yaml", src, resolution=64,
        sources=[{"type": "folder", "path": str(src)}, {"type": "folder", "path": str(other), "name": "other"}]))
    plan = make_plan(recipe, build_sources(recipe))
    reasons = {(f["source"], f["path"]): f["reason"] for f in plan.files.skipped}
    assert reasons == {
        ("folder", "b.bmp"): "duplicate of a.png (same decoded pixels)",
        ("other", "same.png"): "duplicate of a.png of source 'folder' (same decoded pixels)",
    }
    assert {s.path for s in plan.samples} == {"a.png", "c.jpg", "d.png", "e.png"}
    assert summarize_skips(plan.files.skipped) == [("duplicate image", 2)]


def test_pixel_digest_covers_shape_and_content():
    image = textured_image(3, (40, 30))
    assert pixel_digest(image) == pixel_digest(image.copy())
    assert pixel_digest(image) != pixel_digest(image.reshape(40, 30, 3))
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    assert pixel_digest(image) != pixel_digest(changed)


def test_duplicate_skips_do_not_depend_on_workers(tmp_path):
    src = _folder_with_copies(tmp_path / "src")
    recipe = load_recipe(tiny_recipe(tmp_path / "r.yaml", src))
    run_build(recipe, tmp_path / "w1")
    run_build(recipe, tmp_path / "w2", workers=2)
    assert folder_hashes(tmp_path / "w1") == folder_hashes(tmp_path / "w2")


# -- item 4: accounting a user can act on ---------------------------------------------------------


def test_every_file_is_listed_once_with_its_relative_path(tmp_path):
    src = make_image_folder(tmp_path / "src", n=4)
    bad = src / "bad"
    bad.mkdir()
    (bad / "zero.png").write_bytes(b"")
    (bad / "garbage.jpg").write_bytes(b"\x00" * 500)
    Image.fromarray(textured_image(6)).convert("L").save(bad / "gray.png")
    (bad / "notes.txt").write_text("not an image")
    (src / "README").write_text("no extension")
    recipe = tiny_recipe(tmp_path / "r.yaml", src, perturbations={"probability": 0.0})
    out = tmp_path / "out"
    result = _cli("build", str(recipe), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(f["path"], f["reason"], f["samples"]) for f in manifest["skipped_files"]] == [
        ("bad/garbage.jpg", "not a readable image (unidentified format)", 3),
        ("bad/zero.png", "empty file (0 bytes)", 3),
    ]
    assert [(c["path"], c["notes"]) for c in manifest["conversions"]] == [("bad/gray.png", ["grayscale converted to RGB"])]
    ignored = {f["path"]: f["reason"] for f in manifest["ignored_files"]}
    assert set(ignored) == {"README", "bad/notes.txt"}
    assert ignored["bad/notes.txt"].startswith("extension '.txt' is not read (reads .jpg, .jpeg, .png")
    assert ignored["README"].startswith("no extension is not read")
    # the per-sample ledger names the file too, and says which samples were lost
    lost = [s for s in manifest["skipped"] if s["path"] == "bad/zero.png"]
    assert sorted(s["label"] for s in lost) == ["fake", "fake", "real"]
    assert manifest["counts"]["files"] == {"read": 7, "skipped": 2, "converted": 1, "ignored": 2}
    assert manifest["counts"]["total"] == 5 * 3 and manifest["warnings"] == []
    first = result.output.splitlines()[0]
    assert first.startswith("read 7 files (2 skipped, 1 converted, 2 ignored) -> built 15 samples (real+fake: ")
    assert "skipped 2 files (6 samples not made): 1× not a readable image; 1× empty file" in result.output
    assert "ignored 2 file(s) the sources do not read, e.g. README" in result.output
    card = (out / "README.md").read_text()
    assert "from\n7 source images; 2 source images\nwere skipped, 1 converted and 2\nother files ignored" in card


def test_folder_source_lists_what_it_ignores(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "clip.mp4").write_bytes(b"")
    source = FolderSource(str(tmp_path), extensions=[".png"])
    assert [i.path for i in source.items()] == ["x.png"]
    assert list(source.ignored()) == [("clip.mp4", "extension '.mp4' is not read (reads .png)")]


def test_sample_failures_name_their_file(tmp_path):
    src = make_image_folder(tmp_path / "src", n=2)
    # an area range random boxes (almost) never reach in one try: every fake fails on its own, the reals are built
    recipe = load_recipe(tiny_recipe(tmp_path / "r.yaml", src, maskers=[{"type": "boxes", "min_area": 0.7, "max_area": 0.75, "max_tries": 1}],
                                     perturbations={"probability": 0.0}))
    report = run_build(recipe, tmp_path / "out")
    assert report.failed and all(f["label"] == "fake" and f["path"].endswith(".png") for f in report.failed)
    assert report.counts["files"]["skipped"] == 0
    assert report.warnings and report.warnings[0].startswith("no fake was built: all 4 planned fakes were skipped (4× ")


def test_no_face_in_any_image_ends_with_a_warning(tmp_path):
    pytest.importorskip("dlib")
    from dolos_bench.builder.masks.landmarks import predictor_file

    try:
        predictor_file()
    except FileNotFoundError:
        pytest.skip("the 68-point predictor (faces extra) is not installed")
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.full((80, 80, 3), 128, np.uint8)).save(src / "flat.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(src / "noise.png")
    recipe = tiny_recipe(tmp_path / "r.yaml", src, maskers=[{"type": "landmarks"}], perturbations={"probability": 0.0})
    out = tmp_path / "out"
    result = _cli("build", str(recipe), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert "skipped 4 samples: 4× no face detected" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        f"warning: no fake was built: all 4 planned fakes were skipped (4× no face detected);"
        f" details in {out}/manifest.json")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] == 4 and manifest["warnings"]
    assert {s["reason"] for s in manifest["skipped"]} == {"no face detected"}
    assert "**Warning:** no fake was built" in (out / "README.md").read_text()


def test_sources_without_images_warn(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "list.csv").write_text("a,b")
    result = _cli("build", str(tiny_recipe(tmp_path / "r.yaml", src)), "--out", str(tmp_path / "out"), "--quiet")
    assert result.exit_code == 0, result.output
    assert "warning: the sources listed no image (1 file(s) ignored: see ignored_files)" in result.stderr


# -- item 9: the quickstart's sample source ------------------------------------------------------


def test_crops_of_one_photo_share_a_split(tmp_path):
    source = SampleSource(count=6)
    assert {i.group for i in source.items()} == {"astronaut", "grace_hopper"}
    src = tmp_path / "unused"
    src.mkdir()
    for seed in range(4):
        recipe = load_recipe(tiny_recipe(tmp_path / "r.yaml", src, sources=[{"type": "sample", "count": 12}],
                                         seed=seed, resolution=64, splits={"train": 0.34, "validation": 0.33, "test": 0.33}))
        splits_of: dict[str, set[str]] = defaultdict(set)
        for sample in make_plan(recipe, build_sources(recipe)).samples:
            splits_of[sample.ref[0]].add(sample.split)
        assert all(len(s) == 1 for s in splits_of.values()), (seed, splits_of)


def test_quickstart_refers_only_to_files_that_exist_and_says_what_it_is(tmp_path):
    text = (ROOT / "recipes" / "build" / "quickstart.yaml").read_text()
    mentioned = re.findall(r"recipes/[\w/.-]+\.yaml", text)
    assert mentioned and all((ROOT / m).is_file() for m in mentioned), mentioned
    celebahq = ROOT / "recipes" / "build" / "celebahq.yaml"
    skip_unless_recipe_stages(yaml.safe_load(celebahq.read_text()))  # its landmarks need the faces extra
    recipe = load_recipe(celebahq, [f"sources.0.path={tmp_path}"])
    assert recipe.sources[0].type == "folder"
    result = _cli("validate", str(celebahq), "--set", f"sources.0.path={tmp_path}")
    assert result.exit_code == 0 and ": ok (" in result.output
    quickstart = load_recipe(ROOT / "recipes" / "build" / "quickstart.yaml")
    assert "crops of two public-domain photos" in quickstart.description
    readme = (ROOT / "README.md").read_text()
    assert "smoke-test\nset: every image is a crop of one of two public-domain photos" in readme


def test_sample_card_says_it_is_a_smoke_test(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path / "r.yaml", tmp_path, sources=[{"type": "sample", "count": 2}],
                                     resolution=64, fakes={"per_source": 0}, perturbations={"probability": 0.0}))
    run_build(recipe, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "**Source `sample`:** a smoke-test set: every image is a crop (some flipped) of one of two photos" in card


# -- item 8: Ctrl-C --------------------------------------------------------------------------------


def test_keyboard_interrupt_keeps_finished_shards_and_writes_no_manifest(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path / "r.yaml", make_image_folder(tmp_path / "src", n=12)))
    run_build(recipe, tmp_path / "ref")
    calls = {"n": 0}

    def press_ctrl_c(done: int, total: int) -> None:
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(BuildInterrupted) as info:
        run_build(recipe, out, progress=press_ctrl_c)
    assert (info.value.kept, info.value.total) == (2, 8) and str(info.value) == "interrupted: 2 of 8 shards kept"
    assert not (out / "manifest.json").exists()
    report = run_build(recipe, out)
    assert report.resumed_shards == 2 and folder_hashes(out) == folder_hashes(tmp_path / "ref")


def test_ctrl_c_in_bench_build_says_what_was_kept_in_one_line(tmp_path):
    # Big enough (600 samples in 100 shards, several seconds) that the signal lands mid-build
    # even when the pipeline is fast: it is sent as soon as the first shard is recorded.
    src = make_image_folder(tmp_path / "src", n=200, size=(140, 140))
    recipe = tiny_recipe(tmp_path / "r.yaml", src, resolution=128, output={"shard_size": 6})
    r = load_recipe(recipe)
    shards = len(make_plan(r, build_sources(r)).shards)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dolos_bench.cli", "build", str(recipe), "--out", str(out), "--workers", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    records = out / ".dolos-build" / "shards"
    while not list(records.glob("*.parquet.json")):  # a finished shard's record (not a temporary file)
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    match = re.fullmatch(r"interrupted: (\d+) of (\d+) shards kept in (.+); run `(.+)` to resume", lines[0])
    assert match and 1 <= int(match[1]) < int(match[2]) == shards and match[3] == str(out), lines[0]
    assert match[4] == f"bench build {recipe} --out {out} --workers 2 --quiet"
    assert not (out / "manifest.json").exists()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {match[1]} shard(s)" in resumed.stdout and (out / "manifest.json").exists()


def test_interrupted_message_when_stopped_while_planning(tmp_path, monkeypatch):
    import dolos_bench.builder.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "make_plan", interrupted)
    recipe = load_recipe(tiny_recipe(tmp_path / "r.yaml", make_image_folder(tmp_path / "src", n=2)))
    with pytest.raises(BuildInterrupted, match="^interrupted while planning, before anything new was written$") as info:
        run_build(recipe, tmp_path / "out")
    assert info.value.total is None and not (tmp_path / "out").exists()
    result = _cli("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--quiet", "--set", "seed=3")
    assert result.exit_code == 130
    assert result.stderr.strip() == (f"interrupted while planning: nothing new written in {tmp_path / 'out'}; run `bench build {tmp_path / 'r.yaml'}"
                                     f" --out {tmp_path / 'out'} --set seed=3 --quiet` to resume")
