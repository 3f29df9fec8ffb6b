"""``bench train-study``: the cross-generator study (Dolos Figure 6), train x test heat map included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .commands import console, main, progress_bar

STUDY_EPILOG = """\b
Examples:
  bench train-study recipes/train/cross-generator.yaml --data out/celebahq --out studies/xgen
  bench train-study recipes/train/cross-generator.yaml --data out/qs --out studies/qs \\
      --set leave_one_out=false --train-set epochs=2 --device cuda
  bench leaderboard studies/xgen/results/*.json --study studies/xgen/study.json --out site/
"""


@main.command("train-study", short_help="Train per generator (and leave-one-out), score on each generator.",
              epilog=STUDY_EPILOG)
@click.argument("study", type=click.Path(dir_okay=False, exists=True))
@click.option("--data", required=True, help="Dataset folder with several generators (a finished bench build).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Study folder (runs/, results/, study.json).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key of the study recipe.")
@click.option("--train-set", "train_overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of every model's training recipe, e.g. --train-set epochs=2.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when visible, else cpu).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train_study_command(study: str, data: str, out: str, overrides: tuple[str, ...], train_overrides: tuple[str, ...],
                        device: str | None, quiet: bool) -> None:
    """Train one BASELINE model per generator of --data (and per leave-one-out union), score each
    on the test split, and write the train x test matrix (study.json) and its heat map.

    Finished runs and their results are reused, an interrupted run is resumed: run the same
    command again after a stop.
    """
    from ..eval.config import ScoringConfig
    from ..eval.localizers import resolve_device
    from ..eval.runner import run_eval
    from ..report import plots
    from ..results import load_results
    from ..train.localizer import trainable_task
    from ..train.recipe import task_config
    from ..train.study import load_study_recipe, run_study
    from ..train.trainer import fit

    recipe, train_path = load_study_recipe(study, list(overrides))
    _, task_cls = trainable_task(recipe.baseline)
    dev = resolve_device(device) if device else None

    def note(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    def train(model_recipe: Any, run_dir: Path) -> None:
        task = task_cls(task_config(task_cls, model_recipe), model_recipe.supervision)
        with progress_bar(f"train {recipe.baseline}", quiet=quiet) as bar:
            job = bar.add_task(f"train {model_recipe.name}", total=model_recipe.total_steps, rate="")
            fit(task, model_recipe, data, run_dir, baseline=recipe.baseline, device=dev, on_note=note,
                progress=lambda step, total, numbers: bar.update(
                    job, completed=step, total=total, rate=f"loss {numbers.get('loss', float('nan')):.4f}"))

    def score(run_dir: Path, results_path: Path) -> Any:
        config = ScoringConfig(model=recipe.baseline, data=data, options={"weights": str(run_dir)},
                               split=recipe.test_split, protocol=recipe.protocol, device=dev or "cpu",
                               batch_size=recipe.batch_size)
        with progress_bar(f"eval {run_dir.name}", quiet=quiet) as bar:
            job = bar.add_task(f"eval {run_dir.name}", total=None, rate="")
            return run_eval(config, out=results_path,
                            progress=lambda done, total: bar.update(job, completed=done, total=total)).results

    output = run_study(recipe, train_path, data, out, train=train, score=score, load_results=load_results,
                       overrides=list(train_overrides), on_note=note)
    figures = plots.cross_generator_heatmap(output.summary, Path(out) / "cross-generator")
    click.echo(f"study {recipe.name}: {len(output.summary['train_sets'])} models x "
               f"{len(output.summary['generators'])} generators ({len(output.trained)} trained, "
               f"{len(output.scored)} scored now) -> {output.path}, {', '.join(str(p) for p in figures.values())}")
