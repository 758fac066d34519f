"""PPO with a flat-MLP policy on an n2n-gym env, CleanRL style: one file, read top to bottom.

The env gives the flat observation (``observation="flat"``: the per-layer table as one
vector), so the MLP of CleanRL's ``ppo.py`` takes it unchanged. The allowed actions of the
current layer come in ``info["action_mask"]``; the policy puts -inf on the others (the
invalid-action masking of Huang & Ontanon, 2020, as in CleanRL's ``ppo_*_masked`` scripts).
An episode is one walk over the teacher's layers and only its last step is rewarded, so
each update collects whole episodes (GAE with gamma = 1 over them).

    python examples/ppo_flat.py --total-episodes 200 --protocol fast
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical

import n2n_gym  # noqa: F401  (registers the N2N-* environments)


@dataclass
class Args:
    env_id: str = "N2N-DigitsNet-Digits-v0"
    """the environment id"""
    protocol: str = "fast"
    """the env's student evaluation protocol ("tiny" for a smoke test)"""
    seed: int = 1
    """seed of the experiment"""
    total_episodes: int = 100
    """episodes (= evaluated students) in total"""
    episodes_per_update: int = 5
    """episodes collected per policy update"""
    learning_rate: float = 3e-3
    """the optimizer's learning rate"""
    update_epochs: int = 4
    """epochs over each batch"""
    gamma: float = 1.0
    """discount (1: the only reward is the student's, at the last step)"""
    gae_lambda: float = 0.95
    """lambda of generalized advantage estimation"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    ent_coef: float = 0.01
    """entropy coefficient"""
    vf_coef: float = 0.5
    """value-function coefficient"""
    max_grad_norm: float = 0.5
    """gradient clipping norm"""
    hidden: int = 64
    """width of the two hidden layers"""
    env_kwargs: str = "{}"
    """extra gym.make keyword arguments, as JSON"""


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Args):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    return Args(**vars(parser.parse_args(argv)))


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__()
        self.critic = nn.Sequential(layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
                                    layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                                    layer_init(nn.Linear(hidden, 1), std=1.0))
        self.actor = nn.Sequential(layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
                                   layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                                   layer_init(nn.Linear(hidden, n_actions), std=0.01))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(self, x, mask, action=None):
        logits = self.actor(x).masked_fill(~mask, -1e9)  # disallowed actions: probability 0
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


def main(argv: list[str] | None = None) -> dict:
    import json

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    env = gym.make(args.env_id, protocol=args.protocol, observation="flat", **json.loads(args.env_kwargs))
    assert isinstance(env.action_space, gym.spaces.Discrete), "only discrete action space is supported"
    assert len(env.observation_space.shape) == 1, "a flat observation is expected (observation='flat')"
    agent = Agent(env.observation_space.shape[0], env.action_space.n, args.hidden)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    start_time, episode, best, history = time.time(), 0, None, []
    num_updates = max(args.total_episodes // args.episodes_per_update, 1)
    for update in range(1, num_updates + 1):
        # ---- rollout: whole episodes
        obs_b, mask_b, act_b, logp_b, rew_b, done_b, val_b = [], [], [], [], [], [], []
        for _ in range(args.episodes_per_update):
            obs, info = env.reset(seed=args.seed + episode)
            done = False
            while not done:
                x = torch.as_tensor(obs, dtype=torch.float32)
                mask = torch.as_tensor(info["action_mask"], dtype=torch.bool)
                with torch.no_grad():
                    action, logprob, _, value = agent.get_action_and_value(x, mask)
                obs, reward, terminated, truncated, info = env.step(int(action))
                done = terminated or truncated
                obs_b.append(x), mask_b.append(mask), act_b.append(action), logp_b.append(logprob)
                rew_b.append(float(reward)), done_b.append(done), val_b.append(float(value))
            episode += 1
            history.append(float(reward))
            if best is None or reward > best["reward"]:
                best = {k: info[k] for k in ("reward", "accuracy", "params", "compression", "actions")}
        # ---- advantages: GAE over the episodes, no bootstrap past an episode's end
        advantages, lastgaelam = np.zeros(len(rew_b), dtype=np.float32), 0.0
        for t in reversed(range(len(rew_b))):
            next_value = 0.0 if done_b[t] else val_b[t + 1]
            nonterminal = 0.0 if done_b[t] else 1.0
            delta = rew_b[t] + args.gamma * next_value - val_b[t]
            advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nonterminal * lastgaelam
        b_obs, b_masks = torch.stack(obs_b), torch.stack(mask_b)
        b_actions, b_logprobs = torch.stack(act_b), torch.stack(logp_b)
        b_advantages = torch.as_tensor(advantages)
        b_returns = b_advantages + torch.as_tensor(val_b, dtype=torch.float32)
        # ---- optimise the clipped surrogate, the whole batch at once (it is small)
        for _ in range(args.update_epochs):
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs, b_masks, b_actions)
            ratio = (newlogprob - b_logprobs).exp()
            adv = (b_advantages - b_advantages.mean()) / (b_advantages.std() + 1e-8)
            pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
            v_loss = 0.5 * ((newvalue.view(-1) - b_returns) ** 2).mean()
            loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
        recent = history[-args.episodes_per_update:]
        print(f"update {update}/{num_updates}: mean reward {np.mean(recent):.3f}, best {best['reward']:.3f} "
              f"({best['compression']:.1f}x), {time.time() - start_time:.0f} s")
    env.close()
    return {"best": best, "rewards": history, "episodes": episode}


if __name__ == "__main__":
    main()
