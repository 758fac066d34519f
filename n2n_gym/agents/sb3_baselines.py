"""Stable-Baselines3 baselines: PPO, A2C, DQN, MaskablePPO and RecurrentPPO.

Each talks to the env through the plain Gymnasium API (SB3 wraps it in its ``Monitor``
and a ``DummyVecEnv``) and runs on any registered env and stage::

    from n2n_gym.agents.sb3_baselines import run
    result = run("maskable_ppo", "N2N-DigitsNet-Digits-v0", seed=0, budget=20,
                 env_kwargs={"protocol": "tiny", "stage": "joint"})

``hparams={"n_envs": 2}`` steps two envs in SB3's ``SubprocVecEnv`` (one process each), so
their students train at the same time; they share the run's result cache, whose claims
keep two envs from training the same student, and the budget is counted in this process.

``run`` stops learning once ``budget`` student evaluations that were not cache hits
have been made (a callback returns False; see ``benchmarks.records.BudgetTracker``), or
after ``max_episodes`` episodes. ``stable-baselines3`` and ``sb3-contrib`` are the
optional extra ``n2n-gym[sb3]``.

Defaults for short, sparse-reward episodes with an expensive last step
----------------------------------------------------------------------
An N2N episode has one step per layer (``L``: 9 on the embedded digits env, 19 on VGG-13);
every intermediate reward is 0 and the last step trains and scores a student (the only
costly step: 0.3 s to minutes). Budgets are tens to hundreds of episodes, not millions
of steps, so SB3's Atari/MuJoCo defaults do not fit. Choices, per algorithm:

- ``gamma = 1``: episodes are finite, all of length ``L``, and the only reward is the
  student's score at the end; discounting would just weaken the signal reaching the
  first layers' decisions (0.99^18 = 0.83 on VGG-13) without any benefit.
- ``gae_lambda = 1`` (PPO family, A2C): Monte-Carlo returns; a value function trained on
  a few dozen episodes is too poor to bootstrap from (it is still a baseline).
- rollouts aligned to whole episodes: ``n_steps = episodes_per_rollout * L`` (PPO family:
  4 episodes per update, like N2N's 5 rollouts per update; A2C: 1 episode per update,
  i.e. REINFORCE with a learned baseline), so every update sees complete episodes and
  its terminal rewards;
- PPO: one minibatch per rollout (``batch_size = n_steps``), ``n_epochs = 4`` (the default
  10 overfits a 4-episode batch), ``learning_rate = 1e-3`` (only tens of updates happen),
  ``ent_coef = 0.01`` (keeps exploring when a few rewards dominate);
- A2C: ``learning_rate = 1e-3``, ``ent_coef = 0.01``;
- DQN: ``learning_starts = 4 * L`` (4 random episodes), ``train_freq = (1, "episode")``
  with ``gradient_steps = L`` (one gradient step per collected step, after each episode,
  when the new reward is in the buffer), small buffer (10k) and
  ``target_update_interval = 4 * L`` (every 4 episodes), epsilon from 1 to 0.05 over the
  first ``explore_evaluations`` episodes (default: half the budget), since SB3's
  ``exploration_fraction`` is a fraction of ``total_timesteps``, which a budget in
  evaluations does not fix (learn() gets an upper bound, ``max_episodes * L``);
- MaskablePPO: the PPO settings; it reads ``action_masks()`` from the env (found through
  the wrappers by SB3's ``env_method``), so it never proposes a forbidden action;
- RecurrentPPO: the PPO settings with ``MlpLstmPolicy`` (LSTM hidden 64): the only
  SB3 policy with a memory of its earlier decisions (the observation shows them too);
- DQN, PPO, A2C and RecurrentPPO ignore masks: the env turns a forbidden action into
  "keep at full width" (``illegal_action="noop"``);
- small networks (``net_arch = [64, 64]``), on the CPU (``device="cpu"``: the policies are
  tiny; the env trains students on its own device).

Any of these can be overridden with ``hparams`` (keys of :func:`default_hparams`; other
keys go to the SB3 constructor unchanged).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import tempfile
from typing import Any

import gymnasium as gym

import n2n_gym  # noqa: F401  (registers the environments)
from n2n_gym.envs.wrappers import (
    BudgetTracker,
    BudgetWrapper,
    private_cache,
    replay_kwargs_of,
)

ALGOS = ("ppo", "a2c", "dqn", "maskable_ppo", "recurrent_ppo")

#: keys of default_hparams that are ours, not SB3 constructor arguments
_OWN_KEYS = ("episodes_per_rollout", "explore_evaluations", "net_arch", "lstm_hidden_size", "n_envs")


def default_hparams(algo: str, episode_length: int, budget: int) -> dict[str, Any]:
    """The defaults of ``algo`` for episodes of ``episode_length`` steps and a budget of
    ``budget`` evaluations (see the module docstring for the reasons)."""
    L = int(episode_length)
    if algo in ("ppo", "maskable_ppo", "recurrent_ppo"):
        k = 4
        hp = {"n_envs": 1, "episodes_per_rollout": k, "n_steps": k * L, "batch_size": k * L, "n_epochs": 4,
              "learning_rate": 1e-3, "gamma": 1.0, "gae_lambda": 1.0, "ent_coef": 0.01, "clip_range": 0.2,
              "normalize_advantage": True, "net_arch": [64, 64]}
        if algo == "recurrent_ppo":
            hp.update(net_arch=[64], lstm_hidden_size=64)
        return hp
    if algo == "a2c":
        return {"n_envs": 1, "episodes_per_rollout": 1, "n_steps": L, "learning_rate": 1e-3, "gamma": 1.0, "gae_lambda": 1.0,
                "ent_coef": 0.01, "normalize_advantage": False, "net_arch": [64, 64]}
    if algo == "dqn":
        return {"n_envs": 1, "learning_rate": 1e-3, "buffer_size": 10_000, "learning_starts": 4 * L, "batch_size": 32,
                "gamma": 1.0, "tau": 1.0, "train_freq": [1, "episode"], "gradient_steps": L,
                "target_update_interval": 4 * L, "exploration_initial_eps": 1.0, "exploration_final_eps": 0.05,
                "explore_evaluations": max(budget // 2, 1), "net_arch": [64, 64]}
    raise ValueError(f"unknown algorithm {algo!r}; choose one of {ALGOS}")


def tensorboard_available() -> bool:
    """W&B's SB3 integration syncs SB3's TensorBoard logs, which needs ``tensorboard``."""
    return importlib.util.find_spec("tensorboard") is not None


def _algo_class(algo: str):
    if algo == "ppo":
        from stable_baselines3 import PPO

        return PPO, "MlpPolicy"
    if algo == "a2c":
        from stable_baselines3 import A2C

        return A2C, "MlpPolicy"
    if algo == "dqn":
        from stable_baselines3 import DQN

        return DQN, "MlpPolicy"
    if algo == "maskable_ppo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO, "MlpPolicy"
    if algo == "recurrent_ppo":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO, "MlpLstmPolicy"
    raise ValueError(f"unknown algorithm {algo!r}; choose one of {ALGOS}")


def _stop_callback(tracker: BudgetTracker):
    from stable_baselines3.common.callbacks import BaseCallback

    class StopOnBudget(BaseCallback):
        """Stops ``learn()`` right after the step that spends the budget."""

        def _on_step(self) -> bool:
            return not tracker.exhausted

    return StopOnBudget()


def _wandb_logger(wandb_run):
    """An SB3 logger whose every dump goes to ``wandb_run.log`` (used when tensorboard,
    which W&B's SB3 integration syncs, is not installed)."""
    from stable_baselines3.common.logger import KVWriter, Logger

    class WandbWriter(KVWriter):
        def write(self, key_values, key_excluded, step=0):
            data = {f"sb3/{k}": v for k, v in key_values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if data:
                wandb_run.log({**data, "sb3/timesteps": step})

        def close(self):
            pass

    return Logger(folder=None, output_formats=[WandbWriter()])


def _check_n_envs(n_envs) -> int:
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise ValueError(f"n_envs must be an integer >= 1 (envs stepped in parallel processes), got {n_envs!r}")
    return n_envs


def _make_worker_env(env_id: str, kwargs: dict, threads: int) -> gym.Env:
    """One env of a SubprocVecEnv (runs in the worker process; a module-level function so
    that it pickles for forkserver/spawn)."""
    import torch
    from stable_baselines3.common.monitor import Monitor

    torch.set_num_threads(threads)  # the parent's setting (the runner's --threads), not torch's default
    return _ReplayKwargs(Monitor(gym.make(env_id, **kwargs)))


class _ReplayKwargs(gym.Wrapper):
    """Lets the parent process ask a worker env what replays its episodes."""

    def replay_kwargs(self) -> dict:
        return replay_kwargs_of(self.env)

    def action_masks(self):
        return self.env.unwrapped.action_masks()


def _budget_vec_env(env_id: str, kwargs: dict, n_envs: int, tracker: BudgetTracker):
    """``n_envs`` envs in SB3's ``SubprocVecEnv`` (one process each, so their students
    train at the same time; they share the run's cache, whose claims stop two of them
    training the same student), with every step and terminal info counted by ``tracker``
    in this process, as :class:`~n2n_gym.envs.wrappers.BudgetWrapper` does for one env.

    All N2N episodes of an env have the same length, so the envs reach their terminal
    (training) step together. A vector step can spend up to ``n_envs - 1`` evaluations
    beyond the budget; they are counted."""
    import torch
    from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnvWrapper

    if kwargs.get("backend", "inline") != "inline":
        raise ValueError(f"n_envs={n_envs} already trains each env's students in its own process; "
                         f"backend={kwargs['backend']!r} would start processes inside them: use n_envs with the "
                         "default backend='inline', or n_envs=1 with backend='process' / 'ray'")
    factory = functools.partial(_make_worker_env, env_id, kwargs, torch.get_num_threads())
    try:
        venv = SubprocVecEnv([factory] * n_envs)
    except (EOFError, ConnectionError) as exc:
        raise RuntimeError(
            f"the {n_envs} env worker processes died while starting ({type(exc).__name__}). From a script, "
            "guard the code that runs the agent with `if __name__ == \"__main__\":` (SubprocVecEnv's "
            "forkserver/spawn workers import the script again); the workers' own error is printed above"
        ) from exc
    tracker.parallel = n_envs
    replay = venv.env_method("replay_kwargs")
    tracker.device = tracker.device or str(venv.get_attr("device")[0] or "cpu")

    class VecBudget(VecEnvWrapper):
        def reset(self):
            return self.venv.reset()

        def step_wait(self):
            try:
                obs, rewards, dones, infos = self.venv.step_wait()
            except (EOFError, ConnectionError) as exc:
                raise RuntimeError(f"an env worker process of SubprocVecEnv died ({type(exc).__name__}); "
                                   "the run stops (its students so far are in the cache)") from exc
            ended = []
            for i, (done, info) in enumerate(zip(dones, infos)):
                tracker.step()
                if done and "valid" in info:
                    ended.append(i)
            # new evaluations first: an env that waited on another's claim for the same student
            # gets that result as a cache hit, which must not count before the evaluation itself
            for i in sorted(ended, key=lambda i: bool(infos[i].get("cached"))):
                tracker.observe(infos[i], replay[i])
            return obs, rewards, dones, infos

    return VecBudget(venv)


def build_model(algo: str, env: gym.Env, seed: int, hparams: dict, *, budget: int, max_episodes: int,
                tensorboard_log: str | None = None):
    """The SB3 model of ``algo`` on ``env`` with ``hparams`` (complete, from default_hparams)."""
    cls, policy = _algo_class(algo)
    L = env.get_attr("num_layers")[0] if hasattr(env, "num_envs") else env.unwrapped.num_layers
    kwargs = {k: v for k, v in hparams.items() if k not in _OWN_KEYS}
    policy_kwargs = dict(kwargs.pop("policy_kwargs", None) or {})
    policy_kwargs.setdefault("net_arch", list(hparams["net_arch"]))
    if algo == "recurrent_ppo":
        policy_kwargs.setdefault("lstm_hidden_size", hparams["lstm_hidden_size"])
    if algo == "dqn":
        total = max_episodes * L
        explore = hparams["explore_evaluations"] * L
        kwargs["exploration_fraction"] = min(1.0, explore / max(total, 1))
        kwargs["train_freq"] = tuple(kwargs["train_freq"]) if isinstance(kwargs["train_freq"], list) else kwargs["train_freq"]
    return cls(policy, env, seed=seed, device="cpu", verbose=0, policy_kwargs=policy_kwargs,
               tensorboard_log=tensorboard_log, **kwargs)


def run(algo: str, env_id: str, seed: int, budget: int, env_kwargs: dict | None = None, hparams: dict | None = None,
        *, tracker: BudgetTracker | None = None, wandb_run: Any = None) -> dict:
    """Train ``algo`` on ``gym.make(env_id, **env_kwargs)`` until the budget is spent.

    Returns ``{"hparams", "tracker", "extra"}``. With ``wandb_run``, SB3's metrics go to
    W&B through ``wandb.integration.sb3.WandbCallback`` and SB3's TensorBoard logs (synced by
    ``wandb.init(sync_tensorboard=True)``), or, without tensorboard, through an SB3 logger
    that calls ``wandb_run.log``."""
    tracker = tracker or BudgetTracker(budget)
    with private_cache(env_kwargs) as kwargs, tempfile.TemporaryDirectory(prefix="n2n-sb3-") as tmp:
        env = BudgetWrapper(gym.make(env_id, **kwargs), tracker)
        try:
            L = env.unwrapped.num_layers
            hp = {**default_hparams(algo, L, budget), **(hparams or {})}
            n_envs = _check_n_envs(hp["n_envs"])
            if "n_steps" in hp and "n_steps" not in (hparams or {}):
                # SB3's n_steps is per env: an update still sees about episodes_per_rollout whole episodes
                hp["n_steps"] = math.ceil(hp["episodes_per_rollout"] / n_envs) * L
                if "batch_size" in hp and algo != "a2c" and "batch_size" not in (hparams or {}):
                    hp["batch_size"] = hp["n_steps"] * n_envs  # one minibatch per rollout
            freq = hp.get("train_freq")
            if algo == "dqn" and n_envs > 1 and isinstance(freq, (list, tuple)) and str(freq[-1]).startswith("episode"):
                # SB3 trains per episode with one env only; an episode is L vector steps of all n_envs
                # envs, so (k * L, "step") trains at the same points, on L * n_envs new transitions
                if "train_freq" in (hparams or {}):
                    raise ValueError(f"dqn with n_envs={n_envs}: SB3 cannot train per episode with several envs; "
                                     f"give train_freq in steps, e.g. [{L}, \"step\"] (one episode is {L} steps)")
                hp["train_freq"] = [int(freq[0]) * L, "step"]
                if "gradient_steps" not in (hparams or {}):
                    hp["gradient_steps"] = L * n_envs
            if n_envs > 1:
                env.close()
                env = _budget_vec_env(env_id, kwargs, n_envs, tracker)
            callbacks = [_stop_callback(tracker)]
            tb_log, logging = None, "none"
            if wandb_run is not None:
                from wandb.integration.sb3 import WandbCallback

                if tensorboard_available():
                    tb_log, logging = os.path.join(getattr(wandb_run, "dir", None) or tmp, "sb3-tb"), "tensorboard"
                else:
                    logging = "wandb-logger"
                callbacks.append(WandbCallback(verbose=0))
            model = build_model(algo, env, seed, hp, budget=budget, max_episodes=tracker.max_episodes,
                                tensorboard_log=tb_log)
            if logging == "wandb-logger":
                model.set_logger(_wandb_logger(wandb_run))
            elif logging == "none":
                # SB3's default logger makes an empty SB3-<timestamp> folder in the temp dir
                # on every learn(); a logger with no outputs writes nothing
                from stable_baselines3.common.logger import Logger

                model.set_logger(Logger(folder=None, output_formats=[]))
            if n_envs == 1:
                env.reset(seed=seed)  # a VecEnv is seeded (seed + i) and reset by learn()
            model.learn(total_timesteps=(tracker.max_episodes + 1) * L, callback=callbacks, progress_bar=False)
        finally:
            env.close()
    import stable_baselines3

    extra = {"sb3_version": stable_baselines3.__version__, "policy": _algo_class(algo)[1], "sb3_logging": logging}
    if algo in ("maskable_ppo", "recurrent_ppo"):
        import sb3_contrib

        extra["sb3_contrib_version"] = sb3_contrib.__version__
    return {"hparams": hp, "tracker": tracker, "extra": extra}


def run_ppo(env_id, seed, budget, env_kwargs=None, hparams=None, **kw):
    return run("ppo", env_id, seed, budget, env_kwargs, hparams, **kw)


def run_a2c(env_id, seed, budget, env_kwargs=None, hparams=None, **kw):
    return run("a2c", env_id, seed, budget, env_kwargs, hparams, **kw)


def run_dqn(env_id, seed, budget, env_kwargs=None, hparams=None, **kw):
    return run("dqn", env_id, seed, budget, env_kwargs, hparams, **kw)


def run_maskable_ppo(env_id, seed, budget, env_kwargs=None, hparams=None, **kw):
    return run("maskable_ppo", env_id, seed, budget, env_kwargs, hparams, **kw)


def run_recurrent_ppo(env_id, seed, budget, env_kwargs=None, hparams=None, **kw):
    return run("recurrent_ppo", env_id, seed, budget, env_kwargs, hparams, **kw)
