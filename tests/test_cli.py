"""The ``n2n-gym`` command line, end to end in subprocesses (tiny protocol, tiny budget).

The subprocesses use the session's cache (conftest.py) and the shared small digits
teacher recipe (``--env-kwargs``), so the teacher is trained at most once per session.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import SMALL_DIGITS_RECIPE

import n2n_gym
from n2n_gym.teachers import registry as reg

REPO = pathlib.Path(__file__).resolve().parents[1]
from conftest import subprocess_env

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
    # the run's files relative to the run folder (true when it moves); printed where they are now
    assert (report["exports"]["onnx"], report["plots"]) == ("student.onnx", ["rewards.png", "pareto.png"])
    assert f"onnx: {run / 'student.onnx'}" in out.stdout
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
    assert "estimated training time (students timed as the teacher" in out.stderr  # said before the search starts
    assert out.stderr.index("estimated training time") < out.stderr.index("final distillation (")
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


def test_episode_command_labels_a_calibrated_estimate(capsys):
    """Under a calibrated protocol the reward's accuracy estimates the trained student's: the
    command says so and prints the measurement beside it (bug hunt: it printed the estimate as
    the validation accuracy)."""
    from n2n_gym.cli import main

    assert main(["episode", "--env", "N2N-DigitsNet-Digits-v2", "--episodes", "1", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "estimated val acc" in out and "estimated test acc" in out and "measured val acc" in out
    assert "student: reward" in out and ", val acc" not in out  # the rendered summary says it too


def test_help(capsys):
    from n2n_gym.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["compress", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--env", "--protocol", "--stages", "--updates", "--rollouts", "--seed", "--device", "--out",
                 "--resume", "--final-epochs", "--env-kwargs"):
        assert flag in out
    # the final distillation's epochs default by env: 30 epochs of CIFAR-10 would take ~7 h here
    from n2n_gym.compress import default_final_epochs

    assert "20 on N2N-ResNet20-CIFAR10-v1" in " ".join(out.split())
    assert (default_final_epochs(n2n_gym.DEFAULT_ENV_ID), default_final_epochs("N2N-ResNet20-CIFAR10-v1")) == (30, 20)


@pytest.mark.parametrize("argv, message", [
    (["compress", "--env", "N2N-DigitsNet-Digit-v0"], "Did you mean: `N2N-DigitsNet-Digits`"),
    (["compress", "--env", "resnet20"], "did you mean N2N-ResNet20-CIFAR10-v0, N2N-ResNet20-CIFAR10-v1;"),
    (["compress", "--budget", "20", "--updates", "3,3"], "give one of them, not both (--updates 3,3 was given too)"),
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

    from n2n_gym.cli import main

    run, _ = full_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "report.json").unlink()  # not finished: the resume reads the search state

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"stage_index": 0, "update": 1, "evil": Evil()}, copy / "state.pt")
    with pytest.raises(SystemExit, match="cannot be read as a search state"):
        main(["compress", "--resume", str(copy), "--no-progress"])
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------- compress --agent
AGENT_RUN = ["--protocol", "tiny", "--seed", "3", "--env-kwargs", ENV_KWARGS, "--final-epochs", "1", "--compare", "",
             "--latency-rounds", "0", "--no-export", "--no-progress"]


def _strip(history: list[dict]) -> list[tuple]:
    return [(r["evaluation"], r["architecture"], round(r["reward"], 6)) for r in history]


@pytest.fixture(scope="module")
def random_run(cache_dir, tmp_path_factory):
    """`n2n-gym compress --agent random --budget 4`, in process (the session's cache)."""
    from n2n_gym.cli import main

    run = tmp_path_factory.mktemp("agent-runs") / "random"
    assert main(["compress", "--agent", "random", "--budget", "4", *AGENT_RUN, "--out", str(run)]) == 0
    return run


def test_compress_with_a_benchmark_agent(random_run, capsys):
    run = random_run
    for name in ("config.json", "history.jsonl", "search.jsonl", "cache.sqlite", "student.json", "student.pt",
                 "report.json", "report.txt", "rewards.png", "pareto.png", "timings.json"):
        assert (run / name).is_file(), name
    assert not (run / "state.pt").exists() and not (run / "policies.pt").exists()  # N2N's files only
    config = json.loads((run / "config.json").read_text())
    assert (config["agent"], config["budget"], config["hparams"]) == ("random", 4, {})
    history = _history(run)
    assert [r["evaluation"] for r in history] == [0, 1, 2, 3]  # the budget: 4 distinct valid students
    assert all(r["valid"] for r in history) and len({r["architecture"] for r in history}) == 4
    record = json.loads((run / "search.jsonl").read_text())
    assert record["agent"] == "random" and record["budget"]["evaluations"] == 4 and record["seed"] == 3
    report = json.loads((run / "report.json").read_text())
    assert report["agent"] == "random" and report["students"] == 4
    # the data every accuracy is on, by name and content (a figure names its data variant)
    from n2n_gym.data.datasets import load_dataset

    data = load_dataset("digits")
    assert report["data"] == {"variant": data.variant, "digest": data.digest}
    assert f"Data: {data.identity}." in report["notes"] and f"Data: {data.identity}." in (run / "report.txt").read_text()
    # student.json says how scikit-learn's 0-16 digits become the pixels its normalization expects:
    # following it literally gives the data set's images (x / 255 of the raw images scored at chance)
    from sklearn.datasets import load_digits

    norm = json.loads((run / "student.json").read_text())["normalization"]
    assert norm["scale"] == "x / 255" and "round(x * 255 / 16)" in norm["pixels"]
    pixels = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    ours = torch.cat([data.x_train, data.x_test])[:, 0].numpy()
    assert sorted(map(bytes, pixels)) == sorted(map(bytes, ours))
    assert report["search"]["budget"]["requested"] == 4 and report["final"]["params"] < report["teacher"]["params"]
    best = max(history, key=lambda r: (r["reward"], -r["params"]))
    assert report["search_best"]["reward"] == pytest.approx(best["reward"])
    assert report["search_best"]["evaluation"] == best["evaluation"]
    assert record["best"]["architecture"] == best["architecture"]


def test_compress_agent_resume_does_not_redo_a_finished_search(random_run, tmp_path, capsys):

    from n2n_gym.cli import main

    run = tmp_path / "after-search"
    shutil.copytree(random_run, run)
    for name in ("report.json", "report.txt", "student.json", "student.pt"):  # killed in the final distillation
        (run / name).unlink()
    before = (run / "history.jsonl").read_text()
    assert main(["compress", "--resume", str(run), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "the search is done" in err and "not redone" in err
    # what is left is estimated too (a resumed 80-epoch CIFAR-10 distillation had none: a break-it pass), the
    # epochs in the checkpoints not counted again (the final student's one epoch is in final.ckpt)
    assert "estimated training time" in err and "(0 students, cache hits free)" in err
    assert "1 student(s) x 1 epochs, 1 at a time, 1 of those epochs done in their checkpoints" in err
    assert (run / "history.jsonl").read_text() == before
    report, reference = (json.loads((r / "report.json").read_text()) for r in (run, random_run))
    assert report["search_best"] == reference["search_best"]
    assert report["final"]["params"] == reference["final"]["params"] and (run / "student.pt").is_file()
    # the report times the whole run: the first invocation's search, not this one's second of it
    seconds, first = report["seconds"], reference["seconds"]
    assert first["invocations"] == 1 and seconds["invocations"] == 2
    assert first["search"] <= seconds["search"] < first["search"] + 5 and first["search"] > 0
    assert seconds["final_distillation"] > first["final_distillation"]  # both invocations' distillations
    # total: the wall time of both invocations (setup, scoring and plots too), at least the stages
    assert seconds["total"] >= seconds["search"] + seconds["final_distillation"] + seconds["export"]
    assert seconds["total"] >= first["total"] + seconds["total_this_invocation"] - 1e-6
    # other final settings: the checkpoint is another distillation's (its job discards it), so none of its
    # epochs is "done" (the estimate said "0 s, 9 of those epochs done" and then trained them all: a break-it pass)
    assert main(["compress", "--resume", str(run), "--no-progress", "--final-lr", "0.002"]) == 0
    err = capsys.readouterr().err
    assert "estimated training time" in err and "1 student(s) x 1 epochs, 1 at a time)" in err
    assert "of those epochs done" not in err


def _copy_run(done: pathlib.Path, run: pathlib.Path) -> pathlib.Path:
    shutil.copytree(done, run)
    config = json.loads((run / "config.json").read_text())
    # the defaults of the settings added after the first runs, written down
    assert (config["final_recipe"], config["final_lr"], config["sizes"]) == ("n2n", 1e-3, 1)
    return run


def test_compress_final_recipe_trains_every_final_student_with_it(random_run, tmp_path, capsys):
    """A finished run resumed with other final-distillation options finishes again with them
    (docs/reproduce.md: the committed CIFAR runs reuse a finished search so); its search is
    not redone and config.json records the new settings."""
    from n2n_gym.cli import main

    run = _copy_run(random_run, tmp_path / "kd-sgd")
    assert main(["compress", "--resume", str(run), "--no-progress", "--final-recipe", "kd-sgd",
                 "--compare", "magnitude", "--updates", "9,9"]) == 0
    err = capsys.readouterr().err
    assert "final_recipe 'n2n' -> 'kd-sgd', compare '' -> 'magnitude'" in err and "final_lr 0.001 -> 0.05" in err
    assert "recipe kd-sgd, lr 0.05" in err and "the search is done" in err
    config = json.loads((run / "config.json").read_text())
    assert (config["final_recipe"], config["final_lr"], config["compare"], config["updates"]) == (
        "kd-sgd", 0.05, "magnitude", json.loads((random_run / "config.json").read_text())["updates"])
    report, reference = (json.loads((r / "report.json").read_text()) for r in (run, random_run))
    assert (report["final_recipe"], report["final_lr"], report["final"]["recipe"]) == ("kd-sgd", 0.05, "kd-sgd")
    assert (report["alternatives"]["magnitude"]["recipe"], report["alternatives"]["magnitude"]["lr"]) == ("kd-sgd", 0.05)
    assert report["final"]["params"] == reference["final"]["params"]
    assert report["final"]["val_accuracy"] != reference["final"]["val_accuracy"]  # trained otherwise
    assert "recipe 'kd-sgd' at lr 0.05, the same for every final row" in report["notes"]
    # the students' checkpoints are the recipe's: a resumed n2n run could not pick them up
    for name in ("final", "magnitude"):
        key = torch.load(run / f"{name}.ckpt", weights_only=True)["key"]
        assert key and key != torch.load(random_run / "final.ckpt", weights_only=True)["key"]
    # the same options again, in another order or with the run's recipe named: the run is complete
    assert main(["compress", "--resume", str(run), "--no-progress", "--final-recipe", "kd-sgd", "--compare",
                 "magnitude", "--final-lr", "0.05"]) == 0
    assert "is complete" in capsys.readouterr().err
    # a custom lr stays when the run's own recipe is named again (only a new recipe brings its lr)
    assert main(["compress", "--resume", str(run), "--no-progress", "--final-lr", "0.02", "--compare", ""]) == 0
    assert main(["compress", "--resume", str(run), "--no-progress", "--final-recipe", "kd-sgd"]) == 0
    assert "is complete" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["final_lr"] == 0.02


def test_compress_final_precision_bf16_trains_the_final_students_in_bf16(random_run, tmp_path, capsys):
    """--final-precision bf16: a new run's estimate compares it with fp32 on this machine; a
    resumed run finishes again with it, its checkpoints its own; the report says so."""
    from n2n_gym.cli import main

    new = tmp_path / "new"
    assert main(["compress", "--agent", "random", "--budget", "2", *AGENT_RUN, "--final-precision", "bf16",
                 "--out", str(new)]) == 0
    err = capsys.readouterr().err
    assert "--final-precision bf16: the final distillation measured" in err and "as fast as in fp32" in err
    assert "recipe n2n, lr 0.001, bf16 autocast" in err
    assert json.loads((new / "report.json").read_text())["final"]["precision"] == "bf16"
    run = _copy_run(random_run, tmp_path / "bf16")
    assert main(["compress", "--resume", str(run), "--no-progress", "--final-precision", "bf16"]) == 0
    assert "final_precision 'auto' -> 'bf16'" in capsys.readouterr().err
    report, reference = (json.loads((r / "report.json").read_text()) for r in (run, random_run))
    assert (report["final_precision"], report["final"]["precision"], reference["final"]["precision"]) == (
        "bf16", "bf16", "auto")
    assert "lr 0.001, bf16 autocast, the same for every final row" in report["notes"]
    weights = [torch.load(r / "student.pt", weights_only=True) for r in (run, random_run)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # trained otherwise
    assert torch.load(run / "final.ckpt", weights_only=True)["key"] != torch.load(random_run / "final.ckpt",
                                                                                   weights_only=True)["key"]


def test_compress_resume_with_no_export_leaves_no_export_of_an_earlier_student(random_run, tmp_path, capsys):
    """A finished run finished again with other settings keeps no output of the earlier ones (a
    break-it pass: --no-export left the old student.onnx beside a retrained student.pt)."""
    from n2n_gym.cli import main

    run = _copy_run(random_run, tmp_path / "exported")
    assert main(["compress", "--resume", str(run), "--no-progress", "--export", "--latency-rounds", "1"]) == 0
    assert (run / "student.onnx").is_file() and (run / "teacher.onnx").is_file()
    assert main(["compress", "--resume", str(run), "--no-progress", "--no-export", "--final-lr", "0.002"]) == 0
    assert not any((run / f"{who}.{ext}").exists() for who in ("student", "teacher") for ext in ("onnx", "pt2"))
    report = json.loads((run / "report.json").read_text())
    assert report["exports"] == {} and report["final_lr"] == 0.002 and (run / "student.pt").is_file()
    # the latency asked for (--latency-rounds 1, kept in config.json) times exported files: said, not skipped silently
    assert report["latency"] is None and "latency not measured" in capsys.readouterr().err


def test_compress_says_when_the_final_student_scores_at_chance(random_run, tmp_path, capsys):
    """An lr a million times the recipe's trains a student to chance without a non-finite loss: the run
    says so with the fix, not only in the report's numbers (a break-it pass: --final-lr 1e6 ended at
    9.7 % in silence)."""
    from n2n_gym.cli import main

    run = _copy_run(random_run, tmp_path / "chance")
    assert main(["compress", "--resume", str(run), "--no-progress", "--final-lr", "1e6"]) == 0
    err = capsys.readouterr().err
    report = json.loads((run / "report.json").read_text())
    assert report["final"]["val_accuracy"] < 0.15
    # kept for whoever reads the run folder later, not only said on the terminal
    assert len(report["warnings"]) == 1 and "about chance" in report["warnings"][0]
    assert "WARNING: the final student scores" in (run / "report.txt").read_text()
    assert "about chance (10.00%): the final distillation did not train it; its lr 1e+06 is above the recipe's 0.001" in err
    assert f"--resume {run} --final-lr 0.001" in err


def test_compress_a_diverged_final_distillation_names_the_lr_and_resumes_with_another(random_run, tmp_path, capsys):
    """A final lr too large fails in one line naming --final-lr and the command that goes on
    (a break-it pass: a traceback after the search, and --resume could not change the lr)."""
    from n2n_gym.cli import main

    run = _copy_run(random_run, tmp_path / "a diverged run")
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--resume", str(run), "--no-progress", "--final-recipe", "kd-sgd", "--final-lr", "1e12"])
    message = str(exc.value)
    assert message.startswith("n2n-gym compress --final-lr: the final distillation at lr 1e+12 (recipe kd-sgd, "
                              "whose own lr is 0.05) failed: distillation diverged"), message
    # the way back is the recipe's own lr at once (not a tenth, try after try), the path quoted for a shell
    assert f"n2n-gym compress --resume '{run}' --final-lr 0.05" in message
    # nothing of the earlier settings' outputs is left to claim settings it was not made with
    assert not any((run / name).exists() for name in ("report.json", "report.txt", "student.pt", "student.json"))
    assert json.loads((run / "config.json").read_text())["final_lr"] == 1e12
    assert main(["compress", "--resume", str(run), "--no-progress", "--final-lr", "0.05"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert (report["final_recipe"], report["final_lr"]) == ("kd-sgd", 0.05)
    assert math.isfinite(report["final"]["val_accuracy"])
    capsys.readouterr()


@pytest.mark.parametrize("settings, error", [
    ({"final_lr": 10**400}, "final_lr must be a finite number > 0"),
    ({"final_lr": float("nan")}, "final_lr must be a finite number > 0"),
    ({"final_recipe": ["n2n"]}, "final_recipe: unknown ['n2n']"),
    ({"final_precision": "fp16"}, "final_precision: unknown 'fp16'"),
    ({"compare": "magnitude,magnitude"}, "names an alternative twice"),
    ({"compare": 3}, "compare must be names of"),
    ({"sizes": 0}, "sizes must be an integer >= 1"),
    ({"final_workers": 1.5}, "final_workers must be an integer >= 1"),
])
def test_compress_final_settings_refused_with_the_setting_named(settings, error):
    from n2n_gym.compress import _final_settings

    with pytest.raises((ValueError, TypeError)) as exc:
        _final_settings(final_epochs=1, **settings)
    assert error in str(exc.value)


def test_compress_final_settings_take_numpy_numbers_and_fill_defaults():
    import numpy as np

    from n2n_gym.compress import _final_settings

    settings = _final_settings(final_epochs=np.int64(3), final_lr=np.float32(0.5), sizes=np.int32(2),
                               final_recipe="kd-sgd", compare=["thin"])
    assert settings == {"final_epochs": 3, "final_lr": 0.5, "final_recipe": "kd-sgd", "final_precision": "auto",
                        "export": True,
                        "compare": "thin", "latency_rounds": 3, "final_workers": None, "sizes": 2}
    assert _final_settings(final_epochs=1, final_lr=np.float32(0.01))["final_lr"] == 0.01  # not 0.0099999997...
    assert _final_settings(final_epochs=1, compare="thin,magnitude")["compare"] == "magnitude,thin"
    assert json.dumps(settings)  # config.json holds plain numbers
    assert _final_settings(final_epochs=1)["final_lr"] == 1e-3 and _final_settings(final_epochs=1, compare=None)[
        "compare"] == "magnitude,thin"


def test_pareto_picks_spread_over_the_front_from_the_best_student():
    from n2n_gym.compress import pareto_picks

    def row(arch, params, accuracy, valid=True):
        return {"architecture": arch, "params": params, "accuracy": accuracy, "valid": valid}

    history = [row("a", 1000, 0.50), row("b", 2000, 0.70), row("c", 4000, 0.80), row("d", 8000, 0.85),
               row("e", 16000, 0.90), row("f", 3000, 0.60),  # f: dominated by b
               row("g", 500, 0.99, valid=False),  # invalid: never picked
               row("b2", 2000, 0.70), row("c", 4000, 0.10)]  # the same size again; c's later resample
    best = history[2]  # c
    assert [p["architecture"] for p in pareto_picks(history, best, 1)] == ["c"]
    # farthest in log(params) from those picked: 1000 (2 octaves from 4000, as 16000 is: the smaller), then 16000
    assert [p["architecture"] for p in pareto_picks(history, best, 3)] == ["c", "a", "e"]
    assert [p["params"] for p in pareto_picks(history, best, 9)] == [4000, 1000, 16000, 2000, 8000]  # the whole front
    assert pareto_picks([best], best, 3) == [best]


def test_compress_sizes_distils_exports_and_times_several_sizes(random_run, tmp_path, capsys):
    """--sizes: students of the Pareto front beside the best, each saved, exported and timed
    through ONNX Runtime against the teacher, in the report and sizes.png; resumable."""
    from n2n_gym.cli import main
    from n2n_gym.compress import pareto_picks

    run = _copy_run(random_run, tmp_path / "sizes")
    (run / "sizes" / "size-1").mkdir(parents=True)  # a size of an earlier --sizes: not this run's
    assert main(["compress", "--resume", str(run), "--no-progress", "--sizes", "2", "--export", "--latency-rounds",
                 "1", "--final-workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "2 at a time in worker processes" in err  # the best and the other size side by side
    assert not (run / "sizes" / "size-1").exists()
    report = json.loads((run / "report.json").read_text())
    history = _history(run)
    best = max(history, key=lambda r: (r["reward"], -r["params"]))
    picks = pareto_picks(history, best, 2)
    assert len(picks) == 2, "the fixture's search should leave a front of two or more students"
    rows = {r["name"]: r for r in report["sizes"]}
    other = f"size-{picks[1]['params']}"
    assert set(rows) == {"final", other} and [r["params"] for r in report["sizes"]] == sorted(r["params"] for r in picks)
    assert rows["final"]["test_accuracy"] == report["final"]["test_accuracy"]
    assert rows[other]["search_accuracy"] == picks[1]["accuracy"]
    for r in rows.values():
        assert 0 <= r["test_accuracy"] <= 1 and r["latency_ms"]["1"] > 0 and r["speedup"]["1"] > 0
        assert (r["recipe"], r["lr"], r["epochs"], r["precision"]) == ("n2n", 1e-3, 1, "auto")
    assert json.loads((run / "sizes" / other / "student.json").read_text())["metrics"]["recipe"] == "n2n"
    exports = rows[other]["exports"]  # relative to the run folder, as report["exports"] gives them
    assert (exports["onnx"], exports["torch.export"]) == (f"sizes/{other}/student.onnx", f"sizes/{other}/student.pt2")
    assert all((run / exports[k]).is_file() for k in ("onnx", "torch.export"))
    student = n2n_gym.load_student(run / "sizes" / other)
    assert student.arch.params == picks[1]["params"]
    assert (run / "sizes" / other / "student.onnx").is_file() and (run / "sizes.png").is_file()
    assert "Several sizes from the search's Pareto front" in (run / "report.txt").read_text()
    # killed before the report: the checkpoints make a second pass train nothing again
    (run / "report.json").unlink()
    shutil.rmtree(run / "sizes")
    checkpoints = {p.name: p.stat().st_mtime_ns for p in run.glob("*.ckpt")}
    assert set(checkpoints) == {"final.ckpt", f"{other}.ckpt"}
    assert main(["compress", "--resume", str(run), "--no-progress"]) == 0
    again = json.loads((run / "report.json").read_text())
    assert [r["test_accuracy"] for r in again["sizes"]] == [r["test_accuracy"] for r in report["sizes"]]
    assert {p.name: p.stat().st_mtime_ns for p in run.glob("*.ckpt")} == checkpoints  # no epoch trained again
    capsys.readouterr()


def test_compress_resume_of_a_finished_run_redoes_nothing(random_run, tmp_path, capsys):
    """Resuming a complete run says so and prints its report (a break-it pass: it re-ran the
    final students' scoring, the exports and the latency measurement)."""
    from n2n_gym.cli import main

    run = tmp_path / "moved"
    shutil.copytree(random_run, run)
    files = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(["compress", "--resume", str(run), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "is complete" in captured.err and "best student, final distillation" in captured.out
    assert f"run folder: {run}" in captured.out  # where it is now, not where it was made
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == files


def test_compress_reports_the_constraints_on_the_final_students(cache_dir, tmp_path, capsys):
    """A constrained search's report says whether each final student meets the constraints (a
    break-it pass: a student below min_accuracy was reported with no word of it)."""
    from n2n_gym.cli import main

    kwargs = json.dumps({**json.loads(ENV_KWARGS), "constraints": {"min_accuracy": 0.99, "max_params": 10**9},
                         "penalty": "violation"})
    run = tmp_path / "constrained"
    argv = [a if a != ENV_KWARGS else kwargs for a in AGENT_RUN]
    assert main(["compress", "--agent", "random", "--budget", "2", *argv, "--out", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    checks = {c["constraint"]: c["satisfied"] for c in report["constraints"]}
    assert checks == {"params <= 1,000,000,000": {"best student": True}, "accuracy >= 0.99": {"best student": False}}
    text = (run / "report.txt").read_text()
    assert "accuracy >= 0.99: best student VIOLATES it" in text and "best student satisfies it" in text


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_compress_interrupted_says_how_to_resume(cache_dir, tmp_path, signum, code, word):
    """Ctrl-C (SIGINT) or a kill's SIGTERM in the search: one line naming the resume command,
    exit 130 / 143, no traceback (a break-it pass saw ~60 lines of KeyboardInterrupt, and
    nothing at all for SIGTERM)."""
    run = tmp_path / "interrupted"
    # a terminal's process gets SIGINT at its default; one started under a background shell job
    # inherits it ignored, and Python then installs no KeyboardInterrupt handler (CI run with `&`)
    proc = subprocess.Popen(_cli("compress", "--agent", "random", "--budget", "200", *AGENT_RUN, "--out", str(run)),
                            env=_env(cache_dir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + TIMEOUT
    while not ((run / "history.jsonl").is_file() and (run / "history.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == code, err[-2000:]
    assert f"{word}; `n2n-gym compress --resume {run}` continues" in err and "Traceback" not in err


def test_compress_agent_resume_after_a_kill_in_the_search(random_run, tmp_path, capsys):
    """A search killed after 2 of its 4 students: the resumed search replays them from the run's
    result cache (free, counted as before) and ends with the uninterrupted run's students."""

    from n2n_gym.cli import main

    run = tmp_path / "killed"
    shutil.copytree(random_run, run)
    for name in ("search.jsonl", "report.json", "report.txt", "student.json", "student.pt", "final.ckpt",
                 "rewards.png", "pareto.png"):
        (run / name).unlink(missing_ok=True)
    lines = (run / "history.jsonl").read_text().splitlines(keepends=True)
    (run / "history.jsonl").write_text("".join(lines[:2]) + lines[2][:25])  # the kill cut the third line short
    assert main(["compress", "--resume", str(run), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "the 2 students evaluated before come from its cache" in err
    assert "estimated training time" in err and "(2 students, cache hits free)" in err
    history = _history(run)
    assert _strip(history) == _strip(_history(random_run)), "a resumed search differs from the uninterrupted one"
    assert all(r["cached"] for r in history)  # the run's cache held every one: none was trained again
    assert json.loads((run / "search.jsonl").read_text())["budget"]["evaluations"] == 4
    assert (run / "report.json").is_file() and (run / "student.pt").is_file()


def test_compress_agent_settings_are_checked_before_a_run_folder(tmp_path, capsys, monkeypatch):
    from n2n_gym import cli
    from n2n_gym.compress import compress

    monkeypatch.delenv("N2N_DEBUG", raising=False)
    run = tmp_path / "run"
    for argv, message in ((["--agent", "nope"], "unknown agent 'nope'"),
                          (["--agent", "random", "--budget", "0"], "argument --budget: must be >= 1"),
                          (["--hparams", '{"population": 4}'], "--hparams is for an --agent other than n2n"),
                          (["--final-workers", "0"], "argument --final-workers: must be >= 1, got 0"),
                          (["--final-recipe", "adamw"], "argument --final-recipe: invalid choice: 'adamw'"),
                          (["--final-precision", "fp16"], "argument --final-precision: invalid choice: 'fp16'"),
                          (["--final-lr", "0"], "argument --final-lr: must be a finite number > 0"),
                          (["--final-epochs", "0"], "argument --final-epochs: must be >= 1, got 0"),
                          (["--sizes", "0"], "argument --sizes: must be >= 1, got 0")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["compress", *argv, "--out", str(run)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err, err
        if argv[0].startswith("--final") or argv[0] == "--sizes":  # the compress command's usage, not n2n-gym's
            assert err.startswith("usage: n2n-gym compress ")
    with pytest.raises(SystemExit, match="nowhere does not exist; nothing to resume"):  # and no folder is made
        cli.main(["compress", "--resume", str(tmp_path / "nowhere")])
    for kwargs, error in (({"budget": 0}, ValueError), ({"agent": "nope"}, ValueError), ({"updatez": "1"}, TypeError),
                          ({"compare": ("magnitude", "wide")}, ValueError), ({"final_workers": 0}, ValueError),
                          ({"final_workers": 1.5}, ValueError), ({"final_epochs": 0}, ValueError),
                          ({"final_recipe": "adamw"}, ValueError), ({"final_lr": True}, ValueError)):
        with pytest.raises(error):
            compress(out=run, **kwargs)
    assert not run.exists()
    # an agent that refuses its hparams does so before its first student: no run is left behind
    assert cli.main(["compress", "--agent", "random", "--hparams", '{"foo": 1}', *AGENT_RUN, "--out", str(run)]) == 2
    assert "random search has no hyperparameters" in capsys.readouterr().err
    assert not run.exists() and not (tmp_path / "nowhere").exists()  # not even an empty folder


def test_compress_budget_sets_the_n2n_updates():
    from n2n_gym.compress import _search_args, n2n_updates, search_budget

    assert n2n_updates(300, ["remove", "shrink"], 5) == "20,40"  # the defaults' 300 students
    assert n2n_updates(10, ["joint"], 5) == "2" and n2n_updates(7, ["remove", "shrink"], 5) == "1,1"
    config = {"env_id": "N2N-DigitsNet-Digits-v0", "protocol": "tiny", "rollouts": 2, "agent": "n2n", "budget": 12}
    args = _search_args(config, progress=False)
    assert args.updates == "2,4" and search_budget(config, args) == 12
    args = _search_args({**config, "budget": None, "agent": "random"}, progress=False)
    assert args.updates == "20,40" and search_budget({"budget": None}, args) == 120  # updates x rollouts
    # a budget that is not whole updates is said with what the search trains instead (--budget 6 trained 10
    # unannounced, and the bar, counting cached repeats too, ran past its total: a break-it pass)
    from n2n_gym.compress import _budget_words

    assert _budget_words(config, _search_args(config, progress=False)) is None
    odd = {**config, "budget": 7}
    assert _budget_words(odd, _search_args(odd, progress=False)) == (
        "--budget 7: the N2N search trains whole updates of 2 students per stage (updates 2,2): 8 students")


# ---------------------------------------------------------------------------- F: CLI values
@pytest.mark.parametrize("argv, message", [
    (["compress", "--stages", "foo"], "stages must be a comma-separated list"),
    (["compress", "--stages", ""], "stages must be a comma-separated list"),
    (["compress", "--updates", "-1"], "updates must be one integer >= 1"),
    (["compress", "--updates", "0"], "updates must be one integer >= 1"),
    (["compress", "--rollouts", "0"], "rollouts must be >= 1"),
    (["compress", "--lr-remove", "nan"], "lr_remove must be a finite number"),
    (["bench", "--agent", "random", "--budget", "-5"], "argument --budget: must be an integer in [1, "),
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


def test_compress_resume_cleans_leftover_temp_files(tmp_path, capsys):
    from n2n_gym import cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "state.pt.tmp999999999").write_bytes(b"half")
    with pytest.raises(SystemExit, match="holds no config.json"):
        cli.main(["compress", "--resume", str(run)])
    assert not (run / "state.pt.tmp999999999").exists()


DIGITS_PIN = reg.pins()["digitsnet-digits"]


def _teacher_cli(capsys, *args: str) -> tuple[int, str]:
    from n2n_gym.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def test_teacher_list_and_verify(capsys) -> None:
    code, out = _teacher_cli(capsys, "teacher", "list", "--no-estimate")
    assert code == 0
    for env_id in n2n_gym.ENVS:
        assert env_id in out
    assert DIGITS_PIN.sha256[:12] in out
    code, out = _teacher_cli(capsys, "teacher", "list", "--json", n2n_gym.DEFAULT_ENV_ID)
    rows = json.loads(out)
    assert rows[0]["pin"] == "digitsnet-digits" and rows[0]["present"] and rows[0]["estimated_train_seconds"] > 0
    code, out = _teacher_cli(capsys, "teacher", "verify", n2n_gym.DEFAULT_ENV_ID)
    assert code == 0 and "OK: the pinned teacher" in out, out


BENCH_ENV_KWARGS = {"teacher_recipe": dict(SMALL_DIGITS_RECIPE)}


# ---------------------------------------------------------------------------- files of the user's
def test_compress_never_overwrites_files_of_the_users_out_folder(digits_teacher, tmp_path, capsys):
    """Issue 21 (remaining 3): ``compress --out DIR`` with DIR a folder of the user's overwrote its
    config.json, report.json and student.pt; the run now goes to a fresh sub-folder, said in one line."""
    from n2n_gym.cli import main

    mine = {"config.json": "my config", "report.json": "my report", "student.pt": "my weights", "notes.txt": "x"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    assert main(["compress", "--protocol", "tiny", "--updates", "1,1", "--rollouts", "1", "--seed", "3",
                 "--env-kwargs", json.dumps(BENCH_ENV_KWARGS), "--final-epochs", "1", "--latency-rounds", "1",
                 "--no-progress", "--no-export", "--out", str(tmp_path)]) == 0
    assert {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file()} == mine
    runs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "student.pt").is_file() and (runs[0] / "history.jsonl").is_file()
    err = capsys.readouterr().err
    assert f"holds files that are not an n2n-gym run: this run goes to {runs[0]}" in err


def _user_folder(path: pathlib.Path, config: dict, *extra: str) -> dict:
    mine = {name: f"MY OWN {name}" for name in ("report.json", "student.json", "student.pt", "final.ckpt", *extra)}
    mine["config.json"] = json.dumps(config)
    path.mkdir(parents=True, exist_ok=True)
    for name, text in mine.items():
        (path / name).write_text(text)
    return mine


@pytest.mark.parametrize("config", [
    {"name": "my app settings", "port": 8080},  # the break-it example: some config.json of the user's
    {"name": "my app", "port": 8080, "protocol": "tiny", "updates": "1,1", "rollouts": 1},  # our keys beside theirs
    {"format": "my format 2", "protocol": "tiny"},  # another format
    {"protocol": "tiny", "updates": "1,1", "env_id": "N2N-DigitsNet-Digits-v1"},  # no format, no run file
    ["not", "an", "object"],
])
def test_compress_resume_refuses_a_folder_that_is_not_a_compress_run(config, tmp_path, capsys, monkeypatch):
    """Break-it 21 F4: ``--resume`` on a folder of the user's holding some config.json ran there and
    overwrote its report.json, student.json, student.pt and final.ckpt. Refused now, in one line,
    with nothing written."""
    from n2n_gym import cli

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "mine"
    mine = _user_folder(folder, config)
    with pytest.raises(SystemExit) as exc:
        cli.main(["compress", "--resume", str(folder), "--no-progress"])
    err = capsys.readouterr().err + str(exc.value.code if isinstance(exc.value.code, str) else "")
    assert exc.value.code not in (0, None)
    assert "is not an n2n-gym compress run" in err and "Traceback" not in err
    assert {p.name: p.read_text() for p in folder.iterdir()} == mine  # nothing added, nothing changed


@pytest.mark.parametrize("env_id, protocol", [(n2n_gym.DEFAULT_ENV_ID, "fast"), ("N2N-DigitsNet-Digits-v2", "digits-v2")])
def test_compress_without_a_protocol_uses_the_ids_own(env_id, protocol, tmp_path, monkeypatch):
    """What the README's first command does: no --protocol. The run uses and records the id's own."""
    from n2n_gym import compress as c

    monkeypatch.setenv("N2N_CACHE", str(tmp_path / "cache"))
    report = c.compress(env_id, out=tmp_path / "run", updates="1,1", rollouts=2, seed=0, device="cpu",
                        final_epochs=1, export=False, compare=(), latency_rounds=0, progress=False, log=lambda m: None)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["protocol"] == protocol and report["final"]["epochs"] == 1
    # a calibrated protocol's search accuracies are estimates: the report says so and keeps the measurement
    text = (tmp_path / "run" / "report.txt").read_text() if (tmp_path / "run" / "report.txt").exists() else ""
    measured = report["search_best"].get("measured_val_accuracy")
    # the notes name the epochs and the recipe
    assert "(1 epoch over the whole training split, recipe 'n2n' at lr 0.001," in " ".join(text.split())
    if protocol == "digits-v2":
        assert 0.0 <= measured <= 1.0 and "ESTIMATES" in text
    else:
        assert measured is None and "ESTIMATES" not in text
    assert {json.loads(line)["protocol"] for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()
            if "protocol" in json.loads(line)} <= {protocol}


def test_compress_resume_knows_a_run_by_its_format_or_its_files(tmp_path):
    """A run's config.json carries ``format``; one written before it (only our settings, an
    env_id) is a run when state.pt or history.jsonl is beside it."""
    from n2n_gym import compress as c

    config = c._new_config("N2N-DigitsNet-Digits-v1", agent="random", budget=2, hparams=None, env_kwargs={},
                           protocol="tiny", seed=0, device="cpu", model=None, checkpoint=None, dataset=None,
                           n2n_settings={}, **c._final_settings(final_epochs=1, final_lr=1e-3, export=False,
                                                                compare=(), latency_rounds=0))
    assert config["format"] == c.RUN_FORMAT
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    assert c._run_config(run)[0] == config
    legacy = {k: v for k, v in config.items() if k != "format"}
    (run / "config.json").write_text(json.dumps(legacy))
    assert c._run_config(run)[0] is None  # no format and no run file
    (run / "history.jsonl").write_text("")
    assert c._run_config(run)[0] == legacy
    (run / "config.json").write_text(json.dumps({**legacy, "port": 8080}))
    assert c._run_config(run)[0] is None and "'port'" in c._run_config(run)[1]


def test_compress_report_names_the_flop_convention():
    from n2n_gym import compress as c
    from n2n_gym.ir.arch import FLOP_CONVENTION

    source = pathlib.Path(c.__file__).read_text()
    assert "FLOPs: {FLOP_CONVENTION}" in source and "2 per multiply-accumulate" not in source
    assert FLOP_CONVENTION


def test_compress_resume_remakes_what_a_finished_run_misses(random_run, tmp_path, capsys):
    """A finished run whose outputs were deleted is not "complete": --resume makes them again
    from its checkpoints (no training); without its history.jsonl it is refused by name (a
    break-it pass: both were called complete, the report naming files that were gone)."""
    from n2n_gym.cli import main

    run = tmp_path / "pruned"
    shutil.copytree(random_run, run)
    (run / "rewards.png").unlink()
    (run / "student.pt").unlink()
    ckpt = (run / "final.ckpt").stat().st_mtime_ns
    assert main(["compress", "--resume", str(run), "--no-progress"]) == 0
    assert "misses student.pt, rewards.png: its report and exports are made again" in capsys.readouterr().err
    assert (run / "rewards.png").is_file() and (run / "student.pt").is_file()
    assert (run / "final.ckpt").stat().st_mtime_ns == ckpt  # from the checkpoint: nothing trained again
    (run / "history.jsonl").unlink()
    with pytest.raises(SystemExit, match="history.jsonl is missing: the search's students are gone"):
        main(["compress", "--resume", str(run), "--no-progress"])


def test_compress_refuses_a_run_folder_another_process_is_using(random_run, tmp_path):
    """Two processes in one run folder mixed their students in history.jsonl and overwrote each
    other's timings (a break-it pass): the second is refused by name, with the holder's pid, and
    writes nothing; once the first is done the folder is free again and no lock file is left."""
    from n2n_gym.cli import main
    from n2n_gym.compress import LOCK_FILE, _run_lock

    run = tmp_path / "busy run"
    shutil.copytree(random_run, run)
    (run / "report.json").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with _run_lock(run, made_here=False):  # (flock: a second open of the file is refused, in this process too)
        with pytest.raises(SystemExit, match=rf"in use by another n2n-gym compress \(pid {os.getpid()}\).*--resume"):
            main(["compress", "--resume", str(run), "--no-progress"])
        # a new run given the busy folder is told about its --out, not a --resume it did not ask for
        with pytest.raises(SystemExit, match=r"^n2n-gym compress --out: .* in use .*another --out"):
            main(["compress", *AGENT_RUN, "--out", str(run)])
        assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != LOCK_FILE} == before
    assert not (run / LOCK_FILE).exists()
    assert main(["compress", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "report.json").is_file() and not (run / LOCK_FILE).exists()


def test_compress_timings_survive_a_kill_within_a_stage(tmp_path, monkeypatch):
    """A final distillation runs for hours: its time is saved as it grows, so that a process
    killed within it (SIGKILL, a lost machine) leaves its time to the next invocation's report
    (saved only at a stage's end, a lost machine took hours of it along)."""
    from n2n_gym.compress import _Timings

    monkeypatch.setattr(_Timings, "SAVE_EVERY", 0.01)
    (tmp_path / "config.json").write_text("{}")  # a run folder (one without it keeps no timings)
    killed = _Timings(tmp_path, print)
    stage = killed.stage("final_distillation")
    stage.__enter__()  # and never left: the process dies within the stage
    deadline = time.monotonic() + 30
    while json.loads((tmp_path / "timings.json").read_text()).get("final_distillation", 0) <= 0.05:
        assert time.monotonic() < deadline, "the stage's time was not saved within it"
        time.sleep(0.01)
    resumed = _Timings(tmp_path, print)
    assert resumed.before["final_distillation"] > 0.05 and resumed.spent["invocations"] == 2
    with resumed.stage("final_distillation"):
        pass
    assert resumed.seconds()["final_distillation"] >= resumed.before["final_distillation"]
    # the students' checkpoints keep their training time exactly: the stage is at least the longest of them
    # (a killed run's report gave a student 186.6 s in a stage of 175.6 s: a break-it pass)
    resumed.at_least("final_distillation", 1000.0)
    seconds = resumed.seconds()
    assert seconds["final_distillation"] == 1000.0 and seconds["total"] >= 1000.0
    assert json.loads((tmp_path / "timings.json").read_text())["final_distillation"] == 1000.0
    resumed.at_least("final_distillation", 5.0)  # never lowered
    assert resumed.seconds()["final_distillation"] == 1000.0


@pytest.mark.parametrize("timings", ["not json", "[]", '{"search": -5, "invocations": 2}',
                                     '{"search": 3, "invocations": 1.5}', "directory"])
def test_compress_times_what_it_saw_when_timings_json_is_bad(random_run, tmp_path, capsys, timings):
    """A damaged timings.json restarts the count, said once; one that cannot be written (here a
    folder in its place) keeps this invocation's figures in memory (a break-it pass: the report
    said 0 s for everything)."""
    from n2n_gym.cli import main

    run = tmp_path / "damaged"
    shutil.copytree(random_run, run)
    (run / "report.json").unlink()
    (run / "timings.json").unlink()
    if timings == "directory":
        (run / "timings.json").mkdir()
    else:
        (run / "timings.json").write_text(timings)
    assert main(["compress", "--resume", str(run), "--no-progress"]) == 0
    err = capsys.readouterr().err
    seconds = json.loads((run / "report.json").read_text())["seconds"]
    assert seconds["invocations"] == 1 and seconds["final_distillation"] > 0
    assert seconds["total"] >= seconds["search"] + seconds["final_distillation"] + seconds["export"]
    assert "over 1 invocation(s)" in (run / "report.txt").read_text()
    if timings != "directory":
        assert err.count("the report's durations count from now") == 1
        assert json.loads((run / "timings.json").read_text())["invocations"] == 1  # rewritten whole
