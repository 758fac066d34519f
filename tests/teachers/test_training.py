"""n2n_gym.teachers.training: ``accuracy`` refuses an empty split and does not depend on the batch
size; ``train_epoch`` lowers the loss of a tiny model on the digits data, deterministically for a
seeded generator, returns the epoch's mean loss, steps the scheduler and the progress once a batch
and trains even when called inside ``torch.no_grad()``; ``autocast`` is a no-op off CUDA."""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from n2n_gym.ir.build import build
from n2n_gym.ir.edits import apply_decisions
from n2n_gym.ir.zoo import teacher_architecture
from n2n_gym.teachers.training import (
    EVAL_BATCH,
    accuracy,
    autocast,
    predict_logits,
    train_epoch,
)


def _tiny_convnet(seed: int = 0) -> nn.Module:
    """The digits teacher's architecture at a quarter of its widths, freshly initialised."""
    torch.manual_seed(seed)
    arch = teacher_architecture("digitsnet", input_shape=(1, 8, 8), num_classes=10)
    return build(apply_decisions(arch, [0.25] * len(arch), 4))


def _linear(seed: int = 0) -> nn.Module:
    """A model without batch norm: its training-mode loss is its eval-mode loss."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def _train(model, data, epochs: int, *, lr: float = 0.05, seed: int = 0, **kw) -> list[float]:
    x, y = data.split("train")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    return [train_epoch(model, optimizer, None, data, x, y, 64, generator, **kw) for _ in range(epochs)]


class _Count:
    """What ``progress`` must offer (tqdm's ``update``)."""

    def __init__(self):
        self.n = 0

    def update(self, k: int) -> None:
        self.n += k


# ---- accuracy, predict_logits ------------------------------------------------------------------
def test_accuracy_refuses_an_empty_split(digits_teacher, digits_data):
    x, y = digits_data.split("val")
    with pytest.raises(ValueError, match="cannot measure accuracy on an empty split"):
        accuracy(digits_teacher.module, digits_data, x[:0], y[:0])


def test_accuracy_is_the_share_of_correct_argmax_at_any_batch_size(digits_teacher, digits_data):
    model = digits_teacher.module
    x, y = digits_data.split("val")
    with torch.no_grad():
        model.eval()
        want = float((model(digits_data.normalize(x)).argmax(1) == y).float().mean())
    model.train()  # accuracy measures in eval mode whatever the caller left
    for batch_size in (EVAL_BATCH, 7, len(x) + 1):
        assert accuracy(model, digits_data, x, y, batch_size) == pytest.approx(want, abs=1e-6)
    assert want == pytest.approx(digits_teacher.val_accuracy, abs=1e-6) and want > 0.9


def test_predict_logits_one_row_per_image_in_order(digits_teacher, digits_data):
    model = digits_teacher.module
    x, _ = digits_data.split("test")
    logits = predict_logits(model, digits_data, x, batch_size=13)
    assert logits.shape == (len(x), 10) and logits.dtype == torch.float32
    torch.testing.assert_close(predict_logits(model, digits_data, x[:5]), logits[:5])
    assert predict_logits(model, digits_data, x[:0]).numel() == 0


# ---- train_epoch ----------------------------------------------------------------------------
def test_train_epoch_lowers_the_loss_of_a_tiny_model(digits_data):
    model = _tiny_convnet()
    x, y = digits_data.split("val")
    before = accuracy(model, digits_data, x, y)
    losses = _train(model, digits_data, 3)
    assert all(math.isfinite(l) and l > 0 for l in losses)
    assert losses[2] < losses[0] * 0.8, losses
    after = accuracy(model, digits_data, x, y)
    assert after > max(before + 0.2, 0.5), (before, after)


def test_train_epoch_is_deterministic_for_a_seeded_generator(digits_data):
    runs = []
    for _ in range(2):
        model = _linear()
        runs.append((_train(model, digits_data, 1, seed=3), model.state_dict()))
    (loss_a, state_a), (loss_b, state_b) = runs
    assert loss_a == loss_b and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    other = _train(_linear(), digits_data, 1, seed=4)
    assert other != loss_a  # the generator draws the order (and the augmentation)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_train_epoch_returns_the_mean_loss_and_steps_once_a_batch(digits_data, label_smoothing):
    model = _linear()
    x, y = digits_data.split("train")
    x, y = x[:256], y[:256]  # 4 whole batches of 64
    with torch.no_grad():
        want = float(F.cross_entropy(model(digits_data.normalize(x)), y, label_smoothing=label_smoothing))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing moves: the mean over the epoch is exact
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    progress = _Count()
    loss = train_epoch(model, optimizer, scheduler, digits_data, x, y, 64, torch.Generator().manual_seed(0),
                       augment=False, progress=progress, label_smoothing=label_smoothing)
    assert loss == pytest.approx(want, rel=1e-5)
    assert progress.n == 4 and scheduler.last_epoch == 4


def test_train_epoch_trains_inside_no_grad(digits_data):
    model = _linear()
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        losses = _train(model, digits_data, 2)
    assert losses[1] < losses[0]
    assert not any(torch.equal(a, b) for a, b in zip(start, model.parameters()))


# ---- autocast -------------------------------------------------------------------------------------
def test_autocast_is_a_no_op_on_the_cpu():
    ctx = autocast("cpu")
    assert isinstance(ctx, contextlib.nullcontext)
    with autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_autocast_is_bf16_on_cuda():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CUDA is not available" on a machine without a GPU
        ctx = autocast("cuda:0")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
