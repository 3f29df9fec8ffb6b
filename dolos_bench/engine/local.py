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
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from .base import Engine, Home, Pool, Worker, WorkerPlan


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

    def map(self, units: Iterable[Any], *, describe: Callable[[Any], str] = repr,
            home: Home | None = None) -> Iterator[Any]:
        for unit in units:
            try:
                yield self.worker(unit)
            except Exception as exc:
                raise _describe_failure(exc, describe(unit))

    def imap_unordered(self, units: Sequence[Any], *, describe: Callable[[Any], str] = repr,
                       home: Home | None = None) -> Iterator[tuple[int, Any]]:
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

DEPTH = 2  # chunks in flight per worker: one running, one queued, so a worker never waits on the parent


def _start_worker(plan: WorkerPlan, index: int, pids: Any) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    pids[index] = os.getpid()
    _WORKER = plan.build(index)


def _end_workers(pids: Any) -> None:
    """Terminate the worker processes at once (Ctrl-C: their units are unfinished, redone on resume)."""
    for pid in list(pids):
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _run_chunk(chunk: list[tuple[str, Any]]) -> list[Any]:
    assert _WORKER is not None, "worker process was not initialised"
    results = []
    for where, unit in chunk:
        try:
            results.append(_WORKER(unit))
        except Exception as exc:
            raise _describe_failure(exc, where)
    return results


@dataclass
class _Chunk:
    seq: int
    home: int | None
    units: list[tuple[str, Any]]


class ProcessPool(Pool):
    """One single-process executor per worker, so that a unit can go to the worker that holds its data.

    Chunks are dispatched as workers have room (:data:`DEPTH` each): a free worker takes the
    earliest waiting chunk whose home it is (or that has none), and only when the look-ahead
    window holds none of those does it take another worker's chunk. The window (``4 x workers``
    chunks submitted or waiting) bounds memory whatever the input's length.
    """

    def __init__(self, executors: list[ProcessPoolExecutor], chunksize: int) -> None:
        self.executors, self.chunksize = executors, chunksize
        self.workers = len(executors)
        self._inflight: list[set[Future]] = [set() for _ in executors]  # across every running map

    @staticmethod
    def _chunks(units: Iterable[Any], describe: Callable[[Any], str], home: Home | None,
                chunksize: int) -> Iterator[_Chunk]:
        """Consecutive units of one home, ``chunksize`` at a time."""
        chunk: _Chunk | None = None
        seq = 0
        for unit in units:
            where = home(unit) if home is not None else None
            if chunk is not None and (chunk.home != where or len(chunk.units) >= chunksize):
                yield chunk
                chunk, seq = None, seq + 1
            if chunk is None:
                chunk = _Chunk(seq, where, [])
            chunk.units.append((describe(unit), unit))
        if chunk is not None:
            yield chunk

    def _load(self, worker: int) -> int:
        running = self._inflight[worker]
        running.difference_update([f for f in running if f.done()])
        return len(running)

    def _dispatch(self, waiting: list[_Chunk], futures: dict[int, Future]) -> None:
        """Submit waiting chunks to workers with room: at home first, elsewhere when nothing is."""
        while waiting:
            free = sorted((w for w in range(self.workers) if self._load(w) < DEPTH), key=self._load)
            if not free:
                return
            for worker in free:
                pick = next((c for c in waiting if c.home is None or c.home == worker), None)
                if pick is not None:
                    break
            else:  # every waiting chunk's home is busy: the least loaded worker takes the earliest
                worker, pick = free[0], waiting[0]
            waiting.remove(pick)
            future = self.executors[worker].submit(_run_chunk, pick.units)
            self._inflight[worker].add(future)
            futures[pick.seq] = future

    def _run(self, units: Iterable[Any], describe: Callable[[Any], str], home: Home | None, *,
             ordered: bool, chunksize: int) -> Iterator[tuple[int, list[Any]]]:
        """(chunk sequence number, results) in order or as they finish."""
        source = self._chunks(units, describe, home, chunksize)
        waiting: list[_Chunk] = []
        futures: dict[int, Future] = {}
        window, next_out, exhausted = 4 * self.workers, 0, False
        try:
            while True:
                while not exhausted and len(waiting) + len(futures) < window:
                    chunk = next(source, None)
                    if chunk is None:
                        exhausted = True
                    else:
                        waiting.append(chunk)
                self._dispatch(waiting, futures)
                if not futures and not waiting:
                    return
                if ordered:
                    ready = [next_out] if next_out in futures and futures[next_out].done() else []
                else:
                    ready = sorted(seq for seq, f in futures.items() if f.done())
                if not ready:  # wake when ours is done or a worker has room for more
                    running = {f for f in set(futures.values()).union(*self._inflight) if not f.done()}
                    wait(running, return_when=FIRST_COMPLETED)
                    continue
                for seq in ready:
                    future = futures.pop(seq)
                    next_out = seq + 1
                    yield seq, future.result()
        finally:
            for future in futures.values():
                future.cancel()

    def map(self, units: Iterable[Any], *, describe: Callable[[Any], str] = repr,
            home: Home | None = None) -> Iterator[Any]:
        """In input order, with a bounded window of chunks in flight (memory stays flat)."""
        for _, results in self._run(units, describe, home, ordered=True, chunksize=self.chunksize):
            yield from results

    def imap_unordered(self, units: Sequence[Any], *, describe: Callable[[Any], str] = repr,
                       home: Home | None = None) -> Iterator[tuple[int, Any]]:
        for seq, results in self._run(units, describe, home, ordered=False, chunksize=1):
            yield seq, results[0]


class ProcessEngine(Engine):
    """``plan.workers`` processes from a forkserver that preloads ``preload`` once."""

    def __init__(self, *, preload: Sequence[str] = (), chunksize: int = 1) -> None:
        self.preload, self.chunksize = list(preload), chunksize

    @contextmanager
    def start(self, plan: WorkerPlan) -> Iterator[Pool]:
        context = multiprocessing.get_context("forkserver")
        if self.preload:
            context.set_forkserver_preload(self.preload)
        pids = context.Array("i", plan.workers)  # filled in by each worker, so Ctrl-C can end them at once
        executors = [ProcessPoolExecutor(1, mp_context=context, initializer=_start_worker,
                                         initargs=(plan, index, pids))
                     for index in range(plan.workers)]
        try:
            yield ProcessPool(executors, self.chunksize)
        except KeyboardInterrupt:
            _end_workers(pids)
            raise
        finally:
            for executor in executors:  # stop every worker's queue first, then wait for the running units
                executor.shutdown(wait=False, cancel_futures=True)
            for executor in executors:
                executor.shutdown(wait=True)


def engine_for(workers: int, *, preload: Sequence[str] = (), chunksize: int = 1) -> Engine:
    """Inline for one worker, a process pool for more."""
    return InlineEngine() if workers <= 1 else ProcessEngine(preload=preload, chunksize=chunksize)


__all__ = ["InlineEngine", "ProcessEngine", "engine_for"]
