"""After the search: the final distillation of a chosen student, and the students a
practitioner would ship instead, trained the same way.

- :func:`final_protocol`: ``n2n-gym compress``'s final distillation as a
  :class:`~n2n_gym.protocols.Protocol`: inherited weights, ``epochs`` over the whole training
  split with the data set's augmentation, batch 64, Adam at ``lr`` with the last third at
  lr / 10, MSE on logits (N2N's loss); scored on the whole validation and test splits. The
  fidelity study's reference (``benchmarks/fidelity.py``) is this protocol.
- :func:`final_distill`: one student under it, with its accuracies and seconds.
- :func:`alternatives`: at the same parameter budget, what practitioners do instead of a
  search (N2N's Table 3 compares hand-designed students): ``magnitude``, uniform L1
  magnitude pruning (every shrinkable layer at the same width ratio, the output channels of
  largest L1 norm kept: what Torch-Pruning users do), and ``thin``, the same uniformly thin
  architecture designed by hand and trained from random initialisation by the same
  distillation. The pair separates the value of the inherited weights from that of the
  searched (non-uniform) architecture.
"""

from __future__ import annotations

import time

from .arch import Architecture
from .distill import accuracy
from .edits import MIN_WIDTH, uniform_width_student
from .protocols import Protocol

ALTERNATIVES = ("magnitude", "thin")


def final_protocol(epochs: int, lr: float = 1e-3, init: str = "inherit") -> Protocol:
    """The final distillation as a protocol (see the module docstring); ``init="random"`` for a
    student that does not inherit the teacher's weights."""
    return Protocol(f"final-{epochs}ep" + ("" if init == "inherit" else f"-{init}"), init, epochs, None, None,
                    None, 64, lr, 0.0, True, lr_drop=True)


def final_distill(evaluator, arch: Architecture, epochs: int, lr: float, seed: int,
                  init: str = "inherit") -> tuple:
    """``(module, row)``: the student trained by :func:`final_protocol` and its row
    ``{"val_accuracy", "test_accuracy", "params", "flops", "compression", "epochs", "seconds"}``
    (accuracies in [0, 1] on the whole validation and test splits)."""
    start = time.perf_counter()
    module = evaluator.train_student(arch, final_protocol(epochs, lr, init), seed)
    data = evaluator.data
    row = {"val_accuracy": accuracy(module, data, *data.split("val")),
           "test_accuracy": accuracy(module, data, *data.split("test")),
           "params": arch.params, "flops": arch.flops, "compression": evaluator.teacher.params / arch.params,
           "epochs": epochs, "init": init}
    row["seconds"] = time.perf_counter() - start
    return module, row


def alternatives(evaluator, start: Architecture, target_params: int, epochs: int, lr: float, seed: int,
                 which: tuple[str, ...] = ALTERNATIVES, min_width: int = MIN_WIDTH) -> dict[str, dict]:
    """``{name: row}`` of :func:`final_distill` for each of ``which`` at <= ``target_params``
    parameters (the uniform width ratio is in the row); ``ValueError`` for an unknown name or a
    target below the narrowest uniform student."""
    unknown = sorted(set(which) - set(ALTERNATIVES))
    if unknown:
        raise ValueError(f"unknown alternatives {unknown}; choose from {list(ALTERNATIVES)}")
    arch, ratio = uniform_width_student(start, target_params, min_width)
    out = {}
    for name in which:
        _, row = final_distill(evaluator, arch, epochs, lr, seed, "inherit" if name == "magnitude" else "random")
        out[name] = {**row, "width_ratio": ratio, "architecture": arch.to_dict()}
    return out


__all__ = ["ALTERNATIVES", "alternatives", "final_distill", "final_protocol"]
