"""Evaluation backends: where students are trained and scored, behind one interface.

- ``inline`` (:class:`InlineBackend`): in this process, one student after another.
- ``process`` (:class:`ProcessBackend`): a pool of ``workers`` local processes
  (``concurrent.futures`` with the ``spawn`` start method: no fork of a process that has
  started OpenMP threads).
- ``ray`` (:class:`RayBackend`): ``workers`` Ray actors on the cluster that
  ``ray.init(address=...)`` reaches (a local instance without an address); each actor
  requests ``num_cpus`` / ``num_gpus`` and holds its own :class:`~n2n_gym.evaluation.Evaluator`.

The teacher and the data reach each worker once: the evaluator is pickled once when a
worker starts (process pool initializer; one ``ray.put`` shared by every actor), never
per student. Every worker opens the same SQLite result cache, the single source of
truth; a student in flight is claimed there (:meth:`n2n_gym.evaluation.cache.ResultCache.claimed`),
so two workers never train the same student, even across backends or machines sharing
the file. Within a batch, a student asked for twice is evaluated once.

A worker runs torch on ``threads`` threads (default: this process's thread count split
over the workers, at least 1). CPU kernels reduce in a thread-count-dependent order, so a
reward equals the inline backend's bit for bit when the thread counts are equal.

    backend = make_backend("process", evaluator, workers=2)
    results = backend.evaluate_many([(arch, "fast", 0) for arch in students])
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import contextlib
import dataclasses
import multiprocessing
import os
import pickle
import tempfile
import threading
import time
import weakref
from typing import Any, Sequence

import torch

from n2n_gym.evaluation.cache import pid_dead
from n2n_gym.evaluation.evaluator import EvalResult, Evaluator, count_trainings
from n2n_gym.evaluation.protocols import Protocol, get_protocol
from n2n_gym.ir.arch import Architecture

BACKENDS = ("inline", "process", "ray")

#: one request: the student, its evaluation protocol and seed
Request = tuple[Architecture, "str | Protocol", int]


class Backend:
    """Evaluates batches of students with one :class:`Evaluator` (``self.evaluator``).

    Subclasses implement :meth:`_run` (students that need training, distinct, in order)."""

    name = "base"
    remote = False  # True: students are trained in other processes (counted by evaluation.count_trainings)

    def __init__(self, evaluator: Evaluator, workers: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.evaluator, self.workers = evaluator, int(workers)

    def evaluate(self, arch: Architecture, protocol: str | Protocol = "fast", seed: int = 0) -> EvalResult:
        return self.evaluate_many([(arch, protocol, seed)])[0]

    def evaluate_many(self, requests: Sequence[Request]) -> list[EvalResult]:
        """One :class:`EvalResult` per ``(arch, protocol, seed)``, in order. Invalid students
        and cache hits are answered here; the rest run on the workers, each distinct student
        once (a repeat in the batch gets the first one's result with ``cached=True``)."""
        results: list[EvalResult | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        normalized = [(arch, get_protocol(protocol), int(seed)) for arch, protocol, seed in requests]
        for i, (arch, protocol, seed) in enumerate(normalized):
            early = self.evaluator.lookup(arch, protocol, seed)
            if early is not None:
                results[i] = early
            else:
                todo.setdefault(self.evaluator.key(arch, protocol, seed), []).append(i)
        groups = list(todo.values())
        if self.workers > 1:
            # longest first (Graham's LPT rule, makespan <= 4/3 of the optimum): a batch's
            # biggest student, started last, would otherwise leave the other workers idle
            groups.sort(key=lambda idx: -_cost(normalized[idx[0]][0]))
        computed = self._run([normalized[idx[0]] for idx in groups]) if groups else []
        if len(computed) != len(groups):  # never zip results away: each student gets its own or a reason
            computed = list(computed)[:len(groups)] + [None] * (len(groups) - len(computed))
        computed = [_worker_result(r, normalized[idx[0]][0], self.name) for idx, r in zip(groups, computed)]
        if self.remote:  # trained in another process: counted here, where the budget looks
            count_trainings(sum(r.valid and not r.cached for r in computed))
        for idx, result in zip(groups, computed):
            results[idx[0]] = result
            for j in idx[1:]:
                results[j] = dataclasses.replace(result, cached=True)
        return results  # type: ignore[return-value]

    def _run(self, requests: list[tuple[Architecture, Protocol, int]]) -> list[EvalResult]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the workers (the evaluator and its cache stay usable)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workers={self.workers})"


def _lost(arch: Architecture, reason: str) -> EvalResult:
    """Reward -1 for a student whose worker gave no result, with the reason (not cached)."""
    try:
        params, flops = arch.params, arch.flops
    except Exception:  # noqa: BLE001
        params = flops = 0
    return EvalResult(False, reason, 0.0, 0.0, params, flops, -1.0, 0.0)


def _worker_result(result: Any, arch: Architecture, backend: str) -> EvalResult:
    """A worker's answer if it is an :class:`EvalResult` of this student with finite
    values in range, else reward -1 with what was wrong (results cross a process or
    machine boundary: they are checked like any outside data)."""
    if result is None:
        return _lost(arch, f"the {backend} backend returned no result for this student (a worker died?)")
    if not isinstance(result, EvalResult):
        return _lost(arch, f"the {backend} backend returned a {type(result).__name__}, not an EvalResult")
    if result.valid:
        acc, test = result.accuracy, result.test_accuracy
        if not (isinstance(acc, float) and 0.0 <= acc <= 1.0) or not (test != test or 0.0 <= test <= 1.0) \
                or (result.params, result.flops) != (arch.params, arch.flops):
            return _lost(arch, f"the {backend} backend returned an impossible result (accuracy {acc!r}, test "
                               f"{test!r}, params {result.params} for a student of {arch.params})")
    elif not result.reason:
        return dataclasses.replace(result, reason=f"invalid, but the {backend} backend gave no reason")
    return result


def _cost(arch: Architecture) -> int:
    """A student's training cost, for ordering: its FLOPs per image (an unbuildable
    architecture costs nothing; the worker answers it with reward -1)."""
    try:
        return arch.flops
    except Exception:  # noqa: BLE001  (scored as invalid by the evaluator, not here)
        return 0


class InlineBackend(Backend):
    """In this process, one student after another (what ``env.step`` always did)."""

    name = "inline"

    def _run(self, requests):
        return [self.evaluator.evaluate(arch, protocol, seed, looked_up=True) for arch, protocol, seed in requests]


def _default_threads(workers: int) -> int:
    return max(1, torch.get_num_threads() // workers)


# ---- process pool -----------------------------------------------------------------
_WORKER_EVALUATOR: Evaluator | None = None


#: Seconds between a pool worker's checks that the process that started it still runs.
PARENT_POLL = 1.0


def _watch_parent(parent: int) -> None:
    # a worker whose parent was killed would go on training students that no one records,
    # holding cores and memory (a pool's workers are not killed with their parent)
    while os.getppid() == parent and not pid_dead(parent):
        time.sleep(PARENT_POLL)
    os._exit(1)


def exit_with_parent(parent: int) -> threading.Thread:
    """Start a daemon thread that ends this (worker) process within :data:`PARENT_POLL` seconds
    of the death of process ``parent``; for pools whose workers would outlive a killed parent."""
    thread = threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="n2n-exit-with-parent")
    thread.start()
    return thread


def _init_worker(blob_path: str, threads: int, parent: int | None = None) -> None:
    global _WORKER_EVALUATOR
    if parent is not None:
        exit_with_parent(parent)
    torch.set_num_threads(threads)
    with open(blob_path, "rb") as f:
        _WORKER_EVALUATOR = pickle.load(f)


def _worker_evaluate(request: tuple[Architecture, Protocol, int], looked_up: bool = True) -> EvalResult:
    assert _WORKER_EVALUATOR is not None, "worker started without an evaluator"
    return _WORKER_EVALUATOR.evaluate(*request, looked_up=looked_up)  # a batch: the parent looked it up


def _worker_call(fn, args: tuple) -> Any:
    assert _WORKER_EVALUATOR is not None, "worker started without an evaluator"
    return fn(_WORKER_EVALUATOR, *args)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


#: name of a pool's pickled evaluator in the temp folder: ``n2n-evaluator-<pid>-<random>.pkl``
BLOB_PREFIX = "n2n-evaluator-"


def remove_stale_blobs(folder: str | None = None) -> list[str]:
    """Remove the pickled evaluators in ``folder`` (default: the temp folder) whose process
    (the pid in the name) no longer runs: left by runs that were killed. Returns their paths."""
    folder = folder or tempfile.gettempdir()
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            pid = name[len(BLOB_PREFIX):].split("-", 1)[0]
            if name.startswith(BLOB_PREFIX) and name.endswith(".pkl") and pid.isdigit() and pid_dead(int(pid)):
                _remove(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
    return removed


_GUARD_HINT = ("the 'process' backend starts its workers with multiprocessing's spawn, which imports the "
               "main script again: in a script, put the code that makes the env under "
               "`if __name__ == \"__main__\":`")


class ProcessBackend(Backend):
    """A pool of ``workers`` local processes (spawned), each holding a copy of the evaluator.
    A worker exits within :data:`PARENT_POLL` seconds of this process's death (a kill -9
    leaves no worker training on)."""

    name = "process"
    remote = True

    def __init__(self, evaluator: Evaluator, workers: int = 2, threads: int | None = None):
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            # a spawned worker is importing the user's script, which makes a pool again: fail here,
            # at once, so the worker exits and the parent's pool reports it (it would hang otherwise)
            raise RuntimeError(_GUARD_HINT)
        super().__init__(evaluator, workers)
        self.threads = threads or _default_threads(self.workers)
        # pickled once to a file that every worker reads at start: a start-up message of a few
        # bytes instead of megabytes (a worker that dies while starting then never blocks the
        # parent's write into its pipe, and the pool reports it broken)
        # named by this process's id, so that the file of a run that was killed (hundreds of MB
        # for a CIFAR teacher and data) is removed by the next pool started on this machine
        remove_stale_blobs()
        fd, self._blob_path = tempfile.mkstemp(prefix=f"{BLOB_PREFIX}{os.getpid()}-", suffix=".pkl")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(evaluator, f)
        self._cleanup = weakref.finalize(self, _remove, self._blob_path)
        self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(self._blob_path, self.threads, os.getpid()))

    def submit(self, arch: Architecture, protocol: str | Protocol = "fast", seed: int = 0
               ) -> concurrent.futures.Future:
        """One evaluation on the next free worker, without the batch's lookup and dedup
        (the cache's claims still keep two workers off the same student)."""
        return self._pool.submit(_worker_evaluate, (arch, get_protocol(protocol), int(seed)), False)

    def call(self, fn, *args: Any) -> concurrent.futures.Future:
        """``fn(evaluator, *args)`` on the next free worker, with that worker's copy of the
        evaluator: other work that needs the teacher and the data (``n2n_gym.evaluation.final``
        trains its final students side by side this way). ``fn`` and ``args`` must pickle (a
        module-level function); the result comes back pickled."""
        return self._pool.submit(_worker_call, fn, args)

    def _run(self, requests):
        """The batch on the pool; if a worker dies (killed, out of memory), the batch is retried
        once on a fresh pool (results are cached, so finished students are not trained again),
        then a second death raises with the reason."""
        for attempt in (0, 1):
            try:
                return list(self._pool.map(_worker_evaluate, requests))
            except concurrent.futures.process.BrokenProcessPool as exc:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                if attempt:
                    raise RuntimeError(f"a worker process of the 'process' backend died twice ({exc}) Either "
                                       f"{_GUARD_HINT}, or it was killed (out of memory?)") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._cleanup()

    def terminate(self) -> None:
        """Stop the workers now, their work in progress lost (what they checkpointed or cached
        stays): on Ctrl-C or an error, where :meth:`close` would wait for every running call,
        e.g. hours of final distillation when only this process got the SIGINT."""
        # ProcessPoolExecutor has no public way to stop running work before Python 3.14
        # (terminate_workers); its _processes map is the pool's own record of them
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():  # still starting up or stuck in native code under load: no second chance
                process.kill()
                process.join(timeout=10)
        # only now: the pool's manager thread, seeing its workers gone, fails their running calls
        # (BrokenProcessPool) and exits, so no future is left running; shut down first, it could
        # exit without failing them (a race seen under load)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._cleanup()

    def __exit__(self, exc_type, *exc: object) -> None:
        self.terminate() if exc_type is not None else self.close()


# ---- Ray ----------------------------------------------------------------------------
class EvalWorker:
    """A Ray actor's state: one evaluator (teacher, data, logits) for its whole life."""

    def __init__(self, evaluator: Evaluator, threads: int):
        torch.set_num_threads(threads)
        self.evaluator = evaluator

    def evaluate(self, arch: Architecture, protocol: Protocol, seed: int) -> EvalResult:
        return self.evaluator.evaluate(arch, protocol, seed, looked_up=True)  # the driver's batch looked it up

    def pid(self) -> int:
        return os.getpid()


class RayBackend(Backend):
    """``workers`` Ray actors, each with ``num_cpus`` / ``num_gpus`` of the cluster.

    ``address``: a running cluster (``"auto"``, ``"ray://host:10001"``, ...); ``None``
    joins an already initialised Ray, else ``$RAY_ADDRESS``, else starts a local instance.
    A local instance started here is shut down by :meth:`close`."""

    name = "ray"
    remote = True

    def __init__(self, evaluator: Evaluator, workers: int = 2, threads: int | None = None, *,
                 address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 init_kwargs: dict[str, Any] | None = None):
        try:
            import ray
        except ImportError as exc:
            raise ImportError("backend='ray' needs Ray: pip install 'n2n-gym[ray]'") from exc
        super().__init__(evaluator, workers)
        self.threads = threads or max(1, int(num_cpus))
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, **(init_kwargs or {})}
            ray.init(address=address, **kwargs)
            self._started = True
        if num_gpus and evaluator.device.type != "cuda":
            raise ValueError("num_gpus > 0 needs an evaluator on device 'cuda' (env device='cuda')")
        self._ref = ray.put(evaluator)  # once: every actor reads the same object
        self._actor_cls = ray.remote(EvalWorker).options(num_cpus=num_cpus, num_gpus=num_gpus)
        self._actors = [self._new_actor() for _ in range(self.workers)]

    def _new_actor(self):
        return self._actor_cls.remote(self._ref, self.threads)

    def _run(self, requests):
        """Each request on the next idle actor. An actor that dies (killed, out of memory,
        its node lost) is replaced by a fresh one and its student retried once there; a
        student that loses a second actor, or raises in the actor, gets reward -1 with the
        reason. Nothing is dropped: one result per request, in order."""
        from ray.exceptions import RayActorError, RayError

        results: list[EvalResult | None] = [None] * len(requests)
        queue, tries = list(range(len(requests)))[::-1], [0] * len(requests)
        idle, pending = list(self._actors), {}
        while queue or pending:
            while queue and idle:
                i, actor = queue.pop(), idle.pop()
                pending[actor.evaluate.remote(*requests[i])] = (i, actor)
            (ref,), _ = self._ray.wait(list(pending), num_returns=1)
            i, actor = pending.pop(ref)
            try:
                results[i] = self._ray.get(ref)
                idle.append(actor)
            except RayActorError as exc:
                fresh = self._new_actor()
                self._actors[self._actors.index(actor)] = fresh
                idle.append(fresh)
                tries[i] += 1
                if tries[i] < 2:
                    queue.append(i)
                else:
                    results[i] = _lost(requests[i][0], f"the Ray worker evaluating this student died twice "
                                                       f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            except RayError as exc:
                idle.append(actor)
                results[i] = _lost(requests[i][0], f"the Ray worker failed: {type(exc).__name__}: "
                                                   f"{str(exc).splitlines()[0][:200]}")
        return results

    def close(self) -> None:
        for a in getattr(self, "_actors", []):
            self._ray.kill(a)
        self._actors = []
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False


def make_backend(name: str, evaluator: Evaluator, workers: int = 1, **options: Any) -> Backend:
    """The backend called ``name`` (``"inline"``, ``"process"``, ``"ray"``); ``options`` go to
    its constructor (``threads``; for Ray ``address``, ``num_cpus``, ``num_gpus``, ``init_kwargs``)."""
    if name == "inline":
        if workers != 1 or options:
            raise ValueError(f"backend 'inline' runs one worker and takes no options; got workers={workers}, "
                             f"options={sorted(options)}: use backend='process' or 'ray' for more workers")
        return InlineBackend(evaluator)
    if name == "process":
        return ProcessBackend(evaluator, workers, **options)
    if name == "ray":
        return RayBackend(evaluator, workers, **options)
    raise ValueError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
