"""Student evaluation: a pure function of (teacher, architecture, protocol, seed), cached.

The result holds validation accuracy (what the reward uses), test accuracy (reported
only), params, FLOPs (2 per MAC), the reward, validity with a reason, and seconds.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from .arch import Architecture, ArchitectureError
from .build import build, inherit_weights
from .cache import NullCache, ResultCache, cache_key
from .data import Dataset
from .distill import accuracy, distill, predict_logits
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
        return cache_key(v=EVAL_VERSION, teacher=self.teacher.sha256, data=self.data.variant,
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
        if params >= self.teacher.params:
            return EvalResult(False, f"not smaller than the teacher ({params:,} >= {self.teacher.params:,} params)",
                              0.0, 0.0, params, flops, -1.0, time.perf_counter() - start)
        key = self.key(arch, protocol, seed)
        hit = self.cache.get(key)
        if hit is not None:
            return dataclasses.replace(EvalResult(**hit), cached=True)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            val_acc, test_acc = self._train_and_score(arch, protocol, seed)
        reward = n2n_reward(student_params=params, teacher_params=self.teacher.params,
                            student_accuracy=val_acc, teacher_accuracy=self.teacher.val_accuracy).value
        result = EvalResult(True, "", val_acc, test_acc, params, flops, reward, time.perf_counter() - start)
        self.cache.put(key, result.to_dict())
        return result

    def _train_and_score(self, arch: Architecture, protocol: Protocol, seed: int) -> tuple[float, float]:
        torch.manual_seed(seed)
        student = build(arch, self.device)
        if protocol.init == "inherit":
            inherit_weights(student, self.teacher.module)
        x, _ = self._subset("train", protocol.train_images)
        logits = None
        if not protocol.augment:
            if protocol.train_images not in self._teacher_logits:
                self._teacher_logits[protocol.train_images] = predict_logits(self.teacher.module, self.data, x)
            logits = self._teacher_logits[protocol.train_images]
        distill(student, self.teacher.module, self.data, x, epochs=protocol.epochs, batch_size=protocol.batch_size,
                lr=protocol.lr, weight_decay=protocol.weight_decay, augment=protocol.augment,
                generator=torch.Generator().manual_seed(seed), teacher_logits=logits)
        val, test = self._subset("val", protocol.val_images), self._subset("test", protocol.test_images)
        return accuracy(student, self.data, *val), accuracy(student, self.data, *test)
