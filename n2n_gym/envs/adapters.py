"""Small wrappers that meet RL libraries where their idioms differ from plain Gymnasium.

- :class:`ActionMasks` is added by ``gym.make`` to every registered id (the spec's
  ``additional_wrappers``), so ``env.action_masks()`` works on what ``gym.make`` returns:
  Gymnasium 1.x wrappers no longer forward unknown attributes, and sb3-contrib's documented
  ``ActionMasker(env, lambda env: env.action_masks())`` calls it on the outermost wrapper.
  Under further wrappers of your own, use ``env.get_wrapper_attr("action_masks")()`` or
  ``env.unwrapped.action_masks()``.
- :class:`DictKeys` renames the keys of the ``observation="dict"`` observation for a
  library that reads masks under other names: Tianshou (``obs``, ``mask``) and RLlib's
  action-masking example (``observations``, ``action_mask``).
- :class:`NumpyInfo` gives ``info``'s values as numpy scalars and arrays, for
  TorchRL's ``default_info_dict_reader`` (which reads ``value.dtype``). The env's own
  ``info`` keeps plain Python values, so ``json.dumps(info)`` works.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["ActionMasks", "DictKeys", "NumpyInfo", "numpy_info"]


class ActionMasks(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Exposes the env's ``action_masks()`` (bool, the current layer's allowed actions) on
    the outermost wrapper of ``gym.make``; everything else passes through unchanged."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()


class DictKeys(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The ``observation="dict"`` observation under other key names; values unchanged (the
    mask stays bool)::

        DictKeys(gym.make(ID, observation="dict"), observation="obs", action_mask="mask")  # Tianshou
        DictKeys(gym.make(ID, observation="dict"), observation="observations")             # RLlib

    ``action_masks()`` stays reachable on this wrapper."""

    def __init__(self, env: gym.Env, observation: str = "observation", action_mask: str = "action_mask"):
        gym.utils.RecordConstructorArgs.__init__(self, observation=observation, action_mask=action_mask)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or set(space.spaces) != {"observation", "action_mask"}:
            raise ValueError(f"DictKeys needs the env's dict observation (gym.make(ID, observation='dict')), "
                             f"got {space}")
        if observation == action_mask:
            raise ValueError(f"the two keys must differ, got {observation!r} twice")
        self._keys = {"observation": observation, "action_mask": action_mask}
        self.observation_space = spaces.Dict({self._keys[k]: space[k] for k in ("observation", "action_mask")})

    def observation(self, observation: dict) -> dict:
        return {self._keys[k]: v for k, v in observation.items()}

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()


class NumpyInfo(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """``info`` with numpy values: ``bool`` -> ``np.bool_``, ``int`` -> ``np.int64``,
    ``float`` -> ``np.float64``, ``str`` -> ``np.str_``, a list (``actions``,
    ``illegal_layers``) -> an array; arrays unchanged. Keys, shapes and dtypes are the same at
    every step, so TorchRL's info reader stores them (strings as non-tensor data)::

        from torchrl.envs import GymWrapper
        from torchrl.envs.libs.gym import default_info_dict_reader

        env = GymWrapper(NumpyInfo(gym.make(ID)), categorical_action_encoding=True)
        env.set_info_dict_reader(default_info_dict_reader(["accuracy", "params", "valid"]))

    (The env's own ``info`` holds plain Python values, which ``json.dumps`` writes and
    TorchRL's reader refuses.) ``action_masks()`` stays reachable on this wrapper."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, numpy_info(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, numpy_info(info)

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()


def numpy_info(info: dict) -> dict:
    """A copy of ``info`` with its numbers, strings and lists as numpy scalars and arrays
    (see :class:`NumpyInfo`); arrays and anything else unchanged."""
    out = {}
    for key, value in info.items():
        if isinstance(value, (bool, np.bool_)):
            value = np.bool_(value)
        elif isinstance(value, (int, np.integer)):
            value = np.int64(value)
        elif isinstance(value, (float, np.floating)):
            value = np.float64(value)
        elif isinstance(value, (list, tuple)):
            value = np.asarray(value)
        elif isinstance(value, str):
            value = np.str_(value)  # has a dtype; TorchRL stores it as non-tensor data
        out[key] = value
    return out
