"""Uniform random search: the baseline every learning agent has to beat.

Every action is drawn uniformly among the actions the env allows for the current layer
(``info["action_mask"]``), independently of everything else; nothing is learnt. It talks
to the env through the plain Gymnasium API only, so it runs on any registered env and
stage::

    from n2n_gym.agents.random_search import run
    result = run("N2N-DigitsNet-Digits-v0", seed=0, budget=20, env_kwargs={"protocol": "tiny"})
    result["best"]["reward"], result["curve"]

``run`` stops after ``budget`` student evaluations that were not cache hits (see
``benchmarks.records.BudgetTracker``), or after ``max_episodes`` episodes.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

import n2n_gym  # noqa: F401  (registers the environments)
from n2n_gym.envs.wrappers import BudgetTracker, BudgetWrapper, private_cache

DEFAULT_HPARAMS: dict[str, Any] = {}  # uniform search has no hyperparameters


def uniform_masked_action(mask: np.ndarray, rng: np.random.Generator) -> int:
    """One of the allowed actions (mask entries != 0), uniformly."""
    allowed = np.flatnonzero(np.asarray(mask))
    return int(allowed[rng.integers(len(allowed))])


def run(env_id: str, seed: int, budget: int, env_kwargs: dict | None = None, hparams: dict | None = None, *,
        tracker: BudgetTracker | None = None, wandb_run: Any = None) -> dict:
    """Random search on ``gym.make(env_id, **env_kwargs)`` until the budget is spent.

    Returns ``{"hparams", "tracker"}``; ``tracker`` (a :class:`BudgetTracker`) holds the
    best student, the anytime curve and the counts."""
    hparams = {**DEFAULT_HPARAMS, **(hparams or {})}
    unknown = set(hparams) - set(DEFAULT_HPARAMS)
    if unknown:
        raise ValueError(f"random search has no hyperparameters; got {sorted(unknown)}")
    tracker = tracker or BudgetTracker(budget)
    rng = np.random.default_rng(seed)
    with private_cache(env_kwargs) as kwargs:
        env = BudgetWrapper(gym.make(env_id, **kwargs), tracker)
        try:
            episode = 0
            while not tracker.exhausted:
                obs, info = env.reset(seed=seed if episode == 0 else None)
                done = False
                while not done:
                    obs, reward, terminated, truncated, info = env.step(uniform_masked_action(info["action_mask"], rng))
                    done = terminated or truncated
                episode += 1
        finally:
            env.close()
    return {"hparams": hparams, "tracker": tracker}
