"""Env speed: gym.make latency, non-terminal step latency, and reward evaluation time
per protocol (cache off), on one env.

    python -m n2n_gym.benchmarks.env_speed --env N2N-DigitsNet-Digits-v0 --students 10
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

import n2n_gym


def random_episode_actions(env, rng: np.random.Generator) -> list[int]:
    """A mask-respecting random action list, through the Gymnasium API only."""
    _, info = env.reset()
    actions, done = [], False
    while not done:
        a = int(rng.choice(np.flatnonzero(info["action_mask"])))
        actions.append(a)
        if len(actions) == info["num_layers"]:
            break
        _, _, done, _, info = env.step(a)
    return actions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default=n2n_gym.DEFAULT_ENV_ID)
    p.add_argument("--protocols", nargs="+", default=["tiny", "fast", "paper"])
    p.add_argument("--students", type=int, default=10, help="random students timed per protocol")
    p.add_argument("--steps", type=int, default=20000, help="non-terminal steps timed")
    p.add_argument("--out", default="benchmarks/results/env_speed.json")
    args = p.parse_args()

    cold = subprocess.run([sys.executable, "-c", (
        "import time; t=time.perf_counter(); import gymnasium as gym, n2n_gym; "
        f"gym.make({args.env!r}); print(time.perf_counter()-t)")], capture_output=True, text=True, check=True)
    gym.make(args.env)  # imports torch once; what follows is the cost of make itself
    t = time.perf_counter()
    for _ in range(100):
        gym.make(args.env)
    warm_make = (time.perf_counter() - t) / 100

    env = gym.make(args.env, cache=False, progress=False).unwrapped
    env.reset(seed=0)
    n, lat = env.num_layers, []
    rng = np.random.default_rng(0)
    for _ in tqdm(range(args.steps // max(n - 1, 1)), desc="timing steps"):
        _, info = env.reset()
        for _ in range(n - 1):  # stop before the terminal step: only graph edits are timed
            a = int(rng.choice(np.flatnonzero(info["action_mask"])))
            t = time.perf_counter()
            _, _, _, _, info = env.step(a)
            lat.append(time.perf_counter() - t)

    results = {"env": args.env, "gym_make_cold_s": float(cold.stdout.strip()), "gym_make_warm_s": warm_make,
               "step_median_ms": 1e3 * statistics.median(lat), "step_p99_ms": 1e3 * float(np.percentile(lat, 99)),
               "steps_timed": len(lat), "protocols": {}}
    for name in args.protocols:
        penv = gym.make(args.env, protocol=name, cache=False).unwrapped
        _ = penv.teacher  # load data + teacher outside the timing
        penv.reset(seed=0)
        rng = np.random.default_rng(1)
        secs, rewards = [], []
        for _ in tqdm(range(args.students), desc=f"protocol {name}"):
            actions = random_episode_actions(penv, rng)
            _, r, _, _, info = penv.step(actions[-1])
            if info["valid"]:
                secs.append(info["eval_seconds"])
                rewards.append(r)
        results["protocols"][name] = {"median_s": statistics.median(secs), "mean_s": statistics.fmean(secs),
                                      "students": len(secs), "data_variant": info["data_variant"]}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
