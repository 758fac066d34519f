"""Logit distillation of students (MSE on logits, N2N; or knowledge distillation), batch-norm
recalibration and the finite-weights check. The supervised loop and the accuracy measure
are the teachers' (:mod:`n2n_gym.teachers.training`), shared here.

Everything works on whole uint8 tensors through :func:`n2n_gym.data.batches`; no
per-sample Python in any loop.
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from n2n_gym.data.datasets import Dataset, batches
from n2n_gym.teachers.training import (  # noqa: F401
    EVAL_BATCH,
    PRECISIONS,
    accuracy,
    autocast,
    predict_logits,
    train_epoch,
)
from n2n_gym.utils.files import atomic_torch_save

#: Knowledge distillation's temperature and weight of the soft term (Hinton et al. 2015,
#: "Distilling the Knowledge in a Neural Network"; T = 4, alpha = 0.9 as in the common
#: CIFAR setups, e.g. Tian et al. ICLR 2020's RepDistiller).
KD_TEMPERATURE = 4.0
KD_ALPHA = 0.9


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    x: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    augment: bool,
    generator: torch.Generator,
    teacher_logits: torch.Tensor | None = None,
    loss: str = "mse",
    y: torch.Tensor | None = None,
    lr_drop: bool = False,
    optimizer: str = "adam",
    cosine: bool = False,
    checkpoint: "str | os.PathLike | None" = None,
    checkpoint_key: str = "",
    logit_memo: "AugmentedLogits | None" = None,
    precision: str = "auto",
) -> nn.Module:
    """Distil the teacher into the student; ``epochs`` passes over uint8 ``x`` (N, C, H, W).

    ``checkpoint``: a file written atomically after every epoch (student, optimizer and
    generator state); a later call with the same file and ``checkpoint_key`` continues after
    its last finished epoch, to the same weights as an uninterrupted run. A file of another
    key is ignored (with a warning) and overwritten.

    ``loss="mse"``: regress the student's logits on the teacher's (N2N, Ashok et al. 2018).
    ``loss="kd"``: ``KD_ALPHA * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - KD_ALPHA) * CE(s, y)``
    with ``T = KD_TEMPERATURE`` (Hinton et al. 2015); needs the labels ``y`` (N,).
    ``lr_drop``: the last third of the epochs (at least the first epoch at ``lr``) at ``lr / 10``.
    ``optimizer``: ``"adam"`` (N2N's code) or ``"sgd"`` (Nesterov momentum 0.9, as in He et al.
    2016's CIFAR ResNets); ``weight_decay`` is either's L2 term.
    ``cosine``: epoch ``e`` of ``epochs`` at ``lr * (1 + cos(pi * e / epochs)) / 2`` (Loshchilov &
    Hutter 2017, no restarts; per epoch, so a resumed run is at the same lr); not with ``lr_drop``.
    ``teacher_logits`` (for ``x`` in order) are reused when given and ``augment`` is off.
    ``logit_memo`` (with ``augment``): the teacher's logits of each epoch's augmented batches,
    kept by :class:`AugmentedLogits` and reused by the next student of the same ``x`` and seed
    (the same batches, so the same logits; the student's weights are unchanged); one memo per
    ``precision``, as the teacher's logits differ in bf16.
    ``precision``: the forward passes of teacher and student, :func:`autocast`'s (``"auto"``:
    bf16 on CUDA, fp32 on the CPU; ``"bf16"``: bf16 on the CPU too); weights and optimizer
    state stay fp32.
    Raises :class:`NonFiniteError` when the loss diverges, ``ValueError`` for inconsistent arguments.
    """
    if loss not in ("mse", "kd"):
        raise ValueError(f"loss must be 'mse' or 'kd', got {loss!r}")
    if loss == "kd" and (y is None or len(y) != len(x)):
        raise ValueError("loss='kd' needs the labels y of the training images x (one per image)")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if cosine and lr_drop:
        raise ValueError("cosine and lr_drop are two lr schedules: set one of them")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    with torch.enable_grad():  # callers may step the env inside torch.no_grad()
        return _distill(student, teacher, data, x, epochs, batch_size, lr, weight_decay, augment, generator,
                        teacher_logits, loss, y, lr_drop, checkpoint, checkpoint_key, logit_memo, optimizer, cosine,
                        precision)


class AugmentedLogits:
    """The teacher's logits of augmented batches, per epoch, for students distilled alike.

    With augmentation the teacher's logits cannot be computed once for the training images
    (every batch is a new crop and flip), so each student pays a teacher forward pass per
    batch. But the batches of an epoch are a function of the images, the batch size and the
    generator's state at the epoch's start (shuffling and augmentation draw only from it), and
    every student of one seed starts from the same state: their batches, and so the teacher's
    logits, are the same. One memo per (teacher, images), e.g. per evaluator and training
    subset; an epoch is stored once it finished, keyed by the sha1 of the generator state;
    the oldest epochs are dropped beyond ``max_bytes``.
    """

    def __init__(self, max_bytes: int = 64 * 2**20):
        self.max_bytes = int(max_bytes)
        self._epochs: "collections.OrderedDict[tuple, tuple[list[torch.Tensor], int]]" = collections.OrderedDict()
        self._bytes = 0
        self.hits = 0  # epochs served from the memo (for tests and benchmarks)

    @staticmethod
    def key(n_images: int, batch_size: int, generator: torch.Generator) -> tuple:
        return n_images, batch_size, hashlib.sha1(generator.get_state().numpy().tobytes()).hexdigest()

    def get(self, key: tuple) -> "list[torch.Tensor] | None":
        got = self._epochs.get(key)
        if got is None:
            return None
        self._epochs.move_to_end(key)
        self.hits += 1
        return got[0]

    def put(self, key: tuple, logits: "list[torch.Tensor]") -> None:
        size = sum(t.numel() * t.element_size() for t in logits)
        if size > self.max_bytes or key in self._epochs:
            return
        self._epochs[key] = (logits, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._bytes -= self._epochs.popitem(last=False)[1][1]


def epoch_lr(lr: float, epoch: int, epochs: int, lr_drop: bool, cosine: bool) -> float:
    """The learning rate of 0-based ``epoch`` of ``epochs`` under the schedule (see :func:`distill`)."""
    if cosine:
        return lr * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0
    if lr_drop and epoch >= drop_epoch(epochs):
        return lr / 10
    return lr


def drop_epoch(epochs: int) -> int:
    """The first epoch at lr / 10 under ``lr_drop``: after two thirds, at least one epoch at lr."""
    return max(epochs * 2 // 3, 1)


def distillation_loss(out: torch.Tensor, target: torch.Tensor, loss: str, labels: torch.Tensor | None) -> torch.Tensor:
    """The loss of student logits ``out`` against teacher logits ``target`` (both (B, classes))."""
    if loss == "mse":
        return F.mse_loss(out, target)
    t = KD_TEMPERATURE
    soft = F.kl_div(F.log_softmax(out / t, 1), F.log_softmax(target / t, 1), reduction="batchmean", log_target=True)
    return KD_ALPHA * t * t * soft + (1.0 - KD_ALPHA) * F.cross_entropy(out, labels)


def _distill(student, teacher, data, x, epochs, batch_size, lr, weight_decay, augment, generator, teacher_logits,
             loss="mse", y=None, lr_drop=False, checkpoint=None, checkpoint_key="", logit_memo=None,
             optimizer_name="adam", cosine=False, precision="auto"):
    if augment and teacher_logits is not None:
        raise ValueError("teacher logits cannot be reused when the inputs are augmented")
    if epochs == 0:
        student.eval()
        return student
    if teacher_logits is None and not augment:
        teacher_logits = predict_logits(teacher, data, x)
    teacher.eval()
    student.train()
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    else:
        optimizer = torch.optim.Adam(student.parameters(), lr=lr, weight_decay=weight_decay)
    index = torch.arange(len(x), device=x.device)
    first, spent = _resume(checkpoint, checkpoint_key, student, optimizer, generator) if checkpoint else (0, 0.0)
    start = time.perf_counter()
    for epoch in range(first, epochs):
        for group in optimizer.param_groups:  # from the epoch alone: a resumed run is at the same lr
            group["lr"] = epoch_lr(lr, epoch, epochs, lr_drop, cosine)
        # summed on the device and checked once per epoch: no host sync per step
        total = torch.zeros((), device=x.device)
        memo_key = AugmentedLogits.key(len(x), batch_size, generator) if augment and logit_memo is not None else None
        known = logit_memo.get(memo_key) if memo_key is not None else None
        fresh: list[torch.Tensor] = []
        for k, (xb, ib) in enumerate(batches(x, index, batch_size, shuffle=True, generator=generator, augment=augment,
                                             info=data.info, normalize=data.normalize, drop_last=len(x) > batch_size)):
            if teacher_logits is not None:
                target = teacher_logits[ib]
            elif known is not None:
                target = known[k]
            else:
                with torch.no_grad(), autocast(xb.device, precision):
                    target = teacher(xb).float()
                fresh.append(target)
            with autocast(xb.device, precision):
                out = student(xb)
            value = distillation_loss(out.float(), target, loss, y[ib] if y is not None else None)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            try:
                optimizer.step()
            except RuntimeError as exc:  # Adam with a huge lr: "value cannot be converted ... without overflow"
                if "overflow" not in str(exc):
                    raise
                raise NonFiniteError(f"distillation diverged: the optimizer step overflows in epoch {epoch + 1} "
                                     f"(lr {lr:g}; a smaller lr fixes it)") from exc
            total = total + value.detach()
        if not bool(torch.isfinite(total)):
            raise NonFiniteError(f"distillation diverged: the loss is not finite in epoch {epoch + 1} of {epochs} "
                                 f"(lr {lr:g}; a smaller lr fixes it)")
        if memo_key is not None and known is None:
            logit_memo.put(memo_key, fresh)  # a whole epoch only: a student that failed mid-epoch stores nothing
        if checkpoint:
            # "seconds": training time over every invocation, so that a resumed run's durations count all of it
            atomic_torch_save({"key": checkpoint_key, "epoch": epoch + 1, "student": student.state_dict(),
                               "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                               "seconds": spent + time.perf_counter() - start}, checkpoint)
    student.eval()
    return student


def _resume(path, key: str, student: nn.Module, optimizer, generator: torch.Generator) -> tuple[int, float]:
    """``(first epoch still to run, training seconds spent before it)``: ``(0, 0.0)``, or the
    checkpoint's (whose state is loaded; a checkpoint written before it kept seconds: 0.0)."""
    if not os.path.exists(path):
        return 0, 0.0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("key") != key:
            warnings.warn(f"{path} is the checkpoint of another distillation; starting afresh", stacklevel=3)
            return 0, 0.0
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        return int(state["epoch"]), float(state.get("seconds", 0.0))
    except Exception as exc:  # noqa: BLE001 - a damaged file (unpickling, shapes, keys: many types): a fresh start
        warnings.warn(f"cannot resume from {path} ({type(exc).__name__}: {exc}); starting afresh", stacklevel=3)
        return 0, 0.0


def checkpoint_seconds(path: "str | os.PathLike") -> float:
    """The training seconds a distillation checkpoint (written after each epoch) has recorded
    over every invocation; 0.0 for a missing or unreadable file, or one written before it kept them."""
    try:
        return float(torch.load(path, map_location="cpu", weights_only=True).get("seconds", 0.0))
    except Exception:  # noqa: BLE001 - unreadable: the caller falls back to this invocation's time
        return 0.0


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Dataset, x: torch.Tensor, batch_size: int) -> nn.Module:
    """Recompute every batch-norm layer's running mean and variance on uint8 images ``x``
    (N, C, H, W), un-augmented, as the cumulative average over batches of ``batch_size``
    (EagleEye's adaptive BN, Li et al. ECCV 2020); weights are untouched. Returns ``model`` in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(x) == 0:
        return model.eval()
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        for xb, _ in batches(x, torch.zeros(len(x), device=x.device), batch_size, shuffle=False,
                             normalize=data.normalize):
            model(xb)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
    return model.eval()


class NonFiniteError(ArithmeticError):
    """Training produced a NaN or infinite loss, weight or logit (a diverged run)."""


def check_finite_weights(model: nn.Module, what: str = "student") -> None:
    """Raise :class:`NonFiniteError` if any parameter or buffer of ``model`` is NaN/inf
    (one host sync for the whole model)."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point() and t.numel()]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        names = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
                 if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        raise NonFiniteError(f"the {what}'s weights are not finite after training ({', '.join(names[:4])}"
                             f"{' ...' if len(names) > 4 else ''})")
