"""The N2N reward, the one place it is computed.

``R = Rc * Ra`` with ``C = 1 - params_student / params_teacher``, ``Rc = C (2 - C)`` and
``Ra = acc_student / acc_teacher`` (validation accuracies). An invalid student gets -1.

Constraints ``A x <= b`` over student properties (params, flops, accuracy, ...) are rows
of :class:`Constraint`. A violated constraint is penalised like the N2N code does
(``penalty="anneal"``: ``R = (e - 1) + e * Rc * Ra`` with ``e = clip((1 - u / horizon)^4,
0, 1)``, ``u`` the index of the policy update; no penalty at ``u = 0``, -1 from
``u = horizon`` on), with a flat -1 (``penalty="hard"``), or by how far the student misses
(``penalty="violation"``: ``R = -v / (1 + v)`` with ``v = sum_k (A_k x - b_k) / |b_k|`` the
relative excess of the violated rows: a student short of ``min_accuracy=0.8`` at 0.6 has
``v = 0.25`` and gets -0.2; the map keeps R in (-1, 0), above an invalid student's -1, however
far a student misses). The last is Deb's feasibility rule (Deb, "An efficient constraint handling method
for genetic algorithms", CMAME 2000) as a reward: every feasible student (R >= 0) beats
every infeasible one (R < 0), and of two infeasible students the nearer to feasible wins,
so a search that starts among infeasible students (random students under a high
``min_accuracy``) is led towards the feasible ones instead of seeing a flat -1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from n2n_gym.utils.checks import check_float

PENALTIES = ("anneal", "hard", "violation")


@dataclass(frozen=True)
class Constraint:
    """One row of ``A x <= b``: ``sum(coefficients[p] * x[p]) <= bound``."""

    coefficients: Mapping[str, float]
    bound: float
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.coefficients, Mapping) or not self.coefficients:
            raise TypeError(f"Constraint coefficients must be a non-empty dict property -> number, "
                            f"got {self.coefficients!r}")
        for prop, c in self.coefficients.items():
            check_float(f"Constraint coefficient of {prop!r}", c)
        check_float("Constraint bound", self.bound)

    @classmethod
    def max_params(cls, n: float) -> "Constraint":
        """``params <= n``; ``n`` a count of parameters, >= 1.

        Raises ValueError for ``n < 1``: a fraction of the teacher (0.5) is not a count."""
        n = _check_count("max_params", n, "parameters")
        return cls({"params": 1.0}, n, f"params <= {n:,.0f}")

    @classmethod
    def max_flops(cls, n: float) -> "Constraint":
        """``flops <= n``; ``n`` a count of FLOPs (2 per multiply-accumulate), >= 1.

        Raises ValueError for ``n < 1``: a fraction of the teacher (0.5) is not a count."""
        n = _check_count("max_flops", n, "FLOPs")
        return cls({"flops": 1.0}, n, f"flops <= {n:,.0f}")

    @classmethod
    def min_accuracy(cls, a: float) -> "Constraint":
        """``accuracy >= a``; ``a`` a validation accuracy, a fraction in [0, 1]."""
        a = check_float("min_accuracy", a)
        if 1.0 < a <= 100.0:
            raise ValueError(f"min_accuracy is a fraction in [0, 1], got {a:g}: did you mean {a / 100:g} "
                             f"({a:g} %)?")
        a = check_float("min_accuracy", a, min=0.0, max=1.0)
        return cls({"accuracy": -1.0}, -a, f"accuracy >= {a}")

    def value(self, props: Mapping[str, float]) -> float:
        missing = set(self.coefficients) - set(props)
        if missing:
            raise KeyError(f"constraint {self.name or self.coefficients} needs properties {sorted(missing)}")
        return sum(c * float(props[p]) for p, c in self.coefficients.items())

    def satisfied(self, props: Mapping[str, float]) -> bool:
        return self.value(props) <= self.bound + 1e-12

    def violation(self, props: Mapping[str, float]) -> float:
        """How far ``props`` miss the row, relative to its bound: ``max(0, A x - b) / |b|``
        (``A x - b`` itself for a zero bound); 0 when satisfied."""
        excess = self.value(props) - self.bound
        if excess <= 1e-12:
            return 0.0
        return excess / abs(self.bound) if self.bound else excess


def _check_count(name: str, n: Any, unit: str) -> float:
    n = check_float(name, n, min=0.0, min_open=True)
    if n < 1.0:
        # A fraction here is a user thinking of "half the teacher": say how to write that.
        key = "teacher_params" if unit == "parameters" else "teacher_flops"
        raise ValueError(f"{name} is a count of {unit}, got {n:g}; for a fraction of the teacher pass {n:g} x "
                         f"the teacher's count (info[{key!r}] of any step)")
    return n


def parse_constraints(spec: Any) -> tuple[Constraint, ...]:
    """Accepts None, a dict shorthand ``{"max_params": n, "max_flops": n, "min_accuracy": a}``,
    or a sequence of :class:`Constraint` (and/or such dicts)."""
    if spec is None:
        return ()
    if isinstance(spec, Constraint):
        return (spec,)
    if isinstance(spec, Mapping):
        makers = {"max_params": Constraint.max_params, "max_flops": Constraint.max_flops,
                  "min_accuracy": Constraint.min_accuracy}
        unknown = set(spec) - set(makers)
        if unknown:
            raise ValueError(f"unknown constraint(s) {sorted(unknown)}; use {sorted(makers)} or Constraint objects")
        return tuple(makers[k](v) for k, v in spec.items() if v is not None)
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        for item in spec:
            if not isinstance(item, (Mapping, Constraint)):
                raise TypeError(f"a list of constraints holds dicts or Constraint objects, got {item!r}; write "
                                f"{{'max_params': n, 'min_accuracy': a}} or Constraint.max_params(n)")
        return tuple(c for item in spec for c in parse_constraints(item))
    raise TypeError(f"constraints must be a dict, a Constraint or a list of them, not {type(spec).__name__}")


@dataclass(frozen=True)
class Reward:
    value: float
    compression: float = 0.0  # C = 1 - p_s / p_t
    r_c: float = 0.0
    r_a: float = 0.0
    penalty_factor: float = 1.0  # e; 1 when every constraint holds
    violated: tuple[str, ...] = field(default_factory=tuple)


def annealed_penalty_factor(update: int, horizon: int = 15) -> float:
    return min(max((1.0 - update / horizon) ** 4 if update < horizon else 0.0, 0.0), 1.0)


def n2n_reward(
    *,
    student_params: int,
    teacher_params: int,
    student_accuracy: float,
    teacher_accuracy: float,
    valid: bool = True,
    constraints: Sequence[Constraint] = (),
    properties: Mapping[str, float] | None = None,
    penalty: str = "anneal",
    update: int = 0,
    horizon: int = 15,
) -> Reward:
    """The reward of one student (see the module docstring)."""
    if penalty not in PENALTIES:
        raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
    if not valid:
        return Reward(-1.0)
    if teacher_params <= 0 or teacher_accuracy <= 0:
        raise ValueError("teacher params and accuracy must be positive")
    c = 1.0 - student_params / teacher_params
    r_c = c * (2.0 - c)
    r_a = student_accuracy / teacher_accuracy
    props = {"params": student_params, "accuracy": student_accuracy, **(properties or {})}
    violated = tuple(k.name or str(dict(k.coefficients)) for k in constraints if not k.satisfied(props))
    if not violated:
        return Reward(r_c * r_a, c, r_c, r_a)
    if penalty == "violation":
        v = sum(k.violation(props) for k in constraints)
        return Reward(-v / (1.0 + v), c, r_c, r_a, 0.0, violated)
    e = annealed_penalty_factor(update, horizon) if penalty == "anneal" else 0.0
    return Reward((e - 1.0) + e * r_c * r_a, c, r_c, r_a, e, violated)
