"""Optuna's TPE sampler over the per-layer decisions: the Bayesian-optimisation baseline.

Tree-structured Parzen Estimator (Bergstra et al., "Algorithms for Hyper-Parameter
Optimization", NeurIPS 2011; Optuna's ``TPESampler``, Akiba et al. KDD 2019). A student
is one categorical parameter per layer of the starting architecture, ``layer{t}``, whose
choices are exactly the actions the env allows there (``info["layer_masks"][t]``, fixed
for an env and stage), so a masked action is never proposed and a layer with one allowed
action is a constant. Each trial plays one episode with the suggested actions and is told
the episode's reward (R = Rc * Ra; -1 for an invalid student). Students the env answers
from its cache (seen before) are free and told too, so TPE learns from them. It talks to
the env through the plain Gymnasium API only::

    from n2n_gym.agents.optuna_tpe import run
    result = run("N2N-DigitsNet-Digits-v0", seed=0, budget=20, env_kwargs={"protocol": "tiny"})
    result["tracker"].best["reward"]

Hyperparameters (``--hparams``): ``n_startup_trials`` (random trials before TPE models the
rewards; Optuna's default 10), ``multivariate`` (a joint Parzen estimator over all layers
instead of one per layer, Falkner et al. 2018; default True: layer decisions interact
through the parameter count). ``run`` stops after ``budget`` student evaluations that were
not cache hits (``n2n_gym.envs.wrappers.BudgetTracker``) or after ``max_episodes`` episodes.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np

import n2n_gym  # noqa: F401  (registers the environments)
from n2n_gym.envs.wrappers import BudgetTracker, BudgetWrapper, private_cache
from n2n_gym.utils.checks import check_bool, check_int


@dataclass
class Args:
    n_startup_trials: int = 10
    """uniform random trials before TPE starts modelling (Optuna's default)"""
    multivariate: bool = True
    """one joint Parzen estimator over the layers instead of independent ones"""
    n_ei_candidates: int = 24
    """candidates TPE scores by expected improvement per trial (Optuna's default)"""


def allowed_choices(layer_masks: np.ndarray) -> list[list[int]]:
    """Per layer, the allowed actions (mask entries != 0), as ``suggest_categorical`` choices."""
    return [[int(a) for a in np.flatnonzero(row)] for row in np.asarray(layer_masks)]


def make_study(args: Args, seed: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # multivariate TPE is flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=args.n_startup_trials,
                                             multivariate=args.multivariate, n_ei_candidates=args.n_ei_candidates)
    return optuna.create_study(direction="maximize", sampler=sampler)


def run(env_id: str, seed: int, budget: int, env_kwargs: dict | None = None, hparams: dict | None = None, *,
        tracker: BudgetTracker | None = None, wandb_run: Any = None) -> dict:
    """TPE on ``gym.make(env_id, **env_kwargs)`` until the budget is spent.

    Returns ``{"hparams", "tracker", "extra"}``; ``extra["trials"]``: the trials told
    (evaluations + cache hits + invalid students)."""
    names = {f.name for f in fields(Args)}
    unknown = set(hparams or {}) - names
    if unknown:
        raise ValueError(f"optuna_tpe hparams are {sorted(names)}; got unknown {sorted(unknown)}")
    args = Args(**(hparams or {}))
    check_int("n_startup_trials", args.n_startup_trials, min=0)
    check_int("n_ei_candidates", args.n_ei_candidates, min=1)
    check_bool("multivariate", args.multivariate)
    tracker = tracker or BudgetTracker(budget)
    study = make_study(args, seed)
    with private_cache(env_kwargs) as kwargs:
        env = BudgetWrapper(gym.make(env_id, **kwargs), tracker)
        try:
            _, info = env.reset(seed=seed)
            choices = allowed_choices(info["layer_masks"])
            while not tracker.exhausted:
                trial = study.ask()
                actions = [trial.suggest_categorical(f"layer{t}", c) for t, c in enumerate(choices)]
                if trial.number > 0:
                    env.reset()
                reward, done = 0.0, False
                for a in actions:
                    _, reward, terminated, truncated, info = env.step(a)
                    done = terminated or truncated
                if not done:
                    raise RuntimeError(f"the episode did not end after the {len(choices)} layers of its masks")
                study.tell(trial, float(reward))
        finally:
            env.close()
    return {"hparams": asdict(args), "tracker": tracker, "extra": {"trials": len(study.trials)}}
