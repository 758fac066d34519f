"""n2n_gym.bench.records: the record's fields, the JSONL results file (appends, cut lines, killed
writers, hostile lines, FIFOs, full disks, the fallback file), output folders, and the committed
fixture records."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import warnings

import pytest
from conftest import BENCH_ENV_KWARGS, SMALL_DIGITS_RECIPE, copy_record, subprocess_env

from n2n_gym.bench import leaderboard, runner, validate
from n2n_gym.bench.records import (
    append_record,
    output_folder_problem,
    read_records,
    results_file_problem,
    save_record,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
from n2n_gym.bench.records import (
    FLOP_CONVENTION,
    REQUIRED_FIELDS,
    json_safe,
    schema_errors,
)

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"


FIXTURE_RECORDS = FIXTURES / "bench-records.jsonl"


ENV_KWARGS = BENCH_ENV_KWARGS


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


# ---------------------------------------------------------------------------- leaderboard
def test_fixture_records_are_valid_records():
    records = read_records(FIXTURE_RECORDS)
    assert len(records) >= 6 and all(not schema_errors(r) for r in records)
    assert len({r["agent"] for r in records}) >= 3


def test_fixture_and_committed_records_are_consistent():
    from n2n_gym.bench.records import record_errors, scan_records

    root = pathlib.Path(__file__).parents[2] / "benchmarks" / "results"
    checked = 0
    for where, record, problem in scan_records([FIXTURE_RECORDS, *sorted(root.glob("*.jsonl"))]):
        assert record is not None, (where, problem)
        assert record_errors(record) == [], where
        checked += 1
    assert checked >= 10


RECORD = {"format": "n2n-gym-bench", "run_id": "r1", "payload": "x" * 2000}


def test_a_results_file_whose_first_line_was_cut_is_still_ours(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"format": "n2n-gym-be\n')
    append_record(path, RECORD)
    assert results_file_problem(path) is None
    assert results_file_problem(tmp_path / "new" / "r.jsonl") is None


def test_a_write_that_fails_part_way_leaves_no_cut_line(tmp_path):
    """A file size limit (a full disk) stops the write in the middle of the line: the file is
    cut back to its records, and save_record puts the record in the fallback file."""
    path = tmp_path / "r.jsonl"
    append_record(path, {**RECORD, "payload": ""})
    size = path.stat().st_size
    script = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from n2n_gym.bench.records import append_record, save_record
resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 500}, resource.RLIM_INFINITY))
try:
    append_record({str(path)!r}, {RECORD!r})
except OSError as exc:
    print("failed:", exc.errno)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(),
                          timeout=120)
    assert "failed: 27" in proc.stdout, proc.stderr  # EFBIG, after a partial write
    assert path.stat().st_size == size and path.read_bytes().endswith(b"\n")
    assert len(read_records(path)) == 1


def test_save_record_prints_the_record_when_no_file_takes_it(tmp_path, monkeypatch, capsys):
    import n2n_gym.bench.records as records

    monkeypatch.setattr(records.tempfile, "gettempdir", lambda: "/dev/full")
    monkeypatch.setattr(records, "fallback_records_path", lambda p: pathlib.Path("/dev/full/x.jsonl"))
    assert save_record("/dev/full", RECORD) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and json.loads(err.split("here it is: ", 1)[1]) == RECORD


ENV_ID = "N2N-DigitsNet-Digits-v0"


# ---------------------------------------------------------------------------- results files


BAD_LINES = {
    "nested-100000-deep": "[" * 100_000 + "]" * 100_000,
    "nested-object-40-deep": '{"format": "n2n-gym-bench", "x": ' + '{"a": ' * 40 + "1" + "}" * 41,
    "int-5000-digits": '{"format": "n2n-gym-bench", "seed": ' + "9" * 5000 + "}",
    "int-400-digits": '{"format": "n2n-gym-bench", "seed": 1' + "0" * 400 + "}",
}


@pytest.mark.parametrize("reader", ["validate", "leaderboard"])
def test_a_hostile_results_line_is_a_bad_line_never_a_traceback(genuine_record, tmp_path, capsys, reader):
    """Issue 21 (remaining 6): deep-nested JSON lines and huge ints (RecursionError, OverflowError,
    Python's 4300-digit limit) crashed validate and the leaderboard; a huge int where a number is
    compared (budget, best reward, a student row) is as bad as one in the seed."""
    path = tmp_path / "r.jsonl"
    lines = list(BAD_LINES.values())
    for dotted in ("seed", "budget__requested", "best__reward", "teacher__params"):
        lines.append(json.dumps(copy_record(genuine_record, **{dotted: 10 ** 400})))
    path.write_text("\n".join(lines) + "\n")
    append_record(path, genuine_record)
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


def test_an_honest_run_trains_exactly_what_it_counts(genuine_record):
    assert genuine_record["budget"]["trainings"] == genuine_record["budget"]["evaluations"] == 2


# ---------------------------------------------------------------------------- huge lines
def test_a_line_over_the_limit_is_a_bad_line_never_parsed(genuine_record, tmp_path, monkeypatch):
    """Break-it 21 F6: a 200 MB line passed validate (1.5 GB of memory). A line longer than
    MAX_LINE_BYTES is "not a record", read past in chunks; the lines after it still count."""
    from n2n_gym.bench import records

    monkeypatch.setattr(records, "MAX_LINE_BYTES", 4096)
    big = copy_record(genuine_record, label="A" * 10_000)
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps(big) + "\n" + "x" * 50_000 + "\n")
    append_record(path, genuine_record)

    real_loads, parsed = json.loads, []
    monkeypatch.setattr(records.json, "loads", lambda text, *a, **k: parsed.append(len(text)) or real_loads(text))
    scanned = list(records.scan_records(path))
    assert max(parsed) <= 4096, "a line over the limit was parsed"
    assert [where.rsplit("#", 1)[1] for where, _, _ in scanned] == ["1", "2", "3"]
    assert [r is None for _, r, _ in scanned] == [True, True, False]
    assert all("not a record, not parsed" in e for _, r, e in scanned if r is None)
    assert scanned[2][1]["run_id"] == genuine_record["run_id"]


def test_the_line_limit_holds_at_its_real_size(genuine_record, tmp_path, capsys):
    from n2n_gym.bench import records

    path = tmp_path / "huge.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps(copy_record(genuine_record, label="A" * (records.MAX_LINE_BYTES + 10))) + "\n")
    append_record(path, genuine_record)
    ((_, first, why), (_, second, _)) = records.scan_records(path)
    assert first is None and f"over {records.MAX_LINE_BYTES >> 20} MiB" in why and second is not None
    assert validate.main([str(path)]) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL ") == 1 and out.count("PASS ") == 1 and "not parsed" in out


# ---------------------------------------------------------------------------- a teacher to train
@pytest.mark.parametrize("kwargs,words", [
    ({"teacher": "resnet56"}, "not N2N-DigitsNet-Digits-v0's own teacher"),  # the break-it example
    ({"dataset": "mnist"}, "not N2N-DigitsNet-Digits-v0's own dataset"),
    ({"teacher_recipe": {"epochs": 400}}, "trains longer than digits's default recipe"),
    ({"teacher_recipe": {"epochs": 3, "batch_size": 1}}, "trains longer than"),
    ({"teacher_max_minutes": 1e9}, "limit on teacher training"),
])
def test_a_record_that_changes_the_teacher_is_refused_before_any_training(genuine_record, kwargs, words):
    """Break-it 21 F8: env_kwargs.teacher="resnet56" in a digitsnet record made validate train a
    teacher for a minute (a teacher_recipe up to 30). Env kwargs that change the env id's own
    teacher or data set, or train longer than its default recipe, are untrusted."""
    from n2n_gym.bench.records import untrusted_fields

    record = copy_record(genuine_record, env_kwargs={**genuine_record["env_kwargs"], **kwargs})
    assert any(words in p for p in untrusted_fields(record)), untrusted_fields(record)
    errors = validate.check_record(record)
    assert len(errors) == 1 and errors[0].startswith("refused, nothing was run") and words in errors[0]


def test_the_env_ids_own_teacher_and_a_cheap_recipe_are_data(genuine_record):
    from n2n_gym.bench.records import untrusted_fields

    own = {"teacher": "digitsnet", "dataset": "digits", "teacher_recipe": dict(SMALL_DIGITS_RECIPE)}
    assert untrusted_fields(copy_record(genuine_record, env_kwargs=own)) == []
    cifar = {**genuine_record, "env_id": "N2N-ResNet20-CIFAR10-v0", "env_kwargs": {"teacher_recipe": {"epochs": 1}}}
    assert any("train a teacher on 'cifar10'" in p for p in untrusted_fields(cifar))
