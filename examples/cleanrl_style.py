"""Plug in your own algorithm: n2n-gym is a plain Gymnasium env.

Any agent that can call ``reset`` and ``step`` can compress a network; the allowed
actions of the current layer are ``info["action_mask"]``, and the last step's ``info``
describes the student (``accuracy``, ``params``, ``compression``, ``architecture``, ...).
Below, a complete tabular REINFORCE in the CleanRL spirit (no framework, numpy only): one
softmax over the actions of each layer, masked, and a moving-average baseline.

```python
import gymnasium as gym
import numpy as np
import n2n_gym  # registers the N2N-* environments

env = gym.make("N2N-DigitsNet-Digits-v0", protocol="fast")  # embedded digits teacher
rng = np.random.default_rng(0)
logits = np.zeros((env.unwrapped.num_layers, env.action_space.n))  # one softmax per layer
baseline, lr = 0.0, 0.5
for episode in range(30):
    obs, info = env.reset(seed=episode)
    grads, done, t = [], False, 0
    while not done:
        mask = info["action_mask"].astype(bool)
        p = np.where(mask, np.exp(logits[t] - logits[t][mask].max()), 0.0)
        p /= p.sum()
        a = rng.choice(len(p), p=p)
        grads.append((t, np.eye(len(p))[a] - p))  # d log pi(a) / d logits[t]
        obs, reward, done, truncated, info = env.step(a)
        t += 1
    for t, g in grads:  # REINFORCE: gamma = 1, the only reward is the student's
        logits[t] += lr * (reward - baseline) * g
    baseline = 0.8 * baseline + 0.2 * reward
    print(f"{episode:3d} reward {reward:.3f}  {info['compression']:.1f}x  val acc {info['accuracy']:.3f}")
```

Run it as ``python examples/cleanrl_style.py [--episodes 30] [--protocol fast]``. To
put such an agent on the leaderboard, wrap its env in ``n2n_gym.envs.wrappers.BudgetWrapper``
and register its ``run`` function with ``n2n_gym.bench.runner.register_agent`` (see
``n2n_gym/agents/random_search.py`` for a 20-line example).
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import n2n_gym  # noqa: F401  (registers the N2N-* environments)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="tabular REINFORCE on an n2n-gym env (plain Gymnasium API)")
    parser.add_argument("--env", default="N2N-DigitsNet-Digits-v0")
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--protocol", default="fast")
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env-kwargs", default="{}", help="extra gym.make kwargs as JSON")
    args = parser.parse_args(argv)
    import json

    env = gym.make(args.env, protocol=args.protocol, **json.loads(args.env_kwargs))
    rng = np.random.default_rng(args.seed)
    logits = np.zeros((env.unwrapped.num_layers, env.action_space.n))  # one softmax per layer
    baseline, best = 0.0, None
    for episode in range(args.episodes):
        obs, info = env.reset(seed=args.seed + episode)
        grads, done, t = [], False, 0
        while not done:
            mask = info["action_mask"].astype(bool)
            p = np.where(mask, np.exp(logits[t] - logits[t][mask].max()), 0.0)
            p /= p.sum()
            a = int(rng.choice(len(p), p=p))
            grads.append((t, np.eye(len(p))[a] - p))  # d log pi(a) / d logits[t]
            obs, reward, done, truncated, info = env.step(a)
            done = done or truncated
            t += 1
        for t, g in grads:  # REINFORCE: gamma = 1, the only reward is the student's
            logits[t] += args.lr * (reward - baseline) * g
        baseline = 0.8 * baseline + 0.2 * reward
        if best is None or reward > best["reward"]:
            best = {k: info[k] for k in ("reward", "accuracy", "params", "compression", "actions")}
        print(f"{episode:3d} reward {reward:.3f}  {info['compression']:.1f}x  val acc {info['accuracy']:.3f}")
    env.close()
    print(f"best: reward {best['reward']:.3f}, {best['compression']:.1f}x, actions {best['actions']}")
    return best


if __name__ == "__main__":
    main()
