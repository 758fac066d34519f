"""Calibration of a cheap protocol's accuracy to the accuracy training would reach.

A cheap protocol (a few hundred distillation steps, or batch-norm recalibration alone) can
rank students' accuracies well and still rank their *rewards* badly: R = Rc * Ra, and its
accuracies sit far below the teacher's (25-75 % on ResNet-20 CIFAR-10 against 73-86 % after
the final distillation), so Ra varies several times more than it would after training and
outweighs size. The fidelity study (``benchmarks/fidelity.py``) measures both on the same
students, and a monotone map fitted there turns the protocol's accuracy into an estimate of
the trained one; the reward is then computed from that estimate (the same R = Rc * Ra).

The map (:class:`Calibration`): a least-squares line ``y = intercept + slope * x`` through
the study's (protocol accuracy, reference accuracy) pairs, its slope kept >= 0 (monotone).
Below the smallest fitted accuracy ``x_min`` it is not extrapolated: it falls linearly to
chance at chance (a student the protocol scores at chance is estimated at chance, or lower
where the line itself is below chance, so that the map stays monotone), so a search cannot
gain by driving students below what the study saw.
Estimates are clipped to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from n2n_gym.utils.checks import check_float


@dataclass(frozen=True)
class Calibration:
    """``predict(x)``: the estimated trained accuracy of a student the protocol scores at ``x``."""

    intercept: float
    slope: float
    x_min: float  # smallest protocol accuracy of the fit; below it, a line down to (chance, chance)
    chance: float  # 1 / classes

    def __post_init__(self) -> None:
        for name in ("intercept", "slope", "x_min", "chance"):
            # numbers only (no bools, no strings); stored as plain floats (-0.0 as 0.0) so that equal
            # maps write equal JSON and make equal cache keys
            object.__setattr__(self, name, check_float(f"Calibration {name}", getattr(self, name)) + 0.0)
        check_float("Calibration slope", self.slope, min=0.0)
        check_float("Calibration chance", self.chance, min=0.0, max=1.0)
        check_float("Calibration x_min", self.x_min, min=0.0, max=1.0)

    @classmethod
    def fit(cls, x: Sequence[float], y: Sequence[float], chance: float) -> "Calibration":
        """The map of the pairs (protocol accuracy ``x``, reference accuracy ``y``), both in
        [0, 1]; ``ValueError`` for fewer than 3 pairs or lengths that differ."""
        if len(x) != len(y) or len(x) < 3:
            raise ValueError(f"a calibration needs >= 3 (protocol, reference) accuracy pairs, got {len(x)} / {len(y)}")
        n = len(x)
        mx, my = sum(x) / n, sum(y) / n
        sxx = sum((a - mx) ** 2 for a in x)
        slope = max(0.0, sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx) if sxx > 0 else 0.0
        return cls(intercept=my - slope * mx, slope=slope, x_min=float(min(x)), chance=float(chance))

    def predict(self, x: float) -> float:
        """The estimate for protocol accuracy ``x`` in [0, 1] (NaN stays NaN)."""
        if math.isnan(x):
            return x
        line = self.intercept + self.slope * max(x, self.x_min)
        if x < self.x_min:
            floor = min(self.chance, line)
            span = self.x_min - self.chance
            w = 0.0 if span <= 0 else min(max((x - self.chance) / span, 0.0), 1.0)
            line = floor + w * (line - floor)
        return min(max(line, 0.0), 1.0)

    def to_list(self) -> list[float]:
        return [self.intercept, self.slope, self.x_min, self.chance]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> "Calibration":
        """The map of ``[intercept, slope, x_min, chance]`` (numbers; ``TypeError`` / ``ValueError`` otherwise)."""
        if not isinstance(values, (list, tuple)) or len(values) != 4:
            raise ValueError(f"a calibration is [intercept, slope, x_min, chance], got {values!r}")
        return cls(*values)


def leave_one_out(x: Sequence[float], y: Sequence[float], chance: float) -> list[float]:
    """Each pair's estimate from the map fitted on the others: what the calibration predicts
    for students it has not seen (the fidelity study's figures use these, not the full fit)."""
    out = []
    for k in range(len(x)):
        rest = [i for i in range(len(x)) if i != k]
        out.append(Calibration.fit([x[i] for i in rest], [y[i] for i in rest], chance).predict(x[k]))
    return out


__all__ = ["Calibration", "leave_one_out"]
