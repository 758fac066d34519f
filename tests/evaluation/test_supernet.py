"""n2n_gym.evaluation.supernet: shared weights that every student inherits, trained by the sandwich rule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.func import functional_call

from n2n_gym.evaluation.supernet import (
    SupernetNotFoundError,
    find_supernet,
    load_supernet,
    sample_student,
    save_supernet,
    score,
    shared_parameters,
    smallest_student,
    supernet_file_name,
    supernet_sha256,
    train_supernet,
)
from n2n_gym.ir.build import build, inherit_weights


@pytest.fixture(scope="module")
def teacher(digits_teacher):
    return digits_teacher.module


def _students(arch, n=12):
    rng = np.random.default_rng(0)
    return [arch, smallest_student(arch)] + [sample_student(arch, rng) for _ in range(n)]


def test_shared_parameters_are_what_inheritance_copies(teacher, digits_data):
    x, _ = digits_data.subset("val", 64)
    xb = digits_data.normalize(x)
    for arch in _students(teacher.arch):
        copied = inherit_weights(build(arch), teacher).eval()
        shared = build(arch).eval()
        params = shared_parameters(shared, teacher)
        with torch.no_grad():
            expected = copied(xb)
            # buffers from the copy (running statistics): the same network, weights by selection
            got = functional_call(shared, (params, dict(copied.named_buffers())), (xb,))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_sampled_students_cover_removal_and_widths(teacher):
    archs = _students(teacher.arch, 40)
    assert len({a.canonical_hash() for a in archs}) > 30
    assert any(len(a) < len(teacher.arch) for a in archs)  # some layers removed
    assert smallest_student(teacher.arch).params < min(a.params for a in archs[2:])


def test_a_student_gradient_lands_on_the_channels_it_uses(teacher, digits_data):
    arch = smallest_student(teacher.arch)
    student = build(arch).train()
    supernet = build(teacher.arch)
    supernet.load_state_dict(teacher.state_dict())
    x, _ = digits_data.subset("train", 32)
    out = functional_call(student, (shared_parameters(student, supernet), dict(student.named_buffers())),
                          (digits_data.normalize(x),))
    out.square().mean().backward()
    first = supernet.layers[0][0].weight.grad  # the first conv: the smallest student keeps 10 of its channels
    used = first.abs().flatten(1).sum(1) > 0
    assert 0 < int(used.sum()) <= arch.layers[0].out < first.shape[0]


def test_training_improves_the_small_students_and_resumes(teacher, digits_data, tmp_path):
    students = _students(teacher.arch, 6)[1:]  # without the teacher's own architecture
    before = [score(a, teacher, digits_data, bn_images=256)[0] for a in students]
    kw = dict(epochs=2, batch_size=64, lr=1e-3, train_images=512, seed=0)
    whole = train_supernet(teacher, digits_data, **kw)
    after = [score(a, whole, digits_data, bn_images=256)[0] for a in students]
    assert np.mean(after) > np.mean(before)
    # killed after 5 of its 16 steps, then resumed from the checkpoint: the same supernet
    ckpt = tmp_path / "s.ckpt"

    class Killed(Exception):
        pass

    def kill(step, steps, loss):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train_supernet(teacher, digits_data, checkpoint=ckpt, checkpoint_every=5, on_step=kill, **kw)
    resumed = train_supernet(teacher, digits_data, checkpoint=ckpt, checkpoint_every=5, **kw)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
    save_supernet(tmp_path / "s.pt", resumed, teacher_sha256="x")
    again = load_supernet(tmp_path / "s.pt")
    assert score(students[0], again, digits_data, bn_images=256)[0] == score(students[0], resumed, digits_data,
                                                                              bn_images=256)[0]


@pytest.fixture(scope="module")
def pinned_supernet(digits_teacher, digits_data, tmp_path_factory):
    """A briefly trained supernet of the digits teacher, saved under the name find_supernet looks for."""
    folder = tmp_path_factory.mktemp("supernets")
    supernet = train_supernet(digits_teacher.module, digits_data, epochs=1, train_images=256, seed=0)
    save_supernet(folder / "tmp.pt", supernet, teacher_sha256=digits_teacher.sha256)
    sha = supernet_sha256(folder / "tmp.pt")
    (folder / "tmp.pt").rename(folder / f"digits-{supernet_file_name(sha)}")
    return folder, sha, supernet


def _supernet_protocol(sha):
    from n2n_gym.evaluation.protocols import Protocol

    return Protocol("sn-bn", "supernet", 0, None, None, None, 64, 1e-3, 0.0, False, bn_recalibration=512, supernet=sha)


def test_a_supernet_protocol_scores_a_student_as_the_fidelity_study_does(pinned_supernet, digits_data, monkeypatch):
    from conftest import make_digits_env

    folder, sha, supernet = pinned_supernet
    monkeypatch.setenv("N2N_TEACHERS", str(folder))
    protocol = _supernet_protocol(sha)
    env = make_digits_env(protocol=protocol, cache=False)
    try:
        env.reset(seed=0)
        ev = env.unwrapped.evaluator
        arch = sample_student(ev.teacher.architecture, np.random.default_rng(3))
        got = ev.evaluate(arch, protocol)
        assert got.valid and got.accuracy == score(arch, supernet, digits_data, bn_images=512)[0]
        inherited = ev.key(arch, dataclasses.replace(protocol, init="inherit", supernet=None), 0)
        assert ev.key(arch, protocol, 0) != inherited  # the supernet is part of the cache key
    finally:
        env.close()


def test_a_missing_or_foreign_supernet_is_an_error_where_the_env_is_given_it(pinned_supernet, digits_teacher,
                                                                           digits_data, tmp_path, monkeypatch):
    from conftest import make_digits_env

    folder, sha, supernet = pinned_supernet
    monkeypatch.setenv("N2N_TEACHERS", str(tmp_path))
    (tmp_path / f"x-{supernet_file_name(sha)}").write_bytes(b"not a supernet")  # damaged: skipped, not fatal
    env = make_digits_env(protocol=_supernet_protocol(sha), cache=False)
    with pytest.raises(SupernetNotFoundError, match="N2N_TEACHERS"):
        env.reset(seed=0)
    env.close()
    save_supernet(tmp_path / "other.pt", supernet, teacher_sha256="0" * 64)
    (tmp_path / "other.pt").rename(tmp_path / f"{sha}.pt")
    with pytest.raises(ValueError, match="not of this env's teacher"):
        find_supernet(sha, digits_teacher.sha256)


def test_a_supernet_of_another_architecture_is_refused(pinned_supernet, digits_teacher, tmp_path, monkeypatch):
    """Break-it 3 #4: a narrow network saved as a supernet was accepted, and wider students took
    partly random weights."""
    from conftest import make_digits_env

    narrow = build(smallest_student(digits_teacher.architecture))
    save_supernet(tmp_path / "n.pt", narrow, teacher_sha256=digits_teacher.sha256)
    sha = supernet_sha256(tmp_path / "n.pt")
    (tmp_path / "n.pt").rename(tmp_path / supernet_file_name(sha))
    monkeypatch.setenv("N2N_TEACHERS", str(tmp_path))
    env = make_digits_env(protocol=_supernet_protocol(sha), cache=False)
    with pytest.raises(ValueError, match="another architecture than the teacher's"):
        env.reset(seed=0)
    env.close()


def test_folders_are_searched_in_order_and_a_mislabelled_copy_is_passed_over(pinned_supernet, digits_teacher,
                                                                             tmp_path, monkeypatch):
    import shutil

    folder, sha, supernet = pinned_supernet
    foreign = tmp_path / "a_foreign"
    foreign.mkdir()
    save_supernet(foreign / supernet_file_name(sha), supernet, teacher_sha256="0" * 64)
    monkeypatch.setenv("N2N_TEACHERS", f"{folder}:{foreign}")
    assert find_supernet(sha, digits_teacher.sha256).parent == folder
    monkeypatch.setenv("N2N_TEACHERS", f"{foreign}:{folder}")
    assert find_supernet(sha, digits_teacher.sha256).parent == folder  # the later, right copy
    good = tmp_path / "b_good"
    shutil.copytree(folder, good)
    monkeypatch.setenv("N2N_TEACHERS", f"{good}:{folder}")
    assert find_supernet(sha, digits_teacher.sha256).parent == good  # N2N_TEACHERS's order, not the paths'


def test_a_worker_gets_the_supernet_with_the_evaluator(pinned_supernet, digits_teacher, digits_data, monkeypatch):
    """Break-it 3 #8: a worker process searched for the file again and scored -1 per student
    where it could not see it."""
    import pickle

    from n2n_gym.evaluation.evaluator import Evaluator

    folder, sha, supernet = pinned_supernet
    monkeypatch.setenv("N2N_TEACHERS", str(folder))
    ev = Evaluator(digits_teacher, digits_data)
    protocol = ev.prepare(_supernet_protocol(sha))
    monkeypatch.setenv("N2N_TEACHERS", "/nonexistent")  # the worker cannot find it
    worker = pickle.loads(pickle.dumps(ev))
    arch = sample_student(digits_teacher.architecture, np.random.default_rng(3))
    got = worker.evaluate(arch, protocol)
    assert got.valid and got.accuracy == ev.evaluate(arch, protocol).accuracy


def test_save_supernet_needs_the_teacher(teacher, tmp_path):
    with pytest.raises(TypeError):
        save_supernet(tmp_path / "x.pt", teacher)  # noqa - the keyword is required
    with pytest.raises(ValueError, match="teacher_sha256"):
        save_supernet(tmp_path / "x.pt", teacher, teacher_sha256="")
