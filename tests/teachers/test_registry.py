"""Pinned teachers and identity by content (issues 11-B, 11-2 and 12): the registry, the
content sha256 of weights and data, accuracies measured on the env's own splits, refusal of
diverged or chance-level teachers, the training-time guard at reset, `n2n-gym teacher`, and
`n2n-gym validate` on the committed digits records."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import SMALL_DIGITS_RECIPE, make_digits_env, shared_data_root

import n2n_gym
from n2n_gym.data.datasets import (
    DataUnavailableError,
    clear_dataset_cache,
    load_dataset,
)
from n2n_gym.ir.build import build
from n2n_gym.ir.zoo import teacher_architecture
from n2n_gym.teachers import registry as reg
from n2n_gym.teachers.teacher import (
    Recipe,
    TeacherInvalidError,
    TeacherTrainingTooLong,
    load_teacher,
    pin_teacher,
    save_teacher,
    teacher_cache_path,
    weights_sha256,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS_PIN = reg.pins()["digitsnet-digits"]


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


# ------------------------------------------------------------------ identity by content


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


# ------------------------------------------------------------------ invalid teachers


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


# ------------------------------------------------------------------ the registry


def test_the_default_env_uses_the_shipped_pinned_teacher() -> None:
    env = gym.make(n2n_gym.DEFAULT_ENV_ID, protocol="tiny", progress=False, device="cpu", cache=False)
    env.reset(seed=0)
    t = env.unwrapped.teacher
    assert (t.pin, t.source, t.sha256) == ("digitsnet-digits", "pinned", DIGITS_PIN.sha256)
    assert pathlib.Path(t.path).parent == reg.PINNED_DIR and DIGITS_PIN.stored
    assert (t.val_accuracy, t.test_accuracy) == (DIGITS_PIN.val_accuracy, DIGITS_PIN.test_accuracy)
    assert t.data_digest == DIGITS_PIN.data_digest
    assert pathlib.Path(t.path).stat().st_size == DIGITS_PIN.file_bytes < 1_000_000
    env.close()


def test_teachers_folder_comes_first_and_is_verified(tmp_path, monkeypatch, digits_teacher, digits_data) -> None:
    folder = tmp_path / "teachers"
    folder.mkdir()
    shutil.copy(reg.PINNED_DIR / DIGITS_PIN.file, folder / DIGITS_PIN.file)
    monkeypatch.setenv("N2N_TEACHERS", str(folder))
    t = load_teacher("digitsnet", digits_data, progress=False)
    assert pathlib.Path(t.path).parent == folder and t.pin == DIGITS_PIN.id
    # a file of that name with other weights is skipped, with a warning, for the next place
    save_teacher(folder / DIGITS_PIN.file, digits_teacher.module, digits_data)
    with pytest.warns(UserWarning, match="not the pinned"):
        t = load_teacher("digitsnet", digits_data, progress=False)
    assert pathlib.Path(t.path).parent == reg.PINNED_DIR and t.sha256 == DIGITS_PIN.sha256


def test_every_registered_env_has_a_teacher_entry_and_pins_are_consistent() -> None:
    for pin in reg.pins().values():
        arch = teacher_architecture(pin.teacher, n2n_gym.data.dataset_info(pin.dataset).input_shape,
                                    n2n_gym.data.dataset_info(pin.dataset).num_classes)
        assert arch.params == pin.params and len(pin.sha256) == 64 and pin.reproduce.startswith("n2n-gym teacher")
        assert 0 < pin.test_accuracy <= 1 and 0 < pin.val_accuracy <= 1
        if pin.stored:
            path = reg.PINNED_DIR / pin.file
            assert path.stat().st_size == pin.file_bytes
            assert weights_sha256(torch.load(path, weights_only=True)["state_dict"]) == pin.sha256
    for env_id in n2n_gym.ENVS:
        reg.env_teacher(env_id)  # every id resolves


# ------------------------------------------------------------------ no silent long jobs


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


# ------------------------------------------------------------------ CLI and validate


def _cli(capsys, *args: str) -> tuple[int, str]:
    from n2n_gym.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def test_teacher_list_and_verify(capsys) -> None:
    code, out = _cli(capsys, "teacher", "list", "--no-estimate")
    assert code == 0
    for env_id in n2n_gym.ENVS:
        assert env_id in out
    assert DIGITS_PIN.sha256[:12] in out
    code, out = _cli(capsys, "teacher", "list", "--json", n2n_gym.DEFAULT_ENV_ID)
    rows = json.loads(out)
    assert rows[0]["pin"] == "digitsnet-digits" and rows[0]["present"] and rows[0]["estimated_train_seconds"] > 0
    code, out = _cli(capsys, "teacher", "verify", n2n_gym.DEFAULT_ENV_ID)
    assert code == 0 and "OK: the pinned teacher" in out, out


def test_committed_digits_records_validate_and_unknown_teachers_are_unverifiable(tmp_path, capsys) -> None:
    lines = (REPO / "benchmarks/results/leaderboard-digits.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    assert record["teacher"]["sha256"] in DIGITS_PIN.legacy_sha256  # written before identity by content
    unknown = dict(record, run_id="another-run", teacher=dict(record["teacher"], sha256="0" * 64))
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(unknown) + "\n")
    code, out = _cli(capsys, "validate", str(path))
    assert "PASS" in out and "UNVERIFIABLE" in out and "in no teacher registry" in out, out
    assert "1 passed, 0 failed, 1 unverifiable" in out and code == 3


def test_pin_a_checkpoint_measures_it_and_writes_the_entry(tmp_path, digits_teacher, digits_data) -> None:
    ckpt = tmp_path / "t.pt"
    save_teacher(ckpt, digits_teacher.module, digits_data, Recipe(**SMALL_DIGITS_RECIPE), val_accuracy=0.5,
                 test_accuracy=0.5)  # numbers the pin must not copy
    registry = tmp_path / "registry.json"
    pin = pin_teacher(n2n_gym.DEFAULT_ENV_ID, ckpt, registry=registry, pinned_dir=tmp_path / "pinned",
                      train_seconds=1.0, legacy_sha256=("f" * 64,), legacy_note="test")
    (again,) = reg.pins(registry).values()
    assert again == pin and pin.sha256 == digits_teacher.sha256 and pin.val_accuracy == digits_teacher.val_accuracy
    assert pin.recipe["epochs"] == SMALL_DIGITS_RECIPE["epochs"] and pin.data_digest == digits_data.digest
    stored = tmp_path / "pinned" / pin.file
    assert stored.stat().st_size == pin.file_bytes and pin.knows("f" * 64) and pin.knows(pin.sha256)
    assert weights_sha256(torch.load(stored, weights_only=True)["state_dict"]) == pin.sha256


def test_download_from_a_base_url_only_where_allowed(tmp_path, monkeypatch) -> None:
    """$N2N_TEACHERS_URL through urllib (a file:// base URL: no network in tests)."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(reg.PINNED_DIR / DIGITS_PIN.file, served / DIGITS_PIN.file)
    monkeypatch.setenv("N2N_TEACHERS_URL", served.as_uri())
    monkeypatch.setenv("N2N_OFFLINE", "1")
    assert reg.download(DIGITS_PIN) is None  # offline: never fetched
    monkeypatch.setenv("N2N_OFFLINE", "0")
    monkeypatch.setenv("N2N_CACHE", str(tmp_path / "cache"))
    got = reg.download(DIGITS_PIN)
    assert got == tmp_path / "cache" / "teachers" / "pinned" / DIGITS_PIN.file
    assert weights_sha256(torch.load(got, weights_only=True)["state_dict"]) == DIGITS_PIN.sha256
    assert got in reg.candidates(DIGITS_PIN)


def test_a_given_checkpoint_of_a_pinned_teacher_is_recognised(tmp_path, digits_data) -> None:
    """The pinned weights in any file are the pinned teacher (accuracies from the pin, on its data)."""
    state = torch.load(reg.PINNED_DIR / DIGITS_PIN.file, weights_only=True)["state_dict"]
    path = tmp_path / "plain.pt"
    torch.save(state, path)
    t = load_teacher("digitsnet", digits_data, checkpoint=path)
    assert (t.pin, t.sha256, t.val_accuracy) == (DIGITS_PIN.id, DIGITS_PIN.sha256, DIGITS_PIN.val_accuracy)


def test_mnist_records_of_the_unpinned_teacher_are_unverifiable_without_training(tmp_path, monkeypatch):
    """The committed MNIST records carry a teacher nobody can obtain, while the env's teacher
    is pinned to other weights: validate says so at once, without provisioning (training) it."""
    import io

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
