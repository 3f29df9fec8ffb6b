"""Workers for the engine tests; importable by name so forkserver processes can rebuild them."""

from __future__ import annotations

import os

from dolos_bench.engine import Worker


class SquareWorker(Worker):
    """Squares numbers; remembers its device and process so tests can see where units ran."""

    def __init__(self, spec, device: str) -> None:
        super().__init__(spec, device)
        self.calls = 0

    def __call__(self, unit: int):
        self.calls += 1
        if unit == self.spec.get("fail_on"):
            raise ValueError(f"cannot square {unit}")
        return unit * unit, self.device, os.getpid()


class ParentOnlyWorker(SquareWorker):
    """Cannot be built outside the process named in the spec: a worker process that fails to start."""

    def __init__(self, spec, device: str) -> None:
        if os.getpid() != spec["parent"]:
            raise RuntimeError("this worker cannot start in a process")
        super().__init__(spec, device)
