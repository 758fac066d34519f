"""n2n_gym.evaluation.reward: R = Rc * Ra, constraints (their checks and units) and their penalties."""

from __future__ import annotations

import math

import pytest

from n2n_gym.envs.env import N2NEnv
from n2n_gym.evaluation.reward import (
    Constraint,
    Reward,
    annealed_penalty_factor,
    n2n_reward,
    parse_constraints,
)

T_PARAMS, T_ACC = 1_000_000, 0.9


def reward(student_params: int, student_accuracy: float = T_ACC, **kw) -> Reward:
    return n2n_reward(student_params=student_params, teacher_params=T_PARAMS,
                      student_accuracy=student_accuracy, teacher_accuracy=T_ACC, **kw)


@pytest.mark.parametrize(
    "factor, c, r_c",
    [(1, 0.0, 0.0), (2, 0.5, 0.75), (4, 0.75, 0.9375), (10, 0.9, 0.99), (100, 0.99, 0.9999)],
)
def test_compression_term(factor: int, c: float, r_c: float) -> None:
    r = reward(T_PARAMS // factor)
    assert r.compression == pytest.approx(c, abs=1e-12)
    assert r.r_c == pytest.approx(r_c, abs=1e-12)
    assert r.r_c == pytest.approx(r.compression * (2 - r.compression), abs=1e-15)
    assert r.r_a == 1.0
    assert r.value == pytest.approx(r_c, abs=1e-12)
    assert r.penalty_factor == 1.0 and r.violated == ()


@pytest.mark.parametrize("acc", [0.0, 0.45, 0.81, 0.9, 0.95])
def test_accuracy_term_and_product(acc: float) -> None:
    r = reward(T_PARAMS // 10, acc)
    assert r.r_a == pytest.approx(acc / T_ACC)
    assert r.value == pytest.approx(0.99 * acc / T_ACC)


def test_reward_is_monotone() -> None:
    sizes = [T_PARAMS - 1, T_PARAMS // 2, T_PARAMS // 3, T_PARAMS // 10, 1]
    values = [reward(p).value for p in sizes]
    assert values == sorted(values) and values[-1] < 1.0
    accs = [0.1, 0.5, 0.85]
    values = [reward(T_PARAMS // 2, a).value for a in accs]
    assert values == sorted(values)


def test_invalid_student_is_minus_one() -> None:
    r = reward(T_PARAMS // 2, valid=False)
    assert r.value == -1.0
    # constraints do not matter for an invalid student
    r = reward(T_PARAMS // 2, valid=False, constraints=[Constraint.max_params(1)], update=100)
    assert r.value == -1.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="penalty"):
        reward(10, penalty="soft")
    with pytest.raises(ValueError, match="positive"):
        n2n_reward(student_params=1, teacher_params=0, student_accuracy=0.5, teacher_accuracy=0.5)
    with pytest.raises(ValueError, match="positive"):
        n2n_reward(student_params=1, teacher_params=10, student_accuracy=0.5, teacher_accuracy=0.0)


def test_constraint_rows() -> None:
    props = {"params": 500, "flops": 2000, "accuracy": 0.8}
    assert Constraint.max_params(500).satisfied(props)
    assert not Constraint.max_params(499).satisfied(props)
    assert Constraint.max_flops(2000).satisfied(props)
    assert not Constraint.max_flops(1999.5).satisfied(props)
    assert Constraint.min_accuracy(0.8).satisfied(props)
    assert not Constraint.min_accuracy(0.81).satisfied(props)
    # a general row: params + 0.1 * flops <= 700
    row = Constraint({"params": 1.0, "flops": 0.1}, 700.0, "budget")
    assert row.value(props) == pytest.approx(700.0) and row.satisfied(props)
    assert not Constraint({"params": 1.0, "flops": 0.1}, 699.0).satisfied(props)
    with pytest.raises(KeyError, match="latency"):
        Constraint({"latency": 1.0}, 1.0).value(props)


@pytest.mark.parametrize(
    "constraint, satisfied",
    [
        (Constraint.max_params(T_PARAMS // 4), True),
        (Constraint.max_params(T_PARAMS // 4 - 1), False),
        (Constraint.max_flops(5_000), True),
        (Constraint.max_flops(4_999), False),
        (Constraint.min_accuracy(0.8), True),
        (Constraint.min_accuracy(0.85), False),
    ],
)
def test_constraints_satisfied_and_violated(constraint: Constraint, satisfied: bool) -> None:
    r = reward(T_PARAMS // 4, 0.8, constraints=[constraint], properties={"flops": 5_000}, update=7)
    base = 0.9375 * 0.8 / T_ACC
    if satisfied:
        assert r.value == pytest.approx(base) and r.violated == () and r.penalty_factor == 1.0
    else:
        assert r.violated == (constraint.name,)
        e = (1 - 7 / 15) ** 4
        assert r.penalty_factor == pytest.approx(e)
        assert r.value == pytest.approx((e - 1) + e * base)
        assert r.value < base


def test_several_violations_are_all_named() -> None:
    cs = parse_constraints({"max_params": 10, "max_flops": 10, "min_accuracy": 0.1})
    r = reward(T_PARAMS // 2, 0.5, constraints=cs, properties={"flops": 100}, penalty="hard")
    assert set(r.violated) == {cs[0].name, cs[1].name} and r.value == -1.0


@pytest.mark.parametrize("horizon", [15, 4])
def test_annealed_penalty_schedule(horizon: int) -> None:
    c = [Constraint.max_params(1)]
    base = 0.75 * 0.5 / T_ACC
    # u = 0: no penalty at all
    r0 = reward(T_PARAMS // 2, 0.5, constraints=c, update=0, horizon=horizon)
    assert r0.penalty_factor == 1.0 and r0.value == pytest.approx(base) and r0.violated
    # half way: e = (1/2)^4
    r_mid = reward(T_PARAMS // 2, 0.5, constraints=c, update=horizon / 2, horizon=horizon)
    assert r_mid.penalty_factor == pytest.approx(0.0625)
    assert r_mid.value == pytest.approx(0.0625 - 1 + 0.0625 * base)
    # from the horizon on: -1
    for u in (horizon, horizon + 1, 10 * horizon):
        r = reward(T_PARAMS // 2, 0.5, constraints=c, update=u, horizon=horizon)
        assert r.penalty_factor == 0.0 and r.value == -1.0
    # strictly decreasing in between
    values = [reward(T_PARAMS // 2, 0.5, constraints=c, update=u, horizon=horizon).value
              for u in range(horizon + 1)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_annealed_penalty_factor() -> None:
    assert annealed_penalty_factor(0) == 1.0
    assert annealed_penalty_factor(15) == 0.0 and annealed_penalty_factor(16) == 0.0
    assert annealed_penalty_factor(5) == pytest.approx((2 / 3) ** 4)
    assert all(0.0 <= annealed_penalty_factor(u, 7) <= 1.0 for u in range(30))


def test_hard_penalty() -> None:
    for u in (0, 3, 50):
        r = reward(T_PARAMS // 2, constraints=[Constraint.max_params(10)], penalty="hard", update=u)
        assert r.value == -1.0 and r.penalty_factor == 0.0 and r.violated
    # a satisfied constraint in hard mode changes nothing
    r = reward(T_PARAMS // 2, constraints=[Constraint.max_params(T_PARAMS)], penalty="hard")
    assert r.value == pytest.approx(0.75)


def test_violation_penalty_is_the_relative_shortfall() -> None:
    # Deb's feasibility rule: short of min_accuracy 0.8 at 0.6 is v = 25 % short -> -v / (1 + v) = -0.2, any update
    c = [Constraint.min_accuracy(0.8)]
    for u in (0, 3, 50):
        r = reward(T_PARAMS // 2, 0.6, constraints=c, penalty="violation", update=u)
        assert r.value == pytest.approx(-0.2) and r.violated == (c[0].name,) and r.penalty_factor == 0.0
    # twice the parameter bound: v = 1 -> -0.5; far worse stays above an invalid student's -1, and ordered
    assert reward(T_PARAMS // 2, constraints=[Constraint.max_params(T_PARAMS // 4)], penalty="violation").value == \
        pytest.approx(-0.5)
    far = [reward(T_PARAMS, constraints=[Constraint.max_params(T_PARAMS // k)], penalty="violation").value
           for k in (10, 100, 1000)]
    assert -1.0 < far[2] < far[1] < far[0] < 0.0
    both = [Constraint.max_params(T_PARAMS * 0.4), Constraint.min_accuracy(0.8)]
    assert reward(T_PARAMS // 2, 0.6, constraints=both, penalty="violation").value == pytest.approx(-0.5 / 1.5)
    # a satisfied constraint changes nothing
    assert reward(T_PARAMS // 2, 0.9, constraints=c, penalty="violation").value == pytest.approx(0.75 * 0.9 / T_ACC)


def test_violation_penalty_orders_feasible_before_infeasible_and_nearer_first() -> None:
    c = [Constraint.min_accuracy(0.85)]
    rewards = {(p, a): reward(p, a, constraints=c, penalty="violation").value
               for p in (T_PARAMS // 20, T_PARAMS // 2, T_PARAMS) for a in (0.5, 0.8, 0.84, 0.85, 0.9)}
    feasible = [v for (p, a), v in rewards.items() if a >= 0.85]
    infeasible = [v for (p, a), v in rewards.items() if a < 0.85]
    assert min(feasible) >= 0.0 > max(infeasible)  # the teacher's own size (R = 0) still beats every violator
    for p in (T_PARAMS // 20, T_PARAMS // 2):
        assert rewards[(p, 0.5)] < rewards[(p, 0.8)] < rewards[(p, 0.84)]
    # size does not buy an infeasible student anything: only the shortfall counts
    assert rewards[(T_PARAMS // 20, 0.8)] == pytest.approx(rewards[(T_PARAMS, 0.8)])


def test_zero_bound_violation_is_the_plain_excess() -> None:
    c = Constraint({"flops": 1.0, "params": -1.0}, 0.0, "flops <= params")
    assert c.violation({"flops": 10, "params": 4}) == 6 and c.violation({"flops": 1, "params": 4}) == 0.0


def test_flops_constraint_needs_flops_property() -> None:
    with pytest.raises(KeyError, match="flops"):
        reward(T_PARAMS // 2, constraints=[Constraint.max_flops(10)])


def test_parse_constraints_forms() -> None:
    assert parse_constraints(None) == ()
    one = Constraint.max_params(5)
    assert parse_constraints(one) == (one,)
    d = parse_constraints({"max_params": 100, "max_flops": 2e6, "min_accuracy": 0.5})
    assert [c.coefficients for c in d] == [{"params": 1.0}, {"flops": 1.0}, {"accuracy": -1.0}]
    assert [c.bound for c in d] == [100.0, 2e6, -0.5]
    assert parse_constraints({"max_params": None}) == ()
    mixed = parse_constraints([one, {"min_accuracy": 0.3}])
    assert mixed[0] == one and mixed[1] == Constraint.min_accuracy(0.3)
    assert all(math.isfinite(c.bound) for c in d)


def test_parse_constraints_rejects_unknown_keys_and_types() -> None:
    with pytest.raises(ValueError, match="max_param"):
        parse_constraints({"max_param": 100})
    with pytest.raises(ValueError, match="unknown constraint"):
        parse_constraints([{"max_latency": 1}])
    with pytest.raises(TypeError):
        parse_constraints("max_params=100")
    with pytest.raises(TypeError):
        parse_constraints(100)


# ---------------------------------------------------------------------------- D: constraints, reset options
@pytest.mark.parametrize("spec, error, match", [
    ({"min_accuracy": 95}, ValueError, r"did you mean 0.95"),
    ({"min_accuracy": -0.1}, ValueError, "min_accuracy must be >= 0"),
    ({"max_params": -5}, ValueError, "max_params must be > 0"),
    ({"max_flops": float("nan")}, ValueError, "max_flops must be a finite number"),
    ({"max_params": "1e5"}, TypeError, r"pass max_params=100000.0, a number"),
    ({"max_param": 5}, ValueError, "unknown constraint"),
    (5, TypeError, "constraints must be"),
    # a fraction of the teacher where a count is meant (bug hunt): refused with how to write it
    ({"max_params": 0.5}, ValueError, r"count of parameters, got 0.5.*info\['teacher_params'\]"),
    ({"max_flops": 0.25}, ValueError, r"count of FLOPs, got 0.25"),
    # pairs instead of dicts (bug hunt): named, with the form to use
    ([("max_params", 1e5)], TypeError, r"holds dicts or Constraint objects, got \('max_params'"),
])
def test_constraints_in_the_wrong_unit_or_impossible_fail_at_make(spec, error, match):
    with pytest.raises(error, match=match):
        N2NEnv(constraints=spec)


def test_constraint_rows_are_checked():
    with pytest.raises(ValueError, match="Constraint bound must be a finite number"):
        Constraint({"params": 1.0}, float("inf"))
    with pytest.raises(TypeError, match="coefficient"):
        Constraint({"params": "1"}, 5.0)
    assert parse_constraints({"min_accuracy": 0.95, "max_params": 1e5})[1].bound == 1e5
