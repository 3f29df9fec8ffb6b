"""The cross-generator study: one model per generator and per leave-one-out union, scored on each generator.

A tiny dataset built with the OpenCV generators telea and ns; the models are a narrow
Patch-Forensics at 32x32 for a few steps (the study is generic over baselines and generators:
what is tested is the plan, the matrix, the files, the reuse on a second run and the heat map).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("timm")

from click.testing import CliRunner  # noqa: E402

from dolos_bench.cli import main  # noqa: E402
from dolos_bench.data.reader import read_rows  # noqa: E402
from dolos_bench.registry import LOCALIZERS  # noqa: E402
from dolos_bench.report.leaderboard import build_leaderboard, load_study  # noqa: E402
from dolos_bench.results import ResultsError  # noqa: E402
from dolos_bench.train.study import (  # noqa: E402
    StudyError, dataset_generators, load_study_recipe, plan_train_sets,
)

from helpers import build_tiny  # noqa: E402

IOU = "pixel/iou@0.5/mean-of-images/fakes"


def ensure_registered() -> None:
    if "patch-forensics" not in LOCALIZERS:
        LOCALIZERS.add_lazy("patch-forensics", "dolos_baselines.patch_forensics:PatchForensicsLocalizer")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 sources, telea and ns fakes of each (train 4, validation 2, test 2 sources), 64x64."""
    return build_tiny(tmp_path_factory.mktemp("xgen"), "ds", images=8, resolution=64,
                      maskers=[{"type": "boxes", "count": [1, 1], "side": [0.4, 0.6], "min_area": 0.1, "max_area": 0.4}],
                      perturbations={"probability": 0.0, "chains": []})


def study_files(tmp_path: Path) -> Path:
    (tmp_path / "pf.yaml").write_text(yaml.safe_dump({
        "name": "pf-tiny", "seed": 1, "supervision": "full", "model": {"width": 0.25, "init": "default"},
        "input_size": 32, "batch_size": 4, "epochs": 1, "iterations_per_epoch": 3,
        "optim": {"lr": 0.01}, "data": {"validation_split": None, "include": "fakes"}}))
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "xgen-tiny", "baseline": "patch-forensics", "train_recipe": "pf.yaml",
        "leave_one_out": True, "leave_one_out_set": ["epochs=2"], "metric": IOU}))
    return study


def test_the_plan_is_one_model_per_generator_then_one_per_union() -> None:
    sets = plan_train_sets(["a", "b", "c"], leave_one_out=True, leave_one_out_set=["epochs=150"])
    assert [(s.name, s.generators, s.kind) for s in sets] == [
        ("a", ("a",), "single"), ("b", ("b",), "single"), ("c", ("c",), "single"),
        ("w/o a", ("b", "c"), "leave-one-out"), ("w/o b", ("a", "c"), "leave-one-out"),
        ("w/o c", ("a", "b"), "leave-one-out")]
    assert all(s.overrides == ("epochs=150",) for s in sets[3:]) and all(not s.overrides for s in sets[:3])
    assert [s.name for s in plan_train_sets(["a", "b"], leave_one_out=False)] == ["a", "b"]
    with pytest.raises(StudyError, match="at least 2 generators"):
        plan_train_sets(["a"], leave_one_out=True)


def test_the_shipped_recipe_is_the_papers_figure_6() -> None:
    path = Path(__file__).resolve().parents[1] / "recipes" / "train" / "cross-generator.yaml"
    recipe, train = load_study_recipe(path)
    assert recipe.baseline == "patch-forensics" and recipe.leave_one_out and recipe.leave_one_out_set == ["epochs=150"]
    assert recipe.metric == IOU and train.name == "patch-forensics-setup-c.yaml" and train.is_file()


def test_unknown_generators_and_keys_are_clear_errors(dataset: Path, tmp_path: Path) -> None:
    ensure_registered()
    study = study_files(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["train-study", str(study), "--data", str(dataset), "--out", str(tmp_path / "o"),
                                  "--set", "generators=[telea, lama]", "--quiet"])
    assert result.exit_code == 2 and "lama" in result.output and "telea" in result.output
    result = runner.invoke(main, ["train-study", str(study), "--data", str(dataset), "--out", str(tmp_path / "o"),
                                  "--set", "leave_one_uot=false", "--quiet"])
    assert result.exit_code == 2 and "leave_one_uot" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_study_trains_scores_reuses_and_draws_the_heat_map(dataset: Path, tmp_path: Path) -> None:
    ensure_registered()
    assert dataset_generators(dataset, "train") == ["ns", "telea"]
    study, out = study_files(tmp_path), tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(main, ["train-study", str(study), "--data", str(dataset), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "4 models x 2 generators (4 trained, 4 scored now)" in result.output
    summary = json.loads((out / "study.json").read_text())
    names = ["ns", "telea", "w/o ns", "w/o telea"]
    assert [e["name"] for e in summary["train_sets"]] == names and summary["generators"] == ["ns", "telea"]
    assert [e["generators"] for e in summary["train_sets"]] == [["ns"], ["telea"], ["telea"], ["ns"]]
    assert [e["steps"] for e in summary["train_sets"]] == [3, 3, 6, 6]  # leave_one_out_set: epochs=2
    train_fakes = [r["generator"] for r in read_rows(dataset, "train") if r["label"] == 1]
    for entry in summary["train_sets"]:
        run = json.loads((out / entry["run"] / "config.json").read_text())
        assert run["status"] == "finished" and run["recipe"]["data"]["generators"] == entry["generators"]
        assert run["data"]["train_rows"] == sum(g in entry["generators"] for g in train_fakes)  # fakes only
        results = json.loads((out / entry["results"]).read_text())
        assert results["model"]["weights_sha256"] == entry["weights_sha256"]
        for g in summary["generators"]:  # each cell is that generator's test fakes in the model's results
            cell = summary["matrix"][entry["name"]][g]
            assert cell == results["breakdowns"]["generator"][g][IOU]["value"] and 0.0 <= cell <= 1.0
    assert (out / "cross-generator.png").stat().st_size > 0 and (out / "cross-generator.svg").stat().st_size > 0

    # a second run reuses every finished run and its results
    before = (out / "study.json").read_bytes()
    result = runner.invoke(main, ["train-study", str(study), "--data", str(dataset), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "(0 trained, 0 scored now)" in result.output and (out / "study.json").read_bytes() == before

    # the leaderboard draws the train x test heat map when the study is given
    site = tmp_path / "site"
    result = runner.invoke(main, ["leaderboard", *sorted(str(p) for p in (out / "results").glob("*.json")),
                                  "--study", str(out / "study.json"), "--out", str(site)])
    assert result.exit_code == 0, result.output
    assert (site / "plots" / "cross-generator-xgen-tiny.svg").is_file()
    board = json.loads((site / "leaderboard.json").read_text())
    assert board["studies"][0]["train_sets"] == names and board["studies"][0]["values"] == summary["matrix"]
    assert "| w/o telea |" in (site / "leaderboard.md").read_text()
    assert "cross-generator: xgen-tiny" in (site / "index.html").read_text()


def test_leaderboard_refuses_a_file_that_is_not_a_study(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"kind": "eval"}))
    with pytest.raises(ResultsError, match="not a bench train-study summary"):
        load_study(bad)
    with pytest.raises(ResultsError):
        build_leaderboard([bad], tmp_path / "site", studies=[bad])
    assert not (tmp_path / "site").exists()
