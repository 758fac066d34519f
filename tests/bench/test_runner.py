"""n2n_gym.bench.runner: every agent through the runner (budgets spent exactly, masks respected, any
stage, cache hits), its command line, hparam grids, W&B tracking, registered agents, and the
checks of every output location before the first evaluation.

Every agent runs a budget of 2 evaluations on the embedded digits env with the tiny
protocol and the small shared teacher recipe of conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import BENCH_ENV_KWARGS, SMALL_DIGITS_RECIPE, bench, subprocess_env

from n2n_gym.bench import runner
from n2n_gym.bench.records import (
    fallback_records_path,
    read_records,
    results_file_problem,
)

ENV_KWARGS = BENCH_ENV_KWARGS


SB3_AGENTS = ("ppo", "a2c", "dqn", "maskable_ppo", "recurrent_ppo")


def _n2n_available() -> bool:
    try:
        import n2n_gym.agents.n2n  # noqa: F401
    except ImportError:
        return False
    return True


ALL_AGENTS = ["random", *SB3_AGENTS] + (["n2n"] if _n2n_available() else [])


@pytest.mark.parametrize("agent", ALL_AGENTS)
def test_every_agent_spends_exactly_its_budget(agent, digits_teacher, tmp_path):
    results = tmp_path / "r.jsonl"
    record = bench(agent, budget=2, results=results)
    b = record["budget"]
    assert b["evaluations"] == 2 and b["stop_reason"] == "budget"
    assert b["episodes"] >= 2 and b["env_steps"] >= 2 * 9
    assert len(record["curve"]["best_reward"]) == 2
    assert record["curve"]["best_reward"][-1] == pytest.approx(record["best"]["reward"])
    assert record["best"]["architecture"] and len(record["best"]["actions"]) == 9
    assert record["teacher"]["sha256"] == digits_teacher.sha256
    assert record["env_kwargs"] == ENV_KWARGS  # replayable: the small recipe, no runtime-only kwargs
    assert read_records(results) == [record]
    if agent == "n2n":  # why a stage ended early, when it did: {} here (the budget ended the run)
        assert record["extra"]["exhausted"] == {} and set(record["extra"]["lrs"]) <= {"remove", "shrink"}


@pytest.mark.parametrize("agent", ["random", "maskable_ppo"])
def test_masked_agents_never_take_a_forbidden_action(agent, digits_teacher):
    # with illegal_action="invalid", one forbidden action would make the student invalid
    record = bench(agent, budget=3, env_kwargs={**ENV_KWARGS, "illegal_action": "invalid"})
    assert record["budget"]["invalid_episodes"] == 0


@pytest.mark.parametrize("agent,stage", [("random", "remove"), ("ppo", "shrink"), ("dqn", "remove")])
def test_agents_run_on_any_stage(agent, stage, digits_teacher):
    record = bench(agent, budget=2, stage=stage)
    assert record["stage"] == stage and record["best"]["replay"]["stage"] == stage
    assert record["budget"]["evaluations"] == 2


def test_cache_hits_do_not_count_and_max_episodes_stops_a_stuck_agent(digits_teacher):
    # the remove stage of the digits net has few distinct students: a long budget cannot be
    # spent, and the run stops at max_episodes instead of looping forever
    record = bench("random", budget=1000, stage="remove", max_episodes=40)
    b = record["budget"]
    assert b["stop_reason"] == "max_episodes" and b["episodes"] == 40
    assert b["evaluations"] < 40 and b["cached_episodes"] > 0
    assert b["evaluations"] + b["cached_episodes"] + b["invalid_episodes"] == 40
    assert len(record["students"]["data"]) == b["evaluations"]


def test_hparam_overrides_are_recorded(digits_teacher):
    record = bench("ppo", budget=2, hparams={"episodes_per_rollout": 2, "learning_rate": 3e-4})
    hp = record["hparams"]
    assert hp["n_steps"] == 18 and hp["batch_size"] == 18 and hp["learning_rate"] == 3e-4
    assert record["extra"]["sb3_version"]


def test_register_agent_extends_the_runner(digits_teacher):
    from n2n_gym.agents import random_search

    def my_agent(env_id, seed, budget, env_kwargs=None, hparams=None, **kw):
        return random_search.run(env_id, seed, budget, env_kwargs, hparams, **kw)

    runner.register_agent("my_random", my_agent, "a test agent")
    try:
        record = bench("my_random", budget=2)
        assert record["agent"] == "my_random" and record["budget"]["evaluations"] == 2
    finally:
        runner.AGENTS.pop("my_random")
        runner._LOADED.pop("my_random")


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


ARGV = ["--agent", "random", "--budget", "1", "--protocol", "tiny", "--device", "cpu", "--no-progress",
        "--env-kwargs", json.dumps({"teacher_recipe": SMALL_DIGITS_RECIPE})]


@pytest.mark.parametrize("setup, words", [
    (lambda p: p.write_text("my notes\nnot a record\n"), "is not a results file of n2n-gym"),
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: None, "is a file, not a folder"),  # (under a file, below)
])
def test_bench_checks_the_results_path_before_any_evaluation(tmp_path, capsys, setup, words):
    target = tmp_path / "out.jsonl"
    if words == "is a file, not a folder":
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "out.jsonl"
    setup(target)
    before = target.read_bytes() if target.is_file() else None
    with pytest.raises(SystemExit, match=words):
        runner.main(ARGV + ["--seeds", "0", "--results", str(target)])
    if before is not None:
        assert target.read_bytes() == before  # the user's file is untouched
    with pytest.raises(ValueError, match=words):  # the library entry point checks too
        runner.run_one("N2N-DigitsNet-Digits-v0", "random", 0, 1, results=target)


def test_the_wandb_folder_is_checked_before_any_evaluation(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot write the W&B folder .* is a file"):
        runner.run_one("N2N-DigitsNet-Digits-v0", "random", 0, 1, track=True, wandb_dir=str(tmp_path / "file"))


def test_a_full_disk_loses_no_record(digits_teacher, tmp_path, capsys):
    """The disk fills during the run (the results path becomes /dev/full, which answers every
    write with ENOSPC, after the up-front check passed): the record goes to the fallback file,
    and so does a later seed's (never a traceback); the summary names the file that holds each
    record and the command exits 1. (/dev/full given as --results is refused up front.)"""
    from n2n_gym.agents import random_search

    results = tmp_path / "r.jsonl"

    def disk_fills(*args, **kwargs):
        out = random_search.run(*args, **kwargs)
        if not results.is_symlink():
            results.symlink_to("/dev/full")
        return out

    fallback = fallback_records_path(results)
    fallback.unlink(missing_ok=True)
    runner.register_agent("disk-fills", disk_fills, "random search; the disk fills during its run")
    try:
        assert runner.main([*ARGV[2:], "--agent", "disk-fills", "--seeds", "0", "1", "--results", str(results)]) == 1
    finally:
        runner.AGENTS.pop("disk-fills")
    captured = capsys.readouterr()
    lines = [l for l in captured.err.splitlines() if l.startswith(f"could not write the record to {results}")]
    assert len(lines) == 2 and all(f"it was written to {fallback} instead" in line for line in lines)
    assert [r["seed"] for r in read_records(fallback)] == [0, 1]
    assert captured.out.count(f"-> {fallback} (") == 2 and "2 record(s) did not reach" in captured.err


ENV_ID = "N2N-DigitsNet-Digits-v0"


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo.jsonl"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("where, words", [
    ("fifo", "not a regular file"),
    ("/dev/full", "a folder of the kernel's"),
    ("/proc/n2n-results.jsonl", "a folder of the kernel's"),
    ("/proc/self/comm", "a folder of the kernel's"),
])
def test_a_results_path_no_record_can_reach_is_refused_before_any_evaluation(request, where, words, capsys):
    """Issue 21 (remaining 11, 12): a FIFO blocked forever; /dev/full and /proc paths passed the
    up-front check, and the run's record was lost at the end."""
    target = str(request.getfixturevalue("fifo")) if where == "fifo" else where
    assert words in results_file_problem(target)
    with pytest.raises(ValueError, match=words):
        runner.run_one(ENV_ID, "random", 0, 1, protocol="tiny", env_kwargs=ENV_KWARGS, results=target)
    with pytest.raises(SystemExit, match=words):
        runner.main(["--agent", "random", "--budget", "1", "--protocol", "tiny", "--results", target])


# every agent's record validates when its budget is not a multiple of its batch (N2N's rollouts,
# evolution's population, SB3's n_steps, ...): no student is trained past the budget
BUDGET_AGENTS = ["random", "optuna_tpe", "evolution", *SB3_AGENTS, "tas", "magnitude"] + (
    ["n2n"] if _n2n_available() else [])


@pytest.mark.parametrize("agent,budget", [(a, 3) for a in BUDGET_AGENTS]
                         + ([("n2n", 2), ("n2n", 7), ("n2n one by one", 3)] if _n2n_available() else []))
def test_every_agents_record_validates_at_a_budget_that_is_no_multiple_of_its_batch(agent, budget, digits_teacher,
                                                                                     tmp_path, capsys):
    from n2n_gym.bench import validate

    results = tmp_path / "r.jsonl"
    hparams = {"magnitude": ["--hparams", json.dumps({"target_compression": 2.0})],
               "n2n one by one": ["--hparams", json.dumps({"batch_eval": False})]}.get(agent, [])
    agent = agent.split()[0]
    assert runner.main(["--agent", agent, "--budget", str(budget), "--protocol", "tiny", "--device", "cpu",
                        "--no-progress", "--env-kwargs", json.dumps(ENV_KWARGS), "--results", str(results),
                        *hparams]) == 0
    (record,) = read_records(results)
    b = record["budget"]
    assert b["trainings"] <= b["evaluations"] + b["invalid_episodes"], b
    assert b["evaluations"] <= budget + b["parallel"] - 1, b
    capsys.readouterr()
    assert validate.main([str(results)]) == 0, capsys.readouterr().out


# ---------------------------------------------------------------------------- bounded options
@pytest.mark.parametrize("option,value,words", [
    ("--budget", "100000000000000000000", "must be an integer in [1, "),  # break-it 21 F9: a record validate rejects
    ("--budget", "1e20", "must be an integer"),
    ("--threads", "100000", "must be an integer in [1, 256]"),  # break-it 21 F9: a traceback after OpenBLAS failed
    ("--threads", "0", "must be an integer in [1, 256]"),
    ("--seeds", str(2 ** 63), "records hold integers below 2**63"),
    ("--eval-seed", str(2 ** 70), "records hold integers below 2**63"),
    ("--max-episodes", str(2 ** 63), "records hold integers below 2**63"),
    ("--max-seconds", "1e300", "must be at most"),
    ("--max-seconds", "nan", "finite number"),
])
def test_bench_bounds_every_numeric_option_as_it_is_given(option, value, words, tmp_path, capsys):
    """Break-it 21 F9: bench ran with --budget 1e20 and wrote a record validate rejects; --threads
    100000 crashed. Each numeric option is bounded by what records accept, in a one-line error."""
    results = tmp_path / "r.jsonl"
    with pytest.raises(SystemExit) as exc:
        runner.main(["--agent", "random", option, value, "--results", str(results)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and words in err and option in err and "Traceback" not in err
    assert not results.exists()


def test_bench_bounds_agree_with_records():
    from n2n_gym.bench.records import MAX_INT, MAX_THREADS

    assert 20 * runner.MAX_BUDGET + 20 <= MAX_INT  # the default episode cap of the largest budget fits
    parser = runner.build_parser()
    args = parser.parse_args(["--budget", str(runner.MAX_BUDGET), "--threads", str(MAX_THREADS),
                              "--seeds", str(MAX_INT), "--max-episodes", str(MAX_INT)])
    assert (args.budget, args.threads, args.seeds, args.max_episodes) == (runner.MAX_BUDGET, MAX_THREADS, [MAX_INT],
                                                                           MAX_INT)
