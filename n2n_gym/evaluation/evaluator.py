"""Student evaluation: a pure function of (teacher, architecture, protocol, seed), cached.

The result holds validation accuracy (what the reward uses), test accuracy (reported
only), params, FLOPs (2 per MAC), the reward, validity with a reason, and seconds.

Error contract (CompilerGym's): nothing that goes wrong with a student escapes
:meth:`Evaluator.evaluate`. A student that cannot be built or take the teacher's weights,
or whose distillation diverges (non-finite loss in an epoch, weights after training, or
logits on the scored images; checked once per epoch / once per student, never per step)
gets ``valid=False``, reward -1 and a ``reason`` naming the failure, cached like any
result. Any other exception is scored the same way but warned about
(:class:`StudentEvaluationWarning`, with the traceback) and not cached.

Test accuracy is reported only, so an evaluator with ``lazy_test=True`` skips it (``NaN``
in the result and the cache) and :meth:`Evaluator.test_accuracy` measures it on demand for
the students whose test accuracy is reported (it retrains the student: the same weights,
as training is deterministic for a seed and thread count). Rewards do not change.

With a shared :class:`ResultCache`, a student in training is *claimed* there
(:meth:`ResultCache.claimed`): another process asking for it waits for this result
instead of training it again (:mod:`n2n_gym.evaluation.backends` runs evaluators in worker processes).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from n2n_gym.data.datasets import Dataset
from n2n_gym.evaluation.cache import NullCache, ResultCache, cache_key
from n2n_gym.evaluation.distill import (
    AugmentedLogits,
    NonFiniteError,
    check_finite_weights,
    distill,
    predict_logits,
    recalibrate_batchnorm,
)
from n2n_gym.evaluation.protocols import Protocol, get_protocol
from n2n_gym.evaluation.reward import n2n_reward
from n2n_gym.ir.arch import Architecture, ArchitectureError
from n2n_gym.ir.build import build, inherit_weights
from n2n_gym.ir.edits import check_start_architecture
from n2n_gym.teachers.teacher import Teacher

EVAL_VERSION = 1  # bump when a change to evaluation changes results: old cache entries stop matching

# Students trained in this process, whoever asked (env.step, env.unwrapped.evaluator, a copy or a
# second env, student_test_accuracy): a budget compares it with the evaluations it counted
_TRAININGS = [0]
_TRAININGS_LOCK = threading.Lock()


def trainings() -> int:
    """How many students were trained in this process so far (every :meth:`Evaluator._train`,
    plus the students that worker processes or Ray actors trained for it, counted by
    :mod:`n2n_gym.evaluation.backends`). A :class:`~n2n_gym.envs.wrappers.BudgetTracker` takes the
    difference over its run, so a student trained outside the budget shows in the record."""
    return _TRAININGS[0]


def count_trainings(n: int = 1) -> None:
    """Add ``n`` students trained for this process elsewhere (a worker process, a Ray actor)."""
    with _TRAININGS_LOCK:
        _TRAININGS[0] += int(n)


@dataclass
class EvalResult:
    valid: bool
    reason: str
    accuracy: float  # validation accuracy: used by the reward
    test_accuracy: float  # reported only; NaN when not measured (lazy_test)
    params: int
    flops: int
    reward: float  # N2N reward without constraints (the env adds those)
    seconds: float
    cached: bool = False
    # a calibrated protocol's measured validation accuracy (``accuracy`` is then its estimate); else None
    measured_accuracy: float | None = None

    def __post_init__(self) -> None:
        # a failure reason is a sentence or two: an exception's long message is cut (a cached row
        # with a longer one, or with control characters, is not one of ours: result_row_problem)
        self.reason = _bounded_reason(self.reason)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: The longest failure reason of an :class:`EvalResult` (cut with "…"), stored or served.
MAX_REASON_CHARS = 2000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # ANSI escapes and the like; newlines and tabs are text


def _bounded_reason(reason):
    if not isinstance(reason, str):
        return reason
    reason = _CONTROL.sub("", reason)
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 1] + "…"


class Evaluator:
    """Scores students of one teacher on one data set; holds reusable teacher logits."""

    def __init__(self, teacher: Teacher, data: Dataset, device: str | torch.device = "cpu",
                 cache: ResultCache | NullCache | None = None, lazy_test: bool = False):
        self.teacher, self.data, self.device = teacher, data, torch.device(device)
        self.cache = cache if cache is not None else NullCache()
        self.lazy_test = bool(lazy_test)
        self._teacher_logits: dict[int | None, torch.Tensor] = {}
        self._subsets: dict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor]] = {}
        self._supernets: dict[str, torch.nn.Module] = {}
        # augmented distillation: the teacher's logits of each seed's batches, per training subset
        self._logit_memos: dict[tuple[int | None, str], AugmentedLogits] = {}

    def prepare(self, protocol: str | Protocol) -> Protocol:
        """``protocol``, with what it needs beyond the teacher (its supernet) found and loaded
        now: a missing or foreign supernet, or a calibration fitted on another teacher, is an
        error of the env's arguments, raised where they are given
        (:class:`~n2n_gym.evaluation.supernet.SupernetNotFoundError`, ``ValueError``), never a -1
        per student."""
        protocol = get_protocol(protocol)
        if protocol.calibrated_for is not None and protocol.calibrated_for != self.teacher.sha256:
            raise ValueError(f"protocol {protocol.name!r} is calibrated for the teacher with sha256 "
                             f"{protocol.calibrated_for[:12]}..., not this one ({self.teacher.sha256[:12]}...): its "
                             "map from measured to trained accuracy was fitted on that teacher's students; use an "
                             "uncalibrated protocol (e.g. 'fast') or one calibrated for this teacher "
                             "(benchmarks/fidelity.py)")
        if protocol.supernet is not None:
            self.supernet(protocol.supernet)
        return protocol

    def supernet(self, sha256: str) -> torch.nn.Module:
        """The supernet of this evaluator's teacher whose weights have ``sha256``, loaded once;
        ``ValueError`` when the file's architecture is not the teacher's (students would take
        partly random weights), :class:`~n2n_gym.evaluation.supernet.SupernetNotFoundError`."""
        if sha256 not in self._supernets:
            from n2n_gym.evaluation.supernet import find_supernet, load_supernet

            path = find_supernet(sha256, self.teacher.sha256)
            try:
                module = load_supernet(path, self.device)
            except (KeyError, ValueError, TypeError, RuntimeError, ArchitectureError) as exc:
                raise ValueError(f"{path} is not a loadable supernet ({type(exc).__name__}: {exc}); write supernets "
                                 "with n2n_gym.evaluation.supernet.save_supernet") from exc
            if module.arch.canonical_hash() != self.teacher.architecture.canonical_hash():
                raise ValueError(f"{path} holds a network of another architecture than the teacher's: a supernet "
                                 "has the teacher's architecture (students take their weights from it as from the "
                                 "teacher)")
            self._supernets[sha256] = module
        return self._supernets[sha256]

    def __getstate__(self) -> dict:
        """Pickled once per worker (:mod:`n2n_gym.evaluation.backends`): teacher, data and cache path;
        derived tensors (subsets, teacher logits) are rebuilt there on first use."""
        data = dataclasses.replace(self.data, _on_device={}, _splits={}, _normalize=None)
        return {"teacher": self.teacher, "data": data, "device": str(self.device), "cache": self.cache,
                "lazy_test": self.lazy_test,
                # the supernets found here travel along: a worker (another process, a Ray node) need not find them
                "supernets": dict(self._supernets)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["teacher"], state["data"], state["device"], state["cache"], state["lazy_test"])
        self._supernets.update(state.get("supernets", {}))

    def _subset(self, which: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed evaluation subsets, drawn once per evaluator rather than per student."""
        if (which, n) not in self._subsets:
            self._subsets[(which, n)] = self.data.subset(which, n, seed=0)
        return self._subsets[(which, n)]

    def key(self, arch: Architecture, protocol: Protocol, seed: int) -> str:
        # CUDA trains under bf16 autocast (n2n_gym.evaluation.distill.autocast): its results are kept apart
        gpu = {"precision": "cuda-bf16"} if self.device.type == "cuda" else {}
        return cache_key(v=EVAL_VERSION, teacher=self.teacher.sha256, data=self.data.digest,
                         split=[len(self.data.train_idx), len(self.data.val_idx)],
                         arch=arch.canonical_hash(), protocol=protocol.to_dict(), seed=seed, **gpu)

    def evaluate(self, arch: Architecture, protocol: str | Protocol = "fast", seed: int = 0, *,
                 looked_up: bool = False, checkpoint: "str | os.PathLike | None" = None) -> EvalResult:
        """Train and score one student (or return its cached result); the key is claimed in
        a shared cache while the student trains (another process waits for this result).
        ``looked_up``: the caller's :meth:`lookup` found no answer (a backend's batch), so the
        cache is read once more only under the claim, not twice. ``checkpoint``: a file saved
        after every epoch of training; a killed evaluation called again with it continues from
        its last epoch, to the same result (:func:`~n2n_gym.evaluation.distill.distill`)."""
        protocol = get_protocol(protocol)  # (prepared by lookup: here below, or the caller's when looked_up)
        start = time.perf_counter()
        early = None if looked_up else self.lookup(arch, protocol, seed)
        if early is not None:
            return early
        key = self.key(arch, protocol, seed)
        with self.cache.claimed(key) as hit:
            hit = self._checked(key, hit, arch.params, arch.flops, protocol)
            if hit is not None:  # another worker evaluated it while we waited
                return dataclasses.replace(EvalResult(**hit), cached=True)
            return self._compute(key, arch, protocol, seed, start, checkpoint)

    def evaluate_many(self, requests: "Sequence[tuple[Architecture, str | Protocol, int]]") -> list[EvalResult]:
        """:meth:`evaluate` for each ``(arch, protocol, seed)``, in order (in this process;
        :mod:`n2n_gym.evaluation.backends` spreads a batch over worker processes or a Ray cluster)."""
        return [self.evaluate(arch, protocol, seed) for arch, protocol, seed in requests]

    def lookup(self, arch: Architecture, protocol: str | Protocol = "fast", seed: int = 0) -> EvalResult | None:
        """The result when it needs no training (invalid student, cache hit), else ``None``."""
        protocol = self.prepare(protocol)
        start = time.perf_counter()
        try:
            params, flops = arch.params, arch.flops
        except ArchitectureError as exc:
            return EvalResult(False, str(exc), 0.0, 0.0, 0, 0, -1.0, time.perf_counter() - start)
        if arch.input_shape != self.teacher.architecture.input_shape or arch.num_classes != self.teacher.architecture.num_classes:
            return EvalResult(False, "input shape or classes differ from the teacher's", 0.0, 0.0, params, flops, -1.0,
                              time.perf_counter() - start)
        if protocol.init != "random":  # every layer must have a teacher layer to take its weights from
            try:
                check_start_architecture(arch, self.teacher.architecture)
            except ValueError as exc:
                return EvalResult(False, str(exc).replace("start_architecture", "the student", 1), 0.0, 0.0, params,
                                  flops, -1.0, time.perf_counter() - start)
        if params >= self.teacher.params:
            return EvalResult(False, f"not smaller than the teacher ({params:,} >= {self.teacher.params:,} params)",
                              0.0, 0.0, params, flops, -1.0, time.perf_counter() - start)
        key = self.key(arch, protocol, seed)
        hit = self._checked(key, self.cache.get(key), params, flops, protocol)
        if hit is not None:
            result = dataclasses.replace(EvalResult(**hit), cached=True)
            if result.valid and not self.lazy_test and math.isnan(result.test_accuracy):  # stored lazily
                result = dataclasses.replace(result, test_accuracy=self.test_accuracy(arch, protocol, seed))
            return result
        return None

    def test_accuracy(self, arch: Architecture, protocol: str | Protocol = "fast", seed: int = 0) -> float:
        """The student's test accuracy under ``protocol``/``seed``: from the cache, else measured
        (trains the student again, the same weights as its evaluation) and stored with its result."""
        protocol = self.prepare(protocol)
        key = self.key(arch, protocol, seed)
        hit = self._checked(key, self.cache.get(key), arch.params, arch.flops, protocol)
        if hit is not None and not math.isnan(hit["test_accuracy"]):
            return float(hit["test_accuracy"])
        with self.cache.claimed(key + ":test"):  # nothing is stored under this key: always ours in the end
            # another process may have measured it while we waited
            hit = self._checked(key, self.cache.get(key), arch.params, arch.flops, protocol)
            if hit is not None and not math.isnan(hit["test_accuracy"]):
                return float(hit["test_accuracy"])
            if hit is None or not hit["valid"]:  # never evaluated (or invalid): one whole eager evaluation
                lazy, self.lazy_test = self.lazy_test, False
                try:
                    return self.evaluate(arch, protocol, seed).test_accuracy
                finally:
                    self.lazy_test = lazy
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                student = self._train(arch, protocol, seed)
            test = protocol.estimate(self._accuracy(student, "test", *self._subset("test", protocol.test_images)))
            self.cache.put(key, {**hit, "test_accuracy": test})
            return test

    def _checked(self, key: str, hit: dict | None, params: int, flops: int, protocol: Protocol) -> dict | None:
        """A cached row if it is a result this evaluator could have stored for a student of
        ``params`` / ``flops``, else ``None``: a damaged row (wrong fields or types, an
        accuracy outside [0, 1], NaN, a reward that is not the row's own) is dropped with a
        :class:`~n2n_gym.evaluation.cache.CacheRowWarning` and the student is evaluated again."""
        if hit is None:
            return None
        problem = result_row_problem(hit, params, flops, self.teacher.params, self.teacher.val_accuracy, protocol)
        if problem is None:
            return hit
        self.cache.discard(key, problem)
        return None

    def _compute(self, key: str, arch: Architecture, protocol: Protocol, seed: int, start: float,
                 checkpoint=None) -> EvalResult:
        params, flops = arch.params, arch.flops
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                val_acc, test_acc = self._train_and_score(arch, protocol, seed, checkpoint)
        except STUDENT_ERRORS as exc:
            # the student's own problem (diverged, cannot be built or inherit): a result like any other
            result = EvalResult(False, _reason(exc), 0.0, 0.0, params, flops, -1.0, time.perf_counter() - start)
            self.cache.put(key, result.to_dict())
            return result
        except Exception as exc:  # noqa: BLE001 - CompilerGym's contract: nothing escapes step()
            # Unexpected (possibly a bug of ours, or a transient error such as out of memory):
            # -1 with the reason and a warning holding the traceback, but not cached, so that
            # fixing the cause is enough. The tests turn this warning into an error.
            reason = _reason(exc)
            warnings.warn(f"student evaluation failed unexpectedly, scored -1 ({reason}):\n"
                          f"{traceback.format_exc()}", StudentEvaluationWarning, stacklevel=2)
            return EvalResult(False, reason, 0.0, 0.0, params, flops, -1.0, time.perf_counter() - start)
        measured = val_acc if protocol.calibration is not None else None
        val_acc, test_acc = protocol.estimate(val_acc), protocol.estimate(test_acc)  # identity when uncalibrated
        reward = n2n_reward(student_params=params, teacher_params=self.teacher.params,
                            student_accuracy=val_acc, teacher_accuracy=self.teacher.val_accuracy).value
        result = EvalResult(True, "", val_acc, test_acc, params, flops, reward, time.perf_counter() - start,
                            measured_accuracy=measured)
        self.cache.put(key, result.to_dict())
        return result

    def _train_and_score(self, arch: Architecture, protocol: Protocol, seed: int,
                         checkpoint=None) -> tuple[float, float]:
        student = self._train(arch, protocol, seed, checkpoint)
        val = self._accuracy(student, "validation", *self._subset("val", protocol.val_images))
        if self.lazy_test:
            return val, math.nan
        return val, self._accuracy(student, "test", *self._subset("test", protocol.test_images))

    def _train(self, arch: Architecture, protocol: Protocol, seed: int, checkpoint=None) -> torch.nn.Module:
        count_trainings()
        torch.manual_seed(seed)
        try:
            student = build(arch, self.device)
            if protocol.init == "inherit":
                inherit_weights(student, self.teacher.module)
            elif protocol.init == "supernet":  # as from the teacher, from the supernet's weights
                inherit_weights(student, self.supernet(protocol.supernet))
        except (RuntimeError, ArchitectureError) as exc:  # shapes that do not fit (torch's copy_ raises RuntimeError)
            raise StudentBuildError(f"cannot build the student or inherit the teacher's weights: "
                                    f"{type(exc).__name__}: {exc}") from exc
        x, y = self._subset("train", protocol.train_images)
        logits = None
        if not protocol.augment and protocol.epochs > 0:
            if protocol.train_images not in self._teacher_logits:
                self._teacher_logits[protocol.train_images] = predict_logits(self.teacher.module, self.data, x)
            logits = self._teacher_logits[protocol.train_images]
        distill(student, self.teacher.module, self.data, x, epochs=protocol.epochs, batch_size=protocol.batch_size,
                lr=protocol.lr, weight_decay=protocol.weight_decay, augment=protocol.augment,
                generator=torch.Generator().manual_seed(seed), teacher_logits=logits, loss=protocol.loss,
                y=y if protocol.loss == "kd" else None, lr_drop=protocol.lr_drop, optimizer=protocol.optimizer,
                cosine=protocol.cosine, checkpoint=checkpoint,
                checkpoint_key=self.key(arch, protocol, seed) if checkpoint else "",
                logit_memo=self._logit_memos.setdefault((protocol.train_images, protocol.precision), AugmentedLogits())
                if protocol.augment else None, precision=protocol.precision)
        if protocol.bn_recalibration:
            recalibrate_batchnorm(student, self.data, self._subset("train", protocol.bn_recalibration)[0],
                                  protocol.batch_size)
        check_finite_weights(student)
        return student

    def train_student(self, arch: Architecture, protocol: str | Protocol = "fast", seed: int = 0,
                      checkpoint: "str | None" = None) -> torch.nn.Module:
        """The student of ``arch`` trained under ``protocol`` (eval mode, on the evaluator's device),
        not scored and not cached: what :meth:`evaluate` scores, and what ``n2n-gym compress``
        exports after its final distillation. ``checkpoint``: a file saved after every epoch, from
        which a later call continues (:func:`~n2n_gym.evaluation.distill.distill`). Raises
        :class:`StudentBuildError` or :class:`~n2n_gym.evaluation.distill.NonFiniteError` for a student that
        cannot be trained."""
        protocol = get_protocol(protocol)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            return self._train(arch, protocol, seed, checkpoint)

    def _accuracy(self, student: torch.nn.Module, split: str, x: torch.Tensor, y: torch.Tensor) -> float:
        """Top-1 accuracy; non-finite logits (weights finite, activations overflowing) fail it."""
        if len(x) == 0:
            raise ValueError(f"the {split} split of {self.data.variant} is empty: no accuracy to measure")
        logits = predict_logits(student, self.data, x)
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteError(f"the student's logits on the {split} images are not finite")
        return float((logits.argmax(1) == y).float().mean())


class StudentBuildError(RuntimeError):
    """The student's modules cannot be built or cannot take the teacher's weights."""


class StudentEvaluationWarning(RuntimeWarning):
    """A student evaluation failed with an unexpected exception (scored -1, traceback in the message)."""


#: Failures that are the student's own: scored -1 with the reason and cached like any result.
STUDENT_ERRORS = (NonFiniteError, StudentBuildError, ArchitectureError)


#: The longest a stored evaluation may have taken (30 days): a row saying more is not one of ours.
MAX_EVAL_SECONDS = 30 * 24 * 3600.0

_ROW_TYPES = {"valid": (bool,), "reason": (str,), "accuracy": (int, float), "test_accuracy": (int, float),
              "params": (int,), "flops": (int,), "reward": (int, float), "seconds": (int, float), "cached": (bool,),
              "measured_accuracy": (int, float, type(None))}
_OPTIONAL_ROW_FIELDS = {"cached", "measured_accuracy"}  # rows stored before measured_accuracy lack it


def result_row_problem(row: dict, params: int, flops: int, teacher_params: int, teacher_accuracy: float,
                       protocol: Protocol | None = None) -> str | None:
    """What is wrong with a stored :class:`EvalResult` row for a student of ``params`` /
    ``flops`` (None: nothing): its fields and types, accuracies in [0, 1] (test: or NaN,
    not measured), seconds a duration up to :data:`MAX_EVAL_SECONDS`, an invalid student with
    accuracy 0 and a reason (a valid one with none), the student's params and FLOPs, and its
    reward (-1 when invalid, else ``R = Rc * Ra`` of its params and accuracy); with ``protocol``,
    a measured accuracy exactly where the protocol is calibrated and the student valid, and the
    accuracy its estimate."""
    if not isinstance(row, dict):
        return f"a {type(row).__name__}, not an object"
    fields = set(_ROW_TYPES) - _OPTIONAL_ROW_FIELDS
    if not fields <= set(row) <= set(_ROW_TYPES):
        return f"fields {sorted(row)} are not {sorted(fields)}"
    for name, types in _ROW_TYPES.items():
        v = row.get(name, False if name == "cached" else None)
        if not isinstance(v, types) or (bool not in types and isinstance(v, bool)):
            return f"{name} {v!r} is not {' or '.join(t.__name__ for t in types)}"
    test = row["test_accuracy"]
    if not (0.0 <= row["accuracy"] <= 1.0) or not (math.isnan(test) or 0.0 <= test <= 1.0):
        return f"accuracy {row['accuracy']!r} / test accuracy {test!r} outside [0, 1]"
    if not (math.isfinite(row["seconds"]) and 0 <= row["seconds"] <= MAX_EVAL_SECONDS):
        return f"seconds {row['seconds']!r} is not a duration in [0, {MAX_EVAL_SECONDS:g}]"
    if not row["valid"] and (row["accuracy"] != 0 or not (math.isnan(test) or test == 0) or not row["reason"]):
        # what _compute and lookup store for a student that failed: no accuracy, and why
        return f"an invalid student with accuracy {row['accuracy']!r} / {test!r} and reason {row['reason'][:80]!r}"
    if row["valid"] and row["reason"]:
        return f"a valid student with a failure reason {row['reason'][:80]!r}"
    if len(row["reason"]) > MAX_REASON_CHARS or _CONTROL.search(row["reason"]):
        return (f"a reason of {len(row['reason'])} characters, or with control characters (ours are plain text "
                f"of at most {MAX_REASON_CHARS})")
    if (row["params"], row["flops"]) != (params, flops):
        return f"params / FLOPs {row['params']} / {row['flops']} are not the student's {params} / {flops}"
    measured = row.get("measured_accuracy")
    if measured is not None and not (0.0 <= measured <= 1.0):
        return f"measured accuracy {measured!r} outside [0, 1]"
    if protocol is not None:  # what _compute stores: a measurement only under a calibration, and its estimate
        if protocol.calibration is None or not row["valid"]:
            if measured is not None:
                return f"a measured accuracy {measured!r} where there is none (uncalibrated protocol or invalid student)"
        elif measured is None or not math.isclose(row["accuracy"], protocol.estimate(measured), rel_tol=1e-9,
                                                  abs_tol=1e-12):
            return (f"accuracy {row['accuracy']!r} is not the calibrated estimate of the measured accuracy "
                    f"{measured!r}")
    want = -1.0 if not row["valid"] else n2n_reward(student_params=params, teacher_params=teacher_params,
                                                    student_accuracy=row["accuracy"],
                                                    teacher_accuracy=teacher_accuracy).value
    if not math.isclose(row["reward"], want, rel_tol=1e-9, abs_tol=1e-12):
        return f"reward {row['reward']!r} is not {want!r}, the reward of its params and accuracy"
    return None


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
