"""n2n_gym.agents.optuna_tpe: the TPE search through the benchmark runner, deterministic per seed."""

from __future__ import annotations

from conftest import bench  # one runner call for every agent test


def test_tpe_is_deterministic_per_seed(digits_teacher):
    a, b = bench("optuna_tpe", budget=3, seed=4), bench("optuna_tpe", budget=3, seed=4)
    assert [r[-1] for r in a["students"]["data"]] == [r[-1] for r in b["students"]["data"]]
