"""n2n_gym.agents.random_search: its run function on its own, without the benchmark runner."""

from __future__ import annotations

from conftest import BENCH_ENV_KWARGS

from n2n_gym.bench.records import BudgetTracker

ENV_KWARGS = BENCH_ENV_KWARGS


def test_agent_run_function_works_without_the_runner(digits_teacher):
    from n2n_gym.agents import random_search

    out = random_search.run("N2N-DigitsNet-Digits-v0", seed=1, budget=2,
                            env_kwargs={**ENV_KWARGS, "protocol": "tiny", "progress": False, "device": "cpu"})
    tracker = out["tracker"]
    assert isinstance(tracker, BudgetTracker) and tracker.evaluations == 2 and tracker.best["valid"]
