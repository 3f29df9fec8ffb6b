"""Declarative stages: parameters checked without constructing, extras named, licences collected, one identity."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from click.testing import CliRunner

from dolos_bench.builder.base import Generator, Masker
from dolos_bench.builder.manifest import licence_notes
from dolos_bench.builder.masks.landmarks import LandmarkMasker, landmark_licence_note
from dolos_bench.builder.recipe import RecipeError, validate_recipe_data
from dolos_bench.cli import main
from dolos_bench.config import Strict
from dolos_bench.eval.api import Localizer
from dolos_bench.perturbations import Perturbation, parse_chain
from dolos_bench.registry import GENERATORS, MASKERS, PERTURBATIONS, REGISTRIES, SOURCES
from dolos_bench.stage import Stage, install_hint, missing
from dolos_bench.utils.numbers import check_number, check_pair
from dolos_bench.utils.text import slugify
from helpers import make_image_folder, tiny_recipe
from stage_marks import requires_stage

STAGE_KINDS = ("sources", "maskers", "generators", "perturbations")


def _builtin_classes() -> list[tuple[str, str, type]]:
    return [(kind, name, REGISTRIES[kind].get(name))
            for kind in STAGE_KINDS for name, _, origin in REGISTRIES[kind].describe() if origin == "builtin"]


@pytest.mark.parametrize("kind, name, cls", _builtin_classes(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_builtin_stage_declares_a_strict_config_matching_its_signature(kind: str, name: str, cls: type) -> None:
    """The signature is the Python API and the Config what recipes validate: their defaults must agree."""
    assert issubclass(cls, Stage) and cls.Config is not None
    assert cls.Config.model_config.get("extra") == "forbid"
    signature = inspect.signature(cls)
    assert list(signature.parameters) == list(cls.Config.model_fields)
    for param_name, param in signature.parameters.items():
        field = cls.Config.model_fields[param_name]
        if param.default is inspect.Parameter.empty:
            assert field.is_required(), param_name
        else:
            assert field.default == param.default, param_name
    required = {k: "x" for k, f in cls.Config.model_fields.items() if f.is_required()}
    _, problems = cls.check_params({**required, "no_such_key": 1})  # checks nothing else once a key is unknown
    assert "no_such_key" in [where for where, _ in problems]


class _Heavy(Generator):
    """A generator whose construction would load weights: validation must never construct it."""

    name: ClassVar[str] = "heavy-test"
    built: ClassVar[int] = 0

    class Config(Strict):
        steps: int = 10

    def __init__(self, steps: int = 10) -> None:
        type(self).built += 1
        raise RuntimeError("loaded the weights")

    def inpaint(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return image


class _Unavailable(_Heavy):
    """A generator whose package is not installed."""

    name: ClassVar[str] = "absent-test"
    requires: ClassVar[tuple[str, ...]] = ("no_such_package_xyz",)
    extra: ClassVar[str | None] = "diffusion"


class _PlugIn(Generator):
    """An outside plug-in written before stages had a Config: its signature is all there is."""

    name: ClassVar[str] = "plugin-test"
    built: ClassVar[int] = 0

    def __init__(self, strength: float, *, radius: int = 3) -> None:
        type(self).built += 1

    def inpaint(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return image


class _Licensed(Masker):
    """A masker with a licence note of its own."""

    name: ClassVar[str] = "licensed-test"
    licence_note: ClassVar[str | None] = "**Test weights.** For testing only."

    class Config(Strict):
        pass

    def __call__(self, image, rng):  # pragma: no cover - never called
        raise NotImplementedError


@pytest.fixture
def test_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    for registry in (GENERATORS, MASKERS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))  # the test's entries go afterwards
    for registry, cls in ((GENERATORS, _Heavy), (GENERATORS, _Unavailable), (GENERATORS, _PlugIn), (MASKERS, _Licensed)):
        registry.register(cls.name)(cls)
    _Heavy.built = _PlugIn.built = 0


def _recipe(tmp_path: Path, *generators: dict, maskers: list[dict] | None = None) -> dict:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    return {
        "name": "t",
        "sources": [{"type": "folder", "path": str(tmp_path / "imgs")}],
        "maskers": maskers or [{"type": "strokes"}],
        "generators": [{"type": "telea"}, *generators],
    }


def _problems(data: dict) -> dict[str, str]:
    with pytest.raises(RecipeError) as info:
        validate_recipe_data(data)
    return dict(info.value.problems)


def test_validation_uses_the_config_and_never_constructs(tmp_path: Path, test_stages: None) -> None:
    validate_recipe_data(_recipe(tmp_path, {"type": "heavy-test", "steps": 5}))
    problems = _problems(_recipe(tmp_path, {"type": "heavy-test", "steps": "many"}, {"type": "heavy-test", "stpes": 1}))
    assert "steps" in problems["generators.1"] and "valid integer" in problems["generators.1"]
    assert "Did you mean 'steps'?" in problems["generators.2.stpes"]
    assert _Heavy.built == 0


def test_a_plugin_without_config_has_its_signature_checked_without_construction(tmp_path: Path, test_stages: None) -> None:
    validate_recipe_data(_recipe(tmp_path, {"type": "plugin-test", "strength": 0.5}))
    problems = _problems(_recipe(tmp_path, {"type": "plugin-test"}, {"type": "plugin-test", "strength": 1, "radiu": 2}))
    assert "strength" in problems["generators.1"]
    assert "Did you mean 'radius'?" in problems["generators.2.radiu"]
    assert _PlugIn.built == 0


def test_a_missing_extra_is_a_recipe_problem_with_the_pip_command(tmp_path: Path, test_stages: None) -> None:
    assert missing(_Unavailable) == ["no_such_package_xyz"]
    assert install_hint(_Unavailable) == "needs no_such_package_xyz: pip install 'dolos-bench[diffusion]'"
    assert install_hint(_Heavy) is None
    problems = _problems(_recipe(tmp_path, {"type": "absent-test"}))
    assert problems["generators.1"] == "generator 'absent-test' needs no_such_package_xyz: pip install 'dolos-bench[diffusion]'"
    with pytest.raises(ImportError, match=r"needs no_such_package_xyz: pip install 'dolos-bench\[diffusion\]'"):
        _Unavailable.configure(object.__new__(_Unavailable))


def test_cli_validate_build_and_ls_name_the_extra(tmp_path: Path, test_stages: None) -> None:
    path = tiny_recipe(tmp_path / "r.yaml", make_image_folder(tmp_path / "src", n=2),
                       generators=[{"type": "telea"}, {"type": "absent-test"}])
    needs = "needs no_such_package_xyz: pip install 'dolos-bench[diffusion]'"
    validate = CliRunner().invoke(main, ["validate", str(path)])
    assert validate.exit_code == 2 and "generators.1" in validate.output and needs in validate.output
    out = tmp_path / "out"
    build = CliRunner().invoke(main, ["build", str(path), "--out", str(out), "--quiet"])
    assert build.exit_code == 2 and needs in build.output
    assert not out.exists()  # refused before any work
    for args in (["ls"], ["ls", "generators"]):
        lines = CliRunner().invoke(main, args).output.splitlines()
        absent = next(line for line in lines if line.split()[:2] == ["generator", "absent-test"])
        assert f"[unavailable: {needs}]" in absent
        telea = next(line for line in lines if line.split()[:2] == ["generator", "telea"])
        assert "unavailable" not in telea


def test_the_card_collects_every_stage_licence_note_once(tmp_path: Path, test_stages: None) -> None:
    recipe = validate_recipe_data(_recipe(tmp_path, maskers=[{"type": "licensed-test"}, {"type": "strokes"},
                                                             {"type": "licensed-test", "name": "again"}]))
    assert licence_notes(recipe) == ["**Test weights.** For testing only."]
    assert licence_notes(validate_recipe_data(_recipe(tmp_path))) == []
    assert LandmarkMasker.licence_note == f"**Face landmarks.** {landmark_licence_note()}"


def test_identity_is_the_one_name() -> None:
    strokes = MASKERS.create("strokes")
    telea = GENERATORS.create("telea", radius=5)
    jpeg = PERTURBATIONS.create("jpeg", quality=80)
    chain = parse_chain("resize(0.5)|jpeg(75)")
    assert strokes.identity()["strokes"] == [1, 5]
    assert telea.identity()["radius"] == 5
    assert jpeg.identity() == {"name": "jpeg", "quality": 80}
    assert chain.identity() == [
        {"name": "resize", "scale": 0.5, "interpolation": "bilinear"}, {"name": "jpeg", "quality": 75}]
    source = SOURCES.create("folder", path=str(Path(__file__).parent))
    assert source.identity() == {"path": str(Path(__file__).parent), "licence": "unknown"}


def test_every_kind_of_stage_has_setup_and_identity() -> None:
    for base in (Masker, Generator, Perturbation, Localizer):
        assert issubclass(base, Stage)
    telea = GENERATORS.create("telea")
    telea.setup("cpu")
    telea.setup("cpu")  # idempotent
    assert telea.identity()["radius"] == 3


@requires_stage(MASKERS, "landmarks")
def test_landmark_setup_loads_the_models_once() -> None:
    from dolos_bench.builder.masks import landmarks as lm

    masker = LandmarkMasker()
    masker.setup("cpu")
    models = dict(lm._MODELS)
    masker.setup("cpu")
    assert lm._MODELS == models and len(models) == 1


def test_one_number_check_one_wording() -> None:
    assert check_number("quality", 75.0, integer=True, lo=1, hi=100) == 75
    for bad, words in [
        (dict(name="quality", value=0, integer=True, lo=1, hi=100), "quality must be an integer in 1..100, got 0"),
        (dict(name="sigma", value=0, lo=0.0, lo_open=True), "sigma must be a finite number > 0, got 0"),
        (dict(name="sigma", value=float("inf"), lo=0.0), "sigma must be a finite number >= 0, got inf"),
        (dict(name="tries", value=True, integer=True, lo=1), "tries must be an integer >= 1, got True"),
        (dict(name="scale", value=3.0, lo=0.0, hi=2.0, lo_open=True), "scale must be a finite number in (0, 2], got 3.0"),
    ]:
        with pytest.raises(ValueError) as info:
            check_number(bad.pop("name"), bad.pop("value"), **bad)
        assert str(info.value) == words
    assert check_pair("width", 0.05) == (0.05, 0.05)
    with pytest.raises(ValueError, match=r"width must have low <= high"):
        check_pair("width", [0.2, 0.1])


@pytest.mark.parametrize(
    "text, source_id, leaderboard, stress",
    [
        ("a/b c.png", "a__b_c.png", "a-b-c-png", "a-b-c.png"),
        ("pixel/iou@0.5/mean-of-images/fakes", "pixel__iou_0.5__mean-of-images__fakes",
         "pixel-iou-0-5-mean-of-images-fakes", "pixel-iou-0.5-mean-of-images-fakes"),
        ("image/AUC", "image__AUC", "image-auc", "image-AUC"),
        ("//", "_", "metric", ""),
        ("x@@y", "x_y", "x-y", "x--y"),
    ],
)
def test_one_slugify_keeps_every_callers_names(text: str, source_id: str, leaderboard: str, stress: str) -> None:
    from dolos_bench.eval import stress as stress_module
    from dolos_bench.report import leaderboard as leaderboard_module

    assert slugify(text) == source_id
    assert leaderboard_module._slug(text) == leaderboard
    assert stress_module._slug(text) == stress


def test_a_perturbation_written_before_config_keeps_its_params() -> None:
    class OldStyle(Perturbation):
        name = "old-style"

        def __init__(self, amount: int = 2) -> None:
            self.amount = amount

        def identity(self) -> dict[str, Any]:
            return {"name": self.name, "amount": self.amount}

        def apply(self, image, mask, rng):  # pragma: no cover - never called
            return image, mask

    assert OldStyle(3).identity() == {"name": "old-style", "amount": 3}
