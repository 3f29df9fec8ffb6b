"""The one worker engine: model-holding workers, run inline or in a process pool (Ray next).

Build, eval and stress hand their work to an :class:`~dolos_bench.engine.base.Engine`; no other
module creates processes. See :mod:`dolos_bench.engine.base` for the seam and
:mod:`dolos_bench.engine.local` for the two local implementations.
"""

from .base import Engine, Pool, Worker, WorkerPlan, device_for
from .local import InlineEngine, ProcessEngine, engine_for

__all__ = ["Engine", "InlineEngine", "Pool", "ProcessEngine", "Worker", "WorkerPlan",
           "device_for", "engine_for"]
