"""The ``bench`` command line: one click group, thin commands over the library API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__
from .recipes import RecipeError, load_recipe
from .registry import REGISTRIES

console = Console(stderr=True)


def progress_bar(description: str, *, quiet: bool = False) -> Progress:
    """A bar with count, rate and ETA on stderr (silent with --quiet)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dolos-bench")
def main() -> None:
    """dolos-bench: build inpainted-face forgery datasets and score forgery localizers."""


@main.command("ls")
@click.argument("kind", required=False, type=click.Choice(sorted(REGISTRIES)))
def ls_command(kind: str | None) -> None:
    """List what is registered (sources, maskers, generators, perturbations, localizers)."""
    kinds = [kind] if kind else sorted(REGISTRIES)
    for k in kinds:
        for name, summary, origin in REGISTRIES[k].describe():
            suffix = "" if origin == "builtin" else f"  [{origin}]"
            click.echo(f"{k[:-1]:<13} {name:<16} {summary}{suffix}")


def _load(recipe_path: str, overrides: tuple[str, ...]):
    try:
        return load_recipe(recipe_path, list(overrides))
    except RecipeError as exc:
        fail(str(exc))


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. --set fakes.per_source=2.")
def validate(recipe: str, overrides: tuple[str, ...]) -> None:
    """Check a recipe and report every problem with its path in the YAML."""
    r = _load(recipe, overrides)
    click.echo(
        f"{recipe}: ok ({r.name}: {len(r.sources)} source(s), {len(r.maskers)} masker(s),"
        f" {len(r.generators)} generator(s), {len(r.perturbations.chains)} perturbation chain(s))"
    )


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output dataset folder.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256), help="Processes for the CPU stages.")
@click.option("--overwrite", is_flag=True, help="Replace a finished build in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(recipe: str, out: str, overrides: tuple[str, ...], workers: int, overwrite: bool, quiet: bool) -> None:
    """Build a dataset from RECIPE; resumes an interrupted build of the same recipe."""
    from .build.pipeline import run_build, summarize_skips
    from .data.dataset_io import BuildFolderError

    r = _load(recipe, overrides)
    with progress_bar(f"build {r.name}", quiet=quiet) as bar:
        task = bar.add_task(f"build {r.name}", total=None, rate="")
        state = {"t0": None, "d0": 0}

        def report(done: int, total: int) -> None:
            import time

            now = time.perf_counter()
            if state["t0"] is None:
                state["t0"], state["d0"] = now, done
            elapsed = now - state["t0"]
            rate = (done - state["d0"]) / elapsed if elapsed > 0 else 0.0
            bar.update(task, completed=done, total=total, rate=f"{rate:5.1f} samples/s")

        try:
            result = run_build(r, Path(out), workers=workers, overwrite=overwrite, progress=report)
        except BuildFolderError as exc:
            fail(str(exc))
    counts = result.counts
    splits = ", ".join(f"{s} {c['real']}+{c['fake']}" for s, c in counts["splits"].items())
    click.echo(
        f"built {counts['total']} samples (real+fake: {splits}) in {result.seconds:.1f} s"
        f"{f', resumed {result.resumed_shards} shard(s)' if result.resumed_shards else ''} -> {out}"
    )
    if result.skipped:
        reasons = "; ".join(f"{n}× {reason}" for reason, n in summarize_skips(result.skipped))
        click.echo(f"skipped {len(result.skipped)}: {reasons} (details in {out}/manifest.json)")


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--repo", required=True, metavar="ORG/NAME", help="Hub dataset repository.")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--dry-run", is_flag=True, help="List what would be uploaded; upload nothing.")
@click.option("--revision", default=None, help="Branch to push to.")
def publish(folder: str, repo: str, private: bool, dry_run: bool, revision: str | None) -> None:
    """Push a finished dataset folder to the Hugging Face Hub with its dataset card."""
    from .publish import PublishError, publish_folder

    try:
        result = publish_folder(Path(folder), repo, private=private, dry_run=dry_run, revision=revision)
    except PublishError as exc:
        fail(str(exc))
    for path, size in result.files:
        click.echo(f"{size:>12,d}  {path}")
    total = sum(size for _, size in result.files)
    verb = "would upload" if dry_run else "uploaded"
    click.echo(f"{verb} {len(result.files)} files ({total:,d} bytes) to datasets/{repo}"
               + (f" ({result.url})" if result.url else ""))


@main.command("export")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["dolos"]), default="dolos", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
def export_command(folder: str, fmt: str, out: str) -> None:
    """Write a dataset folder in another layout (dolos: real/, fake/<gen>/{images,masks}/, 255 = real)."""
    from .data.dolos_layout import DolosLayoutError, export_dolos

    try:
        counts = export_dolos(Path(folder), Path(out))
    except DolosLayoutError as exc:
        fail(str(exc))
    click.echo(f"exported {counts['real']} real and {counts['fake']} fake images to {out} (Dolos layout)")


@main.command("import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["dolos"]), default="dolos", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True)
def import_command(folder: str, fmt: str, out: str, overwrite: bool) -> None:
    """Turn a Dolos-layout folder into a dolos-bench dataset folder (masks converted to 255 = forged)."""
    from .data.dataset_io import BuildFolderError
    from .data.dolos_layout import DolosLayoutError, import_dolos

    try:
        counts = import_dolos(Path(folder), Path(out), overwrite=overwrite)
    except (DolosLayoutError, BuildFolderError) as exc:
        fail(str(exc))
    click.echo(f"imported {counts['total']} samples into {out}; skipped {counts['skipped']}")


def _model_options(model_args: tuple[str, ...], weights: str | None) -> dict:
    from .eval.localizers import parse_model_args

    options = parse_model_args(list(model_args))
    if weights is not None:
        if "weights" in options:
            raise ValueError("weights given twice: as --weights and as --model-arg weights=...")
        options["weights"] = weights
    return options


def _scoring_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options `bench eval` and `bench stress` share: which data, how to run the model, how to score."""
    options = [
        click.option("--data", required=True, help="Dataset folder or Hugging Face id."),
        click.option("--split", default="test", show_default=True),
        click.option("--protocol", type=click.Choice(["default", "dolos"]), default="default", show_default=True),
        click.option("--device", default="cpu", show_default=True),
        click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1)),
        click.option("--limit", type=click.IntRange(1), default=None, help="Score only the first N samples."),
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE"),
        click.option("--weights", default=None, type=click.Path(exists=True),
                     help="Weights file or folder for a registered or module:Class model; its sha256 goes into"
                          " the results."),
        click.option("--exact", is_flag=True,
                     help="Exact pooled AUC/AP instead of 10,000-bin histograms (memory grows with the images:"
                          " small sets)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("eval")
@click.argument("model")
@_scoring_options
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(0))
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Results JSON (+ .samples.jsonl); an interrupted run with the same --out resumes.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Processes scoring chunks in parallel, each with its own copy of the model.")
@click.option("--chunk-size", default=1024, show_default=True, type=click.IntRange(1),
              help="Samples per chunk: the unit of resuming and of parallel work.")
@click.option("--quiet", is_flag=True)
def eval_command(model: str, data: str, split: str, protocol: str, device: str, batch_size: int,
                 limit: int | None, model_args: tuple[str, ...], weights: str | None, exact: bool, bootstrap: int,
                 out: str | None, workers: int, chunk_size: int, quiet: bool) -> None:
    """Score MODEL (registered name, module:Class, predictions folder/archive, .pt or .onnx file)."""
    from .eval.api import LocalizerError
    from .eval.runner import run_eval

    try:
        options = _model_options(model_args, weights)
        with progress_bar(f"eval {model}", quiet=quiet) as bar:
            task = bar.add_task(f"eval {model}", total=None, rate="")
            result = run_eval(model, data, split=split, protocol=protocol, device=device, batch_size=batch_size,
                              limit=limit, out=Path(out) if out else None, model_args=options, bootstrap=bootstrap,
                              workers=workers, chunk_size=chunk_size, exact=exact,
                              progress=lambda d, t: bar.update(task, completed=d, total=t),
                              command=" ".join(["bench", "eval", *sys.argv[2:]]))
    except (LocalizerError, ValueError, KeyError, ImportError) as exc:
        fail(str(exc))
    for name, metric in result.results.metrics.items():
        if name.startswith(("pixel/iou", "pixel/f1@0.5/mean", "pixel/auc/pooled/all", "image/auc", "image/ap")):
            value = "—" if metric.value is None else f"{metric.value:.4f}"
            ci = "" if not metric.ci95 else f"  [{metric.ci95[0]:.4f}, {metric.ci95[1]:.4f}]"
            click.echo(f"{name:<42} {value}{ci}")
    if result.results.info.get("resumed_chunks"):
        click.echo(f"resumed {result.results.info['resumed_chunks']} chunk(s) from an interrupted run")
    if "dolos" in result.results.info:
        d = result.results.info["dolos"]
        click.echo(f"dolos IoU x100: {d['dolos/localization/iou@0.5x100']:.2f}; detection AP x100:"
                   f" {d['dolos/detection/ap']['mean']:.2f} ± {d['dolos/detection/ap']['2std']:.2f}")
    if out:
        click.echo(f"results -> {out}")


@main.command()
@click.argument("model")
@click.option("--suite", default="default", show_default=True,
              help="Suite YAML (e.g. recipes/stress/default.yaml) or a built-in suite name.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Results JSON; the curves go beside it as <stem>.curves.<metric>.png/.svg.")
@_scoring_options
@click.option("--only", default=None, metavar="NAME[,NAME]", help="Run only these perturbations of the suite.")
@click.option("--metric", default=None, help="Headline metric of the summary and curves (default: the suite's).")
@click.option("--bootstrap", default=200, show_default=True, type=click.IntRange(0),
              help="Bootstrap resamples for the 95% intervals of every grid point.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Processes scoring grid points in parallel, each with its own copy of the model.")
@click.option("--quiet", is_flag=True)
def stress(model: str, data: str, suite: str, out: str, split: str, protocol: str, device: str, batch_size: int,
           limit: int | None, model_args: tuple[str, ...], weights: str | None, exact: bool, only: str | None,
           metric: str | None, bootstrap: int, workers: int, quiet: bool) -> None:
    """Score MODEL under a grid of perturbations x severities; resumes an interrupted sweep."""
    from .eval.api import LocalizerError
    from .eval.stress import run_stress

    try:
        options = _model_options(model_args, weights)
        with progress_bar(f"stress {model}", quiet=quiet) as bar:
            task = bar.add_task(f"stress {model}", total=None, rate="")

            def report(done: int, total: int, point: str) -> None:
                bar.update(task, completed=done, total=total, rate=point)

            result = run_stress(model, data, suite=suite, out=Path(out), split=split, protocol=protocol,
                                device=device, batch_size=batch_size, limit=limit, model_args=options,
                                only=[o.strip() for o in only.split(",") if o.strip()] if only else None,
                                metric=metric, bootstrap=bootstrap, workers=workers, exact=exact, progress=report,
                                command=" ".join(["bench", "stress", *sys.argv[2:]]))
    except (LocalizerError, ValueError, KeyError, ImportError) as exc:
        fail(str(exc))
    s = result.results.stress
    assert s is not None
    if result.resumed_points:
        click.echo(f"resumed {result.resumed_points} grid point(s) from an interrupted run")
    clean = result.results.metrics.get(s.metric)
    click.echo(f"{s.metric} clean: {'—' if clean is None or clean.value is None else f'{clean.value:.4f}'}")
    click.echo(f"{'perturbation':<14} {'worst':>8} {'rel. drop':>10} {'AUC':>8}")
    for name, summ in s.summary.items():
        extra = summ.model_extra or {}
        cells = [extra.get("worst"), summ.relative_drop, summ.area_under_curve]
        click.echo(f"{name:<14} " + " ".join(f"{'—' if v is None else f'{v:.4f}':>{w}}"
                                            for v, w in zip(cells, (8, 10, 8))))
    click.echo(f"results -> {out}")
    for files in result.plots.values():
        click.echo("curves  -> " + ", ".join(str(p) for p in files.values()))


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the site.")
@click.option("--title", default="dolos-bench leaderboard", show_default=True)
def leaderboard(results: tuple[str, ...], out: str, title: str) -> None:
    """Turn results JSON files into leaderboard.md/.csv/.json and a static index.html."""
    from .eval.results import ResultsError
    from .report.leaderboard import build_leaderboard

    try:
        built = build_leaderboard([Path(r) for r in results], Path(out), title=title)
    except ResultsError as exc:
        fail(str(exc))
    click.echo(f"leaderboard of {len(results)} result file(s) -> {out}/index.html, leaderboard.md, .csv, .json")


if __name__ == "__main__":  # pragma: no cover
    main()
