"""The `bench` commands end to end on tiny data: ls, validate, build, publish, export/import."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dolos_bench.cli import main
from dolos_bench.data.dolos_layout import mask_from_dolos, mask_to_dolos

from helpers import folder_hashes, make_image_folder, textured_image, tiny_recipe


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    recipe = tiny_recipe(root / "r.yaml", make_image_folder(root / "src", n=6))
    out = root / "ds"
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "built 18 samples" in result.output
    return recipe, out


def test_ls_lists_every_kind():
    result = CliRunner().invoke(main, ["ls"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for kind, name in [("generator", "telea"), ("masker", "landmarks"), ("source", "hf"),
                       ("perturbation", "jpeg"), ("localizer", "ela")]:
        assert any(line.split()[:2] == [kind, name] for line in lines), (kind, name)
    only = CliRunner().invoke(main, ["ls", "maskers"])
    # entry lines start in column 0; the parameter lines under each entry are indented
    entries = [line for line in only.output.splitlines() if not line.startswith(" ")]
    assert {line.split()[1] for line in entries} == {"strokes", "boxes", "landmarks", "face-parser", "celebamask-hq"}


def test_validate_ok_and_bad(tmp_path, built):
    recipe, _ = built
    ok = CliRunner().invoke(main, ["validate", str(recipe)])
    assert ok.exit_code == 0 and "ok" in ok.output
    bad = CliRunner().invoke(main, ["validate", str(recipe), "--set", "fakes.per_sorce=2", "--set", "seed=x"])
    assert bad.exit_code == 2
    assert "fakes.per_sorce" in bad.output and "per_source" in bad.output and "seed" in bad.output


def test_build_refuses_finished_folder(built):
    recipe, out = built
    before = folder_hashes(out)
    again = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--quiet"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert folder_hashes(out) == before


def test_bad_recipe_stops_before_any_work(tmp_path, built):
    recipe, _ = built
    out = tmp_path / "never"
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--set", "maskers.0.type=strokez"])
    assert result.exit_code == 2 and "maskers.0.type" in result.output and "strokes" in result.output
    assert not out.exists()


def test_publish_dry_run_lists_files_and_refuses_incomplete(tmp_path, built):
    _, out = built
    result = CliRunner().invoke(main, ["publish", str(out), "--repo", "org/tiny", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "README.md" in result.output and "manifest.json" in result.output and ".parquet" in result.output
    assert "would upload" in result.output
    bad_repo = CliRunner().invoke(main, ["publish", str(out), "--repo", "no-slash", "--dry-run"])
    assert bad_repo.exit_code == 2 and "ORG/NAME" in bad_repo.output
    # a manifest saying incomplete, or a shard that no longer matches, is refused
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder_hashes(out):
        (broken / f).parent.mkdir(parents=True, exist_ok=True)
        (broken / f).write_bytes((out / f).read_bytes())
    shard = sorted((broken / "data").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes() + b"x")
    refused = CliRunner().invoke(main, ["publish", str(broken), "--repo", "org/tiny", "--dry-run"])
    assert refused.exit_code == 2 and "does not match its sha256" in refused.output
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["complete"] = False
    (broken / "manifest.json").write_text(json.dumps(manifest))
    refused = CliRunner().invoke(main, ["publish", str(broken), "--repo", "org/tiny"])
    assert refused.exit_code == 2 and "incomplete" in refused.output


def test_publish_uploads_through_huggingface_hub(monkeypatch, built):
    """The upload call itself (no network here): the client gets exactly the dataset files."""
    _, out = built
    calls: dict = {}

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls["create"] = (repo_id, kw)

        def upload_folder(self, **kw):
            calls["upload"] = kw
            return "https://hub.example/commit/1"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    result = CliRunner().invoke(main, ["publish", str(out), "--repo", "org/tiny", "--private"])
    assert result.exit_code == 0, result.output
    assert calls["create"] == ("org/tiny", {"repo_type": "dataset", "private": True, "exist_ok": True})
    patterns = calls["upload"]["allow_patterns"]
    assert "README.md" in patterns and "manifest.json" in patterns
    assert all(not p.startswith(".dolos-build") for p in patterns)


def test_dolos_export_import_round_trip(tmp_path, built):
    _, out = built
    exported = tmp_path / "dolos"
    result = CliRunner().invoke(main, ["export", str(out), "--format", "dolos", "--out", str(exported)])
    assert result.exit_code == 0, result.output
    assert (exported / "real" / "train").is_dir() or (exported / "real" / "test").is_dir()
    fake_masks = sorted(exported.glob("fake/*/masks/*/*.png"))
    assert fake_masks
    original = {r["id"]: r for split in datasets.load_dataset(str(out)).values() for r in split}
    for mask_path in fake_masks:
        dolos_mask = np.asarray(Image.open(mask_path))
        ours = np.asarray(original[mask_path.stem]["mask"])
        assert dolos_mask.ndim == 3 and np.array_equal(dolos_mask[..., 0] == 255, ours == 0)
    back = tmp_path / "back"
    result = CliRunner().invoke(main, ["import", str(exported), "--out", str(back)])
    assert result.exit_code == 0, result.output
    # the import keeps the exported ids (they used to come back as source_id)
    imported = {r["id"]: r for split in datasets.load_dataset(str(back)).values() for r in split}
    assert len(imported) == len(original)
    for sid, row in original.items():
        assert np.array_equal(np.asarray(imported[sid]["mask"]), np.asarray(row["mask"]))
        assert np.array_equal(np.asarray(imported[sid]["image"]), np.asarray(row["image"]))
        assert imported[sid]["label"] == row["label"]


def test_polarity_helpers_are_inverse():
    ours = np.zeros((4, 4), np.uint8)
    ours[1:3, 1:3] = 255
    assert np.array_equal(mask_from_dolos(mask_to_dolos(ours)), ours)


def test_dolos_source_and_hf_source(tmp_path):
    # a Dolos-layout real folder as a build source
    real = tmp_path / "dolos" / "real" / "test"
    real.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(textured_image(i)).save(real / f"{i:05d}.png")
    # a local Hugging Face dataset with an id column
    hf_dir = tmp_path / "hf"
    (hf_dir / "data").mkdir(parents=True)
    ds = datasets.Dataset.from_dict(
        {"picture": [Image.fromarray(textured_image(10 + i)) for i in range(3)], "name": ["x/a", "x/b", "x/c"]},
        features=datasets.Features({"picture": datasets.Image(), "name": datasets.Value("string")}),
    )
    ds.to_parquet(str(hf_dir / "data" / "train-00000-of-00001.parquet"))
    recipe = tiny_recipe(
        tmp_path / "r.yaml", tmp_path,
        sources=[
            {"type": "dolos", "path": str(tmp_path / "dolos"), "split": "test"},
            {"type": "hf", "path": str(hf_dir), "image_column": "picture", "id_column": "name", "name": "faces"},
        ],
        fakes={"per_source": 0},
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [r for split in datasets.load_dataset(str(out)).values() for r in split]
    assert sorted(r["id"] for r in rows) == sorted(
        ["dolos-00000-real", "dolos-00001-real", "dolos-00002-real",
         "faces-x__a-real", "faces-x__b-real", "faces-x__c-real"]
    )
    bad = tiny_recipe(tmp_path / "bad.yaml", tmp_path,
                      sources=[{"type": "hf", "path": str(hf_dir), "image_column": "img"}])
    result = CliRunner().invoke(main, ["build", str(bad), "--out", str(tmp_path / "o2"), "--quiet"])
    assert result.exit_code == 2 and "sources.0" in result.output and "no column 'img'" in result.output


def test_leaderboard_command(tmp_path):
    fixtures = sorted((Path(__file__).parent / "data" / "results").glob("*.json"))
    result = CliRunner().invoke(main, ["leaderboard", *map(str, fixtures), "--out", str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    for name in ("index.html", "leaderboard.md", "leaderboard.csv", "leaderboard.json"):
        assert (tmp_path / "site" / name).stat().st_size > 0
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(main, ["leaderboard", str(bad), "--out", str(tmp_path / "s2")])
    assert result.exit_code == 2 and "bad.json" in result.output


def test_eval_command_writes_complete_results(tmp_path, built):
    _, out = built
    res = tmp_path / "res" / "noise.json"
    result = CliRunner().invoke(main, ["eval", "noise", "--data", str(out), "--split", "train",
                                       "--bootstrap", "50", "--out", str(res), "--quiet"])
    assert result.exit_code == 0, result.output
    from dolos_bench.results import load_results

    loaded = load_results(res)
    assert loaded.complete and loaded.counts.samples == len(res.with_suffix(".samples.jsonl").read_text().splitlines())
    assert 0.0 <= loaded.metrics["pixel/auc/pooled/all"].value <= 1.0
    # a predictions folder missing every id: clear error, no results file
    empty = tmp_path / "preds"
    empty.mkdir()
    bad_out = tmp_path / "res" / "bad.json"
    result = CliRunner().invoke(main, ["eval", str(empty), "--data", str(out), "--split", "train",
                                       "--out", str(bad_out), "--quiet"])
    assert result.exit_code == 2 and "missing" in result.output and not bad_out.exists()
    site = tmp_path / "site"
    result = CliRunner().invoke(main, ["leaderboard", str(res), "--out", str(site)])
    assert result.exit_code == 0, result.output and (site / "index.html").exists()
