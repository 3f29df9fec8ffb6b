"""What the `bench` command line says: errors as written, --set problems with their paths, help
texts, `bench ls KIND` parameters, and a package that installs without setuptools warnings."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from dolos_bench.cli import commands as cli
from dolos_bench.cli import main
from dolos_bench.errors import UserError
from dolos_bench.registry import PluginLoadError, Registry, parameters_of

from helpers import make_image_folder, tiny_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("messages")
    return tiny_recipe(root / "r.yaml", make_image_folder(root / "src", n=2))


def _problem_lines(output: str) -> dict[str, str]:
    """``{path: message}`` of a RecipeError as the CLI prints it (two-space indented lines)."""
    lines = [line.strip() for line in output.splitlines() if line.startswith("  ")]
    return dict(line.split(": ", 1) for line in lines)


# -- text in square brackets is printed as written -------------------------------------------


def test_bracketed_recipe_path_and_yaml_error_survive(tmp_path):
    bad = tmp_path / "r[1].yaml"
    bad.write_text("name: [unclosed\n")
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 2
    assert f"error: {bad}: 1 problem(s)" in result.output
    assert "expected ',' or ']', but got '<stream end>'" in result.output
    missing = tmp_path / "[bold]x[/bold].yaml"
    result = CliRunner().invoke(main, ["validate", str(missing)])
    assert result.exit_code == 2 and f"error: {missing}: 1 problem(s)" in result.output
    assert "cannot read recipe" in result.output


def test_bracketed_out_folder_survives_the_refusal(tmp_path, recipe):
    out = tmp_path / "out" / "[run1]"
    out.mkdir(parents=True)
    (out / "[notes].txt").write_text("mine")
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert str(out) in result.output and "[notes].txt" in result.output
    assert (out / "[notes].txt").read_text() == "mine"


def test_fail_prints_markup_as_plain_text():
    @click.command()
    def say() -> None:
        cli.fail("[bold]not bold[/bold] [red]x[/] [1] [link=y]z")

    result = CliRunner().invoke(say, [])
    assert result.exit_code == 2
    assert result.output == "error: [bold]not bold[/bold] [red]x[/] [1] [link=y]z\n"


# -- --set gets the recipe's path-and-message treatment ---------------------------------------


@pytest.mark.parametrize(
    ("override", "path", "message"),
    [
        ("fakes.per_source=abc", "fakes.per_source", "valid integer"),
        ("maskers.0.weight=-1", "maskers.0.weight", "greater than 0"),
        ("nosuch.key=1", "nosuch", "unknown key. Keys here: name, description"),
        ("fakes.per_sorce=2", "fakes.per_sorce", "Did you mean 'per_source'?"),
        ("maskers.5.weight=2", "maskers.5", "no list item '5' (the list has 2"),
        ("seed.x=1", "seed.x", "cannot set a key inside the value 7"),
        ("splits.train=0.9", "splits", "add up to 1"),
        ("generators.0.radius=0", "generators.0", "radius"),
        ("maskers.1={type: strokz}", "maskers.1.type", "Did you mean 'strokes'?"),
        ("fakes=[1", "fakes", "not valid YAML: expected ',' or ']'"),
    ],
)
def test_bad_set_value_is_named_by_its_path_and_its_flag(recipe, override, path, message):
    result = CliRunner().invoke(main, ["validate", str(recipe), "--set", override])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {recipe}: 1 problem(s)")
    problems = _problem_lines(result.output)
    assert message in problems[path], problems
    assert f"(from --set {override})" in problems[path]


def test_malformed_set_and_every_problem_at_once(recipe):
    result = CliRunner().invoke(
        main, ["validate", str(recipe), "--set", "novalue", "--set", "seed=x", "--set", "=3",
               "--set", "resolution=64"]
    )
    assert result.exit_code == 2
    assert f"{recipe}: 3 problem(s)" in result.output
    problems = _problem_lines(result.output)
    assert problems["--set novalue"].startswith("not of the form key.sub=value")
    assert problems["--set =3"].startswith("not of the form key.sub=value")
    assert problems["seed"].endswith("(from --set seed=x)")


def test_recipe_problems_are_not_blamed_on_set(tmp_path):
    path = tiny_recipe(tmp_path / "r.yaml", make_image_folder(tmp_path / "src", n=2), resolutoin=64)
    result = CliRunner().invoke(main, ["validate", str(path), "--set", "seed=3"])
    assert result.exit_code == 2
    problems = _problem_lines(result.output)
    assert "Did you mean 'resolution'?" in problems["resolutoin"]
    assert "--set" not in problems["resolutoin"]


# -- one exception root ------------------------------------------------------------------------


def test_user_error_from_any_command_is_one_line_exit_2(monkeypatch, recipe):
    def boom(*_args, **_kwargs):
        raise UserError("[x] something the user can fix")

    monkeypatch.setattr(cli, "load_recipe", boom)
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2
    assert result.output == "error: [x] something the user can fix\n"


def test_other_exceptions_keep_their_traceback(monkeypatch, recipe):
    def bug(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "load_recipe", bug)
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
    assert "error:" not in result.output


# -- help texts --------------------------------------------------------------------------------


def test_every_option_of_every_command_has_help():
    missing = [
        f"bench {name} {'/'.join(param.opts)}"
        for name, command in main.commands.items()
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert not missing, missing


def test_group_help_shows_whole_summaries():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    commands = result.output.split("Commands:")[1]
    assert "..." not in commands
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in commands.splitlines() if line.strip()}
    for name, command in main.commands.items():
        assert command.short_help, name
        assert rows[name] == command.short_help, (name, rows[name])


@pytest.mark.parametrize(("command", "example"), [
    ("build", "  bench build recipes/build/quickstart.yaml --out out/qs --workers 2\n"),
    ("eval", "  bench eval noise --data out/qs --out results/noise.json   # a baseline\n"),
])
def test_build_and_eval_help_end_with_examples(command, example):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    examples = result.output.split("Examples:\n")[1]
    assert example in examples  # lines kept as written, not re-wrapped
    assert all(line.strip().startswith("bench ") for line in examples.splitlines() if line.strip())


# -- bench ls KIND -----------------------------------------------------------------------------


def test_ls_kind_shows_summaries_and_parameters():
    result = CliRunner().invoke(main, ["ls", "generators"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    telea = lines.index(next(line for line in lines if line.split()[:2] == ["generator", "telea"]))
    assert "Telea's fast marching method" in lines[telea]
    assert lines[telea + 1].strip() == "radius: int = 3"
    perturbations = CliRunner().invoke(main, ["ls", "perturbations"]).output
    assert "quality: int\n" in perturbations and "interpolation: str = 'bilinear'" in perturbations
    localizers = CliRunner().invoke(main, ["ls", "localizers"]).output
    assert "Error level analysis" in localizers and "quality: int = 90" in localizers


def test_parameters_of_signatures_and_pydantic_models():
    class Radius(BaseModel):
        radius: int = 3
        name: str

    def factory(size: int, *args: int, scale: float = 0.5, **options: object) -> None:
        """unused"""

    assert [str(p) for p in parameters_of(Radius)] == ["radius: int = 3", "name: str"]
    assert [str(p) for p in parameters_of(factory)] == ["size: int", "scale: float = 0.5", "**options"]


def test_details_of_a_broken_plugin_say_why():
    registry: Registry = Registry("masker")
    registry.add_lazy("gone", "no_such_module_for_dolos:Masker", "a masker that is not installed")
    details = registry.details("gone")
    assert details.summary == "a masker that is not installed" and details.parameters == []
    assert "cannot import module 'no_such_module_for_dolos'" in (details.error or "")
    with pytest.raises(PluginLoadError):
        registry.get("gone")


# -- packaging ---------------------------------------------------------------------------------


def test_wheel_builds_without_warnings_and_holds_every_file(tmp_path):
    """A non-editable wheel: every package discovered (none listed by hand) and the package data."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("dolos_bench", "baselines"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if re.search(r"\bwarn", line, re.I)]
    assert not warnings, warnings
    names = set(zipfile.ZipFile(next(tmp_path.glob("dolos_bench-*.whl"))).namelist())
    expected = {p.relative_to(src).as_posix() for p in (src / "dolos_bench").rglob("*") if p.is_file()}
    expected |= {"dolos_baselines/" + p.name for p in (src / "baselines").glob("*.py")}
    assert expected <= names, sorted(expected - names)
    assert {"dolos_bench/builder/templates/dataset_card.md.j2", "dolos_bench/eval/suites/default.yaml",
            "dolos_bench/report/templates/leaderboard.html.j2"} <= names
