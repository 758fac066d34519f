"""n2n_gym.agents.magnitude_pruning: the target size, replay and uniform ratio, through the benchmark
runner on the embedded digits env (tiny protocol, the small shared teacher recipe of conftest.py)."""

from __future__ import annotations

import pytest
from conftest import bench  # one runner call for every agent test

from n2n_gym.agents import magnitude_pruning
from n2n_gym.bench import validate


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


def test_a_target_from_results_below_every_uniform_student_prunes_to_the_narrowest(digits_teacher, tmp_path, capsys):
    """N2N removes layers, so its best student can be smaller than any uniformly pruned one
    (ResNet-20 v1, seed 7: 16,512 params against 17,200): the bench crashed with a traceback."""
    from n2n_gym.bench.records import append_record

    record = bench("random", budget=1, seed=0)
    record["best"]["params"] = 10  # as if the other agent had found a tiny student
    target_file = tmp_path / "target.jsonl"
    append_record(target_file, record)
    out = bench("magnitude", budget=1, seed=0, hparams={"target_results": str(target_file), "target_agent": "random"})
    extra = out.get("extra", out)
    assert extra["target_clipped"] and extra["student_params"] > 10 and out["best"]["params"] > 10
    assert "below the narrowest uniform student" in capsys.readouterr().err


def test_a_record_names_its_target_file_relative_to_the_run_folder(tmp_path, monkeypatch):
    """A record named the absolute path of one machine (e.g. <checkout>/benchmarks/...) when the file was given absolute."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    assert magnitude_pruning._relative(str(tmp_path / "results" / "r.jsonl")) == "results/r.jsonl"
    assert magnitude_pruning._relative("/elsewhere/r.jsonl") == "/elsewhere/r.jsonl"
