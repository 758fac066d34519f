"""n2n_gym.bench.leaderboard: the statistics (rliable): interquartile means with
stratified-bootstrap intervals, probability of improvement over random search, ranks only
where intervals separate, the anytime AUC, performance profiles (seeded); the rendered tables
and plots, W&B projects as a source, and the records it skips."""

from __future__ import annotations

import copy
import csv
import io
import json
import pathlib
import sys
import uuid

import numpy as np
import pytest
from conftest import BENCH_ENV_KWARGS, copy_record
from scipy import stats

from n2n_gym.bench import leaderboard, runner
from n2n_gym.bench.records import (
    FLOP_CONVENTION,
    append_record,
    read_records,
)

FIXTURE_RECORDS = pathlib.Path(__file__).parents[1] / "fixtures" / "bench-records.jsonl"


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
    path = pathlib.Path(__file__).parents[2] / "benchmarks" / "results" / "baselines-digits-50.jsonl"
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


FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"


def test_leaderboard_ranks_by_separated_intervals():
    records = read_records(FIXTURE_RECORDS)
    (sec,) = leaderboard.leaderboard(records, reps=500)
    rows = sec["rows"]
    assert [r["rank"] for r in rows] == sorted(r["rank"] for r in rows) and rows[0]["rank"] == 1
    for row in rows:  # rank = 1 + the agents whose interval lies entirely above
        above = [o for o in rows if o["best_reward_ci_low"] > row["best_reward_ci_high"]]
        assert row["rank"] == 1 + len(above)
    by_agent = {}
    for r in records:
        by_agent.setdefault(r["agent"], []).append(r["best"]["reward"])
    for row in rows:
        rewards = by_agent[row["agent"]]
        assert row["best_reward_mean"] == pytest.approx(sum(rewards) / len(rewards))
        assert row["seeds"] == len(rewards)
    r0 = records[0]
    drop = r0["teacher"]["test_accuracy"] - r0["best"]["test_accuracy"]
    assert leaderboard.accuracy_drop(r0, "test") == pytest.approx(drop)


def test_a_labelled_variant_gets_its_own_leaderboard_row():
    records = read_records(FIXTURE_RECORDS)
    agent = records[0]["agent"]
    variant = [{**copy.deepcopy(r), "label": f"{agent} tuned"} for r in records if r["agent"] == agent]
    for r in variant:
        r["best"]["reward"] = 2.0
    (sec,) = leaderboard.leaderboard(records + variant, reps=500)
    labels = [row["agent"] for row in sec["rows"]]
    assert labels[0] == f"{agent} tuned" and agent in labels
    assert sec["rows"][0]["seeds"] == len(variant)
    assert runner._key(variant[0]) != runner._key(records[0])  # --skip-existing tells them apart


def test_window_means_of_the_learning_plot():
    assert leaderboard.window_means([1.0, 2.0, 3.0, 4.0, 5.0], 2) == [1.5, 3.5, 5.0]
    assert leaderboard.window_means([], 5) == []


@pytest.mark.parametrize("fmt", ["md", "csv", "html"])
def test_leaderboard_renders_tables_and_plots(tmp_path, fmt, capsys):
    out = tmp_path / "lb"
    assert leaderboard.main([str(FIXTURE_RECORDS), "--format", fmt, "--out", str(out), "--reps", "500"]) == 0
    table = (out / f"leaderboard.{fmt}").read_text()
    pngs = sorted(out.glob("*.png"))
    assert [p.name.split("-")[0] for p in pngs] == ["anytime", "learning", "pareto", "profile"]
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    agents = {r["agent"] for r in read_records(FIXTURE_RECORDS)}
    assert all(a in table for a in agents)
    if fmt == "md":
        assert "| rank | agent |" in table and "±" in table and f"({pngs[0].name})" in table
        assert FLOP_CONVENTION in table
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(table)))
        assert {r["agent"] for r in rows} == agents and rows[0]["rank"] == "1"
        assert float(rows[0]["best_reward_iqm"]) >= float(rows[-1]["best_reward_iqm"])
    else:
        assert table.startswith("<!DOCTYPE html>") and "<table>" in table and "<img" in table
    # without --out: the table on stdout
    capsys.readouterr()
    assert leaderboard.main([str(FIXTURE_RECORDS), "--format", fmt, "--reps", "500"]) == 0
    printed = capsys.readouterr().out
    assert all(a in printed for a in agents)


def test_leaderboard_skips_a_cut_line(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_bytes(FIXTURE_RECORDS.read_bytes() + b'{"format": "n2n-gym-bench", "env_id": "N2N-Di')
    assert leaderboard.main([str(path), "--reps", "500"]) == 0
    n = len(FIXTURE_RECORDS.read_bytes().splitlines()) + 1
    assert f"skipped {path}#{n}: not valid JSON" in capsys.readouterr().err


def test_pareto_front():
    pts = [(10, 0.5), (20, 0.4), (20, 0.7), (30, 0.6), (40, 0.9), (5, 0.1)]
    assert leaderboard.pareto_front(pts) == [(5, 0.1), (10, 0.5), (20, 0.7), (40, 0.9)]


def test_leaderboard_reads_a_wandb_project(monkeypatch, capsys):
    import types

    records = read_records(FIXTURE_RECORDS)

    class FakeRun:
        def __init__(self, record):
            self.summary = {"n2n_record": json.dumps({k: v for k, v in record.items() if k != "students"})}
            self.path = ["me", "n2n", record["run_id"][:8]]

    class FakeApi:
        def runs(self, path):
            assert path == "me/n2n"
            return [FakeRun(r) for r in records] + [types.SimpleNamespace(summary={}, path=["me", "n2n", "x"])]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=FakeApi))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    loaded = leaderboard.load([], wandb_project="me/n2n")
    assert [r["run_id"] for r in loaded] == [r["run_id"] for r in records]
    assert loaded[0]["source"].startswith("wandb:me/n2n/")
    # local records and the same runs on W&B are counted once
    assert len(leaderboard.load([FIXTURE_RECORDS], wandb_project="me/n2n")) == len(records)
    assert leaderboard.main(["--wandb-project", "me/n2n"]) == 0
    assert "maskable_ppo" in capsys.readouterr().out


def _fixture_record() -> dict:
    return json.loads(FIXTURE_RECORDS.read_text().splitlines()[0])


def _write(path: pathlib.Path, *records: dict, raw: str = "") -> pathlib.Path:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write(raw)
    return path


def test_leaderboard_skips_and_lists_records_with_nan_or_failing_schema(tmp_path, capsys):
    from n2n_gym.bench import leaderboard

    good = _fixture_record()
    nan = copy.deepcopy(good)
    nan["run_id"], nan["best"]["reward"] = uuid.uuid4().hex, float("nan")
    broken = {"format": "n2n-gym-bench", "run_id": uuid.uuid4().hex}
    path = _write(tmp_path / "r.jsonl", good, nan, broken, raw='{"cut')
    assert leaderboard.main([str(path), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert good["agent"] in captured.out
    assert f"skipped {path}#2: non-finite value(s) at best.reward" in captured.err
    assert f"skipped {path}#3: missing field" in captured.err
    assert f"skipped {path}#4: not valid JSON" in captured.err
    assert "skipped 3 record(s)" in captured.err


ENV_ID = "N2N-DigitsNet-Digits-v0"


ENV_KWARGS = BENCH_ENV_KWARGS


# ---------------------------------------------------------------------------- results files


# ---------------------------------------------------------------------------- the leaderboard
def test_a_copied_run_counts_once_on_the_leaderboard(genuine_record, tmp_path, capsys):
    """Issue 21 (remaining 9): the same record twice, or under a new run id in another file,
    counted as one more seed."""
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    append_record(first, genuine_record)
    append_record(first, genuine_record)  # the same line twice
    append_record(second, copy_record(genuine_record))  # the same run under a new run id, in another file
    records = leaderboard.load([first, second])
    assert len(records) == 1
    other_seed = runner.run_one(ENV_ID, "random", 1, 2, protocol="tiny", env_kwargs=ENV_KWARGS, device="cpu")
    append_record(second, other_seed)
    assert len(leaderboard.load([first, second])) == 2  # a real second seed still counts
    assert leaderboard.main([str(first), str(second), "--reps", "100"]) == 0
    assert capsys.readouterr().err.count("a copy of the run") == 2


def test_a_copied_run_under_another_seed_counts_once_and_is_listed_as_skipped(genuine_record, tmp_path, capsys):
    """One run copied with its seed and run id edited: identical students table and curve are one
    run (two seeds of a search never train the same students), not a second seed."""
    path = tmp_path / "twoseeds.jsonl"
    append_record(path, genuine_record)
    append_record(path, copy_record(genuine_record, seed=genuine_record["seed"] + 1))
    skipped: list = []
    assert len(leaderboard.load([path], skipped=skipped)) == 1
    assert len(skipped) == 1 and "only the seed changed" in skipped[0][1] and "counted once" in skipped[0][1]
    assert leaderboard.main([str(path), "--reps", "100"]) == 0
    assert "only the seed changed" in capsys.readouterr().err
    (sec,) = leaderboard.leaderboard(leaderboard.load([path]), reps=100)
    assert [row["seeds"] for row in sec["rows"]] == [1]


@pytest.mark.parametrize("name", ["\x1b[2J\x1b[31mrandom\x1b[0m", "ran\u202edom", "a | b", "x\x07\x00y"])
def test_what_a_record_names_reaches_no_terminal_or_table_raw_and_unknown_agents_are_not_ranked(
        genuine_record, tmp_path, capsys, name):
    """Issue 21 (remaining 10): ANSI escapes, RTL marks and '|' in agent names reached the terminal
    and the Markdown table; an agent the registry does not know was ranked as if known."""
    path = tmp_path / "r.jsonl"
    for seed in (0, 1):
        append_record(path, copy_record(genuine_record, agent=name, seed=seed, label=None))
        append_record(path, copy_record(genuine_record, seed=seed, best__reward=genuine_record["best"]["reward"]))
    assert leaderboard.main([str(path), "--reps", "100"]) == 0
    out, err = capsys.readouterr()
    for text in (out, err):
        assert not any(c in text for c in "\x1b\u202e\x07\x00")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "unregistered" in line]
    assert len(rows) == 1 and rows[0].startswith("| - (unregistered) |")
    assert rows[0].count(" | ") == out.splitlines()[[l.startswith("| rank") for l in out.splitlines()].index(True)] \
        .count(" | ")  # a '|' in the name does not add a column


@pytest.mark.parametrize("field", ["protocol", "env_id", "agent", "stage"])
def test_a_record_field_of_the_wrong_type_is_shown_not_a_crash(genuine_record, tmp_path, capsys, field):
    """A record whose protocol (or id, agent, stage) is an object, not a name, crashed the command
    ("unhashable type: 'dict'")."""
    path = tmp_path / "r.jsonl"
    for seed in (0, 1):
        append_record(path, copy_record(genuine_record, seed=seed, **{field: {"name": "x"}}))
    # shown, or skipped as failing the record checks (2: nothing left to rank); never an exception
    assert leaderboard.main([str(path), "--reps", "100"]) in (0, 2)
    assert "unhashable" not in capsys.readouterr().err


def test_a_calibrated_protocols_section_says_its_accuracies_are_estimates(genuine_record):
    rows = [copy_record(genuine_record, seed=s, protocol=p) for s in (0, 1) for p in ("resnet20-v1", "fast")]
    texts = {sec["protocol"]: leaderboard.render_md([sec]) for sec in leaderboard.leaderboard(rows, reps=100)}
    assert "is calibrated" in texts["resnet20-v1"] and "is calibrated" not in texts["fast"]


def test_runs_under_another_setting_or_teacher_are_another_section(genuine_record, tmp_path):
    """Constraints, a penalty or another teacher change what a reward means: such runs were pooled
    in one row (bug hunt). They get sections of their own, named in the title, with their own plot
    files; where a run ran (device, cache, progress) and its stage (part of the label) do not split."""
    base = dict(genuine_record["env_kwargs"])
    constrained = {**base, "constraints": {"min_accuracy": 0.9}, "penalty": "violation"}
    other_sha = "f" * 64
    rows = [copy_record(genuine_record, seed=s, env_kwargs=kw) for s in (0, 1)
            for kw in (base, {**base, "device": "cpu", "progress": False}, constrained)]
    rows += [copy_record(genuine_record, seed=s, teacher__sha256=other_sha) for s in (0, 1)]
    sections = leaderboard.leaderboard(rows, reps=100)
    assert len(sections) == 3
    by_setting = {(sec["setting"], sec["teacher"]["sha256"]): sec for sec in sections}
    plain = by_setting[leaderboard.setting(genuine_record), genuine_record["teacher"]["sha256"]]
    assert plain["rows"][0]["seeds"] == 4  # the device/progress copies count with the plain runs
    assert by_setting[leaderboard.setting(rows[2]), genuine_record["teacher"]["sha256"]]["rows"][0]["seeds"] == 2
    assert by_setting[leaderboard.setting(genuine_record), other_sha]["rows"][0]["seeds"] == 2
    text = leaderboard.render_md(sections)
    assert '"penalty": "violation"' in text and f"teacher {other_sha[:12]}" in text
    assert len({leaderboard.plot_names(sec) for sec in sections}) == 3
    csv_rows = list(csv.DictReader(io.StringIO(leaderboard.render_csv(sections))))
    assert len({(r["env_kwargs"], r["teacher_sha256"]) for r in csv_rows}) == 3
