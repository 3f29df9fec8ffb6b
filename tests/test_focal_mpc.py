"""FOCAL and MPC on the shared trainer: losses, stages, over-fit through `bench train`/`bench eval`, save/load, fusion.

Networks are the tiny HRNet (8/16/32/64 channels) and a 2-block ViT; images are 64x64 (unit
tests) or a 6-image Telea dataset at 128x128 input (end-to-end, marked slow).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("hdbscan")
pytest.importorskip("accelerate")

from dolos_baselines.focal.localizer import FocalLocalizer, FocalOptionError  # noqa: E402
from dolos_baselines.focal.loss import image_info_nce, info_nce  # noqa: E402
from dolos_baselines.focal.task import FocalConfig, FocalTask  # noqa: E402
from dolos_baselines.mpc import MPCConfig, MPCLocalizer, MPCTask  # noqa: E402
from dolos_bench.cli import main  # noqa: E402
from dolos_bench.registry import LOCALIZERS  # noqa: E402
from dolos_bench.train.task import Batch  # noqa: E402

from helpers import build_tiny  # noqa: E402

FOCAL = "dolos_baselines.focal.localizer:FocalLocalizer"
MPC = "dolos_baselines.mpc:MPCLocalizer"
IOU = "pixel/iou@0.5/mean-of-images/fakes"


def synthetic_batch(n: int = 4, size: int = 64) -> Batch:
    """Noise images whose forged box is brighter; the last image is authentic (no forged pixel)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=gen) * 0.5
    masks = torch.zeros(n, 1, size, size)
    masks[: n - 1, :, 16:40, 20:44] = 1
    images = images + 0.4 * masks
    return Batch(images, (masks.flatten(1).amax(1) > 0).long(), masks, [f"s{i}" for i in range(n)])


def train_steps(task: Any, model: Any, batch: Batch, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.Adam(task.parameters(model), lr=lr)
    losses = []
    for _ in range(steps):
        model.train()
        loss, _ = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


# -- losses ---------------------------------------------------------------------------------------


def test_info_nce_positive_logit_is_the_mean_cosine_to_the_other_anchors() -> None:
    anchors = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    negatives = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(2)), dim=1)
    sim = anchors @ anchors.T
    pos = torch.stack([torch.cat([sim[i, :i], sim[i, i + 1:]]).mean() for i in range(5)])
    logits = torch.cat([pos[:, None], anchors @ negatives.T], 1) / 0.1
    expected = -torch.log_softmax(logits, 1)[:, 0].mean()
    assert torch.allclose(info_nce(anchors, negatives, 0.1), expected, atol=1e-5)


def test_images_lacking_a_class_are_skipped_without_nan() -> None:
    feats = torch.randn(3, 8, 4, 4, requires_grad=True)
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[1] = True  # all forged: no anchor
    masks[2] = True
    masks[2, 0, 0] = False  # a single pristine pixel: the mean over "the others" would be 0/0
    loss, used = image_info_nce(feats, masks)
    assert used == 0 and float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(feats.grad).all()
    masks[0, :2] = True  # image 0: 8 pristine, 8 forged
    loss, used = image_info_nce(feats, masks)
    assert used == 1 and torch.isfinite(loss) and float(loss.detach()) > 0


@pytest.mark.parametrize("backbone", ["hrnet", "vit"])
def test_focal_loss_falls_in_a_few_cpu_steps(backbone: str) -> None:
    task = FocalTask(FocalConfig(backbone=backbone, arch="tiny"))
    torch.manual_seed(0)
    model = task.build_model()
    losses = train_steps(task, model, synthetic_batch(), steps=8)
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        maps, scores = task.predict(model, synthetic_batch().images)
    grid = 16 if backbone == "hrnet" else 4  # H/4 and H/16
    assert maps.shape == (4, 1, grid, grid) and scores.shape == (4,)
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1


def test_mpc_stage1_loss_has_three_terms_and_falls() -> None:
    task = MPCTask(MPCConfig(arch="tiny", dim=16, samples=500), "full")
    torch.manual_seed(0)
    model = task.build_model()
    _, parts = task.loss(model, synthetic_batch())
    assert parts["images_used"] == 3 and {"loss_intra", "loss_scale", "loss_view"} <= set(parts)
    losses = train_steps(task, model, synthetic_batch(), steps=8)
    assert losses[-1] < 0.5 * losses[0]


def test_mpc_two_passes_differ_by_stochastic_depth_only_in_train_mode() -> None:
    task = MPCTask(MPCConfig(arch="tiny", dim=16, drop_path=0.5), "full")
    torch.manual_seed(0)
    model = task.build_model()
    x = synthetic_batch().images
    model.train()
    assert not torch.allclose(model.project(x)[0], model.project(x)[0])
    model.eval()
    assert torch.equal(model.project(x)[0], model.project(x)[0])


def test_mpc_stage2_trains_the_head_on_a_frozen_encoder_in_eval_mode() -> None:
    task = MPCTask(MPCConfig(arch="tiny", dim=16, stage=2), "full")
    torch.manual_seed(0)
    model = task.build_model()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.") and k != "steps_done"}
    losses = train_steps(task, model, synthetic_batch(), steps=8, lr=1e-2)
    assert losses[-1] < 0.8 * losses[0]
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # weights and BatchNorm statistics
    assert {id(p) for p in task.parameters(model)} == {id(p) for p in model.head.parameters()}


def test_mpc_both_switches_stage_at_its_step_count() -> None:
    task = MPCTask(MPCConfig(arch="tiny", dim=16, stage="both", stage1_steps=2, stage2_lr=1e-2), "full")
    model = task.build_model()
    groups = task.parameters(model)
    assert groups[1]["lr"] == 1e-2
    seen = []
    for _ in range(4):
        seen.append(task.stage_of(model))
        model.train()
        task.loss(model, synthetic_batch())
    assert seen == [1, 1, 2, 2] and int(model.steps_done) == 4
    model.eval()
    task.loss(model, synthetic_batch())  # validation does not count
    assert int(model.steps_done) == 4
    with pytest.raises(ValueError, match="stage1_steps"):
        MPCConfig(stage="both")


# -- end to end: bench train, bench eval, save / load ---------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 textured 64x64 images with one Telea-filled box each; everything in the train split."""
    root = tmp_path_factory.mktemp("focal-mpc-data")
    return build_tiny(
        root, "ds", images=6, resolution=64,
        maskers=[{"type": "boxes", "count": [1, 1], "side": [0.45, 0.6], "min_area": 0.15, "max_area": 0.4}],
        generators=[{"type": "telea"}], perturbations={"probability": 0.0, "chains": []},
        splits={"train": 1.0, "validation": 0.0, "test": 0.0})


def train(dataset: Path, tmp_path: Path, spec: str, model: dict[str, Any], steps: int, name: str,
          extra: tuple[str, ...] = ()) -> Path:
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": name, "supervision": "full", "model": model, "input_size": 128, "batch_size": 6, "epochs": 1,
        "iterations_per_epoch": steps, "optim": {"name": "adam", "lr": 3e-3},
        "data": {"validation_split": None, "include": "fakes"}, "log_every": 5}))
    out = tmp_path / "runs" / name
    result = CliRunner().invoke(main, ["train", spec, "--data", str(dataset), "--recipe", str(recipe), "--out", str(out),
                                       "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return out


def evaluate(dataset: Path, tmp_path: Path, spec: str, run: Path, *model_args: str) -> dict[str, Any]:
    out = tmp_path / f"{run.name}-eval.json"
    args = ["eval", spec, "--weights", str(run), "--data", str(dataset), "--split", "train", "--out", str(out),
            "--quiet", "--bootstrap", "0"]
    for item in model_args:
        args += ["--model-arg", item]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


@pytest.mark.slow
def test_focal_overfits_a_handful_of_images_and_reloads_identically(dataset: Path, tmp_path: Path) -> None:
    run = train(dataset, tmp_path, FOCAL, {"arch": "tiny"}, 60, "focal")
    results = evaluate(dataset, tmp_path, FOCAL, run, "min_cluster_size=40")  # a 32x32 grid: 1,024 points
    assert results["metrics"][IOU]["value"] > 0.8
    images = [np.full((64, 64, 3), 90, np.uint8), np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)]
    first = FocalLocalizer(weights=str(run), min_cluster_size=40)
    assert first.identity()["options"]["clustering"] == "hdbscan-fast"
    a, b = first.predict(images), FocalLocalizer(weights=str(run), min_cluster_size=40).predict(images)
    assert all(np.array_equal(x, y) for x, y in zip(a.maps, b.maps)) and a.maps[0].shape == (32, 32)
    kmeans = FocalLocalizer(weights=str(run), clustering="kmeans").predict(images)
    assert all(m.shape == (32, 32) for m in kmeans.maps)


@pytest.mark.slow
def test_focal_fuses_two_runs_on_the_first_grid(dataset: Path, tmp_path: Path) -> None:
    hrnet = train(dataset, tmp_path, FOCAL, {"arch": "tiny"}, 3, "focal-h")
    vit = train(dataset, tmp_path, FOCAL, {"backbone": "vit", "arch": "tiny"}, 3, "focal-v")
    fused = FocalLocalizer(fuse=f"{vit},{hrnet}", clustering="kmeans")
    assert fused.task_obj.config.backbone == "vit" and len(fused.members) == 1
    images = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8) for i in range(2)]
    first = fused.features(images)
    assert first.shape[1:] == (256, 8, 8)  # ViT at H/16 of 128
    out = fused.predict(images)
    assert [m.shape for m in out.maps] == [(8, 8), (8, 8)]
    assert fused.identity()["fused"][0]["weights_sha256"] is not None
    with pytest.raises(FocalOptionError, match="unknown clustering method"):
        FocalLocalizer(weights=str(hrnet), clustering="spectral")
    # hdbscan-fast clusters where the network runs unless cluster_device says otherwise
    options = FocalLocalizer(weights=str(hrnet)).identity()["options"]
    assert (options["device"], options["rule"], options["min_cluster_size"], options["max_points"]) == (
        "cpu", "largest-pristine", 200, 4096)  # defaults resolved, as the results' model_identity records them
    assert FocalLocalizer(weights=str(hrnet), cluster_device="cuda:1").task_obj.clustering.options["device"] == "cuda:1"
    with pytest.raises(FocalOptionError, match="cluster_device applies to clustering=hdbscan-fast only"):
        FocalLocalizer(weights=str(hrnet), clustering="kmeans", cluster_device="cpu")
    exact = FocalLocalizer(weights=str(hrnet), clustering="hdbscan", approx_min_span_tree=True)
    assert exact.task_obj.clustering.options == {"approx_min_span_tree": True}


@pytest.mark.slow
def test_mpc_two_stages_overfit_a_handful_of_images(dataset: Path, tmp_path: Path) -> None:
    model = {"arch": "tiny", "dim": 16, "samples": 1000}
    stage1 = train(dataset, tmp_path, MPC, {**model, "stage": 1}, 30, "mpc-1")
    stage2 = train(dataset, tmp_path, MPC, {**model, "stage": 2}, 50, "mpc-2", ("--pretrained", str(stage1)))
    assert "encoder and projection heads from" in json.loads((stage2 / "config.json").read_text())["pretrained"]
    results = evaluate(dataset, tmp_path, MPC, stage2)
    assert results["metrics"][IOU]["value"] > 0.8
    images = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8) for i in range(2)]
    a, b = MPCLocalizer(weights=str(stage2)).predict(images), MPCLocalizer(weights=str(stage2)).predict(images)
    assert all(np.array_equal(x, y) for x, y in zip(a.maps, b.maps))
    stage1_maps = MPCLocalizer(weights=str(stage1)).predict(images).maps  # k-means of the projected features
    assert all(m.shape == (32, 32) for m in stage1_maps)


def test_mpc_both_switches_stage_and_schedule_at_the_same_step(dataset: Path, tmp_path: Path) -> None:
    """stage: both with a schedule phase at stage1_steps: the lrs go back to their starts as stage 2 begins."""
    from safetensors.torch import load_file

    recipe = tmp_path / "both.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "both", "supervision": "full", "input_size": 64, "batch_size": 2, "epochs": 3, "iterations_per_epoch": 2,
        "model": {"arch": "tiny", "dim": 8, "samples": 200, "stage": "both", "stage1_steps": 3, "stage2_lr": 1e-2},
        "optim": {"name": "adam", "lr": 3e-3}, "log_every": 1,
        "schedule": {"name": "cosine", "phases": [{"from_step": 3, "name": "cosine"}]},
        "data": {"validation_split": None, "include": "fakes"}}))
    out = tmp_path / "runs" / "both"
    result = CliRunner().invoke(main, ["train", MPC, "--data", str(dataset), "--recipe", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    lr = [float(v) for _, kind, name, v in rows if kind == "train" and name == "lr"]
    # each phase: cosine over its own ceil(3 / 2) = 2 epochs, annealed after each 2 of its steps
    assert lr == pytest.approx([3e-3, 3e-3, 1.5e-3, 3e-3, 3e-3, 1.5e-3])
    head = [float(v) for _, kind, name, v in rows if kind == "train" and name == "lr/group1"]
    assert head == pytest.approx([1e-2, 1e-2, 5e-3, 1e-2, 1e-2, 5e-3])  # stage2_lr, on the same two schedules
    weights = load_file(str(out / "model.safetensors"))
    assert int(weights["steps_done"]) == 6


def test_both_are_registered_in_pyproject() -> None:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'focal = "dolos_baselines.focal.localizer:FocalLocalizer"' in text
    assert 'mpc = "dolos_baselines.mpc:MPCLocalizer"' in text
    for name, cls in (("focal", FocalLocalizer), ("mpc", MPCLocalizer)):
        if name in LOCALIZERS:  # an install made before the entry points were added does not list them
            assert LOCALIZERS.get(name) is cls


def test_stage2_refuses_a_stage1_run_of_another_shape(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from dolos_bench.train.pretrained import WeightsFileError

    stage1 = MPCTask(MPCConfig(arch="tiny", dim=8), "full").build_model()
    save_file({k: v.contiguous() for k, v in stage1.state_dict().items()}, str(tmp_path / "model.safetensors"))
    task = MPCTask(MPCConfig(arch="tiny", dim=16, stage=2), "full")
    with pytest.raises(WeightsFileError, match="arch and dim"):
        task.load_pretrained(task.build_model(), str(tmp_path))
    same = MPCTask(MPCConfig(arch="tiny", dim=8, stage=2), "full")
    model = same.build_model()
    assert "encoder and projection heads" in same.load_pretrained(model, str(tmp_path))
    assert torch.equal(model.proj[0][0].weight, stage1.proj[0][0].weight)


@pytest.mark.parametrize("name, task_cls, size", [
    ("focal-hrnet-256", FocalTask, 256), ("focal-hrnet-1024", FocalTask, 1024), ("focal-vit-1024", FocalTask, 1024),
    ("mpc-stage1-256", MPCTask, 256), ("mpc-stage2-256", MPCTask, 256), ("mpc-stage1-512", MPCTask, 512),
    ("mpc-stage2-512", MPCTask, 512), ("mpc-both-256", MPCTask, 256)])
def test_recipes_hold_the_papers_values(name: str, task_cls: Any, size: int) -> None:
    from dolos_bench.train.recipe import load_train_recipe, task_config

    recipe = load_train_recipe(Path(__file__).resolve().parents[1] / "recipes" / "train" / f"{name}.yaml", task_cls=task_cls)
    config = task_config(task_cls, recipe)
    assert recipe.input_size == size and recipe.batch_size == 4 and recipe.supervision == "full"
    assert recipe.optim.lr == 1e-4 and config.tau == 0.1
    # FOCAL's albumentations geometry (MPC reuses it): RandomScale(-0.5, 0) + REFLECT_101 pad, then OneOf of
    # the four flips/turns, each at 0.75 within a pipeline applied at 0.75; no extra horizontal flip
    scale, dihedral = recipe.data.geometric
    assert (scale.op, scale.factor, scale.pad, scale.p) == ("scale", (0.5, 1.0), "reflect", 0.56)
    assert (dihedral.op, sorted(dihedral.choices), dihedral.p) == ("dihedral", ["hflip", "rot90", "transpose", "vflip"], 0.56)
    assert recipe.data.hflip == 0.0 and [s.op for s in recipe.data.augment] == [
        "jpeg", "blur", "median", "motion-blur", "noise", "brightness-contrast", "gamma"]
    if task_cls is FocalTask:
        assert recipe.optim.name == "adam" and config.samples == 1000
    else:
        assert recipe.optim.name == "adamw" and config.samples == 5000 and config.drop_path == 0.2
        assert (config.alpha, config.gamma) == (0.5, 2.0)
        if config.stage == 2:
            assert recipe.pretrained == f"runs/mpc-stage1-{size}"
        if config.stage == "both":  # each stage on its own schedule, as in MPC's two runs
            (phase,) = recipe.schedule.phases
            assert (recipe.schedule.name, recipe.schedule.patience, recipe.schedule.min_lr) == ("plateau", 3, 1e-8)
            assert (phase.from_step, phase.name, phase.period, phase.min_lr) == (config.stage1_steps, "cosine", 20, 1e-8)


def test_mpc_both_refuses_schedule_phases_that_miss_the_stage_switch() -> None:
    from dolos_bench.train.recipe import TrainRecipeError, validate_train_recipe

    base = {"name": "x", "supervision": "full", "epochs": 4, "iterations_per_epoch": 5,
            "model": {"arch": "tiny", "stage": "both", "stage1_steps": 10}}
    with pytest.raises(TrainRecipeError, match="switches to stage 2 at model.stage1_steps = 10"):
        validate_train_recipe(base | {"schedule": {"phases": [{"from_step": 12, "name": "cosine"}]}}, task_cls=MPCTask)
    for fine in ({"phases": [{"from_step": 10, "name": "cosine"}]}, {"name": "cosine"}):
        validate_train_recipe(base | {"schedule": fine}, task_cls=MPCTask)
