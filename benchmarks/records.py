"""Benchmark records: the budget every agent is held to, and the JSONL results file.

A benchmark run is one (env, agent, seed, budget). While it runs, a :class:`BudgetTracker`
watches the terminal ``info`` of every episode:

- the **budget** counts student *evaluations*: terminal infos with ``valid`` and not
  ``cached``. The runner gives every run a private result cache, so "not cached" means
  "a student this run had not evaluated before"; invalid students (cannot be built, not
  smaller than the teacher) cost nothing and do not count. Episodes and env steps are
  counted too, and a run also stops after ``max_episodes`` episodes (an agent that keeps
  proposing students it already evaluated would otherwise never exhaust its budget);
- the **anytime curve**: the best reward after each evaluation;
- the **best student** (highest reward, then fewest params), with what is needed to
  replay it: its actions and the env kwargs of the episode that produced it (stage,
  ratios, start architecture);
- a **table of evaluated students** (one row per evaluation).

At the end, :func:`make_record` turns the tracker into one JSON record (schema
:data:`SCHEMA_VERSION`, fields in :data:`REQUIRED_FIELDS`) and :func:`append_record`
appends it to the results file as one line: one ``os.write`` of the whole line on a file
opened with ``O_APPEND``, then ``fsync``. A run killed mid-write leaves at worst a cut
last line; :func:`read_records` skips lines that do not parse (with a warning), and the
next append starts on a fresh line, so the file stays valid JSONL for every reader that
skips a damaged line.

FLOPs follow ``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs per multiply-add
(:data:`FLOP_CONVENTION`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from typing import Any, Callable, Iterable, Iterator

import gymnasium as gym
import numpy as np

FORMAT = "n2n-gym-bench"
SCHEMA_VERSION = 1
FLOP_CONVENTION = "2 FLOPs/MAC (FlopCounterMode)"

#: Fields every record has (validate checks them).
REQUIRED_FIELDS = (
    "format", "schema_version", "run_id", "created", "env_id", "env_version", "package_version", "git_commit",
    "teacher", "data_variant", "protocol", "eval_seed", "agent", "hparams", "seed", "stage", "env_kwargs",
    "budget", "best", "flop_convention", "curve", "students",
)

#: Columns of ``record["students"]["data"]`` (one row per evaluated student).
STUDENT_COLUMNS = ("evaluation", "episode", "reward", "accuracy", "test_accuracy", "params", "flops", "compression",
                   "stage", "arch_hash")

#: Env kwargs that only change how a run executes, never a result; records leave them out.
RUNTIME_KWARGS = ("cache", "progress", "device", "render_mode", "data_root")


class BudgetExhausted(Exception):
    """Raised by :meth:`BudgetTracker.check` (agents with their own loop may catch it)."""


# ---------------------------------------------------------------------------- JSON
def json_safe(value: Any) -> Any:
    """Numpy scalars/arrays to Python, tuples to lists, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "to_json"):
        return value.to_json()
    return str(value)


# ---------------------------------------------------------------------------- the file
def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` to the JSONL file ``path`` as one line, atomically enough that a
    kill leaves either the whole line or a cut last line (which readers skip)."""
    line = json.dumps(json_safe(record), allow_nan=False, separators=(",", ":")).encode("utf-8") + b"\n"
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:  # a line cut by an earlier kill: start ours on a fresh line
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):  # a short write (full disk): finish it, still one record
            os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_records(path: str | os.PathLike, *, strict: bool = False) -> Iterator[dict]:
    """The records of one JSONL file. Lines that do not parse (a run killed mid-write)
    are skipped with a warning, or raise ``ValueError`` with ``strict``."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            text = raw.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                msg = f"{path}:{n}: skipping a line that is not valid JSON (cut by a kill?): {exc}"
                if strict:
                    raise ValueError(msg) from exc
                warnings.warn(msg, stacklevel=2)
                continue
            if isinstance(record, dict):
                yield record


def read_records(paths: str | os.PathLike | Iterable[str | os.PathLike], *, strict: bool = False) -> list[dict]:
    """All records of one or several JSONL files (damaged lines skipped)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[dict] = []
    for p in paths:
        out.extend(iter_records(p, strict=strict))
    return out


def schema_errors(record: dict) -> list[str]:
    """What is missing or malformed in ``record`` (empty when it follows the schema)."""
    errors = [f"missing field {k!r}" for k in REQUIRED_FIELDS if k not in record]
    if record.get("format") not in (None, FORMAT):
        errors.append(f"format is {record.get('format')!r}, not {FORMAT!r}")
    if isinstance(record.get("schema_version"), int) and record["schema_version"] > SCHEMA_VERSION:
        errors.append(f"schema_version {record['schema_version']} is newer than this reader ({SCHEMA_VERSION})")
    best = record.get("best")
    if isinstance(best, dict):
        errors += [f"missing best.{k}" for k in ("reward", "actions", "architecture", "replay") if k not in best]
    elif "best" in record:
        errors.append("best is not an object")
    return errors


# ---------------------------------------------------------------------------- provenance
def git_commit(path: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout holding this package (+ ``-dirty`` when it
    has uncommitted changes to tracked files), or ``"unknown"``."""
    cwd = pathlib.Path(path) if path else pathlib.Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + "-dirty" if dirty else commit) or "unknown"


def env_version(env_id: str) -> int | None:
    try:
        return gym.spec(env_id).version
    except gym.error.Error:
        return None


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


# ---------------------------------------------------------------------------- env kwargs
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


def record_env_kwargs(env_kwargs: dict | None) -> dict:
    """The user's env kwargs without the runtime-only ones (cache, device, ...)."""
    return json_safe({k: v for k, v in (env_kwargs or {}).items() if k not in RUNTIME_KWARGS})


@contextlib.contextmanager
def private_cache(env_kwargs: dict | None) -> Iterator[dict]:
    """``env_kwargs`` with ``cache`` set to a fresh SQLite file of this run (removed after),
    unless the caller chose a cache: then a cache hit means "seen in this run"."""
    kwargs = dict(env_kwargs or {})
    if "cache" in kwargs:
        yield kwargs
        return
    with tempfile.TemporaryDirectory(prefix="n2n-bench-") as tmp:
        kwargs["cache"] = os.path.join(tmp, "results.sqlite")
        yield kwargs


# ---------------------------------------------------------------------------- tracking
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
        self.evaluations = self.episodes = self.env_steps = 0
        self.cached_episodes = self.invalid_episodes = 0
        self.best: dict | None = None
        self.curve: list[float] = []  # best reward after evaluation i + 1
        self.rows: list[list] = []  # STUDENT_COLUMNS
        self.context: dict = {}  # teacher, data variant, protocol of the first terminal info
        self.device: str | None = None
        self.eval_seconds = 0.0

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
            "max_episodes": self.max_episodes,
        }


def _arch_hash(arch_json: str | None) -> str | None:
    if not arch_json:
        return None
    from n2n_gym.arch import Architecture

    return Architecture.from_json(arch_json).canonical_hash()


class TrackedEnv(gym.Wrapper):
    """Feeds every step and terminal info of ``env`` to a :class:`BudgetTracker`.

    ``action_masks()`` is looked up on the wrapped env (so MaskablePPO still finds it)."""

    def __init__(self, env: gym.Env, tracker: BudgetTracker):
        super().__init__(env)
        self.tracker = tracker
        self.replay = replay_kwargs_of(env)
        self._update: int | None = None
        if tracker.device is None:
            tracker.device = str(getattr(env.unwrapped, "device", None) or resolve_device(None))

    def reset(self, *, seed=None, options=None):
        self._update = (options or {}).get("update")
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.tracker.step()
        if (terminated or truncated) and "valid" in info:
            update = self._update if self._update is not None else getattr(self.env.unwrapped, "_update", None)
            self.tracker.observe(info, self.replay, update=update)
        return obs, reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()


# ---------------------------------------------------------------------------- the record
def make_record(*, env_id: str, agent: str, hparams: dict, seed: int, stage: str | None, env_kwargs: dict,
                tracker: BudgetTracker, protocol: str, eval_seed: int, extra: dict | None = None,
                label: str | None = None) -> dict:
    """One replayable leaderboard record of a finished run; ``label`` names a variant of
    the agent (its hparams) on the leaderboard."""
    import n2n_gym

    best = tracker.best or {"reward": None, "actions": [], "architecture": None, "arch_hash": None, "replay": {},
                            "stage": stage}
    ctx = tracker.context or {}
    teacher = ctx.get("teacher") or {}
    torch_threads = None
    if "torch" in sys.modules:
        torch_threads = sys.modules["torch"].get_num_threads()
    record = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "run_id": uuid.uuid4().hex,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "env_id": env_id, "env_version": env_version(env_id),
        "package_version": n2n_gym.__version__, "git_commit": git_commit(),
        "teacher": teacher, "data_variant": ctx.get("data_variant"),
        "protocol": ctx.get("protocol") or protocol, "eval_seed": eval_seed,
        "agent": agent, "hparams": json_safe(hparams), "seed": seed,
        "stage": stage or best.get("stage"), "env_kwargs": record_env_kwargs(env_kwargs),
        "budget": {**tracker.summary(), "device": tracker.device or resolve_device(env_kwargs.get("device")),
                   "torch_threads": torch_threads, "host": platform.node(), "python": platform.python_version()},
        "best": json_safe(best), "flop_convention": FLOP_CONVENTION,
        "curve": {"x": "evaluations", "y": "best_reward", "best_reward": tracker.curve},
        "students": {"columns": list(STUDENT_COLUMNS), "data": json_safe(tracker.rows)},
    }
    if extra:
        record["extra"] = json_safe(extra)
    if label:
        record["label"] = str(label)
    return record


def accuracy_drop(record: dict, split: str = "test") -> float | None:
    """Teacher accuracy minus the best student's (``split``: "test" or "val")."""
    t = (record.get("teacher") or {}).get("test_accuracy" if split == "test" else "val_accuracy")
    s = (record.get("best") or {}).get("test_accuracy" if split == "test" else "accuracy")
    if t is None or s is None:
        return None
    return float(t) - float(s)
