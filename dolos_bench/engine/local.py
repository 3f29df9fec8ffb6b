"""The two local engines: inline (one worker in this process) and a forkserver process pool.

Processes fork from a clean forkserver (not from this process and its progress-bar threads),
build their worker once, ignore SIGINT (Ctrl-C is handled once, by the parent, which stops the
pool) and run torch on one thread each: N busy processes on N cores are faster than N processes
fighting over N×N threads.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

from .base import Engine, Pool, Worker, WorkerPlan


def _describe_failure(exc: BaseException, where: str) -> BaseException:
    """The worker's own exception, with a note naming the unit; types survive, so a user error
    raised by a model still reads as one."""
    if hasattr(exc, "add_note"):
        exc.add_note(f"(while working on {where})")
    return exc


# -- inline -----------------------------------------------------------------------------------------


class InlinePool(Pool):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def map(self, units: Iterable[Any], *, describe: Callable[[Any], str] = repr) -> Iterator[Any]:
        for unit in units:
            try:
                yield self.worker(unit)
            except Exception as exc:
                raise _describe_failure(exc, describe(unit))

    def imap_unordered(self, units: Sequence[Any], *, describe: Callable[[Any], str] = repr) -> Iterator[tuple[int, Any]]:
        for index, result in enumerate(self.map(units, describe=describe)):
            yield index, result


class InlineEngine(Engine):
    """One worker in this process, on the plan's first device: debuggable, no pickling."""

    @contextmanager
    def start(self, plan: WorkerPlan) -> Iterator[Pool]:
        worker = plan.build(0)
        try:
            yield InlinePool(worker)
        finally:
            worker.close()


# -- processes --------------------------------------------------------------------------------------

_WORKER: Worker | None = None


def _start_worker(plan: WorkerPlan, counter: Any) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _WORKER = plan.build(index)


def _run_chunk(chunk: list[tuple[str, Any]]) -> list[Any]:
    assert _WORKER is not None, "worker process was not initialised"
    results = []
    for where, unit in chunk:
        try:
            results.append(_WORKER(unit))
        except Exception as exc:
            raise _describe_failure(exc, where)
    return results


class ProcessPool(Pool):
    def __init__(self, executor: ProcessPoolExecutor, workers: int, chunksize: int) -> None:
        self.executor, self.workers, self.chunksize = executor, workers, chunksize

    def _chunks(self, units: Iterable[Any], describe: Callable[[Any], str]) -> Iterator[list[tuple[str, Any]]]:
        chunk: list[tuple[str, Any]] = []
        for unit in units:
            chunk.append((describe(unit), unit))
            if len(chunk) >= self.chunksize:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def map(self, units: Iterable[Any], *, describe: Callable[[Any], str] = repr) -> Iterator[Any]:
        """In input order, with a bounded window of chunks in flight (memory stays flat)."""
        window: deque[Future] = deque()
        chunks = self._chunks(units, describe)
        try:
            for chunk in chunks:
                window.append(self.executor.submit(_run_chunk, chunk))
                if len(window) >= 4 * self.workers:
                    yield from window.popleft().result()
            while window:
                yield from window.popleft().result()
        finally:
            for future in window:
                future.cancel()

    def imap_unordered(self, units: Sequence[Any], *, describe: Callable[[Any], str] = repr) -> Iterator[tuple[int, Any]]:
        futures = {self.executor.submit(_run_chunk, [(describe(u), u)]): i for i, u in enumerate(units)}
        remaining = set(futures)
        try:
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=futures.__getitem__):
                    yield futures[future], future.result()[0]
        finally:
            for future in remaining:
                future.cancel()


class ProcessEngine(Engine):
    """``plan.workers`` processes from a forkserver that preloads ``preload`` once."""

    def __init__(self, *, preload: Sequence[str] = (), chunksize: int = 1) -> None:
        self.preload, self.chunksize = list(preload), chunksize

    @contextmanager
    def start(self, plan: WorkerPlan) -> Iterator[Pool]:
        context = multiprocessing.get_context("forkserver")
        if self.preload:
            context.set_forkserver_preload(self.preload)
        counter = context.Value("i", 0)
        executor = ProcessPoolExecutor(plan.workers, mp_context=context, initializer=_start_worker,
                                       initargs=(plan, counter))
        try:
            yield ProcessPool(executor, plan.workers, self.chunksize)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


def engine_for(workers: int, *, preload: Sequence[str] = (), chunksize: int = 1) -> Engine:
    """Inline for one worker, a process pool for more."""
    return InlineEngine() if workers <= 1 else ProcessEngine(preload=preload, chunksize=chunksize)


__all__ = ["InlineEngine", "ProcessEngine", "engine_for"]
