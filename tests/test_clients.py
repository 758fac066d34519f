"""Third-party RL clients plug in through the plain Gymnasium API, without glue of theirs.

Real clients at tiny budgets on the embedded env (protocol "tiny", the session's small
digits teacher): TorchRL's ``GymEnv`` with its ``ActionMask`` transform, an RL Zoo
training command, the project's CleanRL-style flat-MLP PPO script, Gymnasium's async
vector env under ``spawn``, pickling mid-episode, and ``BudgetWrapper`` around a plain
loop. Also: each observation mode passes Gymnasium's and SB3's env checkers, and unknown
keyword arguments fail in Python's own wording.
"""

from __future__ import annotations

import ast
import functools
import json
import pathlib
import pickle
import re
import subprocess
import sys
import tempfile

import gymnasium as gym
import numpy as np
import pytest
from conftest import SMALL_DIGITS_RECIPE, make_digits_env, subprocess_env
from gymnasium.utils.env_checker import check_env as gym_check_env

import n2n_gym
from n2n_gym.envs.wrappers import BudgetTracker, BudgetWrapper, private_cache
from n2n_gym.ir.encoding import NUM_FEATURES, OBSERVATIONS

REPO = pathlib.Path(__file__).resolve().parents[1]


ENV_ID = n2n_gym.DEFAULT_ENV_ID


TINY = {"protocol": "tiny", "teacher_recipe": dict(SMALL_DIGITS_RECIPE), "progress": False, "device": "cpu"}


def _allowed(mask) -> int:
    """The lowest allowed action (on stage joint: the smallest allowed width ratio)."""
    allowed = np.flatnonzero(np.asarray(mask))
    return int(allowed[0])


# ---- observation modes -------------------------------------------------------------
@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_observation_modes_pass_env_checkers(observation):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = make_digits_env(observation=observation)
    space, L = env.observation_space, len(env.unwrapped.teacher_architecture)
    expected = {"table": (L, NUM_FEATURES), "flat": (L * NUM_FEATURES,)}
    if observation == "dict":
        assert set(space.spaces) == {"observation", "action_mask"}
        assert space["observation"].shape == (L * NUM_FEATURES,)
        assert space["action_mask"].shape == (env.action_space.n,)
    else:
        assert space.shape == expected[observation]
    gym_check_env(env.unwrapped, skip_render_check=True)
    with pytest.warns() if observation == "table" else _no_warning_context():
        sb3_check_env(env.unwrapped)  # warns only about the 2-D table (a custom policy's business)
    env.close()


class _no_warning_context:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def test_observation_modes_carry_the_same_table_and_mask(digits_teacher):
    envs = {mode: make_digits_env(observation=mode) for mode in OBSERVATIONS}
    outs = {mode: env.reset(seed=0) for mode, env in envs.items()}
    for step in range(envs["table"].unwrapped.num_layers):
        table, info = outs["table"]
        assert np.array_equal(outs["flat"][0], table.reshape(-1))
        assert np.array_equal(outs["dict"][0]["observation"], table.reshape(-1))
        assert np.array_equal(outs["dict"][0]["action_mask"], info["action_mask"])
        assert outs["dict"][0]["action_mask"].dtype == bool  # one mask dtype: info, observation, method
        assert envs["dict"].observation_space.contains(outs["dict"][0])
        action = _allowed(info["action_mask"])
        outs = {mode: env.step(action) for mode, env in envs.items()}
        outs = {mode: (o[0], o[4]) for mode, o in outs.items()}
    for env in envs.values():
        env.close()


def test_observation_mode_is_checked():
    with pytest.raises(ValueError, match="observation must be one of"):
        gym.make(ENV_ID, observation="image")


# ---- keyword arguments ---------------------------------------------------------------
def test_unknown_kwarg_uses_pythons_wording_then_suggests():
    with pytest.raises(TypeError) as err:
        gym.make(ENV_ID, frameskip=1)
    assert "N2NEnv.__init__() got an unexpected keyword argument 'frameskip'" in str(err.value)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'observaton' \(did you mean 'observation'\?\)"):
        gym.make(ENV_ID, observaton="flat")


# ---- pickling ------------------------------------------------------------------------
def test_pickle_round_trip_at_every_point_of_an_episode(digits_teacher):
    env = make_digits_env(observation="dict")
    obs, info = env.reset(seed=0)
    # first episode: builds the evaluator (data, teacher, cache) and evaluates a student
    done = False
    while not done:
        obs, reward, done, _, info = env.step(_allowed(info["action_mask"]))
    first_reward = reward
    obs, info = env.reset(seed=1)
    actions = []
    for t in range(env.unwrapped.num_layers):
        clone = pickle.loads(pickle.dumps(env))  # mid-episode, after an uncached evaluation
        assert clone.unwrapped._t == t and clone.unwrapped._actions == actions
        action = _allowed(info["action_mask"])
        actions.append(action)
        out, out_clone = env.step(action), clone.step(action)
        assert np.array_equal(out[0]["observation"], out_clone[0]["observation"])
        assert out[1:4] == out_clone[1:4]
        obs, info = out[0], out[4]
        clone.close()
    assert out[2] and out[1] == first_reward  # same student as episode 1: same reward
    assert out_clone[4]["accuracy"] == out[4]["accuracy"]
    env.close()


def test_dataset_pickles(digits_data):
    import torch

    clone = pickle.loads(pickle.dumps(digits_data))
    x = digits_data.x_train[:4]
    torch.testing.assert_close(clone.normalize(x), digits_data.normalize(x))


# ---- Gymnasium vector envs -------------------------------------------------------------
def test_async_vector_env_spawn(digits_teacher, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # a spawned worker starts a fresh interpreter: "n2n_gym:<id>" makes gym.make import the
    # package (and so register the ids) there
    make = functools.partial(gym.make, f"n2n_gym:{ENV_ID}", observation="dict", **TINY)
    envs = gym.vector.AsyncVectorEnv([make, make], context="spawn")
    try:
        obs, _ = envs.reset(seed=0)
        L = gym.make(ENV_ID).unwrapped.num_layers  # cheap: make loads no data
        for t in range(L):
            masks = obs["action_mask"]
            assert masks.shape == (2, envs.single_action_space.n)
            actions = np.array([_allowed(m) for m in masks])
            obs, rewards, terminated, truncated, infos = envs.step(actions)
        assert terminated.all() and not truncated.any()
        assert rewards[0] == rewards[1] and -1 <= rewards[0] <= 1 and rewards[0] != 0
    finally:
        envs.close()


# ---- BudgetWrapper from a plain loop ----------------------------------------------------
def test_budget_wrapper_plain_loop(digits_teacher):
    tracker = BudgetTracker(budget=3)
    rng = np.random.default_rng(0)
    with private_cache(TINY) as kwargs:
        env = BudgetWrapper(gym.make(ENV_ID, observation="flat", **kwargs), tracker)
        while not tracker.exhausted:
            obs, info = env.reset()
            done = False
            while not done:
                action = rng.choice(np.flatnonzero(info["action_mask"]))
                obs, reward, done, truncated, info = env.step(action)
        env.close()
    assert tracker.evaluations == 3 and tracker.stop_reason == "budget"
    assert tracker.env_steps == tracker.episodes * env.unwrapped.num_layers
    assert len(tracker.curve) == 3 and tracker.best["reward"] == max(r[2] for r in tracker.rows)


# ---- the project's CleanRL-style flat-MLP PPO ------------------------------------------
def test_cleanrl_style_ppo_flat(digits_teacher, capsys):
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import ppo_flat
    finally:
        sys.path.pop(0)
    env_kwargs = {k: v for k, v in TINY.items() if k != "protocol"}
    out = ppo_flat.main(["--protocol", "tiny", "--total-episodes", "4", "--episodes-per-update", "2",
                         "--env-kwargs", json.dumps(env_kwargs)])
    assert out["episodes"] == 4 and len(out["rewards"]) == 4
    assert all(-1 <= r <= 1 for r in out["rewards"]) and out["best"]["reward"] == max(out["rewards"])
    assert "update 2/2" in capsys.readouterr().out


# ---- TorchRL ---------------------------------------------------------------------------
def test_torchrl_gymenv_masked_rollout(digits_teacher):
    import torch
    from torchrl.envs import GymEnv, TransformedEnv
    from torchrl.envs.transforms import ActionMask

    # GymEnv passes frameskip and drops it on Python's "unexpected keyword argument" wording
    base = GymEnv(ENV_ID, observation="dict", categorical_action_encoding=True, **TINY)
    env = TransformedEnv(base, ActionMask())
    L = base._env.unwrapped.num_layers
    torch.manual_seed(0)
    rollout = env.rollout(max_steps=L)  # random policy: samples the masked action spec
    assert rollout.batch_size == torch.Size([L])
    assert rollout["action_mask"].dtype == torch.bool  # what MaskedCategorical takes
    masks, actions = rollout["action_mask"].bool(), rollout["action"]
    assert masks.gather(-1, actions.long().unsqueeze(-1)).all(), "an action outside the mask was taken"
    assert not masks.all(), "the digits teacher has layers with forbidden actions"
    assert bool(rollout["next", "done"][-1]) and not rollout["next", "done"][:-1].any()
    reward = float(rollout["next", "reward"][-1])
    assert -1 <= reward <= 1 and reward != 0
    env.close()


# ---- RL Zoo ------------------------------------------------------------------------------
def test_rl_zoo_train_command(digits_teacher, n2n_cache_dir, tmp_path):
    conf = tmp_path / "n2n.yml"
    conf.write_text(
        f"{ENV_ID}:\n"
        "  policy: 'MlpPolicy'\n"
        "  n_timesteps: 18\n"
        "  n_steps: 9\n"
        "  batch_size: 9\n"
        "  n_epochs: 1\n"
        "  gamma: 1.0\n")
    env_kwargs = ["observation:'flat'", "protocol:'tiny'", "progress:False", "device:'cpu'",
                  f"teacher_recipe:{SMALL_DIGITS_RECIPE!r}".replace(" ", "")]
    cmd = [sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", ENV_ID, "--gym-packages", "n2n_gym",
           "--conf-file", str(conf), "--env-kwargs", *env_kwargs, "-f", str(tmp_path / "logs"),
           "--seed", "0", "--eval-freq", "-1", "--n-eval-envs", "1", "--log-interval", "1", "--device", "cpu"]
    out = subprocess.run(cmd, env=subprocess_env(N2N_CACHE=str(n2n_cache_dir), TMPDIR=str(tmp_path)),
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    models = list((tmp_path / "logs" / "ppo").glob(f"{ENV_ID}_*/{ENV_ID}.zip"))
    assert models, out.stdout[-2000:]
    assert "total_timesteps" in out.stdout  # SB3's training log: the zoo really trained


# ---- SB3 under n2n-gym bench leaves no folder behind --------------------------------------
def test_sb3_run_leaves_no_folder(digits_teacher, tmp_path, monkeypatch):
    from n2n_gym.agents import sb3_baselines

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    out = sb3_baselines.run("ppo", ENV_ID, seed=0, budget=2, env_kwargs=dict(TINY))
    assert out["tracker"].evaluations >= 1
    assert list(tmp.iterdir()) == []


# ---- CI: a skip for a missing package fails -----------------------------------------------
@pytest.mark.parametrize("ci", ["true", ""])
def test_ci_turns_missing_package_skips_into_failures(pytester, monkeypatch, ci):
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_x="""
        import pytest

        def test_needs_package():
            pytest.importorskip("n2n_gym_no_such_package")

        def test_other_skip():
            pytest.skip("N2N_DATA is not set")
    """)
    monkeypatch.setenv("CI", ci)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    if ci:
        result.assert_outcomes(failed=1, skipped=1)
        result.stdout.fnmatch_lines(["*CI=true: skipped for a missing package*"])
    else:
        result.assert_outcomes(skipped=2)


# ---------------------------------------------------------------------------- the README example
EXAMPLE = REPO / "examples" / "cleanrl_style.py"


def test_readme_snippet_runs(digits_teacher, capsys):
    doc = ast.get_docstring(ast.parse(EXAMPLE.read_text()))
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    assert 'protocol="fast"' in code and "range(30)" in code
    code = code.replace('protocol="fast"', f'protocol="tiny", teacher_recipe={SMALL_DIGITS_RECIPE!r}, '
                                           f'progress=False, device="cpu"').replace("range(30)", "range(3)")
    exec(compile(code, str(EXAMPLE), "exec"), {})
    assert len(re.findall(r"reward [-0-9.]+ ", capsys.readouterr().out)) == 3


def test_example_script_main(digits_teacher):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cleanrl_style", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    best = mod.main(["--episodes", "2", "--protocol", "tiny",
                     "--env-kwargs", f'{{"teacher_recipe": {__import__("json").dumps(SMALL_DIGITS_RECIPE)}, '
                                     f'"progress": false, "device": "cpu"}}'])
    assert len(best["actions"]) == 9 and best["reward"] <= 1.0
