"""The ``bench`` command line: one click group (:mod:`.commands`), thin commands over the library API.

Each command group that is more than a few lines lives in its own module here and is attached to
the group below, so that adding a command never means editing another's module.
"""

from __future__ import annotations

from .commands import BenchGroup, console, eval_summary, fail, main, progress_bar
from . import weights as _weights  # noqa: E402,F401  (bench weights ls / fetch)
from . import train as _train  # noqa: E402,F401  (bench train)
from . import study as _study  # noqa: E402,F401  (bench train-study)
from . import convert as _convert  # noqa: E402,F401  (bench convert guided-diffusion / compvis-ldm)

__all__ = ["BenchGroup", "console", "eval_summary", "fail", "main", "progress_bar"]
