"""n2n_gym.evaluation.distill: the distillation losses, the step schedule and batch-norm recalibration."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from n2n_gym.evaluation.distill import (
    KD_ALPHA,
    distill,
    distillation_loss,
    drop_epoch,
    epoch_lr,
    recalibrate_batchnorm,
)


def test_kd_loss_of_matching_logits_is_the_label_term_alone():
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    kd = distillation_loss(logits, logits.clone(), "kd", labels)
    assert torch.allclose(kd, (1 - KD_ALPHA) * F.cross_entropy(logits, labels), atol=1e-6)
    assert torch.equal(distillation_loss(logits, logits + 1, "mse", None), torch.tensor(1.0))


@pytest.mark.parametrize("epochs, first_dropped", [(1, 1), (2, 1), (3, 2), (5, 3), (30, 20)])
def test_the_lr_drops_after_two_thirds_and_never_before_the_second_epoch(epochs, first_dropped):
    assert drop_epoch(epochs) == first_dropped


def test_each_schedule_gives_each_epoch_its_lr():
    assert [epoch_lr(0.1, e, 4, lr_drop=False, cosine=False) for e in range(4)] == [0.1] * 4
    assert [epoch_lr(0.1, e, 3, lr_drop=True, cosine=False) for e in range(3)] == [0.1, 0.1, 0.1 / 10]
    cos = [epoch_lr(0.1, e, 4, lr_drop=False, cosine=True) for e in range(4)]
    # (1 + cos(pi e / 4)) / 2 for e = 0..3: 1, 0.854, 0.5, 0.146; never 0 (the last epoch still trains)
    assert cos == pytest.approx([0.1, 0.1 * 0.8535534, 0.05, 0.1 * 0.1464466])


def _tiny(digits_data):
    torch.manual_seed(0)
    c = digits_data.info.input_shape[0]
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, digits_data.info.num_classes))


def _run(digits_data, **kw):
    teacher, student = _tiny(digits_data), _tiny(digits_data)
    x, y = digits_data.split("train")
    distill(student, teacher, digits_data, x[:256], epochs=kw.pop("epochs"), batch_size=64, lr=1e-2,
            weight_decay=0.0, augment=False, generator=torch.Generator().manual_seed(0), y=y[:256], **kw)
    return torch.cat([p.detach().flatten() for p in student.parameters()])


def test_lr_drop_changes_training_only_from_its_epoch(digits_data):
    assert torch.equal(_run(digits_data, epochs=1, lr_drop=True), _run(digits_data, epochs=1))
    assert not torch.equal(_run(digits_data, epochs=3, lr_drop=True), _run(digits_data, epochs=3))


def test_sgd_and_cosine_train_otherwise_and_are_checked(digits_data):
    adam = _run(digits_data, epochs=2)
    sgd = _run(digits_data, epochs=2, optimizer="sgd")
    assert not torch.equal(sgd, adam)
    assert torch.equal(_run(digits_data, epochs=1, optimizer="sgd", cosine=True), _run(digits_data, epochs=1,
                                                                                       optimizer="sgd"))
    assert not torch.equal(_run(digits_data, epochs=2, optimizer="sgd", cosine=True), sgd)  # epoch 2 at lr / 2
    with pytest.raises(ValueError, match="optimizer must be"):
        _run(digits_data, epochs=1, optimizer="lion")
    with pytest.raises(ValueError, match="two lr schedules"):
        _run(digits_data, epochs=1, cosine=True, lr_drop=True)


def test_bf16_autocast_trains_on_the_cpu_otherwise_and_is_checked(digits_data):
    # (SGD: its step follows the gradient's size; Adam's sign-like steps magnify bf16's rounding near 0)
    fp32, bf16 = _run(digits_data, epochs=1, optimizer="sgd"), _run(digits_data, epochs=1, optimizer="sgd",
                                                                    precision="bf16")
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()  # the weights stay fp32
    assert not torch.equal(bf16, fp32)  # the forward passes ran in bf16
    assert torch.allclose(bf16, fp32, atol=1e-3)  # ... and trained the same way, to bf16's precision
    with pytest.raises(ValueError, match="precision must be one of"):
        _run(digits_data, epochs=1, precision="fp16")


def test_kd_trains_and_needs_labels(digits_data):
    assert not torch.equal(_run(digits_data, epochs=1, loss="kd"), _run(digits_data, epochs=1))
    x, _ = digits_data.split("train")
    m = _tiny(digits_data)
    with pytest.raises(ValueError, match="needs the labels"):
        distill(m, m, digits_data, x[:64], epochs=1, batch_size=64, lr=1e-3, weight_decay=0.0, augment=False,
                generator=torch.Generator(), loss="kd")


def test_zero_epochs_leave_the_weights_as_they_are(digits_data):
    teacher, student = _tiny(digits_data), _tiny(digits_data)
    before = copy.deepcopy(student.state_dict())
    x, _ = digits_data.split("train")
    distill(student, teacher, digits_data, x[:64], epochs=0, batch_size=64, lr=1e-2, weight_decay=0.0,
            augment=False, generator=torch.Generator())
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert not student.training


def test_batchnorm_recalibration_sets_the_statistics_of_the_given_images(digits_data):
    model = _tiny(digits_data)
    bn = model[1]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)
    x, _ = digits_data.split("train")
    x = x[:200]
    recalibrate_batchnorm(model, digits_data, x, batch_size=200)  # one batch: the exact statistics
    with torch.no_grad():
        xb = digits_data.normalize(x)
        h = model[0](xb)
    assert torch.allclose(bn.running_mean, h.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-3)
    assert bn.momentum == 0.1 and not model.training
    weights = [p.clone() for p in model.parameters()]
    recalibrate_batchnorm(model, digits_data, x, batch_size=64)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


class _Killed(Exception):
    pass


class _DiesAfter(nn.Module):
    """A network that stops the process's training (as a kill would) at its n-th forward pass."""

    def __init__(self, body: nn.Module, n: int | None):
        super().__init__()
        self.body, self.n, self.calls = body, n, 0

    def forward(self, x):
        self.calls += 1
        if self.n is not None and self.calls > self.n:
            raise _Killed
        return self.body(x)


@pytest.mark.parametrize("schedule", [{"lr_drop": True}, {"optimizer": "sgd", "cosine": True}],
                         ids=["adam-drop", "sgd-cosine"])
def test_a_killed_distillation_continues_from_its_checkpoint_to_the_same_weights(digits_data, tmp_path, schedule):
    x, _ = digits_data.split("train")
    x = x[:256]  # 4 batches of 64 per epoch

    def run(n, path, key="k"):
        teacher, student = _tiny(digits_data), _DiesAfter(_tiny(digits_data), n)
        distill(student, teacher, digits_data, x, epochs=3, batch_size=64, lr=1e-2, weight_decay=0.0, augment=True,
                generator=torch.Generator().manual_seed(0), checkpoint=path, checkpoint_key=key, **schedule)
        return torch.cat([p.detach().flatten() for p in student.parameters()]), student.calls

    whole, calls = run(None, tmp_path / "a.ckpt")
    assert calls == 12
    with pytest.raises(_Killed):
        run(10, tmp_path / "b.ckpt")  # killed in the third epoch: two epochs checkpointed
    resumed, calls = run(None, tmp_path / "b.ckpt")
    assert calls == 4  # only the third epoch ran again
    assert torch.equal(resumed, whole)
    # a finished checkpoint: nothing to train; another key's checkpoint: a warning and a fresh start
    assert run(None, tmp_path / "b.ckpt")[1] == 0
    with pytest.warns(UserWarning, match="another distillation"):
        again, calls = run(None, tmp_path / "b.ckpt", key="other")
    assert calls == 12 and torch.equal(again, whole)
    (tmp_path / "c.ckpt").write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="cannot resume"):
        assert torch.equal(run(None, tmp_path / "c.ckpt")[0], whole)


def test_the_augmented_teacher_logits_of_one_seed_are_reused_to_the_same_weights(digits_data):
    from n2n_gym.evaluation.distill import AugmentedLogits

    teacher = _tiny(digits_data).eval()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    x, _ = digits_data.subset("train", 256, seed=0)

    def student(seed, memo, init_seed=1):
        torch.manual_seed(init_seed)
        s = copy.deepcopy(_tiny(digits_data))
        for p in s.parameters():  # another student than the teacher
            p.data.add_(torch.randn_like(p) * 0.1)
        distill(s, teacher, digits_data, x, epochs=2, batch_size=64, lr=1e-2, weight_decay=0.0, augment=True,
                generator=torch.Generator().manual_seed(seed), logit_memo=memo)
        return s

    plain = student(0, None)
    memo = AugmentedLogits()
    first = student(0, memo)
    forwards = len(calls)
    again = student(0, memo, init_seed=2)  # a second student of the same seed: no teacher pass at all
    assert len(calls) == forwards and memo.hits == 2
    for a, b in zip(plain.state_dict().values(), first.state_dict().values()):
        assert torch.equal(a, b)  # the memo changes no weight
    alone = student(0, None, init_seed=2)
    for a, b in zip(alone.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    student(1, memo)  # another seed: other batches, computed, not served
    assert len(calls) > forwards and memo.hits == 2
    tiny = AugmentedLogits(max_bytes=4 * 64 * 10 * 4)  # room for one epoch of 4 batches
    student(0, tiny)
    assert len(tiny._epochs) == 1  # the oldest epoch dropped
