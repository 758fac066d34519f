"""Records are data (issue 21, kind 1): ``n2n-gym validate`` never imports, calls, loads or
starts anything a record names; each such record fails with the reason before anything is
made. The attack of the issue (``teacher_module: "subprocess:run(args=[...])"``) and the other
ways a record's fields reach ``gym.make``, ``importlib``, ``torch.load`` or the file system."""

from __future__ import annotations

import copy
import uuid

import pytest
from conftest import SMALL_DIGITS_RECIPE

from n2n_gym.bench import runner, validate
from n2n_gym.bench.records import append_record, untrusted_fields

ENV_KWARGS = {"teacher_recipe": dict(SMALL_DIGITS_RECIPE)}


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


def test_teacher_training_state_loads_without_pickle(tmp_path):
    """A resumable teacher state (``.partial``) is read with ``weights_only=True``: a file
    holding a pickled object is refused (training starts over) instead of executed."""
    import pickle

    from n2n_gym.teachers.teacher import _partial_epochs

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    bad = tmp_path / "t.pt.partial"
    with open(bad, "wb") as f:
        pickle.dump({"epoch": 3, "x": Boom()}, f)
    with pytest.warns(UserWarning, match="pickle protocol"):
        assert _partial_epochs(bad) == 0
