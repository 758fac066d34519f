"""Outputs (issue 21, kind 3): every output location is checked before the first
evaluation, a finished record is never lost (a fallback file, said in one line), a failed
write leaves no cut line, and a file of the user's that is not a results file is never
written to."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from conftest import SMALL_DIGITS_RECIPE, subprocess_env

from n2n_gym.bench import runner
from n2n_gym.bench.records import (append_record, fallback_records_path, read_records, results_file_problem,
                                        save_record)

ARGV = ["--agent", "random", "--budget", "1", "--protocol", "tiny", "--device", "cpu", "--no-progress",
        "--env-kwargs", json.dumps({"teacher_recipe": SMALL_DIGITS_RECIPE})]
RECORD = {"format": "n2n-gym-bench", "run_id": "r1", "payload": "x" * 2000}


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


def test_a_results_file_whose_first_line_was_cut_is_still_ours(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"format": "n2n-gym-be\n')
    append_record(path, RECORD)
    assert results_file_problem(path) is None
    assert results_file_problem(tmp_path / "new" / "r.jsonl") is None


def test_the_wandb_folder_is_checked_before_any_evaluation(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot write the W&B folder .* is a file"):
        runner.run_one("N2N-DigitsNet-Digits-v0", "random", 0, 1, track=True, wandb_dir=str(tmp_path / "file"))


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


def test_save_record_prints_the_record_when_no_file_takes_it(tmp_path, monkeypatch, capsys):
    import n2n_gym.bench.records as records

    monkeypatch.setattr(records.tempfile, "gettempdir", lambda: "/dev/full")
    monkeypatch.setattr(records, "fallback_records_path", lambda p: pathlib.Path("/dev/full/x.jsonl"))
    assert save_record("/dev/full", RECORD) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and json.loads(err.split("here it is: ", 1)[1]) == RECORD
