"""Training loops: supervised training (teachers) and logit distillation (students).

Everything works on whole uint8 tensors through :func:`n2n_gym.data.batches`; no
per-sample Python in any loop.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset, batches

EVAL_BATCH = 500


def autocast(device: torch.device | str):
    """bf16 autocast on CUDA; nothing elsewhere (bf16 on CPU measured 5x slower, issue 13)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_logits(model: nn.Module, data: Dataset, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    model.eval()
    out = [model(xb) for xb, _ in batches(x, torch.zeros(len(x), device=x.device), batch_size, shuffle=False,
                                          normalize=data.normalize)]
    return torch.cat(out).float() if out else torch.empty(0)


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH) -> float:
    if len(x) == 0:
        raise ValueError("cannot measure accuracy on an empty split")
    return float((predict_logits(model, data, x, batch_size).argmax(1) == y).float().mean())


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    data: Dataset,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    augment: bool = True,
    progress=None,
    label_smoothing: float = 0.0,
) -> float:
    """One epoch of cross-entropy training (with ``label_smoothing``, Szegedy et al. 2016);
    returns the mean loss."""
    with torch.enable_grad():  # callers may step the env inside torch.no_grad()
        return _train_epoch(model, optimizer, scheduler, data, x, y, batch_size, generator, augment, progress,
                            label_smoothing)


def _train_epoch(model, optimizer, scheduler, data, x, y, batch_size, generator, augment, progress,
                 label_smoothing=0.0) -> float:
    model.train()
    # the running loss stays on the device: no host-device sync per step
    total, n = torch.zeros((), dtype=torch.float64, device=x.device), 0
    for xb, yb in batches(x, y, batch_size, shuffle=True, generator=generator, augment=augment,
                          info=data.info, normalize=data.normalize, drop_last=len(x) > batch_size):
        loss = F.cross_entropy(model(xb), yb, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total, n = total + loss.detach().double() * len(xb), n + len(xb)
        if progress is not None:
            progress.update(1)
    return float(total) / max(n, 1)


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
) -> nn.Module:
    """Regress the student's logits on the teacher's (MSE), Adam, as in N2N.

    ``teacher_logits`` (for ``x`` in order) are reused when given and ``augment`` is off.
    """
    with torch.enable_grad():  # callers may step the env inside torch.no_grad()
        return _distill(student, teacher, data, x, epochs, batch_size, lr, weight_decay, augment, generator,
                        teacher_logits)


def _distill(student, teacher, data, x, epochs, batch_size, lr, weight_decay, augment, generator, teacher_logits):
    if augment and teacher_logits is not None:
        raise ValueError("teacher logits cannot be reused when the inputs are augmented")
    if teacher_logits is None and not augment:
        teacher_logits = predict_logits(teacher, data, x)
    teacher.eval()
    student.train()
    optimizer = torch.optim.Adam(student.parameters(), lr=lr, weight_decay=weight_decay)
    index = torch.arange(len(x), device=x.device)
    for epoch in range(epochs):
        # summed on the device and checked once per epoch: no host sync per step
        total = torch.zeros((), device=x.device)
        for xb, ib in batches(x, index, batch_size, shuffle=True, generator=generator, augment=augment,
                              info=data.info, normalize=data.normalize, drop_last=len(x) > batch_size):
            if teacher_logits is not None:
                target = teacher_logits[ib]
            else:
                with torch.no_grad(), autocast(xb.device):
                    target = teacher(xb).float()
            with autocast(xb.device):
                out = student(xb)
            loss = F.mse_loss(out.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            try:
                optimizer.step()
            except RuntimeError as exc:  # Adam with a huge lr: "value cannot be converted ... without overflow"
                if "overflow" not in str(exc):
                    raise
                raise NonFiniteError(f"distillation diverged: the optimizer step overflows in epoch {epoch + 1} "
                                     f"(lr {lr:g}; a smaller lr fixes it)") from exc
            total = total + loss.detach()
        if not bool(torch.isfinite(total)):
            raise NonFiniteError(f"distillation diverged: the loss is not finite in epoch {epoch + 1} of {epochs} "
                                 f"(lr {lr:g}; a smaller lr fixes it)")
    student.eval()
    return student


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
