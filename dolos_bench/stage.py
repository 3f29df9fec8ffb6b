"""The one base of every pluggable stage: sources, maskers, generators, perturbations, localizers.

A stage *declares* what the toolkit needs to know before it does any work, so that recipes can be
checked, ``bench ls`` can say what is installed, and dataset cards can collect licences, all
without constructing the stage (constructing one may load a diffusion model's weights):

* ``Config``: a strict pydantic model of its parameters (``None`` for a stage that has none or an
  outside plug-in that declares none; recipes then check its signature instead);
* ``requires`` / ``extra``: the import names of the optional packages it needs and the pip extra
  that brings them, read by :func:`missing` and :func:`install_hint`;
* ``licence_note``: a sentence the dataset card quotes for every stage a build used.

Two methods are called on an instance: :meth:`Stage.setup` does the heavy loading (a predictor
file, a model on a device) once per worker, and :meth:`Stage.identity` is the one answer to "what
identifies this stage", stored with every sample or result it produces.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

__all__ = ["Stage", "install_hint", "missing"]

DISTRIBUTION = "dolos-bench"


class Stage:
    """Declarations shared by every stage; subclasses set the class attributes they need."""

    name: ClassVar[str] = "stage"
    Config: ClassVar[type[BaseModel] | None] = None
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None
    licence_note: ClassVar[str | None] = None

    @classmethod
    def label(cls) -> str:
        """How messages name this stage (``"jpeg"``); maskers use their class name."""
        return cls.name

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> tuple[BaseModel | None, list[tuple[str, str]]]:
        """``params`` validated as :attr:`Config`, without building anything.

        Returns the model, or ``None`` and every ``(field path, message)`` problem, each message
        naming the stage as its constructor would (``"telea: radius must be an integer >= 1, got 0"``).
        A stage without a ``Config`` accepts anything here: its signature is all there is.
        """
        if cls.Config is None:
            return None, []
        try:
            return cls.Config.model_validate(dict(params)), []
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                where = ".".join(str(part) for part in err["loc"])
                message = err["msg"].removeprefix("Value error, ")
                if err["type"] != "value_error" and where:
                    message = f"{where}: {message}"  # pydantic's own words do not name the field
                problems.append((where, f"{cls.label()}: {message}"))
            return None, problems

    def configure(self, **params: Any) -> None:
        """Validate ``params`` as :attr:`Config` and keep each field as an attribute of the same name.

        What a built-in stage's ``__init__`` calls: its signature says what it takes, the
        ``Config`` what is valid, so recipes can check parameters without constructing the
        stage. Raises ``ImportError`` (with the pip command) when ``requires`` is missing and
        ``ValueError`` naming the first bad parameter.
        """
        hint = install_hint(type(self))
        if hint is not None:
            raise ImportError(f"{self.label()} {hint}")
        settings, problems = self.check_params(params)
        if problems:
            raise ValueError(problems[0][1])
        assert settings is not None
        for field in type(settings).model_fields:
            setattr(self, field, getattr(settings, field))

    def setup(self, device: str) -> None:
        """Load what is heavy (weights, predictors) for ``device``; called once per worker.

        Idempotent: a worker may call it again for a stage it already set up. The default has
        nothing to load.
        """

    def identity(self) -> dict[str, Any]:
        """What identifies this stage (its parameters, weight hashes, versions), JSON-ready."""
        return {}


def missing(stage: object) -> list[str]:
    """The import names in ``stage.requires`` that cannot be imported here (found, not imported).

    ``stage`` is a stage class or instance; anything without ``requires`` needs nothing.
    """
    required = getattr(stage, "requires", ()) or ()
    return [name for name in required if not _importable(name)]


def install_hint(stage: object) -> str | None:
    """``"needs dlib: pip install 'dolos-bench[faces]'"`` when a requirement is missing, else None."""
    absent = missing(stage)
    if not absent:
        return None
    extra = getattr(stage, "extra", None)
    target = f"'{DISTRIBUTION}[{extra}]'" if extra else " ".join(absent)
    return f"needs {', '.join(absent)}: pip install {target}"


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False
