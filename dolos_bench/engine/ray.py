"""The Ray engine: the same workers, held by Ray actors on a cluster (or a local Ray instance).

It is the second implementation of :class:`~dolos_bench.engine.base.Engine`, not another code
path: build, eval and stress hand it the :class:`~dolos_bench.engine.base.WorkerPlan` they hand
the local engines, and each actor rebuilds its :class:`~dolos_bench.engine.base.Worker` once from
the plan's factory, spec and device, then keeps its models for every unit it is sent. One actor
is one worker: it reserves ``num_cpus`` cores and ``num_gpus`` GPUs (Ray picks the GPU and hides
the others, so a GPU actor's device is ``cuda:0``).

Results come back in input order (``map``) or as they finish (``imap_unordered``), exactly as
locally; a unit's *home* is a preference (an idle actor takes any unit rather than wait). A unit
that raises re-raises here as its own exception with a note naming the unit. An actor that dies
(a node lost, a worker killed) is restarted by Ray and its units are retried
(``max_restarts`` / ``max_task_retries``); a unit whose actor keeps dying is reported as
:class:`UnitFailed` with the unit's description (its ids). Ray is an optional extra: it is
imported when an engine starts, never by the core.

Everything a worker writes (a build's shards, an eval's checkpoints) must land in a folder that
every node sees: the folders named in ``shared`` are probed from every actor before any work.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..errors import UserError
from .base import Engine, Home, Pool, Worker, WorkerPlan, device_for

INSTALL_HINT = "pip install 'dolos-bench[ray]'"
DEPTH = 2  # units in flight per actor: one running, one queued, so an actor never waits on the parent
PROBE_PREFIX = ".dolos-ray-probe-"


class RayUnavailable(UserError, ImportError):
    """``--engine ray`` without Ray installed."""


class RayEngineError(UserError, RuntimeError):
    """The cluster cannot run the work as asked: unreachable, too small, or a folder not shared."""


class UnitFailed(RuntimeError):
    """A unit whose Ray worker died every time it was tried (after Ray's restarts and retries)."""


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error with the command that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(f"--engine ray needs Ray, which is not installed ({exc}): {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class Resources:
    """What each actor of a pool reserves on the cluster (Ray's own ``num_cpus``/``num_gpus``)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


def _describe_failure(exc: BaseException, where: str) -> BaseException:
    if hasattr(exc, "add_note"):
        exc.add_note(f"(while working on {where}, on a Ray worker)")
    return exc


# -- the actor ------------------------------------------------------------------------------------------


class WorkerHost:
    """What each actor runs: builds one worker from the plan, runs its units, probes folders.

    Not decorated with ``@ray.remote`` here (that would import Ray with this module);
    :class:`RayEngine` wraps it when it starts.
    """

    def __init__(self, plan: WorkerPlan, index: int, threads: int) -> None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        # A worker that cannot be built is reported by ``ready`` as its own exception (Ray would
        # only keep the text of an error raised here, and restart the actor to fail again).
        self.failure: Exception | None = None
        try:
            self.worker: Worker = plan.build(index)
        except Exception as exc:  # noqa: BLE001 - re-raised by ready(), in the parent
            self.failure = exc

    def ready(self) -> dict[str, Any]:
        import ray

        if self.failure is not None:
            raise self.failure
        return {"node": ray.util.get_node_ip_address(), "pid": os.getpid(), "device": self.worker.device}

    def run(self, unit: Any) -> Any:
        return self.worker(unit)

    def probe(self, folder: str, name: str, token: str) -> str | None:
        """Write ``token`` into ``folder/name``; None, or why it could not."""
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            path = Path(folder) / name
            with open(path, "w") as fh:
                fh.write(token)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def close(self) -> None:
        if self.failure is None:
            self.worker.close()


def judge_probes(folder: Path, seen: Sequence[tuple[str, str, str | None]]) -> None:
    """Refuse a folder that some actor could not write, or whose file this process cannot see.

    ``seen`` holds ``(node, token, error)`` per actor, ``error`` from :meth:`WorkerHost.probe`.
    The files are read back here, where the parent commits the work: a folder that is local to
    each node (a plain ``/tmp`` path on a cluster) is written without error and still not shared.
    """
    for node, token, error in seen:
        if error is not None:
            raise RayEngineError(
                f"a Ray worker on node {node} cannot write to {folder} ({error}): the output must be a folder that "
                "every node of the cluster can write (a shared filesystem such as NFS), at the same path")
        path = folder / f"{PROBE_PREFIX}{token}"
        try:
            found = path.read_text()
        except OSError:
            found = None
        if found != token:
            raise RayEngineError(
                f"a file a Ray worker on node {node} wrote to {folder} is not visible here: {folder} is not shared"
                " between the nodes; put the output on a filesystem every node mounts at the same path (NFS, a"
                " cluster filesystem)")


# -- the pool -------------------------------------------------------------------------------------------


@dataclass
class _Waiting:
    position: int
    unit: Any
    where: str
    home: int | None


class RayPool(Pool):
    """Started actors; every unit is one actor call, at most :data:`DEPTH` in flight per actor.

    In-flight calls are counted across every running ``map`` of the pool (a build's prepare map
    feeds its finish map on the same actors), so a free actor is one with room whichever map
    filled it. A free actor takes the earliest waiting unit whose home it is (or that has none),
    else the earliest of all: homes save work, never leave an actor idle.
    """

    def __init__(self, ray: Any, actors: list[Any], *, max_task_retries: int) -> None:
        self.ray, self.actors, self.max_task_retries = ray, actors, max_task_retries
        self.workers = len(actors)
        self._inflight: list[set[Any]] = [set() for _ in actors]
        self._mine: set[Any] = set()  # refs of every open map, so Ctrl-C can cancel them

    def _prune(self) -> None:
        every = [ref for refs in self._inflight for ref in refs]
        if not every:
            return
        ready, _ = self.ray.wait(every, num_returns=len(every), timeout=0, fetch_local=False)
        ready_set = set(ready)
        for refs in self._inflight:
            refs.difference_update(ready_set)

    def _free(self) -> list[int]:
        self._prune()
        return sorted((w for w in range(self.workers) if len(self._inflight[w]) < DEPTH),
                      key=lambda w: len(self._inflight[w]))

    def _dispatch(self, waiting: list[_Waiting], refs: dict[Any, _Waiting]) -> None:
        while waiting:
            free = self._free()
            if not free:
                return
            for actor in free:
                pick = next((u for u in waiting if u.home is None or u.home == actor), None)
                if pick is not None:
                    break
            else:
                actor, pick = free[0], waiting[0]
            waiting.remove(pick)
            ref = self.actors[actor].run.remote(pick.unit)
            self._inflight[actor].add(ref)
            self._mine.add(ref)
            refs[ref] = pick

    def _outcome(self, ref: Any, item: _Waiting) -> tuple[bool, Any]:
        """(ok, result or the exception to raise in the unit's place)."""
        exceptions = self.ray.exceptions
        try:
            return True, self.ray.get(ref)
        except exceptions.RayTaskError as exc:  # the worker raised: its own exception, named
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                cause.__cause__ = None
                return False, _describe_failure(cause, item.where)
            return False, _describe_failure(exc, item.where)
        except exceptions.RayActorError as exc:  # the actor died every time Ray retried it
            return False, UnitFailed(
                f"{item.where}: its Ray worker died while working on it, "
                f"{self.max_task_retries + 1} time(s) with restarts; finished work is kept, a rerun resumes"
                f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")

    def _run(self, units: Iterable[Any], describe: Callable[[Any], str], home: Home | None,
             *, ordered: bool) -> Iterator[tuple[int, Any]]:
        source = iter(enumerate(units))
        waiting: list[_Waiting] = []
        refs: dict[Any, _Waiting] = {}
        done: dict[int, tuple[bool, Any]] = {}
        window, next_out, exhausted = 4 * self.workers, 0, False
        try:
            while True:
                while not exhausted and len(waiting) + len(refs) + len(done) < window:
                    got = next(source, None)
                    if got is None:
                        exhausted = True
                    else:
                        position, unit = got
                        waiting.append(_Waiting(position, unit, describe(unit), home(unit) if home else None))
                self._dispatch(waiting, refs)
                if ordered and next_out in done:
                    ok, value = done.pop(next_out)
                    next_out += 1
                    if not ok:
                        raise value
                    yield next_out - 1, value
                    continue
                if not ordered and done:
                    position = min(done)
                    ok, value = done.pop(position)
                    if not ok:
                        raise value
                    yield position, value
                    continue
                if not refs and not waiting and exhausted:
                    return
                # wake when one of ours is done, or, with units waiting, when any actor gets room
                # (a unit of another map of this pool finishing)
                every = list(refs) + ([r for rs in self._inflight for r in rs if r not in refs] if waiting else [])
                if not every:
                    continue
                ready, _ = self.ray.wait(every, num_returns=1, fetch_local=False)
                for ref in ready:
                    if ref in refs:
                        item = refs.pop(ref)
                        self._mine.discard(ref)
                        done[item.position] = self._outcome(ref, item)
        finally:
            self.cancel(list(refs))

    def cancel(self, refs: Sequence[Any] | None = None) -> None:
        """Cancel queued calls (those of one map, or of every map); their units are simply not done."""
        for ref in list(self._mine if refs is None else refs):
            self._mine.discard(ref)
            try:
                self.ray.cancel(ref)
            except Exception:  # noqa: BLE001 - already finished, or its actor is gone
                pass

    def map(self, units: Iterable[Any], *, describe: Callable[[Any], str] = repr,
            home: Home | None = None) -> Iterator[Any]:
        for _, result in self._run(units, describe, home, ordered=True):
            yield result

    def imap_unordered(self, units: Sequence[Any], *, describe: Callable[[Any], str] = repr,
                       home: Home | None = None) -> Iterator[tuple[int, Any]]:
        yield from self._run(units, describe, home, ordered=False)


# -- the engine -----------------------------------------------------------------------------------------


def connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` (``auto``, ``ray://host:10001``), or start a local instance.

    Returns whether this call connected (and so should disconnect at the end); a process that is
    already connected (a test session, a notebook) is used as it is.
    """
    if ray.is_initialized():
        return False
    try:
        if address is None:  # "local": a new instance, even where `ray start` left one running
            ray.init(address="local", include_dashboard=False)
        else:
            ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "start a local Ray instance" if address is None else f"reach the Ray cluster at {address}"
        raise RayEngineError(f"cannot {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                             " (start one with `ray start --head`, or check --address)") from None
    return True


class RayEngine(Engine):
    """``plan.workers`` Ray actors, each holding one worker (see the module docstring).

    ``address``: None starts a local Ray instance (no dashboard) unless this process is already
    connected; ``auto`` or ``ray://host:port`` joins a running cluster. ``shared`` folders are
    probed from every actor before any work. ``placement_timeout_s`` bounds the wait for the
    cluster to place every actor, so that a request it can never meet is an error, not a hang.
    """

    def __init__(self, address: str | None = None, *, resources: Resources = Resources(),
                 shared: Sequence[str | os.PathLike[str]] = (), max_restarts: int = 3, max_task_retries: int = 3,
                 placement_timeout_s: float = 300.0, name: str | None = None) -> None:
        require_ray()
        self.address, self.resources = address, resources
        self.shared = tuple(Path(os.path.abspath(p)) for p in shared)
        self.max_restarts, self.max_task_retries = max_restarts, max_task_retries
        self.placement_timeout_s, self.name = placement_timeout_s, name

    def _device(self, plan: WorkerPlan, index: int) -> tuple[str, ...]:
        """The device of actor ``index``: Ray's GPU (always ``cuda:0`` inside a GPU actor), else the plan's."""
        if self.resources.num_gpus > 0:
            return ("cuda:0",)
        return (device_for(plan.devices, index),)

    def _check_resources(self, ray: Any) -> None:
        """GPUs asked of a cluster that has none: an error at once, not a wait for placement."""
        total = ray.cluster_resources()
        if self.resources.num_gpus > 0 and total.get("GPU", 0) <= 0:
            raise RayEngineError(f"{self._label()} asks for {self.resources.num_gpus:g} GPU per worker, but the Ray"
                                 " cluster has none; add GPU nodes, or set num_gpus: 0")

    def _label(self) -> str:
        return self.name or "the work"

    def _spawn(self, ray: Any, plan: WorkerPlan) -> list[Any]:
        host = ray.remote(WorkerHost)
        run = uuid.uuid4().hex[:8]
        kind = plan.factory if isinstance(plan.factory, str) else f"{plan.factory.__module__}:{plan.factory.__qualname__}"
        base = (self.name or kind.rpartition(":")[2]).replace(" ", "-")
        threads = max(1, int(self.resources.num_cpus))
        return [host.options(num_cpus=self.resources.num_cpus, num_gpus=self.resources.num_gpus,
                             max_restarts=self.max_restarts, max_task_retries=self.max_task_retries,
                             name=f"dolos-{base}-{i}-{run}")
                    .remote(replace(plan, devices=self._device(plan, i)), i, threads)
                for i in range(plan.workers)]

    def _await_ready(self, ray: Any, actors: list[Any]) -> list[dict[str, Any]]:
        """Every actor's node, once all are placed and built; a worker that cannot start is an error."""
        pending = {actor.ready.remote(): i for i, actor in enumerate(actors)}
        infos: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + self.placement_timeout_s
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending),
                                timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                r = self.resources
                raise RayEngineError(
                    f"the Ray cluster placed {len(infos)} of {len(actors)} workers for {self._label()} in "
                    f"{self.placement_timeout_s:g} s (each asks for {r.num_cpus:g} CPU, {r.num_gpus:g} GPU; the "
                    f"cluster has {_resources_text(ray.cluster_resources())}): ask for fewer workers or add nodes")
            for ref in ready:
                index = pending.pop(ref)
                try:
                    infos[index] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the worker's constructor raised
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, UserError):  # a bad device, missing weights: one line
                        cause.__cause__ = None
                        raise cause from None
                    raise RuntimeError(f"a Ray worker could not start: {cause!r}") from cause
                except ray.exceptions.RayActorError as exc:  # its process died while starting
                    last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
                    raise RuntimeError(f"a Ray worker could not start: {last[0]}") from None
        return [infos[i] for i in range(len(actors))]

    def _probe(self, ray: Any, actors: list[Any], infos: list[dict[str, Any]]) -> None:
        for folder in self.shared:
            tokens = [uuid.uuid4().hex for _ in actors]
            errors = ray.get([a.probe.remote(str(folder), f"{PROBE_PREFIX}{t}", t) for a, t in zip(actors, tokens)])
            try:
                judge_probes(folder, [(info["node"], t, e) for info, t, e in zip(infos, tokens, errors)])
            finally:
                for token in tokens:
                    try:
                        (folder / f"{PROBE_PREFIX}{token}").unlink(missing_ok=True)
                    except OSError:  # never written (the folder could not be made)
                        pass

    @contextmanager
    def start(self, plan: WorkerPlan) -> Iterator[Pool]:
        ray = require_ray()
        connected = connect(ray, self.address)
        actors: list[Any] = []
        pool: RayPool | None = None
        clean = True
        try:
            self._check_resources(ray)
            actors = self._spawn(ray, plan)
            infos = self._await_ready(ray, actors)
            self._probe(ray, actors, infos)
            pool = RayPool(ray, actors, max_task_retries=self.max_task_retries)
            yield pool
        except BaseException:
            clean = False
            raise
        finally:
            if pool is not None:
                pool.cancel()
            if clean and actors:  # let each worker release its models; on Ctrl-C or an error, end at once
                try:
                    ray.get([a.close.remote() for a in actors], timeout=30)
                except Exception:  # noqa: BLE001 - a worker that cannot close is ended below anyway
                    pass
            for actor in actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            if connected:
                ray.shutdown()


def cluster_resources() -> dict[str, float]:
    """The connected cluster's total resources (``CPU``, ``GPU``, ...); call while an engine runs."""
    return dict(require_ray().cluster_resources())


def _resources_text(resources: dict[str, float]) -> str:
    shown = [f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU")]
    return ", ".join(shown)


__all__ = ["RayEngine", "RayEngineError", "RayPool", "RayUnavailable", "Resources", "UnitFailed", "WorkerHost",
           "cluster_resources", "judge_probes", "require_ray"]
