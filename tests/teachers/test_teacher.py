"""n2n_gym.teachers.teacher: checkpoints given by the user (corrupt, mismatched, plain state_dicts),
the cache of trained teachers (integrity, locks, resuming an interrupted training), identity
by content of weights and data, accuracies measured on the env's own splits, refusal of
diverged or chance-level teachers, the training-time guard at reset, and missing data offline."""

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
import numpy as np
import pytest
import torch
from conftest import (
    SMALL_DIGITS_RECIPE,
    make_digits_env,
    shared_data_root,
    subprocess_env,
)

import n2n_gym
from n2n_gym.data.datasets import (
    DataUnavailableError,
    clear_dataset_cache,
    load_dataset,
)
from n2n_gym.ir.build import build
from n2n_gym.ir.zoo import teacher_architecture
from n2n_gym.teachers.teacher import (
    FORMAT,
    Recipe,
    TeacherCheckpointError,
    TeacherInvalidError,
    TeacherTrainingTooLong,
    file_sha256,
    load_teacher,
    save_teacher,
    portable_path,
    teacher_cache_path,
    weights_sha256,
)

REPO = pathlib.Path(__file__).resolve().parents[2]


DIGITS_ARCH = teacher_architecture("digitsnet", (1, 8, 8), 10)


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


def _digits_npz(path: pathlib.Path, invert: bool = False) -> str:
    """The embedded digits as an npz (x, y form); ``invert``: the same shapes, other images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    if invert:
        x = 255 - x
    np.savez(path, x=x, y=d.target.astype(np.int64))
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # same mtime for both: only the content differs
    return f"npz:{path}"


def test_weights_sha256_is_the_content_not_the_file(tmp_path, digits_teacher) -> None:
    state = digits_teacher.module.state_dict()
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(state, a)
    torch.save({k: v.clone() for k, v in state.items()}, b, _use_new_zipfile_serialization=False)  # old writer
    assert a.read_bytes() != b.read_bytes()
    loaded = [torch.load(p, weights_only=True) for p in (a, b)]
    assert weights_sha256(loaded[0]) == weights_sha256(loaded[1]) == digits_teacher.sha256
    changed = dict(loaded[0])
    first = next(k for k, v in changed.items() if v.is_floating_point())
    changed[first] = changed[first].clone()
    changed[first].view(-1)[0] += 1e-6
    assert weights_sha256(changed) != digits_teacher.sha256


def test_overwritten_npz_is_other_data_no_stale_teacher_or_student(tmp_path) -> None:
    path = tmp_path / "data.npz"
    recipe = dict(SMALL_DIGITS_RECIPE)
    infos = []
    for invert in (False, True):
        clear_dataset_cache()
        name = _digits_npz(path, invert)
        env = gym.make(n2n_gym.DEFAULT_ENV_ID, dataset=name, protocol="tiny", teacher_recipe=recipe, progress=False,
                       device="cpu", cache=tmp_path / "results.sqlite", stage="remove")
        env.reset(seed=0)
        for _ in range(env.unwrapped.num_layers):
            _, _, terminated, _, info = env.step(0)
        t, data = env.unwrapped.teacher, env.unwrapped.evaluator.data
        infos.append((t.sha256, t.path, t.val_accuracy, data.digest, info["cached"], info["data_digest"]))
        env.close()
    (sha0, path0, acc0, dig0, _, _), (sha1, path1, acc1, dig1, cached1, info_dig1) = infos
    assert dig0 != dig1 and info_dig1 == dig1
    assert path0 != path1 and sha0 != sha1  # a new teacher for the new content, no stale cache hit
    assert not cached1  # nor a stale student result
    clear_dataset_cache()


def test_checkpoint_accuracy_is_measured_on_the_envs_data(tmp_path, digits_teacher, digits_data) -> None:
    """A digits teacher given to an env on other data: Ra's denominator is what it scores there."""
    ckpt = tmp_path / "digits.pt"
    save_teacher(ckpt, digits_teacher.module, digits_data)  # records 0.9x on the digits
    clear_dataset_cache()
    other = load_dataset(_digits_npz(tmp_path / "inverted.npz", invert=True))
    try:
        t = load_teacher("digitsnet", other, checkpoint=ckpt)
    except TeacherInvalidError:
        return  # at chance on the other data: refused, which is right too
    from n2n_gym.evaluation.distill import accuracy

    assert t.val_accuracy == pytest.approx(accuracy(t.module, other, *other.split("val")))
    assert t.val_accuracy < digits_teacher.val_accuracy - 0.2 and t.data_digest == other.digest
    clear_dataset_cache()


def test_thread_count_and_data_are_in_the_teacher_key(digits_data, tmp_path) -> None:
    arch = teacher_architecture("digitsnet", (1, 8, 8), 10)
    one, two = Recipe(epochs=3, threads=1), Recipe(epochs=3, threads=2)
    assert teacher_cache_path(arch, digits_data, one, cache_dir=tmp_path) != teacher_cache_path(
        arch, digits_data, two, cache_dir=tmp_path)
    assert teacher_cache_path(arch, digits_data, one, "cpu", tmp_path) != teacher_cache_path(
        arch, digits_data, one, "cuda", tmp_path)


def test_diverged_teacher_is_refused_at_reset(tmp_path) -> None:
    env = make_digits_env(teacher_recipe={"epochs": 2, "batch_size": 64, "lr": 1e6})
    with pytest.raises(TeacherInvalidError, match="non-finite|chance"):
        env.reset(seed=0)


def test_chance_level_checkpoint_is_refused(tmp_path, digits_data) -> None:
    arch = teacher_architecture("digitsnet", (1, 8, 8), 10)
    module = build(arch)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()  # constant logits: always class 0
    path = tmp_path / "zero.pt"
    torch.save(module.state_dict(), path)
    with pytest.raises(TeacherInvalidError, match="chance"):
        load_teacher("digitsnet", digits_data, checkpoint=path)
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in module.state_dict().items()}
    torch.save(nan, path)
    env = make_digits_env(teacher_checkpoint=str(path))
    with pytest.raises(TeacherInvalidError, match="non-finite"):
        env.reset()


def _cifar_like_npz(path: pathlib.Path, n: int = 300) -> str:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=np.arange(n) % 10)
    return f"npz:{path}"


def test_long_teacher_training_stops_at_reset_with_the_ways_out(tmp_path) -> None:
    name = _cifar_like_npz(tmp_path / "c.npz")
    env = gym.make("N2N-ResNet34-CIFAR10-v0", dataset=name, protocol="tiny", progress=False, device="cpu",
                   teacher_recipe={"epochs": 2000, "batch_size": 128, "lr": 0.1})
    start = time.perf_counter()
    with pytest.raises(TeacherTrainingTooLong) as exc:
        env.reset(seed=0)
    assert time.perf_counter() - start < 120  # seconds, not hours (a loaded 2-core machine)
    msg = str(exc.value)
    for way in ("device='cuda'", "teacher_checkpoint", "n2n-gym teacher train",
                "teacher_recipe", "teacher_max_minutes=float('inf')", "N2N_TEACHER_MAX_MINUTES"):
        assert way in msg, way
    assert exc.value.estimate.seconds > 30 * 60 and exc.value.estimate.steps == 2000  # 240 training images: 1 step each
    assert not list((pathlib.Path(os.environ["N2N_CACHE"]) / "teachers").glob("resnet34-*.pt"))


def test_the_limit_is_configurable(tmp_path, monkeypatch, digits_data) -> None:
    recipe = Recipe(epochs=3, batch_size=64, lr=0.05, seed=1)
    monkeypatch.setenv("N2N_TEACHER_MAX_MINUTES", "0.00001")
    with pytest.raises(TeacherTrainingTooLong, match="over the limit"):
        load_teacher("digitsnet", digits_data, recipe=recipe, cache_dir=tmp_path, progress=False)
    t = load_teacher("digitsnet", digits_data, recipe=recipe, cache_dir=tmp_path, progress=False, max_minutes=float("inf"))
    assert t.source == "trained"
    with pytest.raises(ValueError, match="teacher training limit"):
        make_digits_env(teacher_max_minutes=-1)
    with pytest.raises(TypeError, match="number of minutes"):
        make_digits_env(teacher_max_minutes="10")


def test_resnet34_cifar10_reset_fails_within_seconds_on_cpu(tmp_path, monkeypatch) -> None:
    """The issue's example: with the data, the estimate and the ways out; without, the data error."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("N2N_DATA", str(empty))
    env = gym.make("N2N-ResNet34-CIFAR10-v0", protocol="tiny", device="cpu")
    with pytest.raises(DataUnavailableError, match="CIFAR-10"):
        env.reset()
    monkeypatch.undo()
    shared_data_root("cifar10/cifar10-train.npz")
    clear_dataset_cache()
    env = gym.make("N2N-ResNet34-CIFAR10-v0", protocol="tiny", device="cpu")
    start = time.perf_counter()
    with pytest.raises(TeacherTrainingTooLong, match="n2n-gym teacher train N2N-ResNet34-CIFAR10-v0"):
        env.reset()
    assert time.perf_counter() - start < 120
    clear_dataset_cache()


def test_the_teacher_summary_names_no_machine_folder(digits_teacher, tmp_path, monkeypatch) -> None:
    """A run's student.json records its teacher by summary(): the sha256 identifies it, and the
    path of a pinned or cached teacher is written relative to the package or as $N2N_CACHE/..."""
    path = digits_teacher.summary()["path"]
    assert path.startswith(("n2n_gym/", "$N2N_CACHE/")), path
    monkeypatch.setenv("N2N_CACHE", str(tmp_path / "cache"))
    assert portable_path(tmp_path / "cache" / "teachers" / "t.pt") == "$N2N_CACHE/teachers/t.pt"
    package_file = pathlib.Path(n2n_gym.__file__).parent / "teachers" / "pinned" / "x.pt"
    assert portable_path(package_file) == "n2n_gym/teachers/pinned/x.pt"
    own = tmp_path / "mine" / "weights.pt"  # the user's own checkpoint: their path, as given
    assert portable_path(own) == str(own)
    beside = pathlib.Path(n2n_gym.__file__).parents[1] / "my_ckpts" / "w.pt"  # in a checkout, not the package
    assert portable_path(beside) == str(beside)
    monkeypatch.delenv("N2N_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert portable_path(tmp_path / "xdg" / "n2n_gym" / "t.pt") == "$XDG_CACHE_HOME/n2n_gym/t.pt"
