"""Output folders of build, import and export: --overwrite never deletes what the toolkit did not write.

Also the import side of the Dolos layout: ids, generator names and parts survive an export and an
import, the import's card has no `configs:` block, its manifest has a build's keys and shapes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from dolos_bench.builder.importer import import_dolos
from dolos_bench.builder.pipeline import BuildInterrupted, run_build
from dolos_bench.cli import main
from dolos_bench.data.dataset_io import CARD_RECORD, STATE_DIR, BuildFolderError, DatasetFolder
from dolos_bench.data.images import decode_png, encode_png
from dolos_bench.data.dolos_layout import SAMPLES_FILE, DolosLayoutError, export_dolos
from dolos_bench.data.reader import read_rows
from dolos_bench.builder.recipe import load_recipe
from dolos_bench.utils.outdir import RECORD, ForeignFilesError

from helpers import build_tiny, folder_hashes, make_image_folder, textured_image, tiny_recipe

GENERATORS = [{"type": "telea", "name": "Telea v2"}, {"type": "ns"}]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A finished tiny build whose generator label is not a safe folder name and whose boxes have parts."""
    return build_tiny(tmp_path_factory.mktemp("safety"), generators=GENERATORS)


@pytest.fixture(scope="module")
def exported(built, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "dolos"
    result = CliRunner().invoke(main, ["export", str(built), "--format", "dolos", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _user_folder(root: Path) -> Path:
    """A folder a user made: notes, their own parquet under data/, their own README.md."""
    (root / "data").mkdir(parents=True)
    (root / "notes.txt").write_text("my notes")
    (root / "data" / "mine.parquet").write_bytes(b"PAR1 not really")
    (root / "README.md").write_text("# my project\n")
    return root


def _assert_refused_untouched(result, folder: Path, before: dict[str, str], foreign: list[str]) -> None:
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    for name in foreign:
        assert name in message
    assert "--overwrite" not in message
    assert folder_hashes(folder) == before


def _all_rows(folder: Path) -> dict[str, dict]:
    manifest = json.loads((folder / "manifest.json").read_text())
    splits = dict.fromkeys(s["split"] for s in manifest["shards"])
    return {row["id"]: row for split in splits for row in read_rows(folder, split)}


# -- bench build ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_build_never_touches_a_users_folder(tmp_path, flags):
    recipe = tiny_recipe(tmp_path / "r.yaml", make_image_folder(tmp_path / "src", n=4))
    folder = _user_folder(tmp_path / "mine")
    before = folder_hashes(folder)
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(folder), "--quiet", *flags])
    _assert_refused_untouched(result, folder, before, ["notes.txt", "data/mine.parquet", "README.md"])
    assert "did not write" in result.output


def test_build_overwrite_keeps_a_file_added_beside_a_finished_build(tmp_path):
    recipe = tiny_recipe(tmp_path / "r.yaml", make_image_folder(tmp_path / "src", n=4))
    out = tmp_path / "ds"
    run_build(load_recipe(recipe), out)
    (out / "data" / "extra.parquet").write_bytes(b"mine")
    before = folder_hashes(out)
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--quiet", "--overwrite"])
    _assert_refused_untouched(result, out, before, ["data/extra.parquet"])


def test_finished_build_is_refused_then_replaced_with_overwrite(tmp_path):
    recipe = tiny_recipe(tmp_path / "r.yaml", make_image_folder(tmp_path / "src", n=8))
    out = tmp_path / "ds"
    run_build(load_recipe(recipe), out)
    before = folder_hashes(out)
    again = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--quiet",
                                      "--set", "fakes.per_source=0"])
    assert again.exit_code == 2 and "finished build" in again.output and "--overwrite" in again.output
    assert folder_hashes(out) == before
    replaced = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--quiet", "--set",
                                         "fakes.per_source=0", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["splits"] and all(c["fake"] == 0 for c in manifest["counts"]["splits"].values())
    # the old build's shards are gone (fewer samples, fewer shards), nothing else is left
    assert set(folder_hashes(out)) == {"README.md", "manifest.json", *(s["file"] for s in manifest["shards"])}
    assert len(manifest["shards"]) < len([f for f in before if f.startswith("data/")])


def test_interrupted_build_resumes_and_refuses_a_file_added_meanwhile(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path / "r.yaml", make_image_folder(tmp_path / "src", n=8)))
    reference = tmp_path / "ref"
    run_build(recipe, reference)
    out = tmp_path / "ds"
    with pytest.raises(BuildInterrupted):
        run_build(recipe, out, stop_after_shards=1)
    (out / "todo.txt").write_text("added while it was stopped")
    with pytest.raises(ForeignFilesError, match="todo.txt") as refused:
        run_build(recipe, out)
    assert "--overwrite" not in str(refused.value)
    (out / "todo.txt").unlink()
    report = run_build(recipe, out)
    assert report.resumed_shards == 1
    assert folder_hashes(out) == folder_hashes(reference)


def test_crash_between_card_and_manifest_resumes(tmp_path):
    """finish() records the card's hash first: a README.md left by a crash is known as ours."""
    recipe = load_recipe(tiny_recipe(tmp_path / "r.yaml", make_image_folder(tmp_path / "src", n=4)))
    reference = tmp_path / "ref"
    run_build(recipe, reference)
    out = tmp_path / "ds"
    with pytest.raises(BuildInterrupted):
        run_build(recipe, out, stop_after_shards=1)
    card = (reference / "README.md").read_bytes()
    (out / STATE_DIR / CARD_RECORD).write_text(json.dumps({"sha256": hashlib.sha256(card).hexdigest()}))
    (out / "README.md").write_bytes(card)
    run_build(recipe, out)
    assert folder_hashes(out) == folder_hashes(reference)


def test_users_readme_in_an_unfinished_build_is_foreign(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path / "r.yaml", make_image_folder(tmp_path / "src", n=4)))
    out = tmp_path / "ds"
    with pytest.raises(BuildInterrupted):
        run_build(recipe, out, stop_after_shards=1)
    (out / STATE_DIR / CARD_RECORD).write_text(json.dumps({"sha256": "0" * 64}))
    (out / "README.md").write_text("# mine, not the card\n")
    before = folder_hashes(out)
    with pytest.raises(ForeignFilesError, match="README.md"):
        run_build(recipe, out, overwrite=True)
    assert folder_hashes(out) == before


def test_a_manifest_json_that_is_not_ours_is_foreign(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path / "r.yaml", make_image_folder(tmp_path / "src", n=4)))
    out = tmp_path / "ds"
    out.mkdir()
    (out / "manifest.json").write_text('{"shards": [{"file": "data/keep.parquet"}]}')
    (out / "data").mkdir()
    (out / "data" / "keep.parquet").write_bytes(b"theirs")
    before = folder_hashes(out)
    with pytest.raises(ForeignFilesError) as refused:
        run_build(recipe, out, overwrite=True)
    assert "manifest.json" in str(refused.value) and "data/keep.parquet" in str(refused.value)
    assert folder_hashes(out) == before


def test_a_file_is_not_a_folder(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path / "r.yaml", make_image_folder(tmp_path / "src", n=4)))
    (tmp_path / "ds").write_text("x")
    with pytest.raises(BuildFolderError, match="is a file, not a folder"):
        run_build(recipe, tmp_path / "ds")


# -- bench import --------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_import_never_touches_a_users_folder(tmp_path, exported, flags):
    folder = _user_folder(tmp_path / "mine")
    before = folder_hashes(folder)
    result = CliRunner().invoke(main, ["import", str(exported), "--format", "dolos", "--out", str(folder), *flags])
    _assert_refused_untouched(result, folder, before, ["notes.txt", "data/mine.parquet", "README.md"])


def test_import_replaces_an_earlier_import_only_with_overwrite(tmp_path, exported):
    out = tmp_path / "back"
    first = CliRunner().invoke(main, ["import", str(exported), "--out", str(out)])
    assert first.exit_code == 0, first.output
    before = folder_hashes(out)
    again = CliRunner().invoke(main, ["import", str(exported), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert folder_hashes(out) == before
    replaced = CliRunner().invoke(main, ["import", str(exported), "--out", str(out), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert folder_hashes(out) == before  # same input, same bytes


def test_import_round_trip_keeps_ids_generators_and_parts(tmp_path, built, exported):
    out = tmp_path / "back"
    result = CliRunner().invoke(main, ["import", str(exported), "--format", "dolos", "--out", str(out)])
    assert result.exit_code == 0, result.output
    original, back = _all_rows(built), _all_rows(out)
    assert set(back) == set(original)
    assert any(row["generator"] == "Telea v2" for row in back.values())
    assert any(row["parts"] for row in back.values())
    fields = ("generator", "parts", "label", "split", "source", "source_id", "masker", "generator_config",
              "perturbations", "seed")
    for sample_id, row in original.items():
        assert {k: back[sample_id][k] for k in fields} == {k: row[k] for k in fields}, sample_id
        assert back[sample_id]["image"]["bytes"] == row["image"]["bytes"]
    assert "Telea v2" in json.loads((out / "manifest.json").read_text())["counts"]["generators"]


def test_import_card_has_no_configs_block(tmp_path, exported):
    out = tmp_path / "back"
    import_dolos(exported, out)
    card = (out / "README.md").read_text()
    assert "configs:" not in card
    metadata = yaml.safe_load(card.split("---")[1])
    assert "configs" not in metadata and metadata["license"] == "other"
    assert "255 = forged" in card


def test_import_manifest_has_a_builds_keys_and_shapes(tmp_path, built, exported):
    out = tmp_path / "back"
    import_dolos(exported, out)
    build_manifest = json.loads((built / "manifest.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest) - {"imported_from"} == set(build_manifest)
    assert manifest["recipe"] is None and manifest["imported_from"]["layout"] == "dolos"
    assert set(manifest["counts"]) == set(build_manifest["counts"])
    assert manifest["counts"]["splits"] == build_manifest["counts"]["splits"]
    assert manifest["counts"]["generators"] == build_manifest["counts"]["generators"]
    for key in ("shards", "skipped_summary", "conversions", "sources"):
        assert isinstance(manifest[key], list)
    assert set(manifest["shards"][0]) == set(build_manifest["shards"][0])
    assert set(manifest["sources"][0]) == set(build_manifest["sources"][0])
    assert DatasetFolder(out).is_complete()


def _dolos_tree(root: Path) -> Path:
    """Dolos's own data in miniature: the same file name in two generator folders, a full fake,
    a JPEG real, and a partial fake whose mask is missing."""
    size = (32, 32)
    for split, key in (("train", "00001"), ("test", "00002")):
        (root / "real" / split).mkdir(parents=True)
        Image.fromarray(textured_image(int(key), size)).save(root / "real" / split / f"{key}.png")
    (root / "real" / "train" / "Thumbs.db").write_bytes(b"not an image")
    (root / "real" / "valid").mkdir(parents=True)
    Image.fromarray(textured_image(9, size)).save(root / "real" / "valid" / "00009.jpg")
    mask = np.full((32, 32, 3), 255, np.uint8)
    mask[8:16, 8:16] = 0
    for generator in ("lama", "ldm"):
        for sub in ("images", "masks"):
            (root / "fake" / generator / sub / "train").mkdir(parents=True)
        Image.fromarray(textured_image(3, size)).save(root / "fake" / generator / "images" / "train" / "00001-2.png")
        Image.fromarray(mask).save(root / "fake" / generator / "masks" / "train" / "00001-2.png")
    Image.fromarray(textured_image(4, size)).save(root / "fake" / "lama" / "images" / "train" / "00005-0.png")
    (root / "fake" / "p2" / "test").mkdir(parents=True)
    Image.fromarray(textured_image(5, size)).save(root / "fake" / "p2" / "test" / "00007.png")
    return root


def test_import_of_dolos_data_keeps_what_the_layout_carries(tmp_path):
    layout = _dolos_tree(tmp_path / "wacv")
    out = tmp_path / "ds"
    counts = import_dolos(layout, out)
    rows = _all_rows(out)
    # file names repeat across generator folders, so every id is <generator folder>-<file name>
    assert set(rows) == {"real-00001", "real-00002", "real-00009", "lama-00001-2", "ldm-00001-2", "p2-00007"}
    assert rows["ldm-00001-2"]["generator"] == "ldm" and rows["ldm-00001-2"]["split"] == "train"
    assert rows["p2-00007"]["label"] == 1 and rows["real-00009"]["split"] == "validation"
    assert (decode_png(rows["p2-00007"]["mask"]["bytes"]) == 255).all()
    partial = decode_png(rows["lama-00001-2"]["mask"]["bytes"])
    assert (partial[8:16, 8:16] == 255).all() and partial.sum() == 64 * 255
    manifest = json.loads((out / "manifest.json").read_text())
    assert counts == {"total": 6, "skipped": 1, "warnings": []}
    (skip,) = manifest["skipped"]
    assert skip["path"] == "fake/lama/images/train/00005-0.png"
    assert skip["reason"] == "no mask fake/lama/masks/train/00005-0.png"
    assert manifest["conversions"] == [{"source": "dolos", "source_id": "00009", "path": "real/valid/00009.jpg",
                                        "notes": ["re-encoded as PNG"]}]
    assert manifest["skipped_files"] == [{"source": "dolos", "source_id": "00005-0", "samples": 1,
                                          "path": skip["path"], "reason": skip["reason"]}]
    (ignored,) = manifest["ignored_files"]
    assert ignored["path"] == "real/train/Thumbs.db" and ignored["reason"].startswith("extension '.db' is not read")
    assert manifest["counts"]["files"] == {"read": 7, "skipped": 1, "converted": 1, "ignored": 1}
    assert "file names repeat" in manifest["imported_from"]["ids"]


def test_import_that_skips_every_image_warns(tmp_path):
    layout = tmp_path / "d"
    (layout / "fake" / "lama" / "images" / "test").mkdir(parents=True)
    Image.fromarray(textured_image(1, (32, 32))).save(layout / "fake" / "lama" / "images" / "test" / "x.png")
    result = CliRunner().invoke(main, ["import", str(layout), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    assert "imported 0 samples" in result.output
    assert "warning: no sample was imported: all 1 images were skipped (1× no mask fake/lama/masks/test/x.png)" \
        in result.output


def test_import_uses_file_names_as_ids_when_they_are_unique(tmp_path):
    layout = tmp_path / "d"
    (layout / "real" / "test").mkdir(parents=True)
    Image.fromarray(textured_image(1, (32, 32))).save(layout / "real" / "test" / "face-1.png")
    import_dolos(layout, tmp_path / "ds")
    assert set(_all_rows(tmp_path / "ds")) == {"face-1"}


def test_import_refuses_a_malformed_samples_file(tmp_path, exported):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    lines = (copy / SAMPLES_FILE).read_text().splitlines()
    entry = json.loads(lines[1])
    entry["parts"] = "eyes"
    (copy / SAMPLES_FILE).write_text("\n".join([lines[0], json.dumps(entry), "{oops"]) + "\n")
    result = CliRunner().invoke(main, ["import", str(copy), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 2
    assert f"{SAMPLES_FILE} line 2: 'parts' is missing or not a list" in " ".join(result.output.split())
    (copy / SAMPLES_FILE).write_text(lines[0] + "\n{oops\n")
    with pytest.raises(DolosLayoutError, match="line 2: not JSON"):
        import_dolos(copy, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_import_skips_a_duplicate_id_naming_both_files(tmp_path, exported):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    entries = [json.loads(line) for line in (copy / SAMPLES_FILE).read_text().splitlines()]
    entries[1]["id"] = entries[0]["id"]
    (copy / SAMPLES_FILE).write_text("".join(json.dumps(e) + "\n" for e in entries))
    import_dolos(copy, tmp_path / "ds")
    skipped = json.loads((tmp_path / "ds" / "manifest.json").read_text())["skipped"]
    first, second = sorted([entries[0]["file"], entries[1]["file"]])
    assert any(s["reason"] == f"duplicate id (same id as {first})" and s["path"] == second for s in skipped)


def test_import_of_a_folder_that_is_not_a_layout(tmp_path):
    (tmp_path / "x").mkdir()
    result = CliRunner().invoke(main, ["import", str(tmp_path / "x"), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 2 and "neither real/ nor fake/" in result.output
    (tmp_path / "x" / "real").mkdir()
    with pytest.raises(DolosLayoutError, match="holds no images"):
        import_dolos(tmp_path / "x", tmp_path / "ds")


# -- bench export --------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_export_never_touches_a_users_folder(tmp_path, built, flags):
    folder = _user_folder(tmp_path / "mine")
    before = folder_hashes(folder)
    result = CliRunner().invoke(main, ["export", str(built), "--out", str(folder), *flags])
    _assert_refused_untouched(result, folder, before, ["notes.txt", "data/mine.parquet", "README.md"])


def test_export_refuses_an_earlier_export_and_replaces_it_with_overwrite(tmp_path, built, exported):
    out = tmp_path / "again"
    shutil.copytree(exported, out)
    before = folder_hashes(out)
    record = json.loads((out / RECORD).read_text())
    assert record["kind"] == "export" and SAMPLES_FILE in record["files"]
    assert set(record["files"]) | {RECORD} == set(before)
    again = CliRunner().invoke(main, ["export", str(built), "--out", str(out)])
    assert again.exit_code == 2 and "earlier Dolos export" in again.output and "--overwrite" in again.output
    assert folder_hashes(out) == before
    stale = out / "fake" / "gone" / "images" / "test" / "x.png"  # an earlier export's file the new one lacks
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    record["files"].append("fake/gone/images/test/x.png")
    (out / RECORD).write_text(json.dumps(record))
    replaced = CliRunner().invoke(main, ["export", str(built), "--out", str(out), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert folder_hashes(out) == before and not (out / "fake" / "gone").exists()


def test_export_overwrite_keeps_a_file_added_to_an_export(tmp_path, built, exported):
    out = tmp_path / "again"
    shutil.copytree(exported, out)
    (out / "fake" / "notes.md").write_text("mine")
    before = folder_hashes(out)
    result = CliRunner().invoke(main, ["export", str(built), "--out", str(out), "--overwrite"])
    _assert_refused_untouched(result, out, before, ["fake/notes.md"])


def test_export_refuses_two_ids_that_become_one_file_name(tmp_path):
    ds = tmp_path / "ds"
    folder = DatasetFolder(ds)
    folder.prepare("x", ["test-00000-of-00001.parquet"], overwrite=False)
    png = encode_png(textured_image(1, (16, 16)))
    mask = encode_png(np.zeros((16, 16), np.uint8))
    rows = [{"id": sample_id, "image": {"bytes": png, "path": None}, "mask": {"bytes": mask, "path": None},
             "label": 0, "source": "s", "source_id": sample_id, "generator": "real", "generator_config": "{}",
             "masker": "", "parts": [], "perturbations": "[]", "seed": 0, "split": "test"}
            for sample_id in ("a/b", "a__b")]
    record = folder.write_shard("test-00000-of-00001.parquet", "test", rows, [], [])
    folder.finish({"format": "dolos-bench", "complete": True, "shards": [
        {"file": f"data/{record.file}", "split": "test", "rows": 2, "sha256": record.sha256}]}, "card\n")
    with pytest.raises(DolosLayoutError, match="samples 'a/b' and 'a__b' would both be written to real/test/a__b.png"):
        export_dolos(ds, tmp_path / "out")
