"""Patch-Forensics (the Dolos paper's "Patches"): layout of the released checkpoints, losses, training, pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("accelerate")

from dolos_baselines.patch_forensics import PatchForensicsConfig, PatchForensicsTask, build_patch_xception  # noqa: E402
from dolos_bench.cli import main  # noqa: E402
from dolos_bench.eval.localizers import load_localizer  # noqa: E402
from dolos_bench.train.recipe import validate_train_recipe  # noqa: E402
from dolos_bench.train.task import Batch  # noqa: E402
from dolos_bench.train.trainer import fit  # noqa: E402

from helpers import build_tiny  # noqa: E402
from noisy_task import import_synthetic  # noqa: E402
from test_train import PF, ensure_patch_forensics, losses  # noqa: E402


def _block(name: str, cin: int, cout: int, first: int) -> dict[str, tuple[int, ...]]:
    """One Cadene/customnet Xception Block of two separable convs: skip, skipbn and rep.N.* keys."""
    keys: dict[str, tuple[int, ...]] = {f"{name}.skip.weight": (cout, cin, 1, 1)}
    keys.update({f"{name}.skipbn.{p}": (cout,) for p in ("weight", "bias", "running_mean", "running_var")})
    keys[f"{name}.skipbn.num_batches_tracked"] = ()
    for conv, bn, c_in in ((first, first + 1, cin), (first + 3, first + 4, cout)):
        keys[f"{name}.rep.{conv}.conv1.weight"] = (c_in, 1, 3, 3)
        keys[f"{name}.rep.{conv}.pointwise.weight"] = (cout, c_in, 1, 1)
        keys.update({f"{name}.rep.{bn}.{p}": (cout,) for p in ("weight", "bias", "running_mean", "running_var")})
        keys[f"{name}.rep.{bn}.num_batches_tracked"] = ()
    return keys


def released_layout() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the Dolos authors' Patches checkpoints: customnet.make_patch_xceptionnet("block2").

    Read from bit-ml/dolos (methods/patch_forensics/networks/customnet.py) and chail/patch-forensics
    (models/networks/xception.py): conv1 3x3/s2 3->32, conv2 3x3 32->64, block1 (64->128, reps 2,
    no leading ReLU: rep = [sep, bn, relu, sep, bn, pool]), block2 (128->256, leading ReLU: rep =
    [relu, sep, bn, relu, sep, bn, pool]), then `convout` 1x1 256->2 with a bias.
    """
    keys: dict[str, tuple[int, ...]] = {"conv1.weight": (32, 3, 3, 3), "conv2.weight": (64, 32, 3, 3)}
    for bn, c in (("bn1", 32), ("bn2", 64)):
        keys.update({f"{bn}.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")})
        keys[f"{bn}.num_batches_tracked"] = ()
    keys.update(_block("block1", 64, 128, first=0))
    keys.update(_block("block2", 128, 256, first=1))
    keys.update({"convout.weight": (2, 256, 1, 1), "convout.bias": (2,)})
    return keys


def test_the_network_matches_the_released_checkpoints_layout() -> None:
    model = build_patch_xception()
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == released_layout()
    assert model(torch.zeros(1, 3, 299, 299)).shape == (1, 2, 37, 37)  # the paper's 37x37 patch grid
    assert 185_000 < sum(p.numel() for p in model.parameters()) < 200_000  # ~0.19M


def test_a_state_dict_of_the_released_layout_loads_and_scores(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=gen) * 0.1 if s else torch.tensor(7)) for k, s in released_layout().items()}
    for k in state:
        if k.endswith("running_var"):
            state[k] = state[k].abs() + 0.5
    path = tmp_path / "best_model_12_neg-loss=-0.1234.pt"  # ignite ModelCheckpoint's naming, a bare state dict
    torch.save(state, path)
    ensure_patch_forensics()
    localizer = load_localizer(PF, options={"weights": str(path)})
    assert localizer.identity()["weights_sha256"] and localizer.input_size == 299
    rng = np.random.default_rng(1)
    out = localizer.predict([rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)])
    assert out.maps[0].shape == (37, 37) and out.maps[0].dtype == np.float32
    assert out.scores[0] == pytest.approx(float(out.maps[0].mean()), abs=1e-6)  # image score = mean fake-patch prob


def test_weak_and_full_patch_targets() -> None:
    logits = torch.zeros(2, 2, 4, 4)
    masks = torch.zeros(2, 1, 32, 32)
    masks[1, 0, :16, :8] = 1  # top-left quarter rows, left quarter columns
    batch = Batch(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]), masks, ["r", "f"])
    weak = PatchForensicsTask(PatchForensicsConfig(), "weak").targets(logits, batch)
    assert weak.shape == (2, 4, 4) and (weak[0] == 0).all() and (weak[1] == 1).all()
    full = PatchForensicsTask(PatchForensicsConfig(), "full").targets(logits, batch)
    assert (full[0] == 0).all()
    assert full[1].tolist() == [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_xavier_init_is_the_weak_setups() -> None:
    torch.manual_seed(0)
    xavier = PatchForensicsTask(PatchForensicsConfig(init="xavier"), "weak").build_model()
    default = PatchForensicsTask(PatchForensicsConfig(init="default"), "full").build_model()
    assert not torch.allclose(xavier.bn1.weight, torch.ones(32)) and torch.allclose(default.bn1.weight, torch.ones(32))
    assert float(xavier.conv2.weight.detach().std()) < 0.01 < float(default.conv2.weight.detach().std())  # gain 0.02


@pytest.fixture(scope="module")
def boxes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pf-data")
    return build_tiny(
        root, "ds", images=12, resolution=64,
        maskers=[{"type": "boxes", "count": [1, 1], "side": [0.45, 0.6], "min_area": 0.15, "max_area": 0.4}],
        generators=[{"type": "telea"}], perturbations={"probability": 0.0, "chains": []},
        splits={"train": 0.5, "validation": 0.25, "test": 0.25})


@pytest.mark.parametrize("supervision", ["weak", "full"])
def test_a_few_steps_lower_the_loss(boxes: Path, tmp_path: Path, supervision: str) -> None:
    r = validate_train_recipe({
        "name": "few", "supervision": supervision, "model": {"width": 0.25, "init": "default"}, "input_size": 64,
        "batch_size": 8, "epochs": 1, "iterations_per_epoch": 15, "optim": {"lr": 0.003}, "log_every": 1,
        "data": {"validation_split": None}})
    task = PatchForensicsTask(PatchForensicsConfig(width=0.25, init="default"), supervision)
    fit(task, r, boxes, tmp_path / "run", baseline=PF)
    values = losses(tmp_path / "run")
    assert np.mean(values[-3:]) < 0.7 * np.mean(values[:3]), values


@pytest.mark.slow
def test_overfit_reaches_pixel_iou_above_0_8_through_bench_eval(boxes: Path, tmp_path: Path) -> None:
    ensure_patch_forensics()
    recipe = tmp_path / "overfit.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "overfit", "supervision": "full", "model": {"width": 0.5, "init": "default"}, "input_size": 128,
        "batch_size": 8, "epochs": 1, "iterations_per_epoch": 120, "optim": {"lr": 0.003},
        "data": {"validation_split": None, "limit": 8}}))  # a handful of images: the first 8 training rows
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(main, ["train", PF, "--data", str(boxes), "--recipe", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    res = tmp_path / "eval.json"
    result = runner.invoke(main, ["eval", PF, "--weights", str(out), "--data", str(boxes), "--split", "train",
                                  "--out", str(res), "--quiet", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    iou = json.loads(res.read_text())["metrics"]["pixel/iou@0.5/mean-of-images/fakes"]["value"]
    assert iou > 0.8, iou


# Weak supervision gives every patch its image's label, so a patch that sees only clean texture is
# "fake" in every fake it appears in: with noisy halves it appears in two of a base's four fakes,
# and three identical reals per base make it real by majority (2 against 3). A patch whose
# receptive field (~43 px) reaches the noise is fake in every image it appears in, so the map
# overshoots the forgery's edge by about half a receptive field: IoU 0.72-0.79 at 128x128 (64 px
# halves), 0.872 / 0.878 at 256x256 (seeds 0 / 1; 0.825 / 0.840 in 120 steps).
@pytest.mark.slow
def test_weak_overfit_reaches_pixel_iou_above_0_8_through_bench_eval(tmp_path: Path) -> None:
    ensure_patch_forensics()
    data = import_synthetic(tmp_path / "task", 256, bases=3, shape="halves", reals=3)
    recipe = tmp_path / "weak.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "overfit-weak", "seed": 0, "supervision": "weak", "model": {"width": 0.5, "init": "default"},
        "input_size": 256, "batch_size": 8, "epochs": 1, "iterations_per_epoch": 200, "optim": {"lr": 0.003},
        "data": {"validation_split": None}}))
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(main, ["train", PF, "--data", str(data), "--recipe", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["task"]["supervision"] == "weak"  # image labels only
    res = tmp_path / "eval.json"
    result = runner.invoke(main, ["eval", PF, "--weights", str(out), "--data", str(data), "--split", "test",
                                  "--out", str(res), "--quiet", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(res.read_text())["metrics"]
    assert metrics["pixel/iou@0.5/mean-of-images/fakes"]["value"] > 0.8, metrics["pixel/iou@0.5/mean-of-images/fakes"]
    assert metrics["image/ap/all"]["value"] > 0.95


def test_pretrained_falls_back_to_scratch_offline_and_loads_a_local_file(boxes: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    ensure_patch_forensics()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "pre", "supervision": "weak", "input_size": 64, "batch_size": 2, "epochs": 1,
        "iterations_per_epoch": 1, "data": {"validation_split": None}}))
    real_create = timm.create_model

    def offline(name: str, pretrained: bool = False, **kw):  # what an offline machine answers
        if pretrained:
            raise OSError("<urlopen error [Errno -2] Name or service not known>")
        return real_create(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    runner = CliRunner()
    result = runner.invoke(main, ["train", PF, "--data", str(boxes), "--recipe", str(recipe), "--out",
                                  str(tmp_path / "scratch"), "--pretrained", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "could not be reached" in result.output and "training from scratch" in result.output
    assert "could not be reached" in json.loads((tmp_path / "scratch" / "config.json").read_text())["pretrained"]
    # a local copy of timm's legacy_xception weights (here: a randomly initialised one, saved the real way)
    from safetensors.torch import save_file

    backbone = real_create("legacy_xception", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in backbone.items()}, str(tmp_path / "xception.safetensors"))
    result = runner.invoke(main, ["train", PF, "--data", str(boxes), "--recipe", str(recipe), "--out",
                                  str(tmp_path / "pre"), "--pretrained", str(tmp_path / "xception.safetensors"),
                                  "--set", "optim.lr=1e-12", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "pretrained: 52 of 54 tensors from" in result.output  # everything but the new convout (weight, bias)
    trained = load_localizer(PF, options={"weights": str(tmp_path / "pre")}).model.state_dict()
    assert torch.allclose(trained["conv1.weight"], backbone["conv1.weight"], atol=1e-6)


def test_without_weights_it_warns_and_still_gives_valid_maps() -> None:
    ensure_patch_forensics()
    with pytest.warns(UserWarning, match="untrained network"):
        localizer = load_localizer(PF)
    out = localizer.predict([np.zeros((40, 50, 3), np.uint8), np.full((64, 64, 3), 200, np.uint8)])
    assert [m.shape for m in out.maps] == [(37, 37), (37, 37)]
    assert all(0 <= m.min() and m.max() <= 1 for m in out.maps)


@pytest.mark.parametrize("setup", ["a", "b", "c"])
def test_the_paper_recipes_hold_the_papers_values(setup: str) -> None:
    from dolos_bench.train.recipe import load_train_recipe

    root = Path(__file__).resolve().parents[1] / "recipes" / "train"
    r = load_train_recipe(root / f"patch-forensics-setup-{setup}.yaml", task_cls=PatchForensicsTask)
    assert (r.input_size, r.iterations_per_epoch, r.optim.name, r.optim.lr) == (299, 500, "adam", 1e-3)
    assert r.validation.metric == "loss" and r.pretrained is False
    if setup in "ab":
        assert (r.supervision, r.batch_size, r.epochs, r.data.resize, r.data.hflip) == ("weak", 64, 100, "lanczos", 0.5)
        assert r.model["init"] == "xavier" and r.data.include == "all"
    else:
        assert (r.supervision, r.batch_size, r.epochs, r.data.resize, r.data.hflip) == ("full", 16, 50, "bilinear", 0.0)
        assert r.model["init"] == "default" and r.data.include == "fakes" and r.data.validation_include == "fakes"
    quick = load_train_recipe(root / "quickstart.yaml", task_cls=PatchForensicsTask)
    assert quick.data.validation_split is None and quick.total_steps <= 300
