"""Compress a network: the whole job of ``n2n-gym compress``, as a library function.

    from n2n_gym.compress import compress

    report = compress("N2N-DigitsNet-Digits-v0", out="runs/digits", agent="n2n")
    report["final"]["compression"], report["final"]["test_accuracy"]

:func:`compress` searches the teacher's students with an agent (``n2n``: the two-stage N2N
search of ``agents/n2n.py``, removal then shrinkage; or any agent of
``n2n_gym.bench.runner.AGENTS``, e.g. ``random``, ``optuna_tpe``, ``evolution``, under a
budget of student evaluations), distils the best student longer (the final distillation),
trains the same-size alternatives the same way (uniform L1 magnitude pruning; the same thin
network from random init), exports the student, measures teacher against student through
the exported files and writes a report and plots, all in a run folder. ``resume=True``
continues a killed run without losing an evaluated student. The CLI (``n2n_gym.cli``) only
parses its arguments and prints.

Run folder::

    config.json      the settings (``resume`` reuses them)
    history.jsonl    every evaluated student, one JSON line each, appended and flushed
    state.pt         (n2n) search state after the last completed policy update (atomic)
    policies.pt      (n2n) the trained policies (``--load-policy`` of a later search)
    cache.sqlite     (other agents) the search's result cache: a resumed search gets the
                     students evaluated before the kill from it, free
    search.jsonl     (other agents) the finished search's record (``n2n-gym validate`` replays
                     it); a resumed run with it skips the search
    student.json/.pt the best student after the final distillation: n2n_gym.load_student(folder)
    student.pt2      torch.export program;  student.onnx  ONNX (dynamo exporter)
    teacher.pt2/.onnx the teacher's exports, for the latency comparison (n2n_gym.evaluation.deploy)
    final.ckpt       the final distillation's checkpoint after each epoch (resume continues it);
                     magnitude.ckpt, thin.ckpt: the same for the same-size alternatives (compare)
    size-<params>.ckpt and sizes/size-<params>/: (--sizes) the other sizes' checkpoints, and each
                     one's student and exports;  sizes.png  their accuracy against latency
    report.json/.txt teacher vs best student vs the alternatives, latency;  rewards.png, pareto.png
                     (report.json names the run's files relative to the run folder: it stays
                     true when the folder is moved)
    timings.json     seconds per stage summed over the run's invocations (the report's durations)

Before the search it says an estimate of the whole run's duration (an upper bound: the
teacher's architecture timed on this machine, ``n2n_gym.evaluation.final.throughput``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import numbers
import os
import pathlib
import re
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import filelock
import gymnasium as gym
import torch
from tqdm.auto import tqdm

import n2n_gym  # noqa: F401  (registers the environments)
from n2n_gym.agents.n2n import N2N, Args, save_policies
from n2n_gym.bench.leaderboard import pareto_front
from n2n_gym.bench.records import BudgetTracker, make_record
from n2n_gym.bench.runner import AGENTS, load_agent
from n2n_gym.data.datasets import PIXELS
from n2n_gym.envs.registration import CUSTOM_ENV_ID, DEFAULT_ENV_ID, canonical_env_id, resolve_protocol
from n2n_gym.evaluation.final import (
    ALTERNATIVES,
    RECIPES,
    alternative_jobs,
    epochs_done,
    estimate_seconds,
    final_students,
    recipe_lr,
    throughput,
)
from n2n_gym.evaluation.distill import PRECISIONS, NonFiniteError
from n2n_gym.evaluation.protocols import get_protocol
from n2n_gym.evaluation.reward import n2n_reward, parse_constraints
from n2n_gym.ir.arch import FLOP_CONVENTION, Architecture
from n2n_gym.ir.students import export_student, save_student
from n2n_gym.utils.files import (
    atomic_torch_save,
    atomic_write_text,
    json_safe,
    remove_stale_temps,
)

RUNS_ROOT = pathlib.Path("runs")
DEFAULT_FINAL_EPOCHS = 30
#: Final-distillation epochs of the ids whose training split makes 30 epochs too long for a CPU:
#: a whole compress run (search, the student and its 2 alternatives) in about 2 hours on 2 cores
#: (ResNet-20 students of 35k-110k params train at 80-90 s per CIFAR-10 epoch on one loaded
#: thread: benchmarks/results/fidelity/n2n-resnet20-cifar10-v0/scores.jsonl, "reference").
FINAL_EPOCHS_BY_ENV = {"N2N-ResNet20-CIFAR10-v0": 20, "N2N-ResNet20-CIFAR10-v1": 20}


def default_final_epochs(env_id: str) -> int:
    """The final distillation's epochs when none are given: :data:`FINAL_EPOCHS_BY_ENV`, else 30."""
    return FINAL_EPOCHS_BY_ENV.get(canonical_env_id(env_id), DEFAULT_FINAL_EPOCHS)

DEFAULT_AGENT = "n2n"
#: What makes a folder a run of ``compress`` (written when its search starts).
RUN_FILES = ("state.pt", "history.jsonl")
#: The ``format`` field of a run's ``config.json``: ``--resume`` continues only a folder whose
#: config.json carries it (or, for runs made before it existed, holds only our settings and a
#: file of ``RUN_FILES``), so that no folder of the user's is taken for a run and overwritten.
RUN_FORMAT = "n2n-gym compress run 1"
ALTERNATIVE_LABELS = {"magnitude": "uniform L1 magnitude pruning", "thin": "hand-designed thin, random init"}
#: settings of the N2N search that are not :func:`compress` settings (``Args`` fields)
_N2N_ONLY = tuple(f.name for f in dataclasses.fields(Args)
                  if f.name not in ("env_id", "env_kwargs", "protocol", "seed", "device", "out", "save_policy",
                                    "progress"))


class CompressError(Exception):
    """A run that cannot start or continue (a folder, a file, a model that cannot be used),
    said in one sentence; ``flag`` names the command-line option it is about, if any."""

    def __init__(self, message: str, flag: str = ""):
        super().__init__(message)
        self.flag = flag


def format_count(n) -> str:
    return f"{int(n):,}" if n is not None else "-"


def format_accuracy(a) -> str:
    return f"{100 * a:.2f}%" if a is not None else "-"


def read_history(path: pathlib.Path) -> list[dict]:
    """The records of a history file; a line cut short by a kill is skipped."""
    rows = []
    if not path.exists():
        return rows
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------------------- the entry point
def compress(env_id: str = DEFAULT_ENV_ID, *, out: str | os.PathLike | None = None, resume: bool = False,
             agent: str = DEFAULT_AGENT, budget: int | None = None, hparams: dict | None = None,
             env_kwargs: dict | None = None, protocol: str | None = None, seed: int = 0, device: str = "auto",
             model: str | None = None, checkpoint: str | os.PathLike | None = None, dataset: str | None = None,
             final_epochs: int | None = None, final_lr: float | None = None, final_recipe: str | None = None,
             final_precision: str | None = None, export: bool | None = None,
             compare: str | Iterable[str] | None = None, latency_rounds: int | None = None,
             final_workers: int | None = None, sizes: int | None = None, progress: bool = True,
             log: Callable[[str], None] | None = None, **n2n_settings: Any) -> dict:
    """Compress the teacher of ``env_id``; returns the report (also ``report.json`` of the run folder).

    - ``out``: the run folder (default ``runs/<env>-seed<seed>-<time>``; a non-empty folder
      holding no run gets a fresh sub-folder, so no file of the user's is overwritten; one
      holding a run is refused unless ``resume``).
    - ``resume``: continue the run in ``out`` (default: the newest under ``runs/``) with its
      ``config.json``. Students evaluated before a kill are kept, a finished search is not
      redone, the final distillation continues from its checkpoints. The search's settings
      given now are ignored; the final distillation's (:data:`FINAL_SETTINGS`, those not None)
      replace the run's in its config.json, and a finished run is finished again with them
      (a student whose training is unchanged keeps its checkpoint; the others train afresh).
    - ``agent``: the search. ``"n2n"``: the two-stage N2N search; its settings are the fields of
      :class:`n2n_gym.agents.n2n.Args` as keywords (``stages``, ``updates``, ``rollouts``, ...).
      Any other name of ``n2n_gym.bench.runner.AGENTS`` (``random``, ``optuna_tpe``,
      ``evolution``, ...) runs that agent as ``n2n-gym bench`` does, with ``hparams``, until it
      has spent ``budget`` student evaluations (a student it proposes again, or an invalid one,
      is free) on the env's stage (``joint`` unless ``env_kwargs`` sets ``stage``).
    - ``budget``: student evaluations of the search. Default: the N2N search's own size,
      ``updates`` x ``rollouts`` (300); for ``n2n`` a given budget sets ``updates`` (a third to
      removal, the rest to the last stage, rounded up to whole updates).
    - ``model``/``checkpoint``/``dataset``: compress your own network on ``N2N-Custom-v0``
      (``n2n_gym.teachers.importer``), as ``n2n-gym compress --model``.
    - ``final_epochs``, ``final_lr``, ``final_recipe``: the final distillation (``final_epochs``
      None: the env's default, :func:`default_final_epochs`: 30, or 20 on ResNet-20 CIFAR-10;
      ``final_recipe`` None: ``"n2n"``, Adam and MSE on logits; or ``"kd-sgd"``, SGD on a cosine
      schedule and the KD loss, :data:`n2n_gym.evaluation.final.RECIPES`; ``final_lr`` None: the
      recipe's, 1e-3 or 0.05); ``final_precision`` (None: ``"auto"``, fp32 on the CPU): ``"bf16"``
      runs its forward passes in bf16 autocast on the CPU too, about twice as fast on a CPU with
      native bf16 (AMX) and slower on one without (the estimate before the run compares the two;
      ``benchmarks/final_precision.py`` measures speed and accuracy); every final student is
      trained alike; ``compare``: the same-size
      alternatives (None: ``magnitude`` and ``thin``; ``()`` or ``""`` for none); ``export``
      (None: True): torch.export and ONNX files; ``latency_rounds`` (None: 3): paired rounds of
      the latency measurement (0 skips it); ``final_workers``: processes that train the final
      students side by side (default: one per student, all at once, or one for a short final
      distillation: :func:`default_final_workers`).
    - ``sizes`` (None: 1): students of the search's Pareto front given the final distillation,
      the best one among them (:func:`pareto_picks`); with ``sizes`` > 1 the others are exported
      to ONNX too and the report and ``sizes.png`` give each one's test accuracy against its
      ONNX Runtime latency (``report["sizes"]``, one row per student trained).
    - ``progress``: progress bars; ``log``: where the run's messages go (default: stderr).

    The report holds the teacher, the search's best student, the final student and the
    alternatives (``report["final"]``, ...), or only ``{"best", "students"}`` when the search
    found no valid student. Raises ``ValueError``/``TypeError`` for a bad setting (before any
    folder is made) and :class:`CompressError` for a run folder or model that cannot be used.
    """
    log = log or _stderr
    env_id = canonical_env_id(env_id)  # "n2n_gym:<id>" is the id itself (its defaults, config.json)
    if resume:
        run_dir = _resume_dir(out)
        if not run_dir.is_dir():  # (not made by _check_writable: nothing to resume is no folder)
            what = "is a file, not a run folder" if run_dir.exists() else "does not exist"
            raise CompressError(f"{run_dir} {what}; nothing to resume (a new run: --out without --resume)",
                                "--resume")
        config = _check_is_run(run_dir)  # before anything is written into it
        given = {"final_epochs": final_epochs, "final_lr": final_lr, "final_recipe": final_recipe,
                 "final_precision": final_precision, "export": export,
                 "compare": compare, "latency_rounds": latency_rounds, "final_workers": final_workers, "sizes": sizes}
        changes = _final_changes(config, {k: v for k, v in given.items() if v is not None}) if config else {}
        done = _finished_report(run_dir)
        if done is not None and (missing := _missing_outputs(run_dir, done)):
            if "history.jsonl" in missing:  # the search's record: nothing can remake it but the search
                raise CompressError(f"{run_dir / 'history.jsonl'} is missing: the search's students are gone; restore "
                                    "the file, or start a new run with another --out", "--resume")
            # a finished run whose files were deleted is finished again (from its checkpoints), not called complete
            log(f"{run_dir} is finished but misses {', '.join(missing)}: its report and exports are made again")
            done = None
        if done is not None and not set(changes) - {"final_workers"}:  # nothing to write: a read-only finished run prints its report too
            log(f"{run_dir} is complete (its report.json); nothing to redo (delete report.json to redo the final "
                "distillation's scoring, exports and report from the checkpoints; or give final-distillation "
                "options to finish it again with them"
                + ("; --final-workers alone changes how students train, not what they become" if changes else "")
                + ")")
            return done
    else:
        if final_epochs is None:
            final_epochs = default_final_epochs(env_id)
        config = _new_config(env_id, agent=agent, budget=budget, hparams=hparams, env_kwargs=dict(env_kwargs or {}),
                             protocol=protocol, seed=seed, device=device, model=model, checkpoint=checkpoint,
                             dataset=dataset, n2n_settings=n2n_settings,
                             **_final_settings(final_epochs=final_epochs, final_lr=final_lr,
                                               final_recipe=final_recipe, final_precision=final_precision,
                                               export=export, compare=compare,
                                               latency_rounds=latency_rounds, final_workers=final_workers,
                                               sizes=sizes))
        env_id, env_kwargs = _custom_teacher(env_id, config["env_kwargs"], model, checkpoint, dataset, log)
        # the id's own protocol when none is given, written into config.json: the run names what it used
        config.update(env_id=env_id, env_kwargs=env_kwargs,
                      protocol=_protocol_name(env_id, protocol))
        if not model:  # (a --model was imported and checked just now)
            # a wrong env id or env kwarg fails here, before a run folder is made (gym.make is cheap)
            gym.make(env_id, **{"protocol": config["protocol"], "device": device, **env_kwargs}).close()
        run_dir = _new_run_dir(out, env_id, seed, log)
    made_here = not run_dir.exists()
    _check_writable(run_dir)
    with _run_lock(run_dir, made_here, "--resume" if resume else "--out"):
        return _locked(config, run_dir, resume, changes if resume else {}, progress, log)


def _locked(config: dict, run_dir: pathlib.Path, resume: bool, changes: dict, progress: bool, log) -> dict:
    """:func:`compress` from the point where it holds the run folder's lock."""
    for stale in remove_stale_temps(run_dir):  # left by a run killed mid-write
        log(f"removed {stale}, a temporary file of an interrupted write")
    config_path = run_dir / "config.json"
    if resume:
        if not config_path.exists():
            raise CompressError(f"{run_dir} holds no config.json; nothing to resume", "--resume")
        config = _check_is_run(run_dir)
        if changes:
            # the old report goes first: a kill between the two writes leaves a run that finishes
            # again with its old settings, never a report that claims settings it was not made with
            (run_dir / "report.json").unlink(missing_ok=True)
            config.update({k: new for k, (_, new) in changes.items()})
            atomic_write_text(config_path, json.dumps(config, indent=1, sort_keys=True))
            _remove_finish_outputs(run_dir)  # none may outlive the settings it was made with (an ONNX file of
            # the old student beside a retrained student.pt, with --no-export)
            log(f"resuming {run_dir} with the final distillation's settings changed in its config.json ("
                + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
                + "); the search's options given now are ignored")
        else:
            log(f"resuming {run_dir} (its config.json; the search's options given now are ignored)")
    else:
        if any((run_dir / f).exists() for f in RUN_FILES):
            raise CompressError(f"{run_dir} already holds a run; pass --resume to continue it or another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(config_path, json.dumps(config, indent=1, sort_keys=True))
    return _run(config, run_dir, resume, progress, log)


# ---------------------------------------------------------------------------- settings and folders
LOCK_FILE = ".compress.lock"


@contextlib.contextmanager
def _run_lock(run_dir: pathlib.Path, made_here: bool, flag: str = "--resume"):
    """One ``n2n-gym compress`` per run folder: two writing one history.jsonl, timings.json and
    checkpoints would mix their students and lose each other's figures. An OS lock (flock, via
    filelock) on ``run_dir / LOCK_FILE``, which also holds the holder's pid; the kernel drops it
    when the process dies, so a killed run leaves no stale lock. :class:`CompressError` when
    another process holds it. The file goes when the run ends, and the folder too when this
    run made it and left nothing in it (a setting refused before the search)."""
    path = run_dir / LOCK_FILE
    lock = filelock.FileLock(path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        try:
            holder = f" (pid {int(path.read_text().strip())})"
        except (OSError, ValueError):
            holder = ""
        raise CompressError(f"{run_dir} is in use by another n2n-gym compress{holder}; wait for it to finish or stop "
                            f"it, then n2n-gym compress --resume {shlex.quote(str(run_dir))}"
                            + ("" if flag == "--resume" else " (or a new run with another --out)"), flag) from None
    try:
        with contextlib.suppress(OSError):  # (flock does not depend on this fd: writing is safe)
            path.write_text(f"{os.getpid()}\n")
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # under the lock: filelock drops a lock on an unlinked file and retries
        lock.release()
        if made_here:
            with contextlib.suppress(OSError):  # only an empty folder goes
                run_dir.rmdir()


def _new_config(env_id: str, *, agent: str, budget: int | None, hparams: dict | None, env_kwargs: dict,
                protocol: str | None, seed: int, device: str, model, checkpoint, dataset, n2n_settings: dict,
                **final: Any) -> dict:
    """The run's ``config.json``, every setting checked (a bad one fails before any folder
    exists); ``final``: the final distillation's, as :func:`_final_settings` returns them."""
    unknown = sorted(set(n2n_settings) - set(_N2N_ONLY))
    if unknown:
        raise TypeError(f"compress() got unexpected keyword argument(s) {unknown}; the N2N search's settings are "
                        f"{', '.join(_N2N_ONLY)}")
    if agent not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}; choose one of {', '.join(AGENTS)}")
    if hparams is not None and not isinstance(hparams, dict):
        raise TypeError(f"hparams must be a dict (JSON object), got {type(hparams).__name__}")
    if agent == DEFAULT_AGENT and hparams:
        raise ValueError("the n2n agent's settings are its own options (--updates, --rollouts, ...), not hparams")
    if budget is not None:
        budget = _count("budget", budget, 1, "student evaluations")
        if agent == DEFAULT_AGENT and n2n_settings.get("updates", Args.updates) != Args.updates:
            raise ValueError(f"--budget {budget} sets the N2N search's --updates (a third to removal); give one of "
                             f"them, not both (--updates {n2n_settings['updates']} was given too)")
    settings = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(Args) if f.name in _N2N_ONLY}
    settings.update(n2n_settings)
    settings.update(env_id=env_id, env_kwargs=env_kwargs, protocol=protocol, seed=seed, device=device)
    Args(**settings)  # checks them all
    return {"format": RUN_FORMAT, **settings, "agent": agent, "budget": budget, "hparams": dict(hparams or {}),
            "model": model,
            "checkpoint": None if checkpoint is None else str(checkpoint), "dataset": dataset, **final}


#: what finishing a run writes beside its checkpoints (report.json first, as the mark of a
#: finished run): removed before a resumed run finishes again with other settings
FINISH_OUTPUTS = ("report.json", "report.txt", "student.json", "student.pt", "student.pt2", "student.onnx",
                  "teacher.pt2", "teacher.onnx", "sizes.png", "sizes")


def _remove_finish_outputs(run_dir: pathlib.Path) -> None:
    for name in FINISH_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


#: the settings of the final distillation and what follows it (exports, latency, sizes): a
#: resumed run takes new values of these, and finishes again with them
FINAL_SETTINGS = ("final_epochs", "final_lr", "final_recipe", "final_precision", "compare", "sizes", "final_workers",
                  "export", "latency_rounds")


def _count(name: str, value, least: int, unit: str = "") -> int:
    """``value`` as an int >= ``least`` (a numpy integer too), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}{f' ({unit})' if unit else ''}, got {value!r}")
    return int(value)


def _final_settings(*, final_epochs: int, final_lr: float | None = None, final_recipe: str | None = None,
                    final_precision: str | None = None, export: bool | None = None, compare=None,
                    latency_rounds: int | None = None, final_workers: int | None = None,
                    sizes: int | None = None) -> dict:
    """The final distillation's settings checked, with their defaults for None (``final_lr``:
    the recipe's), as config.json holds them; ValueError/TypeError names a bad one."""
    final_recipe = "n2n" if final_recipe is None else final_recipe
    if not isinstance(final_recipe, str) or final_recipe not in RECIPES:
        raise ValueError(f"final_recipe: unknown {final_recipe!r}; choose from {', '.join(RECIPES)}")
    final_precision = "auto" if final_precision is None else final_precision
    if not isinstance(final_precision, str) or final_precision not in PRECISIONS:
        raise ValueError(f"final_precision: unknown {final_precision!r}; choose from {', '.join(PRECISIONS)}")
    if final_lr is None:
        final_lr = recipe_lr(final_recipe)
    try:  # (a numpy float too; an int too large for a float is refused as one that is not finite)
        ok = not isinstance(final_lr, bool) and isinstance(final_lr, numbers.Real) and 0 < float(final_lr) < math.inf
    except OverflowError:
        ok = False
    if not ok:
        raise ValueError(f"final_lr must be a finite number > 0, got {final_lr!r}")
    if compare is None:
        names = list(ALTERNATIVES)
    elif isinstance(compare, str):
        names = [c.strip() for c in compare.split(",") if c.strip()]
    elif isinstance(compare, Iterable) and all(isinstance(c, str) for c in compare):
        names = list(compare)
    else:
        raise TypeError(f"compare must be names of {', '.join(ALTERNATIVES)} (a comma-separated string or a list of "
                        f"them), got {compare!r}")
    bad = sorted(set(names) - set(ALTERNATIVES))
    if bad:
        raise ValueError(f"compare: unknown {bad}; choose from {', '.join(ALTERNATIVES)}")
    if len(set(names)) < len(names):
        raise ValueError(f"compare: {names} names an alternative twice; give each once")
    names = [a for a in ALTERNATIVES if a in names]  # one order: "thin,magnitude" is no change of "magnitude,thin"
    if export is not None and not isinstance(export, (bool, numbers.Integral)):
        raise TypeError(f"export must be True or False, got {export!r}")
    # a numpy float32 0.01 is 0.01 (its shortest digits), not 0.009999999776482582
    final_lr = float(str(final_lr)) if hasattr(final_lr, "dtype") else float(final_lr)
    return {"final_epochs": _count("final_epochs", final_epochs, 1, "epochs"), "final_lr": final_lr,
            "final_recipe": final_recipe, "final_precision": final_precision,
            "export": True if export is None else bool(export),
            "compare": ",".join(names),
            "latency_rounds": 3 if latency_rounds is None else _count("latency_rounds", latency_rounds, 0),
            "final_workers": None if final_workers is None else _count("final_workers", final_workers, 1,
                                                                       "processes"),
            "sizes": 1 if sizes is None else _count("sizes", sizes, 1, "students")}


def _final_changes(config: dict, given: dict) -> dict:
    """``{setting: (the run's value, the new one)}`` for the final-distillation settings given
    to a resumed run that differ from its config.json (checked as a new run's are; a new
    ``final_recipe`` without ``final_lr`` brings its own lr)."""
    if not given:
        return {}
    current = {"final_epochs": config.get("final_epochs", DEFAULT_FINAL_EPOCHS),
               "final_recipe": config.get("final_recipe", "n2n"),
               "final_precision": config.get("final_precision", "auto"),
               "compare": config.get("compare", ",".join(ALTERNATIVES)),
               "sizes": config.get("sizes", 1), "final_workers": config.get("final_workers"),
               "export": config.get("export", True), "latency_rounds": config.get("latency_rounds", 3)}
    current["final_lr"] = config.get("final_lr") or recipe_lr(current["final_recipe"])
    merged = {**current, **given}
    if given.get("final_recipe", current["final_recipe"]) != current["final_recipe"] and "final_lr" not in given:
        merged["final_lr"] = None  # the new recipe's own
    new = _final_settings(**merged)
    return {k: (current[k], new[k]) for k in FINAL_SETTINGS if new[k] != current[k]}


def _protocol_name(env_id: str, protocol):
    """``protocol`` (a name or a Protocol), or the registered id's own when None; an unknown id
    is left to ``gym.make``, whose error names the closest ids."""
    if protocol is not None:
        return protocol
    try:
        return resolve_protocol(env_id, None)
    except ValueError:
        return None


def _custom_teacher(env_id: str, env_kwargs: dict, model, checkpoint, dataset, log) -> tuple[str, dict]:
    """``model``/``checkpoint``/``dataset``: compress the user's network on N2N-Custom-v0.
    The env gets the factory spec and the checkpoint's absolute path (JSON, so config.json
    and resume hold them); the model is imported once here so that an unsupported one is
    refused before a run folder exists."""
    if checkpoint is not None and model is None:
        raise CompressError("--checkpoint goes with --model package.module:factory "
                            "(a zoo env's teacher checkpoint is --env-kwargs '{\"teacher_checkpoint\": ...}')")
    if dataset is not None:
        env_kwargs = {**env_kwargs, "dataset": dataset}
    if model is None:
        return env_id, env_kwargs
    from n2n_gym.data.datasets import dataset_info
    from n2n_gym.teachers.importer import import_teacher

    if env_id not in (DEFAULT_ENV_ID, CUSTOM_ENV_ID):
        raise CompressError(f"--model runs on {CUSTOM_ENV_ID}, not on --env {env_id}; drop --env")
    checkpoint = str(pathlib.Path(checkpoint).resolve()) if checkpoint else None
    dataset = env_kwargs.get("dataset", "digits")
    try:
        imported = import_teacher(model, dataset_info(dataset), checkpoint)
    except (ValueError, TypeError) as exc:
        raise CompressError(str(exc)) from None
    log(f"imported {model}: {len(imported.architecture)} layers, {imported.architecture.params:,} params, "
        f"logits reproduced within {imported.max_abs_diff:.1e}" + "".join(f"; {n}" for n in imported.notes))
    return CUSTOM_ENV_ID, {**env_kwargs, "teacher_module": model, "teacher_checkpoint": checkpoint,
                           "dataset": dataset}


def _resume_dir(out) -> pathlib.Path:
    """The run folder to continue: ``out``, else the newest under ``runs/``."""
    if out:
        return pathlib.Path(out)
    runs = sorted((p for p in RUNS_ROOT.glob("*") if _run_config(p)[0] is not None), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise CompressError(f"no run folder under {RUNS_ROOT}/; pass the folder", "--resume")
    return runs[-1]


def _config_keys() -> frozenset[str]:
    """Every key a run's config.json may hold (what :func:`_new_config` writes)."""
    return frozenset({"format", "agent", "budget", "hparams", "model", "checkpoint", "dataset", "final_epochs",
                      "final_lr", "final_recipe", "final_precision", "sizes", "export", "compare", "latency_rounds", "final_workers"} | {f.name for f in dataclasses.fields(Args)})


def _run_config(run_dir: pathlib.Path) -> tuple[dict | None, str]:
    """``(config, "")`` when ``run_dir`` is a run of compress, else ``(None, why not)``. A run's
    config.json is a JSON object with ``format`` = :data:`RUN_FORMAT` and only our settings; one
    without ``format`` (a run made before it) must hold only our settings, its ``env_id``, and a
    file of :data:`RUN_FILES` beside it."""
    path = run_dir / "config.json"
    if not path.is_file():
        return None, "holds no config.json"
    try:
        with open(path, "rb") as f:
            raw = f.read((1 << 20) + 1)
        config = json.loads(raw) if len(raw) <= 1 << 20 else None
    except (OSError, ValueError) as exc:
        return None, f"has a config.json that is not a compress run's ({type(exc).__name__})"
    if not isinstance(config, dict):
        return None, "has a config.json that is not a compress run's (not a JSON object of our settings)"
    unknown = sorted(set(config) - _config_keys())
    if config.get("format") not in (None, RUN_FORMAT) or unknown:
        what = f"unknown keys {', '.join(map(repr, unknown[:5]))}" if unknown else f"format {config.get('format')!r}"
        return None, f"has a config.json that is not a compress run's ({what})"
    if "format" not in config and not (isinstance(config.get("env_id"), str)
                                       and any((run_dir / f).is_file() for f in RUN_FILES)):
        return None, f"has a config.json with no \"format\": {RUN_FORMAT!r} and no {' or '.join(RUN_FILES)}"
    return config, ""


def _check_is_run(run_dir: pathlib.Path) -> dict | None:
    """``--resume`` continues only a run of compress: a folder of the user's that holds some
    config.json is refused, its files untouched. Returns the run's config (None: no config.json)."""
    if not (run_dir / "config.json").exists():
        return None  # said after the stale temporary files are removed
    config, why = _run_config(run_dir)
    if config is None:
        raise CompressError(f"{run_dir} is not an n2n-gym compress run: it {why}; nothing was written there "
                            "(to compress into it, pass --out without --resume: the run goes to a fresh sub-folder)",
                            "--resume")
    return config


def _new_run_dir(out, env_id: str, seed: int, log) -> pathlib.Path:
    """A new run's folder. An ``out`` that is a non-empty folder holding no run is the user's:
    the run goes to a fresh sub-folder of it, said in one line."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env_id).strip("-").lower()
    fresh = f"{slug}-seed{seed}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if not out:
        return RUNS_ROOT / fresh
    out = pathlib.Path(out)
    # a folder of the user's (files, no run of ours): its config.json, student.pt, ... are never
    # overwritten; a folder holding a run is refused later (resume continues it)
    if out.is_dir() and any(out.iterdir()) and not any((out / f).exists() for f in RUN_FILES):
        log(f"{out} holds files that are not an n2n-gym run: this run goes to {out / fresh}")
        return out / fresh
    return out


def _check_writable(run_dir: pathlib.Path) -> None:
    """An unwritable run folder fails now, not after the search."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-check-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CompressError(f"cannot write the run folder {run_dir} ({exc.strerror or exc}); "
                            "choose another --out") from exc


def _search_args(config: dict, progress: bool) -> Args:
    """The search settings of a run's config (``budget`` sets an n2n search's ``updates``)."""
    args = Args(**{k: v for k, v in config.items() if k in {f.name for f in dataclasses.fields(Args)}})
    args.progress = progress
    if not progress:  # also silence the env's teacher-training bar (not saved in config.json)
        args.env_kwargs = {"progress": False, **args.env_kwargs}
    if config.get("budget") and config.get("agent", DEFAULT_AGENT) == DEFAULT_AGENT:
        args.updates = n2n_updates(int(config["budget"]), args.stage_list(), args.rollouts)
    return args


def _budget_words(config: dict, args: Args) -> str | None:
    """What an n2n search makes of a ``--budget`` that is not whole updates, said once per run."""
    budget = config.get("budget")
    if not budget or config.get("agent", DEFAULT_AGENT) != DEFAULT_AGENT:
        return None
    total = sum(args.update_list()) * args.rollouts
    if total == int(budget):
        return None
    return (f"--budget {budget}: the N2N search trains whole updates of {args.rollouts} students per stage "
            f"(updates {args.updates}): {total} students")


def n2n_updates(budget: int, stages: list[str], rollouts: int) -> str:
    """``updates`` of an N2N search of about ``budget`` students: a third of them to each stage
    before the last (at least one update), the rest to the last, in whole updates of ``rollouts``."""
    first = max(1, math.ceil(budget / 3 / rollouts)) if len(stages) > 1 else 0
    last = max(1, math.ceil((budget - first * rollouts * (len(stages) - 1)) / rollouts))
    return ",".join([str(first)] * (len(stages) - 1) + [str(last)])


def search_budget(config: dict, args: Args) -> int:
    """Student evaluations of the run's search: ``budget``, else updates x rollouts."""
    return int(config.get("budget") or sum(args.update_list()) * args.rollouts)


#: below this many training images per final student (epochs x training split) the students
#: train one after another: a worker process takes ~10 s to start (data and teacher), more
#: than a digits distillation takes (a break-it pass: 3 x 12 digits epochs took 20 s side by
#: side, 3 x 30 took 12 s in one process)
SIDE_BY_SIDE_IMAGES = 200_000


def default_final_workers(students: int, train_images: int | None = None) -> int:
    """Processes for ``students`` final distillations of ``train_images`` training images each:
    one per student, all side by side (on 2 cores three take 1.5 distillations' time instead of
    2 for two-then-one, which leaves a core idle), or one for short ones
    (:data:`SIDE_BY_SIDE_IMAGES`)."""
    if train_images is not None and train_images < SIDE_BY_SIDE_IMAGES:
        return 1
    return max(1, students)


def _epochs_done(unwrapped, run_dir: pathlib.Path, seed: int, final_epochs: int, final_lr: float, recipe: str,
                 precision: str, compare: tuple[str, ...], sizes: int) -> int:
    """Student-epochs of the final distillation already in a resumed run's checkpoints
    (:func:`n2n_gym.evaluation.final.epochs_done` of the jobs :func:`_final_jobs` makes for the
    history's best student; 0 with none yet)."""
    history = read_history(run_dir / "history.jsonl")
    best = _best_of(history)
    if best is None or not best.get("valid"):
        return 0
    jobs, size_jobs, _, _ = _final_jobs(unwrapped, run_dir, best, history, compare, sizes, lambda _: None)
    return epochs_done(unwrapped.evaluator, jobs + size_jobs, final_epochs, final_lr, seed, recipe, precision)


def _print_estimate(args: Args, students: int, final_epochs: int, final_students: int, final_workers: int | None,
                    log, sizes_asked: bool = False, final_precision: str = "auto",
                    epochs_done: Callable[[Any], int] | None = None) -> None:
    """The run's duration, estimated before it starts from a timing of the teacher's
    architecture now (``n2n_gym.evaluation.final.throughput``): an upper bound, as students are
    smaller. With ``final_precision="bf16"`` the final distillation is timed in bf16 and fp32,
    and the log says how they compare on this machine. ``epochs_done(unwrapped env)``: the
    student-epochs a resumed run's checkpoints hold (:func:`_epochs_done`), not counted again."""
    env = gym.make(args.env_id, **{"protocol": args.protocol, "device": args.device, **args.env_kwargs})
    ev = env.unwrapped.evaluator
    rates = throughput(ev)
    if final_precision != "auto" and torch.device(ev.device).type == "cuda":
        log(f"--final-precision {final_precision}: on CUDA the final distillation is in bf16 autocast either way")
    elif final_precision != "auto":
        # paired and repeated (a few batches each; one timing alone read 1.1x to 2.2x under load), the best of each
        auto, other = 0.0, 0.0
        for _ in range(3):
            auto = max(auto, throughput(ev, batches=4)["augmented"])
            other = max(other, throughput(ev, batches=4, precision=final_precision)["augmented"])
        log(f"--final-precision {final_precision}: the final distillation measured {other / auto:.2f}x as fast as in "
            f"fp32 (auto on the CPU) ({other:.0f} vs {auto:.0f} img/s now, the best of 3 paired timings)"
            + ("; slower on this machine: drop --final-precision" if other < auto else ""))
        rates = {**rates, "augmented": other}
    done_epochs = epochs_done(env.unwrapped) if epochs_done else 0
    env.close()
    data = ev.data
    workers = int(args.env_kwargs.get("workers", 1)) if args.env_kwargs.get("backend", "inline") != "inline" else 1
    final_workers = final_workers or default_final_workers(final_students, final_epochs * len(data.train_idx))
    est = estimate_seconds(rates, get_protocol(args.protocol), students, len(data.train_idx), len(data.val_idx),
                           len(data.y_test), final_epochs, final_students, workers=workers, final_workers=final_workers)
    all_epochs = final_students * final_epochs
    final = est["final"] * max(all_epochs - done_epochs, 0) / all_epochs
    done = f", {done_epochs} of those epochs done in their checkpoints" if done_epochs else ""
    # training only: starting processes, exports and the latency measurement (tens of seconds) are not in it
    log(f"estimated training time (students timed as the teacher at {rates['augmented']:.0f} / "
        f"{rates['reused_logits']:.0f} img/s now, so an upper bound on a long run): {_duration(est['search'] + final)} "
        f"= search {_duration(est['search'])} ({students} students, cache hits free) + final distillation "
        f"{_duration(final)} ({'up to ' if sizes_asked else ''}{final_students} student(s) x {final_epochs} epochs, "
        f"{min(final_workers, final_students)} at a time{done}); exports and latency come after")


def _duration(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else (f"{m} min" if m else f"{seconds:.0f} s")


# ---------------------------------------------------------------------------- the searches
def _search_n2n(args: Args, run_dir: pathlib.Path, resuming: bool, progress: bool, estimate, log) -> dict | None:
    """The N2N search, resumable from ``state.pt`` (the students of completed updates are
    kept, the interrupted update is redone); returns its best student."""
    state_path, history_path = run_dir / "state.pt", run_dir / "history.jsonl"
    state = None
    if resuming and state_path.exists():
        try:  # a run folder may come from elsewhere: loading it never runs code
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors have many types
            raise CompressError(f"{state_path} cannot be read as a search state ({type(exc).__name__}); start a new "
                                "run with another --out", "--resume") from exc
    done_key = (state["stage_index"], state["update"]) if state else (0, 0)
    kept = [r for r in read_history(history_path) if (r["stage_index"], r["update"]) < done_key]
    if state and len(kept) != state["evaluations"]:
        log(f"warning: history holds {len(kept)} students of completed updates, the state {state['evaluations']}")
    atomic_write_text(history_path, "".join(json.dumps(r) + "\n" for r in kept))
    history_file = open(history_path, "a")

    bar: Any = None

    def on_student(record: dict) -> None:
        try:
            history_file.write(json.dumps(record) + "\n")
            history_file.flush()
        except OSError as exc:  # e.g. a full disk: name the file; the students before it are kept
            raise OSError(exc.errno, f"cannot append to {history_path}: {exc.strerror}; free disk space, then "
                                     f"n2n-gym compress --resume {run_dir}") from exc
        if not record.get("cached"):  # the bar counts trained students (a cached repeat is free, as in the budget)
            bar.update(1)
        bar.set_postfix_str(f"stage {record['stage']}, update {record['update']}, best reward "
                            f"{search.best['reward']:.4f}")

    def on_update(s: N2N) -> None:
        atomic_torch_save(s.state_dict(), state_path)

    search = N2N(args, on_student=on_student, on_update=on_update)
    if state:
        search.load_state_dict(state, history=kept)
    trained = sum(not r.get("cached") for r in kept)
    estimate(max(search.total_evaluations - trained, 0))
    bar = tqdm(total=search.total_evaluations, initial=trained, unit="student", desc="n2n-gym compress",
               disable=not progress, dynamic_ncols=True)
    if search.best:
        bar.set_postfix_str(f"best reward {search.best['reward']:.4f}")
    try:
        search.run()
    finally:
        bar.close()
        history_file.close()
    save_policies(search, run_dir / "policies.pt")
    return search.best


class SearchTracker(BudgetTracker):
    """The budget of a search of ``compress``: a student counts when it is valid and new to
    this search (by canonical architecture hash), whatever the result cache says. Its cache
    lives in the run folder, so a resumed search replays the students evaluated before the
    kill from it (free in time, counted as before) and spends its budget on the same
    students as an uninterrupted one. ``on_student(info)`` gets each counted student's info."""

    def __init__(self, budget: int, on_student: Callable[[dict], None], **kwargs):
        super().__init__(budget, **kwargs)
        self.on_student = on_student
        self.seen: set[str] = set()

    def observe(self, info: dict, replay: dict, *, update: int | None = None) -> dict | None:
        counted = info
        if info.get("valid") and info.get("architecture"):
            key = Architecture.from_json(info["architecture"]).canonical_hash()
            counted = {**info, "cached": key in self.seen}
            self.seen.add(key)
        row = super().observe(counted, replay, update=update)
        if row is not None:  # (its "cached": the env's word, i.e. whether it came from the result cache)
            self.on_student({**info, "update": update})
        return row


def _search_agent(agent: str, config: dict, args: Args, run_dir: pathlib.Path, fresh: bool, progress: bool,
                  estimate, log) -> dict | None:
    """A benchmark agent's search (``n2n_gym.bench.runner.AGENTS``) under the run's budget; its
    record goes to ``search.jsonl``, which a resumed run reuses instead of searching again.
    Returns the best student of ``history.jsonl``. A new run (``fresh``) whose agent refuses its
    settings (``ValueError``/``TypeError``) before any student leaves no run behind."""
    history_path, record_path = run_dir / "history.jsonl", run_dir / "search.jsonl"
    budget = search_budget(config, args)
    if record_path.exists():
        try:
            json.loads(record_path.read_text().splitlines()[0])
            history = read_history(history_path)
            log(f"the search is done ({record_path}, {len(history)} students): not redone")
            estimate(0)  # what is left: the final distillation (hours on CIFAR-10)
            return _best_of(history)
        except (ValueError, IndexError):
            log(f"{record_path} cannot be read: the search runs again (students in its cache are free)")
    before = len(read_history(history_path))  # students of a killed search: in the cache, replayed free
    atomic_write_text(history_path, "")
    history_file = open(history_path, "a")
    if before:
        log(f"the search restarts from its seed: the {before} students evaluated before come from its cache")
    estimate(max(budget - before, 0))  # (before the bar: a line of its own)
    bar = tqdm(total=budget, unit="evaluation", desc=f"n2n-gym compress ({agent})", disable=not progress,
               dynamic_ncols=True)
    len_history = [0]

    def on_student(info: dict) -> None:
        record = json_safe({"evaluation": tracker.evaluations - 1, "stage_index": 0,
                            **{k: v for k, v in info.items() if k not in ("action_mask", "layer_masks")}})
        try:
            history_file.write(json.dumps(record) + "\n")
            history_file.flush()
        except OSError as exc:
            raise OSError(exc.errno, f"cannot append to {history_path}: {exc.strerror}; free disk space, then "
                                     f"n2n-gym compress --resume {run_dir}") from exc
        # the bar counts what the budget counts (a cached or invalid student is free)
        bar.update(min(tracker.evaluations, budget) - bar.n)
        bar.set_postfix_str(f"{len_history[0] + 1} students seen, best reward {tracker.best['reward']:.4f}")
        len_history[0] += 1

    tracker = SearchTracker(budget, on_student)
    user_kwargs = dict(config.get("env_kwargs") or {})
    kwargs = {**args.env_kwargs, "protocol": args.protocol, "device": args.device,
              "cache": str(run_dir / "cache.sqlite")}
    try:
        out = load_agent(agent)(args.env_id, args.seed, budget, kwargs, dict(config.get("hparams") or {}),
                                tracker=tracker, wandb_run=None)
    except (ValueError, TypeError):
        if fresh and tracker.evaluations == 0:  # e.g. a bad hparam: no run is left behind, the same --out works again
            history_file.close()
            for leftover in [history_path, run_dir / "config.json", run_dir / TIMINGS_FILE,
                             *run_dir.glob("cache.sqlite*")]:
                leftover.unlink(missing_ok=True)  # (the folder too, when this run made it: _run_lock)
        raise
    finally:
        bar.close()
        history_file.close()
    record = make_record(env_id=args.env_id, agent=agent, hparams=out["hparams"], seed=args.seed,
                         stage=user_kwargs.get("stage") or AGENTS[agent].default_stage, env_kwargs=user_kwargs,
                         tracker=tracker, protocol=args.protocol, eval_seed=tracker.context.get("eval_seed"),
                         extra=out.get("extra"))
    atomic_write_text(record_path, json.dumps(record) + "\n")
    return _best_of(read_history(history_path))


def _finished_report(run_dir: pathlib.Path) -> dict | None:
    """The report of a run that finished (report.json with its final student), else None."""
    try:
        report = json.loads((run_dir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not ("final" in report or "best" in report):
        return None
    return {**report, "run_dir": str(run_dir)}  # where it is now (the folder may have moved)


def _missing_outputs(run_dir: pathlib.Path, report: dict) -> list[str]:
    """The files a finished run's report names (its student, exports, plots, report.txt and the
    search's history) that are no longer in ``run_dir``."""
    if "final" not in report:  # a search that found no valid student: its report is all there is
        return []
    exports = [v for k, v in (report.get("exports") or {}).items() if k in ("onnx", "torch.export")]
    names = ["history.jsonl", "student.json", "student.pt", "report.txt", *exports, *(report.get("plots") or [])]
    return [n for n in names if isinstance(n, str) and not (run_dir / n).is_file()]


def _best_of(history: list[dict]) -> dict | None:
    """The first student of highest reward, then fewest parameters (as the N2N search keeps it)."""
    best = None
    for r in history:
        if best is None or (r["reward"], -r.get("params", 0)) > (best["reward"], -best.get("params", 0)):
            best = r
    return best


# ---------------------------------------------------------------------------- the run
def _run(config: dict, run_dir: pathlib.Path, resuming: bool, progress: bool, log) -> dict:
    agent = config.get("agent", DEFAULT_AGENT)
    args = _search_args(config, progress)
    if not resuming and (words := _budget_words(config, args)):
        log(words)
    final_epochs, export = int(config.get("final_epochs", DEFAULT_FINAL_EPOCHS)), bool(config.get("export", True))
    # a run made before recipes existed has none: it was "n2n"
    final_recipe = str(config.get("final_recipe", "n2n"))
    final_lr = float(config.get("final_lr") or recipe_lr(final_recipe))
    final_precision = str(config.get("final_precision", "auto"))
    compare = tuple(c for c in str(config.get("compare", "magnitude,thin")).split(",") if c)
    sizes = int(config.get("sizes", 1))  # a run made before --sizes: the best student alone
    # how many processes is this machine's business, not the run's: a resumed run recomputes it
    final_workers = config.get("final_workers")  # None: by the final distillation's size, when the data is known

    def estimate(students: int) -> None:
        # (--sizes N: the Pareto front, unknown before the search, may hold fewer)
        _print_estimate(args, students, final_epochs, len(compare) + sizes, final_workers, log, sizes > 1,
                        final_precision,
                        lambda unwrapped: _epochs_done(unwrapped, run_dir, args.seed, final_epochs, final_lr,
                                                       final_recipe, final_precision, compare, sizes))

    timings = _Timings(run_dir, log)
    with timings.stage("search"):
        if agent == DEFAULT_AGENT:
            best = _search_n2n(args, run_dir, resuming, progress, estimate, log)
        else:
            best = _search_agent(agent, config, args, run_dir, not resuming, progress, estimate, log)
    history = read_history(run_dir / "history.jsonl")
    if best is None or not best.get("valid"):
        log("no valid student was found; nothing to distil or export")
        report = {"best": best, "students": len(history)}
        atomic_write_text(run_dir / "report.json", json.dumps(report, indent=1))
        return report

    # ---- final distillation of the best student, exports, report, plots
    env = gym.make(args.env_id, **{"protocol": args.protocol, "device": args.device, **args.env_kwargs})
    try:
        return _finish(env.unwrapped, config, args, agent, run_dir, best, history, final_epochs, final_lr, export,
                       compare, final_workers, log, timings, final_recipe, sizes, final_precision)
    finally:
        env.close()


def _final_jobs(unwrapped, run_dir: pathlib.Path, best: dict, history: list[dict], compare: tuple[str, ...],
                sizes: int, log) -> tuple[list, list, list[dict], float | None]:
    """The final distillation's jobs (:data:`n2n_gym.evaluation.final.FinalJob`): ``(the best
    student's and the alternatives', the other sizes', the Pareto picks of those, the
    alternatives' width ratio or None)``; alternatives that cannot be made are said, not fatal."""
    arch = Architecture.from_json(best["architecture"])
    jobs = [("final", arch, "inherit", run_dir / "final.ckpt")]
    picks = pareto_picks(history, best, sizes)[1:]  # (the best student is "final")
    size_jobs = [(f"size-{p['params']}", Architecture.from_json(p["architecture"]), "inherit",
                  run_dir / f"size-{p['params']}.ckpt") for p in picks]
    ratio = None
    if compare:
        try:
            alt_jobs, ratio = alternative_jobs(unwrapped.start_architecture, arch.params, compare, unwrapped.min_width,
                                               checkpoints=run_dir)
            jobs += alt_jobs
        except ValueError as exc:  # a student smaller than any uniform one: said, not fatal
            log(f"alternatives not trained: {exc}")
    return jobs, size_jobs, picks, ratio


def _finish(unwrapped, config: dict, args: Args, agent: str, run_dir: pathlib.Path, best: dict, history: list[dict],
            final_epochs: int, final_lr: float, export: bool, compare: tuple[str, ...], final_workers: int | None,
            log, timings: _Timings, final_recipe: str = "n2n", sizes: int = 1, final_precision: str = "auto") -> dict:
    arch = Architecture.from_json(best["architecture"])
    teacher = unwrapped.teacher
    jobs, size_jobs, picks, ratio = _final_jobs(unwrapped, run_dir, best, history, compare, sizes, log)
    if sizes > 1 and len(picks) < sizes - 1:
        log(f"--sizes {sizes}: the search's Pareto front holds {len(picks) + 1} student(s); all are trained")
    alt_names = [j[0] for j in jobs[1:]]
    jobs += size_jobs
    images = final_epochs * len(unwrapped.evaluator.data.train_idx)
    workers = min(final_workers or default_final_workers(len(jobs), images), len(jobs))
    bf16 = "" if final_precision == "auto" else f", {final_precision} autocast"
    log(f"final distillation ({final_epochs} epoch{'s' if final_epochs != 1 else ''} over the training split, recipe "
        f"{final_recipe}, lr {final_lr:g}{bf16}) "
        "of the best student"
        + (f", at its size {', '.join(alt_names)}" if alt_names else "")
        + (f", {len(size_jobs)} more of the Pareto front ({', '.join(j[0] for j in size_jobs)})" if size_jobs else "")
        + (f", {workers} at a time in worker processes" if workers > 1 else "") + " ...")
    with timings.stage("final_distillation"):  # wall time of all of them (a row's seconds: that student's)
        try:
            trained = final_students(unwrapped.evaluator, jobs, final_epochs, final_lr, args.seed, workers,
                                     args.progress, recipe=final_recipe, precision=final_precision)
        except NonFiniteError as exc:  # the lr is the usual cause; the other students' checkpoints are kept
            default = recipe_lr(final_recipe)
            smaller = default if final_lr > default else final_lr / 10  # back to the recipe's own at once
            raise CompressError(
                f"the final distillation at lr {final_lr:g} (recipe {final_recipe}, whose own lr is {default:g}) "
                f"failed: {exc}; continue with a smaller lr: n2n-gym compress --resume {shlex.quote(str(run_dir))} "
                f"--final-lr {smaller:g}", "--final-lr") from None
    # the checkpoints keep each student's training time exactly; timings.json loses up to a minute to a kill:
    # side by side or one after another, the stage took at least as long as its longest student
    timings.at_least("final_distillation", max(r["seconds"] for _, r in trained.values()))
    module, row = trained.pop("final")
    sized = {name: trained.pop(name) for name, *_ in size_jobs}
    val_acc, test_acc = row["val_accuracy"], row["test_accuracy"]
    chance = 1 / unwrapped.evaluator.data.info.num_classes
    warned = []  # said now, and kept in the report for whoever reads the run folder later
    if val_acc < 1.5 * chance:  # trained, yet no better than guessing
        default = recipe_lr(final_recipe)
        warned.append(f"the final student scores {format_accuracy(val_acc)} on validation, about chance "
                      f"({format_accuracy(chance)}): the final distillation did not train it"
                      + (f"; its lr {final_lr:g} is above the recipe's {default:g}: n2n-gym compress --resume "
                         f"{shlex.quote(str(run_dir))} --final-lr {default:g}" if final_lr > default else ""))
    for w in warned:
        log(f"warning: {w}")
    reward = n2n_reward(student_params=arch.params, teacher_params=teacher.params, student_accuracy=val_acc,
                        teacher_accuracy=teacher.val_accuracy).value
    data = unwrapped.evaluator.data
    protocol = get_protocol(args.protocol)
    teacher_row = {"val_accuracy": teacher.val_accuracy, "test_accuracy": teacher.test_accuracy,
                   "params": teacher.params, "flops": teacher.architecture.flops, "compression": 1.0, "reward": None}
    search_row = {"val_accuracy": best["accuracy"], "test_accuracy": best["test_accuracy"], "params": best["params"],
                  "flops": best["flops"], "compression": best["compression"], "reward": best["reward"],
                  "stage": best["stage"], "evaluation": best["evaluation"]}
    if protocol.calibration is not None:  # the reward's accuracy is an estimate; the measurement beside it
        search_row["measured_val_accuracy"] = best.get("measured_accuracy")
    final_row = {"val_accuracy": val_acc, "test_accuracy": test_acc, "params": arch.params, "flops": arch.flops,
                 "compression": teacher.params / arch.params, "reward": reward, "epochs": final_epochs,
                 "recipe": final_recipe, "lr": final_lr, "precision": final_precision, "seconds": row["seconds"]}
    # every final row was trained so
    recipe = {"epochs": final_epochs, "recipe": final_recipe, "lr": final_lr, "precision": final_precision}
    others = {}
    for name, (_, r) in trained.items():
        others[name] = {**r, **recipe, "width_ratio": ratio, "architecture": jobs[1][1].to_dict(),
                        "reward": n2n_reward(student_params=r["params"], teacher_params=teacher.params,
                                             student_accuracy=r["val_accuracy"],
                                             teacher_accuracy=teacher.val_accuracy).value}
    # what every saved student carries beside its weights (the best one here, the other sizes below)
    provenance = {"env_id": args.env_id, "teacher": teacher.summary(),
                  "normalization": {"mean": list(data.info.mean), "std": list(data.info.std), "scale": "x / 255",
                                    **({"pixels": PIXELS[data.info.name]} if data.info.name in PIXELS else {})}}
    save_student(run_dir, module.cpu(), **provenance,
                 metrics=final_row, search_metrics=search_row)
    if not export and int(config.get("latency_rounds", 3)) > 0:
        log("latency not measured: it times the exported files, and this run exports none (--no-export)")
    with timings.stage("export"):
        exports = export_student(module, run_dir) if export else {}
        latency = _latency(run_dir, teacher, arch, exports, int(config.get("latency_rounds", 3)))
        size_rows = _size_rows(run_dir, provenance, final_row, search_row, latency,
                               {name: (m, {**r, **recipe}) for name, (m, r) in sized.items()}, picks,
                               export, int(config.get("latency_rounds", 3)), exports) if sizes > 1 else []
    for stale in sorted((run_dir / "sizes").glob("size-*")):  # sizes of an earlier --sizes, now not trained
        if stale.is_dir() and stale.name not in sized:
            shutil.rmtree(stale)
            log(f"removed {stale}: a student of an earlier --sizes that this run's settings do not train")
    plots = _plots(run_dir, history, final_row, "N2N" if agent == DEFAULT_AGENT else agent)
    if size_rows:
        plots.append(_plot_sizes(run_dir, teacher_row, size_rows, data.variant))
    table = _report_table(teacher_row, search_row, final_row, protocol.name, others)
    n_val, n_test = len(data.val_idx), len(data.y_test)
    estimates = ("" if protocol.calibration is None else
                 f", and as the protocol is calibrated they are its ESTIMATES of the accuracy after training (the "
                 f"measured validation accuracy: {format_accuracy(search_row.get('measured_val_accuracy'))})")
    notes = (
        f"Data: {data.identity}. Accuracies: teacher on the whole validation ({n_val}) and test ({n_test}) splits. "
        "Search rows are "
        f"LOW FIDELITY: protocol '{protocol.name}' ({protocol.epochs} epoch(s) of distillation on "
        f"{protocol.train_images or 'all'} training images, scored on {min(protocol.val_images or n_val, n_val)} "
        f"validation / {min(protocol.test_images or n_test, n_test)} test images); they are what the reward "
        f"used{estimates}. Final rows: after the final distillation ({final_epochs} epoch{'s' if final_epochs != 1 else ''} over the whole training "
        f"split, recipe '{final_recipe}' at lr {final_lr:g}{bf16}, the same for every final row), on the whole splits. Reward R = Rc * Ra uses validation accuracy; test accuracy is reported only. "
        f"FLOPs: {FLOP_CONVENTION}.")
    constraints = _constraint_checks(args.env_kwargs.get("constraints"), {"best student": final_row, **others})
    seconds = timings.seconds()  # summed over the run's invocations (timings.json)
    report = {
        "env_id": args.env_id, "run_dir": str(run_dir), "agent": agent, "args": dataclasses.asdict(args),
        "data": {"variant": data.variant, "digest": data.digest},  # every accuracy below is on it
        "final_epochs": final_epochs, "final_recipe": final_recipe, "final_lr": final_lr,
        "final_precision": final_precision, "teacher": teacher_row, "search_best": search_row, "final": final_row,
        "alternatives": {k: {f: v for f, v in r.items() if f != "architecture"} for k, r in others.items()},
        "constraints": constraints,
        "students": len(history),
        "distinct_students": len({r["architecture"] for r in history if r.get("architecture")}),
        "student_architecture": arch.to_dict(), "exports": _in_run(run_dir, exports), "latency": latency,
        "plots": [_relative(run_dir, path) for path in plots],
        **({"sizes": size_rows} if size_rows else {}),
        "seconds": seconds,
        "notes": notes,
        "warnings": warned,
    }
    if agent != DEFAULT_AGENT:
        record = json.loads((run_dir / "search.jsonl").read_text().splitlines()[0])
        report["search"] = {"agent": agent, "hparams": record["hparams"], "budget": record["budget"],
                            "record": str(run_dir / "search.jsonl")}
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=1))
    text = (f"{table}\n\n{''.join(f'WARNING: {w}' + chr(10) for w in warned)}{_constraints_text(constraints)}"
            f"{notes}\n\nbest student found at evaluation {best['evaluation']} (stage {best['stage']}) of "
            f"{len(history)}; {report['distinct_students']} distinct students; "
            f"{seconds['total']:.0f} s (search {seconds['search']:.0f} s, final distillation "
            f"{seconds['final_distillation']:.0f} s, export and latency {seconds['export']:.0f} s; over "
            f"{seconds['invocations']} invocation(s))\n\n{_latency_text(latency)}{_sizes_text(size_rows)}{arch.table()}\n")
    atomic_write_text(run_dir / "report.txt", text)
    return report


# ---------------------------------------------------------------------------- several sizes
def pareto_picks(history: list[dict], best: dict, n: int) -> list[dict]:
    """``best`` and up to ``n - 1`` other students of the search's Pareto front (fewest
    parameters for the accuracy the search gave them; :func:`n2n_gym.bench.leaderboard.pareto_front`),
    history rows. Each next pick is the front's student farthest in log(params) from those
    picked, so that the sizes spread over the front (farthest-point sampling, ties to the
    smaller); deterministic for a history."""
    rows: dict[str, dict] = {}
    for r in history:  # a student's first row (a resampled one keeps its first evaluation)
        if r.get("valid") and r.get("architecture"):
            rows.setdefault(r["architecture"], r)
    front_points = set(pareto_front([(r["params"], r["accuracy"]) for r in rows.values()]))
    front = sorted((r for r in rows.values() if (r["params"], r["accuracy"]) in front_points),
                   key=lambda r: (r["params"], -r["accuracy"]))
    front = [r for k, r in enumerate(front) if k == 0 or r["params"] != front[k - 1]["params"]]  # one per size
    picks = [best]
    candidates = [r for r in front if r["params"] != best["params"]]
    while len(picks) < n and candidates:
        def gap(r):
            return min(abs(math.log(r["params"]) - math.log(p["params"])) for p in picks)
        far = max(candidates, key=lambda r: (gap(r), -r["params"]))
        picks.append(far)
        candidates.remove(far)
    return picks


def _size_rows(run_dir: pathlib.Path, provenance: dict, final_row: dict, search_row: dict, latency,
               sized: dict, picks: list[dict], export: bool, rounds: int, exports: dict | None = None) -> list[dict]:
    """``report["sizes"]``: the best student and the other Pareto picks (none when the front
    holds only the best) after the final distillation, by parameters; each of ``picks`` (the others) saved (and exported) in ``sizes/<name>/``, and
    its ONNX Runtime latency measured against the teacher's file as the best student's was."""
    keys = ("params", "flops", "compression", "val_accuracy", "test_accuracy")

    def onnx_latency(lat) -> dict:
        rt = ((lat or {}).get("runtimes") or {}).get("onnxruntime")
        return {} if not rt else {"latency_ms": rt["student"]["latency_ms"], "speedup": rt["speedup"],
                                  "teacher_latency_ms": rt["teacher"]["latency_ms"]}

    rows = [{"name": "final", **{k: final_row[k] for k in keys}, "search_accuracy": search_row["val_accuracy"],
             "run_dir": ".", **{k: final_row[k] for k in ("epochs", "recipe", "lr", "precision")}, **onnx_latency(latency)}]
    if export:
        rows[0]["exports"] = _in_run(run_dir, exports)
    teacher_onnx = run_dir / "teacher.onnx"
    for pick in picks:
        name = f"size-{pick['params']}"
        module, row = sized[name]
        folder = run_dir / "sizes" / name
        folder.mkdir(parents=True, exist_ok=True)
        save_student(folder, module.cpu(), **provenance,
                     metrics=row, search_metrics={"val_accuracy": pick["accuracy"], "evaluation": pick["evaluation"]})
        out = {"name": name, **{k: row[k] for k in keys}, "search_accuracy": pick["accuracy"],
               "run_dir": f"sizes/{name}", **{k: row[k] for k in ("epochs", "recipe", "lr", "precision")}}
        if export:
            files = export_student(module, folder)
            out["exports"] = _in_run(run_dir, files)  # (as report["exports"]: relative to the run folder)
            if rounds > 0 and teacher_onnx.is_file() and not files.get("onnx", "failed").startswith("failed"):
                from n2n_gym.evaluation import deploy

                try:
                    out.update(onnx_latency(deploy.compare({"onnxruntime": str(teacher_onnx)},
                                                           {"onnxruntime": files["onnx"]}, module.arch.input_shape,
                                                           (1, 256), rounds=rounds)))
                except (ValueError, RuntimeError, OSError) as exc:  # reported, never fatal to the run
                    out["latency_error"] = f"{type(exc).__name__}: {exc}"
        rows.append(out)
    return sorted(rows, key=lambda r: r["params"])


def _sizes_text(rows: list[dict]) -> str:
    if not rows:
        return ""
    timed = any((r.get("latency_ms") or {}).get("1") is not None for r in rows)
    lines = ["Several sizes from the search's Pareto front, the same final distillation"
             + (" (latency: ONNX Runtime, 1 thread):" if timed else " (latency not measured):"), "",
             "| student | params | compression | val acc | test acc | batch-1 ms | batch-1 speed-up | folder |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        ms, up = (r.get("latency_ms") or {}).get("1"), (r.get("speedup") or {}).get("1")
        lines.append(f"| {'best' if r['name'] == 'final' else r['name']} | {r['params']:,} | {r['compression']:.2f}x | "
                     f"{format_accuracy(r['val_accuracy'])} | {format_accuracy(r['test_accuracy'])} | "
                     f"{'-' if ms is None else f'{ms:.2f}'} | {'-' if up is None else f'{up:.2f}x'} | {r['run_dir']} |")
    return "\n".join(lines) + "\n\n"


def _plot_sizes(run_dir: pathlib.Path, teacher: dict, rows: list[dict], variant: str) -> str:
    """``sizes.png``: test accuracy against batch-1 ONNX Runtime latency (against parameters when
    no latency was measured) of the teacher and each size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = all((r.get("latency_ms") or {}).get("1") is not None for r in rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = sorted(rows, key=lambda r: r["latency_ms"]["1"] if timed else r["params"])  # a line, not a zig-zag
    xs = [r["latency_ms"]["1"] if timed else r["params"] for r in rows]
    ax.plot(xs, [100 * r["test_accuracy"] for r in rows], "o-", color="tab:green", label="students, final distillation")
    for x, r in zip(xs, rows):
        ax.annotate(f"{r['compression']:.1f}x" + (" (best)" if r["name"] == "final" else ""),
                    (x, 100 * r["test_accuracy"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
    t_x = (rows[0].get("teacher_latency_ms") or {}).get("1") if timed else teacher["params"]
    if t_x is not None:
        ax.scatter([t_x], [100 * teacher["test_accuracy"]], marker="*", s=150, color="black", label="teacher")
    ax.set_xlabel("batch-1 latency, ONNX Runtime, 1 thread (ms)" if timed else "parameters")
    if not timed:
        ax.set_xscale("log")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"several sizes from the Pareto front: accuracy against speed\n({variant})", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "sizes.png", dpi=120)
    plt.close(fig)
    return str(run_dir / "sizes.png")


# ---------------------------------------------------------------------------- time spent
TIMED_STAGES = ("search", "final_distillation", "export")
TIMINGS_FILE = "timings.json"


class _Timings:
    """Seconds spent by a run over all its invocations, kept in ``timings.json``: per stage
    (:data:`TIMED_STAGES`), ``wall`` (each invocation from its start to its last stage or its
    report) and ``invocations``. Saved after every stage, also one that is interrupted (Ctrl-C,
    an error), and every :attr:`SAVE_EVERY` seconds within a stage, so that a resumed run's report
    counts every invocation; a killed process (SIGKILL, a lost machine) loses at most the time
    since its last save. A file that cannot be read restarts the count (said once); one that
    cannot be written keeps the figures in memory."""

    #: seconds between saves within a stage (a final distillation runs for hours)
    SAVE_EVERY = 60.0

    def __init__(self, run_dir: pathlib.Path, log):
        self.path = run_dir / TIMINGS_FILE
        self._lock = threading.Lock()  # the stage's saver thread and the main thread
        self.start = time.perf_counter()
        self.before = self._read(log)
        self.spent = {**self.before, "invocations": int(self.before.get("invocations", 0)) + 1}
        self._save()

    def _read(self, log) -> dict:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log(f"{self.path} cannot be read ({type(exc).__name__}): the report's durations count from now")
            return {}
        ok = isinstance(raw, dict) and all(
            isinstance(raw.get(k, 0), (int, float)) and not isinstance(raw.get(k, 0), bool)
            and math.isfinite(raw.get(k, 0)) and raw.get(k, 0) >= 0 for k in (*TIMED_STAGES, "wall", "invocations")
        ) and float(raw.get("invocations", 0)).is_integer()
        if not ok:
            log(f"{self.path} is not what compress writes: the report's durations count from now")
            return {}
        return {k: raw[k] for k in (*TIMED_STAGES, "wall", "invocations") if k in raw}

    def _save(self, now: float | None = None) -> None:
        with self._lock:
            self.spent["wall"] = self.before.get("wall", 0.0) + (now or time.perf_counter()) - self.start
            if not (self.path.parent / "config.json").exists():  # a run withdrawn (a refused setting) keeps no file
                return
            with contextlib.suppress(OSError):  # a timing is not worth losing the run for: kept in memory
                atomic_write_text(self.path, json.dumps(self.spent, indent=1))

    @contextlib.contextmanager
    def stage(self, name: str):
        """Adds the wall time of the ``with`` block to stage ``name``, saved as it grows."""
        start, before = time.perf_counter(), self.spent.get(name, 0.0)
        stop = threading.Event()

        def tick() -> None:
            self.spent[name] = before + time.perf_counter() - start
            self._save()

        def keep_saving() -> None:
            while not stop.wait(self.SAVE_EVERY):
                tick()

        saver = threading.Thread(target=keep_saving, name="n2n-timings", daemon=True)
        saver.start()
        try:
            yield
        finally:
            stop.set()
            saver.join()
            tick()

    def at_least(self, name: str, seconds: float) -> None:
        """Raises stage ``name`` to ``seconds`` when a more exact record (the checkpoints') says it
        took at least that long (the invocation's wall time rises with it)."""
        short = seconds - self.spent.get(name, 0.0)
        if short > 0:
            self.spent[name] = seconds
            self.before["wall"] = self.before.get("wall", 0.0) + short
            self._save()

    def seconds(self) -> dict:
        """The report's durations: each stage's, ``total`` (the wall time of all invocations),
        ``total_this_invocation`` and ``invocations``; saved as they are now."""
        now = time.perf_counter()
        self._save(now)
        return {"total": self.spent["wall"], **{k: self.spent.get(k, 0.0) for k in TIMED_STAGES},
                "total_this_invocation": now - self.start,
                "invocations": int(self.spent["invocations"])}


# ---------------------------------------------------------------------------- report parts
def _constraint_checks(spec, rows: dict[str, dict]) -> list[dict]:
    """The search's constraints checked on the final students (their whole-split validation
    accuracy, params, FLOPs): ``[{"constraint", "satisfied": {student: bool}}]``; [] without."""
    checks = []
    for c in parse_constraints(spec):
        props = {name: {"params": r["params"], "flops": r["flops"], "accuracy": r["val_accuracy"]}
                 for name, r in rows.items()}
        checks.append({"constraint": c.name, "satisfied": {name: c.satisfied(p) for name, p in props.items()}})
    return checks


def _constraints_text(checks: list[dict]) -> str:
    if not checks:
        return ""
    lines = [f"{c['constraint']}: " + ", ".join(f"{name} {'satisfies it' if ok else 'VIOLATES it'}"
                                                 for name, ok in c["satisfied"].items()) for c in checks]
    return ("Constraints of the search, checked on the final students (whole validation split):\n  "
            + "\n  ".join(lines) + "\n\n")


def _relative(run_dir: pathlib.Path, value: str) -> str:
    """``value`` relative to the run folder when it is a file in it, else unchanged (an export's
    "failed: ..." or the ONNX check's message)."""
    try:
        return pathlib.Path(value).relative_to(run_dir).as_posix()
    except ValueError:
        return value


def _in_run(run_dir: pathlib.Path, paths: dict) -> dict:
    """``paths`` (``{format: path or message}``) with :func:`_relative` values."""
    return {key: _relative(run_dir, value) for key, value in paths.items()}


def _latency(run_dir: pathlib.Path, teacher, arch, exports: dict, rounds: int) -> dict | None:
    """Teacher against student through the exported files (``n2n_gym.evaluation.deploy.compare``), or
    ``None`` when skipped; a runtime that fails is reported, never fatal to the run."""
    if rounds <= 0 or not exports:
        return None
    from n2n_gym.evaluation import deploy

    teacher_files = export_student(teacher.module.cpu(), run_dir, stem="teacher")
    files = {who: {rt: f[key] for rt, key in (("onnxruntime", "onnx"), ("torch.export", "torch.export"))
                   if key in f and not f[key].startswith("failed")} for who, f in (("teacher", teacher_files),
                                                                                      ("student", exports))}
    try:
        return deploy.compare(files["teacher"], files["student"], arch.input_shape, (1, 256), rounds=rounds,
                              teacher_params=teacher.params, student_params=arch.params,
                              teacher_flops=teacher.architecture.flops, student_flops=arch.flops)
    except (ValueError, RuntimeError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _latency_text(latency: dict | None) -> str:
    if latency is None:
        return ""
    if "error" in latency:
        return f"latency not measured: {latency['error']}\n\n"
    from n2n_gym.evaluation.deploy import table

    return f"Inference through the exported files (teacher.* vs student.*):\n\n{table(latency)}\n\n"


def _plots(run_dir: pathlib.Path, history: list[dict], final: dict | None, searcher: str = "N2N") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colors = {"remove": "tab:blue", "shrink": "tab:orange", "joint": "tab:green"}
    # reward and best so far vs evaluations
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [r["evaluation"] for r in history]
    for stage in dict.fromkeys(r["stage"] for r in history):
        rows = [r for r in history if r["stage"] == stage]
        ax.scatter([r["evaluation"] for r in rows], [r["reward"] for r in rows], s=10, alpha=0.6,
                   color=colors.get(stage), label=f"stage {stage}")
    best, curve = -math.inf, []
    for r in history:
        best = max(best, r["reward"])
        curve.append(best)
    ax.plot(xs, curve, color="black", lw=1.5, label="best so far")
    starts = [r["evaluation"] for a, r in zip(history, history[1:]) if a["stage_index"] != r["stage_index"]]
    for s in starts:
        ax.axvline(s - 0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("student evaluations")
    ax.set_ylabel("reward R = Rc * Ra (-1: invalid)")
    ax.set_ylim(max(-1.05, min([r["reward"] for r in history] + [0]) - 0.05), 1.02)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{searcher} search: reward per evaluated student")
    fig.tight_layout()
    fig.savefig(run_dir / "rewards.png", dpi=120)
    plt.close(fig)
    paths.append(str(run_dir / "rewards.png"))

    # accuracy vs params, Pareto front
    valid = [r for r in history if r.get("valid")]
    fig, ax = plt.subplots(figsize=(7, 4))
    for stage in dict.fromkeys(r["stage"] for r in valid):
        rows = [r for r in valid if r["stage"] == stage]
        ax.scatter([r["params"] for r in rows], [100 * r["accuracy"] for r in rows], s=10, alpha=0.5,
                   color=colors.get(stage), label=f"students, stage {stage}")
    if valid:
        uniq = {r["architecture"]: r for r in valid}
        pts = [(r["params"], r["accuracy"]) for r in uniq.values()]
        front = pareto_front(pts)
        ax.step([p for p, _ in front], [100 * a for _, a in front], where="post", color="red", lw=1.2)
        ax.scatter([p for p, _ in front], [100 * a for _, a in front], s=25, facecolors="none", edgecolors="red",
                   label="Pareto front")
        t = valid[0]
        ax.scatter([t["teacher_params"]], [100 * t["teacher_accuracy"]], marker="*", s=150, color="black",
                   label="teacher")
    if final:
        ax.scatter([final["params"]], [100 * final["val_accuracy"]], marker="D", s=50, color="green",
                   label="best student, final distillation")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("accuracy vs size: students at search time (low fidelity);\n"
                 "teacher and final student on the whole validation split", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "pareto.png", dpi=120)
    plt.close(fig)
    paths.append(str(run_dir / "pareto.png"))
    return paths


def _report_table(teacher: dict, search: dict, final: dict | None, protocol: str,
                  others: dict | None = None) -> str:
    calibrated = "measured_val_accuracy" in search
    rows = [("teacher", teacher), (f"best student, search ({protocol}{', estimated' if calibrated else ' protocol'})",
                                   search)]
    if final:
        rows.append(("best student, final distillation", final))
    rows += [(f"{ALTERNATIVE_LABELS[k]}, same size", r) for k, r in (others or {}).items()]
    head = f"{'':<42} {'val acc':>8} {'test acc':>8} {'params':>10} {'FLOPs':>12} {'compr.':>7} {'reward':>7}"
    lines = [head, "-" * len(head)]
    for name, r in rows:
        comp = f"{r['compression']:.2f}x" if r.get("compression") else "1.00x"
        rew = f"{r['reward']:.4f}" if r.get("reward") is not None else "-"
        lines.append(f"{name:<42} {format_accuracy(r['val_accuracy']):>8} {format_accuracy(r['test_accuracy']):>8} "
                     f"{format_count(r['params']):>10} {format_count(r['flops']):>12} {comp:>7} {rew:>7}")
    return "\n".join(lines)


__all__ = [
    "ALTERNATIVE_LABELS",
    "DEFAULT_FINAL_EPOCHS",
    "FINAL_EPOCHS_BY_ENV",
    "default_final_epochs",
    "RUNS_ROOT",
    "RUN_FILES",
    "CompressError",
    "SearchTracker",
    "compress",
    "n2n_updates",
    "read_history",
    "search_budget",
]
