"""Which engine runs a command's workers: this machine (``local``) or a Ray cluster (``ray``).

``bench build``, ``bench eval`` and ``bench stress`` take ``--engine local|ray`` and
``--address``; they hand an :class:`EngineChoice` down to the code that starts workers, which
asks it for an engine per pool. Local stays the default and today's behaviour.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Literal, Sequence

from ..errors import UserError
from .base import Engine
from .local import engine_for

ENGINES = ("local", "ray")
EngineKind = Literal["local", "ray"]


@dataclass(frozen=True)
class EngineChoice:
    """``kind`` of engine and, for Ray, the cluster ``address`` (None: start a local Ray instance)."""

    kind: EngineKind = "local"
    address: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise UserError(f"unknown engine {self.kind!r}: use one of {', '.join(ENGINES)}")
        if self.address is not None and self.kind != "ray":
            raise UserError("--address names a Ray cluster: use it with --engine ray")
        if self.is_ray and importlib.util.find_spec("ray") is None:  # say so before any work starts
            from .ray import INSTALL_HINT, RayUnavailable

            raise RayUnavailable(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}")

    @property
    def is_ray(self) -> bool:
        return self.kind == "ray"

    def engine(self, workers: int, *, preload: Sequence[str] = (), chunksize: int = 1, parent_works: bool = False,
               num_cpus: float = 1.0, num_gpus: float = 0.0, shared: Sequence[str | os.PathLike[str]] = (),
               name: str | None = None) -> Engine:
        """The engine for one pool of ``workers`` workers.

        Local: inline for one worker, else a process pool (``preload``, ``chunksize`` and
        ``parent_works`` as :func:`~dolos_bench.engine.local.engine_for` takes them). Ray: one
        actor per worker reserving ``num_cpus``/``num_gpus``, after checking that every actor can
        write the ``shared`` folders and that this process sees what they wrote.
        """
        if not self.is_ray:
            return engine_for(workers, preload=preload, chunksize=chunksize, parent_works=parent_works)
        from .ray import RayEngine, Resources

        return RayEngine(self.address, resources=Resources(num_cpus, num_gpus), shared=shared, name=name)


LOCAL = EngineChoice()

__all__ = ["ENGINES", "LOCAL", "EngineChoice", "EngineKind"]
