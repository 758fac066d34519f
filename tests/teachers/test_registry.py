"""n2n_gym.teachers.registry: pinned teachers, identity by content, the shipped pins, the teachers
folder, pinning a checkpoint, downloads from a base URL."""

from __future__ import annotations

import pathlib
import shutil

import gymnasium as gym
import pytest
import torch
from conftest import SMALL_DIGITS_RECIPE

import n2n_gym
from n2n_gym.ir.zoo import teacher_architecture
from n2n_gym.teachers import registry as reg
from n2n_gym.teachers.teacher import (
    Recipe,
    load_teacher,
    pin_teacher,
    save_teacher,
    weights_sha256,
)

DIGITS_PIN = reg.pins()["digitsnet-digits"]


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


def test_a_teachers_folder_file_with_nan_weights_is_skipped_for_the_pinned_one(tmp_path, monkeypatch,
                                                                               digits_data) -> None:
    """Break-it 21 F5: a copy of the pinned file with one NaN weight in $N2N_TEACHERS made reset()
    raise TeacherInvalidError ("its training diverged") although the valid pinned file was there.
    It is a candidate that is not the pin: skipped with a warning naming it, the next one is used."""
    folder = tmp_path / "teachers"
    folder.mkdir()
    ckpt = torch.load(reg.PINNED_DIR / DIGITS_PIN.file, map_location="cpu", weights_only=True)
    state = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("nan")
    torch.save(ckpt, folder / DIGITS_PIN.file)
    monkeypatch.setenv("N2N_TEACHERS", str(folder))
    with pytest.warns(UserWarning, match="skipping .*teachers.*not the pinned.*non-finite") as caught:
        t = load_teacher("digitsnet", digits_data, progress=False)
    assert pathlib.Path(t.path).parent == reg.PINNED_DIR and t.sha256 == DIGITS_PIN.sha256
    assert not any("diverged" in str(w.message) for w in caught)
    # through the env, as in the break-it: reset() works on the pinned teacher
    env = gym.make(n2n_gym.DEFAULT_ENV_ID, protocol="tiny", progress=False, device="cpu", cache=False)
    with pytest.warns(UserWarning, match=str(folder)):
        env.reset(seed=0)
    assert env.unwrapped.teacher.sha256 == DIGITS_PIN.sha256
    env.close()
