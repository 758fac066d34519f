"""n2n_gym.bench.validate (``n2n-gym validate``): genuine records pass and replay exactly; tampered,
self-contradicting, cut or repeated records fail with the reason; records are data: validate
never imports, calls, loads or starts anything a record names (each such field fails before
anything is made); records of teachers in no registry are unverifiable."""

from __future__ import annotations

import copy
import io
import json
import pathlib
import time
import uuid

import pytest
from conftest import BENCH_ENV_KWARGS, SMALL_DIGITS_RECIPE, copy_record

from n2n_gym.bench import runner, validate
from n2n_gym.bench.records import append_record, untrusted_fields
from n2n_gym.teachers import registry as reg

ENV_KWARGS = BENCH_ENV_KWARGS


@pytest.fixture(scope="module")
def genuine(digits_teacher) -> dict:
    """One real record: random search, 2 evaluations, tiny protocol."""
    return runner.run_one("N2N-DigitsNet-Digits-v0", "random", 0, 2, protocol="tiny", env_kwargs=ENV_KWARGS,
                          device="cpu")


def _with(record: dict, change) -> dict:
    r = copy.deepcopy(record)
    r["run_id"] = uuid.uuid4().hex
    change(r)
    return r


def test_a_genuine_record_is_plain_data(genuine):
    assert untrusted_fields(genuine) == []


def test_validate_never_runs_the_command_a_record_names(genuine, tmp_path, capsys):
    """The issue's example: the command would create ``marker``; validate refuses the record first."""
    marker = tmp_path / "pwned"
    spec = f"subprocess:run(args=['touch', {str(marker)!r}])"

    def attack(r):
        r["env_id"] = "N2N-Custom-v0"
        r["env_kwargs"] = {"teacher_module": spec, "dataset": "digits"}

    path = tmp_path / "evil.jsonl"
    append_record(path, _with(genuine, attack))
    assert validate.main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "refused, nothing was run" in out and "teacher_module names code to import" in out
    assert not marker.exists()
    # --trusted (the user's own records) does construct it: the flag is what stands between
    assert validate.main([str(path), "--trusted"]) == 1
    assert marker.exists()


def _set(path: str, value):
    def change(r):
        *parents, last = path.split(".")
        node = r
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return change


@pytest.mark.parametrize("path, value, words", [
    ("env_id", "subprocess:Popen", "not an n2n-gym env"),
    ("env_id", "CartPole-v1", "not an n2n-gym env"),
    ("protocol", "tiny; rm -rf", "protocol"),
    ("env_kwargs.teacher_checkpoint", "/etc/passwd", "file of the checking machine to load"),
    ("env_kwargs.dataset", "npz:/etc/hosts.npz", "names a file of the checking machine"),
    ("env_kwargs.start_architecture", "/etc/passwd", "a path would name a file"),
    ("env_kwargs.data_root", "/", "folder of the checking machine"),
    ("env_kwargs.cache", "/tmp/x.sqlite", "file of the checking machine to write"),
    ("env_kwargs.backend", "ray", "starts worker processes"),
    ("env_kwargs.backend_options", {"address": "ray://evil:10001"}, "Ray cluster"),
    ("env_kwargs.teacher_max_minutes", 1e9, "limit on teacher training"),
    ("env_kwargs.teacher_recipe", {"epochs": "3; import os"}, "not a finite number"),
    ("env_kwargs.teacher_recipe", {"epochs": 1, "threads": 100000}, "thread count"),
    ("env_kwargs.something_new", 1, "not an env argument a record may carry"),
    ("best.replay.teacher_module", "os:system('x')", "best.replay.teacher_module is not one of"),
    ("budget.torch_threads", 10 ** 9, "thread count"),
])
def test_validate_refuses_every_field_that_reaches_code_files_or_processes(genuine, tmp_path, capsys, path, value,
                                                                          words):
    record = _with(genuine, _set(path, value))
    assert any(words in p for p in untrusted_fields(record)), untrusted_fields(record)
    errors = validate.check_record(record)
    assert len(errors) == 1 and errors[0].startswith("refused, nothing was run") and words in errors[0]


def test_validate_passes_the_genuine_record_still(genuine, tmp_path, capsys):
    path = tmp_path / "ok.jsonl"
    append_record(path, genuine)
    assert validate.main([str(path)]) == 0, capsys.readouterr().out


@pytest.fixture(scope="module")
def genuine_run(digits_teacher, tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """A results file with one real record (random search, 2 evaluations, tiny protocol)."""
    path = tmp_path_factory.mktemp("bench") / "results.jsonl"
    record = runner.run_one("N2N-DigitsNet-Digits-v0", "random", 3, 2, protocol="tiny", env_kwargs=ENV_KWARGS,
                            device="cpu", results=path)
    return path, record


# ---------------------------------------------------------------------------- validate
def test_validate_passes_a_genuine_record(genuine_run, capsys):
    path, _ = genuine_run
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
def test_validate_catches_a_tampered_record(genuine_run, tmp_path, capsys, what):
    _, record = genuine_run
    bad = tmp_path / "bad.jsonl"
    append_record(bad, record)  # a genuine_run one first: the file fails if any record fails
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


def test_validate_rerun_passes_a_genuine_record_and_catches_a_changed_seed_or_agent(genuine_run, tmp_path, capsys):
    path, record = genuine_run
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


def test_validate_rerun_refuses_hparams_that_name_files(genuine_run, tmp_path, capsys):
    from n2n_gym.bench.validate import untrusted_hparams

    assert untrusted_hparams({"load_policy": "policies.pt", "tensorboard_log": "runs/", "ratios": "paper",
                              "target_results": None, "x": "pkg.mod:fn"}) == [
        "hparams.load_policy names a file or code", "hparams.tensorboard_log names a file or code",
        "hparams.x = 'pkg.mod:fn' looks like a path or an import"]
    _, record = genuine_run
    changed = copy.deepcopy(record)
    changed["run_id"] = uuid.uuid4().hex
    changed["hparams"] = {"load_policy": str(tmp_path / "evil.pt")}
    bad = tmp_path / "hp.jsonl"
    append_record(bad, changed)
    assert validate.main([str(bad), "--rerun"]) == 1
    assert "re-run refused, nothing was run" in capsys.readouterr().out


# ---------------------------------------------------------------------------- E: validate / leaderboard
FIXTURE_RECORDS = pathlib.Path(__file__).parents[1] / "fixtures" / "bench-records.jsonl"


def _fixture_record() -> dict:
    return json.loads(FIXTURE_RECORDS.read_text().splitlines()[0])


def _write(path: pathlib.Path, *records: dict, raw: str = "") -> pathlib.Path:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write(raw)
    return path


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


REPO = pathlib.Path(__file__).resolve().parents[2]


DIGITS_PIN = reg.pins()["digitsnet-digits"]


def _cli(capsys, *args: str) -> tuple[int, str]:
    from n2n_gym.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def test_committed_digits_records_validate_and_unknown_teachers_are_unverifiable(tmp_path, capsys) -> None:
    lines = (REPO / "benchmarks/results/leaderboard-digits.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    assert record["teacher"]["sha256"] in DIGITS_PIN.legacy_sha256  # written before identity by content
    # another label: not a copy of the first run (same students and curve), which would fail as a duplicate
    unknown = dict(record, run_id="another-run", label="unknown teacher", teacher=dict(record["teacher"], sha256="0" * 64))
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(unknown) + "\n")
    code, out = _cli(capsys, "validate", str(path))
    assert "PASS" in out and "UNVERIFIABLE" in out and "in no teacher registry" in out, out
    assert "1 passed, 0 failed, 1 unverifiable" in out and code == 3


def test_mnist_records_of_the_unpinned_teacher_are_unverifiable_without_training(tmp_path, monkeypatch):
    """The committed MNIST records carry a teacher nobody can obtain, while the env's teacher
    is pinned to other weights: validate says so at once, without provisioning (training) it."""

    from n2n_gym.bench import validate

    monkeypatch.setenv("N2N_CACHE", str(tmp_path / "cache"))

    line = (REPO / "benchmarks/results/leaderboard-mnist.jsonl").read_text().splitlines()[0]
    path = tmp_path / "mnist.jsonl"
    path.write_text(line + "\n")
    counts, out = {}, io.StringIO()
    validate.validate_file([str(path)], counts=counts, out=out)
    assert counts == {"passed": 0, "failed": 0, "unverifiable": 1}, out.getvalue()
    assert "in no teacher registry" in out.getvalue() and "vgg13-mnist" in out.getvalue()
    assert not (tmp_path / "cache" / "teachers").exists()  # no teacher was provisioned (trained)


ENV_ID = "N2N-DigitsNet-Digits-v0"


# ---------------------------------------------------------------------------- results files


# ---------------------------------------------------------------------------- validate --rerun
def _rerun_other_student(record: dict) -> dict:
    """``record`` with its second student's hash replaced: the curve, rewards and best still hold."""
    r = copy_record(record)
    r["students"]["data"][1][-1] = "f" * 64
    return r


@pytest.mark.parametrize("change, words", [
    (lambda g: copy_record(g, agent="evolution"), "the agent reports hyperparameters"),
    (_rerun_other_student, "the students table differs from row 2"),
])
def test_validate_rerun_compares_the_students_table_and_the_agents_settings(genuine_record, tmp_path, capsys, change, words):
    """Issue 21 (remaining 2): a record whose agent name / hparams were relabelled, or whose
    students table was edited where the curve does not show it, passed --rerun."""
    doctored = change(genuine_record)
    assert validate.main([str(_file(tmp_path, doctored))]) == 0  # plain validate cannot tell...
    capsys.readouterr()
    assert validate.main([str(_file(tmp_path, doctored)), "--rerun"]) == 1  # ...the re-run can
    assert words in capsys.readouterr().out
    assert validate.main([str(_file(tmp_path, genuine_record)), "--rerun"]) == 0


def _file(tmp_path, record: dict):
    path = tmp_path / f"{uuid.uuid4().hex}.jsonl"
    append_record(path, record)
    return path


def test_validate_rerun_refuses_a_search_larger_than_max_evaluations(genuine_record, tmp_path, capsys):
    """Issue 21 (remaining 5): --rerun started a search of any size a record claimed (budget 1e9)."""
    huge = copy_record(genuine_record, budget__requested=10 ** 9, budget__stop_reason="agent_finished")
    start = time.monotonic()
    assert validate.main([str(_file(tmp_path, huge)), "--rerun"]) == 1
    out = capsys.readouterr().out
    assert "re-run refused, nothing was run" in out and "over --max-evaluations 200" in out
    assert time.monotonic() - start < 60
    assert validate.main([str(_file(tmp_path, genuine_record)), "--rerun", "--max-evaluations", "1"]) == 1
    assert "over --max-evaluations 1" in capsys.readouterr().out


def test_validate_rerun_runs_the_search_under_a_memory_limit(genuine_record, tmp_path, capsys):
    """A record's hyperparameters could ask for a network of any size (N2N's hidden grows memory
    with its square): the re-run's process has an address-space limit; past it the search stops,
    is reported, and validate goes on."""
    path = _file(tmp_path, genuine_record)
    assert validate.main([str(path), "--rerun", "--max-memory-gb", "0.25"]) == 1  # not even torch fits
    out = capsys.readouterr().out
    assert "re-run stopped" in out and "--max-memory-gb 0.25 GiB" in out and "1 failed" in out
    assert validate.main([str(path), "--rerun"]) == 0  # the default leaves a genuine search room


@pytest.mark.parametrize("change, words", [
    (dict(budget__max_episodes=10 ** 9, budget__stop_reason="max_episodes"), "stop_reason 'max_episodes' after"),
    (dict(budget__stop_reason="tired"), "budget.stop_reason 'tired' is not one of"),
    (dict(stage="../../etc"), "stage '../../etc' is not one of"),
    (dict(best__stage="../x"), "best.stage '../x' is not one of"),
    (dict(seed=10 ** 400), "bits (records hold integers below 2**63)"),
    (dict(budget__torch_threads=1024), "budget.torch_threads '1024' is not a thread count in [1, 256]"),
])
def test_plain_validate_refuses_a_record_that_contradicts_itself(genuine_record, tmp_path, capsys, change, words):
    """Issue 21 (remaining 5 and "also"): a max_episodes stop after 3 of 1e9 episodes, stage
    "../../etc", seed 10**400 and torch_threads 1024 passed plain validate."""
    assert validate.main([str(_file(tmp_path, copy_record(genuine_record, **change)))]) == 1
    assert words in capsys.readouterr().out


def test_a_record_relabelled_as_another_agent_fails_and_the_leaderboard_shows_its_agent(genuine_run, tmp_path,
                                                                                          capsys):
    from n2n_gym.bench import leaderboard

    path, record = genuine_run  # random search
    for label in ("n2n", "n2n [joint, loo, lr 0.03]", "optuna_tpe tuned"):
        relabelled = _with(record, lambda r: r.update(label=label))
        bad = tmp_path / "relabelled.jsonl"
        bad.unlink(missing_ok=True)
        append_record(bad, relabelled)
        capsys.readouterr()
        assert validate.main([str(bad), "--rerun"]) == 1, label
        out = capsys.readouterr().out
        assert "names the agent" in out and "'random'" in out, out
        (sec,) = leaderboard.leaderboard([relabelled], known_agents=runner.AGENTS)
        assert [row["agent"] for row in sec["rows"]] == [f"{label} (agent random)"]
    as_n2n = tmp_path / "agent.jsonl"  # the agent field edited instead: the re-run runs n2n, which differs
    append_record(as_n2n, _with(record, lambda r: r.update(agent="n2n")))
    capsys.readouterr()
    assert validate.main([str(as_n2n), "--rerun"]) == 1
    assert "re-run: the students table differs" in capsys.readouterr().out
    for label in ("random", "random tuned", "my variant"):  # genuine labels pass
        ok = tmp_path / "ok.jsonl"
        ok.unlink(missing_ok=True)
        append_record(ok, _with(record, lambda r: r.update(label=label)))
        capsys.readouterr()
        assert validate.main([str(ok)]) == 0, capsys.readouterr().out


def test_plain_validate_reports_a_copy_under_another_seed_as_a_duplicate(genuine_run, tmp_path, capsys):
    path, record = genuine_run
    twoseeds = tmp_path / "twoseeds.jsonl"
    append_record(twoseeds, record)
    append_record(twoseeds, _with(record, lambda r: r.update(seed=r["seed"] + 1)))
    capsys.readouterr()
    assert validate.main([str(twoseeds)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("PASS ") and "FAIL " in out and "duplicate of" in out and "1 passed, 1 failed" in out
