"""The leaderboard's statistics (benchmarks/leaderboard.py, rliable): interquartile means
with stratified-bootstrap intervals, probability of improvement over random search,
ranks only where intervals separate, the anytime AUC, performance profiles; seeded."""

from __future__ import annotations

import copy
import pathlib

import numpy as np
import pytest
from scipy import stats

from n2n_gym.bench import leaderboard
from n2n_gym.bench.records import read_records

FIXTURE_RECORDS = pathlib.Path(__file__).parent / "fixtures" / "bench-records.jsonl"
REPS = 500  # enough for the properties tested, fast on 2 cores


def test_anytime_auc_is_the_mean_best_so_far_over_the_budget():
    r = {"curve": {"best_reward": [0.5, 0.7, 0.9]}, "budget": {"requested": 5}}
    assert leaderboard.anytime_auc(r) == pytest.approx((0.5 + 0.7 + 0.9 * 3) / 5)
    # one evaluation of a requested 200 (the no-search baseline): its reward
    assert leaderboard.anytime_auc({"curve": {"best_reward": [0.8]}, "budget": {"requested": 200}}) == pytest.approx(0.8)
    assert leaderboard.anytime_auc({"curve": {"best_reward": [0.2, 0.4]}, "budget": {}}) == pytest.approx(0.3)
    assert leaderboard.anytime_auc({"curve": {"best_reward": []}}) is None


def test_iqm_intervals_are_rliable_iqm_seeded_and_leave_numpy_alone():
    rng = np.random.default_rng(0)
    scores = {"a": list(rng.normal(0.9, 0.02, 10)), "b": list(rng.normal(0.8, 0.05, 7))}
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = leaderboard.iqm_intervals(scores, reps=REPS, seed=3)
    assert (np.random.get_state()[1] == before).all()  # the global generator is restored
    assert first == leaderboard.iqm_intervals(scores, reps=REPS, seed=3)  # deterministic
    for k, (point, low, high) in first.items():
        assert point == pytest.approx(stats.trim_mean(scores[k], 0.25))
        assert low <= point <= high and low < high


def test_probability_of_improvement_over_random_search():
    scores = {"random": [0.1, 0.2, 0.3], "better": [0.4, 0.5, 0.6], "same": [0.1, 0.2, 0.3]}
    out = leaderboard.improvement_intervals(scores, reps=REPS)
    assert "random" not in out
    assert out["better"] == pytest.approx((1.0, 1.0, 1.0))
    assert out["same"][0] == pytest.approx(0.5) and out["same"][1] < 0.5 < out["same"][2]
    assert leaderboard.improvement_intervals({"x": [1.0]}, reps=REPS) == {}  # no random search: no column


def test_ranks_only_where_intervals_separate():
    ranks = leaderboard.separated_ranks({"a": (0.9, 0.88, 0.92), "b": (0.85, 0.84, 0.86), "c": (0.9, 0.86, 0.93)})
    assert ranks == {"a": (1, True), "c": (1, True), "b": (2, False)}


def _variant(records, agent, label, rewards):
    base = [r for r in records if r["agent"] == agent][0]
    out = []
    for seed, reward in enumerate(rewards):
        r = copy.deepcopy(base)
        r.update(label=label, seed=seed, run_id=f"{label}-{seed}")
        r["best"]["reward"] = reward
        r["curve"]["best_reward"] = [reward]
        out.append(r)
    return out


def test_leaderboard_ranks_ties_and_renders_deterministically(tmp_path):
    records = read_records(FIXTURE_RECORDS)
    rng = np.random.default_rng(1)
    synthetic = (_variant(records, "random", "random", list(0.90 + 0.01 * rng.standard_normal(10)))
                 + _variant(records, "random", "good", list(0.95 + 0.01 * rng.standard_normal(10)))
                 + _variant(records, "random", "same", list(0.90 + 0.01 * rng.standard_normal(10))))
    for r in synthetic:
        r["agent"] = r["label"]
        r.pop("label")
    (sec,) = leaderboard.leaderboard(synthetic, reps=REPS)
    rows = {row["agent"]: row for row in sec["rows"]}
    assert [row["agent"] for row in sec["rows"]][0] == "good"
    assert (rows["good"]["rank"], rows["good"]["tied"]) == (1, False)
    assert rows["random"]["rank"] == rows["same"]["rank"] == 2 and rows["random"]["tied"] and rows["same"]["tied"]
    assert rows["good"]["p_improvement"] == pytest.approx(1.0) and rows["random"]["p_improvement"] is None
    assert rows["good"]["auc_iqm"] == pytest.approx(rows["good"]["best_reward_iqm"])  # one evaluation each
    md = leaderboard.render_md([sec])
    assert "| 2 (tied) | random |" in md and "| 1 | good |" in md and "[95% CI]" in md
    (again,) = leaderboard.leaderboard(synthetic, reps=REPS)
    assert leaderboard.render_md([again]) == md
    leaderboard.plot_profile(sec, tmp_path / "p.png", reps=REPS)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_at_evaluations_scores_each_run_by_its_first_n_students(tmp_path):
    # real records of the digits baselines (50 evaluations each, n2n and magnitude among them)
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "results" / "baselines-digits-50.jsonl"
    records = read_records(path)
    for r in records:
        cut = leaderboard.at_evaluations(r, 10)
        rows = r["students"]["data"]
        if len(rows) <= 10:  # magnitude: one evaluation, kept whole
            assert cut is r
            continue
        assert cut["best"]["reward"] == r["curve"]["best_reward"][9] == max(row[2] for row in rows[:10])
        assert cut["best"]["reward"] <= r["best"]["reward"] and cut["budget"]["evaluations"] == 10
        assert cut["budget"]["wall_seconds"] is None  # not known at evaluation 10
        assert leaderboard.anytime_auc(cut) == pytest.approx(sum(r["curve"]["best_reward"][:10]) / 10)
        assert r["best"]["reward"] == r["curve"]["best_reward"][-1]  # the original is untouched
    (sec,) = leaderboard.leaderboard([leaderboard.at_evaluations(r, 10) for r in records], reps=REPS)
    assert "first 10 evaluations" in leaderboard.section_note(sec)
    with pytest.raises(ValueError, match="must be >= 1"):
        leaderboard.at_evaluations(records[0], 0)
    with pytest.raises(SystemExit) as exc:  # argparse's usage error (exit 2), before any record is read
        leaderboard.main([str(path), "--at-evaluations", "0", "--no-plots"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:  # too few bootstrap resamples for an interval
        leaderboard.main([str(path), "--reps", "1", "--no-plots"])
    assert exc.value.code == 2
    (one,) = leaderboard.leaderboard([leaderboard.at_evaluations(r, 1) for r in records], reps=REPS)
    assert "first 1 evaluation**" in leaderboard.section_note(one)


def test_one_seed_per_agent_gets_no_interval_no_p_and_no_rank_and_says_so(tmp_path, capsys):
    """Issue 21, kind 6: with one seed per agent the table printed zero-width intervals and
    P(> random) = 1.00 [1.00, 1.00] as if they meant something."""
    from n2n_gym.bench.records import append_record

    records = read_records(FIXTURE_RECORDS)
    one_each = {}
    for r in records:
        one_each.setdefault((r["env_id"], r["protocol"], r.get("label") or r["agent"]), r)
    path = tmp_path / "one.jsonl"
    for r in one_each.values():
        append_record(path, r)
    assert leaderboard.main([str(path), "--reps", "100"]) == 0
    out, err = capsys.readouterr()
    assert "[1.00, 1.00]" not in out and "(1 seed, no interval)" in out and "- (1 seed)" in out
    assert "one seed only, so no interval, no P(> random) and no rank" in out
    assert "has one seed: shown without an interval" in err
    sec = leaderboard.leaderboard(list(one_each.values()), reps=100)[0]
    for row in sec["rows"]:
        assert row["rank"] is None and row["best_reward_ci_low"] is None and row["p_improvement"] is None
    # with two seeds or more an agent is ranked as before
    assert leaderboard.iqm_intervals({"a": [0.1, 0.3]}, reps=100)["a"][1] is not None
