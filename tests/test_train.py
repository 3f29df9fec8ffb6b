"""The shared trainer (`bench train`, dolos_bench.train): recipes, data order, resume, run folders, errors.

A tiny conv task (defined here) tests what is generic; Patch-Forensics at a tiny width stands in
for a real baseline where BatchNorm and Adam state matter (resume must be exact).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("safetensors")
pytest.importorskip("timm")

from dolos_bench.cli import main  # noqa: E402
from dolos_bench.config import Strict  # noqa: E402
from dolos_bench.registry import LOCALIZERS  # noqa: E402
from dolos_bench.train.localizer import TrainedLocalizer, trainable_task  # noqa: E402
from dolos_bench.train.recipe import TrainRecipeError, load_train_recipe, validate_train_recipe  # noqa: E402
from dolos_bench.train.run import RunFolderError  # noqa: E402
from dolos_bench.train.task import Batch, TrainTask  # noqa: E402
from dolos_bench.train.trainer import TrainInterrupted, fit  # noqa: E402

from helpers import build_tiny, folder_hashes  # noqa: E402

PF = "patch-forensics"


def ensure_patch_forensics() -> None:
    """The entry point is in pyproject; an install made before it was added does not list it yet."""
    if PF not in LOCALIZERS:
        LOCALIZERS.add_lazy(PF, "dolos_baselines.patch_forensics:PatchForensicsLocalizer", "Patch-Forensics")


class TinyConfig(Strict):
    channels: int = 4


class TinyTask(TrainTask):
    """Two convolutions to one logit per pixel: sigmoid map; weak = BCE of the mean logit."""

    name = "tiny-test"
    Config = TinyConfig
    input_size = 32

    def build_model(self) -> Any:
        c = self.config.channels
        return torch.nn.Sequential(torch.nn.Conv2d(3, c, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(c, 1, 3, padding=1))

    def loss(self, model: Any, batch: Batch) -> tuple[Any, dict[str, float]]:
        logits = model(batch.images)
        if self.supervision == "full":
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.masks), {}
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.mean(dim=(1, 2, 3)), batch.labels.float()), {}

    def predict(self, model: Any, images: Any) -> tuple[Any, Any]:
        maps = torch.sigmoid(model(images))
        return maps, maps.mean(dim=(1, 2, 3))


class TinyLocalizer(TrainedLocalizer):
    """The tiny test task as a localizer."""

    name = "tiny-test"
    task: ClassVar[type[TrainTask]] = TinyTask


LOCALIZERS.register("tiny-test")(TinyLocalizer)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 textured images (train 8+8, validation 1+1, test 3+3), one Telea box each, 64x64."""
    root = tmp_path_factory.mktemp("train-data")
    return build_tiny(
        root, "ds", images=12, resolution=64,
        maskers=[{"type": "boxes", "count": [1, 1], "side": [0.45, 0.6], "min_area": 0.15, "max_area": 0.4}],
        generators=[{"type": "telea"}], perturbations={"probability": 0.0, "chains": []},
        splits={"train": 0.5, "validation": 0.25, "test": 0.25})


def recipe(**changes: Any) -> Any:
    base: dict[str, Any] = {
        "name": "unit", "seed": 3, "supervision": "full", "input_size": 32, "batch_size": 4,
        "epochs": 2, "iterations_per_epoch": 3, "optim": {"lr": 0.01}, "log_every": 1,
        "data": {"hflip": 0.5}, "validation": {"metric": "pixel/iou@0.5/mean-of-images/fakes"},
    }
    for key, value in changes.items():
        base[key] = value
    return validate_train_recipe(base)


def pf_task(supervision: str = "full", width: float = 0.25) -> TrainTask:
    ensure_patch_forensics()
    _, task_cls = trainable_task(PF)
    return task_cls(task_cls.Config(width=width, init="default"), supervision)


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.csv").read_text().splitlines()[1:]
    return [float(v) for s, kind, name, v in (line.split(",") for line in lines) if kind == "train" and name == "loss"]


# -- the loop ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("supervision", ["weak", "full"])
def test_loss_falls_on_a_tiny_task(dataset: Path, tmp_path: Path, supervision: str) -> None:
    task = TinyTask(TinyConfig(), supervision)
    r = recipe(supervision=supervision, epochs=1, iterations_per_epoch=30, batch_size=8, optim={"lr": 0.05},
               data={"validation_split": None})
    result = fit(task, r, dataset, tmp_path / "run")
    values = losses(tmp_path / "run")
    assert result.steps == 30 and len(values) == 30
    assert np.mean(values[-5:]) < 0.9 * np.mean(values[:5]), values


def test_run_folder_holds_weights_config_logs(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = fit(pf_task(), recipe(), dataset, out, baseline=PF)
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "finished" and config["kind"] == "train-run" and config["baseline"] == PF
    assert config["task"]["name"] == PF and config["recipe"]["name"] == "unit"
    assert config["recipe_sha256"] == recipe().sha256() and config["data"]["verified"] is True
    assert config["best"]["metric"] == "pixel/iou@0.5/mean-of-images/fakes" and result.best == config["best"]
    assert (out / "model.safetensors").read_bytes() == (out / "best.safetensors").read_bytes()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,kind,name,value"
    assert any(",validation,pixel/iou@0.5/mean-of-images/fakes," in row for row in rows)
    assert sum(",validation,loss," in row for row in rows) == 2  # once per epoch
    assert list((out / "tensorboard").iterdir())
    record = json.loads((out / ".dolos-bench.json").read_text())
    assert {"config.json", "model.safetensors", "metrics.csv"} <= set(record["files"])


def test_resume_equals_an_uninterrupted_run(dataset: Path, tmp_path: Path) -> None:
    r = recipe(checkpoint_every=100)  # no checkpoint except the interruption's and the last
    fit(pf_task(), r, dataset, tmp_path / "whole")
    with pytest.raises(TrainInterrupted) as stopped:
        fit(pf_task(), r, dataset, tmp_path / "cut", stop_after=4)  # after the first epoch's validation
    assert stopped.value.step == 4 and not (tmp_path / "cut" / "model.safetensors").exists()
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["status"] == "running"
    result = fit(pf_task(), r, dataset, tmp_path / "cut")
    assert result.resumed_from == 4 and result.steps == 6
    for name in ("model.safetensors", "best.safetensors"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name

    def numbers(run: Path) -> list[str]:  # every logged number but the throughput, which is a timing
        return [row for row in (run / "metrics.csv").read_text().splitlines() if ",images_per_s," not in row]

    assert numbers(tmp_path / "cut") == numbers(tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / "config.json").read_text())
    cut = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert cut["best"] == whole["best"] and cut["last_validation"] == whole["last_validation"]


def test_batches_depend_only_on_seed_and_step(dataset: Path) -> None:
    from dolos_bench.train.data import StreamDataset, load_rows, stream_positions

    rows = load_rows(str(dataset), "train")
    a = StreamDataset(rows, size=32, mean=(0.5,) * 3, std=(0.5,) * 3, seed=1, hflip=0.5)
    b = StreamDataset(rows, size=32, mean=(0.5,) * 3, std=(0.5,) * 3, seed=1, hflip=0.5)
    step = 7
    first = [a[p][3] for p in stream_positions(step, 4)]
    again = [b[p][3] for p in stream_positions(step, 4)]
    halves = [b[p][3] for rank in (0, 1) for p in stream_positions(step, 4, rank, 2)]
    assert first == again == halves
    epoch = [a.row_at(p) for p in range(len(rows))]
    assert sorted(epoch) == list(range(len(rows)))  # each pass is a permutation of the rows
    assert torch.equal(a[5][0], b[5][0])


# -- the localizer side -----------------------------------------------------------------------------


def test_saved_run_predicts_like_the_trained_model(dataset: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    fit(pf_task(), recipe(data={"validation_split": None}), dataset, out, baseline=PF)
    ensure_patch_forensics()
    loaded = LOCALIZERS.get(PF)(weights=str(out))
    assert loaded.input_size == 32
    live_model = pf_task().build_model()
    live_model.load_state_dict(load_file(str(out / "model.safetensors")))
    live = TrainedLocalizer.from_model(pf_task(), live_model.eval(), "cpu", 32)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    a, b = loaded.predict(images), live.predict(images)
    assert all(np.array_equal(x, y) for x, y in zip(a.maps, b.maps)) and a.scores == b.scores
    # a bare state-dict file (safetensors or torch) with the model config as options: the same maps
    save_file(load_file(str(out / "model.safetensors")), str(tmp_path / "w.safetensors"))
    torch.save(load_file(str(out / "model.safetensors")), tmp_path / "w.pt")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pt"):
        bare = LOCALIZERS.get(PF)(weights=str(path), width=0.25, init="default")
        bare.input_size = 32
        assert all(np.array_equal(x, y) for x, y in zip(bare.predict(images).maps, a.maps))


def test_bench_train_then_eval_and_stress_the_run(dataset: Path, tmp_path: Path) -> None:
    ensure_patch_forensics()
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "name": "cli", "supervision": "full", "model": {"width": 0.25}, "input_size": 32, "batch_size": 4,
        "epochs": 1, "iterations_per_epoch": 3, "validation": {"metric": "loss"}}))
    out = tmp_path / "runs" / "pf"
    runner = CliRunner()
    result = runner.invoke(main, ["train", PF, "--data", str(dataset), "--recipe", str(path), "--out", str(out),
                                  "--set", "seed=5", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "trained patch-forensics for 3 steps" in result.output
    assert json.loads((out / "config.json").read_text())["recipe"]["seed"] == 5
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    res = tmp_path / "eval.json"
    result = runner.invoke(main, ["eval", PF, "--weights", str(out), "--data", str(dataset), "--split", "test",
                                  "--out", str(res), "--quiet", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    data = json.loads(res.read_text())
    assert data["model"]["weights_sha256"] == digest and data["model"]["id"] == PF
    stress = tmp_path / "stress.json"
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "mini", "metric": "pixel/iou@0.5/mean-of-images/fakes", "perturbations": [
        {"name": "jpeg", "chain": "jpeg(quality={severity})", "severities": [50]}]}))
    result = runner.invoke(main, ["stress", PF, "--weights", str(out), "--data", str(dataset), "--split", "test",
                                  "--suite", str(suite), "--out", str(stress), "--quiet", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads(stress.read_text())["model"]["weights_sha256"] == digest


# -- bad input: one clear error, nothing overwritten ------------------------------------------------


def test_recipe_with_unknown_keys_names_their_paths(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "supervision": "full", "optim": {"lr": 0.1, "momentun": 0.9},
                                    "model": {"widht": 1.0}, "epoch": 3}))
    ensure_patch_forensics()
    _, task_cls = trainable_task(PF)
    with pytest.raises(TrainRecipeError) as err:
        load_train_recipe(path, ["validation.metric=pixel/iou"], task_cls)
    paths = {p for p, _ in err.value.problems}
    assert {"optim.momentun", "model.widht", "epoch", "validation.metric"} <= paths
    text = str(err.value)
    assert "Did you mean 'momentum'" in text and "Did you mean 'width'" in text and "from --set" in text
    result = CliRunner().invoke(main, ["train", PF, "--data", str(tmp_path), "--recipe", str(path),
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "optim.momentun: unknown key" in result.output
    assert not (tmp_path / "o").exists()


def test_full_supervision_on_a_dataset_without_masks(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    import io

    from PIL import Image

    def png(seed: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    folder = tmp_path / "nomasks"
    (folder / "data").mkdir(parents=True)
    ds = datasets.Dataset.from_dict(
        {"id": ["a", "b"], "image": [{"bytes": png(0), "path": None}, {"bytes": png(1), "path": None}], "label": [0, 1]},
        features=datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "label": datasets.Value("int64")}))
    ds.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "supervision": "full", "data": {"validation_split": None}}))
    out = tmp_path / "run"
    ensure_patch_forensics()
    result = CliRunner().invoke(main, ["train", PF, "--data", str(folder), "--recipe", str(path), "--out", str(out)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has no masks, which full supervision needs" in errors[0], result.output
    assert not out.exists()


def test_a_checkpoint_of_another_model_is_refused(dataset: Path, tmp_path: Path) -> None:
    from dolos_bench.eval.localizers import load_localizer

    out = tmp_path / "tiny"
    fit(TinyTask(TinyConfig(), "full"), recipe(data={"validation_split": None}, epochs=1), dataset, out, baseline="tiny-test")
    ensure_patch_forensics()
    result = CliRunner().invoke(main, ["eval", PF, "--weights", str(out), "--data", str(dataset), "--split", "test"])
    assert result.exit_code == 2
    assert "is a checkpoint of another model ('tiny-test'), not 'patch-forensics'" in result.output
    assert "bench eval tiny-test --weights" in result.output
    with pytest.raises(Exception, match="do not fit patch-forensics"):
        load_localizer(PF, options={"weights": str(out / "model.safetensors")})


def test_an_interrupted_run_with_another_recipe_is_refused(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(TrainInterrupted):
        fit(pf_task(), recipe(), dataset, out, baseline=PF, stop_after=2)
    before = folder_hashes(out)
    with pytest.raises(RunFolderError, match="holds an interrupted run of another recipe or dataset"):
        fit(pf_task(), recipe(seed=4), dataset, out, baseline=PF)
    assert folder_hashes(out) == before
    # the same refusal from the command line, in one line
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump({**recipe(seed=4).model_dump(mode="json"), "model": {"width": 0.25, "init": "default"}}))
    ensure_patch_forensics()
    result = CliRunner().invoke(main, ["train", PF, "--data", str(dataset), "--recipe", str(path), "--out", str(out)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "interrupted run of another recipe" in result.output and folder_hashes(out) == before


def test_finished_runs_and_foreign_files(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = recipe(epochs=1, data={"validation_split": None})
    fit(pf_task(), r, dataset, out, baseline=PF)
    before = folder_hashes(out)
    with pytest.raises(RunFolderError, match="holds a finished training run; pass --overwrite"):
        fit(pf_task(), r, dataset, out, baseline=PF)
    assert folder_hashes(out) == before
    fit(pf_task(), r, dataset, out, baseline=PF, overwrite=True)
    assert folder_hashes(out)["model.safetensors"] == before["model.safetensors"]  # same recipe, same weights
    (out / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="did not write: notes.txt"):
        fit(pf_task(), r, dataset, out, baseline=PF, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_not_trainable_and_ls_marks_trainable() -> None:
    from dolos_bench.train.localizer import NotTrainableError

    with pytest.raises(NotTrainableError, match="cannot be trained"):
        trainable_task("ela")
    ensure_patch_forensics()
    result = CliRunner().invoke(main, ["ls", "localizers"])
    line = next(row for row in result.output.splitlines() if row.startswith("localizer") and f" {PF} " in row)
    assert "[trainable: bench train]" in line
    assert "[trainable" not in next(row for row in result.output.splitlines() if " ela " in row)


def test_dataloader_workers_do_not_change_the_weights(dataset: Path, tmp_path: Path) -> None:
    r0 = recipe(epochs=1, data={"validation_split": None, "hflip": 0.5, "workers": 0})
    r2 = recipe(epochs=1, data={"validation_split": None, "hflip": 0.5, "workers": 2})
    fit(pf_task(), r0, dataset, tmp_path / "w0")
    fit(pf_task(), r2, dataset, tmp_path / "w2")
    assert (tmp_path / "w0" / "model.safetensors").read_bytes() == (tmp_path / "w2" / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_ctrl_c_keeps_a_checkpoint_and_the_same_command_resumes(dataset: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "name": "sigint", "supervision": "full", "model": {"width": 0.25}, "input_size": 32, "batch_size": 2,
        "epochs": 1, "iterations_per_epoch": 400, "log_every": 1, "data": {"validation_split": None}}))
    out = tmp_path / "run"
    bench = Path(sys.executable).with_name("bench")
    command = [str(bench), "train", "dolos_baselines.patch_forensics:PatchForensicsLocalizer", "--data", str(dataset),
               "--recipe", str(path), "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
            (out / "metrics.csv").exists() and ",train,loss," in (out / "metrics.csv").read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal landed")
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "to resume" in err
    step = json.loads((out / "checkpoints" / "last" / "trainer.json").read_text())["step"]
    assert 0 < step < 400
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed at step {step}" in done.stdout
    assert json.loads((out / "config.json").read_text())["status"] == "finished"


def test_validation_scores_exactly_the_kept_rows(dataset: Path) -> None:
    from dolos_bench.train.data import IndexedSplit, load_rows

    every = load_rows(str(dataset), "train")
    assert every.kept_split() is every.split
    fakes = load_rows(str(dataset), "train", include="fakes")
    view = fakes.kept_split()
    assert isinstance(view, IndexedSplit) and len(view) == len(fakes) == 8
    assert view.column("id") == fakes.ids
    batched = [sample_id for batch in view.batches(3) for sample_id in batch["id"]]
    assert batched == fakes.ids and all(label == 1 for b in view.batches(5) for label in b["label"])
    assert view.select(2, 4).column("id") == fakes.ids[2:4]
    first = load_rows(str(dataset), "train", limit=5)
    assert first.kept_split().column("id") == first.ids
