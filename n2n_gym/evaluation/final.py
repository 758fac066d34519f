"""After the search: the final distillation of a chosen student, and the students a
practitioner would ship instead, trained the same way.

- :func:`final_protocol`: ``n2n-gym compress``'s final distillation as a
  :class:`~n2n_gym.evaluation.protocols.Protocol`: inherited weights, ``epochs`` over the whole
  training split with the data set's augmentation, batch 64, scored on the whole validation and
  test splits, under one of :data:`RECIPES`: ``n2n`` (default), Adam at ``lr`` (1e-3) with the
  last third at lr / 10 and MSE on logits (N2N's loss; the fidelity study's reference,
  ``benchmarks/fidelity.py``, is this recipe), or ``kd-sgd``, the usual CIFAR ResNet recipe:
  SGD with Nesterov momentum 0.9 at ``lr`` (0.05) on a cosine schedule, weight decay 5e-4 (He
  et al. 2016; Loshchilov & Hutter 2017), and Hinton et al. (2015)'s KD loss with the labels.
- :func:`final_distill`: one student under it, with its accuracies and seconds.
- :func:`final_students`: several of them side by side, one process each (``workers``).
- :func:`alternatives`: at the same parameter budget, what practitioners do instead of a
  search (N2N's Table 3 compares hand-designed students): ``magnitude``, uniform L1
  magnitude pruning (every shrinkable layer at the same width ratio, the output channels of
  largest L1 norm kept: what Torch-Pruning users do), and ``thin``, the same uniformly thin
  architecture designed by hand and trained from random initialisation by the same
  distillation. The pair separates the value of the inherited weights from that of the
  searched (non-uniform) architecture.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import threading
import time
from typing import Sequence

from n2n_gym.evaluation.distill import accuracy, checkpoint_seconds, distill, predict_logits
from n2n_gym.evaluation.protocols import Protocol
from n2n_gym.ir.arch import Architecture
from n2n_gym.ir.edits import MIN_WIDTH, uniform_width_student

ALTERNATIVES = ("magnitude", "thin")

#: the final distillation's recipes (module docstring): name -> (default lr, protocol fields)
RECIPES: dict[str, tuple[float, dict]] = {
    "n2n": (1e-3, {"loss": "mse", "optimizer": "adam", "lr_drop": True, "weight_decay": 0.0}),
    "kd-sgd": (0.05, {"loss": "kd", "optimizer": "sgd", "cosine": True, "weight_decay": 5e-4}),
}


def recipe_lr(recipe: str, lr: "float | None" = None) -> float:
    """``lr``, or the recipe's default lr when it is None; ``ValueError`` for an unknown recipe."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown final distillation recipe {recipe!r}; choose from {list(RECIPES)}")
    return RECIPES[recipe][0] if lr is None else float(lr)


def final_protocol(epochs: int, lr: "float | None" = None, init: str = "inherit", recipe: str = "n2n",
                   precision: str = "auto") -> Protocol:
    """The final distillation as a protocol (see the module docstring); ``init="random"`` for a
    student that does not inherit the teacher's weights; ``lr`` None: the recipe's;
    ``precision``: the training forward passes' (:data:`n2n_gym.teachers.training.PRECISIONS`;
    ``"bf16"``: bf16 autocast on the CPU too)."""
    lr = recipe_lr(recipe, lr)
    name = (f"final-{epochs}ep" + ("" if init == "inherit" else f"-{init}") + ("" if recipe == "n2n" else f"-{recipe}")
            + ("" if precision == "auto" else f"-{precision}"))
    return Protocol(name, init, epochs, None, None, None, 64, lr, augment=True, precision=precision,
                    **RECIPES[recipe][1])


def final_distill(evaluator, arch: Architecture, epochs: int, lr: float, seed: int,
                  init: str = "inherit", checkpoint: "str | os.PathLike | None" = None, recipe: str = "n2n",
                  precision: str = "auto") -> tuple:
    """``(module, row)``: the student trained by :func:`final_protocol` and its row
    ``{"val_accuracy", "test_accuracy", "params", "flops", "compression", "epochs", "seconds"}``
    (accuracies in [0, 1] on the whole validation and test splits; ``seconds``: training over
    every invocation plus this one's scoring). ``checkpoint``: a file saved after every epoch; a
    killed run continues from it (the same weights), and its seconds count."""
    start = time.perf_counter()
    module = evaluator.train_student(arch, final_protocol(epochs, lr, init, recipe, precision), seed, checkpoint)
    trained = time.perf_counter() - start
    if checkpoint is not None and epochs > 0:  # it holds the training time of every invocation, this one's included
        trained = checkpoint_seconds(checkpoint) or trained  # (0.0: a file from before it kept them)
    start = time.perf_counter()
    data = evaluator.data
    row = {"val_accuracy": accuracy(module, data, *data.split("val")),
           "test_accuracy": accuracy(module, data, *data.split("test")),
           "params": arch.params, "flops": arch.flops, "compression": evaluator.teacher.params / arch.params,
           "epochs": epochs, "init": init}
    row["seconds"] = trained + time.perf_counter() - start
    return module, row


#: one final distillation: ``(name, architecture, init, checkpoint file or None)``
FinalJob = tuple[str, Architecture, str, "str | os.PathLike | None"]


def _checkpoint_key(evaluator, arch: Architecture, epochs: int, lr: float, init: str, seed: int, recipe: str,
                    precision: str) -> str:
    """The key the evaluator writes into a final distillation's checkpoint (a file of another key
    is another distillation's, discarded by its job)."""
    return evaluator.key(arch, final_protocol(epochs, lr, init, recipe, precision), seed)


def epochs_done(evaluator, jobs: Sequence[FinalJob], epochs: int, lr: float, seed: int, recipe: str = "n2n",
                precision: str = "auto") -> int:
    """Student-epochs of :func:`final_students`'s ``jobs`` already in their checkpoints (each at
    most ``epochs``): only files of this distillation count; a missing or unreadable one counts 0."""
    import torch

    done = 0
    for _, arch, init, path in jobs:
        if path is None:
            continue
        key = _checkpoint_key(evaluator, arch, epochs, lr, init, seed, recipe, precision)
        with contextlib.suppress(Exception):  # missing, or unreadable (many types): none done
            state = torch.load(path, map_location="cpu", weights_only=True)
            done += min(int(state["epoch"]), epochs) if state.get("key") == key else 0
    return done


class _EpochProgress:
    """A progress bar (with tqdm's ETA) of the epochs the final distillations have finished,
    read from their checkpoint files by a daemon thread every ``interval`` seconds: the
    workers are other processes, and the checkpoints are what they already share. ``keys``:
    each checkpoint's distillation key; a file of another distillation (which its job will
    discard) counts no epochs, so that a resume with other settings starts the bar at 0."""

    def __init__(self, checkpoints: Sequence, epochs: int, enabled: bool, interval: float = 10.0,
                 keys: "dict[str, str] | None" = None):
        self.paths = [str(c) for c in checkpoints if c is not None]
        self.keys = {str(k): v for k, v in (keys or {}).items()}
        self.epochs, self.interval = epochs, interval
        self.enabled = enabled and bool(self.paths) and epochs > 0
        self._seen: dict[str, tuple[float, int]] = {}  # path -> (mtime, epoch)
        self._stop = threading.Event()

    def _done(self) -> int:
        import torch

        total = 0
        for path in self.paths:
            try:
                mtime = os.stat(path).st_mtime
                if self._seen.get(path, (None, 0))[0] != mtime:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                    ours = path not in self.keys or state.get("key") == self.keys[path]
                    self._seen[path] = (mtime, min(int(state["epoch"]), self.epochs) if ours else 0)
            except (OSError, RuntimeError, KeyError, ValueError, EOFError):
                pass  # not written yet, or replaced while read: the next poll sees it
            total += self._seen.get(path, (None, 0))[1]
        return total

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.bar.update(self._done() - self.bar.n)

    def __enter__(self) -> "_EpochProgress":
        if self.enabled:
            from tqdm.auto import tqdm

            # a resumed run starts where its checkpoints are (initial: the ETA times only what is left)
            # smoothing=0: the rate over the whole distillation; side-by-side students finish their
            # epochs in bursts, and tqdm's moving average read two epochs 10 s apart as the rate (ETA 13 min
            # for 3 hours' work)
            self.bar = tqdm(total=self.epochs * len(self.paths), initial=self._done(), unit="epoch",
                            desc="final distillation", dynamic_ncols=True, smoothing=0)
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self.bar.update(self._done() - self.bar.n)
            self.bar.close()


def final_students(evaluator, jobs: Sequence[FinalJob], epochs: int, lr: float, seed: int,
                   workers: int = 1, progress: bool = False, recipe: str = "n2n",
                   precision: str = "auto") -> dict[str, tuple]:
    """``{name: (module, row)}`` of :func:`final_distill` for each job, in order. With
    ``workers`` > 1 the jobs train side by side in a spawned process pool
    (:class:`~n2n_gym.evaluation.backends.ProcessBackend`, each worker on this process's torch
    threads split between them): on 2 cores a run's three final students side by side take 1.5
    distillations' time instead of three. Each job's checkpoint makes it resumable either way;
    the weights may differ from a one-process run in the last bits (CPU kernels reduce in a
    thread-count-dependent order). A failure of one job is raised after the others finish
    (their checkpoints kept). ``progress``: a bar of the epochs done, with an ETA, read from
    the jobs' checkpoints (none without them)."""
    names = [job[0] for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"final_students: job names must be distinct, got {names}")
    final_protocol(epochs, lr, recipe=recipe, precision=precision)  # a bad setting fails here, before any process starts
    args = [(arch, epochs, lr, seed, init, None if ckpt is None else str(ckpt), recipe, precision)
            for _, arch, init, ckpt in jobs]
    workers = min(int(workers), len(jobs))
    # each checkpoint's key, as the evaluator writes it (a file of other settings counts no epoch)
    keys = {a[5]: _checkpoint_key(evaluator, a[0], epochs, lr, a[4], seed, recipe, precision)
            for a in args if a[5] is not None} if progress else None
    with _EpochProgress([a[5] for a in args], epochs, progress, keys=keys):
        if workers <= 1:
            return {name: final_distill(evaluator, *a) for name, a in zip(names, args)}
        from n2n_gym.evaluation.backends import ProcessBackend  # (torch-heavy pool machinery, only when asked)

        with ProcessBackend(evaluator, workers=workers) as pool:
            futures = [pool.call(final_distill, *a) for a in args]
            concurrent.futures.wait(futures)
            try:
                return {name: f.result() for name, f in zip(names, futures)}
            except concurrent.futures.process.BrokenProcessPool as exc:  # said in words, not the pool's
                from n2n_gym.evaluation.backends import _GUARD_HINT

                raise RuntimeError(f"a worker process of the final distillation died ({exc}). Either {_GUARD_HINT} "
                                   "(or train one at a time: final_workers=1), or it was killed (out of memory?); "
                                   "the students' checkpoints are kept, a resumed run continues from them") from exc


def alternatives(evaluator, start: Architecture, target_params: int, epochs: int, lr: float, seed: int,
                 which: tuple[str, ...] = ALTERNATIVES, min_width: int = MIN_WIDTH,
                 checkpoints: "str | os.PathLike | None" = None, workers: int = 1,
                 recipe: str = "n2n", precision: str = "auto") -> dict[str, dict]:
    """``{name: row}`` of :func:`final_distill` for each of ``which`` at <= ``target_params``
    parameters (the uniform width ratio is in the row); ``ValueError`` for an unknown name or a
    target below the narrowest uniform student. ``checkpoints``: a folder for each one's
    ``<name>.ckpt`` (resumable); ``workers``: as :func:`final_students`."""
    jobs, ratio = alternative_jobs(start, target_params, which, min_width, checkpoints)
    arch = jobs[0][1] if jobs else None
    return {name: {**row, "width_ratio": ratio, "architecture": arch.to_dict()}
            for name, (_, row) in final_students(evaluator, jobs, epochs, lr, seed, workers, recipe=recipe,
                                                         precision=precision).items()}


def alternative_jobs(start: Architecture, target_params: int, which: tuple[str, ...] = ALTERNATIVES,
                     min_width: int = MIN_WIDTH, checkpoints: "str | os.PathLike | None" = None
                     ) -> tuple[list[FinalJob], float]:
    """The :data:`FinalJob` of each alternative of :func:`alternatives` and their uniform width
    ratio; ``ValueError`` as there."""
    unknown = sorted(set(which) - set(ALTERNATIVES))
    if unknown:
        raise ValueError(f"unknown alternatives {unknown}; choose from {list(ALTERNATIVES)}")
    arch, ratio = uniform_width_student(start, target_params, min_width)
    return [(name, arch, "inherit" if name == "magnitude" else "random",
             os.path.join(checkpoints, f"{name}.ckpt") if checkpoints else None) for name in which], ratio


__all__ = ["ALTERNATIVES", "RECIPES", "FinalJob", "alternative_jobs", "alternatives", "epochs_done", "final_distill",
           "final_protocol", "final_students", "recipe_lr"]


def throughput(evaluator, batches: int = 3, batch_size: int = 64, precision: str = "auto") -> dict[str, float]:
    """Images per second of training the *teacher's* architecture (an upper bound on any
    student's cost) on this machine now, timed on ``batches`` batches after one warm-up
    batch: ``"augmented"`` (the teacher's forward pass per batch, as in the final
    distillation), ``"reused_logits"`` (the search protocols without augmentation) and
    ``"inference"`` (scoring); ``precision``: the training forward passes' (as
    :func:`final_protocol`)."""
    import torch

    data, teacher = evaluator.data, evaluator.teacher
    x, _ = data.subset("train", batch_size * (batches + 1), seed=0)
    out = {}
    for name, augment in (("augmented", True), ("reused_logits", False)):
        student = evaluator.train_student(teacher.architecture, final_protocol(0), 0)  # a copy of the teacher
        logits = None if augment else predict_logits(teacher.module, data, x)
        kw = dict(batch_size=batch_size, lr=1e-4, weight_decay=0.0, augment=augment, teacher_logits=logits,
                  precision=precision)
        distill(student, teacher.module, data, x[:batch_size], epochs=1, generator=torch.Generator(), **kw)
        start = time.perf_counter()
        distill(student, teacher.module, data, x[batch_size:], epochs=1, generator=torch.Generator(),
                **{**kw, "teacher_logits": None if augment else logits[batch_size:]})
        out[name] = batches * batch_size / (time.perf_counter() - start)
    start = time.perf_counter()
    predict_logits(teacher.module, data, x)
    out["inference"] = len(x) / (time.perf_counter() - start)
    return out


def estimate_seconds(rates: dict[str, float], protocol: Protocol, evaluations: int, train_split: int,
                     val_split: int, test_split: int, final_epochs: int, final_students: int,
                     workers: int = 1, final_workers: int = 1, cores: int | None = None) -> dict[str, float]:
    """Upper bounds (students timed as the teacher, on one thread) of a compress run's parts in
    seconds: ``search`` (``evaluations`` students under ``protocol``, ``workers`` at a time) and
    ``final`` (``final_students`` final distillations of ``final_epochs`` epochs, each scored on
    the whole splits; ``final_workers`` at a time). Processes beyond ``cores`` (default: this
    machine's) share them: three final students at a time on 2 cores take 1.5 distillations'
    time, two at a time and then one take 2. A protocol's batch-norm recalibration counts as
    forward passes (inference rate)."""
    cores = max(1, int(cores or os.cpu_count() or 1))
    train = min(protocol.train_images or train_split, train_split) * protocol.epochs
    scored = min(protocol.val_images or val_split, val_split) + min(protocol.test_images or test_split, test_split)
    scored += min(protocol.bn_recalibration, train_split)
    per_student = train / rates["augmented" if protocol.augment else "reused_logits"] + scored / rates["inference"]
    per_final = final_epochs * train_split / rates["augmented"] + (val_split + test_split) / rates["inference"]
    final, left = 0.0, final_students
    while left > 0:  # rounds of the final students side by side, each as slow as the cores are shared
        at_once = min(max(1, final_workers), left)
        final += per_final * max(1.0, at_once / cores)
        left -= at_once
    return {"search": evaluations * per_student / min(max(1, workers), cores), "final": final,
            "per_student": per_student, "per_final_student": per_final}
