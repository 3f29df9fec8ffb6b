"""Exact-count recipes (`subsets`): validation, exact counts, shared sources and masks, disjoint
splits, and `bench build --dry-run` (the Dolos recipes' plans equal the paper's Table 1)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from dolos_bench.builder.pipeline import run_build
from dolos_bench.builder.plan import PlanError, build_sources, listing_checker, make_plan
from dolos_bench.builder.recipe import RecipeError, load_recipe, validate_recipe_data
from dolos_bench.cli import main

from helpers import folder_hashes, make_image_folder, textured_image

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "build"


def C(train: int = 0, validation: int = 0, test: int = 0) -> dict[str, int]:
    return {"train": train, "validation": validation, "test": test}


def _recipe(source: Path, **extra) -> dict:
    """Reals, a per_source 2 subset, and a two-generator group, on OpenCV generators."""
    data = {
        "name": "exact", "seed": 3, "resolution": 32,
        "sources": [{"type": "folder", "path": str(source), "name": "src"}],
        "maskers": [{"type": "strokes"}, {"type": "boxes"}],
        "generators": [{"type": "telea", "name": "many"}, {"type": "telea", "name": "g-telea"},
                       {"type": "ns", "name": "g-ns"}],
        "subsets": [{"name": "real", "counts": C(8, 4, 4)},
                    {"generator": "many", "per_source": 2, "counts": C(7, 3, 4)},
                    {"generator": "g-telea", "group": "cross", "counts": C(3, 1, 1)},
                    {"generator": "g-ns", "group": "cross", "counts": C(3, 1, 1)}],
        "output": {"shard_size": 6},
    }
    data.update(extra)
    return data


def _problems(data) -> dict[str, str]:
    with pytest.raises(RecipeError) as info:
        validate_recipe_data(data)
    return dict(info.value.problems)


def test_subset_problems_have_yaml_paths(tmp_path):
    data = _recipe(tmp_path, fakes={"per_source": 2}, splits={"train": 1.0, "validation": 0.0, "test": 0.0})
    data["subsets"][1]["generator"] = "mnay"
    data["subsets"][3]["counts"] = C(3, 1, 2)
    data["subsets"].append({"generator": "g-telea", "counts": C(1)})
    data["subsets"].append({"name": "real2", "group": "x", "counts": C(1)})
    problems = _problems(data)
    assert "Did you mean 'many'" in problems["subsets.1.generator"]
    assert "counts differ" in problems["subsets.3.counts"] and "'g-telea'" in problems["subsets.3.counts"]
    assert "already makes subset 'g-telea'" in problems["subsets.4.generator"]
    assert "fakes only" in problems["subsets.5.group"] and "only one subset" in problems["subsets.5"]
    assert "does not apply" in problems["fakes"] and "does not apply" in problems["splits"]
    assert "makes no subset" in problems["generators.0"]


def test_more_subset_rules(tmp_path):
    data = _recipe(tmp_path, maskers=[])
    data["subsets"][2]["counts"] = C()
    data["subsets"][3]["counts"] = C()
    data["subsets"][1]["counts"] = {"train": -1}
    data["subsets"][0]["counts"] = {"train": 8, "tset": 2}
    problems = _problems(data)
    assert "Did you mean 'test'" in problems["subsets.0.counts.tset"]
    assert "at least one masker" in problems["maskers"]
    assert "at least one sample" in problems["subsets.2.counts"]
    assert "subsets.1.counts.train" in problems
    validate_recipe_data(_recipe(tmp_path))


def test_recipes_without_subsets_keep_their_canonical_form():
    for name in ("quickstart.yaml", "celebahq.yaml"):
        data = yaml.safe_load((RECIPES / name).read_text())
        data["sources"] = [{"type": "sample", "count": 4}]
        data["maskers"] = [{"type": "strokes"}]
        recipe = validate_recipe_data(data)
        assert "subsets" not in json.loads(recipe.canonical_json()) and "subsets" not in recipe.model_dump()


def _build_folder(root: Path) -> Path:
    """16 textured images, one unreadable file and one pixel copy under another name."""
    folder = make_image_folder(root, n=16, size=(40, 40))
    (folder / "a" / "broken.png").write_bytes(b"not an image")
    Image.fromarray(textured_image(3, (40, 40))).save(folder / "b" / "copy-of-3.png")
    return folder


@pytest.fixture(scope="module")
def exact_build(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("exact")
    data = _recipe(_build_folder(root / "src"))
    out = root / "ds"
    report = run_build(validate_recipe_data(data), out)
    return out, {"data": data, "report": report}


def _rows(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for shard in sorted((out / "data").glob("*.parquet")) for row in pq.read_table(shard).to_pylist()]


def test_a_build_makes_exactly_the_counts(exact_build):
    out, info = exact_build
    rows = _rows(out)
    made = Counter((r["generator"], r["split"]) for r in rows)
    for subset in info["data"]["subsets"]:
        label = subset.get("name") or subset["generator"]
        for split, n in subset["counts"].items():
            assert made[label, split] == n, (label, split)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["subsets"]["many"] == {"train": 7, "validation": 3, "test": 4}
    # the unreadable file and the copy were skipped and replaced: the counts stay exact
    skipped = {f["path"]: f for f in manifest["skipped_files"]}
    assert all(f["samples"] == 0 for f in skipped.values()) and "a/broken.png" in skipped
    (copy,) = set(skipped) & {"a/img003.png", "b/copy-of-3.png"}  # the one later in the seeded order
    assert "duplicate of" in skipped[copy]["reason"] and len(skipped) == 2
    assert manifest["counts"]["files"] == {"read": 18, "skipped": 2, "converted": 0, "ignored": 0, "unused": 0}
    assert manifest["skipped"] == []


def test_no_source_in_two_splits_and_groups_share_sources_and_masks(exact_build):
    out, _ = exact_build
    rows = _rows(out)
    splits_of = defaultdict(set)
    for r in rows:
        splits_of[r["source_id"]].add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    # every fake is made from a real of its split (the subsets share the front of the split's pool)
    reals = {(r["split"], r["source_id"]) for r in rows if r["label"] == 0}
    assert {(r["split"], r["source_id"]) for r in rows if r["generator"] in ("g-telea", "g-ns")} <= reals
    by_key = defaultdict(dict)
    for r in rows:
        if r["generator"] in ("g-telea", "g-ns"):
            variant = r["id"].rsplit("-", 1)[1]
            by_key[r["source_id"], variant][r["generator"]] = r
    assert len(by_key) == 5
    for pair in by_key.values():
        assert set(pair) == {"g-telea", "g-ns"}
        assert pair["g-telea"]["mask"]["bytes"] == pair["g-ns"]["mask"]["bytes"]
        assert pair["g-telea"]["masker"] == pair["g-ns"]["masker"]
        assert pair["g-telea"]["image"]["bytes"] != pair["g-ns"]["image"]["bytes"]
    # per_source 2: no image gives more than two fakes of `many`
    assert max(Counter(r["source_id"] for r in rows if r["generator"] == "many").values()) <= 2


def test_an_exact_build_does_not_depend_on_the_worker_count(exact_build, tmp_path):
    out, info = exact_build
    run_build(validate_recipe_data(info["data"]), tmp_path / "w2", workers=2)
    assert folder_hashes(tmp_path / "w2") == folder_hashes(out)


def test_too_few_sources_is_one_clear_error(tmp_path):
    folder = make_image_folder(tmp_path / "few", n=5, size=(40, 40))
    recipe = validate_recipe_data(_recipe(folder))
    with pytest.raises(PlanError, match=r"needs 16 source images .* give 5 usable"):
        make_plan(recipe, build_sources(recipe), check=listing_checker)


def _listing(root: Path, n: int, name: str) -> Path:
    """``n`` empty files named like the dataset's images: any decoding would fail on them."""
    root.mkdir(parents=True)
    for i in range(n):
        (root / name.format(i)).touch()
    return root


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_the_dolos_celebahq_dry_run_equals_the_paper(tmp_path, monkeypatch):
    images = _listing(tmp_path / "CelebAMask-HQ" / "CelebA-HQ-img", 30_000, "{}.jpg")
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    args = ["build", str(RECIPES / "dolos-celebahq.yaml"), "--dry-run", "--json",
            "--set", f"sources.0.path={images}", "--set", f"maskers.0.root={tmp_path / 'CelebAMask-HQ'}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["counts"] == {
        "real": C(9000, 900, 900),
        "repaint-p2": C(30000, 3000, 8500),
        "repaint-p2-9k": C(9000, 900, 900),
        "repaint-ldm": C(9000, 900, 900),
        "lama": C(9000, 900, 900),
        "pluralistic": C(9000, 900, 900),
        "p2": {"train": 9000, "validation": 1000},
    }
    assert plan["sources"]["listed"] == 30_000 and sum(plan["sources"]["used"].values()) == 10_800
    assert {w["stage"].split()[0] for w in plan["weights"]} == {f"generators[{i}]" for i in range(6)}
    for w in plan["weights"]:
        assert set(w) >= {"stage", "param", "value", "present", "where", "catalogue", "problem"}
        assert w["present"] is False and w["problem"]
    assert {w["catalogue"] for w in plan["weights"]} >= {"ldm-celebahq", "big-lama", "pluralistic-celebahq-random"}
    text = CliRunner().invoke(main, args[:3] + args[4:])
    assert text.exit_code == 0 and "30,000 listed" in text.output and "MISSING" in text.output
    assert _files(tmp_path) == before  # nothing written


def test_the_dolos_ffhq_and_modern_recipes_plan_as_stated(tmp_path):
    ffhq = _listing(tmp_path / "ffhq", 12_000, "{:05d}.png")
    parser = tmp_path / "parsing_bisenet.pth"
    parser.touch()
    result = CliRunner().invoke(main, ["build", str(RECIPES / "dolos-ffhq.yaml"), "--dry-run", "--json",
                                       "--set", f"sources.0.path={ffhq}", "--set", f"maskers.0.weights={parser}"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"] == {
        "real": {"train": 9000, "validation": 900}, "repaint-p2": {"train": 30000, "validation": 3000},
        "p2": {"train": 9000, "validation": 1000}}
    celeba = _listing(tmp_path / "celeba", 11_000, "{}.jpg")
    result = CliRunner().invoke(main, ["build", str(RECIPES / "modern-inpainting.yaml"), "--dry-run", "--json",
                                       "--set", f"sources.0.path={celeba}", "--set", f"maskers.0.root={tmp_path}"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)["counts"]
    assert counts == {name: C(9000, 900, 900) for name in ("real", "sd2-inpaint", "sdxl-inpaint", "flux-fill")}


def test_dry_run_of_a_fraction_recipe_and_option_errors(tmp_path):
    folder = make_image_folder(tmp_path / "src", n=6, size=(40, 40))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "f", "sources": [{"type": "folder", "path": str(folder)}],
                                      "maskers": [{"type": "strokes"}], "generators": [{"type": "telea"}],
                                      "splits": {"train": 1.0, "validation": 0.0, "test": 0.0}}))
    result = CliRunner().invoke(main, ["build", str(recipe), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"] == {"real": {"train": 6}, "telea": {"train": 6}}
    assert json.loads(result.output)["weights"] == []
    missing = CliRunner().invoke(main, ["build", str(recipe)])
    assert missing.exit_code == 2 and "--out" in missing.output
    stray = CliRunner().invoke(main, ["build", str(recipe), "--json", "--out", str(tmp_path / "o")])
    assert stray.exit_code == 2 and "--dry-run" in stray.output and not (tmp_path / "o").exists()
    assert load_recipe(recipe).subsets == []
