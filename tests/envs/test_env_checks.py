"""Issue 11's examples, each with its right value: checks at construction, -1 with a reason,
validate that checks everything, errors at the edges that name the path and the fix.

(The property-based tests of the same contracts are in test_properties.py.)
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import math
import os
import pathlib
import subprocess
import sys
import uuid

import gymnasium as gym
import numpy as np
import pytest
from conftest import SMALL_DIGITS_RECIPE, make_digits_env

import n2n_gym
from n2n_gym.ir.arch import Architecture
from n2n_gym.evaluation.cache import ResultCache
from n2n_gym.data.datasets import clear_dataset_cache, dataset_info, load_dataset
from n2n_gym.ir.edits import apply_decisions, shrunk_width
from n2n_gym.envs.env import N2NEnv
from n2n_gym.utils.files import atomic_torch_save, atomic_write_text, remove_stale_temps
from n2n_gym.evaluation.protocols import PROTOCOLS, Protocol
from n2n_gym.evaluation.reward import Constraint, parse_constraints
from n2n_gym.ir.zoo import teacher_architecture

TINY = PROTOCOLS["tiny"]


def _npz(path: pathlib.Path, n_train: int = 200, n_test: int = 120, classes: int = 3, hw: int = 8) -> str:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, hw, hw, 1), dtype=np.uint8),
             y_train=np.arange(n_train) % classes,
             x_test=rng.integers(0, 256, (n_test, hw, hw, 1), dtype=np.uint8), y_test=np.arange(n_test) % classes)
    return f"npz:{path}"


def _play(env, action: int | None = None) -> dict:
    """Play one episode (``action`` every step, else "keep at full width"); the terminal info."""
    env.reset(seed=0)
    u = env.unwrapped
    while True:
        a = u._full_width_action if action is None else action
        _, reward, terminated, truncated, info = env.step(a)
        if terminated or truncated:
            assert reward == info["reward"]
            return info


# ---------------------------------------------------------------------------- A: checked at gym.make
def test_min_width_zero_is_refused_at_make_and_widths_never_reach_zero():
    with pytest.raises(ValueError, match="min_width must be >= 1, got 0"):
        make_digits_env(stage="shrink", min_width=0, ratios=(0.01, 1.0))
    assert shrunk_width(32, 0.01, 0) == 1 and shrunk_width(32, 0.01, 1) == 1 and shrunk_width(5, 1.0, 10) == 5
    arch = teacher_architecture("digitsnet", (1, 8, 8), 10)
    student = apply_decisions(arch, [0.01] * len(arch), min_width=0)  # the edit itself floors at 1
    assert min(l.out for l in student.layers if l.has_weights) >= 1


def test_min_width_one_with_ratio_001_gives_a_valid_one_channel_student(digits_teacher):
    env = make_digits_env(stage="shrink", min_width=1, ratios=(0.01, 1.0), cache=False)
    info = _play(env, action=0)
    assert info["valid"], info["reason"]
    arch = Architecture.from_json(info["architecture"])
    assert min(l.out for l in arch.layers[:-1] if l.has_weights) == 1
    assert -1 < info["reward"] <= 1


@pytest.mark.parametrize("value, error, match", [
    ("10", TypeError, r"min_width must be an int, got str '10' \(pass min_width=10 without quotes\)"),
    (2.5, TypeError, "min_width must be an int"),
    (True, TypeError, "min_width must be an int"),
    (-3, ValueError, "min_width must be >= 1"),
])
def test_min_width_type_and_range(value, error, match):
    with pytest.raises(error, match=match):
        N2NEnv(min_width=value)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"eval_seed": -1}, ValueError, "eval_seed must be >= 0"),
    ({"eval_seed": "0"}, TypeError, "eval_seed must be an int"),
    ({"penalty_horizon": 0}, ValueError, "penalty_horizon must be >= 1"),
    ({"episodes_per_update": 0}, ValueError, "episodes_per_update must be >= 1"),
    ({"ratios": (0.5, float("nan"), 1.0)}, ValueError, "finite"),
    ({"ratios": ("0.5", 1.0)}, TypeError, "must be a number"),
    ({"ratios": (0.5,)}, ValueError, "including 1.0"),
    ({"ratios": 0.5}, TypeError, "ratios must be"),
    ({"device": "gpu"}, ValueError, "device 'gpu' is not a torch device"),
    ({"device": 0}, TypeError, "device must be"),
    ({"cache": 3}, TypeError, "cache must be True"),
    ({"progress": "yes"}, TypeError, "progress must be True or False"),
    ({"teacher_checkpoint": "/nonexistent/t.pt"}, FileNotFoundError, "is not a file"),
    ({"teacher_recipe": 5}, TypeError, "teacher_recipe must be"),
    ({"protocol": 3}, TypeError, "protocol must be"),
    ({"stage": "shrnk"}, ValueError, "stage must be one of"),
    ({"teacher": 3}, TypeError, "teacher must be"),
    ({"start_architecture": 3}, TypeError, "start_architecture must be"),
    ({"start_architecture": "{not json"}, ValueError, "not valid architecture JSON"),
    ({"start_architecture": "/nonexistent/arch.json"}, ValueError, "neither architecture JSON nor a readable file"),
])
def test_env_arguments_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        N2NEnv(**kwargs)


def test_cuda_device_without_cuda_is_refused_at_make():
    import torch

    if torch.cuda.is_available():
        N2NEnv(device="cuda")
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            N2NEnv(device="cuda")


def test_start_architecture_of_another_teacher_is_refused_at_make():
    digits_arch = teacher_architecture("digitsnet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="does not descend from the teacher"):
        N2NEnv(teacher="resnet20", dataset="digits", stage="shrink", start_architecture=digits_arch)
    resnet = teacher_architecture("resnet20", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="does not descend from the teacher: layer 0: kind"):
        N2NEnv(teacher="digitsnet", start_architecture=dataclasses.replace(
            resnet, layers=(dataclasses.replace(digits_arch.layers[0], kind="maxpool", out=0),) + digits_arch.layers[1:]))


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["layers"][0].update(out=d["layers"][0]["out"] + 1), "exceeds its origin's"),
    (lambda d: d["layers"][1].update(kernel=5), "kernel 5 differs"),
    (lambda d: d["layers"].__setitem__(slice(0, 2), [d["layers"][1], d["layers"][0]]), "keep the teacher's order"),
    (lambda d: d["layers"].pop(), "end with the teacher's classifier"),
])
def test_start_architecture_is_checked_layer_by_layer(edit, match):
    d = json.loads(teacher_architecture("digitsnet", (1, 8, 8), 10).to_json())
    edit(d)
    with pytest.raises(ValueError, match=match):
        N2NEnv(start_architecture=json.dumps(d))


def test_a_student_of_the_teacher_is_a_valid_start():
    arch = teacher_architecture("resnet20", (1, 8, 8), 10)
    env = N2NEnv(teacher="resnet20", stage="joint")
    rng = np.random.default_rng(0)
    actions = [int(rng.choice(np.flatnonzero(m))) for m in env._layer_masks]
    student = env.student_architecture(actions)
    env2 = N2NEnv(teacher="resnet20", stage="shrink", start_architecture=student)
    assert env2.num_layers == len(student) <= len(arch)


def test_npz_with_an_empty_test_split_is_refused_at_make(tmp_path):
    name = _npz(tmp_path / "d.npz", n_test=0)
    with pytest.raises(ValueError, match="x_test holds no images"):
        N2NEnv(teacher="digitsnet", dataset=name)


def test_one_class_data_is_refused(tmp_path):
    name = _npz(tmp_path / "one.npz", classes=1)
    with pytest.raises(ValueError, match="1 class"):
        N2NEnv(teacher="digitsnet", dataset=name)


def test_splits_too_small_to_rank_students_are_named_in_a_warning(tmp_path):
    name = _npz(tmp_path / "small.npz", n_train=40, n_test=30)
    clear_dataset_cache()
    with pytest.warns(UserWarning, match=r"'validation': 4, 'test': 30\} hold fewer than 100 images"):
        load_dataset(name)
    assert dataset_info(name).num_classes == 3


def test_empty_validation_split_is_refused_at_load(tmp_path):
    name = _npz(tmp_path / "d.npz")
    clear_dataset_cache()
    with pytest.raises(ValueError, match="validation split"):
        load_dataset(name, val_fraction=0.0)


# ---------------------------------------------------------------------------- C: diverged students
@pytest.mark.parametrize("lr, match", [(1e20, "loss is not finite"), (1e38, "optimizer step overflows")])
def test_a_diverged_student_scores_minus_one_with_a_reason_and_is_cached(digits_teacher, tmp_path, lr, match):
    protocol = dataclasses.replace(TINY, lr=lr)
    cache = str(tmp_path / "results.sqlite")
    info = _play(make_digits_env(stage="shrink", protocol=protocol, cache=cache), action=1)
    assert info["valid"] is False and info["reward"] == -1.0 and not info["cached"]
    assert info["reason"].startswith("NonFiniteError: distillation diverged") and match in info["reason"]
    again = _play(make_digits_env(stage="shrink", protocol=protocol, cache=cache), action=1)
    assert again["cached"] and again["valid"] is False and again["reason"] == info["reason"]


def test_a_sane_protocol_is_still_valid(digits_teacher):
    info = _play(make_digits_env(stage="shrink", cache=False), action=1)
    assert info["valid"] and info["reason"] == "" and math.isfinite(info["reward"]) and info["reward"] > 0


@pytest.mark.parametrize("field, value, error", [
    ("lr", 0.0, ValueError), ("lr", float("inf"), ValueError), ("lr", float("nan"), ValueError),
    ("lr", "1e-3", TypeError), ("epochs", -1, ValueError), ("batch_size", 0, ValueError),
    ("train_images", 0, ValueError), ("weight_decay", -1.0, ValueError), ("init", "zeros", ValueError),
    ("augment", "no", TypeError),
])
def test_protocol_fields_are_checked(field, value, error):
    with pytest.raises(error, match=f"Protocol {field}"):
        dataclasses.replace(TINY, **{field: value})


# ---------------------------------------------------------------------------- D: constraints, reset options
@pytest.mark.parametrize("spec, error, match", [
    ({"min_accuracy": 95}, ValueError, r"did you mean 0.95"),
    ({"min_accuracy": -0.1}, ValueError, "min_accuracy must be >= 0"),
    ({"max_params": -5}, ValueError, "max_params must be > 0"),
    ({"max_flops": float("nan")}, ValueError, "max_flops must be a finite number"),
    ({"max_params": "1e5"}, TypeError, r"pass max_params=100000.0, a number"),
    ({"max_param": 5}, ValueError, "unknown constraint"),
    (5, TypeError, "constraints must be"),
])
def test_constraints_in_the_wrong_unit_or_impossible_fail_at_make(spec, error, match):
    with pytest.raises(error, match=match):
        N2NEnv(constraints=spec)


def test_constraint_rows_are_checked():
    with pytest.raises(ValueError, match="Constraint bound must be a finite number"):
        Constraint({"params": 1.0}, float("inf"))
    with pytest.raises(TypeError, match="coefficient"):
        Constraint({"params": "1"}, 5.0)
    assert parse_constraints({"min_accuracy": 0.95, "max_params": 1e5})[1].bound == 1e5


def test_reset_options_are_checked():
    env = N2NEnv()
    with pytest.raises(ValueError, match=r"unknown reset option\(s\) \['udpate'\]; valid options: 'update'"):
        env.reset(options={"udpate": 3})
    with pytest.raises(ValueError, match="'update' must be >= 0"):
        env.reset(options={"update": -1})
    with pytest.raises(TypeError, match="must be an int"):
        env.reset(options={"update": "3"})
    env.reset(options={"update": 4})
    assert env._update == 4
    env.reset(options={})
    assert env._update == 0


@pytest.mark.parametrize("ratio", [1.5, -0.2, 0.0])
def test_tas_flops_ratio_outside_0_1_is_refused(ratio):
    from n2n_gym.agents.tas import Args

    with pytest.raises(ValueError, match="flops_ratio must be"):
        Args(flops_ratio=ratio)


# ---------------------------------------------------------------------------- F: CLI values
@pytest.mark.parametrize("argv, message", [
    (["compress", "--stages", "foo"], "stages must be a comma-separated list"),
    (["compress", "--stages", ""], "stages must be a comma-separated list"),
    (["compress", "--updates", "-1"], "updates must be one integer >= 1"),
    (["compress", "--updates", "0"], "updates must be one integer >= 1"),
    (["compress", "--rollouts", "0"], "rollouts must be >= 1"),
    (["compress", "--lr-remove", "nan"], "lr_remove must be a finite number"),
    (["bench", "--agent", "random", "--budget", "-5"], "argument --budget: must be >= 1, got -5"),
    (["bench", "--agent", "random", "--seeds", "x"], "argument --seeds: must be an integer"),
    (["bench", "--agent", "random", "--env-kwargs", "{bad"], "argument --env-kwargs: not valid JSON"),
    (["bench", "--agent", "random", "--env-kwargs", '{"min_width": 0}'], "min_width must be >= 1"),
    (["episode", "--episodes", "0"], "argument --episodes: must be >= 1"),
    (["validate", "x.jsonl", "--tolerance", "-1"], "argument --tolerance: must be a finite number >= 0"),
])
def test_cli_value_errors_are_one_line_without_traceback(argv, message, capsys, tmp_path, monkeypatch):
    from n2n_gym import cli

    monkeypatch.chdir(tmp_path)  # compress must not leave a run folder behind
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err + str(exc.value.code if isinstance(exc.value.code, str) else "")
    assert exc.value.code not in (0, None)
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_agent_scripts_report_bad_settings_as_usage_errors(capsys):
    from n2n_gym.agents import n2n, tas

    for parse, argv, message in ((n2n.parse_args, ["--rollouts", "0"], "rollouts must be >= 1"),
                                 (n2n.parse_args, ["--baseline", "median"], "baseline must be one of"),
                                 (tas.parse_args, ["--flops-ratio", "1.5"], "flops_ratio must be <= 1"),
                                 (tas.parse_args, ["--tau-max", "0.01"], "tau_max must be >= 0.1")):
        with pytest.raises(SystemExit) as exc:
            parse(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


# ---------------------------------------------------------------------------- F: edges
def test_atomic_writes_leave_no_temp_file_when_the_disk_is_full(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    for write in (lambda p: atomic_write_text(p, "x"), lambda p: atomic_torch_save({"a": 1}, p)):
        target = tmp_path / "state.pt"
        with pytest.raises(OSError, match=f"cannot write {target}: No space left on device; free disk space"):
            write(target)
        assert list(tmp_path.iterdir()) == []


def test_resume_removes_temp_files_of_a_killed_writer(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"state.pt.tmp{int(dead.stdout)}"
    live = tmp_path / f"history.jsonl.tmp{os.getppid()}"  # a running process: its write is in progress
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    (tmp_path / "state.pt").write_bytes(b"whole")
    assert remove_stale_temps(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["state.pt", live.name])


def test_compress_resume_cleans_leftover_temp_files(tmp_path, capsys):
    from n2n_gym import cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "state.pt.tmp999999999").write_bytes(b"half")
    with pytest.raises(SystemExit, match="holds no config.json"):
        cli.main(["compress", "--resume", str(run)])
    assert not (run / "state.pt.tmp999999999").exists()


def test_result_cache_errors_name_the_path_and_the_fix(tmp_path):
    import sqlite3

    blocked = tmp_path / "results.sqlite"
    blocked.mkdir()  # unopenable even for root
    with pytest.raises(sqlite3.OperationalError, match=f"result cache '{blocked}': unable to open database file; "
                                                       "make the folder and file writable"):
        ResultCache(blocked)
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(OSError, match=f"cannot create the folder of the result cache '{afile}/r.sqlite'"):
        ResultCache(afile / "r.sqlite")


def test_a_cache_whose_teacher_lock_cannot_be_written_still_serves_its_teacher(digits_teacher, tmp_path):
    from n2n_gym.teachers.teacher import Recipe, _file_lock, load_teacher

    ckpt = pathlib.Path(digits_teacher.path)
    lock = ckpt.with_suffix(".lock")
    lock.unlink(missing_ok=True)
    lock.mkdir()  # stands for a read-only cache folder: open(lock, "a") fails, even for root
    try:
        t = load_teacher("digitsnet", load_dataset("digits"), recipe=Recipe(**SMALL_DIGITS_RECIPE), device="cpu",
                         progress=False)
        assert t.sha256 == digits_teacher.sha256
    finally:
        lock.rmdir()
    missing = tmp_path / "teacher.lock"
    missing.mkdir()  # and no teacher.pt: training would need the lock, so a clear error
    with pytest.raises(OSError, match=f"cannot create the teacher lock file {missing} .*point N2N_CACHE"):
        with _file_lock(missing):
            pass


# ---------------------------------------------------------------------------- E: validate / leaderboard
FIXTURE_RECORDS = pathlib.Path(__file__).parent / "fixtures" / "bench-records.jsonl"


def _fixture_record() -> dict:
    return json.loads(FIXTURE_RECORDS.read_text().splitlines()[0])


def _write(path: pathlib.Path, *records: dict, raw: str = "") -> pathlib.Path:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write(raw)
    return path


def test_fixture_and_committed_records_are_consistent():
    from n2n_gym.bench.records import record_errors, scan_records

    root = pathlib.Path(__file__).parents[1] / "benchmarks" / "results"
    checked = 0
    for where, record, problem in scan_records([FIXTURE_RECORDS, *sorted(root.glob("*.jsonl"))]):
        assert record is not None, (where, problem)
        assert record_errors(record) == [], where
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("tamper, match", [
    (lambda r: r["teacher"].pop("sha256"), "teacher.sha256 is missing"),
    (lambda r: r["best"].update(reward=r["best"]["reward"] + 5e-7), "not at the best reward"),
    (lambda r: r["students"]["data"][0].__setitem__(2, r["students"]["data"][0][2] + 5e-7), "is not R = Rc * Ra"),
    (lambda r: r["students"]["data"].append(list(r["students"]["data"][0])), "rows for"),
    (lambda r: r["students"]["data"][1].__setitem__(9, r["students"]["data"][0][9]), "duplicates row 1"),
    (lambda r: r["budget"].update(evaluations=r["budget"]["evaluations"] + 1), "points for"),
    (lambda r: r["budget"].update(episodes=r["budget"]["evaluations"] - 1), "do not add up"),
    (lambda r: r.update(seed=-1), "seed -1 is not an integer >= 0"),
    (lambda r: r.update(agent=""), "is not a name"),
    (lambda r: r["curve"]["best_reward"].__setitem__(0, r["curve"]["best_reward"][-1] + 0.1), "decreases"),
    (lambda r: r["best"].update(reward=float("nan")), "non-finite value"),
])
def test_validate_fails_a_record_that_contradicts_itself(tamper, match, tmp_path, capsys):
    from n2n_gym.bench import validate

    record = _fixture_record()
    assert len(record["students"]["data"]) >= 2
    tamper(record)
    assert validate.main([str(_write(tmp_path / "r.jsonl", record))]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL ") and match in out, out


def test_validate_fails_a_cut_line_and_a_repeated_record(tmp_path, capsys):
    from n2n_gym.bench import validate

    record = _fixture_record()
    record["env_id"] = "N2N-Nope-v0"  # stops at the static checks: no replay needed for this test
    cut = json.dumps(record)[:200]
    path = _write(tmp_path / "r.jsonl", record, record, raw=cut)
    assert validate.main([str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "is not an n2n-gym env" in lines[0]  # refused before anything is made
    assert lines[1].startswith(f"FAIL {path}#2") and "duplicate of" in lines[1]
    assert lines[2].startswith(f"FAIL {path}#3: not valid JSON")
    assert lines[-1] == "0 passed, 3 failed, 0 unverifiable"


def test_validate_of_a_genuine_record_replays_exactly(digits_teacher, tmp_path, capsys):
    from n2n_gym.bench import runner, validate

    path = tmp_path / "results.jsonl"
    runner.run_one("N2N-DigitsNet-Digits-v0", "random", 1, 2, protocol="tiny",
                   env_kwargs={"teacher_recipe": dict(SMALL_DIGITS_RECIPE)}, device="cpu", results=path)
    assert validate.main([str(path), "--tolerance", "0"]) == 0, capsys.readouterr().out
    record = json.loads(path.read_text())
    record["run_id"] = uuid.uuid4().hex
    record["teacher"]["test_accuracy"] += 1e-6  # no other field depends on it: only the replay can tell
    _write(path, record)
    assert validate.main([str(path)]) == 1
    assert "teacher test_accuracy" in capsys.readouterr().out


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


_PLAY_CACHED = """
import json, sys, warnings
sys.path.insert(0, {tests!r})
from conftest import make_digits_env
env = make_digits_env(stage="remove")
env.reset(seed=0)
done = False
while not done:
    _, reward, done, _, info = env.step(1)
print(json.dumps({{"reward": reward, "cached": info["cached"], "valid": info["valid"]}}))
"""


def _read_only_command(folder: pathlib.Path, view: pathlib.Path) -> list[str] | None:
    """A command prefix that runs with ``folder`` read-only at ``view``: chmod for a normal
    user; for root (whom chmod does not stop) a read-only bind mount in a private mount
    namespace. None where neither is possible."""
    import shutil

    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
        view.symlink_to(folder)
        return []
    if shutil.which("unshare") is None:
        return None
    view.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {folder} {view} && ! touch {view}/w"],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro {folder} {view} && exec "$@"', "sh"]


def test_a_read_only_cache_serves_everything_it_holds(digits_teacher, n2n_cache_dir, tmp_path):
    import shutil

    from conftest import subprocess_env

    cache = tmp_path / "cache"
    shutil.copytree(n2n_cache_dir / "teachers", cache / "teachers",
                    ignore=shutil.ignore_patterns("*.lock", "*.partial"))
    script = _PLAY_CACHED.format(tests=str(pathlib.Path(__file__).parent))
    env = subprocess_env(N2N_CACHE=str(cache))
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    want = json.loads(first.stdout.splitlines()[-1])
    assert want["valid"] and not want["cached"]
    before = sorted(p.relative_to(cache) for p in cache.rglob("*") if not p.name.endswith((".lock", "-wal", "-shm")))
    prefix = _read_only_command(cache, tmp_path / "ro")
    if prefix is None:
        pytest.skip("cannot make a folder read-only here (root without mount namespaces)")
    second = subprocess.run(prefix + [sys.executable, "-c", script], env=subprocess_env(N2N_CACHE=str(tmp_path / "ro")),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    got = json.loads(second.stdout.splitlines()[-1])
    assert got == {**want, "cached": True}
    assert "is not writable: it serves the results it holds" in second.stderr
    after = sorted(p.relative_to(cache) for p in cache.rglob("*") if not p.name.endswith((".lock", "-wal", "-shm")))
    assert after == before


def test_evaluating_an_architecture_of_another_teacher_is_invalid_not_an_error(digits_teacher, digits_data):
    from n2n_gym.evaluation.evaluator import Evaluator

    ev = Evaluator(digits_teacher, digits_data)
    foreign = teacher_architecture("resnet20", (1, 8, 8), 10)
    result = ev.evaluate(foreign, TINY)
    assert not result.valid and result.reward == -1.0
    assert result.reason.startswith("the student does not descend from the teacher: layer 1: role")


@pytest.mark.parametrize("workers, error", [("2", TypeError), (2.5, TypeError), (True, TypeError), (0, ValueError)])
def test_workers_are_checked_at_make(workers, error):
    with pytest.raises(error, match="workers"):
        gym.make("N2N-DigitsNet-Digits-v0", backend="process", workers=workers)


def test_inline_backend_with_several_workers_fails_at_make():
    with pytest.raises(ValueError, match="backend 'inline' runs one worker"):
        gym.make("N2N-DigitsNet-Digits-v0", workers=2)


def test_a_misspelt_teacher_recipe_field_names_the_right_one():
    with pytest.raises(TypeError, match=r"teacher_recipe has no field 'epoch' \(did you mean 'epochs'\?\)"):
        gym.make("N2N-DigitsNet-Digits-v0", teacher_recipe={"epoch": 3})
