"""Benchmark records, the results file, validation, the leaderboard and W&B tracking
(benchmarks/records.py, runner.py, validate.py, leaderboard.py)."""

from __future__ import annotations

import copy
import csv
import io
import json
import uuid
import pathlib
import signal
import subprocess
import sys
import time
import warnings

import pytest
from conftest import SMALL_DIGITS_RECIPE, subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
from n2n_gym.bench import leaderboard, runner, validate
from n2n_gym.bench.records import (
    FLOP_CONVENTION,
    REQUIRED_FIELDS,
    append_record,
    json_safe,
    read_records,
    schema_errors,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
FIXTURE_RECORDS = FIXTURES / "bench-records.jsonl"
ENV_KWARGS = {"teacher_recipe": dict(SMALL_DIGITS_RECIPE)}


@pytest.fixture(scope="module")
def genuine(digits_teacher, tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """A results file with one real record (random search, 2 evaluations, tiny protocol)."""
    path = tmp_path_factory.mktemp("bench") / "results.jsonl"
    record = runner.run_one("N2N-DigitsNet-Digits-v0", "random", 3, 2, protocol="tiny", env_kwargs=ENV_KWARGS,
                            device="cpu", results=path)
    return path, record


# ---------------------------------------------------------------------------- records
def test_record_has_every_field_and_round_trips(genuine):
    path, record = genuine
    assert not schema_errors(record)
    assert set(REQUIRED_FIELDS) <= set(record)
    (back,) = read_records(path)
    assert back == json_safe(record)
    assert record["flop_convention"] == FLOP_CONVENTION == "2 FLOPs/MAC (FlopCounterMode)"
    assert record["env_version"] == 0 and record["package_version"]
    assert record["git_commit"]  # a commit, or "unknown" outside a checkout
    assert record["eval_seed"] == 3 and record["seed"] == 3 and record["protocol"] == "tiny"
    t = record["teacher"]
    assert len(t["sha256"]) == 64 and 0 < t["val_accuracy"] <= 1 and 0 < t["test_accuracy"] <= 1
    best = record["best"]
    for key in ("reward", "accuracy", "test_accuracy", "params", "flops", "compression", "actions", "architecture"):
        assert best[key] is not None
    assert best["replay"]["stage"] == "joint" and best["replay"]["start_architecture"] is None
    b = record["budget"]
    assert {"evaluations", "episodes", "env_steps", "wall_seconds", "device"} <= set(b)
    assert record["students"]["columns"][:3] == ["evaluation", "episode", "reward"]
    assert len(record["students"]["data"]) == 2


def test_append_is_one_line_per_record(tmp_path):
    path = tmp_path / "r.jsonl"
    for i in range(3):
        append_record(path, {"i": i, "x": float("nan"), "nested": {"t": (1, 2)}})
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3 and [json.loads(l)["i"] for l in lines] == [0, 1, 2]
    assert json.loads(lines[0])["x"] is None and json.loads(lines[0])["nested"]["t"] == [1, 2]


def test_a_cut_last_line_is_skipped_and_the_next_append_starts_a_new_line(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, {"i": 0})
    append_record(path, {"i": 1})
    full = json.dumps({"i": 2, "payload": "x" * 100}).encode()
    with open(path, "ab") as f:  # what a kill in the middle of a write leaves
        f.write(full[: len(full) // 2])
    with pytest.warns(UserWarning, match="not valid JSON"):
        assert [r["i"] for r in read_records(path)] == [0, 1]
    with pytest.raises(ValueError):
        read_records(path, strict=True)
    append_record(path, {"i": 3})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [r["i"] for r in read_records(path)] == [0, 1, 3]
    assert len(caught) == 1  # only the cut line


_WRITER = """
import sys, time
from n2n_gym.bench.records import append_record
i = 0
while True:
    append_record({path!r}, {{"i": i, "payload": "x" * 200000}})
    i += 1
"""


def test_a_killed_writer_leaves_valid_jsonl(tmp_path):
    path = tmp_path / "r.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(repo=str(REPO), path=str(path))],
                            env=subprocess_env())
    try:
        deadline = time.time() + 30
        while time.time() < deadline and (not path.exists() or path.stat().st_size < 1_000_000):
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lines = path.read_bytes().split(b"\n")
    complete, last = lines[:-1], lines[-1]
    assert len(complete) >= 2
    for n, line in enumerate(complete):
        assert json.loads(line)["i"] == n  # every complete line parses, in order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = read_records(path)
    assert len(records) == len(complete) + (1 if last and _parses(last) else 0)


def _parses(b: bytes) -> bool:
    try:
        json.loads(b)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------- validate
def test_validate_passes_a_genuine_record(genuine, capsys):
    path, _ = genuine
    assert validate.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PASS ") and "1 passed, 0 failed, 0 unverifiable" in out


def _tampered(record: dict, what: str) -> dict:
    r = copy.deepcopy(record)
    r["run_id"] = uuid.uuid4().hex  # another record, not a repeated one
    best = r["best"]
    if what == "reward":
        best["reward"] += 0.01
        r["curve"]["best_reward"][-1] = best["reward"]
        r["curve"]["best_reward"] = [min(v, best["reward"]) for v in r["curve"]["best_reward"]]
    elif what == "accuracy":
        best["accuracy"] += 0.01
    elif what == "actions":
        full = 9  # "keep at full width" on the joint stage's uniform ratio table
        best["actions"] = [full] * len(best["actions"])
        best["actions"][1] = 0 if record["best"]["actions"][1] != 0 else 4
    elif what == "architecture":
        arch = json.loads(best["architecture"])
        conv = next(l for l in arch["layers"] if l["kind"] == "conv" and l["out"] > 10)
        conv["out"] -= 1
        best["architecture"] = json.dumps(arch)
    elif what == "params":
        best["params"] -= 100
    elif what == "env":
        r["env_id"] = "N2N-Nope-v0"
    return r


@pytest.mark.parametrize("what", ["reward", "accuracy", "actions", "architecture", "params", "env"])
def test_validate_catches_a_tampered_record(genuine, tmp_path, capsys, what):
    _, record = genuine
    bad = tmp_path / "bad.jsonl"
    append_record(bad, record)  # a genuine one first: the file fails if any record fails
    append_record(bad, _tampered(record, what))
    assert validate.main([str(bad)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("PASS") and lines[1].startswith("FAIL")
    assert lines[-1] == "1 passed, 1 failed, 0 unverifiable"


def test_validate_fails_records_without_required_fields(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    append_record(bad, {"format": "n2n-gym-bench", "env_id": "N2N-DigitsNet-Digits-v0"})
    assert validate.main([str(bad)]) == 1
    assert "missing field" in capsys.readouterr().out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert validate.main([str(empty)]) == 2


# ---------------------------------------------------------------------------- runner CLI
def test_runner_cli_appends_and_skips_existing(digits_teacher, tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    argv = ["--agent", "random", "--seeds", "0", "1", "--budget", "2", "--protocol", "tiny", "--device", "cpu",
            "--env-kwargs", json.dumps(ENV_KWARGS), "--results", str(results), "--skip-existing"]
    assert runner.main(argv) == 0
    assert [r["seed"] for r in read_records(results)] == [0, 1]
    assert runner.main(argv) == 0
    assert len(read_records(results)) == 2
    assert "skipped" in capsys.readouterr().out
    assert runner.main(["--list-agents"]) == 0
    assert "maskable_ppo" in capsys.readouterr().out


def test_runner_rejects_protocol_in_env_kwargs():
    with pytest.raises(SystemExit):
        runner.run_one("N2N-DigitsNet-Digits-v0", "random", 0, 1, env_kwargs={"protocol": "tiny"})
    with pytest.raises(SystemExit):
        runner.main(["--agent", "nope", "--budget", "1"])


def test_wandb_is_imported_only_when_tracking():
    code = ("import sys, n2n_gym.bench.runner, n2n_gym.bench.leaderboard, "
            "n2n_gym.bench.validate, n2n_gym.agents.random_search, n2n_gym.agents.sb3_baselines; "
            "assert 'wandb' not in sys.modules, 'wandb imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env())


# ---------------------------------------------------------------------------- leaderboard
def test_fixture_records_are_valid_records():
    records = read_records(FIXTURE_RECORDS)
    assert len(records) >= 6 and all(not schema_errors(r) for r in records)
    assert len({r["agent"] for r in records}) >= 3


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


# ---------------------------------------------------------------------------- W&B
@pytest.mark.parametrize("agent", ["random", "ppo"])
def test_track_with_wandb_disabled(agent, digits_teacher, tmp_path, monkeypatch):
    import wandb  # noqa: F401  (in the dev install: a missing wandb is a failure, not a skip)

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    record = runner.run_one("N2N-DigitsNet-Digits-v0", agent, 0, 2, protocol="tiny", env_kwargs=ENV_KWARGS,
                            device="cpu", results=tmp_path / "r.jsonl", track=True, wandb_project="me/n2n-test",
                            wandb_dir=str(tmp_path))
    assert record["budget"]["evaluations"] == 2
    if agent == "ppo":
        assert record["extra"]["sb3_logging"] in ("tensorboard", "wandb-logger")
    assert read_records(tmp_path / "r.jsonl")[0]["run_id"] == record["run_id"]


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


def test_n2n_hparams_grid_labels_each_point_and_resumes(digits_teacher, tmp_path, capsys):
    from n2n_gym.benchmarks import n2n_hparams

    results = tmp_path / "grid.jsonl"
    argv = ["--budget", "2", "--seeds", "0", "--lrs", "0.03", "--baselines", "mean", "loo", "--protocol", "tiny",
            "--env-kwargs", json.dumps(ENV_KWARGS), "--results", str(results)]
    assert n2n_hparams.main(argv) == 0
    records = read_records(results)
    labels = sorted(r.get("label") or r["agent"] for r in records)
    assert labels == ["n2n [joint, loo, lr 0.03]", "n2n [joint, mean, lr 0.03]", "random"]
    loo = next(r for r in records if r.get("label") == "n2n [joint, loo, lr 0.03]")
    assert loo["hparams"]["baseline"] == "loo" and loo["hparams"]["lr_shrink"] == 0.03 and loo["stage"] == "joint"
    assert all(r["budget"]["evaluations"] == 2 for r in records)
    assert "n2n [joint, loo, lr 0.03]" in capsys.readouterr().out
    n2n_hparams.main(argv)  # every (label, seed) done: runs nothing
    assert len(read_records(results)) == 3


def test_validate_rerun_passes_a_genuine_record_and_catches_a_changed_seed_or_agent(genuine, tmp_path, capsys):
    path, record = genuine
    assert validate.main([str(path), "--rerun"]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out
    for field, value in (("seed", record["seed"] + 1), ("agent", "optuna_tpe")):
        changed = copy.deepcopy(record)
        changed["run_id"] = uuid.uuid4().hex
        changed[field] = value  # its best student still replays: only a re-run tells
        bad = tmp_path / f"{field}.jsonl"
        append_record(bad, changed)
        assert validate.main([str(bad)]) == 0, field
        capsys.readouterr()
        assert validate.main([str(bad), "--rerun"]) == 1, field
        assert "re-run:" in capsys.readouterr().out


def test_validate_rerun_refuses_hparams_that_name_files(genuine, tmp_path, capsys):
    from n2n_gym.bench.validate import untrusted_hparams

    assert untrusted_hparams({"load_policy": "policies.pt", "tensorboard_log": "runs/", "ratios": "paper",
                              "target_results": None, "x": "pkg.mod:fn"}) == [
        "hparams.load_policy names a file or code", "hparams.tensorboard_log names a file or code",
        "hparams.x = 'pkg.mod:fn' looks like a path or an import"]
    _, record = genuine
    changed = copy.deepcopy(record)
    changed["run_id"] = uuid.uuid4().hex
    changed["hparams"] = {"load_policy": str(tmp_path / "evil.pt")}
    bad = tmp_path / "hp.jsonl"
    append_record(bad, changed)
    assert validate.main([str(bad), "--rerun"]) == 1
    assert "re-run refused, nothing was run" in capsys.readouterr().out
