"""Budgeted runs: a Gymnasium wrapper that counts what an agent spends.

Any agent, ours or a third party's, can be held to a budget of student *evaluations*
(terminal infos with ``valid`` and not ``cached``) by wrapping its env::

    tracker = BudgetTracker(budget=60)
    with private_cache({"protocol": "fast"}) as kwargs:      # a cache hit = seen in this run
        env = BudgetWrapper(gym.make("N2N-DigitsNet-Digits-v0", **kwargs), tracker)
        while not tracker.exhausted:
            ...  # reset / step as usual
    tracker.best, tracker.curve, tracker.summary()

Invalid students (cannot be built, not smaller than the teacher) cost nothing; episodes
and env steps are counted too, and a run also stops after ``max_episodes`` episodes (an
agent that keeps proposing students it already evaluated would otherwise never exhaust
its budget). The tracker keeps the best student (highest reward, then fewest params)
with what replays it, the anytime curve (best reward after each evaluation) and one row
per evaluated student (:data:`STUDENT_COLUMNS`). Its summary also says how many students were
trained in this process during the run, by any path (``trainings``, counted by the evaluator:
``env.unwrapped.evaluator``, a copy or a second env, ``student_test_accuracy``); more than the
evaluations and invalid episodes it counted fails the record (``records.record_errors``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import time
from typing import Callable, Iterator

import gymnasium as gym
import numpy as np

from n2n_gym.evaluation.evaluator import trainings
from n2n_gym.ir.arch import Architecture
from n2n_gym.utils.devices import resolve_device
from n2n_gym.utils.files import json_safe, pid_alive

__all__ = ["BudgetExhausted", "BudgetTracker", "BudgetWrapper", "private_cache", "replay_kwargs_of",
           "STUDENT_COLUMNS", "json_safe", "resolve_device"]

#: Columns of a tracker's rows (one row per evaluated student).
STUDENT_COLUMNS = ("evaluation", "episode", "reward", "accuracy", "test_accuracy", "params", "flops", "compression",
                   "stage", "arch_hash")


class BudgetExhausted(Exception):
    """Raised by :meth:`BudgetTracker.check` (agents with their own loop may catch it)."""


def replay_kwargs_of(env: gym.Env) -> dict:
    """What replays an episode of ``env`` besides the user's env kwargs: its stage, ratio
    table and start architecture (None = the teacher)."""
    u = env.unwrapped
    start = u.start_architecture
    teacher = getattr(u, "teacher_architecture", None)
    same = teacher is not None and start.canonical_hash() == teacher.canonical_hash()
    out = {"stage": u.stage, "start_architecture": None if same else start.to_json()}
    if u.stage != "remove":
        out["ratios"] = list(u.ratios)
    return out


@contextlib.contextmanager
def private_cache(env_kwargs: dict | None) -> Iterator[dict]:
    """``env_kwargs`` with ``cache`` set to a fresh SQLite file of this run (removed after),
    unless the caller chose a cache: then a cache hit means "seen in this run"."""
    kwargs = dict(env_kwargs or {})
    if "cache" in kwargs:
        yield kwargs
        return
    _remove_dead_private_caches()
    with tempfile.TemporaryDirectory(prefix=f"n2n-bench-{os.getpid()}-") as tmp:
        kwargs["cache"] = os.path.join(tmp, "results.sqlite")
        yield kwargs


def _remove_dead_private_caches() -> None:
    # a run killed with -9 cannot remove its private cache folder: those of this user's dead
    # processes go when the next run starts (the folder names the pid that made it)
    for folder in pathlib.Path(tempfile.gettempdir()).glob("n2n-bench-*-*"):
        pid = folder.name.split("-")[2]
        with contextlib.suppress(OSError):
            if pid.isdigit() and folder.stat().st_uid == os.getuid() and not pid_alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)


def _better(a: dict, b: dict | None) -> bool:
    """Higher reward, then fewer params."""
    return b is None or (a["reward"], -a.get("params", 0)) > (b["reward"], -b.get("params", 0))


class BudgetTracker:
    """Counts evaluations, episodes and env steps; keeps the best student, the anytime
    curve and the table of evaluated students. ``on_evaluation(tracker, row)`` is called
    after every evaluation (the runner logs to W&B there)."""

    def __init__(self, budget: int, *, max_episodes: int | None = None, max_seconds: float | None = None,
                 on_evaluation: Callable[["BudgetTracker", dict], None] | None = None):
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        self.budget = int(budget)
        self.max_episodes = max_episodes if max_episodes is not None else 20 * max(self.budget, 1) + 20
        self.max_seconds = max_seconds
        self.on_evaluation = on_evaluation
        self.start_time = time.perf_counter()
        # students trained in this process from here on, by whatever path (the summary's
        # "trainings"): one trained outside the budget makes it exceed the evaluations counted
        self._trainings_at_start = trainings()
        self.evaluations = self.episodes = self.env_steps = 0
        self.cached_episodes = self.invalid_episodes = 0
        self.best: dict | None = None
        self.curve: list[float] = []  # best reward after evaluation i + 1
        self.rows: list[list] = []  # STUDENT_COLUMNS
        self.context: dict = {}  # teacher, data variant, protocol of the first terminal info
        self.device: str | None = None
        self.eval_seconds = 0.0
        # episodes that can end in one step (SB3's n_envs): the last step may spend up to
        # parallel - 1 evaluations past the budget, and the record says it may
        self.parallel = 1

    # ---- what the agent calls ----------------------------------------------------
    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start_time

    @property
    def stop_reason(self) -> str | None:
        if self.evaluations >= self.budget:
            return "budget"
        if self.episodes >= self.max_episodes:
            return "max_episodes"
        if self.max_seconds is not None and self.seconds >= self.max_seconds:
            return "max_seconds"
        return None

    @property
    def exhausted(self) -> bool:
        return self.stop_reason is not None

    def check(self) -> None:
        """Raise :class:`BudgetExhausted` when the run must stop."""
        if self.exhausted:
            raise BudgetExhausted(self.stop_reason)

    def step(self) -> None:
        self.env_steps += 1

    def observe(self, info: dict, replay: dict, *, update: int | None = None) -> dict | None:
        """Record one episode's terminal ``info``; ``replay`` holds the env kwargs that
        replay it (:func:`replay_kwargs_of`). Returns the student row if it was an
        evaluation."""
        self.episodes += 1
        if not self.context:
            self.context = {
                "teacher": {"sha256": info.get("teacher_sha256"), "val_accuracy": info.get("teacher_accuracy"),
                            "test_accuracy": info.get("teacher_test_accuracy"), "params": info.get("teacher_params"),
                            "flops": info.get("teacher_flops")},
                "data_variant": info.get("data_variant"), "protocol": info.get("protocol"),
                "eval_seed": info.get("eval_seed"),
            }
        valid, cached = bool(info.get("valid")), bool(info.get("cached"))
        self.cached_episodes += cached
        self.invalid_episodes += not valid
        student = {
            "reward": float(info["reward"]), "valid": valid, "accuracy": float(info.get("accuracy", 0.0)),
            "test_accuracy": float(info.get("test_accuracy", 0.0)), "params": int(info.get("params", 0)),
            "flops": int(info.get("flops", 0)), "compression": float(info.get("compression", 0.0)),
            "r_c": info.get("r_c"), "r_a": info.get("r_a"), "reason": info.get("reason", ""),
        }
        if info.get("measured_accuracy") is not None:  # a calibrated protocol: "accuracy" is its estimate
            student["measured_accuracy"] = float(info["measured_accuracy"])
        if _better(student, self.best):
            arch = info.get("architecture")
            self.best = {
                **student, "actions": [int(a) for a in info["actions"]], "architecture": arch,
                "arch_hash": _arch_hash(arch), "stage": replay.get("stage", info.get("stage")),
                "replay": json_safe(replay), "update": update, "episode": self.episodes,
                "evaluation": self.evaluations + (valid and not cached),
            }
        if not valid or cached:
            return None
        self.evaluations += 1
        self.eval_seconds += float(info.get("eval_seconds", 0.0))
        self.curve.append(float(self.best["reward"]))
        row = [self.evaluations, self.episodes, student["reward"], student["accuracy"], student["test_accuracy"],
               student["params"], student["flops"], student["compression"], replay.get("stage", info.get("stage")),
               _arch_hash(info.get("architecture"))]
        self.rows.append(row)
        if self.on_evaluation is not None:
            self.on_evaluation(self, dict(zip(STUDENT_COLUMNS, row)))
        return dict(zip(STUDENT_COLUMNS, row))

    def summary(self) -> dict:
        return {
            "requested": self.budget, "evaluations": self.evaluations, "episodes": self.episodes,
            "env_steps": self.env_steps, "cached_episodes": self.cached_episodes,
            "invalid_episodes": self.invalid_episodes, "wall_seconds": round(self.seconds, 3),
            "eval_seconds": round(self.eval_seconds, 3), "stop_reason": self.stop_reason or "agent_finished",
            "max_episodes": self.max_episodes, "parallel": self.parallel,
            "trainings": trainings() - self._trainings_at_start,
        }


def _arch_hash(arch_json: str | None) -> str | None:
    if not arch_json:
        return None
    return Architecture.from_json(arch_json).canonical_hash()


class BudgetWrapper(gym.Wrapper):
    """Feeds every step and every student result of ``env`` to a :class:`BudgetTracker`.

    Results are counted where they happen, in the env itself
    (``N2NEnv.add_result_listener``): an episode played through ``step`` and a batch
    scored by ``env.unwrapped.evaluate_many`` (whose action lists count as env steps too)
    both spend the budget, whichever layer of wrappers the agent calls.
    ``action_masks()`` is looked up on the wrapped env (so MaskablePPO still finds it)."""

    def __init__(self, env: gym.Env, tracker: BudgetTracker):
        super().__init__(env)
        self.tracker = tracker
        self.replay = replay_kwargs_of(env)
        self._listening = hasattr(env.unwrapped, "add_result_listener")
        if self._listening:
            env.unwrapped.add_result_listener(self._result)
        if tracker.device is None:
            tracker.device = str(getattr(env.unwrapped, "device", None) or resolve_device(None))

    def _result(self, info: dict, update: int | None, stepped: bool) -> None:
        if not stepped:  # a batch's action list: the steps it stands for
            self.tracker.env_steps += len(info.get("actions") or ())
        self.tracker.observe(info, self.replay, update=update)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.tracker.step()
        if not self._listening and (terminated or truncated) and "valid" in info:
            self.tracker.observe(info, self.replay, update=info.get("update"))
        return obs, reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()
