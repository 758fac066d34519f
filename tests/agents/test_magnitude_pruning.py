"""The search baselines of issue 15 (agents/optuna_tpe.py, agents/evolution.py,
agents/magnitude_pruning.py) through the benchmark runner, on the embedded digits env
with the tiny protocol and the small shared teacher recipe of conftest.py."""

from __future__ import annotations

import numpy as np
import pytest
from test_baselines import ENV_KWARGS, bench  # one runner call for every agent test

from n2n_gym.agents import evolution, magnitude_pruning
from n2n_gym.bench import validate
from n2n_gym.bench.records import read_records

SEARCHERS = ("optuna_tpe", "evolution")


@pytest.mark.parametrize("agent", SEARCHERS)
def test_searchers_spend_exactly_their_budget_and_never_take_a_forbidden_action(agent, digits_teacher, tmp_path):
    # illegal_action="invalid": one forbidden action would make a student invalid
    results = tmp_path / "r.jsonl"
    record = bench(agent, budget=4, results=results, env_kwargs={**ENV_KWARGS, "illegal_action": "invalid"})
    b = record["budget"]
    assert b["evaluations"] == 4 and b["stop_reason"] == "budget" and b["invalid_episodes"] == 0
    assert record["curve"]["best_reward"][-1] == pytest.approx(record["best"]["reward"])
    assert len(record["best"]["actions"]) == 9 and record["stage"] == "joint"
    assert read_records(results) == [record]


@pytest.mark.parametrize("agent,stage", [("optuna_tpe", "remove"), ("evolution", "shrink")])
def test_searchers_run_on_any_stage(agent, stage, digits_teacher):
    record = bench(agent, budget=2, stage=stage)
    assert record["best"]["replay"]["stage"] == stage and record["budget"]["evaluations"] == 2


def test_tpe_is_deterministic_per_seed(digits_teacher):
    a, b = bench("optuna_tpe", budget=3, seed=4), bench("optuna_tpe", budget=3, seed=4)
    assert [r[-1] for r in a["students"]["data"]] == [r[-1] for r in b["students"]["data"]]


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


# ---------------------------------------------------------------------------- magnitude pruning
def test_magnitude_pruning_hits_the_target_from_below_and_replays(digits_teacher, tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    record = bench("magnitude", budget=5, hparams={"target_compression": 4.0}, results=results)
    extra, best = record["extra"], record["best"]
    assert record["budget"]["evaluations"] == 1 and record["budget"]["stop_reason"] == "agent_finished"
    assert best["params"] == extra["student_params"] <= extra["target_params"] == extra["teacher_params"] // 4
    assert best["compression"] >= 4.0 and record["stage"] == "shrink"
    assert best["replay"]["ratios"] == [pytest.approx(extra["ratio"]), 1.0]
    assert set(best["actions"]) == {0, 1}  # ratio r or full width, nothing removed
    assert validate.main([str(results)]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out


def test_magnitude_pruning_targets_the_same_seed_of_another_agent(digits_teacher, tmp_path):
    results = tmp_path / "r.jsonl"
    rl = bench("random", budget=2, seed=1, results=results)
    other = tmp_path / "other.jsonl"
    other.write_text("")
    record = bench("magnitude", budget=1, seed=1,
                   hparams={"target_results": [str(other), str(results)], "target_agent": "random"})
    assert record["extra"]["target_params"] == rl["best"]["params"] >= record["best"]["params"]
    with pytest.raises(ValueError, match="no record of agent 'random'.*seed 2"):
        bench("magnitude", budget=1, seed=2, hparams={"target_results": str(results), "target_agent": "random"})
    with pytest.raises(ValueError, match="is not a file"):
        bench("magnitude", budget=1, seed=1, hparams={"target_results": str(tmp_path / "missing.jsonl")})


@pytest.mark.parametrize("hparams,match", [({}, "exactly one"), ({"target_params": 10}, "below the narrowest"),
                                           ({"target_compression": 0.5}, "> 1"), ({"ratio": 0.5}, "unknown")])
def test_magnitude_pruning_rejects_bad_targets(hparams, match, digits_teacher):
    with pytest.raises(ValueError, match=match):
        bench("magnitude", budget=1, hparams=hparams)


def test_uniform_ratio_is_the_largest_that_fits(digits_teacher):
    from conftest import make_digits_env

    env = make_digits_env(stage="shrink")
    _, info = env.reset()
    start = env.unwrapped.start_architecture
    shrinkable = [bool(row.sum() > 1) for row in info["layer_masks"]]
    target = start.params // 3
    r, params = magnitude_pruning.uniform_ratio(start, target)
    from n2n_gym.ir.edits import apply_decisions

    wider = apply_decisions(start, [min(1.0, r + 1e-3) if s else 1.0 for s in shrinkable]).params
    assert params <= target < wider
    # the env's masks and the IR's layer rules agree on what shrinks
    from n2n_gym.ir.edits import layer_rules

    assert shrinkable == [rule.shrinkable for rule in layer_rules(start)]
    with pytest.raises(ValueError, match="narrowest uniform student"):
        magnitude_pruning.uniform_ratio(start, 10)
