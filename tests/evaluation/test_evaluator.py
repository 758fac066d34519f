"""n2n_gym.evaluation.evaluator: a student that diverges or belongs to another teacher scores -1
with a reason (cached), a sane protocol stays valid."""

from __future__ import annotations

import dataclasses
import math

import pytest
from conftest import make_digits_env

from n2n_gym.evaluation.protocols import PROTOCOLS
from n2n_gym.ir.zoo import teacher_architecture

TINY = PROTOCOLS["tiny"]


def _play(env, action: int | None = None) -> dict:
    """Play one episode (``action`` every step, else "keep at full width"); the terminal info."""
    env.reset(seed=0)
    u = env.unwrapped
    while True:
        a = u._full_width_action if action is None else action
        _, reward, terminated, truncated, info = env.step(a)
        if terminated or truncated:
            assert reward == info["reward"]
            return info


# ---------------------------------------------------------------------------- C: diverged students
@pytest.mark.parametrize("lr, match", [(1e20, "loss is not finite"), (1e38, "optimizer step overflows")])
def test_a_diverged_student_scores_minus_one_with_a_reason_and_is_cached(digits_teacher, tmp_path, lr, match):
    protocol = dataclasses.replace(TINY, name="tiny-huge-lr", lr=lr)
    cache = str(tmp_path / "results.sqlite")
    info = _play(make_digits_env(stage="shrink", protocol=protocol, cache=cache), action=1)
    assert info["valid"] is False and info["reward"] == -1.0 and not info["cached"]
    assert info["reason"].startswith("NonFiniteError: distillation diverged") and match in info["reason"]
    again = _play(make_digits_env(stage="shrink", protocol=protocol, cache=cache), action=1)
    assert again["cached"] and again["valid"] is False and again["reason"] == info["reason"]


def test_a_sane_protocol_is_still_valid(digits_teacher):
    info = _play(make_digits_env(stage="shrink", cache=False), action=1)
    assert info["valid"] and info["reason"] == "" and math.isfinite(info["reward"]) and info["reward"] > 0


def test_evaluating_an_architecture_of_another_teacher_is_invalid_not_an_error(digits_teacher, digits_data):
    from n2n_gym.evaluation.evaluator import Evaluator

    ev = Evaluator(digits_teacher, digits_data)
    foreign = teacher_architecture("resnet20", (1, 8, 8), 10)
    result = ev.evaluate(foreign, TINY)
    assert not result.valid and result.reward == -1.0
    assert result.reason.startswith("the student does not descend from the teacher: layer 1: role")


def test_students_of_an_augmented_protocol_score_the_same_after_another_student(digits_teacher, digits_data):
    """The evaluator reuses the teacher's logits of augmented batches across students
    (n2n_gym.evaluation.distill.AugmentedLogits): a student's result is what it is alone."""
    import numpy as np

    from n2n_gym.evaluation.evaluator import Evaluator
    from n2n_gym.evaluation.supernet import sample_student

    protocol = dataclasses.replace(TINY, name="tiny-augmented", augment=True, epochs=2)
    rng = np.random.default_rng(5)
    a, b = (sample_student(digits_teacher.architecture, rng) for _ in range(2))
    shared = Evaluator(digits_teacher, digits_data)
    shared.evaluate(a, protocol)
    after = shared.evaluate(b, protocol)
    assert shared._logit_memos[(protocol.train_images, protocol.precision)].hits == 2  # b's two epochs were served
    alone = Evaluator(digits_teacher, digits_data).evaluate(b, protocol)
    assert (after.accuracy, after.test_accuracy, after.reward) == (alone.accuracy, alone.test_accuracy, alone.reward)


def test_a_calibrated_protocol_rewards_the_estimate_and_keeps_the_measurement(digits_teacher, digits_data):
    """A calibrated protocol scores the same student as its uncalibrated twin, then maps the
    accuracies; the reward is computed from the estimate, and the env's info shows both."""
    from n2n_gym.evaluation.evaluator import Evaluator, result_row_problem
    from n2n_gym.evaluation.reward import n2n_reward

    calibrated = dataclasses.replace(TINY, name="tiny-calibrated", calibration=(0.9, 0.1, 0.2, 0.1))
    env = make_digits_env(cache=False)
    env.reset(seed=0)
    arch = env.unwrapped.student_architecture([1] * env.unwrapped.num_layers)  # what _play(env, 1) evaluates
    env.close()
    ev = Evaluator(digits_teacher, digits_data)
    plain, cal = ev.evaluate(arch, TINY), ev.evaluate(arch, calibrated)
    assert plain.valid and plain.measured_accuracy is None and cal.measured_accuracy == plain.accuracy
    assert (cal.accuracy, cal.test_accuracy) == (calibrated.estimate(plain.accuracy),
                                                 calibrated.estimate(plain.test_accuracy))
    assert cal.reward == n2n_reward(student_params=arch.params, teacher_params=digits_teacher.params,
                                    student_accuracy=cal.accuracy, teacher_accuracy=digits_teacher.val_accuracy).value
    assert result_row_problem(cal.to_dict(), arch.params, arch.flops, digits_teacher.params,
                              digits_teacher.val_accuracy) is None
    info = _play(make_digits_env(cache=False, protocol=calibrated), 1)
    assert (info["accuracy"], info["measured_accuracy"]) == (cal.accuracy, plain.accuracy)
    assert _play(make_digits_env(cache=False), 1)["measured_accuracy"] == plain.accuracy
