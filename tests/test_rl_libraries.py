"""Each RL library's own idiom, unchanged, on the embedded env (protocol "tiny", the session's
small digits teacher), with the library's real code at a tiny budget.

``ROWS`` names the test of every row of the README's compatibility matrix; the matrix is
written by ``python tests/compat_matrix.py`` from a run of these tests (versions and
outcomes), and ``test_compat_matrix_in_readme_is_current`` fails when the README's block
differs from what the recorded run renders, or names other tests than ``ROWS``.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from conftest import SMALL_DIGITS_RECIPE, subprocess_env

import n2n_gym
from n2n_gym.envs.adapters import DictKeys, NumpyInfo

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV_ID = n2n_gym.DEFAULT_ENV_ID
SPAWN_ID = f"n2n_gym:{ENV_ID}"  # a spawned worker imports n2n_gym (and so registers the ids) from the id
TINY = {"protocol": "tiny", "teacher_recipe": dict(SMALL_DIGITS_RECIPE), "progress": False, "device": "cpu"}

#: library -> (PyPI distributions whose versions the matrix shows, the idiom, the tests)
ROWS: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "Stable-Baselines3": (
        ("stable-baselines3",),
        '`make_vec_env(ID, n_envs=2, env_kwargs={"observation": "flat", ...})` + `PPO("MlpPolicy", ...)`; '
        '`SubprocVecEnv`: id `"n2n_gym:ID"`',
        ("test_sb3_make_vec_env[dummy]", "test_sb3_make_vec_env[subproc]")),
    "sb3-contrib": (
        ("sb3-contrib",),
        "`ActionMasker(gym.make(ID), lambda env: env.action_masks())` + `MaskablePPO`; under other wrappers "
        '(`make_vec_env(ID, wrapper_class=ActionMasker, ...)`): `lambda env: env.get_wrapper_attr("action_masks")()`',
        ("test_sb3_contrib_action_masker_maskable_ppo", "test_sb3_contrib_make_vec_env_action_masker")),
    "RL Zoo": (
        ("rl_zoo3",),
        "`python -m rl_zoo3.train --algo ppo --env ID --gym-packages n2n_gym --conf-file n2n.yml "
        "--env-kwargs observation:\"'flat'\"`, then `python -m rl_zoo3.enjoy` (renders: `human` is warned about)",
        ("test_rl_zoo_train_and_enjoy",)),
    "TorchRL": (
        ("torchrl", "tensordict"),
        '`GymEnv(ID, observation="dict", categorical_action_encoding=True)` + `ActionMask()`, '
        "`MaskedCategorical` PPO (`ClipPPOLoss`, `GAE`, `Collector`) over `ParallelEnv`; info: "
        "`GymWrapper(NumpyInfo(gym.make(ID)))` + `set_info_dict_reader(default_info_dict_reader([...]))`",
        ("test_torchrl_masked_ppo_parallel_env", "test_torchrl_info_dict_reader")),
    "Tianshou": (
        ("tianshou",),
        '`DictKeys(gym.make(ID, observation="dict"), observation="obs", action_mask="mask")`; '
        "DQN (masks read from `obs.mask`) and PPO (an actor that masks its logits) with the trainer",
        ("test_tianshou_dqn_masked", "test_tianshou_ppo_masked")),
    "RLlib": (
        ("ray",),
        'PPO, new API stack, remote env runners: `.environment("n2n_gym:ID", env_config={"observation": "flat", ...})`; '
        'masked: `DictKeys(..., observation="observations")` + `ActionMaskingTorchRLModule`',
        ("test_rllib_ppo[plain]", "test_rllib_ppo[masked]")),
}


def _allowed(mask) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


# ---- Stable-Baselines3 -------------------------------------------------------------------
@pytest.mark.parametrize("vec_env", ["dummy", "subproc"])
def test_sb3_make_vec_env(digits_teacher, vec_env, monkeypatch):
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    kwargs = {**TINY, "observation": "flat"}
    # SB3 passes render_mode="rgb_array" (and retries without it only on TypeError): warned, not refused
    if vec_env == "dummy":
        with pytest.warns(UserWarning, match="render_mode='rgb_array' is not supported"):
            venv = make_vec_env(ENV_ID, n_envs=2, env_kwargs=kwargs)
    else:  # (the warning is the workers')
        venv = make_vec_env(SPAWN_ID, n_envs=2, env_kwargs=kwargs, vec_env_cls=SubprocVecEnv)
    try:
        assert isinstance(venv, {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}[vec_env])
        model = PPO("MlpPolicy", venv, n_steps=9, batch_size=18, n_epochs=1, gamma=1.0, seed=0, device="cpu")
        model.learn(18)  # one rollout: one 9-layer episode per env
        assert model.num_timesteps == 18
        returns = [r for rewards in venv.env_method("get_episode_rewards") for r in rewards]  # SB3's Monitor
        assert len(returns) == 2 and all(-1 <= r <= 1 and r != 0 for r in returns)
        assert venv.env_method("action_masks")[0].dtype == bool  # what MaskablePPO calls, through Monitor
    finally:
        venv.close()


# ---- sb3-contrib -------------------------------------------------------------------------
def test_sb3_contrib_action_masker_maskable_ppo(digits_teacher):
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.wrappers import ActionMasker

    env = gym.make(ENV_ID, observation="flat", **TINY)
    env = ActionMasker(env, lambda env: env.action_masks())  # sb3-contrib's documented idiom
    model = MaskablePPO("MlpPolicy", env, n_steps=18, batch_size=18, n_epochs=1, gamma=1.0, seed=0, device="cpu")
    model.learn(18)
    assert model.num_timesteps == 18
    obs, info = env.reset(seed=0)
    done = False
    while not done:
        mask = env.action_masks()
        assert mask.dtype == bool and np.array_equal(mask, info["action_mask"])
        action, _ = model.predict(obs, action_masks=mask)
        assert mask[action]
        obs, reward, done, _, info = env.step(action)
    assert not any(info["illegal_layers"]) and -1 <= reward <= 1
    env.close()


def test_sb3_contrib_make_vec_env_action_masker(digits_teacher, monkeypatch):
    """make_vec_env puts SB3's Monitor between gym.make's wrappers and ActionMasker, and
    Gymnasium 1.x wrappers forward no attributes: the mask function asks the wrapper stack."""
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.wrappers import ActionMasker
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.monitor import Monitor

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.warns(UserWarning, match="render_mode='rgb_array' is not supported"):
        venv = make_vec_env(ENV_ID, n_envs=2, env_kwargs={**TINY, "observation": "flat"},
                            wrapper_class=ActionMasker,
                            wrapper_kwargs={"action_mask_fn": lambda env: env.get_wrapper_attr("action_masks")()})
    try:
        assert isinstance(venv.envs[0].env, Monitor)  # the wrapper that hides env.action_masks()
        model = MaskablePPO("MlpPolicy", venv, n_steps=9, batch_size=9, n_epochs=1, gamma=1.0, seed=0,
                            device="cpu")
        model.learn(18)
        assert model.num_timesteps == 18
        masks = np.stack(venv.env_method("action_masks"))  # ActionMasker's, through the mask function
        assert masks.dtype == bool and masks.shape == (2, venv.action_space.n) and masks.any(axis=1).all()
    finally:
        venv.close()
    # FlattenObservation (any gymnasium wrapper) around gym.make: the same, or env.unwrapped
    env = ActionMasker(gym.wrappers.FlattenObservation(gym.make(ENV_ID, **TINY)),
                       lambda env: env.unwrapped.action_masks())
    _, info = env.reset(seed=0)
    assert np.array_equal(env.action_masks(), info["action_mask"])
    env.close()


# ---- RL Zoo ------------------------------------------------------------------------------
def test_rl_zoo_train_and_enjoy(digits_teacher, n2n_cache_dir, tmp_path):
    conf = tmp_path / "n2n.yml"
    conf.write_text(f"{ENV_ID}:\n  policy: 'MlpPolicy'\n  n_timesteps: 18\n  n_steps: 9\n  batch_size: 9\n"
                    "  n_epochs: 1\n  gamma: 1.0\n")
    env_kwargs = ["observation:'flat'", "protocol:'tiny'", "progress:False", "device:'cpu'",
                  f"teacher_recipe:{SMALL_DIGITS_RECIPE!r}".replace(" ", "")]
    common = ["--algo", "ppo", "--env", ENV_ID, "--gym-packages", "n2n_gym", "-f", str(tmp_path / "logs"),
              "--seed", "0", "--device", "cpu"]
    run_env = subprocess_env(N2N_CACHE=str(n2n_cache_dir), TMPDIR=str(tmp_path))

    def zoo(script, *args):
        out = subprocess.run([sys.executable, "-m", f"rl_zoo3.{script}", *common, *args], env=run_env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out

    out = zoo("train", "--conf-file", str(conf), "--env-kwargs", *env_kwargs, "--eval-freq", "-1",
              "--n-eval-envs", "1", "--log-interval", "1")
    assert list((tmp_path / "logs" / "ppo").glob(f"{ENV_ID}_*/{ENV_ID}.zip")), out.stdout[-2000:]
    assert "total_timesteps" in out.stdout  # SB3's training log: the zoo really trained
    # enjoy as documented: it passes render_mode="human" and calls render("human") each step
    out = zoo("enjoy", "--env-kwargs", *env_kwargs, "-n", "9", "--exp-id", "1")
    assert "render_mode='human' is not supported" in out.stderr


# ---- TorchRL -----------------------------------------------------------------------------
def _torchrl_env():
    from torchrl.envs import GymEnv, TransformedEnv
    from torchrl.envs.transforms import ActionMask

    base = GymEnv(SPAWN_ID, observation="dict", categorical_action_encoding=True, **TINY)
    return TransformedEnv(base, ActionMask())


def test_torchrl_masked_ppo_parallel_env(digits_teacher, monkeypatch):
    """The TorchRL tutorial's masked PPO: MaskedCategorical actor, ClipPPOLoss, GAE and a
    collector, over a ParallelEnv of two processes."""
    import torch
    from tensordict.nn import TensorDictModule
    from torchrl.collectors import Collector
    from torchrl.envs import ParallelEnv
    from torchrl.modules import MLP, MaskedCategorical, ProbabilisticActor, ValueOperator
    from torchrl.objectives import ClipPPOLoss
    from torchrl.objectives.value import GAE

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.manual_seed(0)
    env = ParallelEnv(2, _torchrl_env)
    try:
        n_obs = env.observation_spec["observation"].shape[-1]
        n_act = env.action_spec.space.n
        assert env.observation_spec["action_mask"].dtype == torch.bool  # the env's Box of bool
        logits = TensorDictModule(MLP(in_features=n_obs, out_features=n_act, num_cells=[32]),
                                  in_keys=["observation"], out_keys=["logits"])
        actor = ProbabilisticActor(logits, in_keys={"logits": "logits", "mask": "action_mask"},
                                   distribution_class=MaskedCategorical, spec=env.action_spec,
                                   return_log_prob=True)
        value = ValueOperator(MLP(in_features=n_obs, out_features=1, num_cells=[32]), in_keys=["observation"])
        loss = ClipPPOLoss(actor, value)
        gae = GAE(gamma=1.0, lmbda=0.95, value_network=value)
        optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
        L = 9
        collector = Collector(env, actor, frames_per_batch=2 * L, total_frames=4 * L)
        updates = 0
        for data in collector:
            masks, actions = data["action_mask"], data["action"]
            assert masks.dtype == torch.bool and masks.gather(-1, actions.unsqueeze(-1)).all()
            assert data["next", "done"].sum() == 2  # one whole episode per env
            gae(data)
            losses = loss(data.reshape(-1))
            total = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
            optim.zero_grad()
            total.backward()
            optim.step()
            updates += 1
            rewards = data["next", "reward"][data["next", "done"]]
            assert ((rewards >= -1) & (rewards <= 1) & (rewards != 0)).all()
        collector.shutdown()
        assert updates == 2
    finally:
        if not env.is_closed:
            env.close()


def test_torchrl_info_dict_reader(digits_teacher):
    """TorchRL's info reader reads ``value.dtype``: NumpyInfo gives info's values as numpy,
    while the env's own info stays plain Python (json.dumps writes it)."""
    import torch
    from torchrl.envs import GymWrapper
    from torchrl.envs.libs.gym import default_info_dict_reader

    def env(keys=None):
        wrapped = GymWrapper(NumpyInfo(gym.make(ENV_ID, **TINY)), categorical_action_encoding=True)
        return wrapped.set_info_dict_reader(default_info_dict_reader(keys))

    keys = ["accuracy", "params", "valid", "actions", "illegal_layers"]
    data = env(keys).rollout(9)
    last = data["next"][-1]
    assert data["next", "done"][-1].all() and data["next", "done"].sum() == 1  # one whole episode
    assert last["accuracy"].dtype == torch.float64 and last["params"].dtype == torch.int64
    assert last["valid"].dtype == torch.bool and last["illegal_layers"].dtype == torch.bool
    assert last["actions"].shape == (data["next", "actions"].shape[-1],) and (last["actions"] >= 0).all()
    assert not last["valid"] or last["params"] > 0
    data = env().rollout(9)  # every key, the strings as non-tensor data
    assert json.loads(data["next", "architecture"][-1])["layers"]

    plain = gym.make(ENV_ID, **TINY)
    _, info = plain.reset(seed=0)
    while True:
        _, _, done, _, info = plain.step(_allowed(info["action_mask"]))
        if done:
            break
    json.dumps({k: v for k, v in info.items() if not isinstance(v, np.ndarray)})  # the env's own: plain Python
    plain.close()


# ---- Tianshou ----------------------------------------------------------------------------
def _tianshou_envs(n: int = 2):
    from tianshou.env import DummyVectorEnv

    def make():
        return DictKeys(gym.make(ENV_ID, observation="dict", **TINY), observation="obs", action_mask="mask")

    return DummyVectorEnv([make for _ in range(n)])


def _mlp(n_in, n_out):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(n_in, 32), torch.nn.ReLU(), torch.nn.Linear(32, n_out))


def _tianshou_sizes():
    env = gym.make(ENV_ID, observation="dict")
    return env.observation_space["observation"].shape[0], int(env.action_space.n)


def test_tianshou_dqn_masked(digits_teacher):
    import torch
    from tianshou.algorithm import DQN
    from tianshou.algorithm.modelfree.dqn import DiscreteQLearningPolicy
    from tianshou.algorithm.optim import AdamOptimizerFactory
    from tianshou.data import Collector, VectorReplayBuffer
    from tianshou.trainer import OffPolicyTrainerParams

    torch.manual_seed(0)
    n_in, n_act = _tianshou_sizes()

    class QNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _mlp(n_in, n_act)

        def forward(self, obs, state=None, info=None):  # DQN passes obs.obs and masks with obs.mask
            return self.net(torch.as_tensor(obs, dtype=torch.float32)), state

    envs = _tianshou_envs()
    policy = DiscreteQLearningPolicy(model=QNet(), action_space=envs.action_space[0], eps_training=0.5)
    algo = DQN(policy=policy, optim=AdamOptimizerFactory(lr=1e-3), gamma=1.0, target_update_freq=2)
    buffer = VectorReplayBuffer(64, len(envs))
    collector = Collector(policy, envs, buffer, exploration_noise=True)
    collector.reset()
    result = algo.run_training(OffPolicyTrainerParams(
        training_collector=collector, max_epochs=1, epoch_num_steps=36, collection_step_num_env_steps=18,
        batch_size=9, update_step_num_gradient_steps_per_sample=0.1, test_collector=None, show_progress=False,
        verbose=False))
    assert result.update_step > 0 and result.train_episode == 4
    stored = buffer.sample(0)[0]  # every transition
    assert not buffer.hasnull() and len(stored) == 36  # info stored whole, no None/NaN rows
    assert stored.obs.mask.dtype == bool
    assert stored.obs.mask[np.arange(len(stored)), stored.act].all(), "DQN took a masked action"
    done = stored.terminated
    assert done.sum() == 4 and (stored.info.architecture[done] != "").all()
    envs.close()


def test_tianshou_ppo_masked(digits_teacher):
    import torch
    from tianshou.algorithm import PPO
    from tianshou.algorithm.modelfree.reinforce import DiscreteActorPolicy
    from tianshou.algorithm.optim import AdamOptimizerFactory
    from tianshou.data import Collector, VectorReplayBuffer
    from tianshou.trainer import OnPolicyTrainerParams

    torch.manual_seed(0)
    n_in, n_act = _tianshou_sizes()

    class MaskedActor(torch.nn.Module):
        """Logits of disallowed actions set to -inf (PPO in Tianshou has no mask of its own)."""

        def __init__(self):
            super().__init__()
            self.net = _mlp(n_in, n_act)

        def forward(self, obs, state=None, info=None):
            logits = self.net(torch.as_tensor(obs.obs, dtype=torch.float32))
            return logits.masked_fill(~torch.as_tensor(obs.mask, dtype=torch.bool), float("-inf")), state

    class Critic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _mlp(n_in, 1)

        def forward(self, obs, state=None, info=None):
            return self.net(torch.as_tensor(obs.obs, dtype=torch.float32))

    envs = _tianshou_envs()
    policy = DiscreteActorPolicy(actor=MaskedActor(), action_space=envs.action_space[0])
    algo = PPO(policy=policy, critic=Critic(), optim=AdamOptimizerFactory(lr=1e-3), gamma=1.0)
    buffer = VectorReplayBuffer(64, len(envs))
    collector = Collector(policy, envs, buffer)
    collector.reset()
    result = algo.run_training(OnPolicyTrainerParams(
        training_collector=collector, max_epochs=1, epoch_num_steps=36, collection_step_num_env_steps=18,
        batch_size=9, update_step_num_repetitions=1, test_collector=None, show_progress=False, verbose=False))
    assert result.update_step > 0 and result.train_episode == 4
    assert not buffer.hasnull()
    envs.close()


# ---- RLlib -------------------------------------------------------------------------------
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
def test_rllib_ppo(digits_teacher, masked):
    """RLlib's PPO with a remote env runner (``num_env_runners=1``; RLlib's default is 2): the
    runner is a Ray worker process that has not imported n2n_gym, so the plain id is given as
    ``"n2n_gym:ID"`` (Gymnasium imports the module, which registers the ids), and the masked
    env's creator (``register_env``) builds it from code that imports n2n_gym."""
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import register_env

    config = (PPOConfig()
              .env_runners(num_env_runners=1)
              .learners(num_learners=0)
              .training(train_batch_size_per_learner=18, minibatch_size=9, num_epochs=1, gamma=1.0)
              .debugging(seed=0))
    if masked:
        from ray.rllib.examples.rl_modules.classes.action_masking_rlm import ActionMaskingTorchRLModule

        # a lambda is pickled by value for the worker (a function of this test module would be
        # pickled by reference, and the worker cannot import the tests)
        register_env("n2n-masked", lambda cfg: DictKeys(gym.make(SPAWN_ID, observation="dict", **cfg),
                                                        observation="observations"))
        config = (config.environment("n2n-masked", env_config=dict(TINY))
                  .rl_module(rl_module_spec=RLModuleSpec(module_class=ActionMaskingTorchRLModule,
                                                         model_config={"head_fcnet_hiddens": [32]})))
    else:
        config = config.environment(SPAWN_ID, env_config={**TINY, "observation": "flat"})
    # the worker inherits this process's environment: the session's N2N_CACHE (the small teacher)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        algo = config.build_algo()
        try:
            result = algo.train()
        finally:
            algo.stop()
    finally:
        ray.shutdown()
    runners = result["env_runners"]
    assert runners["num_env_steps_sampled_lifetime"] >= 18
    assert -1 <= runners["episode_return_mean"] <= 1


# ---- the README's matrix -----------------------------------------------------------------
def test_compat_matrix_in_readme_is_current():
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import compat_matrix
    finally:
        sys.path.pop(0)
    recorded = json.loads(compat_matrix.RESULTS.read_text())
    assert [r["library"] for r in recorded["rows"]] == list(ROWS), "run python tests/compat_matrix.py"
    for row in recorded["rows"]:
        assert tuple(row["tests"]) == ROWS[row["library"]][2], "run python tests/compat_matrix.py"
        assert row["idiom"] == ROWS[row["library"]][1], "run python tests/compat_matrix.py"
    assert compat_matrix.readme_block() == compat_matrix.render(recorded), "run python tests/compat_matrix.py"
