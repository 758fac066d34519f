"""Benchmark runner: ``n2n-gym bench`` (also ``python -m n2n_gym.bench.runner``).

    n2n-gym bench --env N2N-DigitsNet-Digits-v0 --agent maskable_ppo --seeds 0 1 2 --budget 60
    n2n-gym bench --agent random --budget 20 --protocol tiny --results runs/bench.jsonl --track

Runs one agent for each seed until it has spent ``--budget`` student evaluations that were
not cache hits (every run gets a private result cache, so "not a cache hit" means "a
student this run had not evaluated before"; invalid students are free), and appends one
replayable record per run to the results file (JSONL, schema in
``n2n_gym/bench/records.py``). ``n2n-gym validate`` replays the records, ``n2n-gym leaderboard``
ranks them.

Agents (``--list-agents``): ``random`` (uniform mask-respecting search), ``ppo``, ``a2c``,
``dqn`` (Stable-Baselines3), ``maskable_ppo``, ``recurrent_ppo`` (sb3-contrib), ``n2n``
(the two-stage N2N REINFORCE agent of ``agents/n2n.py``: removal, then shrinkage from
the best removal student), ``tas``, ``optuna_tpe`` (Optuna's TPE sampler), ``evolution``
(regularized evolution) and ``magnitude`` (no search: uniform L1-magnitude pruning to a
target parameter count, one evaluation). Add one with :func:`register_agent`: a function
``run(env_id, seed, budget, env_kwargs, hparams, *, tracker, wandb_run) -> {"hparams",
"tracker"[, "extra"]}`` that feeds every terminal info to ``tracker`` (wrap the env in
``benchmarks.records.TrackedEnv``) and stops when ``tracker.exhausted``.

Seeds: ``--seeds`` seeds the agent and, unless ``--eval-seed`` is given, the env's
evaluation seed (``eval_seed``: the student's distillation), so a seed's variance
includes the evaluation's.

``--track`` logs each run to W&B (``pip install 'n2n-gym[wandb]'``): config keys
``env_id``, ``agent``, ``seed``, ``protocol`` (+ ``budget``, ``stage``, ``hparams``), the
anytime curve (``best_reward`` against ``evaluations``), a ``wandb.Table`` of the evaluated
students, the summary (best reward, accuracy, params, compression, ... and the whole
record as ``n2n_record``, which ``n2n-gym leaderboard --wandb-project`` reads back). SB3
agents also log through ``wandb.integration.sb3.WandbCallback``. ``WANDB_MODE=offline``
writes runs locally for a later ``wandb sync``; ``WANDB_MODE=disabled`` logs nothing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Callable

from n2n_gym.bench.records import (
    MAX_INT,
    MAX_THREADS,
    STUDENT_COLUMNS,
    BudgetTracker,
    accuracy_drop,
    json_safe,
    make_record,
    output_folder_problem,
    read_records,
    results_file_problem,
    save_record,
)
from n2n_gym.evaluation.protocols import PROTOCOLS
from n2n_gym.utils.checks import json_object, positive_float
from n2n_gym.utils.files import default_cache_dir

DEFAULT_RESULTS = "results.jsonl"


# ---------------------------------------------------------------------------- agents
@dataclass(frozen=True)
class AgentSpec:
    target: str  # "module:function"
    description: str
    sb3: bool = False  # logs through W&B's SB3 integration
    default_stage: str = "joint"  # the stage(s) it runs without --stage

    def load(self) -> Callable[..., dict]:
        module, _, fn = self.target.partition(":")
        return getattr(importlib.import_module(module), fn)


AGENTS: dict[str, AgentSpec] = {
    "random": AgentSpec("n2n_gym.agents.random_search:run", "uniform random search over the allowed actions"),
    "ppo": AgentSpec("n2n_gym.agents.sb3_baselines:run_ppo", "Stable-Baselines3 PPO (MlpPolicy, no masks)", True),
    "a2c": AgentSpec("n2n_gym.agents.sb3_baselines:run_a2c", "Stable-Baselines3 A2C (MlpPolicy, no masks)", True),
    "dqn": AgentSpec("n2n_gym.agents.sb3_baselines:run_dqn", "Stable-Baselines3 DQN (MlpPolicy, no masks)", True),
    "maskable_ppo": AgentSpec("n2n_gym.agents.sb3_baselines:run_maskable_ppo", "sb3-contrib MaskablePPO (action_masks())", True),
    "recurrent_ppo": AgentSpec("n2n_gym.agents.sb3_baselines:run_recurrent_ppo", "sb3-contrib RecurrentPPO (MlpLstmPolicy)",
                               True),
    "n2n": AgentSpec("n2n_gym.agents.n2n:run_benchmark", "N2N two-stage REINFORCE (n2n_gym/agents/n2n.py): remove, then shrink",
                     default_stage="remove,shrink"),
    "tas": AgentSpec("n2n_gym.agents.tas:run_benchmark", "TAS differentiable width/depth search (n2n_gym/agents/tas.py); "
                     "budget = the compute of that many RL evaluations"),
    "optuna_tpe": AgentSpec("n2n_gym.agents.optuna_tpe:run", "Optuna TPE, one categorical per layer over its allowed "
                            "actions (n2n_gym/agents/optuna_tpe.py)"),
    "evolution": AgentSpec("n2n_gym.agents.evolution:run", "regularized (aging) evolution, tournament selection, "
                           "one-layer mutation (n2n_gym/agents/evolution.py)"),
    "magnitude": AgentSpec("n2n_gym.agents.magnitude_pruning:run", "no search: uniform L1-magnitude channel pruning "
                           "to a target param count, one evaluation (n2n_gym/agents/magnitude_pruning.py; --hparams target_*)",
                           default_stage="shrink"),
}


def register_agent(name: str, target: str | Callable[..., dict], description: str = "", *, sb3: bool = False,
                   default_stage: str = "joint") -> None:
    """Add an agent to ``n2n-gym bench``: ``target`` is a function or ``"module:function"``."""
    if callable(target):
        _LOADED[name] = target
        target = f"{target.__module__}:{target.__qualname__}"
    AGENTS[name] = AgentSpec(target, description, sb3, default_stage)


_LOADED: dict[str, Callable[..., dict]] = {}


def load_agent(name: str) -> Callable[..., dict]:
    if name not in AGENTS:
        raise SystemExit(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)}")
    return _LOADED.get(name) or AGENTS[name].load()


# ---------------------------------------------------------------------------- W&B
def _split_project(path: str) -> tuple[str | None, str]:
    entity, _, project = path.rpartition("/")
    return entity or None, project


def start_wandb(project: str, *, env_id: str, agent: str, seed: int, protocol: str, budget: int, stage: str | None,
                env_kwargs: dict, hparams: dict, sb3: bool, group: str | None = None, directory: str | None = None):
    """``wandb.init`` for one benchmark run (wandb imported only here)."""
    try:
        import wandb
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit("--track needs wandb: pip install 'n2n-gym[wandb]'") from exc
    sync_tb = False
    if sb3:
        # W&B's SB3 integration syncs SB3's TensorBoard logs, which needs tensorboard
        sync_tb = importlib.util.find_spec("tensorboard") is not None
        if not sync_tb and os.environ.get("WANDB_MODE") != "disabled":
            print("W&B: tensorboard is not installed, so SB3's metrics go to W&B through an SB3 logger of ours "
                  "instead of the TensorBoard sync of wandb.integration.sb3 (pip install tensorboard for that)",
                  file=sys.stderr)
    entity, name = _split_project(project)
    run = wandb.init(
        project=name, entity=entity, group=group or f"{env_id}/{agent}", job_type="bench",
        name=f"{agent}-{env_id}-s{seed}", dir=directory, sync_tensorboard=sync_tb, reinit="finish_previous",
        config={"env_id": env_id, "agent": agent, "seed": seed, "protocol": protocol, "budget": budget,
                "stage": stage, "env_kwargs": json_safe(env_kwargs), "hparams": json_safe(hparams)},
    )
    run.define_metric("evaluations")
    for key in ("reward", "best_reward", "accuracy", "test_accuracy", "params", "compression"):
        run.define_metric(key, step_metric="evaluations", summary="max" if key == "best_reward" else None)
    return run


def _wandb_logger(run) -> Callable[[BudgetTracker, dict], None]:
    def log(tracker: BudgetTracker, row: dict) -> None:
        run.log({"evaluations": row["evaluation"], "reward": row["reward"], "best_reward": tracker.curve[-1],
                 "accuracy": row["accuracy"], "test_accuracy": row["test_accuracy"], "params": row["params"],
                 "compression": row["compression"], "episodes": tracker.episodes, "env_steps": tracker.env_steps})

    return log


def finish_wandb(run, record: dict) -> None:
    import wandb

    run.config.update({"hparams": record["hparams"]}, allow_val_change=True)
    run.log({"students": wandb.Table(columns=list(STUDENT_COLUMNS), data=record["students"]["data"])})
    best, budget, teacher = record["best"], record["budget"], record["teacher"]
    summary = {
        "best_reward": best.get("reward"), "best_accuracy": best.get("accuracy"),
        "best_test_accuracy": best.get("test_accuracy"), "best_params": best.get("params"),
        "best_flops": best.get("flops"), "flop_convention": record["flop_convention"],
        "compression": best.get("compression"), "val_accuracy_drop": accuracy_drop(record, "val"),
        "test_accuracy_drop": accuracy_drop(record, "test"), "teacher_val_accuracy": teacher.get("val_accuracy"),
        "teacher_test_accuracy": teacher.get("test_accuracy"), "teacher_sha256": teacher.get("sha256"),
        "evaluations": budget["evaluations"], "episodes": budget["episodes"], "env_steps": budget["env_steps"],
        "wall_seconds": budget["wall_seconds"], "stop_reason": budget["stop_reason"],
        "best_actions": json.dumps(best.get("actions")), "best_architecture": best.get("architecture"),
        "n2n_record": json.dumps({k: v for k, v in record.items() if k != "students"}),
    }
    run.summary.update(summary)
    run.finish()


# ---------------------------------------------------------------------------- running
def run_one(env_id: str, agent: str, seed: int, budget: int, *, protocol: str | None = None, stage: str | None = None,
            env_kwargs: dict | None = None, hparams: dict | None = None, eval_seed: int | None = None,
            device: str | None = None, max_episodes: int | None = None, max_seconds: float | None = None,
            results: str | os.PathLike | None = None, track: bool = False, wandb_project: str = "n2n-gym",
            wandb_group: str | None = None, wandb_dir: str | None = None, progress: bool = False,
            label: str | None = None) -> dict:
    """One benchmark run; appends its record to ``results`` (if given) and returns it.
    Raises ``ValueError`` before any evaluation when ``results`` or the W&B folder cannot take
    a file; a write that fails at the end goes to a fallback file, said in one line.
    ``progress``: a tqdm bar over the budget's evaluations, with the best reward so far.
    ``label``: the leaderboard name of this variant of the agent (e.g. its hparams).
    ``protocol``: None means the env id's own (:func:`n2n_gym.envs.registration.default_protocol`);
    the record names the protocol that was used."""
    return _run(env_id, agent, seed, budget, protocol=protocol, stage=stage, env_kwargs=env_kwargs, hparams=hparams,
                eval_seed=eval_seed, device=device, max_episodes=max_episodes, max_seconds=max_seconds,
                results=results, track=track, wandb_project=wandb_project, wandb_group=wandb_group,
                wandb_dir=wandb_dir, progress=progress, label=label)[0]


def _run(env_id: str, agent: str, seed: int, budget: int, *, protocol: str | None, stage: str | None,
         env_kwargs: dict | None, hparams: dict | None, eval_seed: int | None, device: str | None,
         max_episodes: int | None, max_seconds: float | None, results: str | os.PathLike | None, track: bool,
         wandb_project: str, wandb_group: str | None, wandb_dir: str | None, progress: bool, label: str | None,
         check_results: bool = True) -> tuple[dict, pathlib.Path | None]:
    """:func:`run_one`, plus the file that holds the record (None: only printed).
    ``check_results=False``: the caller checked ``results`` before its first run; a path gone
    bad since is the fallback's business, not a reason to lose this run."""
    import n2n_gym  # noqa: F401  (registers the environments)
    from n2n_gym.envs.registration import canonical_env_id, default_protocol

    env_id = canonical_env_id(env_id)  # records name the id itself, not "n2n_gym:<id>"
    if protocol is None:
        protocol = default_protocol(env_id)

    fn = load_agent(agent)
    # every output location is checked before the first evaluation, not after the budget is spent
    for problem in (results_file_problem(results) if results is not None and check_results else None,
                    output_folder_problem(wandb_dir, f"cannot write the W&B folder {wandb_dir}") if track and wandb_dir else None):
        if problem:
            raise ValueError(problem)
    user_kwargs = dict(env_kwargs or {})
    for key in ("protocol", "eval_seed"):
        if key in user_kwargs:
            raise SystemExit(f"pass {key} with --{key.replace('_', '-')}, not in --env-kwargs")
    if stage is not None:
        user_kwargs["stage"] = stage
    eval_seed = seed if eval_seed is None else eval_seed
    kwargs = {**user_kwargs, "protocol": protocol, "eval_seed": eval_seed, "progress": False}
    if device is not None:
        kwargs["device"] = device
    run = None
    if track:
        run = start_wandb(wandb_project, env_id=env_id, agent=agent, seed=seed, protocol=protocol, budget=budget,
                          stage=stage, env_kwargs=user_kwargs, hparams=hparams or {}, sb3=AGENTS[agent].sb3,
                          group=wandb_group or (f"{env_id}/{label}" if label else None), directory=wandb_dir)
    callbacks = [_wandb_logger(run)] if run is not None else []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=budget, desc=f"{agent} seed {seed}", unit="eval", leave=False)
        callbacks.append(lambda t, row: (bar.update(1), bar.set_postfix(best=f"{t.curve[-1]:.4f}")))
    tracker = BudgetTracker(budget, max_episodes=max_episodes, max_seconds=max_seconds,
                            on_evaluation=(lambda t, row: [cb(t, row) for cb in callbacks]) if callbacks else None)
    try:
        out = fn(env_id, seed, budget, kwargs, dict(hparams or {}), tracker=tracker, wandb_run=run)
    except BaseException:
        if run is not None:
            run.finish(exit_code=1)
        raise
    finally:
        if bar is not None:
            bar.close()
    record = make_record(env_id=env_id, agent=agent, hparams=out["hparams"], seed=seed,
                         stage=stage or AGENTS[agent].default_stage,
                         env_kwargs=user_kwargs, tracker=tracker, protocol=protocol, eval_seed=eval_seed,
                         extra=out.get("extra"), label=label)
    saved = save_record(results, record) if results is not None else None  # on failure: a fallback, said
    if run is not None:
        finish_wandb(run, record)
    return record, saved


def summary_line(record: dict) -> str:
    b, best = record["budget"], record["best"]
    reward = best.get("reward")
    text = f"{record['agent']} seed {record['seed']}: best reward {reward:.4f}" if reward is not None else \
        f"{record['agent']} seed {record['seed']}: no student"
    if best.get("architecture"):
        text += (f" ({best['compression']:.2f}x, {best['params']:,} params, val acc {best['accuracy']:.4f}, "
                 f"test acc {best['test_accuracy']:.4f}, stage {best.get('stage')})")
    return (text + f"; {b['evaluations']} evaluations, {b['episodes']} episodes, {b['env_steps']} steps, "
            f"{b['wall_seconds']:.1f} s [{b['stop_reason']}]")


def run_key(env_id: str, agent: str, seed: int, protocol: str, stage: str | None, budget: int,
            label: str | None = None) -> tuple:
    """What identifies a run for ``--skip-existing`` (``stage=None``: the agent's default)."""
    if stage is None and agent in AGENTS:
        stage = AGENTS[agent].default_stage
    return (env_id, agent, seed, protocol, stage, budget, label or None)


def done_keys(path: str | os.PathLike) -> set[tuple]:
    """The :func:`run_key` of every record of a results file (empty if there is none)."""
    path = pathlib.Path(path)
    if not path.exists():
        return set()
    return {_key(r) for r in read_records(path)}


def _key(r: dict) -> tuple:
    return run_key(r.get("env_id"), r.get("agent"), r.get("seed"), r.get("protocol"), r.get("stage"),
                   (r.get("budget") or {}).get("requested"), r.get("label"))


#: Bounds of bench's numeric options, checked as they are given (one-line errors), so that a
#: finished run always writes a record that records, validate and the leaderboard accept:
#: integers fit in 63 bits (records.MAX_INT; the budget so that the default episode cap,
#: 20 x budget + 20, does too), threads are at most records.MAX_THREADS.
MAX_BUDGET = (MAX_INT - 20) // 20
MAX_SECONDS = 1e9  # about 31 years


def _int_in(minimum: int, maximum: int, why: str = "records hold integers below 2**63"):
    """argparse type: an int in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text[:40]!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be an integer in [{minimum}, {maximum}] ({why}), "
                                             f"got {text[:40]}")
        return value

    parse.__name__ = f"int in [{minimum}, {maximum}]"
    return parse


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds in (0, MAX_SECONDS]."""
    value = positive_float(text)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SECONDS:.0e} seconds, got {text[:40]}")
    return value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from n2n_gym.envs.registration import DEFAULT_ENV_ID

    p = parser or argparse.ArgumentParser(prog="n2n-gym bench", description=__doc__.split("\n\n")[0],
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default=DEFAULT_ENV_ID, help=f"environment id (default {DEFAULT_ENV_ID})")
    p.add_argument("--agent", help=f"one of: {', '.join(AGENTS)}")
    p.add_argument("--seeds", type=_int_in(0, MAX_INT), nargs="+", default=[0], help="seeds, one run each (default 0)")
    p.add_argument("--budget", type=_int_in(1, MAX_BUDGET, "so that the episode cap fits in a record"), default=60,
                   help="student evaluations per run that were not cache hits (default 60)")
    p.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS),
                   help="evaluation protocol (default: the env id's own: fast for the v0 ids, the fidelity "
                        "study's pick for the newer ones, e.g. resnet20-v1 for N2N-ResNet20-CIFAR10-v1)")
    p.add_argument("--stage", default=None, choices=("remove", "shrink", "joint"),
                   help="remove | shrink | joint (default: joint for the baselines, remove then shrink for n2n)")
    p.add_argument("--results", default=DEFAULT_RESULTS, help=f"JSONL file to append to (default {DEFAULT_RESULTS})")
    p.add_argument("--env-kwargs", default="{}", type=json_object, help="extra gym.make kwargs as JSON")
    p.add_argument("--hparams", default="{}", type=json_object, help="agent hyperparameter overrides as JSON")
    p.add_argument("--label", default=None,
                   help="leaderboard name of this variant of the agent, e.g. 'n2n loo lr0.03' (default: the agent, "
                        "plus the stage when it ran several)")
    p.add_argument("--eval-seed", type=_int_in(0, MAX_INT), default=None, help="the env's evaluation seed (default: the run's seed)")
    p.add_argument("--device", default=None, help="device of the env's student training: auto | cpu | cuda")
    p.add_argument("--max-episodes", type=_int_in(1, MAX_INT), default=None,
                   help="stop a run after this many episodes even if the budget is not spent (default 20 x budget + 20)")
    p.add_argument("--max-seconds", type=_seconds, default=None, help="stop a run after this many seconds")
    p.add_argument("--threads", type=_int_in(1, MAX_THREADS, "as records allow"), default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip (env, agent, seed, protocol, stage, budget) already in the results file (resume)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar per run (default on)")
    p.add_argument("--track", action="store_true", help="log each run to W&B (pip install 'n2n-gym[wandb]')")
    p.add_argument("--wandb-project", default="n2n-gym", help="[ENTITY/]PROJECT of --track (default n2n-gym)")
    p.add_argument("--wandb-group", default=None, help="W&B group (default ENV/AGENT)")
    p.add_argument("--list-agents", action="store_true", help="list the agents and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    """``n2n-gym bench ...``; returns the exit status."""
    return run_args(build_parser().parse_args(argv))


def check_env_kwargs(args: argparse.Namespace) -> None:
    """Make the env once with the run's kwargs, so that a bad one is a one-line error now
    rather than a traceback after the first run (``gym.make`` loads no data)."""
    import gymnasium as gym

    import n2n_gym  # noqa: F401  (registers the environments)
    from n2n_gym.envs.registration import canonical_env_id, default_protocol

    args.env = canonical_env_id(args.env)
    if args.protocol is None:  # the env id's own, named in the records and the resume keys
        try:
            args.protocol = default_protocol(args.env)
        except gym.error.Error as exc:
            raise SystemExit(f"n2n-gym bench: error: {exc}") from None
    kwargs = {**args.env_kwargs, "protocol": args.protocol, "progress": False}
    if args.stage is not None:
        kwargs["stage"] = args.stage
    if args.device is not None:
        kwargs["device"] = args.device
    try:
        gym.make(args.env, **kwargs).close()
    except (TypeError, ValueError, OSError, gym.error.Error) as exc:
        raise SystemExit(f"n2n-gym bench: error: {str(exc).split(' was raised from the environment creator')[0]}")


def run_args(args: argparse.Namespace) -> int:
    """Run the parsed arguments of :func:`build_parser` (for a CLI with subcommands)."""
    if args.list_agents:
        for name, spec in AGENTS.items():
            print(f"{name:15s} {spec.description}")
        return 0
    if not args.agent:
        raise SystemExit("--agent is required (see --list-agents)")
    load_agent(args.agent)  # fail early on an unknown agent
    problem = results_file_problem(args.results)
    if problem:
        raise SystemExit(f"n2n-gym bench: error: {problem}")
    check_env_kwargs(args)
    if args.env_kwargs.get("cache", True) is True:  # the shared cache is an output location too
        default_cache_dir()  # CacheFolderError names the folder and N2N_CACHE
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = pathlib.Path(args.results)
    done = done_keys(results) if args.skip_existing else set()
    lost = 0  # records that did not reach --results (a fallback file, or only printed)
    for seed in args.seeds:
        if run_key(args.env, args.agent, seed, args.protocol, args.stage, args.budget, args.label) in done:
            print(f"{args.agent} seed {seed}: already in {results}, skipped")
            continue
        start = time.perf_counter()
        record, saved = _run(args.env, args.agent, seed, args.budget, protocol=args.protocol, stage=args.stage,
                             env_kwargs=args.env_kwargs, hparams=args.hparams, eval_seed=args.eval_seed,
                             device=args.device, max_episodes=args.max_episodes, max_seconds=args.max_seconds,
                             results=results, track=args.track, wandb_project=args.wandb_project,
                             wandb_group=args.wandb_group, wandb_dir=None, progress=args.progress,
                             label=args.label, check_results=False)
        lost += saved != results
        where = saved if saved is not None else "nowhere: printed above"
        print(summary_line(record) + f" -> {where} ({time.perf_counter() - start:.1f} s)", flush=True)
    if lost:
        print(f"n2n-gym bench: {lost} record(s) did not reach {results} (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
