"""The two local engines: inline (one worker in this process) and a forkserver process pool.

Processes fork from a clean forkserver (not from this process and its progress-bar threads),
build their worker once, ignore SIGINT (Ctrl-C is handled once, by the parent, which stops the
pool) and run torch on one thread each: N busy processes on N cores are faster than N processes
fighting over N×N threads.

A process pool may also run worker 0 in a thread of the parent (``parent_works``): for CPU work
that releases the GIL (image decoding and encoding), where the parent would otherwise only wait,
it works from the first unit on while the processes start, and needs one process fewer.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
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


def _run_chunk(chunk: list[tuple[str, Any]], worker: Worker | None = None) -> list[Any]:
    """A chunk's results from this process's worker (or ``worker``, the parent's own)."""
    worker = worker or _WORKER
    assert worker is not None, "worker process was not initialised"
    results = []
    for where, unit in chunk:
        try:
            results.append(worker(unit))
        except Exception as exc:
            raise _describe_failure(exc, where)
    return results


@dataclass
class _Chunk:
    seq: int
    home: int | None
    units: list[tuple[str, Any]]


class ProcessPool(Pool):
    """One single-worker executor per worker, so that a unit can go to the worker that holds its data.

    Chunks are dispatched as workers have room (:data:`DEPTH` each, one near the end): a free
    worker takes the earliest waiting chunk whose home it is (or that has none), and only when
    the look-ahead window holds none of those does it take another worker's chunk. The window
    (``4 x workers`` chunks submitted or waiting) bounds memory whatever the input's length.

    With ``own``, worker 0 is that worker, run by a thread of this process (``executors[0]``):
    the parent works too, from the first unit on while the processes start, and what it holds
    for a unit goes along when another worker takes it (:meth:`Worker.travel`).
    """

    def __init__(self, executors: list[Executor], chunksize: int, own: Worker | None = None,
                 started: list[threading.Event] | None = None,
                 boot_failures: list[BaseException] | None = None) -> None:
        self.executors, self.chunksize, self.own = executors, chunksize, own
        self.workers = len(executors)
        # a process booting in the background gets chunks once it has started (None: at once)
        self._started = started or [None] * len(executors)
        self._boot_failures = boot_failures if boot_failures is not None else []
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

    def _free(self, depth: int) -> list[int]:
        """Started workers with room, least loaded first.

        A process that could not start is an error here, not a quiet fall-back to fewer workers.
        """
        if self._boot_failures:
            failure = self._boot_failures[0]
            raise RuntimeError(f"a worker process could not start: {failure!r}") from failure
        return sorted((w for w, started in enumerate(self._started)
                       if (started is None or started.is_set()) and self._load(w) < depth), key=self._load)

    def _dispatch(self, waiting: list[_Chunk], futures: dict[int, Future], exhausted: bool) -> None:
        """Submit waiting chunks to workers with room: at home first, elsewhere when nothing is."""
        # near the end, no chunk waits in a busy worker's queue while another could take it
        depth = 1 if exhausted and len(waiting) <= self.workers else DEPTH
        while waiting:
            free = self._free(depth)
            if not free:
                return
            for worker in free:
                pick = next((c for c in waiting if c.home is None or c.home == worker), None)
                if pick is not None:
                    break
            else:  # every waiting chunk's home is busy: the least loaded worker takes the earliest
                worker, pick = free[0], waiting[0]
            waiting.remove(pick)
            units = pick.units
            if self.own is not None and worker != 0:  # what the parent's worker holds for it goes along
                units = [(where, self.own.travel(unit)) for where, unit in units]
            future = self.executors[worker].submit(_run_chunk, units, self.own if worker == 0 else None)
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
                        if home is None:  # no homes to weigh: each unit starts as it comes, so the
                            # first units of a slow source (shards as they are inpainted) do not wait
                            # for the window to fill
                            self._dispatch(waiting, futures, exhausted)
                self._dispatch(waiting, futures, exhausted)
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


def _boot(executors: list[ProcessPoolExecutor], started: list[threading.Event],
          failures: list[BaseException]) -> None:
    """Start each executor's process (a forkserver start blocks until the server has imported its
    preload) and mark it started once it has run a first, empty unit."""
    def done(future: Future, event: threading.Event) -> None:
        if future.exception() is not None:
            failures.append(future.exception())
        event.set()

    for executor, event in zip(executors, started):
        try:
            executor.submit(int).add_done_callback(lambda future, event=event: done(future, event))
        except Exception as exc:  # e.g. a script without the ``if __name__ == "__main__"`` guard
            failures.append(exc)
            event.set()


class ProcessEngine(Engine):
    """``plan.workers`` processes from a forkserver that preloads ``preload`` once.

    ``parent_works``: worker 0 runs in a thread of this process instead, and ``plan.workers - 1``
    processes do the rest. For CPU work on as many cores as workers (decoding and encoding
    release the GIL), where the parent would only wait: it works from the first unit on, while
    the processes start in the background.
    """

    def __init__(self, *, preload: Sequence[str] = (), chunksize: int = 1, parent_works: bool = False) -> None:
        self.preload, self.chunksize, self.parent_works = list(preload), chunksize, parent_works

    @contextmanager
    def start(self, plan: WorkerPlan) -> Iterator[Pool]:
        context = multiprocessing.get_context("forkserver")
        if self.preload:
            context.set_forkserver_preload(self.preload)
        pids = context.Array("i", plan.workers)  # filled in by each worker, so Ctrl-C can end them at once
        first = 1 if self.parent_works else 0
        processes = [ProcessPoolExecutor(1, mp_context=context, initializer=_start_worker,
                                         initargs=(plan, index, pids))
                     for index in range(first, plan.workers)]
        executors: list[Executor] = list(processes)
        own, booting, started = None, None, [threading.Event() for _ in processes]
        failures: list[BaseException] = []
        try:
            if self.parent_works:
                # the processes boot (interpreter, preload, their own worker) while this one builds its own
                booting = threading.Thread(target=_boot, args=(processes, started, failures), daemon=True)
                booting.start()
                own = plan.build(0)
                executors.insert(0, ThreadPoolExecutor(1, thread_name_prefix="dolos-worker-0"))
            yield ProcessPool(executors, self.chunksize, own, [None, *started] if own is not None else None, failures)
        except KeyboardInterrupt:
            _end_workers(pids)
            if own is not None:
                own.cancel()
            raise
        finally:
            if booting is not None:  # a process stopped while it starts would fail to read its setup
                booting.join()
                for event in started:
                    event.wait(timeout=60)
            for executor in executors:  # stop every worker's queue first, then wait for the running units
                executor.shutdown(wait=False, cancel_futures=True)
            for executor in executors:
                executor.shutdown(wait=True)
            if own is not None:
                own.close()


def engine_for(workers: int, *, preload: Sequence[str] = (), chunksize: int = 1,
               parent_works: bool = False) -> Engine:
    """Inline for one worker, a process pool for more (see :class:`ProcessEngine` for ``parent_works``)."""
    if workers <= 1:
        return InlineEngine()
    return ProcessEngine(preload=preload, chunksize=chunksize, parent_works=parent_works)


__all__ = ["InlineEngine", "ProcessEngine", "engine_for"]
