"""Uniform L1-magnitude channel pruning: the no-search baseline.

What a practitioner does without any search: shrink every shrinkable layer by the same
width ratio r (``max(floor(n * r), 10)`` output channels, N2N's floor), keeping in each
layer the output channels of largest L1 norm, and distil the result under the env's
protocol. No layer is removed. r is the largest ratio whose student has at most the
target's parameter count (bisection on r; the count is a step function of r). One student
is evaluated, so the run uses one evaluation of its budget.

Channel selection: the env's own weight inheritance (``n2n_gym.ir.build``) already keeps the
output channels of largest L1 norm (tied channels of a residual group by their summed
norm), and the student must be an ``n2n_gym`` IR architecture for the env to score,
cache and replay it (``n2n-gym validate``). Torch-Pruning prunes an ``nn.Module`` graph in
place and would give a model outside the IR, with the same L1 criterion; so it is not used.

The episode is played on ``gym.make(env_id, stage="shrink", ratios=(r, 1.0))``: action 0
(ratio r) on every layer that allows it, 1.0 elsewhere, so the record's replay kwargs
(stage, ratio table) reproduce the student exactly.

Target (``--hparams``, one of):

- ``target_params``: a parameter count;
- ``target_compression``: teacher params / student params (e.g. 8.0);
- ``target_results`` (+ ``target_agent``, default ``"n2n"``; ``target_label``): a results
  JSONL of ``n2n-gym bench``: the best student's params of the record of that agent with
  the same env, protocol and seed (e.g. the best RL student of the same seed)::

    n2n-gym bench --agent magnitude --seeds 0 1 2 --budget 200 \\
      --hparams '{"target_results": "benchmarks/results/baselines-digits-200.jsonl"}'
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np

import n2n_gym  # noqa: F401  (registers the environments)
from n2n_gym.envs.registration import resolve_protocol
from n2n_gym.envs.wrappers import BudgetTracker, BudgetWrapper, private_cache
from n2n_gym.ir.edits import MIN_WIDTH, uniform_width_student
from n2n_gym.utils.checks import check_float, check_int


@dataclass
class Args:
    target_params: int | None = None
    """prune to at most this many parameters"""
    target_compression: float | None = None
    """prune to at most teacher params / this"""
    target_results: str | list | None = None
    """results JSONL (or a list of them): prune to the params of the best student of target_agent with the same env, protocol, seed"""
    target_agent: str = "n2n"
    """agent whose record in target_results sets the target"""
    target_label: str | None = None
    """label of that record (n2n-gym bench --label), if it has one"""


def target_from_results(paths: str | list, env_id: str, protocol: str, seed: int, agent: str,
                        label: str | None) -> int:
    """The best student's params of the matching record (the last one if several) of the
    results file(s) ``paths``; ``ValueError`` if there is none."""
    found = None
    for path in [paths] if isinstance(paths, str) else paths:
        if not os.path.isfile(path):
            raise ValueError(f"target_results {path!r} is not a file: give the results JSONL of the run "
                             f"whose best student sets the size (n2n-gym bench --results ...)")
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a killed writer
                if (r.get("env_id"), r.get("protocol"), r.get("seed"), r.get("agent")) == (env_id, protocol, seed, agent) \
                        and (label is None or r.get("label") == label) and (r.get("best") or {}).get("params"):
                    found = int(r["best"]["params"])
    path = paths
    if found is None:
        raise ValueError(f"no record of agent {agent!r}{f' label {label!r}' if label else ''} for {env_id}, protocol "
                         f"{protocol!r}, seed {seed} in {path}: run that agent first, or give target_params")
    return found


def uniform_ratio(start, target: int, min_width: int = MIN_WIDTH) -> tuple[float, int]:
    """The largest width ratio r with params(student) <= ``target``; returns (r, params)
    (``n2n_gym.ir.edits.uniform_width_student``: ``ValueError`` when the target is too small)."""
    student, ratio = uniform_width_student(start, target, min_width)
    return ratio, student.params


def _relative(path: str) -> str:
    """``path`` relative to the current folder when it lies inside it, else as given."""
    absolute = os.path.abspath(path)
    return os.path.relpath(absolute) if absolute.startswith(os.getcwd() + os.sep) else path


def run(env_id: str, seed: int, budget: int, env_kwargs: dict | None = None, hparams: dict | None = None, *,
        tracker: BudgetTracker | None = None, wandb_run: Any = None) -> dict:
    """Prune uniformly to the target and evaluate that one student (needs ``budget`` >= 1).

    Returns ``{"hparams", "tracker", "extra"}``; ``extra``: the target, the ratio and the
    student's params before evaluation."""
    names = {f.name for f in fields(Args)}
    unknown = set(hparams or {}) - names
    if unknown:
        raise ValueError(f"magnitude hparams are {sorted(names)}; got unknown {sorted(unknown)}")
    args = Args(**(hparams or {}))
    given = [k for k in ("target_params", "target_compression", "target_results") if getattr(args, k) is not None]
    if len(given) != 1:
        raise ValueError(f"magnitude pruning needs exactly one of target_params, target_compression, target_results "
                         f"in --hparams; got {given or 'none'}")
    tracker = tracker or BudgetTracker(budget)
    kwargs_in = dict(env_kwargs or {})
    stage = kwargs_in.pop("stage", "shrink")
    if stage == "remove":
        raise ValueError("magnitude pruning shrinks layers: run it on stage shrink (default) or joint, not remove")
    kwargs_in.pop("ratios", None)
    probe = gym.make(env_id, **{**kwargs_in, "stage": "shrink", "cache": False})
    _, info = probe.reset(seed=seed)
    start, min_width = probe.unwrapped.start_architecture, probe.unwrapped.min_width
    teacher_params = probe.unwrapped.teacher_architecture.params
    shrinkable = [bool(row.sum() > 1) for row in np.asarray(info["layer_masks"])]
    probe.close()
    if args.target_params is not None:
        target = check_int("target_params", args.target_params, min=1)
    elif args.target_compression is not None:
        target = math.floor(teacher_params / check_float("target_compression", args.target_compression, min=1.0,
                                                         min_open=True))
    else:
        target = target_from_results(args.target_results, env_id, resolve_protocol(env_id, kwargs_in.get("protocol")), seed,
                                     args.target_agent, args.target_label)
    # a size the user asked for below the narrowest uniform student is their error; another agent's size,
    # which removal can take below any uniform student, gets the closest one
    student, ratio = uniform_width_student(start, target, min_width, clip=args.target_results is not None)
    params = student.params
    clipped = params > target
    if clipped:  # said and recorded, not a crash
        print(f"magnitude: target {target:,} params is below the narrowest uniform student; pruning to that one "
              f"({params:,} params, every shrinkable layer at {min_width} channels)", file=sys.stderr)
    if ratio >= 1.0 or params >= start.params:
        raise ValueError(f"target {target:,} params does not shrink the start architecture ({start.params:,})")
    with private_cache({**kwargs_in, "stage": stage, "ratios": (ratio, 1.0)}) as kwargs:
        env = BudgetWrapper(gym.make(env_id, **kwargs), tracker)
        try:
            _, info = env.reset(seed=seed)
            masks = np.asarray(info["layer_masks"])
            for t in range(len(masks)):
                env.step(0 if masks[t, 0] and shrinkable[t] else 1)
        finally:
            env.close()
    hparams_out = asdict(args)
    if isinstance(args.target_results, str):  # a record names no folder of this machine: relative to the run's cwd
        hparams_out["target_results"] = _relative(args.target_results)
    return {"hparams": hparams_out, "tracker": tracker,
            "extra": {"target_params": target, "ratio": ratio, "student_params": params, "target_clipped": clipped,
                      "teacher_params": teacher_params}}
