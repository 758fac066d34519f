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
"""

from __future__ import annotations

import dataclasses
import time
import traceback
import warnings
from dataclasses import dataclass

import torch

from .arch import Architecture, ArchitectureError
from .build import build, inherit_weights
from .cache import NullCache, ResultCache, cache_key
from .checks import check_start_architecture
from .data import Dataset
from .distill import NonFiniteError, check_finite_weights, distill, predict_logits
from .protocols import Protocol, get_protocol
from .reward import n2n_reward
from .teachers import Teacher

EVAL_VERSION = 1  # bump when a change to evaluation changes results: old cache entries stop matching


@dataclass
class EvalResult:
    valid: bool
    reason: str
    accuracy: float  # validation accuracy: used by the reward
    test_accuracy: float  # reported only
    params: int
    flops: int
    reward: float  # N2N reward without constraints (the env adds those)
    seconds: float
    cached: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Evaluator:
    """Scores students of one teacher on one data set; holds reusable teacher logits."""

    def __init__(self, teacher: Teacher, data: Dataset, device: str | torch.device = "cpu",
                 cache: ResultCache | NullCache | None = None):
        self.teacher, self.data, self.device = teacher, data, torch.device(device)
        self.cache = cache if cache is not None else NullCache()
        self._teacher_logits: dict[int | None, torch.Tensor] = {}
        self._subsets: dict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor]] = {}

    def _subset(self, which: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed evaluation subsets, drawn once per evaluator rather than per student."""
        if (which, n) not in self._subsets:
            self._subsets[(which, n)] = self.data.subset(which, n, seed=0)
        return self._subsets[(which, n)]

    def key(self, arch: Architecture, protocol: Protocol, seed: int) -> str:
        return cache_key(v=EVAL_VERSION, teacher=self.teacher.sha256, data=self.data.digest,
                         split=[len(self.data.train_idx), len(self.data.val_idx)],
                         arch=arch.canonical_hash(), protocol=protocol.to_dict(), seed=seed)

    def evaluate(self, arch: Architecture, protocol: str | Protocol = "fast", seed: int = 0) -> EvalResult:
        protocol = get_protocol(protocol)
        start = time.perf_counter()
        try:
            params, flops = arch.params, arch.flops
        except ArchitectureError as exc:
            return EvalResult(False, str(exc), 0.0, 0.0, 0, 0, -1.0, time.perf_counter() - start)
        if arch.input_shape != self.teacher.architecture.input_shape or arch.num_classes != self.teacher.architecture.num_classes:
            return EvalResult(False, "input shape or classes differ from the teacher's", 0.0, 0.0, params, flops, -1.0,
                              time.perf_counter() - start)
        if protocol.init == "inherit":  # every layer must have a teacher layer to take its weights from
            try:
                check_start_architecture(arch, self.teacher.architecture)
            except ValueError as exc:
                return EvalResult(False, str(exc).replace("start_architecture", "the student", 1), 0.0, 0.0, params,
                                  flops, -1.0, time.perf_counter() - start)
        if params >= self.teacher.params:
            return EvalResult(False, f"not smaller than the teacher ({params:,} >= {self.teacher.params:,} params)",
                              0.0, 0.0, params, flops, -1.0, time.perf_counter() - start)
        key = self.key(arch, protocol, seed)
        hit = self.cache.get(key)
        if hit is not None:
            return dataclasses.replace(EvalResult(**hit), cached=True)
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                val_acc, test_acc = self._train_and_score(arch, protocol, seed)
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
        reward = n2n_reward(student_params=params, teacher_params=self.teacher.params,
                            student_accuracy=val_acc, teacher_accuracy=self.teacher.val_accuracy).value
        result = EvalResult(True, "", val_acc, test_acc, params, flops, reward, time.perf_counter() - start)
        self.cache.put(key, result.to_dict())
        return result

    def _train_and_score(self, arch: Architecture, protocol: Protocol, seed: int) -> tuple[float, float]:
        torch.manual_seed(seed)
        try:
            student = build(arch, self.device)
            if protocol.init == "inherit":
                inherit_weights(student, self.teacher.module)
        except (RuntimeError, ArchitectureError) as exc:  # shapes that do not fit (torch's copy_ raises RuntimeError)
            raise StudentBuildError(f"cannot build the student or inherit the teacher's weights: "
                                    f"{type(exc).__name__}: {exc}") from exc
        x, _ = self._subset("train", protocol.train_images)
        logits = None
        if not protocol.augment:
            if protocol.train_images not in self._teacher_logits:
                self._teacher_logits[protocol.train_images] = predict_logits(self.teacher.module, self.data, x)
            logits = self._teacher_logits[protocol.train_images]
        distill(student, self.teacher.module, self.data, x, epochs=protocol.epochs, batch_size=protocol.batch_size,
                lr=protocol.lr, weight_decay=protocol.weight_decay, augment=protocol.augment,
                generator=torch.Generator().manual_seed(seed), teacher_logits=logits)
        check_finite_weights(student)
        val, test = self._subset("val", protocol.val_images), self._subset("test", protocol.test_images)
        return self._accuracy(student, "validation", *val), self._accuracy(student, "test", *test)

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


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
