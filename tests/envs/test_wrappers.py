"""Budgets and schedules (issue 21, kind 4): evaluations are counted where they happen (the
env), so an agent cannot spend more than its record says by calling
``env.unwrapped.evaluate_many`` inside ``BudgetWrapper``; the annealed constraint penalty's
update index depends on the episode (since the last seeded reset, or ``options["update"]``),
not on what the env object played before."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import SMALL_DIGITS_RECIPE, make_digits_env

from n2n_gym.bench import runner
from n2n_gym.bench.records import record_errors
from n2n_gym.envs.wrappers import BudgetTracker, BudgetWrapper, private_cache

ENV_KWARGS = {"teacher_recipe": dict(SMALL_DIGITS_RECIPE)}


def _students(masks: np.ndarray, n: int) -> list[list[int]]:
    """``n`` distinct action lists: layer t takes its allowed action i (cycling)."""
    allowed = [np.flatnonzero(m) for m in masks]
    return [[int(a[(i + t) % len(a)]) for t, a in enumerate(allowed)] for i in range(n)]


def _sneaky(env_id, seed, budget, env_kwargs, hparams, *, tracker=None, wandb_run=None):
    """An agent that plays one episode by the rules and scores 5 more students through the
    unwrapped env's batch method, behind the wrapper's back."""
    tracker = tracker or BudgetTracker(budget)
    with private_cache(env_kwargs) as kwargs:
        env = BudgetWrapper(gym.make(env_id, **kwargs), tracker)
        try:
            _, info = env.reset(seed=seed)
            extra = _students(info["layer_masks"], 6)
            env.unwrapped.evaluate_many(extra[1:])
            env.reset()
            for a in extra[0]:
                env.step(a)
        finally:
            env.close()
    return {"hparams": {}, "tracker": tracker}


@pytest.fixture
def sneaky_agent():
    runner.register_agent("sneaky", _sneaky, "evaluates behind the wrapper")
    yield "sneaky"
    runner.AGENTS.pop("sneaky", None)
    runner._LOADED.pop("sneaky", None)


def test_evaluate_many_behind_the_wrapper_is_counted_and_the_record_fails(digits_teacher, sneaky_agent):
    record = runner.run_one("N2N-DigitsNet-Digits-v0", sneaky_agent, 0, 3, protocol="tiny", env_kwargs=ENV_KWARGS,
                            device="cpu")
    budget = record["budget"]
    assert budget["evaluations"] == len(record["students"]["data"]) >= 5  # every training counted (not "budget 3, evaluations 1")
    assert budget["env_steps"] >= budget["episodes"]  # a batch's action lists count as steps
    errors = record_errors(record)
    assert any(f"{budget['evaluations']} evaluations exceed the 3 requested" in e for e in errors), errors


def test_a_wrapped_batch_spends_the_budget_like_episodes(digits_teacher):
    tracker = BudgetTracker(10)
    env = BudgetWrapper(make_digits_env(cache=False), tracker)
    try:
        _, info = env.reset(seed=0)
        students = _students(info["layer_masks"], 2)
        env.unwrapped.evaluate_many(students)
        assert tracker.evaluations == 2 and tracker.episodes == 2
        assert tracker.env_steps == sum(map(len, students))
    finally:
        env.close()


def test_the_annealed_penalty_depends_on_the_seeded_episode_not_the_env_object(digits_teacher):
    """The issue's case: the same actions after reset(seed=0) got rewards from 0.10 to -1.0."""
    env = make_digits_env(constraints={"max_params": 100}, penalty="anneal", penalty_horizon=4,
                          episodes_per_update=1)
    try:
        _, info = env.reset(seed=0)
        (actions,) = _students(info["layer_masks"], 1)

        def play(seed=None, options=None):
            env.reset(seed=seed, options=options)
            for a in actions:
                _, reward, *_, info = env.step(a)
            return reward, info["update"]

        first = play(seed=0)
        later = [play() for _ in range(3)]  # the schedule advances: update 1, 2, 3
        assert [u for _, u in later] == [1, 2, 3] and len({r for r, _ in [first, *later]}) > 1
        assert play(seed=0) == first  # a seeded reset starts the schedule over
        assert play(seed=0, options={"update": 3}) == later[-1]  # an explicit update wins
        # another env object, another history: the same seed and actions give the same reward
        other = make_digits_env(constraints={"max_params": 100}, penalty="anneal", penalty_horizon=4,
                                episodes_per_update=1)
        other.reset(seed=5)
        for a in actions:
            other.step(a)
        other.reset(seed=0)
        for a in actions:
            _, reward, *_ = other.step(a)
        other.close()
        assert reward == first[0]
    finally:
        env.close()
