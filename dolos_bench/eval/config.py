"""What to score and how: one :class:`ScoringConfig` from the CLI through eval and stress to the workers.

``bench eval`` and ``bench stress`` share most of their options (model, data, device, batch
size, ...). Passing them as a dozen keywords through every layer let the layers drift apart;
one frozen, picklable object built once by the CLI (or by a library caller) travels instead,
unchanged, down to every worker process, which rebuilds its model, data and protocol from it.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import ConfigDict, ValidationInfo, field_validator, model_validator

from dolos_bench.config import Strict
from dolos_bench.engine.select import EngineChoice

_MINIMUM = {"batch_size": 1, "limit": 1, "bootstrap": 0, "workers": 1, "chunk_size": 1}
"""The smallest value of each number option (``limit`` and ``bootstrap`` may also be ``None``)."""


class ScoringConfig(Strict):
    """One scoring run's options, as ``bench eval`` / ``bench stress`` take them.

    ``options`` are the model's keyword arguments (``--model-arg``, with ``--weights`` as
    ``weights``). ``bootstrap`` ``None`` means the command's own default (1000 resamples for
    eval, 200 per grid point for stress); ``seed`` seeds the bootstrap. ``workers`` > 1 scores
    units in that many processes, each with its own copy of the model on its own device;
    ``chunk_size`` is the rows per unit of ``bench eval`` (stress units are grid points).
    ``engine`` ``ray`` scores units on Ray actors instead (``address``: a running cluster). None
    of ``workers``, ``chunk_size``, ``batch_size`` or ``engine`` changes a number.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    data: str
    options: dict[str, Any] = {}
    split: str = "test"
    protocol: str = "default"
    device: str = "cpu"
    batch_size: int = 16
    limit: int | None = None
    exact: bool = False
    bootstrap: int | None = None
    seed: int = 0
    workers: int = 1
    chunk_size: int = 1024
    engine: Literal["local", "ray"] = "local"
    address: str | None = None

    @field_validator("model", "data", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        """A ``Path`` names a model file or dataset folder as well as its text does."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator(*_MINIMUM)
    @classmethod
    def _at_least(cls, value: int | None, info: ValidationInfo) -> int | None:
        minimum = _MINIMUM[str(info.field_name)]
        if value is not None and value < minimum:
            raise ValueError(f"{info.field_name} must be at least {minimum}, got {value}")
        return value

    @model_validator(mode="after")
    def _engine_known(self) -> "ScoringConfig":
        self.engine_choice()  # a UserError (--address without ray, Ray missing) passes through pydantic as it is
        return self

    def engine_choice(self) -> EngineChoice:
        """Where the units run: this machine, or Ray (``address``: a cluster; None: a local instance)."""
        return EngineChoice(self.engine, self.address)

    def bootstrap_or(self, default: int) -> int:
        """The resamples to draw: the configured number, or the command's ``default``."""
        return default if self.bootstrap is None else self.bootstrap


__all__ = ["ScoringConfig"]
