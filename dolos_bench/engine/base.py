"""The seam between the work (build stages, scoring units) and where it runs.

A :class:`Worker` is built once per process (later once per Ray actor) from a picklable spec and
its device, and keeps what is expensive to load (a generator's weights, a localizer) for every
batch it is given. An :class:`Engine` starts a set of workers and returns a :class:`Pool` whose
``map`` yields results in the order of its inputs, whatever finished first: so output bytes never
depend on how many workers there were. A unit that raises re-raises in the parent as the worker's
own exception (so a user error stays one), with a note naming the unit.

A unit may name its *home*: the index of the worker that already holds what it needs (an image
that worker decoded earlier). Engines send it there when that worker has room and otherwise to
any idle worker, so affinity saves work without ever leaving a worker idle.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, Sequence, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Worker(ABC, Generic[In, Out]):
    """Holds its models; turns one unit of work into one result.

    Subclasses take ``(spec, device)``: ``spec`` is whatever picklable description the work needs
    (a recipe, a run setup), ``device`` the one this worker owns (``"cpu"``, ``"cuda:1"``).
    """

    index: int = 0  # which worker of its plan this is (set by WorkerPlan.build): what a unit's home names

    def __init__(self, spec: Any, device: str) -> None:
        self.spec, self.device = spec, device

    @abstractmethod
    def __call__(self, unit: In) -> Out:
        """The result of one unit; it must depend only on the unit, never on what came before."""

    def close(self) -> None:
        """Release models and files; called once when the pool stops."""

    def cancel(self) -> None:
        """Ask the unit running in another thread of this process to stop soon (Ctrl-C): it may
        raise instead of finishing. Engines call it for a worker they run in a thread."""

    def travel(self, unit: In) -> In:
        """``unit`` as it goes to another worker, with what this worker holds for it (pixels it
        decoded earlier), so the other need not redo that work. Called only where this worker's
        memory is at hand (the parent's own worker); the default adds nothing.
        """
        return unit


@dataclass(frozen=True)
class WorkerPlan:
    """What to start: ``workers`` copies of ``factory(spec, device)``.

    ``factory`` is a :class:`Worker` subclass or an importable ``"module:Class"`` string (what a
    process or Ray actor can rebuild on its side). Worker ``i`` gets ``devices[i % len(devices)]``.
    """

    factory: type[Worker] | str
    spec: Any
    workers: int = 1
    devices: tuple[str, ...] = ("cpu",)

    def build(self, index: int) -> Worker:
        factory = self.factory
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
        worker = factory(self.spec, device_for(self.devices, index))
        worker.index = index
        return worker


def device_for(devices: Sequence[str], index: int) -> str:
    """The device of worker ``index``: round-robin over ``devices`` (one GPU each, or all on cpu)."""
    return devices[index % len(devices)] if devices else "cpu"


Home = Callable[[Any], "int | None"]


class Pool(ABC):
    """Started workers. ``map`` keeps input order; ``imap_unordered`` yields (index, result) as done."""

    workers: int = 1

    @abstractmethod
    def map(self, units: Iterable[In], *, describe: Callable[[In], str] = repr,
            home: Home | None = None) -> Iterator[Out]:
        """Results in the order of ``units``; a failing unit raises its exception in its place.

        ``home(unit)`` is the worker index a unit prefers (see the module docstring), or None.
        Results never depend on where a unit ran, only its cost does.
        """

    @abstractmethod
    def imap_unordered(self, units: Sequence[In], *, describe: Callable[[In], str] = repr,
                       home: Home | None = None) -> Iterator[tuple[int, Out]]:
        """(position in ``units``, result) as units finish; the first failure stops the rest."""


class Engine(ABC):
    """Where workers run: inline, a local process pool, and next a Ray cluster."""

    @abstractmethod
    def start(self, plan: WorkerPlan) -> AbstractContextManager[Pool]:
        """Start the plan's workers; leaving the context stops them (also on Ctrl-C or an error)."""
