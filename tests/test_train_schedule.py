"""The recipe's learning-rate schedule (constant, plateau, cosine): applied, logged, resumed exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("timm")

from dolos_bench.train.recipe import TrainRecipeError, validate_train_recipe  # noqa: E402
from dolos_bench.train.trainer import TrainInterrupted, fit  # noqa: E402
from test_train import dataset, pf_task, recipe  # noqa: E402,F401  (dataset is a fixture)


def logged_lr(run: Path) -> list[float]:
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    return [float(v) for _, kind, name, v in (r.split(",") for r in rows) if kind == "train" and name == "lr"]


def test_constant_is_the_default_and_hashes_as_before() -> None:
    r = recipe()
    assert r.schedule.name == "constant"
    assert "schedule" not in json.loads(r.canonical_json())  # earlier runs' recipe hashes still match
    assert "schedule" in json.loads(recipe(schedule={"name": "cosine"}).canonical_json())


def test_cosine_anneals_once_per_epoch(dataset: Path, tmp_path: Path) -> None:
    r = recipe(epochs=3, iterations_per_epoch=2, schedule={"name": "cosine", "min_lr": 0.001})
    fit(pf_task(), r, dataset, tmp_path / "run")
    lr = logged_lr(tmp_path / "run")
    assert lr[:2] == [0.01, 0.01]  # epoch 1 at the recipe's lr; the step after an epoch's last one anneals
    expected = [0.001 + 0.5 * (0.01 - 0.001) * (1 + __import__("math").cos(__import__("math").pi * e / 3)) for e in (1, 2)]
    assert lr[2:4] == pytest.approx([expected[0]] * 2) and lr[4:6] == pytest.approx([expected[1]] * 2)


def test_plateau_steps_on_the_validation_metric(dataset: Path, tmp_path: Path) -> None:
    """The lr after each validation is what torch's ReduceLROnPlateau gives for the logged values."""
    metric = "pixel/iou@0.5/mean-of-images/fakes"
    r = recipe(epochs=5, iterations_per_epoch=1, optim={"lr": 1e-4},
               schedule={"name": "plateau", "factor": 0.5, "patience": 0})
    fit(pf_task(), r, dataset, tmp_path / "run")
    rows = [row.split(",") for row in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    values = [float(v) for _, kind, name, v in rows if kind == "validation" and name == metric]
    replay = torch.optim.lr_scheduler.ReduceLROnPlateau(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-4), mode="max", factor=0.5, patience=0)
    expected = []
    for v in values:
        expected.append(replay.optimizer.param_groups[0]["lr"])  # the step's lr is logged before its validation
        replay.step(v)
    assert len(values) == 5 and logged_lr(tmp_path / "run") == pytest.approx(expected)
    assert min(expected) < 1e-4, values  # a flat or falling IoU did drop it


def test_plateau_needs_a_validation_split() -> None:
    with pytest.raises(TrainRecipeError, match="plateau steps on the validation metric"):
        validate_train_recipe({"name": "x", "supervision": "full", "schedule": {"name": "plateau"},
                               "data": {"validation_split": None}})


def test_resume_restores_the_schedule(dataset: Path, tmp_path: Path) -> None:
    r = recipe(epochs=3, iterations_per_epoch=2, checkpoint_every=100, schedule={"name": "cosine"})
    fit(pf_task(), r, dataset, tmp_path / "whole")
    with pytest.raises(TrainInterrupted):
        fit(pf_task(), r, dataset, tmp_path / "cut", stop_after=3)  # mid-epoch 2, after one annealing step
    fit(pf_task(), r, dataset, tmp_path / "cut")
    assert logged_lr(tmp_path / "cut") == logged_lr(tmp_path / "whole")
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()


PLATEAU_THEN_COSINE = {"name": "plateau", "factor": 0.5, "patience": 0,
                       "phases": [{"from_step": 3, "name": "cosine", "min_lr": 0.001}]}


def test_phases_validate_and_hash_only_when_used() -> None:
    assert "phases" not in json.loads(recipe(schedule={"name": "cosine"}).canonical_json())["schedule"]
    for schedule, words in [
            ({"phases": [{"from_step": 4, "name": "cosine"}, {"from_step": 2, "name": "constant"}]}, "must increase"),
            ({"phases": [{"name": "cosine"}]}, "from_step"),
            ({"phases": [{"from_step": 6, "name": "cosine"}]}, "would never run"),
            ({"phases": [{"from_step": 2, "name": "cosine", "phases": []}]}, "phases")]:
        with pytest.raises(TrainRecipeError, match=words):
            recipe(epochs=3, iterations_per_epoch=2, schedule=schedule)
    with pytest.raises(TrainRecipeError, match="plateau steps on the validation metric"):
        recipe(schedule={"phases": [{"from_step": 2, "name": "plateau"}]}, data={"validation_split": None})


def test_a_later_phase_starts_afresh_from_the_starting_lr(dataset: Path, tmp_path: Path) -> None:
    """Plateau for steps 1-3 (lr may drop), then cosine over the 2 remaining epochs from the recipe's lr."""
    import math

    r = recipe(epochs=5, iterations_per_epoch=1, optim={"lr": 0.01}, schedule=PLATEAU_THEN_COSINE)
    fit(pf_task(), r, dataset, tmp_path / "run")
    lr = logged_lr(tmp_path / "run")
    assert len(lr) == 5 and lr[0] == 0.01 and min(lr[:3]) <= 0.01
    # steps 4 and 5: cosine with T_max = the phase's 2 epochs, from 0.01, stepped after each epoch (1 step)
    assert lr[3] == pytest.approx(0.01)
    assert lr[4] == pytest.approx(0.001 + 0.5 * (0.01 - 0.001) * (1 + math.cos(math.pi * 1 / 2)))


def test_resume_inside_a_later_phase_equals_an_uninterrupted_run(dataset: Path, tmp_path: Path) -> None:
    r = recipe(epochs=3, iterations_per_epoch=2, optim={"lr": 0.01}, checkpoint_every=100,
               schedule={"name": "cosine", "phases": [{"from_step": 2, "name": "cosine", "min_lr": 0.002}]})
    fit(pf_task(), r, dataset, tmp_path / "whole")
    for stop in (1, 3):  # before the phase starts, and inside it after one of its annealing steps
        cut = tmp_path / f"cut{stop}"
        with pytest.raises(TrainInterrupted):
            fit(pf_task(), r, dataset, cut, stop_after=stop)
        fit(pf_task(), r, dataset, cut)
        assert logged_lr(cut) == logged_lr(tmp_path / "whole")
        assert (cut / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    lr = logged_lr(tmp_path / "whole")
    assert lr[2] == pytest.approx(0.01) and lr[4] < lr[2]  # back to the start at step 3, annealing after
