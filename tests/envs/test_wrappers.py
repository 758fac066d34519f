"""n2n_gym.envs.wrappers: evaluations are counted where they happen (the env), so an agent cannot
spend more than its record says by calling ``env.unwrapped.evaluate_many`` inside
``BudgetWrapper``; a wrapped batch spends the budget like episodes."""

from __future__ import annotations

import copy
import os
import pathlib

import gymnasium as gym
import numpy as np
import pytest
from conftest import BENCH_ENV_KWARGS, make_digits_env

from n2n_gym.bench import runner, validate
from n2n_gym.bench.records import append_record, record_errors
from n2n_gym.envs.wrappers import BudgetTracker, BudgetWrapper, private_cache

ENV_KWARGS = BENCH_ENV_KWARGS


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


ENV_ID = "N2N-DigitsNet-Digits-v0"


# ---------------------------------------------------------------------------- the result cache
def _play(env, actions) -> dict:
    """The terminal info of one episode of ``actions``."""
    env.reset()
    return [env.step(a) for a in actions][-1][-1]


# ---------------------------------------------------------------------------- budgets
def _bypass(how: str, env, kwargs: dict, actions: list[int]) -> None:
    """Train the student of ``actions`` behind the budget's back, the way ``how`` names."""
    u = env.unwrapped
    if how == "evaluator":
        u.evaluator.evaluate(u.student_architecture(actions), u.protocol, u.eval_seed)
    elif how == "student_test_accuracy":
        u.student_test_accuracy(actions)
    else:
        other = copy.deepcopy(env) if how == "deepcopy" else gym.make(ENV_ID, **kwargs)  # (the run's cache)
        try:
            _play(other, actions)
        finally:
            other.close()


def _bypassing_agent(how: str):
    from n2n_gym.envs.wrappers import BudgetWrapper, private_cache

    def run(env_id, seed, budget, env_kwargs, hparams, *, tracker, wandb_run=None):
        with private_cache(env_kwargs) as kwargs:
            env = BudgetWrapper(gym.make(env_id, **kwargs), tracker)
            try:
                _, info = env.reset(seed=seed)
                allowed = [np.flatnonzero(m) for m in info["layer_masks"]]
                first, second = ([int(a[i % len(a)]) for a in allowed] for i in (0, 1))
                _play(env, first)  # by the rules: one evaluation
                _bypass(how, env, kwargs, second)  # a training the budget does not see...
                _play(env, second)  # ...so this is a cache hit
            finally:
                env.close()
        return {"hparams": {}, "tracker": tracker}

    return run


@pytest.mark.parametrize("how", ["evaluator", "second-env", "deepcopy", "student_test_accuracy"])
def test_a_student_trained_outside_the_budget_shows_in_the_record_and_fails_it(digits_teacher, how, tmp_path,
                                                                               capsys):
    """Issue 21 (remaining 1): students trained through env.unwrapped.evaluator, a second env on
    the run's private cache, copy.deepcopy(env) and student_test_accuracy were not counted, and
    validate passed the record. Trainings are counted where they happen (the evaluator)."""
    runner.register_agent("bypass", _bypassing_agent(how), "trains a student behind the budget's back")
    try:
        record = runner.run_one(ENV_ID, "bypass", 0, 5, protocol="tiny", env_kwargs=ENV_KWARGS, device="cpu")
    finally:
        runner.AGENTS.pop("bypass")
        runner._LOADED.pop("bypass", None)
    assert record["budget"]["evaluations"] == 1 and record["budget"]["trainings"] == 2
    path = tmp_path / "r.jsonl"
    append_record(path, record)
    assert validate.main([str(path)]) == 1
    assert "students were trained outside the budget" in capsys.readouterr().out


def test_a_killed_runs_private_cache_folder_goes_at_the_next_run(tmp_path, monkeypatch):
    """kill -9 of a bench run left its /tmp/n2n-bench-* folder forever: the next run removes
    those of dead processes (the folder names its pid), never a live one's."""
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = tmp_path / f"n2n-bench-{proc.pid}-abc"
    live = tmp_path / f"n2n-bench-{os.getppid()}-def"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "results.sqlite").write_text("x")
    with private_cache({}) as kwargs:
        assert pathlib.Path(kwargs["cache"]).parent.name.startswith(f"n2n-bench-{os.getpid()}-")
    assert not dead.exists() and live.exists()
