"""Regularized (aging) evolution over the per-layer decisions: the evolutionary baseline.

Real, Aggarwal, Huang, Le, "Regularized Evolution for Image Classifier Architecture
Search", AAAI 2019 (Algorithm 1). A genome is one action per layer of the starting
architecture, drawn only from the actions the env allows there (``info["layer_masks"]``):

1. the population is filled with ``population`` uniform random genomes, each evaluated;
2. each cycle samples ``sample_size`` members uniformly (with replacement, as in the
   paper), takes the one of highest reward as parent (tournament selection), and
   evaluates a child that differs from it in one layer: a layer with two or more allowed
   actions, chosen uniformly, gets a different allowed action, chosen uniformly;
3. the child joins the population and the *oldest* member leaves (aging: a genome
   survives only through its descendants, which regularises against lucky evaluations).

The paper ran P = 100, S = 25 for 20,000 models; the defaults here (P = 20, S = 5) keep
the same S/P ratio for budgets of a few hundred students. A child the env answers from its
cache (a student seen before) costs no evaluation and still ages the population. Plain
Gymnasium API only::

    from n2n_gym.agents.evolution import run
    result = run("N2N-DigitsNet-Digits-v0", seed=0, budget=20, env_kwargs={"protocol": "tiny"})

``run`` stops after ``budget`` student evaluations that were not cache hits
(``n2n_gym.envs.wrappers.BudgetTracker``) or after ``max_episodes`` episodes.
"""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np

import n2n_gym  # noqa: F401  (registers the environments)
from n2n_gym.envs.wrappers import BudgetTracker, BudgetWrapper, private_cache
from n2n_gym.utils.checks import check_int


@dataclass
class Args:
    population: int = 20
    """P: genomes alive at a time (paper: 100)"""
    sample_size: int = 5
    """S: tournament size, members sampled per cycle (paper: 25)"""


def random_genome(choices: list[np.ndarray], rng: np.random.Generator) -> list[int]:
    return [int(c[rng.integers(len(c))]) for c in choices]


def mutate(genome: list[int], choices: list[np.ndarray], rng: np.random.Generator) -> list[int]:
    """``genome`` with one layer (among those with >= 2 allowed actions) set to another allowed action."""
    free = [t for t, c in enumerate(choices) if len(c) > 1]
    if not free:
        return list(genome)
    t = free[rng.integers(len(free))]
    others = [int(a) for a in choices[t] if a != genome[t]]
    child = list(genome)
    child[t] = others[rng.integers(len(others))]
    return child


def run(env_id: str, seed: int, budget: int, env_kwargs: dict | None = None, hparams: dict | None = None, *,
        tracker: BudgetTracker | None = None, wandb_run: Any = None) -> dict:
    """Aging evolution on ``gym.make(env_id, **env_kwargs)`` until the budget is spent.

    Returns ``{"hparams", "tracker", "extra"}``; ``extra["cycles"]``: children evaluated
    after the initial population."""
    names = {f.name for f in fields(Args)}
    unknown = set(hparams or {}) - names
    if unknown:
        raise ValueError(f"evolution hparams are {sorted(names)}; got unknown {sorted(unknown)}")
    args = Args(**(hparams or {}))
    check_int("population", args.population, min=1)
    check_int("sample_size", args.sample_size, min=1)
    tracker = tracker or BudgetTracker(budget)
    rng = np.random.default_rng(seed)
    population: collections.deque = collections.deque()  # (genome, reward), oldest first
    cycles = 0
    with private_cache(env_kwargs) as kwargs:
        env = BudgetWrapper(gym.make(env_id, **kwargs), tracker)
        try:
            _, info = env.reset(seed=seed)
            choices = [np.flatnonzero(row) for row in np.asarray(info["layer_masks"])]

            def evaluate(genome: list[int]) -> float:
                reward = 0.0
                for a in genome:
                    _, reward, *_ = env.step(a)
                env.reset()
                return float(reward)

            while not tracker.exhausted:
                if len(population) < args.population:
                    genome = random_genome(choices, rng)
                else:
                    sample = [population[i] for i in rng.integers(len(population), size=args.sample_size)]
                    parent = max(sample, key=lambda member: member[1])[0]
                    genome = mutate(parent, choices, rng)
                    cycles += 1
                population.append((genome, evaluate(genome)))
                if len(population) > args.population:
                    population.popleft()  # aging: the oldest dies, not the worst
        finally:
            env.close()
    return {"hparams": asdict(args), "tracker": tracker, "extra": {"cycles": cycles}}
