"""n2n_gym.envs.adapters: ``ActionMasks`` is gym.make's outermost wrapper on every registered id
and reachable under further wrappers; ``DictKeys`` renames the dict observation's keys, keeps the
values and the bool mask, and refuses what it cannot rename; ``NumpyInfo`` gives info's values as
numpy with the same keys and dtypes at every step; the wrapped envs keep ``action_masks()`` and
can be made again from their spec. (The RL libraries themselves: tests/test_rl_libraries.py.)"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from conftest import make_digits_env

from n2n_gym.envs.adapters import ActionMasks, DictKeys, NumpyInfo, numpy_info
from n2n_gym.teachers.catalog import ENVS


def _first_allowed(mask) -> int:
    return int(np.flatnonzero(mask)[0])


def _signature(info: dict) -> dict:
    """key -> (type, dtype kind (strings of any length alike), shape)."""
    return {k: (type(v), np.asarray(v).dtype.kind if isinstance(v, np.str_) else v.dtype, np.shape(v))
            for k, v in info.items()}


# ---- ActionMasks --------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_gym_make_puts_action_masks_outermost_on_every_id(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "v0 is out of date"
        env = gym.make(env_id)  # loads nothing: data and teacher come at reset()
    assert isinstance(env, ActionMasks) and callable(env.action_masks)
    assert [w.entry_point for w in env.spec.additional_wrappers] == ["n2n_gym.envs.adapters:ActionMasks"]
    # everything else passes through: the spaces are the env's own
    assert env.observation_space is env.unwrapped.observation_space
    assert env.action_space is env.unwrapped.action_space
    env.close()


def test_action_masks_under_further_wrappers(digits_teacher):
    env = gym.wrappers.RecordEpisodeStatistics(make_digits_env())
    _, info = env.reset(seed=0)
    # Gymnasium 1.x wrappers forward no attributes (0.29 forwards them, with a warning)...
    assert hasattr(env, "action_masks") == gym.__version__.startswith("0.")
    done = False
    while not done:
        mask = env.get_wrapper_attr("action_masks")()  # ...so reach it through get_wrapper_attr
        assert mask.dtype == bool and np.array_equal(mask, info["action_mask"])
        assert np.array_equal(env.unwrapped.action_masks(), mask)
        _, _, done, _, info = env.step(_first_allowed(mask))
    assert "episode" in info  # the outer wrapper saw the whole episode
    env.close()


def test_a_made_env_is_made_again_from_its_spec_with_one_action_masks():
    env = gym.make("N2N-ResNet20-CIFAR10-v0")
    again = gym.make(env.spec)
    assert isinstance(again, ActionMasks) and not isinstance(again.env, ActionMasks)
    env.close()
    again.close()


# ---- DictKeys -------------------------------------------------------------------------------
@pytest.mark.parametrize("keys", [{"observation": "obs", "action_mask": "mask"},  # Tianshou
                                  {"observation": "observations"},  # RLlib's action-masking example
                                  {}])
def test_dict_keys_renames_and_keeps_values_and_masks(digits_teacher, keys):
    plain = make_digits_env(observation="dict")
    env = DictKeys(make_digits_env(observation="dict"), **keys)
    obs_key, mask_key = keys.get("observation", "observation"), keys.get("action_mask", "action_mask")
    space, base = env.observation_space, plain.observation_space
    assert set(space.spaces) == {obs_key, mask_key}
    assert space[obs_key] == base["observation"] and space[mask_key] == base["action_mask"]
    (obs, _), (want, _) = env.reset(seed=0), plain.reset(seed=0)
    for t in range(env.unwrapped.num_layers):
        assert set(obs) == {obs_key, mask_key} and space.contains(obs)
        assert np.array_equal(obs[obs_key], want["observation"]) and obs[obs_key].dtype == np.float32
        assert obs[mask_key].dtype == bool and np.array_equal(obs[mask_key], want["action_mask"])
        assert np.array_equal(env.action_masks(), obs[mask_key]) and env.action_masks().dtype == bool
        action = _first_allowed(obs[mask_key])
        (obs, reward, done, _, _), (want, want_reward, *_) = env.step(action), plain.step(action)
        assert reward == want_reward and done == (t == env.unwrapped.num_layers - 1)
    env.close()
    plain.close()


def test_dict_keys_made_again_from_its_spec_keeps_the_names():
    env = DictKeys(gym.make("N2N-ResNet20-CIFAR10-v0", observation="dict"), observation="obs", action_mask="mask")
    again = gym.make(env.spec)
    assert isinstance(again, DictKeys) and set(again.observation_space.spaces) == {"obs", "mask"}
    assert callable(again.action_masks)
    env.close()
    again.close()


@pytest.mark.parametrize("observation", ["table", "flat"])
def test_dict_keys_needs_the_dict_observation(observation):
    with pytest.raises(ValueError, match=r"DictKeys needs the env's dict observation \(gym.make\(ID, observation='dict'\)\)"):
        DictKeys(gym.make("N2N-ResNet20-CIFAR10-v0", observation=observation))


def test_dict_keys_must_differ():
    env = gym.make("N2N-ResNet20-CIFAR10-v0", observation="dict")
    with pytest.raises(ValueError, match=r"the two keys must differ, got 'x' twice"):
        DictKeys(env, observation="x", action_mask="x")


# ---- NumpyInfo, numpy_info --------------------------------------------------------------------
def test_numpy_info_converts_each_kind_and_leaves_the_rest():
    array, other = np.zeros((2, 3), dtype=bool), {"nested": 1}
    info = {"valid": True, "np_valid": np.bool_(False), "params": 7, "small": np.int32(3), "accuracy": 0.5,
            "single": np.float32(0.25), "actions": [0, 3, 1], "pair": (True, False), "reason": "ok",
            "mask": array, "other": other, "none": None}
    out = numpy_info(info)
    expected = {"valid": np.bool_, "np_valid": np.bool_, "params": np.int64, "small": np.int64,
                "accuracy": np.float64, "single": np.float64, "reason": np.str_}
    for key, kind in expected.items():
        assert type(out[key]) is kind and out[key] == info[key], key
    assert out["actions"].dtype == np.int64 and out["actions"].tolist() == [0, 3, 1]
    assert out["pair"].dtype == bool and out["pair"].tolist() == [True, False]
    assert out["mask"] is array and out["other"] is other and out["none"] is None
    assert list(out) == list(info) and type(info["params"]) is int and info["actions"] == [0, 3, 1]  # a copy


def test_numpy_info_has_the_same_keys_and_dtypes_at_every_step(digits_teacher):
    env = NumpyInfo(make_digits_env())
    _, info = env.reset(seed=0)
    first = _signature(info)
    assert all(isinstance(v, (np.generic, np.ndarray)) for v in info.values())
    assert type(info["valid"]) is np.bool_ and type(info["params"]) is np.int64
    assert type(info["accuracy"]) is np.float64 and type(info["stage"]) is np.str_
    steps = 0
    done = False
    while not done:
        assert np.array_equal(env.action_masks(), info["action_mask"]) and env.action_masks().dtype == bool
        _, reward, done, _, info = env.step(_first_allowed(info["action_mask"]))
        assert _signature(info) == first
        steps += 1
    assert steps == env.unwrapped.num_layers and info["actions"].shape == (steps,)
    assert info["reward"] == reward and info["valid"] == (info["params"] > 0)
    env.close()
