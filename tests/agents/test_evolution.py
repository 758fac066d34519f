"""n2n_gym.agents.evolution: aging evolution's mutation and population, through the benchmark runner
on the embedded digits env (tiny protocol, the small shared teacher recipe of conftest.py)."""

from __future__ import annotations

import numpy as np
from conftest import bench  # one runner call for every agent test

from n2n_gym.agents import evolution


def test_evolution_mutates_one_allowed_layer():
    rng = np.random.default_rng(0)
    choices = [np.array([9]), np.array([0, 3, 9]), np.array([1, 2]), np.array([5])]
    parent = [9, 3, 1, 5]
    for _ in range(50):
        child = evolution.mutate(parent, choices, rng)
        diff = [t for t in range(4) if child[t] != parent[t]]
        assert len(diff) == 1 and diff[0] in (1, 2) and child[diff[0]] in choices[diff[0]]


def test_aging_evolution_keeps_the_population_size(digits_teacher):
    record = bench("evolution", budget=6, hparams={"population": 3, "sample_size": 2})
    assert record["hparams"] == {"population": 3, "sample_size": 2}
    assert record["extra"]["cycles"] >= 3  # 3 random genomes, then children
