"""N2N agent: recurrent REINFORCE policies that compress a network in two stages.

Ashok, Rhinehart, Beainy, Kitani, "N2N Learning: Network to Network Compression via
Policy Gradient Reinforcement Learning", ICLR 2018 (arXiv 1709.06030).

One readable file, CleanRL style::

    python -m n2n_gym.agents.n2n --help
    python -m n2n_gym.agents.n2n --updates 20,40 --seed 1 --out runs/n2n-digits

The agent talks to the environment through the Gymnasium API only (``reset``, ``step``,
the observation and ``info``); whatever it does, a third-party agent can do too.

Policies (hidden size and depth from the paper's code)
-------------------------------------------------------
- **Removal** (stage 1, ``stage="remove"``): a bidirectional 2-layer LSTM (hidden 30) reads
  the per-layer rows of the observation at ``reset``; a linear head turns each layer's
  output into logits over the env's actions (keep / remove), so the action of layer t
  depends on the layers before and after it: pi(a_t | h_{t-1}, h_{t+1}, x_t).
- **Shrink** (stage 2, ``stage="shrink"``; also used for ``"joint"``): a unidirectional
  2-layer LSTM (hidden 30), fed at step t the observation row of the current layer and a
  one-hot of its previous action: pi(a_t | a_{t-1}, h_{t-1}, x_t), logits over the ratio
  table (``ratios="paper"``: 0.25, 0.5 x5, 0.6 ... 1.0).
- Layer rows are all the observation's columns (``n2n_gym.ir.encoding.FEATURES``: the paper's
  (type, kernel, stride, padding, outputs, skip start, skip end) plus input width and the
  removable / shrinkable flags). The number of layers is read from the ``present``
  column, so a policy runs on any architecture: one trained on a small teacher can be
  loaded for a larger one (the paper's transfer result).
- Action masks: logits of actions that ``info["action_mask"]`` (the current row of
  ``info["layer_masks"]``) forbids are set to -1e9 before sampling and in the update, so a
  masked action is never sampled and a layer with one allowed action contributes nothing
  to the gradient.

Optimisation (defaults from the paper's code)
---------------------------------------------
REINFORCE, gamma = 1 (the only reward is the final student's ``R = Rc * Ra``); N
rollouts (students) per policy update (default 5); per-rollout advantages
``A_i = R_i - b`` with the moving-average baseline ``b`` = mean of the earlier updates'
batch-mean rewards (0 at the first update); loss ``-mean_i(A_i * sum_t log pi(a_t^i))
- entropy_coef * H`` (no entropy term by default, as in the paper), one Adam step per
update. Adam lr 0.003 for removal, 0.01 for shrinkage; the paper's code uses 0.1 for
shrinking ResNets, which ``--lr-shrink`` left unset applies when the observation shows a
residual network (its ``skip_start`` column).

Proposal step (not in the paper): a student the search has proposed before is free (the
env answers it from its cache), so a policy that has collapsed onto a few students would
run free episodes without spending its budget. Each rollout whose student is a repeat (by
the search's own record, not the env's cache, so a shared cache changes nothing) is resampled
from the policy (up to ``--resample-cached`` times; every policy sample, cached or not,
is in the gradient batch, so the update stays on-policy), then the update tops up with
uniform mask-respecting proposals (off-policy: recorded, not in the gradient) until it has
``--rollouts`` new students. ``--explore-tries`` repeated uniform proposals in a row end the
stage as exhausted (``N2N.exhausted`` says why): the digits net's removal stage has only a
few distinct students. ``--explore-tries 0`` turns the proposal step off (the paper's updates).

``--baseline loo`` (not in the paper) gives each rollout the mean reward of the other
rollouts of its batch as baseline (Kool et al., 2019): the first update already has a
baseline, where the paper's running mean starts at 0 and turns every early advantage
positive. At the small budgets of ``n2n-gym bench`` it is what lets N2N learn in a few
updates (README, "N2N vs random search").

Not reproduced (defects of the official code, see ../shared/reference/papers.md)
-------------------------------------------------------------------------------
- every rollout of a batch got the same advantage ``mean(R) - b`` (here ``R_i - b``;
  ``--shared-advantage`` restores the old behaviour for comparison);
- the shrink LSTM cells sat in a plain Python list and were never trained (here one
  registered ``nn.LSTM``);
- actions drifted out of step with layers after projection shortcuts (here one env step
  per layer of the observation: the env owns the layer order);
- rewards from test accuracy (the env rewards validation accuracy, reports test);
- the official baseline divides the sum of e earlier batch means by e + 1 (an extra 0);
  here it is their mean.

Two-stage pipeline
------------------
Stage 1 runs on ``gym.make(env_id, stage="remove")``; stage 2 on
``gym.make(env_id, stage="shrink", ratios="paper", start_architecture=<best stage-1
student's info["architecture"]>)``. The env rewards every student against the original
teacher, so rewards of both stages compare. :class:`N2N` returns the history of every
evaluated student (its terminal ``info`` plus stage, update and rollout indices).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import math
import os
import pathlib
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import n2n_gym  # noqa: F401  (registers the environments)
from n2n_gym.envs.env import RATIO_TABLES
from n2n_gym.envs.registration import canonical_env_id, resolve_protocol
from n2n_gym.envs.wrappers import (
    BudgetExhausted,
    BudgetTracker,
    private_cache,
    resolve_device,
)
from n2n_gym.evaluation.protocols import PROTOCOLS
from n2n_gym.ir.encoding import COLUMN
from n2n_gym.utils.checks import check_choice, check_float, check_int, json_object
from n2n_gym.utils.files import json_safe

STAGE_NAMES = ("remove", "shrink", "joint")
MASKED = -1e9  # logit of a forbidden action
POLICY_FORMAT = "n2n-gym-policies"


@dataclass
class Args:
    """Settings of an N2N search (``python -m n2n_gym.agents.n2n --help``)."""

    env_id: str = "N2N-DigitsNet-Digits-v0"
    """Gymnasium id of the compression environment (default: the embedded digits env)"""
    env_kwargs: dict = field(default_factory=dict)
    """extra keyword arguments of gym.make, as JSON (e.g. '{"teacher_recipe": {"epochs": 3}}')"""
    protocol: str | None = None
    """student evaluation protocol of the env (default: the env id's own, e.g. fast for the v0 ids)"""
    stages: str = "remove,shrink"
    """comma-separated stages, run in order; each starts from the best student of the one before"""
    updates: str = "20,40"
    """policy updates per stage: one number for every stage, or one per stage (paper: 100 each; default 20 + 40 = 300 students, about a minute on 2 CPU cores on the digits env)"""
    rollouts: int = 5
    """rollouts (evaluated students) per policy update: N of the paper (5)"""
    seed: int = 0
    """seed of the policies' initialisation and of action sampling"""
    device: str = "auto"
    """device of the env's student training: auto | cpu | cuda (the policies stay on the CPU)"""
    ratios: str = "paper"
    """width-ratio table of the shrink stage: paper (0.25, 0.5 x5, 0.6 .. 1.0) | uniform (0.1 .. 1.0)"""
    hidden: int = 30
    """LSTM hidden size of both policies (paper code: 30)"""
    lstm_layers: int = 2
    """stacked LSTM layers of both policies (paper code: 2)"""
    lr_remove: float = 0.003
    """Adam learning rate of the removal policy (paper code: 0.003)"""
    lr_shrink: float | None = None
    """Adam learning rate of the shrink policy; unset: 0.01, or 0.1 when the observation shows a residual network (paper code)"""
    entropy_coef: float = 0.0
    """weight of the policy-entropy bonus (paper: none)"""
    resample_cached: int = 3
    """proposal step: extra policy samples per rollout whose student the env had already evaluated (a cache hit, free), before the update tops up with uniform proposals"""
    explore_tries: int = 50
    """proposal step: repeated uniform proposals in a row after which a stage counts as exhausted and ends (no spinning on free episodes); 0 turns the proposal step off (the paper: every sample is a rollout, repeats included)"""
    baseline: str = "mean"
    """reward baseline: mean (running mean of earlier batch means, paper code) | ema | loo (leave-one-out mean of the other rollouts of the batch) | none"""
    baseline_decay: float = 0.8
    """decay of the ema baseline (only with --baseline ema)"""
    shared_advantage: bool = False
    """reproduce the official code's defect: every rollout of a batch gets mean(R) - b"""
    batch_eval: bool = True
    """score an update's rollouts together on the env's evaluation backend (env_kwargs backend / workers: concurrent students); the rewards equal one-by-one scoring's"""
    random_search: bool = False
    """ablation: uniform random mask-respecting actions, no learning (the random-search baseline)"""
    load_policy: str | None = None
    """policy weights to start from (a .pt written by the n2n agent's --save-policy), e.g. pre-trained on a smaller teacher"""
    save_policy: str | None = None
    """where to save the trained policy weights (.pt) at the end"""
    out: str | None = None
    """folder for history.jsonl and policies.pt of this search (the script only; see n2n-gym compress)"""
    progress: bool = True
    """show a progress bar"""

    def __post_init__(self) -> None:
        """Every setting checked where it is given (a bad one fails before any episode)."""
        if not isinstance(self.env_id, str) or not self.env_id:
            raise TypeError(f"env_id must be a Gymnasium id (str), got {self.env_id!r}")
        if not isinstance(self.env_kwargs, dict):
            raise TypeError(f"env_kwargs must be a dict (JSON object), got {type(self.env_kwargs).__name__}")
        for key in ("protocol", "device"):  # given twice, one would silently win
            if key in self.env_kwargs:
                raise ValueError(f"pass {key} as its own setting ({key}=..., --{key}), not in env_kwargs")
        self.env_id = canonical_env_id(self.env_id)
        for name in ("device", "stages", "baseline"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {getattr(self, name)!r}")
        if self.protocol is not None and not isinstance(self.protocol, str):
            raise TypeError(f"protocol must be a str or None (the env id's own), got {self.protocol!r}")
        self.protocol = resolve_protocol(self.env_id, self.protocol)
        check_choice("protocol", self.protocol, sorted(PROTOCOLS))
        self.update_list()  # checks stages too
        check_int("rollouts", self.rollouts, min=1)
        check_int("seed", self.seed, min=0)
        check_choice("ratios", self.ratios, sorted(RATIO_TABLES))
        check_int("hidden", self.hidden, min=1)
        check_int("lstm_layers", self.lstm_layers, min=1)
        check_float("lr_remove", self.lr_remove, min=0.0, min_open=True)
        if self.lr_shrink is not None:
            check_float("lr_shrink", self.lr_shrink, min=0.0, min_open=True)
        check_float("entropy_coef", self.entropy_coef, min=0.0)
        check_int("resample_cached", self.resample_cached, min=0)
        check_int("explore_tries", self.explore_tries, min=0)
        check_choice("baseline", self.baseline, Baseline.KINDS)
        check_float("baseline_decay", self.baseline_decay, min=0.0, max=1.0, max_open=True)

    def stage_list(self) -> list[str]:
        stages = [s.strip() for s in str(self.stages).split(",") if s.strip()]
        bad = [s for s in stages if s not in STAGE_NAMES]
        if not stages or bad:
            raise ValueError(f"stages must be a comma-separated list of {', '.join(STAGE_NAMES)} (e.g. "
                             f"'remove,shrink'), got {self.stages!r}")
        return stages

    def update_list(self) -> list[int]:
        stages = self.stage_list()
        try:
            values = [int(v) for v in str(self.updates).split(",") if v.strip()]
        except ValueError:
            values = []
        if len(values) == 1:
            values = values * len(stages)
        if len(values) != len(stages) or any(v < 1 for v in values):
            raise ValueError(f"updates must be one integer >= 1, or one per stage ({len(stages)}: {','.join(stages)}), "
                             f"e.g. '20,40'; got {self.updates!r}")
        return values


# ---------------------------------------------------------------------------- policies
class RemovalPolicy(nn.Module):
    """Bidirectional LSTM over the layer rows -> linear -> logits per layer."""

    autoregressive = False

    def __init__(self, num_features: int, num_actions: int = 2, hidden: int = 30, layers: int = 2):
        super().__init__()
        self.config = {"kind": "removal", "num_features": num_features, "num_actions": num_actions,
                       "hidden": hidden, "layers": layers}
        self.lstm = nn.LSTM(num_features, hidden, layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, num_actions)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, prev_actions: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, L, F) rows, ``lengths`` (B,) layers per sequence -> logits (B, L, A)."""
        if bool((lengths == x.shape[1]).all()):
            out, _ = self.lstm(x)
        else:  # pack so that the backward direction starts at each sequence's last layer
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.head(out)


class ShrinkPolicy(nn.Module):
    """LSTM fed the current layer's row and a one-hot of the previous action -> logits."""

    autoregressive = True

    def __init__(self, num_features: int, num_actions: int, hidden: int = 30, layers: int = 2):
        super().__init__()
        self.config = {"kind": "shrink", "num_features": num_features, "num_actions": num_actions,
                       "hidden": hidden, "layers": layers}
        self.num_actions = num_actions
        self.lstm = nn.LSTM(num_features + num_actions, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, num_actions)

    def _inputs(self, x: torch.Tensor, prev_actions: torch.Tensor) -> torch.Tensor:
        # prev_actions: -1 before the first layer (an all-zero one-hot)
        onehot = F.one_hot(prev_actions.clamp(min=0), self.num_actions).to(x.dtype)
        onehot = onehot * (prev_actions >= 0).unsqueeze(-1).to(x.dtype)
        return torch.cat([x, onehot], dim=-1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, prev_actions: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, F), ``prev_actions`` (B, L) -> logits (B, L, A). A unidirectional LSTM
        needs no packing: padding after a sequence does not change its outputs."""
        out, _ = self.lstm(self._inputs(x, prev_actions))
        return self.head(out)

    def step(self, row: torch.Tensor, prev_action: int, state=None):
        """One layer: ``row`` (F,) -> logits (A,), new LSTM state."""
        inp = self._inputs(row.view(1, 1, -1), torch.tensor([[prev_action]]))
        out, state = self.lstm(inp, state)
        return self.head(out)[0, 0], state


def make_policy(config: dict) -> nn.Module:
    cls = {"removal": RemovalPolicy, "shrink": ShrinkPolicy}[config["kind"]]
    return cls(config["num_features"], config["num_actions"], config["hidden"], config["layers"])


def masked_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~mask, MASKED)


# ---------------------------------------------------------------------------- rollouts
@dataclass
class Rollout:
    """One episode: the policy inputs, actions and masks per layer, the reward and the final info."""

    x: torch.Tensor  # (n, F) rows the policy read
    prev: torch.Tensor  # (n,) previous action fed to an autoregressive policy (-1 first)
    actions: torch.Tensor  # (n,)
    masks: torch.Tensor  # (n, A) bool
    reward: float
    info: dict


def num_layers_of(obs: np.ndarray) -> int:
    """Layers of the starting architecture, from the observation's ``present`` column."""
    return int(np.asarray(obs)[:, COLUMN["present"]].sum())


def sample_action(logits: torch.Tensor, mask: np.ndarray, generator: torch.Generator) -> int:
    m = torch.as_tensor(np.asarray(mask, dtype=bool))
    probs = torch.softmax(masked_logits(logits, m), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def uniform_action(mask: np.ndarray, generator: torch.Generator) -> int:
    allowed = np.flatnonzero(np.asarray(mask))
    return int(allowed[int(torch.randint(len(allowed), (1,), generator=generator))])


def run_episode(env: gym.Env, policy: nn.Module | None, generator: torch.Generator,
                update: int = 0, seed: int | None = None, score: bool = True) -> Rollout:
    """Play one episode with ``policy`` (None: uniform over the allowed actions).

    Only the policy runs under ``no_grad``: ``env.step`` trains the final student.
    ``score=False`` chooses the last action but does not step it (no student is trained;
    ``reward`` is NaN, ``info`` empty): :func:`score_rollouts` scores a batch of them."""
    obs, info = env.reset(seed=seed, options={"update": update})
    n = num_layers_of(obs)
    xs, prevs, actions, masks = [], [], [], []
    autoregressive = policy is not None and policy.autoregressive
    all_logits, state, prev = None, None, -1
    if policy is not None and not autoregressive:
        x0 = torch.as_tensor(obs[:n], dtype=torch.float32)
        with torch.no_grad():
            all_logits = policy(x0.unsqueeze(0), torch.tensor([n]))[0]
    reward, terminated, t = 0.0, False, 0
    while not terminated:
        if t >= n:
            raise RuntimeError(f"the episode did not end after the {n} layers of the observation")
        mask = np.asarray(info["action_mask"], dtype=bool)
        row = torch.as_tensor(obs[t], dtype=torch.float32)
        if policy is None:
            a = uniform_action(mask, generator)
        elif autoregressive:
            with torch.no_grad():
                logits, state = policy.step(row, prev, state)
            a = sample_action(logits, mask, generator)
        else:
            a = sample_action(all_logits[t], mask, generator)
        xs.append(row if autoregressive or policy is None else x0[t])
        prevs.append(prev)
        actions.append(a)
        masks.append(torch.as_tensor(mask))
        if not score and t == n - 1:  # the student is complete: scored with its batch
            reward, info = math.nan, {}
            break
        obs, reward, terminated, truncated, info = env.step(a)
        if truncated and not terminated:
            raise RuntimeError("the environment truncated an episode; N2N needs the final student's reward")
        prev, t = a, t + 1
    return Rollout(torch.stack(xs), torch.tensor(prevs), torch.tensor(actions), torch.stack(masks),
                   float(reward), info)


def score_rollouts(env: gym.Env, batch: list[Rollout], update: int) -> None:
    """Score unscored rollouts (``run_episode(..., score=False)``) together through the env's
    ``evaluate_many`` (its backend trains the students concurrently); fills ``reward``/``info``."""
    scored = env.unwrapped.evaluate_many([r.actions.tolist() for r in batch], update=update)
    for r, (reward, info) in zip(batch, scored):
        r.reward, r.info = float(reward), info


def trajectory_log_probs(policy: nn.Module, batch: list[Rollout]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over layers of log pi(a_t) per rollout (B,), and the mean per-step entropy."""
    lengths = torch.tensor([len(r.actions) for r in batch])
    x = nn.utils.rnn.pad_sequence([r.x for r in batch], batch_first=True)
    prev = nn.utils.rnn.pad_sequence([r.prev for r in batch], batch_first=True, padding_value=-1)
    actions = nn.utils.rnn.pad_sequence([r.actions for r in batch], batch_first=True)
    masks = nn.utils.rnn.pad_sequence([r.masks for r in batch], batch_first=True, padding_value=True)
    valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    logp = torch.log_softmax(masked_logits(policy(x, lengths, prev), masks), dim=-1)
    taken = logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1) * valid
    entropy = -(logp.exp() * logp).sum(-1)
    return taken.sum(1), (entropy * valid).sum() / valid.sum()


class Baseline:
    """The reward baseline b: ``mean`` of the earlier updates' batch means (paper code), an
    ``ema`` of them, ``loo`` (each rollout's b is the mean reward of the other rollouts of
    its batch: Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free"; no
    state, so the first update already has a baseline) or ``none`` (b = 0)."""

    KINDS = ("mean", "ema", "loo", "none")

    def __init__(self, kind: str = "mean", decay: float = 0.8):
        if kind not in self.KINDS:
            raise ValueError(f"baseline must be one of {self.KINDS}, got {kind!r}")
        self.kind, self.decay, self.total, self.count, self.ema = kind, decay, 0.0, 0, 0.0

    @property
    def value(self) -> float:
        """The scalar baseline of the next batch (``loo``: 0, its baselines are per rollout)."""
        if self.kind in ("none", "loo") or self.count == 0:
            return 0.0
        return self.total / self.count if self.kind == "mean" else self.ema

    def values(self, rewards: torch.Tensor) -> torch.Tensor:
        """The baseline of each rollout of a batch with these ``rewards``."""
        if self.kind == "loo":
            n = len(rewards)
            return (rewards.sum() - rewards) / (n - 1) if n > 1 else torch.zeros_like(rewards)
        return torch.full_like(rewards, self.value)

    def observe(self, batch_mean: float) -> None:
        self.ema = batch_mean if self.count == 0 else self.decay * self.ema + (1 - self.decay) * batch_mean
        self.total += batch_mean
        self.count += 1

    def state_dict(self) -> dict:
        return {"kind": self.kind, "decay": self.decay, "total": self.total, "count": self.count, "ema": self.ema}

    def load_state_dict(self, state: dict) -> None:
        self.kind, self.decay = state["kind"], state["decay"]
        self.total, self.count, self.ema = state["total"], state["count"], state["ema"]


def reinforce_update(policy: nn.Module, optimizer: torch.optim.Optimizer, batch: list[Rollout],
                     baseline: float | torch.Tensor, entropy_coef: float = 0.0, shared_advantage: bool = False) -> dict:
    """One REINFORCE step on a batch of rollouts; ``baseline``: one value, or one per
    rollout (:meth:`Baseline.values`). Returns statistics."""
    rewards = torch.tensor([r.reward for r in batch])
    baseline = torch.as_tensor(baseline, dtype=rewards.dtype)
    advantages = rewards - baseline
    if shared_advantage:
        advantages = torch.full_like(rewards, float(rewards.mean() - baseline.mean()))
    logp, entropy = trajectory_log_probs(policy, batch)
    loss = -(advantages * logp).mean() - entropy_coef * entropy
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.item(), "entropy": entropy.item(), "mean_reward": float(rewards.mean()),
            "baseline": float(baseline.mean())}


# ---------------------------------------------------------------------------- the search
def student_record(info: dict, **extra) -> dict:
    """A JSON-safe history row: the terminal info (without the mask arrays) plus ``extra``."""
    row = {k: v for k, v in info.items() if k not in ("action_mask", "layer_masks")}
    return json_safe({**extra, **row})


def student_key(info: dict):
    """What identifies a proposed student: its architecture (IR JSON), or its actions when
    it has none (an invalid student)."""
    return info.get("architecture") or tuple(int(a) for a in info.get("actions") or ())


def better(a: dict | None, b: dict | None) -> bool:
    """Is student ``a`` better than ``b``: higher reward, then fewer parameters."""
    if a is None:
        return False
    if b is None:
        return True
    return (a["reward"], -a.get("params", 0)) > (b["reward"], -b.get("params", 0))


class N2N:
    """The two-stage N2N search. ``run()`` returns the history of every evaluated student.

    ``on_student(record)`` is called after every evaluated student, ``on_update(self)``
    after every policy update (and at each stage boundary): the CLI appends the record to
    a JSONL file and saves :meth:`state_dict` there, which :meth:`load_state_dict` resumes.
    """

    def __init__(self, args: Args, on_student: Callable[[dict], None] | None = None,
                 on_update: Callable[["N2N"], None] | None = None, budget_left: Callable[[], int] | None = None):
        self.args = args
        # how many more students may be trained (None: no budget); an update's batch is cut to it,
        # so no student is trained past the budget (each trained student is counted by the evaluator)
        self.budget_left = budget_left
        self.stages, self.updates = args.stage_list(), args.update_list()
        self.on_student, self.on_update = on_student, on_update
        self.generator = torch.Generator().manual_seed(args.seed)
        self.policies: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.lrs: dict[str, float] = {}
        self.baselines = {s: Baseline(args.baseline, args.baseline_decay) for s in self.stages}
        self.stage_index, self.update, self.evaluations = 0, 0, 0
        self.stage_best: dict[str, dict] = {}
        self.best: dict | None = None
        self.history: list[dict] = []
        self.update_log: list[dict] = []
        self.exhausted: dict[str, str] = {}  # stage -> why it ended before its updates (see _propose)
        self.seen: set = set()  # student_key of every student this search proposed
        self._pretrained = load_policies(args.load_policy) if args.load_policy else {}

    @property
    def total_evaluations(self) -> int:
        return sum(self.updates) * self.args.rollouts

    @property
    def done(self) -> bool:
        return self.stage_index >= len(self.stages)

    # ---- envs and policies -------------------------------------------------------
    def start_architecture(self, stage_index: int) -> str | None:
        """The IR JSON a stage starts from: the best valid student of the stage before."""
        if stage_index == 0:
            return None
        prev = self.stage_best.get(self.stages[stage_index - 1])
        if prev is None or not prev.get("valid") or not prev.get("architecture"):
            return None
        return prev["architecture"]

    def make_env(self, stage_index: int) -> gym.Env:
        stage = self.stages[stage_index]
        kwargs: dict[str, Any] = {"protocol": self.args.protocol, "device": self.args.device,
                                  **self.args.env_kwargs, "stage": stage}
        if stage != "remove":
            kwargs.setdefault("ratios", self.args.ratios)
        start = self.start_architecture(stage_index)
        if start is not None:
            kwargs["start_architecture"] = start
        return gym.make(self.args.env_id, **kwargs)

    def ensure_policy(self, stage: str, env: gym.Env) -> None:
        if stage in self.policies or self.args.random_search:
            return
        num_features, num_actions = env.observation_space.shape[1], int(env.action_space.n)
        kind = "removal" if stage == "remove" else "shrink"
        config = {"kind": kind, "num_features": num_features, "num_actions": num_actions,
                  "hidden": self.args.hidden, "layers": self.args.lstm_layers}
        with torch.random.fork_rng(devices=[]):  # the same init whatever ran before (teacher training, resume)
            torch.manual_seed(self.args.seed * 1000 + self.stage_index)
            policy = make_policy(config)
        if stage in self._pretrained:
            saved = self._pretrained[stage]
            if saved["config"] != config:
                raise ValueError(f"the loaded {stage} policy has config {saved['config']}, this env needs {config}")
            policy.load_state_dict(saved["state_dict"])
        lr = self.args.lr_remove if stage == "remove" else self.args.lr_shrink
        if lr is None:
            obs, _ = env.reset()
            residual = bool(np.asarray(obs)[:, COLUMN["skip_start"]].any())
            lr = 0.1 if residual else 0.01
        self.policies[stage], self.lrs[stage] = policy, lr
        self.optimizers[stage] = torch.optim.Adam(policy.parameters(), lr=lr)

    # ---- the loop ----------------------------------------------------------------
    def run(self) -> list[dict]:
        while not self.done:
            stage = self.stages[self.stage_index]
            env = self.make_env(self.stage_index)
            try:
                self.ensure_policy(stage, env)
                while self.update < self.updates[self.stage_index] and stage not in self.exhausted:
                    self._one_update(stage, env)
                    self.update += 1
                    if self.on_update:
                        self.on_update(self)
            finally:
                env.close()
            self.stage_index, self.update = self.stage_index + 1, 0
            if self.on_update:
                self.on_update(self)
        return self.history

    def _record(self, stage: str, r: Rollout, rollout: int, proposal: str) -> Rollout:
        """The history record of one scored episode (``proposal``: policy | resample | uniform)."""
        record = student_record(r.info, evaluation=self.evaluations, stage=stage, stage_index=self.stage_index,
                                update=self.update, rollout=rollout, proposal=proposal)
        self.evaluations += 1
        self.history.append(record)
        if better(record, self.stage_best.get(stage)):
            self.stage_best[stage] = record
        if better(record, self.best):
            self.best = record
        if self.on_student:
            self.on_student(record)
        return r

    def _play(self, stage: str, env: gym.Env, policy: nn.Module | None, rollout: int, proposal: str) -> Rollout:
        """One episode, scored at once, and its history record."""
        seed = self.args.seed if (self.update == 0 and rollout == 0) else None
        return self._record(stage, run_episode(env, policy, self.generator, update=self.update, seed=seed), rollout,
                            proposal)

    def _first_samples(self, stage: str, env: gym.Env, policy: nn.Module | None) -> list[Rollout]:
        """The update's ``rollouts`` policy samples; batched: every episode's edits first,
        then the batch's students trained at once (the env's ``evaluate_many``)."""
        batched = self.args.batch_eval and hasattr(env.unwrapped, "evaluate_many")
        n = self.args.rollouts
        if self.budget_left is not None:  # the last batch of a budget: only the students it may still train
            n = max(1, min(n, self.budget_left()))
        if not batched:  # scored and recorded one by one: a budget that ends mid-batch stops at once
            out = []
            for i in range(n):
                seed = self.args.seed if (self.update == 0 and i == 0) else None
                out.append(self._record(stage, run_episode(env, policy, self.generator, update=self.update,
                                                           seed=seed), i, "policy"))
            return out
        batch = []
        for i in range(n):
            seed = self.args.seed if (self.update == 0 and i == 0) else None
            batch.append(run_episode(env, policy, self.generator, update=self.update, seed=seed, score=False))
        score_rollouts(env, batch, self.update)
        # every student of the batch was trained: all are recorded (and counted) before a budget stops the run
        stop: BudgetExhausted | None = None
        for i, r in enumerate(batch):
            try:
                self._record(stage, r, i, "policy")
            except BudgetExhausted as exc:
                stop = stop or exc
        if stop is not None:
            raise stop
        return batch

    def _propose(self, stage: str, env: gym.Env, policy: nn.Module | None) -> list[Rollout]:
        """The proposal step: ``rollouts`` students per update that the env had not evaluated.

        A student this search has proposed before costs no evaluation (the env answers it
        from its cache), so a policy that has collapsed onto a few students would otherwise
        spin through free episodes without spending its budget. "Before" is the search's
        own record (:attr:`seen`, rebuilt from the history on resume), not the env's cache,
        which another run may have filled: the search stays the same whatever the cache holds. Each
        rollout gets up to ``resample_cached`` more samples from the policy; every policy
        sample (cached or not) enters the gradient batch, so the update stays on-policy.
        Still short of new students, the update tops up with uniform mask-respecting
        proposals (off-policy: recorded, never in the gradient) until it has them; after
        ``explore_tries`` cached uniform proposals in a row the stage's space is taken
        to be exhausted: the stage ends and :attr:`exhausted` says why."""
        def new(r: Rollout) -> bool:  # first time this search proposes this student
            key = student_key(r.info)
            fresh_student = key not in self.seen
            self.seen.add(key)
            return fresh_student

        batch = self._first_samples(stage, env, policy)
        if self.args.explore_tries == 0:  # off: the paper's update, repeats included
            return batch
        fresh = sum(new(r) for r in batch)
        for _ in range(self.args.rollouts - fresh):  # each repeat: up to resample_cached more policy samples
            for _attempt in range(max(self.args.resample_cached, 0)):
                r = self._play(stage, env, policy, len(batch), "resample")
                batch.append(r)
                if new(r):
                    fresh += 1
                    break
        misses = 0
        while fresh < self.args.rollouts:
            r = self._play(stage, env, None, len(batch) + misses, "uniform")
            if new(r):
                fresh, misses = fresh + 1, 0
            else:
                misses += 1
            if misses >= self.args.explore_tries:
                self.exhausted[stage] = (f"update {self.update}: {misses} uniform proposals in a row were students "
                                         f"already evaluated; the {stage} stage's students look exhausted")
                break
        return batch

    def _one_update(self, stage: str, env: gym.Env) -> None:
        policy = self.policies.get(stage)
        batch = self._propose(stage, env, policy)
        if not batch:
            return
        baseline = self.baselines[stage]
        rewards = torch.tensor([r.reward for r in batch])
        stats = {"stage": stage, "update": self.update, "mean_reward": float(np.mean([r.reward for r in batch])),
                 "baseline": baseline.value}  # float64 mean: the running baseline's exact history
        if policy is not None:
            stats.update(reinforce_update(policy, self.optimizers[stage], batch, baseline.values(rewards),
                                          self.args.entropy_coef, self.args.shared_advantage))
        baseline.observe(stats["mean_reward"])
        self.update_log.append(stats)

    # ---- state -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": "n2n-gym-search", "version": 1, "args": dataclasses.asdict(self.args),
            "stage_index": self.stage_index, "update": self.update, "evaluations": self.evaluations,
            "generator": self.generator.get_state(),
            "policies": {s: {"config": p.config, "state_dict": p.state_dict()} for s, p in self.policies.items()},
            "optimizers": {s: o.state_dict() for s, o in self.optimizers.items()},
            "lrs": dict(self.lrs),
            "baselines": {s: b.state_dict() for s, b in self.baselines.items()},
            "stage_best": self.stage_best, "best": self.best, "update_log": self.update_log,
            "exhausted": dict(self.exhausted),
        }

    def load_state_dict(self, state: dict, history: list[dict] | None = None) -> None:
        """Continue a search from :meth:`state_dict`; ``history``: the students evaluated
        by the completed updates (the caller's record of them)."""
        if state.get("format") != "n2n-gym-search":
            raise ValueError("not an n2n-gym search state")
        self.stage_index, self.update, self.evaluations = state["stage_index"], state["update"], state["evaluations"]
        self.generator.set_state(state["generator"])
        for stage, saved in state["policies"].items():
            policy = make_policy(saved["config"])
            policy.load_state_dict(saved["state_dict"])
            self.policies[stage], self.lrs[stage] = policy, state["lrs"][stage]
            self.optimizers[stage] = torch.optim.Adam(policy.parameters(), lr=self.lrs[stage])
            self.optimizers[stage].load_state_dict(state["optimizers"][stage])
        for stage, b in state["baselines"].items():
            self.baselines[stage].load_state_dict(b)
        self.stage_best, self.best = state["stage_best"], state["best"]
        self.update_log = list(state.get("update_log", []))
        self.exhausted = dict(state.get("exhausted", {}))
        self.history = list(history or [])
        self.seen = {student_key(r) for r in self.history}


def save_policies(search: N2N, path: str | os.PathLike) -> None:
    """Save the trained policies (per stage) for transfer to another teacher."""
    torch.save({"format": POLICY_FORMAT, "version": 1,
                "policies": {s: {"config": p.config, "state_dict": p.state_dict()}
                             for s, p in search.policies.items()}}, path)


def load_policies(path: str | os.PathLike) -> dict[str, dict]:
    """``{stage: {"config", "state_dict"}}`` from :func:`save_policies` (or a search state)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("format") not in (POLICY_FORMAT, "n2n-gym-search"):
        raise ValueError(f"{path} holds no n2n-gym policies")
    return saved["policies"]


# ---------------------------------------------------------------------------- script
def _field_docs(cls) -> dict[str, str]:
    """The string literal under each dataclass field (CleanRL / tyro style)."""
    docs: dict[str, str] = {}
    body = ast.parse(inspect.getsource(cls)).body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)
    return docs


def add_args(parser: argparse.ArgumentParser, cls=Args, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field, with the field's docstring as help."""
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_ = docs.get(f.name, "")
        if "(default:" not in help_:  # a docstring that states its default (an id's own, ...) says it once
            help_ += f" (default: {json.dumps(default) if isinstance(default, dict) else default})"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif f.type in (dict, "dict"):
            parser.add_argument(flag, type=json_object, default=default, help=help_, metavar="JSON")
        elif f.type in (int, "int"):
            parser.add_argument(flag, type=int, default=default, help=help_)
        elif f.type in (float, "float", "float | None"):
            parser.add_argument(flag, type=float, default=default, help=help_)
        else:
            parser.add_argument(flag, type=str, default=default, help=help_)


def args_or_exit(parser: argparse.ArgumentParser, cls, values: dict):
    """``cls(**values)``, or argparse's one-line usage error (exit 2) naming the bad setting."""
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        parser.error(f"{exc} (see --help)")


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(prog="python -m n2n_gym.agents.n2n", description=__doc__.split("\n\n")[0])
    add_args(parser)
    ns = parser.parse_args(argv)
    return args_or_exit(parser, Args, vars(ns))


# ------------------------------------------------------------------ benchmark adapter
#: hparams of the benchmark adapter that are not fields of agents.n2n.Args
_N2N_OWN = ("remove_fraction",)
_N2N_SKIP = ("env_id", "env_kwargs", "protocol", "seed", "device", "out", "progress", "load_policy", "save_policy",
             "random_search")


def run_benchmark(env_id: str, seed: int, budget: int, env_kwargs: dict | None = None, hparams: dict | None = None, *,
            tracker: BudgetTracker | None = None, wandb_run: Any = None) -> dict:
    """N2N as an agent of ``n2n-gym bench`` (``n2n_gym.bench.runner.AGENTS["n2n"]``): :class:`N2N`
    under a budget of evaluations.

    Stages: ``env_kwargs["stage"]`` when given (one stage), else ``remove,shrink``. The
    removal stage gets ``remove_fraction`` (default 1/3, the paper's 20:40 updates) of the
    budget in episodes, rounded up to whole updates of ``rollouts`` students; the last
    stage runs until the budget is spent. Other hparams are fields of ``agents.n2n.Args``."""
    tracker = tracker or BudgetTracker(budget)
    hparams = dict(hparams or {})
    remove_fraction = float(hparams.pop("remove_fraction", 1 / 3))
    with private_cache(env_kwargs) as kwargs:
        stage = kwargs.pop("stage", None)
        protocol = kwargs.pop("protocol", None)
        device = kwargs.pop("device", "auto")
        kwargs.pop("progress", None)
        fields = {f.name for f in dataclasses.fields(Args)}
        unknown = set(hparams) - fields - set(_N2N_OWN)
        if unknown or set(hparams) & set(_N2N_SKIP):
            raise ValueError(f"n2n hparams must be fields of agents.n2n.Args (not {_N2N_SKIP}) or {_N2N_OWN}; "
                             f"got {sorted(unknown | (set(hparams) & set(_N2N_SKIP)))}")
        stages = hparams.pop("stages", stage or "remove,shrink")
        args = Args(env_id=env_id, env_kwargs=kwargs, protocol=protocol, seed=seed, device=device, stages=stages,
                    progress=False, updates="1", **{k: v for k, v in hparams.items() if k != "updates"})  # set below
        stage_list = args.stage_list()
        rollouts = max(args.rollouts, 1)
        last = math.ceil(tracker.max_episodes / rollouts) + 1
        if "updates" in hparams:
            args.updates = str(hparams["updates"])
        elif len(stage_list) == 1:
            args.updates = str(last)
        else:
            first = max(1, math.ceil(budget * remove_fraction / rollouts))
            args.updates = ",".join([str(first)] * (len(stage_list) - 1) + [str(last)])
        ratios = kwargs.get("ratios", args.ratios)
        ratio_list = list(RATIO_TABLES[ratios]) if isinstance(ratios, str) else [float(r) for r in ratios]
        tracker.device = resolve_device(device)
        search: N2N | None = None

        def on_student(record: dict) -> None:
            st = record["stage"]
            replay = {"stage": st, "start_architecture": search.start_architecture(record["stage_index"])}
            if st != "remove":
                replay["ratios"] = ratio_list
            tracker.env_steps += len(record["actions"])
            tracker.observe(record, replay, update=record.get("update"))
            tracker.check()

        def budget_left() -> int:  # students this run may still train (evaluations and episodes left)
            return min(tracker.budget - tracker.evaluations, tracker.max_episodes - tracker.episodes)

        search = N2N(args, on_student=on_student, budget_left=budget_left)
        try:
            search.run()
        except BudgetExhausted:
            pass
    hp = {k: v for k, v in dataclasses.asdict(args).items() if k not in _N2N_SKIP}
    hp["remove_fraction"] = remove_fraction
    # why a stage ended before its updates (e.g. every proposal repeated: its space is spent)
    return {"hparams": hp, "tracker": tracker, "extra": {"lrs": dict(search.lrs), "exhausted": dict(search.exhausted)}}


def main(argv: list[str] | None = None) -> None:
    from tqdm.auto import tqdm

    args = parse_args(argv)
    out = pathlib.Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    history_file = open(out / "history.jsonl", "w") if out else None
    bar = tqdm(total=0, disable=not args.progress, unit="student", desc="N2N")

    def on_student(record: dict) -> None:
        bar.update(1)
        bar.set_postfix(stage=record["stage"], best=f"{search.best['reward']:.4f}")
        if history_file:
            history_file.write(json.dumps(record) + "\n")
            history_file.flush()

    search = N2N(args, on_student=on_student)
    bar.total = search.total_evaluations
    start = time.perf_counter()
    search.run()
    bar.close()
    if history_file:
        history_file.close()
        save_policies(search, out / "policies.pt")
    if args.save_policy:
        save_policies(search, args.save_policy)
    best = search.best
    print(f"{search.evaluations} students in {time.perf_counter() - start:.1f} s; best reward {best['reward']:.4f}: "
          f"val acc {best['accuracy']:.4f} (teacher {best['teacher_accuracy']:.4f}), "
          f"{best['params']:,} params ({best['compression']:.2f}x smaller), stage {best['stage']}")


if __name__ == "__main__":
    main(sys.argv[1:])
