"""``bench train``: train a registered trainable baseline on a dataset into a run folder."""

from __future__ import annotations

import shlex
import sys

import click

from .commands import console, main, progress_bar

TRAIN_EPILOG = """\b
Examples:
  bench train patch-forensics --data out/quickstart --recipe recipes/train/quickstart.yaml --out runs/pf
  bench train patch-forensics --data out/qs --recipe recipes/train/patch-forensics-setup-c.yaml \\
      --out runs/pf-c --set epochs=5 --device cuda
  bench eval patch-forensics --weights runs/pf --data out/quickstart --split test
  accelerate launch -m dolos_bench.cli train ...    # several GPUs (the batch is split over them)
"""


def _train_command(baseline: str, data: str, recipe: str, out: str, overrides: tuple[str, ...],
                   device: str | None, pretrained: str | None, quiet: bool) -> str:
    """The command that resumes this run: the same options, never --overwrite."""
    words = ["bench", "train", baseline, "--data", data, "--recipe", recipe, "--out", out]
    for item in overrides:
        words += ["--set", item]
    if device:
        words += ["--device", device]
    if pretrained is not None:
        words += ["--pretrained", pretrained] if pretrained != "timm" else ["--pretrained"]
    if quiet:
        words.append("--quiet")
    return shlex.join(words)


@main.command("train", short_help="Train a baseline on a dataset (resumes if interrupted).", epilog=TRAIN_EPILOG)
@click.argument("baseline")
@click.option("--data", required=True, help="Dataset folder (a finished bench build) or hf://owner/name.")
@click.option("--recipe", required=True, type=click.Path(dir_okay=False), help="Training recipe (recipes/train/*.yaml).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (e.g. runs/NAME).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key (repeatable; the value is YAML), e.g. --set epochs=2.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when visible, else cpu).")
@click.option("--pretrained", is_flag=False, flag_value="timm", default=None, metavar="[FILE]",
              help="Start from pretrained backbone weights: timm's (when reachable) or a local FILE.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run (or an interrupted one of another recipe) in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_command(baseline: str, data: str, recipe: str, out: str, overrides: tuple[str, ...], device: str | None,
                  pretrained: str | None, overwrite: bool, quiet: bool) -> None:
    """Train BASELINE (a registered localizer with a training task) by --recipe on --data into --out.

    An interrupted run (Ctrl-C) keeps a checkpoint; the same command resumes it. The run folder is
    what `bench eval BASELINE --weights OUT` and `bench stress` score.
    """
    from ..eval.localizers import resolve_device
    from ..train.localizer import trainable_task
    from ..train.recipe import load_train_recipe, task_config
    from ..train.trainer import TrainInterrupted, fit

    _, task_cls = trainable_task(baseline)
    r = load_train_recipe(recipe, list(overrides), task_cls)
    dev = resolve_device(device) if device else None
    task = task_cls(task_config(task_cls, r), r.supervision)
    source: bool | str | None = None if pretrained is None else (True if pretrained == "timm" else pretrained)

    def note(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    with progress_bar(f"train {baseline}", quiet=quiet) as bar:
        job = bar.add_task(f"train {baseline} ({r.name})", total=r.total_steps, rate="")

        def report(step: int, total: int, numbers: dict[str, float]) -> None:
            bar.update(job, completed=step, total=total, rate=f"loss {numbers.get('loss', float('nan')):.4f}")

        try:
            result = fit(task, r, data, out, baseline=baseline, device=dev, overwrite=overwrite,
                         pretrained=source, progress=report, on_note=note)
        except TrainInterrupted as exc:
            interrupted: TrainInterrupted | None = exc
        except KeyboardInterrupt:  # before the loop took over Ctrl-C (reading data, building the model)
            console.print(f"interrupted before training began; run the same command again: "
                          f"{_train_command(baseline, data, recipe, out, overrides, device, pretrained, quiet)}",
                          markup=False, highlight=False, soft_wrap=True)
            sys.exit(130)
        else:
            interrupted = None
    if interrupted is not None:
        again = _train_command(baseline, data, recipe, out, overrides, device, pretrained, quiet)
        console.print(f"interrupted at step {interrupted.step} of {r.total_steps}; checkpoint kept in {out}:"
                      f" run `{again}` to resume", markup=False, highlight=False, soft_wrap=True)
        sys.exit(130)
    best = (f", best {result.best['metric']} {result.best['value']:.4f} at step {result.best['step']}"
            if result.best else "")
    resumed = f", resumed at step {result.resumed_from}" if result.resumed_from else ""
    click.echo(f"trained {baseline} for {result.steps} steps in {result.seconds:.1f} s"
               f" ({result.images_per_second:.1f} images/s{resumed}){best} -> {out}")
    click.echo(f"score it: bench eval {baseline} --weights {out} --data {data}")
