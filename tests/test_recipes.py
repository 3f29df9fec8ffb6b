"""Recipe validation: every problem reported with its YAML path, suggestions for typos."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dolos_bench.builder.recipe import RecipeError, apply_overrides, load_recipe, validate_recipe_data
from stage_marks import skip_unless_recipe_stages

ROOT = Path(__file__).resolve().parents[1]


def _base(tmp_path: Path) -> dict:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    return {
        "name": "t",
        "sources": [{"type": "folder", "path": str(tmp_path / "imgs")}],
        "maskers": [{"type": "strokes"}],
        "generators": [{"type": "telea"}],
    }


def _problems(data) -> dict[str, str]:
    with pytest.raises(RecipeError) as info:
        validate_recipe_data(data)
    return dict(info.value.problems)


@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "build").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    if path.name == "quickstart.yaml" or "folder" not in path.read_text():
        skip_unless_recipe_stages(yaml.safe_load(path.read_text()))  # the quickstart's landmarks need `faces`
        load_recipe(path)


def test_minimal_recipe_gets_defaults(tmp_path):
    recipe = validate_recipe_data(_base(tmp_path))
    assert recipe.resolution == 256 and recipe.fakes.per_source == 1 and recipe.seed == 0


def test_every_problem_is_reported_with_its_path(tmp_path):
    data = _base(tmp_path)
    data["resolutoin"] = 128
    data["fakes"] = {"per_sourse": 2}
    data["maskers"][0]["max_aera"] = 0.3
    data["generators"].append({"type": "teela"})
    data["splits"] = {"train": 0.5, "validation": 0.1, "test": 0.1}
    data["output"] = {"shard_size": 0}
    problems = _problems(data)
    assert "did you mean 'resolution'" in problems["resolutoin"].lower()
    assert "per_source" in problems["fakes.per_sourse"]
    assert "max_area" in problems["maskers.0.max_aera"]
    assert "telea" in problems["generators.1.type"]
    assert "add up to 1" in problems["splits"]
    assert "output.shard_size" in problems


def test_bad_stage_values_and_perturbations(tmp_path):
    data = _base(tmp_path)
    data["generators"][0]["radius"] = 0
    data["perturbations"] = {"probability": 0.5, "chains": ["jpeg(quality=300)", "jpge(80)"]}
    data["sources"].append({"type": "folder", "path": str(tmp_path / "missing")})
    problems = _problems(data)
    assert "radius" in problems["generators.0"]
    assert "quality" in problems["perturbations.chains.0"]
    assert "Did you mean" in problems["perturbations.chains.1"]
    assert "not a directory" in problems["sources.1"]


def test_structural_rules(tmp_path):
    data = _base(tmp_path)
    data["maskers"] = []
    assert "at least one masker" in _problems(data)[""]
    data = _base(tmp_path)
    data["generators"] = [{"type": "telea"}, {"type": "telea"}]
    assert "distinct `name`" in _problems(data)[""]
    data["generators"][1]["name"] = "telea-r5"
    validate_recipe_data(data)
    assert "mapping" in _problems(["not", "a", "mapping"])[""]


def test_overrides(tmp_path):
    data = apply_overrides(_base(tmp_path), ["seed=5", "fakes.per_source=3", "maskers.0.type=boxes", "name=x y"])
    recipe = validate_recipe_data(data)
    assert recipe.seed == 5 and recipe.fakes.per_source == 3 and recipe.maskers[0].type == "boxes"
    assert recipe.name == "x y"
    with pytest.raises(RecipeError, match="no list item"):
        apply_overrides(_base(tmp_path), ["maskers.4.type=boxes"])
    with pytest.raises(RecipeError, match="key.sub=value"):
        apply_overrides(_base(tmp_path), ["seed"])


def test_load_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_base(tmp_path)))
    assert load_recipe(good, ["seed=3"]).seed == 3
    assert load_recipe(good).sha256() != load_recipe(good, ["seed=3"]).sha256()
