"""The one training loop every trainable baseline shares: :func:`fit`, on accelerate.

What it owns, so that no baseline copies it: the verified data and a seed-determined batch order
(:mod:`.data`), one process or several under ``accelerate launch``/``torchrun`` (the global batch
is split evenly over processes; gradients are averaged by DDP), bf16 autocast on CUDA, the
optimiser, validation by the recipe's metric (the task's loss, or any ``bench eval`` metric
computed by the eval engine itself on the validation split), best and resume checkpoints, CSV
and TensorBoard logs, progress, and Ctrl-C.

Resume is exact on CPU: a checkpoint holds model, optimiser and every RNG state (accelerate's
``save_state``), the batch of each step is a pure function of ``(seed, step)``, validation runs
under a forked RNG, and the CSV is cut back to what the checkpoint had seen. So an interrupted
run resumed from step ``k`` ends with the same weights, byte for byte, as one never interrupted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import UserError
from ..utils.files import atomic_path, atomic_write_json
from ..utils.versions import package_versions
from .data import StreamDataset, collate, load_rows, stream_positions
from .recipe import LOSS_METRIC, TrainRecipe
from .run import BEST, LAST, METRICS_CSV, TENSORBOARD, WEIGHTS, RunFolder, run_key
from .schedule import LrSchedule
from .task import Batch, TrainTask

if TYPE_CHECKING:
    import torch

__all__ = ["fit", "TrainResult", "TrainInterrupted", "TrainError"]

FORMAT = 1
_VERSIONS = ("torch", "torchvision", "timm", "accelerate", "safetensors", "numpy", "pillow")


class TrainError(UserError, RuntimeError):
    """Training cannot go on (a NaN loss, a batch that does not divide over the processes)."""


class TrainInterrupted(UserError, RuntimeError):
    """Stopped by Ctrl-C (or ``stop_after``) after a checkpoint; the message says how to resume."""

    exit_code = 130

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


@dataclass
class TrainResult:
    """What a finished run reports: its folder, steps, the chosen weights and the last validation."""

    out: Path
    steps: int
    resumed_from: int
    weights: Path
    best: dict[str, Any] | None
    last_validation: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    pretrained_note: str | None = None
    images_per_second: float = 0.0


class _StepSampler:
    """Batches of stream positions for steps ``[start, stop)``: this process's slice of each step."""

    def __init__(self, start: int, stop: int, batch_size: int, rank: int, world: int) -> None:
        self.start, self.stop, self.batch, self.rank, self.world = start, stop, batch_size, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield list(stream_positions(step, self.batch, self.rank, self.world))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


@contextmanager
def _sigint_flag() -> Iterator[dict[str, bool]]:
    """A flag set by the first Ctrl-C (the loop checkpoints and stops at the step's end); the second one kills."""
    flag = {"set": False}
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _precision(recipe: TrainRecipe, device: str) -> str:
    if recipe.precision != "auto":
        return recipe.precision
    return "bf16" if device.startswith("cuda") else "no"


def _step_on_plateau(schedule: LrSchedule, value: float | None, world: int) -> None:
    """Step a plateau phase with the main process's validation value, the same on every process."""
    if world > 1:
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box)
        value = box[0]
    schedule.on_validation(value)


def _make_optimizer(recipe: TrainRecipe, params: Any) -> "torch.optim.Optimizer":
    import torch

    o = recipe.optim
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


class _Logs:
    """metrics.csv (long format: step, kind, name, value) and TensorBoard, cut back on resume."""

    def __init__(self, root: Path, start_step: int, csv_bytes: int | None, enabled: bool) -> None:
        self.enabled = enabled
        self.path = root / METRICS_CSV
        self.writer = None
        if not enabled:
            return
        if csv_bytes is not None and self.path.exists():
            with open(self.path, "r+b") as fh:
                fh.truncate(csv_bytes)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.write_text("step,kind,name,value\n")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(root / TENSORBOARD), purge_step=start_step or None)
        except ImportError:  # tensorboard is in the train extra; without it the CSV still has everything
            self.writer = None

    def log(self, step: int, kind: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        for name, value in values.items():
            out.writerow([step, kind, name, f"{float(value):.8g}"])
            if self.writer is not None:
                self.writer.add_scalar(f"{kind}/{name}", float(value), step)
        with open(self.path, "a") as fh:
            fh.write(buf.getvalue())

    def size(self) -> int:
        return self.path.stat().st_size if self.enabled and self.path.exists() else 0

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _save_weights(model: "torch.nn.Module", path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})


def _replace_folder(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target``; the old target goes only after the new one is in place."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)


def _data_key(rows: Any) -> str:
    import hashlib

    return hashlib.sha256(rows.split.origin.content_key().encode()).hexdigest()


def fit(
    task: TrainTask,
    recipe: TrainRecipe,
    data: str | Path,
    out: str | Path,
    *,
    baseline: str | None = None,
    device: str | None = None,
    overwrite: bool = False,
    pretrained: bool | str | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``task`` by ``recipe`` on ``data`` into the run folder ``out``; resume it when it was interrupted.

    ``baseline`` is the localizer name ``bench eval`` will score the run with (default: the task's
    name). ``device``: ``cpu``, ``cuda[:N]`` or ``None`` (CUDA when visible; under ``accelerate
    launch`` each process gets its own). ``pretrained`` overrides the recipe's. ``progress(step,
    total, numbers)`` is called after each step; ``on_note`` receives one-line notes (pretrained
    weights, resume). ``stop_after`` stops after that many steps as Ctrl-C would (tests).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    started = time.perf_counter()
    note = on_note or (lambda text: None)
    baseline = baseline or task.name
    out = Path(out)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda:") and "LOCAL_RANK" not in os.environ:  # one process on a chosen GPU
        torch.cuda.set_device(int(device.partition(":")[2]))
    acc = Accelerator(cpu=device == "cpu", mixed_precision=_precision(recipe, device))
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    if recipe.batch_size % world:
        raise TrainError(f"batch_size {recipe.batch_size} does not divide over {world} processes; use a multiple of {world}")
    size = int(recipe.input_size or task.input_size)
    supervision_full = task.supervision == "full"

    rows = load_rows(str(data), recipe.data.train_split, include=recipe.data.include,
                     limit=recipe.data.limit, need_masks=supervision_full, generators=recipe.data.generators)
    val_rows = None
    if recipe.data.validation_split is not None:
        val_rows = load_rows(str(data), recipe.data.validation_split, limit=recipe.data.validation_limit,
                             generators=recipe.data.generators,
                             need_masks=supervision_full or recipe.validation.metric.startswith("pixel/"))
    elif recipe.validation.metric != LOSS_METRIC or recipe.validation.every:
        note("note: no validation split: the run keeps its last weights")

    key = run_key(baseline, task.identity(), recipe.sha256(), _data_key(rows))
    folder = RunFolder.open(out, key, recipe.name, overwrite=overwrite) if main else RunFolder(out, "resume")
    acc.wait_for_everyone()
    resuming = (out / LAST / "trainer.json").is_file() and (folder.mode == "resume")

    set_seed(recipe.seed)
    model = task.build_model()
    pretrained = recipe.pretrained if pretrained is None else pretrained
    pretrained_note = None
    if pretrained and not resuming:
        pretrained_note = task.load_pretrained(model, None if pretrained is True else str(pretrained))
        note(pretrained_note)
    optimizer = _make_optimizer(recipe, task.parameters(model))
    model, optimizer = acc.prepare(model, optimizer)
    schedule = LrSchedule(recipe, optimizer)
    if schedule.checkpoint_object() is not None:
        acc.register_for_checkpointing(schedule.checkpoint_object())  # saved and restored with the resume checkpoint

    state: dict[str, Any] = {"step": 0, "best": None, "csv_bytes": None, "pretrained_note": pretrained_note}
    if resuming:
        acc.load_state(str(out / LAST))
        state = json.loads((out / LAST / "trainer.json").read_text())
        pretrained_note = state.get("pretrained_note")
        note(f"resuming {out} at step {state['step']} of {recipe.total_steps}")
    start_step, total = int(state["step"]), recipe.total_steps

    if main and not resuming:
        folder.write_config({
            "tool": "dolos-bench", "kind": "train-run", "format": FORMAT, "status": "running",
            "baseline": baseline, "task": task.identity(), "run_key": key,
            "recipe": recipe.model_dump(mode="json"), "recipe_sha256": recipe.sha256(),
            "data": {"location": str(data), "train_split": recipe.data.train_split, "train_rows": len(rows),
                     "validation_split": recipe.data.validation_split,
                     "validation_rows": len(val_rows) if val_rows is not None else 0,
                     "verified": rows.split.origin.verified, "fingerprint": _data_key(rows)},
            "input_size": size, "mean": list(task.mean), "std": list(task.std),
            "pretrained": pretrained_note, "device": str(acc.device), "processes": world,
            "precision": acc.mixed_precision, "versions": package_versions(_VERSIONS, with_python=True),
        })
    logs = _Logs(out, start_step, state.get("csv_bytes"), enabled=main)

    dataset = StreamDataset(rows, size=size, mean=task.mean, std=task.std, seed=recipe.seed,
                            resize=recipe.data.resize, hflip=recipe.data.hflip, augment=recipe.data.augment,
                            geometric=recipe.data.geometric)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_StepSampler(start_step, total, recipe.batch_size, rank, world),
        num_workers=recipe.data.workers, collate_fn=collate)

    def save_checkpoint(step: int) -> None:
        acc.wait_for_everyone()
        if not main:
            return
        logs.flush()
        tmp = out / "checkpoints" / ".last.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        acc.save_state(str(tmp))
        atomic_write_json(tmp / "trainer.json", {**state, "step": step, "csv_bytes": logs.size(),
                                                 "pretrained_note": pretrained_note})
        _replace_folder(tmp, out / LAST)
        folder.record()

    def validate(step: int) -> dict[str, float]:
        assert val_rows is not None
        fork = [acc.device] if acc.device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork):
            numbers = _validate(task, acc.unwrap_model(model), val_rows, recipe, size, acc)
        return numbers

    step = start_step
    seen = 0
    last_val: dict[str, float] = {}
    loop_started = time.perf_counter()
    try:
        with _sigint_flag() as interrupted:
            for images, labels, masks, ids in loader:
                model.train()
                batch = Batch(images.to(acc.device), labels.to(acc.device),
                              None if masks is None else masks.to(acc.device), ids)
                with acc.autocast():
                    loss, parts = task.loss(model, batch)
                if not torch.isfinite(loss.detach()):
                    raise TrainError(f"step {step + 1}: the loss is {float(loss)}; lower optim.lr or check the data")
                acc.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                seen += len(ids) * world
                numbers = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
                if step % recipe.log_every == 0 or step == total:
                    rate = seen / max(time.perf_counter() - loop_started, 1e-9)
                    lrs = {("lr" if i == 0 else f"lr/group{i}"): g["lr"] for i, g in enumerate(optimizer.param_groups)}
                    logs.log(step, "train", {**numbers, **lrs, "images_per_s": rate})  # every group's: stages differ
                if val_rows is not None and (step % recipe.validate_every == 0 or step == total):
                    if main:
                        last_val = validate(step)
                        logs.log(step, "validation", last_val)
                        value = last_val.get(recipe.validation.metric)
                        best = state["best"]
                        better = value is not None and (best is None or (
                            value > best["value"] if recipe.validation.higher_is_better else value < best["value"]))
                        if better:
                            state["best"] = {"step": step, "metric": recipe.validation.metric, "value": value}
                            _save_weights(acc.unwrap_model(model), out / BEST)
                    acc.wait_for_everyone()
                    if schedule.current.name == "plateau":
                        _step_on_plateau(schedule, last_val.get(recipe.validation.metric) if main else None, world)
                schedule.after_step(step)
                if progress is not None and main:
                    progress(step, total, {**numbers, **{f"val {k}": v for k, v in last_val.items()}})
                stopping = interrupted["set"] or (stop_after is not None and step >= stop_after)
                if step % recipe.save_every == 0 or step == total or (stopping and step < total):
                    save_checkpoint(step)
                if stopping and step < total:
                    raise TrainInterrupted(
                        f"interrupted at step {step} of {total}; checkpoint kept in {out / LAST}: run the same"
                        " command again to resume", step)
    finally:
        logs.close()

    result_weights = out / WEIGHTS
    if main:
        if state["best"] is not None and (out / BEST).is_file():
            shutil.copyfile(out / BEST, result_weights)
        else:
            _save_weights(acc.unwrap_model(model), result_weights)
        config = folder.config()
        elapsed = time.perf_counter() - started
        rate = seen / max(time.perf_counter() - loop_started, 1e-9) if seen else 0.0
        config.update({"status": "finished", "steps": step, "best": state["best"], "last_validation": last_val,
                       "weights": WEIGHTS, "seconds_last_session": round(elapsed, 3)})
        folder.write_config(config)
    acc.wait_for_everyone()
    return TrainResult(out=out, steps=step, resumed_from=start_step, weights=result_weights, best=state["best"],
                       last_validation=last_val, seconds=time.perf_counter() - started,
                       pretrained_note=pretrained_note,
                       images_per_second=seen / max(time.perf_counter() - loop_started, 1e-9) if seen else 0.0)


def _validate(task: TrainTask, model: "torch.nn.Module", rows: Any, recipe: TrainRecipe, size: int, acc: Any) -> dict[str, float]:
    """The task's loss on the validation rows, and the eval engine's metrics on the same split."""
    import torch

    from ..eval.protocols import get_protocol
    from ..eval.work import score_split
    from .localizer import TrainedLocalizer

    was_training = model.training
    model.eval()
    dataset = StreamDataset(rows, size=size, mean=task.mean, std=task.std, seed=recipe.seed,
                            resize=recipe.data.resize, train=False)
    total, count = 0.0, 0
    bs = recipe.validation.batch_size
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), bs):
                images, labels, masks, ids = collate([dataset[i] for i in range(start, min(start + bs, len(dataset)))])
                batch = Batch(images.to(acc.device), labels.to(acc.device),
                              None if masks is None else masks.to(acc.device), ids)
                with acc.autocast():
                    loss, _ = task.loss(model, batch)
                total += float(loss) * len(ids)
                count += len(ids)
        numbers: dict[str, float] = {LOSS_METRIC: total / max(count, 1)}
        if rows.masks is not None:
            localizer = TrainedLocalizer.from_model(task, model, str(acc.device), size)
            metrics = score_split(localizer, rows.kept_split(), get_protocol("default"), batch_size=bs).compute(bootstrap=0)["metrics"]
            for name, entry in metrics.items():
                if isinstance(entry, dict) and entry.get("value") is not None:
                    numbers[name] = float(entry["value"])
    finally:
        model.train(was_training)
    return numbers
