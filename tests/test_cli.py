"""The ``n2n-gym`` command line, end to end in subprocesses (tiny protocol, tiny budget).

The subprocesses use the session's cache (conftest.py) and the shared small digits
teacher recipe (``--env-kwargs``), so the teacher is trained at most once per session.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
from conftest import SMALL_DIGITS_RECIPE, subprocess_env

ENV_KWARGS = json.dumps({"teacher_recipe": SMALL_DIGITS_RECIPE})
SEARCH = ["--protocol", "tiny", "--updates", "2,2", "--rollouts", "2", "--seed", "3", "--env-kwargs", ENV_KWARGS,
          "--final-epochs", "1", "--latency-rounds", "1", "--no-progress"]
TIMEOUT = 300


@pytest.fixture(scope="module")
def cache_dir(n2n_cache_dir):
    return n2n_cache_dir


def _env(cache_dir) -> dict:
    # the session's cache, offline, one torch thread (conftest.subprocess_env)
    return subprocess_env(N2N_CACHE=str(cache_dir), N2N_OFFLINE="1", MPLBACKEND="Agg",
                          PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "n2n_gym.cli", *args]


def _keys(history: list[dict]) -> list[tuple]:
    return [(r["stage_index"], r["update"], r["rollout"]) for r in history]


def _history(run: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(cache_dir, tmp_path_factory):
    """One uninterrupted `n2n-gym compress` (with exports)."""
    run = tmp_path_factory.mktemp("runs") / "full"
    out = subprocess.run(_cli("compress", *SEARCH, "--out", str(run)), env=_env(cache_dir), cwd=REPO,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    return run, out


def test_compress_end_to_end(full_run):
    run, out = full_run
    for name in ("config.json", "state.pt", "history.jsonl", "policies.pt", "student.json", "student.pt",
                 "student.pt2", "student.onnx", "report.json", "report.txt", "rewards.png", "pareto.png"):
        assert (run / name).is_file(), name
    history = _history(run)
    assert _keys(history) == [(s, u, i) for s in range(2) for u in range(2) for i in range(2)]
    assert [r["evaluation"] for r in history] == list(range(8))
    report = json.loads((run / "report.json").read_text())
    assert report["students"] == 8
    # the exported ONNX file was run in ONNX Runtime and matched torch (README's outputs)
    assert report["exports"]["onnxruntime check"].startswith("ok:"), report["exports"]
    assert "onnxruntime check: ok:" in out.stdout
    assert report["final"]["params"] < report["teacher"]["params"]
    assert report["final"]["compression"] > 1
    # what a deployer measures: teacher vs student through both exported files, paired rounds
    lat = report["latency"]
    assert set(lat["runtimes"]) == {"onnxruntime", "torch.export"} and lat["rounds"] == 1
    for r in lat["runtimes"].values():
        assert set(r["speedup"]) == {"1", "256"} and all(v > 0 for v in r["speedup"].values())
        assert r["student"]["file_mb"] < r["teacher"]["file_mb"]
    assert lat["params_ratio"] == pytest.approx(report["final"]["compression"])
    assert (run / "teacher.onnx").is_file() and "| onnxruntime | 256 |" in out.stdout
    # the alternatives at the best student's size, trained by the same final distillation
    alt = report["alternatives"]
    assert set(alt) == {"magnitude", "thin"}
    assert alt["magnitude"]["params"] == alt["thin"]["params"] <= report["final"]["params"]
    assert (alt["magnitude"]["init"], alt["thin"]["init"], alt["thin"]["epochs"]) == ("inherit", "random", 1)
    assert "uniform L1 magnitude pruning, same size" in out.stdout
    assert "estimated duration (upper bound" in out.stderr  # said before the search starts
    assert out.stderr.index("estimated duration") < out.stderr.index("final distillation of the best")
    assert "teacher" in out.stdout and "final distillation" in out.stdout and "LOW FIDELITY" in out.stdout
    best = max(history, key=lambda r: (r["reward"], -r["params"]))
    assert report["search_best"]["reward"] == pytest.approx(best["reward"])


def test_load_student_and_exports_agree(full_run):
    import n2n_gym

    run, _ = full_run
    student = n2n_gym.load_student(run)
    info = student.student_info
    assert student.arch.params == info["params"] == json.loads((run / "report.json").read_text())["final"]["params"]
    for path in (run, run / "student.json", run / "student.pt"):
        assert n2n_gym.load_student(path).arch == student.arch
    x = torch.randn(5, *student.arch.input_shape)
    with torch.no_grad():
        expected = student(x)
    program = torch.export.load(run / "student.pt2")
    torch.testing.assert_close(program.module()(x), expected, rtol=1e-4, atol=1e-4)
    from onnx.reference import ReferenceEvaluator

    got = ReferenceEvaluator(str(run / "student.onnx")).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_existing_run_needs_resume(full_run):
    from n2n_gym.cli import main

    run, _ = full_run
    before = (run / "history.jsonl").read_text()
    with pytest.raises(SystemExit, match="--resume"):
        main(["compress", *SEARCH, "--out", str(run)])
    assert (run / "history.jsonl").read_text() == before


def test_resume_after_kill(full_run, cache_dir, tmp_path):
    reference, _ = full_run
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli("compress", *SEARCH, "--out", str(run), "--no-export"), env=_env(cache_dir),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + TIMEOUT
    try:
        while not (run / "state.pt").exists():
            assert proc.poll() is None, "compress ended before writing its first state"
            assert time.time() < deadline
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group
        proc.wait()
    assert not (run / "report.json").exists(), "the run finished before the kill"
    killed_at = len(_history(run))
    out = subprocess.run(_cli("compress", "--resume", str(run), "--no-progress"), env=_env(cache_dir), cwd=REPO,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    history = _history(run)
    assert len(history) >= killed_at
    keys = _keys(history)
    assert len(keys) == len(set(keys)), "duplicated students"
    assert keys == _keys(_history(reference)), "lost students"
    # the resumed search is the uninterrupted one: same students, same rewards
    strip = [(r["actions"], r["architecture"], round(r["reward"], 6)) for r in history]
    assert strip == [(r["actions"], r["architecture"], round(r["reward"], 6)) for r in _history(reference)]
    assert (run / "report.json").exists() and (run / "student.pt").exists()


def test_episode_command(capsys):
    from n2n_gym.cli import main

    assert main(["episode", "--episodes", "2", "--stage", "remove", "--protocol", "tiny", "--env-kwargs", ENV_KWARGS]) == 0
    out = capsys.readouterr().out
    assert "episode 0: reward" in out and "episode 1: reward" in out and "decision" in out


def test_help(capsys):
    from n2n_gym.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["compress", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--env", "--protocol", "--stages", "--updates", "--rollouts", "--seed", "--device", "--out",
                 "--resume", "--final-epochs", "--env-kwargs"):
        assert flag in out


@pytest.mark.parametrize("argv, message", [
    (["compress", "--env", "N2N-DigitsNet-Digit-v0"], "Did you mean: `N2N-DigitsNet-Digits`"),
    (["compress", "--env-kwargs", '{"protocl": "fast"}'], "unexpected keyword argument 'protocl' (did you mean 'protocol'?)"),
    (["teacher", "verify", "N2N-Foo-v0"], "unknown id 'N2N-Foo-v0'"),
    (["bench", "--agent", "random", "--budget", "2", "--hparams", '{"foo": 1}', "--no-progress"], "no hyperparameters"),
])
def test_wrong_inputs_give_one_line_errors_and_no_run_folder(argv, message, tmp_path, capsys, monkeypatch):
    from n2n_gym import cli

    monkeypatch.delenv("N2N_DEBUG", raising=False)
    extra = ["--out", str(tmp_path / "run")] if argv[0] == "compress" else []
    extra += ["--results", str(tmp_path / "r.jsonl")] if argv[0] == "bench" else []
    assert cli.main(argv + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and f"n2n-gym {argv[0]}: error:" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "r.jsonl").exists()


def test_compress_refuses_an_unwritable_run_folder_before_the_search(tmp_path):
    from n2n_gym.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    with pytest.raises(SystemExit, match="cannot write the run folder"):
        main(["compress", *SEARCH, "--out", str(blocker / "run")])
    assert blocker.read_text() == "mine"


def test_compress_resume_never_unpickles_code_from_the_run_folder(full_run, tmp_path):
    import shutil

    from n2n_gym.cli import main

    run, _ = full_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"stage_index": 0, "update": 1, "evil": Evil()}, copy / "state.pt")
    with pytest.raises(SystemExit, match="cannot be read as a search state"):
        main(["compress", "--resume", str(copy), "--no-progress"])
    assert not (tmp_path / "pwned").exists()
