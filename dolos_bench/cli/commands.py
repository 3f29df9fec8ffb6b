"""The ``bench`` group and the commands of the offline toolkit (ls, validate, build, publish, export,
import, eval, stress, leaderboard), with the helpers every command module shares."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn

import click
from rich.console import Console
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .. import __version__
from ..errors import UserError
from ..builder.recipe import Recipe, load_recipe
from ..registry import REGISTRIES
from ..stage import install_hint

if TYPE_CHECKING:
    from ..eval.config import ScoringConfig
    from ..results import Results

console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, *, quiet: bool = False) -> Iterator[Progress]:
    """A bar with count, rate and ETA on stderr (silent with --quiet).

    A finished run leaves its bar as a record; a run that fails or is interrupted clears it, so the
    one line that says what went wrong is not glued to a half-drawn bar.
    """
    bar = Progress(
        # Plain text, not rich markup: a recipe or model name may hold "[...]".
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}", style="cyan", markup=False),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )
    with bar:
        try:
            yield bar
        except BaseException:
            bar.live.transient = True
            raise


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``.

    The message is plain text, never rich markup: paths, YAML errors and values often hold
    ``[...]``, which markup would swallow.
    """
    console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    sys.exit(code)


class BenchGroup(click.Group):
    """The ``bench`` group: a :class:`UserError` from any command ends as an ``error:`` line, exit 2.

    One catch here instead of a list of exception types per command: every module's error class
    derives from ``UserError``, and anything else is a bug that keeps its traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            fail(str(exc))


@click.group(cls=BenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dolos-bench")
def main() -> None:
    """dolos-bench: build inpainted-face forgery datasets and score forgery localizers."""


@main.command("ls", short_help="List registered stages and models; KIND adds parameters.")
@click.argument("kind", required=False, type=click.Choice(sorted(REGISTRIES)))
def ls_command(kind: str | None) -> None:
    """List what is registered (sources, maskers, generators, perturbations, localizers).

    An entry whose optional packages are not installed says which extra brings them:
    ``[unavailable: needs dlib: pip install 'dolos-bench[faces]']``. With KIND, each entry also
    shows the parameters it takes, as a recipe (or --model-arg) writes them: ``radius: int = 3``.
    """
    kinds = [kind] if kind is not None else sorted(REGISTRIES)
    width = max([_LS_NAME_WIDTH] + [len(n) for k in kinds for n in REGISTRIES[k].names()])
    indent = " " * (_LS_KIND_WIDTH + width + 2)  # parameter lines start under the summary
    for k in kinds:
        registry = REGISTRIES[k]
        for name in registry.names():
            details = registry.details(name)  # imports the entry: `requires` and parameters live on it
            needs = None if details.error is not None else install_hint(registry.get(name))
            trainable = details.error is None and getattr(registry.get(name), "task", None) is not None
            click.echo(_ls_line(k, name, details.summary, details.origin, needs, width)
                       + ("  [trainable: bench train]" if trainable else ""))
            if kind is None:
                continue
            if details.error is not None:
                click.echo(f"{indent}cannot be loaded: {details.error}")
            elif not details.parameters:
                click.echo(f"{indent}(no parameters)")
            for parameter in details.parameters:
                click.echo(f"{indent}{parameter}")


_LS_KIND_WIDTH, _LS_NAME_WIDTH = 13, 16
"""Columns of ``bench ls``: kind, then name (wider when a listed name is longer), then the summary."""


def _ls_line(kind: str, name: str, summary: str, origin: str, needs: str | None = None,
             width: int = _LS_NAME_WIDTH) -> str:
    suffix = "" if origin == "builtin" else f"  [{origin}]"
    if needs is not None:
        suffix += f"  [unavailable: {needs}]"
    return f"{kind[:-1]:<{_LS_KIND_WIDTH}} {name:<{width}} {summary or f'(see bench ls {kind})'}{suffix}"


BUILD_EPILOG = """\b
Examples:
  bench validate recipes/build/quickstart.yaml    # check it, build nothing
  bench build recipes/build/quickstart.yaml --out out/qs --workers 2
  bench build recipes/build/quickstart.yaml --out out/qs    # resumes
  bench build recipes/build/quickstart.yaml --out out/qs2 --set seed=7
"""

EVAL_EPILOG = """\b
Examples:
  bench eval noise --data out/qs --out results/noise.json   # a baseline
  bench eval ela --data out/qs --protocol dolos      # the Dolos protocol
  bench eval my_pkg.models:MyLocalizer --data out/qs --model-arg k=0.3
  bench eval my_pkg.models:MyLocalizer --weights ckpt/m.pt --data out/qs
  bench eval predictions/ --data out/qs    # <id>.png/.npy + scores.csv
  bench eval model.onnx --data out/qs --device cuda
"""


def _load(recipe_path: str, overrides: tuple[str, ...]) -> Recipe:
    """The validated recipe with its ``--set`` overrides; a :class:`RecipeError` lists every problem."""
    return load_recipe(recipe_path, list(overrides))


@main.command(short_help="Check a recipe; list every problem with its YAML path.")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key (repeatable; the value is YAML), e.g. --set fakes.per_source=2.")
def validate(recipe: str, overrides: tuple[str, ...]) -> None:
    """Check a recipe and report every problem with its path in the YAML."""
    r = _load(recipe, overrides)
    click.echo(
        f"{recipe}: ok ({r.name}: {len(r.sources)} source(s), {len(r.maskers)} masker(s),"
        f" {len(r.generators)} generator(s), {len(r.perturbations.chains)} perturbation chain(s))"
    )


def _engine_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--engine`` and ``--address``: where build, eval and stress run their workers (see docs/scaling.md)."""
    command = click.option("--address", default=None, metavar="ADDR",
                           help="With --engine ray: the cluster to join (auto, or ray://HOST:10001); without it a"
                                " local Ray instance is started.")(command)
    return click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="Where the workers run: local (processes on this machine) or ray (actors on a Ray"
                             " cluster; the output folder must be shared by every node).")(command)


@main.command(short_help="Build a dataset from a recipe (resumes if interrupted).", epilog=BUILD_EPILOG)
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help="Output dataset folder (required unless --dry-run).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key (repeatable; the value is YAML), e.g. --set fakes.per_source=2.")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Print the plan (samples per split and subset, weights and whether present); decode, load, write nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as one JSON object.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256), help="Processes for the CPU stages.")
@click.option("--device", "device", default=None, metavar="DEVICE",
              help="Run the learned (torch) generators on DEVICE (cpu, cuda, cuda:1, auto), each in its own worker,"
                   " loaded once and fed batches; a recipe generator's own `device:` wins. Default: inside the CPU"
                   " workers.")
@_engine_options
@click.option("--overwrite", is_flag=True, help="Replace a finished build in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(recipe: str, out: str | None, overrides: tuple[str, ...], dry_run: bool, as_json: bool, workers: int,
          overwrite: bool, quiet: bool, engine: str = "local", address: str | None = None,
          device: str | None = None) -> None:
    """Build a dataset from RECIPE; resumes an interrupted build of the same recipe."""
    from ..builder.pipeline import BuildInterrupted, run_build

    r = _load(recipe, overrides)
    if dry_run:
        import json

        from ..builder.dryrun import dry_run as plan_only, render_dry_run

        planned = plan_only(r)
        click.echo(json.dumps(planned.as_json(), indent=2) if as_json else "\n".join(render_dry_run(planned)))
        return
    if as_json:
        fail("--json goes with --dry-run (a build reports in its manifest.json)")
    if out is None:
        fail("missing option --out: the folder to build into (or --dry-run to see the plan only)")
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
            from ..engine.select import EngineChoice

            result = run_build(r, Path(out), workers=workers, overwrite=overwrite, progress=report,
                               engine=EngineChoice(engine, address), device=device)  # type: ignore[arg-type]
        except BuildInterrupted as exc:
            interrupted = exc
        else:
            interrupted = None
    if interrupted is not None:
        again = _build_command(recipe, out, overrides, workers, quiet, engine, address, device)
        what = (f"interrupted while planning: nothing new written in {out}" if interrupted.total is None
                else f"interrupted: {interrupted.kept} of {interrupted.total} shards kept in {out}")
        console.print(f"{what}; run `{again}` to resume", markup=False, highlight=False, soft_wrap=True)
        sys.exit(130)
    for line in _build_summary(result, out):
        click.echo(line)
    for warning in result.warnings:
        click.echo(f"warning: {warning}; details in {out}/manifest.json", err=True)


def _build_command(recipe: str, out: str, overrides: tuple[str, ...], workers: int, quiet: bool,
                   engine: str = "local", address: str | None = None, device: str | None = None) -> str:
    """The `bench build` command that resumes this build: the same options, never --overwrite."""
    import shlex

    words = ["bench", "build", recipe, "--out", out]
    for item in overrides:
        words += ["--set", item]
    if workers != 1:
        words += ["--workers", str(workers)]
    if engine != "local":
        words += ["--engine", engine] + (["--address", address] if address else [])
    if device:
        words += ["--device", device]
    if quiet:
        words.append("--quiet")
    return shlex.join(words)


def _build_summary(result, out: str) -> list[str]:
    """What a finished build read and made: files and samples counted apart, skips by reason."""
    from ..builder.manifest import summarize_skips

    counts, files = result.counts, result.files
    splits = ", ".join(f"{s} {c['real']}+{c['fake']}" for s, c in counts["splits"].items()) or "none"
    file_parts = [f"{len(files.skipped)} skipped"]
    file_parts += [f"{n} {what}" for n, what in ((len(files.converted), "converted"), (len(files.ignored), "ignored")) if n]
    lines = [
        f"read {files.read} files ({', '.join(file_parts)}) -> built {counts['total']} samples"
        f" (real+fake: {splits}) in {result.seconds:.1f} s"
        f"{f', resumed {result.resumed_shards} shard(s)' if result.resumed_shards else ''} -> {out}"
    ]
    details = f"(details in {out}/manifest.json)"
    if files.skipped:
        reasons = "; ".join(f"{n}× {reason}" for reason, n in summarize_skips(files.skipped))
        lost = sum(f["samples"] for f in files.skipped)
        lines.append(f"skipped {len(files.skipped)} files ({lost} samples not made): {reasons} {details}")
    if result.failed:
        reasons = "; ".join(f"{n}× {reason}" for reason, n in summarize_skips(result.failed))
        lines.append(f"skipped {len(result.failed)} samples: {reasons} {details}")
    if files.ignored:
        lines.append(f"ignored {len(files.ignored)} file(s) the sources do not read, e.g. {files.ignored[0]['path']}"
                     f" {details}")
    return lines


@main.command(short_help="Push a finished dataset to the Hugging Face Hub.")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--repo", required=True, metavar="ORG/NAME", help="Hub dataset repository.")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--dry-run", is_flag=True, help="List what would be uploaded; upload nothing.")
@click.option("--revision", default=None, help="Branch to push to.")
def publish(folder: str, repo: str, private: bool, dry_run: bool, revision: str | None) -> None:
    """Push a finished dataset folder to the Hugging Face Hub with its dataset card."""
    from ..publish import publish_folder

    result = publish_folder(Path(folder), repo, private=private, dry_run=dry_run, revision=revision)
    for path, size in result.files:
        click.echo(f"{size:>12,d}  {path}")
    total = sum(size for _, size in result.files)
    verb = "would upload" if dry_run else "uploaded"
    click.echo(f"{verb} {len(result.files)} files ({total:,d} bytes) to datasets/{repo}"
               + (f" ({result.url})" if result.url else ""))


@main.command("export", short_help="Write a dataset in another layout (Dolos).")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["dolos"]), default="dolos", show_default=True,
              help="Layout to write.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the export: new, empty, or an earlier export (see --overwrite).")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier export in --out. Only files an export wrote are removed; a folder"
                   " holding other files is refused.")
def export_command(folder: str, fmt: str, out: str, overwrite: bool) -> None:
    """Write a dataset folder in another layout (dolos: real/, fake/<gen>/{images,masks}/, 255 = real)."""
    from ..data.dolos_layout import export_dolos

    counts = export_dolos(Path(folder), Path(out), overwrite=overwrite)
    click.echo(f"exported {counts['real']} real and {counts['fake']} fake images to {out} (Dolos layout)")


@main.command("import", short_help="Turn a Dolos-layout folder into a dataset.")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["dolos"]), default="dolos", show_default=True,
              help="Layout of FOLDER.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output dataset folder: new, empty, an earlier build or import, or an interrupted import.")
@click.option("--overwrite", is_flag=True,
              help="Replace a finished dataset in --out. Only files a build or import recorded are removed;"
                   " a folder holding other files is refused.")
def import_command(folder: str, fmt: str, out: str, overwrite: bool) -> None:
    """Turn a Dolos-layout folder into a dolos-bench dataset folder (masks converted to 255 = forged)."""
    from ..builder.importer import import_dolos

    counts = import_dolos(Path(folder), Path(out), overwrite=overwrite)
    click.echo(f"imported {counts['total']} samples into {out}; skipped {counts['skipped']}"
               + (f" (reasons in {out}/manifest.json)" if counts["skipped"] else ""))
    for warning in counts["warnings"]:
        click.echo(f"warning: {warning}", err=True)


def _model_options(model_args: tuple[str, ...], weights: str | None) -> dict:
    from ..eval.localizers import parse_model_args

    options = parse_model_args(list(model_args))
    if weights is not None:
        if "weights" in options:
            raise UserError("weights given twice: as --weights and as --model-arg weights=...")
        options["weights"] = weights
    return options


_CONFIG_OPTIONS = ("data", "split", "protocol", "device", "batch_size", "limit", "exact", "bootstrap", "workers",
                   "chunk_size", "engine", "address")
"""The command-line options that become fields of a ScoringConfig of the same names."""


def _scoring_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options `bench eval` and `bench stress` share: which data, how to run the model, how to score.

    They, MODEL and the command's own scoring options (``--bootstrap``, ``--workers``,
    ``--chunk-size``) reach the command as one :class:`~dolos_bench.eval.config.ScoringConfig`,
    its first argument, built here once; the command gets its other options as they are.
    """

    @functools.wraps(command)
    def with_config(model: str, model_args: tuple[str, ...], weights: str | None, **kwargs: Any) -> None:
        from ..eval.config import ScoringConfig

        fields = {key: kwargs.pop(key) for key in _CONFIG_OPTIONS if key in kwargs}
        try:
            config = ScoringConfig(model=model, options=_model_options(model_args, weights), **fields)
        except ValueError as exc:  # a malformed --model-arg
            fail(str(exc))
        return command(config, **kwargs)

    options = [
        click.option("--data", required=True,
                     help="Dataset folder (a path that does not exist fails at once), or a Hub dataset: hf://owner/name,"
                          " or owner/name when owner is not a local folder."),
        click.option("--split", default="test", show_default=True, help="Split of the dataset to score."),
        click.option("--protocol", type=click.Choice(["default", "dolos"]), default="default", show_default=True,
                     help="default: this toolkit's metrics; dolos: also the Dolos paper's IoU and detection AP."),
        click.option("--device", default="cpu", show_default=True,
                     help="Where the model runs: cpu, cuda or cuda:N. With --workers, plain cuda spreads the"
                          " workers over the GPUs (worker i on cuda:i, round-robin)."),
        click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1),
                     help="Images per call of the model."),
        click.option("--limit", type=click.IntRange(1), default=None, help="Score only the first N samples."),
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="Keyword argument for the model (repeatable; the value is YAML); `bench ls localizers`"
                          " lists what each built-in takes."),
        click.option("--weights", default=None, type=click.Path(exists=True),
                     help="Weights file or folder for a registered or module:Class model; its sha256 goes into"
                          " the results."),
        click.option("--exact", is_flag=True,
                     help="Exact pooled AUC/AP instead of 10,000-bin histograms (memory grows with the images:"
                          " small sets)."),
    ]
    for option in reversed(options):
        with_config = option(with_config)
    return _engine_options(with_config)


def eval_summary(results: Results) -> list[str]:
    """The lines `bench eval` prints: the metric table's summary metrics, in the results' order."""
    from ..metric_specs import metric_names

    shown = set(metric_names(results.protocol.threshold, summary=True))
    lines = []
    for name, metric in results.metrics.items():
        if name in shown:
            value = "—" if metric.value is None else f"{metric.value:.4f}"
            ci = "" if not metric.ci95 else f"  [{metric.ci95[0]:.4f}, {metric.ci95[1]:.4f}]"
            lines.append(f"{name:<42} {value}{ci}")
    return lines


def protocol_summary(results: Results) -> list[str]:
    """The line of the Dolos paper's two numbers, for a run under ``--protocol dolos``."""
    from ..metric_specs import metric_name

    if "dolos" not in results.info:
        return []
    d = results.info["dolos"]
    iou = d[metric_name("dolos/localization/iou@{t}x100", results.protocol.threshold)]
    ap = d[metric_name("dolos/detection/ap")]
    return [f"dolos IoU x100: {iou:.2f}; detection AP x100: {ap['mean']:.2f} ± {ap['2std']:.2f}"]


@main.command("eval", short_help="Score a localizer or predictions on a dataset.", epilog=EVAL_EPILOG)
@click.argument("model")
@_scoring_options
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(0),
              help="Bootstrap resamples for the 95% intervals (0: no intervals).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Results JSON (+ .samples.jsonl); an interrupted run with the same --out resumes.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Processes scoring chunks in parallel, each with its own copy of the model.")
@click.option("--chunk-size", default=1024, show_default=True, type=click.IntRange(1),
              help="Samples per chunk: the unit of resuming and of parallel work.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def eval_command(config: ScoringConfig, out: str | None, quiet: bool) -> None:
    """Score MODEL (registered name, module:Class, predictions folder/archive, .pt or .onnx file)."""
    import shlex

    from ..eval.api import LocalizerError
    from ..eval.runner import data_notes, run_eval
    from ..eval.work import RunInterrupted

    try:
        with progress_bar(f"eval {config.model}", quiet=quiet) as bar:
            task = bar.add_task(f"eval {config.model}", total=None, rate="")
            result = run_eval(config, out=Path(out) if out else None,
                              progress=lambda d, t: bar.update(task, completed=d, total=t),
                              command=shlex.join(["bench", *sys.argv[1:]]))
    except RunInterrupted as exc:  # Ctrl-C: one line, what was kept and how to resume
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (LocalizerError, ValueError, KeyError, ImportError) as exc:
        fail(str(exc))
    for note in data_notes(result.results):
        click.echo(note, err=True)
    for line in eval_summary(result.results):
        click.echo(line)
    if result.results.info.get("resumed_chunks"):
        click.echo(f"resumed {result.results.info['resumed_chunks']} chunk(s) from an interrupted run")
    for line in protocol_summary(result.results):
        click.echo(line)
    if out:
        click.echo(f"results -> {out}")


@main.command(short_help="Score a localizer under perturbations x severities.")
@click.argument("model")
@click.option("--suite", default="default", show_default=True,
              help="Suite YAML (e.g. recipes/stress/default.yaml) or a built-in suite name: default, photometric.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Results JSON; the curves go beside it as <stem>.curves.<metric>.png/.svg.")
@_scoring_options
@click.option("--only", default=None, metavar="NAME[,NAME]", help="Run only these perturbations of the suite.")
@click.option("--metric", default=None, help="Headline metric of the summary and curves (default: the suite's).")
@click.option("--bootstrap", default=200, show_default=True, type=click.IntRange(0),
              help="Bootstrap resamples for the 95% intervals of every grid point.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Processes scoring grid points in parallel, each with its own copy of the model.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def stress(config: ScoringConfig, suite: str, out: str, only: str | None, metric: str | None, quiet: bool) -> None:
    """Score MODEL under a grid of perturbations x severities; resumes an interrupted sweep."""
    import shlex

    from ..eval.api import LocalizerError
    from ..eval.runner import data_notes
    from ..eval.stress import run_stress
    from ..report.plots import robustness_curves
    from ..eval.work import RunInterrupted

    try:
        with progress_bar(f"stress {config.model}", quiet=quiet) as bar:
            task = bar.add_task(f"stress {config.model}", total=None, rate="")

            def report(done: int, total: int, point: str) -> None:
                bar.update(task, completed=done, total=total, rate=point)

            result = run_stress(config, suite=suite, out=Path(out),
                                only=[o.strip() for o in only.split(",") if o.strip()] if only else None,
                                metric=metric, progress=report, plots=robustness_curves,
                                command=shlex.join(["bench", *sys.argv[1:]]))
    except RunInterrupted as exc:  # Ctrl-C: one line, what was kept and how to resume
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (LocalizerError, ValueError, KeyError, ImportError) as exc:
        fail(str(exc))
    for note in data_notes(result.results):
        click.echo(note, err=True)
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


@main.command(short_help="Make a leaderboard site from results files.")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the site: new, empty, or holding an earlier leaderboard, which is replaced."
                   " A folder with any other file is refused and left as it is.")
@click.option("--title", default="dolos-bench leaderboard", show_default=True, help="Title of the page and of leaderboard.md.")
@click.option("--full-range", is_flag=True,
              help="Draw curves and heatmap colours over the metric's full range [0, 1] instead of fitting them to the data.")
@click.option("--study", "studies", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A study.json of bench train-study: adds its train x test heat map (repeatable).")
def leaderboard(results: tuple[str, ...], out: str, title: str, full_range: bool, studies: tuple[str, ...]) -> None:
    """Turn results JSON files into leaderboard.md/.csv/.json and a static index.html."""
    from ..report.leaderboard import build_leaderboard

    build_leaderboard([Path(r) for r in results], Path(out), title=title, full_range=full_range,
                      studies=[Path(s) for s in studies])
    click.echo(f"leaderboard of {len(results)} result file(s) -> {out}/index.html, leaderboard.md, .csv, .json")


if __name__ == "__main__":  # pragma: no cover
    main()
