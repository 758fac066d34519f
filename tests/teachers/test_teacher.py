"""Teachers: checkpoints given by the user (corrupt, mismatched, plain state_dicts), the
cache of trained teachers (integrity, resuming an interrupted training), and missing
data when offline."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import gymnasium as gym
import pytest
import torch
from conftest import SMALL_DIGITS_RECIPE, make_digits_env, subprocess_env

from n2n_gym.ir.build import build
from n2n_gym.data.datasets import DataUnavailableError
from n2n_gym.teachers.teacher import (
    FORMAT,
    Recipe,
    TeacherCheckpointError,
    TeacherInvalidError,
    TeacherTrainingTooLong,
    file_sha256,
    load_teacher,
    save_teacher,
    teacher_cache_path,
    weights_sha256,
)
from n2n_gym.ir.zoo import teacher_architecture

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS_ARCH = teacher_architecture("digitsnet", (1, 8, 8), 10)


# ----------------------------------------------------------- user-given checkpoints


def test_corrupt_checkpoint_names_the_file(tmp_path, digits_data) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(TeacherCheckpointError, match=re.escape(str(path))):
        load_teacher("digitsnet", digits_data, checkpoint=path)
    # the same through the env: gym.make is fine, the first use of the teacher is not
    env = make_digits_env(teacher_checkpoint=str(path))
    with pytest.raises(TeacherCheckpointError, match=re.escape(str(path))):
        env.unwrapped.teacher


def test_truncated_checkpoint(tmp_path, digits_teacher, digits_data) -> None:
    good = tmp_path / "good.pt"
    save_teacher(good, digits_teacher.module, digits_data, val_accuracy=0.5, test_accuracy=0.5)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(TeacherCheckpointError, match="cut.pt"):
        load_teacher("digitsnet", digits_data, checkpoint=cut)


def test_missing_and_non_dict_checkpoints(tmp_path, digits_data) -> None:
    with pytest.raises(TeacherCheckpointError, match="does not exist"):
        load_teacher("digitsnet", digits_data, checkpoint=tmp_path / "nope.pt")
    odd = tmp_path / "list.pt"
    torch.save([1, 2, 3], odd)
    with pytest.raises(TeacherCheckpointError, match="neither"):
        load_teacher("digitsnet", digits_data, checkpoint=odd)


def test_checkpoint_of_another_architecture(tmp_path, digits_data) -> None:
    resnet = teacher_architecture("resnet20", (3, 32, 32), 10)
    path = tmp_path / "resnet20.pt"
    save_teacher(path, build(resnet), digits_data, val_accuracy=0.1, test_accuracy=0.1)
    with pytest.raises(TeacherCheckpointError, match="resnet20.*digitsnet"):
        load_teacher("digitsnet", digits_data, checkpoint=path)
    env = make_digits_env(teacher_checkpoint=path)
    with pytest.raises(TeacherCheckpointError, match="resnet20"):
        env.unwrapped.teacher


@pytest.mark.parametrize("wrong", ["classes", "network"])
def test_state_dict_of_wrong_shapes(tmp_path, digits_data, wrong: str) -> None:
    arch = (teacher_architecture("digitsnet", (1, 8, 8), 5) if wrong == "classes"
            else teacher_architecture("resnet20", (1, 8, 8), 10))
    path = tmp_path / f"{wrong}.pt"
    torch.save(build(arch).state_dict(), path)
    with pytest.raises(TeacherCheckpointError, match="does not fit the digitsnet"):
        load_teacher("digitsnet", digits_data, checkpoint=path)


def test_plain_state_dict_is_accepted_and_scored(tmp_path, digits_teacher, digits_data) -> None:
    path = tmp_path / "plain.pt"
    torch.save(digits_teacher.module.state_dict(), path)
    t = load_teacher("digitsnet", digits_data, checkpoint=path)
    # identity by content: the same weights in another kind of file are the same teacher
    assert t.sha256 == digits_teacher.sha256 != file_sha256(path)
    assert t.val_accuracy == pytest.approx(digits_teacher.val_accuracy)
    assert t.test_accuracy == pytest.approx(digits_teacher.test_accuracy)
    assert not t.module.training and not any(p.requires_grad for p in t.module.parameters())


def test_saved_checkpoint_round_trip(tmp_path, digits_teacher, digits_data) -> None:
    path = tmp_path / "sub" / "teacher.pt"
    sha = save_teacher(path, digits_teacher.module, digits_data, val_accuracy=0.25, test_accuracy=0.5)
    assert sha == weights_sha256(digits_teacher.module.state_dict()) == digits_teacher.sha256
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["sha256"] == sha and side["data_variant"] == digits_data.variant
    assert side["data_digest"] == digits_data.digest and side["file_sha256"] == file_sha256(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == FORMAT and ckpt["data_digest"] == digits_data.digest
    t = load_teacher("digitsnet", digits_data, checkpoint=path)
    # a given checkpoint's accuracies are measured on the env's splits, not taken from the file
    assert (t.val_accuracy, t.test_accuracy, t.sha256) == (digits_teacher.val_accuracy, digits_teacher.test_accuracy, sha)
    x = digits_data.normalize(digits_data.x_test[:16])
    with torch.no_grad():
        assert torch.equal(t.module(x), digits_teacher.module(x))


def test_damaged_checkpoint_dict_is_a_checkpoint_error(tmp_path, digits_data) -> None:
    """A file in the teacher format without its weights (e.g. written by another tool)."""
    path = tmp_path / "noweights.pt"
    torch.save({"format": FORMAT, "architecture": DIGITS_ARCH.to_json()}, path)
    with pytest.raises(TeacherCheckpointError, match="noweights.pt"):
        load_teacher("digitsnet", digits_data, checkpoint=path)


# ------------------------------------------------------------------ cached teachers


def _copy_cached_teacher(teacher, cache_dir: pathlib.Path) -> pathlib.Path:
    src = pathlib.Path(teacher.path)
    dst = cache_dir / "teachers" / src.name
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def test_cached_teacher_altered_asks_to_delete(tmp_path, digits_teacher, digits_data) -> None:
    recipe = Recipe(**SMALL_DIGITS_RECIPE)
    path = _copy_cached_teacher(digits_teacher, tmp_path)
    same = load_teacher("digitsnet", digits_data, recipe=recipe, cache_dir=tmp_path, progress=False)
    assert same.path == str(path) and same.sha256 == digits_teacher.sha256
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(TeacherCheckpointError, match=r"delete.*\.json"):
        load_teacher("digitsnet", digits_data, recipe=recipe, cache_dir=tmp_path, progress=False)
    # so does a missing record
    path.with_suffix(".json").unlink()
    with pytest.raises(TeacherCheckpointError, match="delete"):
        load_teacher("digitsnet", digits_data, recipe=recipe, cache_dir=tmp_path, progress=False)


def test_cached_teacher_with_damaged_record_asks_to_delete(tmp_path, digits_teacher, digits_data) -> None:
    path = _copy_cached_teacher(digits_teacher, tmp_path)
    path.with_suffix(".json").write_text('{"sha256": "3d39')  # cut short
    with pytest.raises(TeacherCheckpointError, match="delete"):
        load_teacher("digitsnet", digits_data, recipe=Recipe(**SMALL_DIGITS_RECIPE), cache_dir=tmp_path,
                     progress=False)


def test_shared_cache_is_used(digits_teacher, n2n_cache_dir) -> None:
    assert pathlib.Path(digits_teacher.path).parent == n2n_cache_dir / "teachers"
    assert digits_teacher.data_variant == "digits (scikit-learn)"
    assert digits_teacher.val_accuracy > 0.5  # 3 epochs are plenty for the 8x8 digits
    again = make_digits_env().unwrapped.teacher
    assert again.sha256 == digits_teacher.sha256 and again.path == digits_teacher.path


# ------------------------------------------------------- interrupted training resumes

RESUME_RECIPE = {"epochs": 6, "batch_size": 128, "lr": 0.05}
_TRAIN_CHILD = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(int(os.environ.get("N2N_TEST_TORCH_THREADS", "1")))  # as the parent
    from n2n_gym.data.datasets import load_dataset
    from n2n_gym.teachers.teacher import Recipe, load_teacher
    load_teacher("digitsnet", load_dataset("digits"), recipe=Recipe(**{recipe!r}),
                 cache_dir=sys.argv[1], progress=False)
    """
).format(recipe=RESUME_RECIPE)


def _kill_after_first_partial(cache_dir: pathlib.Path, timeout: float = 120.0) -> pathlib.Path:
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN_CHILD, str(cache_dir)], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            partials = list((cache_dir / "teachers").glob("*.pt.partial"))
            if partials:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                return partials[0]
            if proc.poll() is not None:
                pytest.fail(f"training ended before writing a partial state: {proc.stdout.read().decode()}")
            time.sleep(0.01)
        pytest.fail("no .partial file appeared")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()
    raise AssertionError("unreachable")


def test_interrupted_training_resumes(tmp_path, digits_data, capfd) -> None:
    interrupted, fresh = tmp_path / "interrupted", tmp_path / "fresh"
    partial = _kill_after_first_partial(interrupted)
    final = partial.with_name(partial.name[: -len(".partial")])
    assert partial.is_file() and not final.exists()
    done_epochs = torch.load(partial, map_location="cpu", weights_only=False)["epoch"]
    assert 1 <= done_epochs < RESUME_RECIPE["epochs"]

    recipe = Recipe(**RESUME_RECIPE)
    capfd.readouterr()
    resumed = load_teacher("digitsnet", digits_data, recipe=recipe, cache_dir=interrupted, progress=True)
    err = capfd.readouterr().err
    steps = len(digits_data.train_idx) // recipe.batch_size
    # the progress bar starts where the partial state left off, not at 0
    first = re.search(r"(\d+)/(\d+) \[", err)
    assert first, err
    assert (int(first.group(1)), int(first.group(2))) == (done_epochs * steps, recipe.epochs * steps)
    assert resumed.path == str(final) and final.is_file()
    assert not partial.exists()
    assert json.loads(final.with_suffix(".json").read_text())["sha256"] == resumed.sha256

    # resuming gives the very weights of an uninterrupted run (model, optimizer, one-cycle
    # schedule and data order all restored)
    straight = load_teacher("digitsnet", digits_data, recipe=recipe, cache_dir=fresh, progress=False)
    assert straight.val_accuracy == resumed.val_accuracy
    for (k, a), (k2, b) in zip(resumed.module.state_dict().items(), straight.module.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_unreadable_partial_state_starts_over(tmp_path, digits_data) -> None:
    recipe = Recipe(epochs=1, batch_size=32, lr=0.05)  # enough steps to beat chance (teachers at chance are refused)
    first = load_teacher("digitsnet", digits_data, recipe=recipe, cache_dir=tmp_path / "a", progress=False)
    name = pathlib.Path(first.path).name
    partial = tmp_path / "b" / "teachers" / f"{name}.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"not a torch file")
    again = load_teacher("digitsnet", digits_data, recipe=recipe, cache_dir=tmp_path / "b", progress=False)
    assert not partial.exists()
    for a, b in zip(first.module.state_dict().values(), again.module.state_dict().values()):
        assert torch.equal(a, b)


# ------------------------------------------------------------ missing data, offline


def test_missing_data_offline_fails_at_reset(tmp_path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("N2N_DATA", str(empty))
    monkeypatch.setenv("N2N_OFFLINE", "1")
    env = gym.make("N2N-VGG13-MNIST-v0", protocol="tiny", progress=False, stage="remove")  # fine: nothing loaded
    # availability is settled before an episode is played
    with pytest.raises(DataUnavailableError, match=re.escape(str(empty))) as exc:
        env.reset(seed=0)
    assert "N2N_OFFLINE" in str(exc.value) or "download" in str(exc.value)
    assert list(empty.iterdir()) == []  # nothing was downloaded or written
