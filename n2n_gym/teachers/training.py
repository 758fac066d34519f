"""Supervised training loops of the teachers, and the accuracy measure everything uses.

Everything works on whole uint8 tensors through :func:`n2n_gym.data.batches`; no
per-sample Python in any loop. Student distillation (:mod:`n2n_gym.evaluation.distill`)
reuses :func:`predict_logits`, :func:`accuracy` and :func:`autocast`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from n2n_gym.data.datasets import Dataset, batches

__all__ = ["EVAL_BATCH", "PRECISIONS", "accuracy", "autocast", "predict_logits", "train_epoch"]

EVAL_BATCH = 500


#: the training forward passes' precisions (:func:`autocast`)
PRECISIONS = ("auto", "bf16")


def autocast(device: torch.device | str, precision: str = "auto"):
    """The mixed precision of a training forward pass on ``device``: bf16 autocast on CUDA;
    on the CPU, fp32 (``"auto"``) or bf16 autocast (``"bf16"``). bf16 pays on a CPU that
    computes it natively (AMX, AVX512-BF16: ``benchmarks/final_precision.py`` measures the
    speed-up and the accuracy) and is slower on one that does not (5x, measured in issue 13)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = torch.device(device).type
    if kind == "cuda" or (kind == "cpu" and precision == "bf16"):
        return torch.autocast(kind, dtype=torch.bfloat16)
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
