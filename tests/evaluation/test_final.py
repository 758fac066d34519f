"""n2n_gym.evaluation.final: the final distillation and the same-size alternatives to a searched student."""

from __future__ import annotations

import re

import pytest

from n2n_gym.evaluation.final import alternatives, final_distill, final_protocol, final_students
from n2n_gym.ir.edits import layer_rules, uniform_width_student


def test_final_protocol_is_the_practitioners_run():
    p = final_protocol(30, 1e-3)
    assert (p.init, p.epochs, p.train_images, p.val_images, p.test_images, p.augment, p.lr_drop, p.loss) == \
        ("inherit", 30, None, None, None, True, True, "mse")
    assert final_protocol(3, init="random").init == "random"
    # the n2n recipe's protocol is the one runs before recipes trained (its checkpoint keys unchanged)
    assert p.to_dict() == {"name": "final-30ep", "init": "inherit", "epochs": 30, "train_images": None,
                           "val_images": None, "test_images": None, "batch_size": 64, "lr": 1e-3,
                           "weight_decay": 0.0, "augment": True, "lr_drop": True}


def test_the_kd_sgd_recipe_is_the_usual_cifar_resnet_training():
    p = final_protocol(40, recipe="kd-sgd")
    assert (p.optimizer, p.cosine, p.lr_drop, p.loss, p.lr, p.weight_decay, p.augment) == \
        ("sgd", True, False, "kd", 0.05, 5e-4, True)
    assert p.name == "final-40ep-kd-sgd" and final_protocol(40, 0.1, recipe="kd-sgd").lr == 0.1
    with pytest.raises(ValueError, match="unknown final distillation recipe 'adamw'"):
        final_protocol(40, recipe="adamw")


def test_a_bf16_final_distillation_is_its_own_protocol():
    """bf16 names itself (its checkpoints are not the fp32 run's); fp32's protocol is unchanged."""
    p = final_protocol(40, recipe="kd-sgd", precision="bf16")
    assert (p.name, p.precision, p.to_dict()["precision"]) == ("final-40ep-kd-sgd-bf16", "bf16", "bf16")
    assert "precision" not in final_protocol(40, recipe="kd-sgd").to_dict()
    with pytest.raises(ValueError, match="precision"):
        final_protocol(40, precision="fp16")


def test_alternatives_are_the_same_uniform_student_with_and_without_inherited_weights(digits_teacher, digits_data):
    from n2n_gym.evaluation.evaluator import Evaluator

    ev = Evaluator(digits_teacher, digits_data)
    start = digits_teacher.architecture
    target = start.params // 3
    out = alternatives(ev, start, target, epochs=1, lr=1e-3, seed=0)
    assert set(out) == {"magnitude", "thin"}
    arch, ratio = uniform_width_student(start, target)
    for r in out.values():
        assert r["params"] == arch.params <= target and r["width_ratio"] == ratio
        assert 0 <= r["val_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1
    # one epoch from the teacher's weights beats one epoch from scratch on the same architecture
    assert out["magnitude"]["val_accuracy"] > out["thin"]["val_accuracy"]
    # the magnitude row is exactly final_distill of that architecture (one training path)
    _, row = final_distill(ev, arch, 1, 1e-3, 0)
    assert row["val_accuracy"] == out["magnitude"]["val_accuracy"]
    with pytest.raises(ValueError, match="unknown alternatives"):
        alternatives(ev, start, target, 1, 1e-3, 0, which=("slim",))


def test_final_students_side_by_side_train_what_one_process_trains(digits_teacher, digits_data, tmp_path):
    # two worker processes (spawned, one torch thread each) against this process on one thread: the same
    # students to the last bits but for the thread-dependent reduction order, and checkpoints written
    import torch

    from n2n_gym.evaluation.evaluator import Evaluator

    ev = Evaluator(digits_teacher, digits_data)
    start = digits_teacher.architecture
    arch, _ = uniform_width_student(start, start.params // 3)
    jobs = [("a", arch, "inherit", tmp_path / "a.ckpt"), ("b", arch, "random", tmp_path / "b.ckpt")]
    side_by_side = final_students(ev, jobs, 1, 1e-3, 0, workers=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = final_students(ev, [(n, a, i, None) for n, a, i, _ in jobs], 1, 1e-3, 0, workers=1)
    finally:
        torch.set_num_threads(threads)
    assert list(side_by_side) == ["a", "b"] and (tmp_path / "a.ckpt").exists() and (tmp_path / "b.ckpt").exists()
    for name in ("a", "b"):
        (m1, r1), (m2, r2) = side_by_side[name], alone[name]
        assert r1["init"] == r2["init"] and r1["params"] == r2["params"] == arch.params
        assert abs(r1["val_accuracy"] - r2["val_accuracy"]) <= 0.01
        w1, w2 = m1.state_dict(), m2.state_dict()
        assert all(torch.allclose(w1[k].float(), w2[k].float(), atol=1e-4) for k in w2)
    with pytest.raises(ValueError, match="distinct"):
        final_students(ev, [jobs[0], jobs[0]], 1, 1e-3, 0)


def test_uniform_width_student_keeps_every_layer_and_only_shrinks_free_widths(digits_teacher):
    start = digits_teacher.architecture
    arch, ratio = uniform_width_student(start, start.params // 2)
    assert 0 < ratio < 1 and len(arch) == len(start) and arch.params <= start.params // 2
    shrunk = [b.out < a.out for a, b in zip(start.layers, arch.layers)]
    assert shrunk[:-1] == [rule.shrinkable for rule in layer_rules(start)][:-1]  # the logits layer keeps its classes
    with pytest.raises(ValueError, match="narrowest"):
        uniform_width_student(start, 1)


def test_the_duration_estimate_counts_the_protocols_images(digits_teacher, digits_data):
    from n2n_gym.evaluation.evaluator import Evaluator
    from n2n_gym.evaluation.final import estimate_seconds, throughput
    from n2n_gym.evaluation.protocols import PROTOCOLS

    rates = throughput(Evaluator(digits_teacher, digits_data))
    assert set(rates) == {"augmented", "reused_logits", "inference"} and all(v > 0 for v in rates.values())
    flat = {"augmented": 100.0, "reused_logits": 200.0, "inference": 1000.0}
    est = estimate_seconds(flat, PROTOCOLS["fast"], 10, 45000, 5000, 10000, 2, 3, cores=8)
    assert est["per_student"] == pytest.approx(2 * 1024 / 200 + 2000 / 1000)
    assert est["search"] == pytest.approx(10 * est["per_student"])
    per_final = 2 * 45000 / 100 + 15000 / 1000
    assert est["per_final_student"] == pytest.approx(per_final) and est["final"] == pytest.approx(3 * per_final)

    def final(workers: int, cores: int) -> float:
        return estimate_seconds(flat, PROTOCOLS["fast"], 10, 45000, 5000, 10000, 2, 3, final_workers=workers,
                                cores=cores)["final"] / per_final

    # three final students on 8 cores: two at a time take two rounds, three at a time one; on 2 cores
    # three processes share them (1.5 distillations' time), two then one take 2; on 1 core always 3
    assert (final(2, 8), final(3, 8), final(3, 2), final(2, 2), final(3, 1)) == pytest.approx((2, 1, 1.5, 2, 3))
    # ResNet-20 v1's protocol recalibrates batch norm on 2,048 images: forward passes that count too;
    # two search workers halve the search (on two cores or more), not the final distillation
    est = estimate_seconds(flat, PROTOCOLS["resnet20-v1"], 10, 45000, 5000, 10000, 2, 3, workers=2, cores=2)
    assert est["per_student"] == pytest.approx(2 * 1024 / 200 + (2000 + 2048) / 1000)
    assert est["search"] == pytest.approx(10 * est["per_student"] / 2)
    assert est["final"] == pytest.approx(3 * per_final)
    assert estimate_seconds(flat, PROTOCOLS["resnet20-v1"], 10, 45000, 5000, 10000, 2, 3, workers=2,
                            cores=1)["search"] == pytest.approx(10 * est["per_student"])


def test_a_resumed_final_distillation_counts_the_seconds_of_every_invocation(digits_teacher, digits_data, tmp_path):
    """The checkpoint keeps the training seconds of every invocation: a row's seconds after a
    resume are the whole distillation's, not the last invocation's (a committed 80-epoch run's
    rows gave the last 48 epochs' time)."""
    import torch

    from n2n_gym.evaluation.evaluator import Evaluator

    ev = Evaluator(digits_teacher, digits_data)
    arch, _ = uniform_width_student(digits_teacher.architecture, digits_teacher.architecture.params // 3)
    ckpt = tmp_path / "a.ckpt"
    _, row = final_distill(ev, arch, 2, 1e-3, 0, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 2 and 0 < state["seconds"] <= row["seconds"]
    # as if an earlier invocation had spent 1000 s on the first epoch and died in the second
    torch.save({**state, "epoch": 1, "seconds": 1000.0}, ckpt)
    _, resumed = final_distill(ev, arch, 2, 1e-3, 0, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=True)["seconds"] > 1000.0 and resumed["seconds"] > 1000.0
    # everything trained before: this invocation only scores, the row still says what training took
    _, done = final_distill(ev, arch, 2, 1e-3, 0, checkpoint=ckpt)
    assert done["seconds"] > 1000.0


def test_final_students_show_the_epochs_done_from_their_checkpoints(digits_teacher, digits_data, tmp_path, capsys):
    """The final distillation runs for an hour or more on CIFAR-10: a bar of epochs with an ETA,
    read from the checkpoints (the workers are other processes); a resumed run starts at its
    checkpoints' epochs. Without progress, or without checkpoints, nothing is printed."""
    from n2n_gym.evaluation.evaluator import Evaluator

    ev = Evaluator(digits_teacher, digits_data)
    arch, _ = uniform_width_student(digits_teacher.architecture, digits_teacher.architecture.params // 3)
    jobs = [("a", arch, "inherit", tmp_path / "a.ckpt")]
    final_students(ev, jobs, 2, 1e-3, 0, progress=True)
    err = capsys.readouterr().err
    assert "final distillation" in err and "2/2" in err and "0/2" in err
    final_students(ev, jobs, 2, 1e-3, 0, progress=True)  # resumed: both epochs are in the checkpoint
    err = capsys.readouterr().err
    assert "2/2" in err and "0/2" not in err
    # other settings: the 2-epoch checkpoint is another distillation's, discarded; the bar starts at 0
    # (it started at the file's epochs and counted back: a negative ETA, from a break-it pass)
    final_students(ev, jobs, 3, 1e-3, 0, progress=True)
    err = capsys.readouterr().err
    assert re.search(r"\d+/3", err).group() == "0/3" and "3/3" in err
    final_students(ev, jobs, 3, 1e-3, 0, progress=False)
    final_students(ev, [("b", arch, "inherit", None)], 1, 1e-3, 0, progress=True)
    assert "final distillation" not in capsys.readouterr().err


def test_the_final_bar_times_the_whole_distillation(tmp_path):
    """Side-by-side students finish their epochs in bursts: the ETA is the rate over the whole
    distillation (smoothing 0), not a moving average that read two epochs 10 s apart as the rate."""
    from n2n_gym.evaluation.final import _EpochProgress

    with _EpochProgress([tmp_path / "a.ckpt", tmp_path / "b.ckpt"], 40, enabled=True, interval=60) as progress:
        assert progress.bar.smoothing == 0 and progress.bar.total == 80 and progress.bar.n == 0


def test_a_script_without_the_main_guard_is_told_why_its_final_workers_die(tmp_path):
    """Spawned workers import the main script again; unguarded, they die at start. The pool's
    'terminated abruptly' becomes the reason and the fix (a break-it pass met the raw error)."""
    import os
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        import gymnasium as gym
        import n2n_gym
        from n2n_gym.evaluation.final import final_students
        ev = gym.make("N2N-DigitsNet-Digits-v0", protocol="tiny").unwrapped.evaluator
        arch = ev.teacher.architecture
        final_students(ev, [("a", arch, "inherit", None), ("b", arch, "inherit", None)], 1, 1e-3, 0, workers=2)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: a worker process of the final distillation died"), out.stderr[-2000:]
    assert 'if __name__ == "__main__":' in last and "final_workers=1" in last
