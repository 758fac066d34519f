"""Property-based tests (hypothesis) of two contracts of the env:

1. every invalid argument fails at construction (``TypeError`` / ``ValueError`` /
   ``FileNotFoundError`` naming it), every valid combination constructs;
2. no student problem escapes ``step()``: for any env that constructs and any action
   sequence, the episode ends with a student that is either refused with a reason or
   descends from the teacher and builds, takes the teacher's weights and runs.

Each draw of (1) and of the construction + action-sequence + student path of (2) costs
milliseconds (no data, no teacher training), so they run for thousands of draws; the
full evaluation (training a student, any Protocol lr up to 1e38) runs for a few dozen.
``N2N_PROPERTY_EXAMPLES`` scales the draw counts (default 1: 2000 and 30 draws).
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import torch
from conftest import SMALL_DIGITS_RECIPE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from n2n_gym.envs.env import N2NEnv
from n2n_gym.evaluation.protocols import PROTOCOLS, Protocol
from n2n_gym.ir.build import build, inherit_weights
from n2n_gym.ir.edits import InvalidStudent, check_start_architecture
from n2n_gym.ir.encoding import STAGES
from n2n_gym.ir.zoo import teacher_architecture

SCALE = float(os.environ.get("N2N_PROPERTY_EXAMPLES", "1"))
CHEAP = settings(max_examples=int(2000 * SCALE), deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FULL = settings(max_examples=int(30 * SCALE), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

TEACHERS = ("digitsnet", "resnet20")  # a plain and a residual teacher on the 8x8 digits
OK, BAD = True, False  # tags of drawn argument values


def _tagged(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(valid.map(lambda v: (OK, v)), invalid.map(lambda v: (BAD, v)))


_nan = st.just(float("nan"))
_ratios_ok = st.one_of(
    st.none(), st.sampled_from(["paper", "uniform"]),
    st.lists(st.floats(0.01, 1.0), max_size=8).map(lambda xs: tuple(xs) + (1.0,)),
)
_ratios_bad = st.one_of(
    st.just("papr"), st.just(0.5), st.lists(st.floats(0.01, 0.99), min_size=1, max_size=4).map(tuple),
    st.tuples(st.floats(1.0001, 10.0), st.just(1.0)), st.tuples(st.floats(-10.0, 0.0), st.just(1.0)),
    st.tuples(_nan, st.just(1.0)), st.tuples(st.just("0.5"), st.just(1.0)),
)
_constraints_ok = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={"max_params": st.floats(1.0, 1e9), "max_flops": st.integers(1, 10**9),
                                        "min_accuracy": st.floats(0.0, 1.0)}),
)
_constraints_bad = st.one_of(
    st.fixed_dictionaries({"min_accuracy": st.floats(1.001, 100.0)}),
    st.fixed_dictionaries({"max_params": st.one_of(st.floats(-1e9, 0.0), _nan, st.just(math.inf),
                                                   st.just("1e5"))}),
    st.fixed_dictionaries({"max_flop": st.integers(1, 10)}), st.integers(),
)
# (a protocol calibrated for a pinned teacher is refused by the tests' own small teacher, rightly)
_protocol_ok = st.one_of(st.sampled_from(sorted(k for k, p in PROTOCOLS.items() if p.calibrated_for is None)), st.builds(
    Protocol, name=st.just("drawn"), init=st.sampled_from(["inherit", "random"]), epochs=st.integers(1, 3),
    train_images=st.one_of(st.none(), st.integers(1, 500)), val_images=st.one_of(st.none(), st.integers(1, 500)),
    test_images=st.one_of(st.none(), st.integers(1, 500)), batch_size=st.integers(1, 256),
    lr=st.floats(1e-8, 1e38), weight_decay=st.floats(0.0, 1.0), augment=st.booleans()))
_int_bad = st.one_of(st.text(max_size=3), st.floats(allow_nan=True), st.booleans(), st.none())

ARGS = {
    "stage": (st.sampled_from(STAGES), st.one_of(st.sampled_from(["shrnk", "Remove", ""]), st.integers())),
    "ratios": (_ratios_ok, _ratios_bad),
    "protocol": (_protocol_ok, st.one_of(st.sampled_from(["fastest", ""]), st.integers())),
    "constraints": (_constraints_ok, _constraints_bad),
    "penalty": (st.sampled_from(["anneal", "hard"]), st.sampled_from(["soft", ""])),
    "penalty_horizon": (st.integers(1, 100), st.one_of(st.integers(-5, 0), _int_bad)),
    "episodes_per_update": (st.integers(1, 20), st.one_of(st.integers(-5, 0), _int_bad)),
    "illegal_action": (st.sampled_from(["noop", "invalid"]), st.sampled_from(["error", ""])),
    "min_width": (st.integers(1, 80), st.one_of(st.integers(-5, 0), _int_bad, st.just("10"))),
    "eval_seed": (st.integers(0, 2**40), st.one_of(st.integers(-5, -1), _int_bad)),
    "device": (st.sampled_from(["cpu", "auto"]), st.one_of(st.sampled_from(["gpu", "tpu:0"]), st.integers())),
    "cache": (st.just(False), st.one_of(st.integers(), st.floats())),
    "progress": (st.booleans(), st.one_of(st.sampled_from(["yes", "no"]), st.integers())),
}


@st.composite
def env_kwargs(draw) -> tuple[bool, dict]:
    """A teacher and a subset of N2NEnv's arguments, each valid or invalid (tagged)."""
    teacher = draw(st.sampled_from(TEACHERS))
    kwargs, ok = {"teacher": teacher, "dataset": "digits"}, True
    for name in draw(st.sets(st.sampled_from(sorted(ARGS)), max_size=6)):
        valid, invalid = ARGS[name]
        tag, value = draw(_tagged(valid, invalid))
        kwargs[name], ok = value, ok and tag
    if draw(st.booleans()):  # a start architecture: a drawn student of this teacher, or a foreign one
        tag, start = draw(_tagged(student_of(teacher), foreign_start(teacher)))
        kwargs["start_architecture"], ok = start, ok and tag
    return ok, kwargs


def _arch(teacher: str):
    return teacher_architecture(teacher, (1, 8, 8), 10)


@st.composite
def student_of(draw, teacher: str):
    env = _env(teacher, "joint")
    actions = [draw(st.sampled_from(np.flatnonzero(m).tolist())) for m in env._layer_masks]
    try:
        return env.student_architecture(actions)
    except InvalidStudent:
        return _arch(teacher)


@st.composite
def foreign_start(draw, teacher: str):
    other = _arch("resnet20" if teacher == "digitsnet" else "digitsnet")
    own = _arch(teacher)
    kind = draw(st.sampled_from(["other", "wider", "reordered"]))
    if kind == "other":
        return other
    layers = list(own.layers)
    if kind == "wider":
        i = draw(st.sampled_from([k for k, l in enumerate(layers) if l.has_weights]))
        layers[i] = dataclasses.replace(layers[i], out=layers[i].out + draw(st.integers(1, 5)))
    else:
        i = draw(st.integers(0, len(layers) - 2))
        layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return dataclasses.replace(own, layers=tuple(layers))


_ENVS: dict[tuple[str, str], N2NEnv] = {}


def _env(teacher: str, stage: str) -> N2NEnv:
    if (teacher, stage) not in _ENVS:
        _ENVS[(teacher, stage)] = N2NEnv(teacher, "digits", stage=stage, cache=False, progress=False, device="cpu")
    return _ENVS[(teacher, stage)]


_TEACHER_MODULES: dict[str, torch.nn.Module] = {}


def _teacher_module(teacher: str) -> torch.nn.Module:
    if teacher not in _TEACHER_MODULES:
        torch.manual_seed(0)
        _TEACHER_MODULES[teacher] = build(_arch(teacher), "cpu").eval()
    return _TEACHER_MODULES[teacher]


CONSTRUCTION_ERRORS = (TypeError, ValueError, FileNotFoundError)


@CHEAP
@given(drawn=env_kwargs(), data=st.data())
def test_construction_and_any_action_sequence(drawn, data):
    """Invalid arguments fail at construction; with valid ones every action sequence gives a
    student that is refused with a reason or descends from the teacher, builds, inherits and runs."""
    ok, kwargs = drawn
    if not ok:
        with pytest.raises(CONSTRUCTION_ERRORS) as exc:
            N2NEnv(**kwargs)
        assert str(exc.value)
        return
    env = N2NEnv(**kwargs)
    env.reset(options=data.draw(st.one_of(st.none(), st.fixed_dictionaries({"update": st.integers(0, 50)}))))
    actions = data.draw(st.lists(st.integers(0, env.action_space.n - 1), min_size=env.num_layers,
                                 max_size=env.num_layers))
    for a in actions[:-1]:  # the terminal step would train the student: see the full test below
        _, reward, terminated, truncated, info = env.step(a)
        assert reward == 0.0 and not terminated and not truncated
        assert info["action_mask"].shape == (env.action_space.n,)
    try:
        student = env.student_architecture(actions)
    except InvalidStudent as exc:
        assert str(exc)
        return
    check_start_architecture(student, env.teacher_architecture)
    assert all(l.out >= 1 for l in student.layers if l.has_weights)
    assert student.params <= env.teacher_architecture.params
    module = build(student, "cpu")
    inherit_weights(module, _teacher_module(kwargs["teacher"]))
    with torch.no_grad():
        out = module(torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 10)


@settings(CHEAP, max_examples=int(500 * SCALE))
@given(options=st.dictionaries(st.text(max_size=8), st.integers(-3, 3), max_size=3))
def test_reset_options_are_accepted_or_refused_by_name(options):
    env = _env("digitsnet", "joint")
    bad_key = set(options) - {"update"}
    if bad_key or options.get("update", 0) < 0:
        with pytest.raises(ValueError, match="reset option"):
            env.reset(options=options)
    else:
        env.reset(options=options)


@FULL
@given(stage=st.sampled_from(STAGES), lr=st.floats(1e-6, 1e38), init=st.sampled_from(["inherit", "random"]),
       min_width=st.integers(1, 40), data=st.data())
def test_step_never_raises_for_a_student_problem(digits_teacher, stage, lr, init, min_width, data):
    """The full terminal step (train + score) with any Protocol lr: a finite reward, -1 exactly
    when invalid, and a reason for every invalid student."""
    protocol = Protocol("drawn", init, 1, 64, 64, 64, 32, lr, 0.0, False)
    env = N2NEnv(stage=stage, protocol=protocol, min_width=min_width, teacher_recipe=dict(SMALL_DIGITS_RECIPE),
                 cache=False, progress=False, device="cpu")
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, reward, terminated, truncated, info = env.step(data.draw(st.integers(0, env.action_space.n - 1)))
    assert math.isfinite(reward) and -1.0 <= reward <= 1.0
    assert (reward == -1.0) == (not info["valid"])
    if not info["valid"]:
        assert info["reason"]
    else:
        assert 0.0 <= info["accuracy"] <= 1.0
