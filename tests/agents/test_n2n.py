"""The N2N agent (agents/n2n.py): policy shapes, action masks, REINFORCE, search state.

Fast: toy Gymnasium envs defined here stand in for the compression env (the agent only
uses the Gymnasium API, so any env with the same observation layout and info keys works).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

REPO = pathlib.Path(__file__).resolve().parents[2]
from n2n_gym.agents import n2n as agent
from n2n_gym.ir.encoding import COLUMN, NUM_FEATURES

MAX_LAYERS = 12


class ToyEnv(gym.Env):
    """N2N-shaped toy env: one step per layer, reward only at the end.

    Observation rows follow ``n2n_gym.ir.encoding`` (``present`` marks the real layers).
    ``masks[t]`` are the allowed actions of layer t; ``good`` is the action that earns
    reward: the final reward is the fraction of layers where it was taken (a bandit when
    num_layers == 1). Accepts (and ignores) the kwargs the N2N search passes to gym.make.
    """

    def __init__(self, num_layers=4, num_actions=2, masks=None, good=1, seed=0, **ignored):
        self.n, self.good = num_layers, good
        self.action_space = spaces.Discrete(num_actions)
        self.observation_space = spaces.Box(0.0, 1.0, (MAX_LAYERS, NUM_FEATURES), np.float32)
        rng = np.random.default_rng(seed)
        self.static = np.zeros((MAX_LAYERS, NUM_FEATURES), np.float32)
        self.static[:num_layers, COLUMN["present"]] = 1
        self.static[:num_layers, COLUMN["kernel"]] = rng.random(num_layers)
        self.static[:num_layers, COLUMN["position"]] = np.linspace(0, 1, num_layers)
        self.masks = np.ones((num_layers, num_actions), np.int8) if masks is None else np.asarray(masks, np.int8)
        self.t, self.actions = 0, []

    def _info(self):
        t = min(self.t, self.n - 1)
        return {"action_mask": self.masks[t].copy(), "layer_masks": self.masks.copy(), "num_layers": self.n}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.actions = 0, []
        obs = self.static.copy()
        obs[0, COLUMN["current"]] = 1
        return obs, self._info()

    def step(self, action):
        assert self.masks[self.t, int(action)], f"masked action {action} at layer {self.t}"
        self.actions.append(int(action))
        self.t += 1
        obs = self.static.copy()
        obs[: self.t, COLUMN["decided"]] = 1
        if self.t < self.n:
            obs[self.t, COLUMN["current"]] = 1
            return obs, 0.0, False, False, self._info()
        reward = float(np.mean([a == self.good for a in self.actions]))
        info = {**self._info(), "reward": reward, "valid": True, "params": 100 - sum(self.actions),
                "architecture": str(self.actions), "actions": list(self.actions), "cached": False}
        return obs, reward, True, False, info


gym.register("AgentTestToy-v0", entry_point=ToyEnv)


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("num_actions", [2, 11])
def test_policy_shapes_on_variable_lengths(num_actions):
    torch.manual_seed(0)
    lengths = torch.tensor([3, 9, 5, 1])
    x = torch.zeros(4, 9, NUM_FEATURES)
    for b, n in enumerate(lengths):
        x[b, :n] = torch.rand(n, NUM_FEATURES)
    prev = torch.randint(-1, num_actions, (4, 9))
    for policy in (agent.RemovalPolicy(NUM_FEATURES, num_actions), agent.ShrinkPolicy(NUM_FEATURES, num_actions)):
        logits = policy(x, lengths, prev)
        assert logits.shape == (4, 9, num_actions)
        # a padded batch gives each sequence the logits it gets alone (bidirectional: packing)
        for b, n in enumerate(lengths.tolist()):
            alone = policy(x[b:b + 1, :n], torch.tensor([n]), prev[b:b + 1, :n])
            torch.testing.assert_close(logits[b, :n], alone[0], rtol=1e-5, atol=1e-6)


def test_paper_sizes():
    removal = agent.RemovalPolicy(NUM_FEATURES, 2)
    assert removal.lstm.bidirectional and removal.lstm.num_layers == 2 and removal.lstm.hidden_size == 30
    assert removal.head.in_features == 60
    shrink = agent.ShrinkPolicy(NUM_FEATURES, 11)
    assert not shrink.lstm.bidirectional and shrink.lstm.num_layers == 2 and shrink.lstm.hidden_size == 30
    # the shrink LSTM is registered (trained), unlike the official code's list of cells
    names = {n for n, _ in shrink.named_parameters()}
    assert any(n.startswith("lstm.") for n in names)


def test_shrink_step_matches_sequence():
    torch.manual_seed(1)
    policy = agent.ShrinkPolicy(NUM_FEATURES, 5)
    x = torch.rand(1, 6, NUM_FEATURES)
    prev = torch.tensor([[-1, 3, 0, 4, 4, 1]])
    full = policy(x, torch.tensor([6]), prev)[0]
    state, steps = None, []
    for t in range(6):
        logits, state = policy.step(x[0, t], int(prev[0, t]), state)
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps), full, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- masks
@pytest.mark.parametrize("kind", ["removal", "shrink", "random"])
def test_masked_actions_are_never_sampled(kind):
    n, a = 7, 5
    rng = np.random.default_rng(0)
    masks = (rng.random((n, a)) < 0.4).astype(np.int8)
    masks[np.arange(n), rng.integers(0, a, n)] = 1  # at least one allowed action per layer
    env = ToyEnv(num_layers=n, num_actions=a, masks=masks)
    policy = None
    if kind != "random":
        cls = agent.RemovalPolicy if kind == "removal" else agent.ShrinkPolicy
        policy = cls(NUM_FEATURES, a)
        with torch.no_grad():  # make the policy prefer forbidden actions strongly
            policy.head.bias.copy_(torch.tensor([50.0 * (1 - masks[:, i].mean()) for i in range(a)]))
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        r = agent.run_episode(env, policy, gen)  # ToyEnv asserts on a masked action
        assert all(masks[t, int(x)] for t, x in enumerate(r.actions))
        assert len(r.actions) == n
    if policy is not None:  # forced layers (one allowed action) contribute log-prob 0
        logp, _ = agent.trajectory_log_probs(policy, [r])
        assert torch.isfinite(logp).all()


def test_layer_count_from_present_column():
    for n in (1, 4, MAX_LAYERS):
        env = ToyEnv(num_layers=n)
        obs, _ = env.reset()
        assert agent.num_layers_of(obs) == n
        r = agent.run_episode(env, agent.RemovalPolicy(NUM_FEATURES, 2), torch.Generator().manual_seed(0))
        assert len(r.actions) == n


# ---------------------------------------------------------------------------- REINFORCE
@pytest.mark.parametrize("kind", ["removal", "shrink"])
@pytest.mark.parametrize(("shared", "baseline_kind"), [(False, "mean"), (True, "mean"), (False, "loo")])
def test_reinforce_moves_probability_to_the_better_action(kind, shared, baseline_kind):
    """A one-layer bandit: action 1 pays 1, action 0 pays 0."""
    torch.manual_seed(0)
    env = ToyEnv(num_layers=1, num_actions=2, good=1)
    policy = (agent.RemovalPolicy if kind == "removal" else agent.ShrinkPolicy)(NUM_FEATURES, 2)
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    baseline = agent.Baseline(baseline_kind)

    def p_good():
        r = agent.run_episode(env, policy, gen)
        with torch.no_grad():
            logits = policy(r.x.unsqueeze(0), torch.tensor([1]), r.prev.unsqueeze(0))[0, 0]
        return float(torch.softmax(logits, -1)[1])

    before = p_good()
    for _ in range(30):
        batch = [agent.run_episode(env, policy, gen) for _ in range(5)]
        rewards = torch.tensor([b.reward for b in batch])
        agent.reinforce_update(policy, optimizer, batch, baseline.values(rewards), shared_advantage=shared)
        baseline.observe(float(rewards.mean()))
    after = p_good()
    assert after > before + 0.2, (before, after)


def test_per_rollout_advantage_separates_good_and_bad_rollouts():
    """With R_i - b the gradient favours the better rollout of a batch even when the batch
    mean equals the baseline; the official code's shared advantage gives no signal then."""
    torch.manual_seed(0)
    env = ToyEnv(num_layers=1, num_actions=2, good=1)
    gen = torch.Generator().manual_seed(3)
    policy = agent.RemovalPolicy(NUM_FEATURES, 2)
    batch = []
    while {b.reward for b in batch} != {0.0, 1.0}:
        batch = [agent.run_episode(env, policy, gen) for _ in range(6)]
    good = [b for b in batch if b.reward == 1.0][:1]
    bad = [b for b in batch if b.reward == 0.0][:1]
    for shared, expect_change in ((False, True), (True, False)):
        p = agent.RemovalPolicy(NUM_FEATURES, 2)
        p.load_state_dict(policy.state_dict())
        opt = torch.optim.SGD(p.parameters(), lr=1.0)
        before = {n: t.clone() for n, t in p.state_dict().items()}
        agent.reinforce_update(p, opt, good + bad, baseline=0.5, shared_advantage=shared)
        changed = any(not torch.equal(before[n], t) for n, t in p.state_dict().items())
        assert changed == expect_change


def test_baseline_is_the_mean_of_earlier_batch_means():
    b = agent.Baseline("mean")
    assert b.value == 0.0
    for m in (0.2, 0.4, 0.9):
        b.observe(m)
    assert b.value == pytest.approx(0.5)
    e = agent.Baseline("ema", decay=0.5)
    e.observe(1.0)
    e.observe(0.0)
    assert e.value == pytest.approx(0.5)


def test_leave_one_out_baseline_is_the_mean_of_the_other_rollouts():
    b = agent.Baseline("loo")
    rewards = torch.tensor([0.0, 1.0, 2.0, 5.0])
    assert b.values(rewards).tolist() == pytest.approx([8 / 3, 7 / 3, 2.0, 1.0])
    b.observe(3.0)  # no state: earlier batches do not matter
    assert b.values(rewards).tolist() == pytest.approx([8 / 3, 7 / 3, 2.0, 1.0])
    assert b.values(torch.tensor([0.7])).tolist() == [0.0]
    assert agent.Baseline("mean").values(rewards).tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="baseline must be one of"):
        agent.Baseline("median")


# ---------------------------------------------------------------------------- the search
def _args(**kw):
    base = dict(env_id="AgentTestToy-v0", env_kwargs={"num_layers": 3, "num_actions": 2}, stages="remove,shrink",
                updates="3,4", rollouts=3, seed=5, progress=False)
    base.update(kw)
    return agent.Args(**base)


def test_search_history_and_two_stages():
    search = agent.N2N(_args(explore_tries=0))  # the paper's updates: repeats are rollouts too
    history = search.run()
    assert len(history) == search.total_evaluations == (3 + 4) * 3
    assert [r["evaluation"] for r in history] == list(range(len(history)))
    assert [r["stage"] for r in history] == ["remove"] * 9 + ["shrink"] * 12
    assert {(r["stage_index"], r["update"], r["rollout"]) for r in history} == {
        (s, u, i) for s, n in enumerate((3, 4)) for u in range(n) for i in range(3)}
    assert "layer_masks" not in history[0] and "actions" in history[0]
    assert search.best["reward"] == max(r["reward"] for r in history)
    assert set(search.policies) == {"remove", "shrink"}
    assert isinstance(search.policies["remove"], agent.RemovalPolicy)
    assert isinstance(search.policies["shrink"], agent.ShrinkPolicy)


def test_search_resumes_exactly_from_a_saved_state(tmp_path):
    reference = agent.N2N(_args()).run()
    states = []

    def save(s):  # as the CLI does: to a file, at once (state_dict holds live tensors)
        path = tmp_path / f"state{len(states)}.pt"
        torch.save(s.state_dict(), path)
        states.append((s.evaluations, path))

    agent.N2N(_args(), on_update=save).run()
    evaluations, path = states[4]  # after the first update of stage 2
    resumed = agent.N2N(_args())
    resumed.load_state_dict(torch.load(path, weights_only=False), history=reference[:evaluations])
    history = resumed.run()
    strip = [{k: r[k] for k in ("stage", "update", "rollout", "actions", "reward")} for r in history]
    assert strip == [{k: r[k] for k in ("stage", "update", "rollout", "actions", "reward")} for r in reference]


def test_policies_transfer_between_layer_counts(tmp_path):
    small = agent.N2N(_args(env_kwargs={"num_layers": 3}))
    small.run()
    path = tmp_path / "policies.pt"
    agent.save_policies(small, path)
    large = agent.N2N(_args(env_kwargs={"num_layers": 11}, load_policy=str(path)))
    large.run()
    for stage in ("remove", "shrink"):
        for (n, a), b in zip(small.policies[stage].state_dict().items(), agent.load_policies(path)[stage]["state_dict"].values()):
            torch.testing.assert_close(a, b)
    assert len(large.history[0]["actions"]) == 11


def test_random_search_has_no_policy():
    search = agent.N2N(_args(random_search=True, explore_tries=0))
    history = search.run()
    assert not search.policies and len(history) == 21


def test_script_help():

    from conftest import subprocess_env

    out = subprocess.run([sys.executable, "-m", "n2n_gym.agents.n2n", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env=subprocess_env(PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert out.returncode == 0
    assert "--rollouts" in out.stdout and "--lr-shrink" in out.stdout


# ---------------------------------------------------------------------------- no spinning on cached students
class CachingToyEnv(ToyEnv):
    """The toy env with the real env's cache semantics: a student (action list) seen
    before comes back with ``info["cached"] = True`` (free, not a new evaluation)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen: set[tuple] = set()

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if terminated:
            key = tuple(info["actions"])
            info["cached"] = key in self.seen
            self.seen.add(key)
        return obs, reward, terminated, truncated, info


gym.register("AgentTestCachingToy-v0", entry_point=CachingToyEnv)


def _new(history):
    return [r for r in history if not r.get("cached")]


@pytest.mark.parametrize("random_search", [False, True])
def test_every_update_gets_its_new_students_when_the_space_is_large(random_search):
    # 2^8 students: every update of 3 rollouts must add 3 students the env had not evaluated,
    # however often the policy repeats itself (lr 1.0 collapses it fast)
    search = agent.N2N(_args(env_id="AgentTestCachingToy-v0", env_kwargs={"num_layers": 8, "num_actions": 2},
                             stages="shrink", updates="12", rollouts=3, lr_shrink=1.0, random_search=random_search))
    history = search.run()
    assert len(_new(history)) == 12 * 3 and not search.exhausted
    assert len({tuple(r["actions"]) for r in _new(history)}) == 36


def test_an_exhausted_stage_ends_and_says_why():
    # 2 layers x 2 actions = 4 students; 50 updates x 3 rollouts cannot be spent on new ones
    search = agent.N2N(_args(env_id="AgentTestCachingToy-v0", env_kwargs={"num_layers": 2, "num_actions": 2},
                             stages="remove,shrink", updates="50", rollouts=3, explore_tries=20))
    history = search.run()
    for stage in ("remove", "shrink"):
        rows = [r for r in history if r["stage"] == stage]
        assert len(_new(rows)) == 4, stage  # every student, once
        assert "exhausted" in search.exhausted[stage]
        assert len(rows) < 3 * 4 + 20 * 4  # stopped: no spinning through 50 updates of free episodes
    assert {r["proposal"] for r in history} <= {"policy", "resample", "uniform"}


def test_the_search_does_not_depend_on_what_the_env_cache_holds():
    # the same search on an env that reports cache hits and on one that never does
    kw = dict(env_kwargs={"num_layers": 3, "num_actions": 2}, stages="shrink", updates="6", rollouts=3, lr_shrink=1.0)
    plain = agent.N2N(_args(env_id="AgentTestToy-v0", **kw)).run()
    caching = agent.N2N(_args(env_id="AgentTestCachingToy-v0", **kw)).run()
    assert [r["actions"] for r in plain] == [r["actions"] for r in caching]


def test_agent_scripts_report_bad_settings_as_usage_errors(capsys):
    from n2n_gym.agents import n2n, tas

    for parse, argv, message in ((n2n.parse_args, ["--rollouts", "0"], "rollouts must be >= 1"),
                                 (n2n.parse_args, ["--baseline", "median"], "baseline must be one of"),
                                 (tas.parse_args, ["--flops-ratio", "1.5"], "flops_ratio must be <= 1"),
                                 (tas.parse_args, ["--tau-max", "0.01"], "tau_max must be >= 0.1")):
        with pytest.raises(SystemExit) as exc:
            parse(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
