"""Issue 21, what a break-it pass found after the first fixes: data from outside the process
(cache rows and claims, results files, record fields) is checked where it is read, and every
output location is checked before the first evaluation. Each test is built from one example
of the pass and from others of the same kind."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sqlite3
import time
import uuid

import gymnasium as gym
import numpy as np
import pytest
from conftest import SMALL_DIGITS_RECIPE, make_digits_env

from n2n_gym.bench import leaderboard, runner, validate
from n2n_gym.bench.records import (append_record, output_folder_problem, read_records, results_file_problem,
                                    save_record)
from n2n_gym.evaluation.cache import MAX_CLAIM_TTL, CacheRowWarning, ResultCache

ENV_ID = "N2N-DigitsNet-Digits-v0"
ENV_KWARGS = {"teacher_recipe": dict(SMALL_DIGITS_RECIPE)}


# ---------------------------------------------------------------------------- the result cache
def _play(env, actions) -> dict:
    """The terminal info of one episode of ``actions``."""
    env.reset()
    return [env.step(a) for a in actions][-1][-1]


@pytest.fixture(scope="module")
def cached_env(digits_teacher, tmp_path_factory):
    """A digits env with a private cache file and one student evaluated in it: (env, path, actions, info)."""
    env = make_digits_env(cache=str(tmp_path_factory.mktemp("untrusted-cache") / "cache.sqlite"))
    env.reset(seed=0)
    narrowest = [int(np.flatnonzero(m)[0]) for m in env.unwrapped.layer_masks()]
    first = _play(env, narrowest)
    assert first["valid"] and not first["cached"]
    yield env, env.unwrapped.evaluator.cache.path, narrowest, first
    env.close()


def _sql(path, statement: str, *args) -> None:
    con = sqlite3.connect(path)
    with con:
        con.execute(statement, args)
    con.close()


def _edit(**change):
    def fn(text):
        return json.dumps({**json.loads(text), **change})
    return fn


@pytest.mark.parametrize("damage", [
    pytest.param(lambda t: "[" * 100_000 + "]" * 100_000, id="nested-100000-deep"),
    pytest.param(lambda t: '{"a":' * 50_000 + "1" + "}" * 50_000, id="nested-objects"),
    pytest.param(lambda t: '{"seconds": ' + "9" * 5000 + "}", id="5000-digit-int"),
    pytest.param(_edit(seconds=1e308), id="seconds-1e308"),
    pytest.param(_edit(valid=False, reward=-1.0, reason="x"), id="invalid-with-accuracy"),
    pytest.param(_edit(valid=False, reward=-1.0, accuracy=0.0, test_accuracy=0.0, reason=""), id="invalid-no-reason"),
    pytest.param(_edit(reason="diverged"), id="valid-with-a-reason"),
])
def test_a_cache_row_from_outside_is_a_miss_never_an_error_or_a_number(cached_env, damage):
    """Issue 21 (remaining 7 and "also"): a deep-nested row raised RecursionError out of step();
    seconds=1e308 and an invalid row with accuracy > 0 were served."""
    env, path, actions, first = cached_env
    con = sqlite3.connect(path)
    with con:
        for key, value in con.execute("SELECT key, value FROM results").fetchall():
            con.execute("UPDATE results SET value=? WHERE key=?", (damage(value), key))
    con.close()
    with pytest.warns(CacheRowWarning, match="damaged"):
        info = _play(env, actions)
    assert info["valid"] and not info["cached"]
    assert (info["reward"], info["accuracy"]) == (first["reward"], first["accuracy"])
    assert _play(env, actions)["cached"]  # stored again, sound


@pytest.mark.parametrize("expires", [1e300, "never", b"\x00", None, -5.0], ids=["1e300", "text", "blob", "null",
                                                                               "expired"])
@pytest.mark.parametrize("pid", [1, 2 ** 62], ids=["live-pid", "huge-pid"])
def test_a_hostile_claim_row_is_stale_and_never_blocks(tmp_path, expires, pid):
    """Issue 21 (remaining 4): a claims row with expires=1e300 (or text) made step() hang forever.
    Rows of another host and of a live pid (1) are what a real live owner would write."""
    cache = ResultCache(tmp_path / "c.sqlite")
    cache.claim("warm")  # creates the tables
    _sql(cache.path, "DROP TABLE claims")  # expires NOT NULL would refuse the null row: a file of any schema
    _sql(cache.path, "CREATE TABLE claims(key TEXT PRIMARY KEY, owner TEXT, host TEXT, pid INTEGER, expires)")
    _sql(cache.path, "INSERT INTO claims VALUES (?, ?, ?, ?, ?)", "k", "evil", "elsewhere", pid, expires)
    start = time.monotonic()
    assert cache.claim_owner("k") is None
    with cache.claimed("k") as hit:
        assert hit is None  # ours: the hostile claim was stale
    assert time.monotonic() - start < 5


def test_a_live_claim_still_makes_others_wait(tmp_path):
    """The other side: a claim a live owner holds within MAX_CLAIM_TTL is honoured."""
    cache = ResultCache(tmp_path / "c.sqlite")
    assert cache.claim("k", ttl=60) is not None
    other = ResultCache(cache.path)
    assert other.claim("k") is None and other.claim_owner("k") is not None
    with pytest.raises(TimeoutError):
        other.wait("k", timeout=0.2)
    with pytest.raises(ValueError, match="ttl"):
        cache.claim("j", ttl=MAX_CLAIM_TTL * 2)
    with pytest.raises(ValueError, match="ttl"):
        cache.claim("j", ttl=math.nan)


# ---------------------------------------------------------------------------- results files
@pytest.fixture(scope="module")
def genuine(digits_teacher) -> dict:
    """One real record: random search, 2 evaluations, tiny protocol."""
    return runner.run_one(ENV_ID, "random", 0, 2, protocol="tiny", env_kwargs=ENV_KWARGS, device="cpu")


def _copy(record: dict, **change) -> dict:
    """``record`` with a new run id and ``change`` (dotted keys reach into objects)."""
    r = copy.deepcopy(record)
    r["run_id"] = uuid.uuid4().hex
    for dotted, value in change.items():
        *parents, last = dotted.split("__")
        target = r
        for p in parents:
            target = target[p]
        target[last] = value
    return r


BAD_LINES = {
    "nested-100000-deep": "[" * 100_000 + "]" * 100_000,
    "nested-object-40-deep": '{"format": "n2n-gym-bench", "x": ' + '{"a": ' * 40 + "1" + "}" * 41,
    "int-5000-digits": '{"format": "n2n-gym-bench", "seed": ' + "9" * 5000 + "}",
    "int-400-digits": '{"format": "n2n-gym-bench", "seed": 1' + "0" * 400 + "}",
}


@pytest.mark.parametrize("reader", ["validate", "leaderboard"])
def test_a_hostile_results_line_is_a_bad_line_never_a_traceback(genuine, tmp_path, capsys, reader):
    """Issue 21 (remaining 6): deep-nested JSON lines and huge ints (RecursionError, OverflowError,
    Python's 4300-digit limit) crashed validate and the leaderboard; a huge int where a number is
    compared (budget, best reward, a student row) is as bad as one in the seed."""
    path = tmp_path / "r.jsonl"
    lines = list(BAD_LINES.values())
    for dotted in ("seed", "budget__requested", "best__reward", "teacher__params"):
        lines.append(json.dumps(_copy(genuine, **{dotted: 10 ** 400})))
    path.write_text("\n".join(lines) + "\n")
    append_record(path, genuine)
    if reader == "validate":
        assert validate.main([str(path)]) == 1
        out = capsys.readouterr().out
        assert out.count("FAIL ") == len(lines) and out.count("PASS ") == 1
        assert "nested deeper" in out and "bits (records hold integers below 2**63)" in out
    else:
        assert leaderboard.main([str(path), "--reps", "100"]) == 0
        err = capsys.readouterr().err
        assert err.count("skipped ") >= len(lines) and "nested deeper" in err


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


def test_a_fifo_put_at_the_path_later_never_blocks_the_write(fifo, tmp_path, capsys):
    """The write itself does not block on a FIFO (one made after the up-front check): the record
    goes to the fallback file, said in one line."""
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("the write blocked on a FIFO"))
    signal.alarm(20)
    try:
        with pytest.raises(OSError, match="not a regular file"):
            append_record(fifo, {"format": "n2n-gym-bench", "run_id": "x"})
        saved = save_record(fifo, {"format": "n2n-gym-bench", "run_id": "x"})
    finally:
        signal.alarm(0)
    assert saved is not None and saved != fifo and "written to" in capsys.readouterr().err
    assert read_records(saved)[-1]["run_id"] == "x"


def test_an_output_folder_that_takes_no_file_is_found_before_any_evaluation(tmp_path):
    """os.access says yes to root everywhere: the check really creates a file (and removes it)."""
    assert output_folder_problem(tmp_path) is None and list(tmp_path.iterdir()) == []
    assert "no file can be created" in output_folder_problem("/proc/self") or \
        "not a writable folder" in output_folder_problem("/proc/self")


# ---------------------------------------------------------------------------- files of the user's
def test_compress_never_overwrites_files_of_the_users_out_folder(digits_teacher, tmp_path, capsys):
    """Issue 21 (remaining 3): ``compress --out DIR`` with DIR a folder of the user's overwrote its
    config.json, report.json and student.pt; the run now goes to a fresh sub-folder, said in one line."""
    from n2n_gym.cli import main

    mine = {"config.json": "my config", "report.json": "my report", "student.pt": "my weights", "notes.txt": "x"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    assert main(["compress", "--protocol", "tiny", "--updates", "1,1", "--rollouts", "1", "--seed", "3",
                 "--env-kwargs", json.dumps(ENV_KWARGS), "--final-epochs", "1", "--latency-rounds", "1",
                 "--no-progress", "--no-export", "--out", str(tmp_path)]) == 0
    assert {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file()} == mine
    runs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "student.pt").is_file() and (runs[0] / "history.jsonl").is_file()
    err = capsys.readouterr().err
    assert f"holds files that are not an n2n-gym run: this run goes to {runs[0]}" in err


# ---------------------------------------------------------------------------- workers
_POOL_PARENT = """
import sys, numpy as np
from conftest import make_digits_env
from n2n_gym.evaluation.backends import ProcessBackend
env = make_digits_env(cache=False)
env.reset(seed=0)
arch = env.unwrapped.student_architecture([int(np.flatnonzero(m)[0]) for m in env.unwrapped.layer_masks()])
backend = ProcessBackend(env.unwrapped.evaluator, workers=1, threads=1)
backend.evaluate_many([(arch, "tiny", 0)])  # the worker is up
print(*backend._pool._processes, flush=True)
sys.stdin.read()  # until killed
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except FileNotFoundError:
        return True


def test_process_pool_workers_exit_with_a_killed_parent(digits_teacher):
    """Issue 21 (remaining 8): the workers of a killed process-pool run trained on."""
    import pathlib
    import subprocess
    import sys

    from conftest import subprocess_env

    proc = subprocess.Popen([sys.executable, "-c", _POOL_PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=subprocess_env(), cwd=pathlib.Path(__file__).parent)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert workers and not any(_gone(p) for p in workers)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while not all(_gone(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(p) for p in workers), "a worker outlived its killed parent"
    finally:
        proc.kill()


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


def test_an_honest_run_trains_exactly_what_it_counts(genuine):
    assert genuine["budget"]["trainings"] == genuine["budget"]["evaluations"] == 2


# ---------------------------------------------------------------------------- validate --rerun
def _rerun_other_student(record: dict) -> dict:
    """``record`` with its second student's hash replaced: the curve, rewards and best still hold."""
    r = _copy(record)
    r["students"]["data"][1][-1] = "f" * 64
    return r


@pytest.mark.parametrize("change, words", [
    (lambda g: _copy(g, agent="evolution"), "the agent reports hyperparameters"),
    (_rerun_other_student, "the students table differs from row 2"),
])
def test_validate_rerun_compares_the_students_table_and_the_agents_settings(genuine, tmp_path, capsys, change, words):
    """Issue 21 (remaining 2): a record whose agent name / hparams were relabelled, or whose
    students table was edited where the curve does not show it, passed --rerun."""
    doctored = change(genuine)
    assert validate.main([str(_file(tmp_path, doctored))]) == 0  # plain validate cannot tell...
    capsys.readouterr()
    assert validate.main([str(_file(tmp_path, doctored)), "--rerun"]) == 1  # ...the re-run can
    assert words in capsys.readouterr().out
    assert validate.main([str(_file(tmp_path, genuine)), "--rerun"]) == 0


def _file(tmp_path, record: dict):
    path = tmp_path / f"{uuid.uuid4().hex}.jsonl"
    append_record(path, record)
    return path


def test_validate_rerun_refuses_a_search_larger_than_max_evaluations(genuine, tmp_path, capsys):
    """Issue 21 (remaining 5): --rerun started a search of any size a record claimed (budget 1e9)."""
    huge = _copy(genuine, budget__requested=10 ** 9, budget__stop_reason="agent_finished")
    start = time.monotonic()
    assert validate.main([str(_file(tmp_path, huge)), "--rerun"]) == 1
    out = capsys.readouterr().out
    assert "re-run refused, nothing was run" in out and "over --max-evaluations 200" in out
    assert time.monotonic() - start < 60
    assert validate.main([str(_file(tmp_path, genuine)), "--rerun", "--max-evaluations", "1"]) == 1
    assert "over --max-evaluations 1" in capsys.readouterr().out


@pytest.mark.parametrize("change, words", [
    (dict(budget__max_episodes=10 ** 9, budget__stop_reason="max_episodes"), "stop_reason 'max_episodes' after"),
    (dict(budget__stop_reason="tired"), "budget.stop_reason 'tired' is not one of"),
    (dict(stage="../../etc"), "stage '../../etc' is not one of"),
    (dict(best__stage="../x"), "best.stage '../x' is not one of"),
    (dict(seed=10 ** 400), "bits (records hold integers below 2**63)"),
    (dict(budget__torch_threads=1024), "budget.torch_threads '1024' is not a thread count in [1, 256]"),
])
def test_plain_validate_refuses_a_record_that_contradicts_itself(genuine, tmp_path, capsys, change, words):
    """Issue 21 (remaining 5 and "also"): a max_episodes stop after 3 of 1e9 episodes, stage
    "../../etc", seed 10**400 and torch_threads 1024 passed plain validate."""
    assert validate.main([str(_file(tmp_path, _copy(genuine, **change)))]) == 1
    assert words in capsys.readouterr().out


# ---------------------------------------------------------------------------- the leaderboard
def test_a_copied_run_counts_once_on_the_leaderboard(genuine, tmp_path, capsys):
    """Issue 21 (remaining 9): the same record twice, or under a new run id in another file,
    counted as one more seed."""
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    append_record(first, genuine)
    append_record(first, genuine)  # the same line twice
    append_record(second, _copy(genuine))  # the same run under a new run id, in another file
    records = leaderboard.load([first, second])
    assert len(records) == 1
    other_seed = runner.run_one(ENV_ID, "random", 1, 2, protocol="tiny", env_kwargs=ENV_KWARGS, device="cpu")
    append_record(second, other_seed)
    assert len(leaderboard.load([first, second])) == 2  # a real second seed still counts
    assert leaderboard.main([str(first), str(second), "--reps", "100"]) == 0
    assert capsys.readouterr().err.count("a copy of the run") == 2


@pytest.mark.parametrize("name", ["\x1b[2J\x1b[31mrandom\x1b[0m", "ran\u202edom", "a | b", "x\x07\x00y"])
def test_what_a_record_names_reaches_no_terminal_or_table_raw_and_unknown_agents_are_not_ranked(
        genuine, tmp_path, capsys, name):
    """Issue 21 (remaining 10): ANSI escapes, RTL marks and '|' in agent names reached the terminal
    and the Markdown table; an agent the registry does not know was ranked as if known."""
    path = tmp_path / "r.jsonl"
    for seed in (0, 1):
        append_record(path, _copy(genuine, agent=name, seed=seed, label=None))
        append_record(path, _copy(genuine, seed=seed, best__reward=genuine["best"]["reward"]))
    assert leaderboard.main([str(path), "--reps", "100"]) == 0
    out, err = capsys.readouterr()
    for text in (out, err):
        assert not any(c in text for c in "\x1b\u202e\x07\x00")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "unregistered" in line]
    assert len(rows) == 1 and rows[0].startswith("| - (unregistered) |")
    assert rows[0].count(" | ") == out.splitlines()[[l.startswith("| rank") for l in out.splitlines()].index(True)] \
        .count(" | ")  # a '|' in the name does not add a column


def test_an_unusable_cache_folder_is_a_clear_error_naming_n2n_cache(tmp_path, monkeypatch, capsys):
    """Issue 21 ("also"): an unwritable N2N_CACHE gave a traceback."""
    from n2n_gym.cli import main
    from n2n_gym.utils.files import CacheFolderError, default_cache_dir

    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("N2N_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(CacheFolderError, match="N2N_CACHE"):
        default_cache_dir()
    assert main(["bench", "--agent", "random", "--budget", "1", "--protocol", "tiny", "--no-progress",
                 "--results", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "(from N2N_CACHE) cannot be made or written" in err and "Traceback" not in err
