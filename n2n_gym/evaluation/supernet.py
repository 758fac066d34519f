"""A weight-sharing supernet of a teacher, so that a student is scored without training.

Once-for-All (Cai et al., ICLR 2020) and BigNAS (Yu et al., ECCV 2020) train one network
whose sub-networks are all good, then score a sub-network by taking its weights and
recalibrating batch norm. Here the supernet has the teacher's architecture and starts from
the teacher's weights, and a sub-network is any student of the env: a student takes its
weights from the supernet exactly as it takes them from the teacher
(:func:`n2n_gym.ir.build.inheritance_plan`: the output channels of largest L1 norm, residual
groups chosen together, removed layers skipped). So :func:`score` is: inherit from the
supernet, recalibrate batch norm on ``bn_images`` training images (EagleEye, Li et al. ECCV
2020), measure validation accuracy. Seconds per student, no training.

Training (:func:`train_supernet`) makes every such student good. Each step takes one
augmented batch, computes the *fixed* teacher's logits once, and distils them (MSE on
logits, as N2N and the final distillation) into the sandwich of BigNAS: the largest student
(the teacher's architecture), the smallest (every free width at the floor) and
``random_students`` students drawn as the env's ``joint`` stage draws them (each removable
layer removed with probability 1/(K+1), else a uniform width ratio of
``n2n_gym.envs.env.RATIO_TABLES["uniform"]``); their losses are summed and reach the shared
weights through the plan's ``index_select`` (``torch.func.functional_call``), so every
student's gradient lands on the teacher channels it uses. The channel choice follows the
supernet's current L1 norms. Adam; the step schedule of the final distillation (last third
of the epochs at lr / 10). A checkpoint after every ``checkpoint_every`` steps and every
epoch makes a killed run continue where it stopped.
"""

from __future__ import annotations

import copy
import math
import os
import pathlib
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from n2n_gym.data.datasets import Dataset, batches
from n2n_gym.evaluation.distill import accuracy, drop_epoch, recalibrate_batchnorm
from n2n_gym.ir.arch import Architecture
from n2n_gym.ir.build import (
    Network,
    weight_and_bn,
    build,
    inherit_weights,
    inheritance_plan,
)
from n2n_gym.ir.edits import MIN_WIDTH, InvalidStudent, apply_decisions, layer_rules
from n2n_gym.teachers.teacher import weights_sha256
from n2n_gym.utils.files import atomic_torch_save

UNIFORM_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # the env's "uniform" table (joint stage)


def sample_student(arch: Architecture, rng: np.random.Generator, ratios=UNIFORM_RATIOS,
                   min_width: int = MIN_WIDTH) -> Architecture:
    """A student of ``arch`` drawn as a uniform random policy of the ``joint`` stage draws it:
    per layer, among its allowed actions (each ratio of ``ratios``, and removal where allowed)."""
    rules = layer_rules(arch)
    for _ in range(1000):
        decisions = []
        for r in rules:
            options = (list(ratios) if r.shrinkable else [1.0]) + ([None] if r.removable else [])
            decisions.append(options[int(rng.integers(len(options)))])
        try:
            return apply_decisions(arch, decisions, min_width)
        except InvalidStudent:
            continue
    raise RuntimeError("no valid student in 1000 draws")  # cannot happen for a teacher of the zoo


def smallest_student(arch: Architecture, min_width: int = MIN_WIDTH) -> Architecture:
    """Every shrinkable layer at the width floor, no layer removed."""
    return apply_decisions(arch, [1e-6 if r.shrinkable else 1.0 for r in layer_rules(arch)], min_width)


def _gather(src: torch.Tensor, out_idx: torch.Tensor, in_idx: torch.Tensor | None,
            shape: torch.Size) -> torch.Tensor:
    """The student's weight of ``shape`` as a differentiable selection of the supernet's ``src``."""
    w = src.index_select(0, out_idx.to(src.device))
    if w.shape[0] != shape[0]:
        raise ValueError(f"a student layer of {shape[0]} outputs is wider than its supernet layer ({src.shape[0]})")
    if in_idx is not None:
        return w.index_select(1, in_idx.to(src.device))
    n_in = min(shape[1], w.shape[1])
    w = w[:, :n_in]
    if n_in < shape[1]:  # a producer the weights were not trained on: zero columns, as inherit_weights
        w = F.pad(w, [0, 0] * (w.dim() - 2) + [0, shape[1] - n_in])
    return w


def shared_parameters(student: Network, supernet: Network) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of every parameter of ``student``, each a differentiable selection
    of ``supernet``'s (the same values :func:`~n2n_gym.ir.build.inherit_weights` copies)."""
    names = {id(p): n for n, p in student.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for c in inheritance_plan(student.arch, supernet):
        s_w, s_bn = weight_and_bn(student.layers[c.student_layer])
        t_w, t_bn = weight_and_bn(supernet.layers[c.teacher_layer])
        out[names[id(s_w.weight)]] = _gather(t_w.weight, c.out_idx, c.in_idx, s_w.weight.shape)
        if isinstance(s_w, nn.Linear):
            out[names[id(s_w.bias)]] = t_w.bias.index_select(0, c.out_idx.to(t_w.bias.device))
        if s_bn is not None:
            for attr in ("weight", "bias"):
                out[names[id(getattr(s_bn, attr))]] = getattr(t_bn, attr).index_select(0, c.out_idx.to(t_bn.weight.device))
    missing = set(names.values()) - set(out)
    if missing:
        raise ValueError(f"student parameters without a supernet source: {sorted(missing)}")
    return out


def train_supernet(teacher: Network, data: Dataset, *, epochs: int, batch_size: int = 64, lr: float = 1e-3,
                   random_students: int = 2, seed: int = 0, min_width: int = MIN_WIDTH,
                   train_images: int | None = None, checkpoint: str | os.PathLike | None = None,
                   checkpoint_every: int = 50, on_step: Callable[[int, int, float], None] | None = None) -> Network:
    """The supernet of ``teacher`` after ``epochs`` passes over the training split (or its
    first ``train_images``) with the data set's augmentation; see the module docstring.
    ``on_step(step, steps, loss)`` after every step (progress). Resumes from ``checkpoint``."""
    torch.manual_seed(seed)
    teacher = teacher.eval()
    supernet = copy.deepcopy(teacher).train()
    for p in supernet.parameters():
        p.requires_grad_(True)  # a loaded teacher may be frozen
    optimizer = torch.optim.Adam(supernet.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    x, _ = data.subset("train", train_images, seed=0)
    steps_per_epoch = max(len(x) // batch_size, 1)
    steps = epochs * steps_per_epoch
    step = 0
    if checkpoint and os.path.exists(checkpoint):
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # our own file: numpy rng state
        supernet.load_state_dict(state["supernet"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        rng.bit_generator.state = state["rng"]
        step = int(state["step"])

    def save() -> None:
        if checkpoint:
            atomic_torch_save({"supernet": supernet.state_dict(), "optimizer": optimizer.state_dict(),
                               "generator": generator.get_state(), "rng": rng.bit_generator.state, "step": step,
                               "steps": steps, "epochs": epochs, "seed": seed}, checkpoint)

    arch = teacher.arch
    smallest = smallest_student(arch, min_width)
    index = torch.arange(len(x))
    with torch.enable_grad():
        while step < steps:
            epoch = step // steps_per_epoch
            gen_epoch = torch.Generator().manual_seed(seed * 100003 + epoch)  # a resumed epoch shuffles the same
            for k, (xb, _) in enumerate(batches(x, index, batch_size, shuffle=True, generator=gen_epoch, augment=True,
                                                info=data.info, normalize=data.normalize, drop_last=True)):
                if k < step % steps_per_epoch:
                    continue  # already trained before the checkpoint
                for group in optimizer.param_groups:
                    group["lr"] = lr / 10 if epoch >= drop_epoch(epochs) else lr
                with torch.no_grad():
                    target = teacher(xb)
                students = [arch, smallest] + [sample_student(arch, rng, min_width=min_width)
                                               for _ in range(random_students)]
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for s_arch in students:
                    student = build(s_arch, xb.device).train()
                    params = shared_parameters(student, supernet)
                    buffers = dict(student.named_buffers())
                    loss = F.mse_loss(functional_call(student, (params, buffers), (xb,)), target)
                    loss.backward()
                    total += float(loss.detach())
                if not math.isfinite(total):
                    raise ArithmeticError(f"supernet training diverged at step {step} (lr {lr:g})")
                optimizer.step()
                step += 1
                if on_step is not None:
                    on_step(step, steps, total / len(students))
                if step % checkpoint_every == 0 or step % steps_per_epoch == 0:
                    save()
                if step >= steps:
                    break
    save()
    return supernet.eval()


@torch.no_grad()
def score(arch: Architecture, supernet: Network, data: Dataset, bn_images: int = 2048, batch_size: int = 64,
          val_images: int | None = None) -> tuple[float, nn.Module]:
    """(validation accuracy in [0, 1], the student): ``arch`` inherits the supernet's weights,
    batch norm is recalibrated on the first ``bn_images`` training images; no training."""
    student = inherit_weights(build(arch, next(supernet.parameters()).device), supernet)
    recalibrate_batchnorm(student, data, data.subset("train", bn_images, seed=0)[0], batch_size)
    x, y = data.subset("val", val_images, seed=0)
    return accuracy(student, data, x, y), student


def save_supernet(path: str | os.PathLike, supernet: Network, *, teacher_sha256: str, **info) -> None:
    """``{"architecture": IR dict, "state_dict", "weights_sha256", "teacher_sha256", **info}``,
    written atomically; ``teacher_sha256`` (the teacher's :attr:`~n2n_gym.teachers.Teacher.sha256`)
    is what :func:`find_supernet` checks."""
    if not isinstance(teacher_sha256, str) or not teacher_sha256:
        raise ValueError("save_supernet needs teacher_sha256, the sha256 of the teacher the supernet was trained from")
    atomic_torch_save({"architecture": supernet.arch.to_dict(), "state_dict": supernet.state_dict(),
                       "weights_sha256": weights_sha256(supernet.state_dict()), "teacher_sha256": teacher_sha256,
                       **info}, path)


def supernet_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a saved supernet's weights (:func:`n2n_gym.teachers.weights_sha256`), the
    name a :class:`~n2n_gym.evaluation.protocols.Protocol` gives it."""
    return weights_sha256(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])


def supernet_file_name(sha256: str) -> str:
    """The name :func:`find_supernet` looks for besides ``<sha256>.pt``."""
    return f"supernet-{sha256[:12]}.pt"


class SupernetNotFoundError(FileNotFoundError):
    """No file in the search folders holds the supernet a protocol names."""


def find_supernet(sha256: str, teacher_sha256: str | None = None) -> pathlib.Path:
    """The file holding the supernet whose weights have ``sha256``, from the folders pinned
    teachers are looked for in, in their order (:func:`n2n_gym.teachers.registry.search_dirs`:
    ``$N2N_TEACHERS``, the package's ``pinned/``, the cache), named ``*supernet-<sha256[:12]>.pt``
    or ``<sha256>.pt``; every candidate is verified by content, and one that says it belongs to
    another teacher than ``teacher_sha256`` is passed over. Raises :class:`SupernetNotFoundError`
    (where it looked, what it passed over, how to make one) or ``ValueError`` (only copies of
    another teacher)."""
    from n2n_gym.teachers.registry import search_dirs

    dirs = search_dirs()
    names = (f"*{supernet_file_name(sha256)}", f"{sha256}.pt")
    foreign, damaged = [], []
    for d in dirs:
        if not d.is_dir():
            continue
        for path in sorted({p for n in names for p in d.glob(n) if p.is_file()}):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                found = weights_sha256(state["state_dict"])
            except Exception:  # noqa: BLE001 - a damaged or foreign file is not the one we look for
                damaged.append(path)
                continue
            if found != sha256:
                continue
            if teacher_sha256 is not None and state.get("teacher_sha256") != teacher_sha256:
                foreign.append((path, state.get("teacher_sha256")))
                continue
            return path
    if foreign:
        path, other = foreign[0]
        raise ValueError(f"{path} is a supernet of teacher {str(other)[:12]}, not of this env's teacher "
                         f"{str(teacher_sha256)[:12]}: a protocol's supernet belongs to one teacher")
    seen = f" (passed over unreadable {', '.join(map(str, damaged))})" if damaged else ""
    raise SupernetNotFoundError(
        f"no supernet with weights sha256 {sha256[:12]}… in {', '.join(map(str, dirs))}{seen}: put its file in one "
        f"of them named {supernet_file_name(sha256)!r} ($N2N_TEACHERS may name a folder). To make one: the "
        f"`supernet` command of the fidelity study (benchmarks/fidelity.py) trains it and prints its weights' sha256 "
        f"and the file to copy; n2n_gym.evaluation.supernet.supernet_sha256(path) gives the sha256 of a saved one")


def load_supernet(path: str | os.PathLike, device: str | torch.device = "cpu") -> Network:
    """The supernet saved by :func:`save_supernet` (weights-only load: no code runs)."""
    state = torch.load(path, map_location=device, weights_only=True)
    module = build(Architecture.from_dict(state["architecture"]), device)
    module.load_state_dict(state["state_dict"])
    return module.eval()


def progress_printer(every: int = 20) -> Callable[[int, int, float], None]:
    """An ``on_step`` that prints the step, the loss and an ETA every ``every`` steps."""
    start, first = time.time(), [None]

    def show(step: int, steps: int, loss: float) -> None:
        if first[0] is None:
            first[0] = step - 1
        if step % every == 0 or step == steps:
            rate = (time.time() - start) / max(step - first[0], 1)
            print(f"supernet step {step}/{steps} loss {loss:.4f} | ETA {(steps - step) * rate / 3600:.2f} h",
                  flush=True)
    return show
