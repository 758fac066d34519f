"""The registered environments: every teacher / data-set pair of the N2N paper, the
TAS ResNets and the embedded default."""

from __future__ import annotations

import gymnasium as gym
from gymnasium.envs.registration import WrapperSpec

from n2n_gym.teachers.catalog import CUSTOM_ENV_ID, DEFAULT_ENV_ID, ENVS

__all__ = ["ACTION_MASKS", "CUSTOM_ENV_ID", "DEFAULT_ENV_ID", "ENVS", "register_envs"]

# gym.make's outermost wrapper: env.action_masks() on what gym.make returns (Gymnasium 1.x
# wrappers forward no attributes; sb3-contrib's ActionMasker calls it on the outermost one)
ACTION_MASKS = WrapperSpec("ActionMasks", "n2n_gym.envs.adapters:ActionMasks", {})


def register_envs() -> None:
    ids = {CUSTOM_ENV_ID: ("custom", "digits")} | {k: (teacher, data) for k, (teacher, data, _) in ENVS.items()}
    for env_id, (teacher, dataset) in ids.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="n2n_gym.envs.env:N2NEnv", kwargs={"teacher": teacher, "dataset": dataset},
                         nondeterministic=False, additional_wrappers=(ACTION_MASKS,))
