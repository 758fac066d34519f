"""The registered environments: every teacher / data-set pair of the N2N paper, the
TAS ResNets and the embedded default."""

from __future__ import annotations

import re

import gymnasium as gym
from gymnasium.envs.registration import WrapperSpec

from n2n_gym.teachers.catalog import (
    CUSTOM_ENV_ID,
    DEFAULT_ENV_ID,
    DEFAULT_PROTOCOLS,
    ENVS,
)

__all__ = ["ACTION_MASKS", "CUSTOM_ENV_ID", "DEFAULT_ENV_ID", "ENVS", "canonical_env_id", "default_protocol",
           "make_env", "register_envs", "resolve_protocol"]

# gym.make's outermost wrapper: env.action_masks() on what gym.make returns (Gymnasium 1.x
# wrappers forward no attributes; sb3-contrib's ActionMasker calls it on the outermost one)
ACTION_MASKS = WrapperSpec("ActionMasks", "n2n_gym.envs.adapters:ActionMasks", {})


def make_env(**kwargs):
    """The registered ids' entry point: ``N2NEnv(**kwargs)``. A function, not the class, so
    that ``gym.make`` does not read ``N2NEnv.metadata`` and warn about an unsupported
    ``render_mode`` itself: the env warns once, saying what ``render()`` then does."""
    from n2n_gym.envs.env import N2NEnv

    return N2NEnv(**kwargs)


def register_envs() -> None:
    ids = {CUSTOM_ENV_ID: ("custom", "digits")} | {k: (teacher, data) for k, (teacher, data, _) in ENVS.items()}
    for env_id, (teacher, dataset) in ids.items():
        if env_id not in gym.registry:
            kwargs = {"teacher": teacher, "dataset": dataset}
            if env_id in DEFAULT_PROTOCOLS:
                kwargs["protocol"] = DEFAULT_PROTOCOLS[env_id]
            gym.register(env_id, entry_point="n2n_gym.envs.registration:make_env", kwargs=kwargs,
                         nondeterministic=False, additional_wrappers=(ACTION_MASKS,))


def canonical_env_id(env_id: str) -> str:
    """``env_id`` without Gymnasium's ``"n2n_gym:"`` module prefix (``gym.make("n2n_gym:N2N-...")``
    imports the package, then makes the id): records, resume keys, leaderboards and per-id
    defaults name the id itself. Other strings are returned as they are."""
    if isinstance(env_id, str) and env_id.startswith("n2n_gym:"):
        return env_id.removeprefix("n2n_gym:")
    return env_id


def default_protocol(env_id: str) -> str:
    """The evaluation protocol ``gym.make(env_id)`` uses: the ``protocol`` of its registered
    kwargs, else the env's own default ``"fast"``. Raises ``gymnasium.error.Error`` (a
    subclass of it: ``NameNotFound``, ``VersionNotFound``, ...) for an unregistered id."""
    protocol = gym.spec(canonical_env_id(env_id)).kwargs.get("protocol", "fast")
    # a Protocol object registered by a user has a name too; records name protocols by name
    return protocol if isinstance(protocol, str) else protocol.name


def resolve_protocol(env_id: str, protocol: str | None) -> str:
    """``protocol``, or the env id's own when it is None (agents' and the runner's default).
    Raises ``ValueError`` naming the id when it is not registered."""
    if protocol is not None:
        return protocol
    try:
        return default_protocol(env_id)
    except gym.error.Error as exc:
        raise ValueError(f"env_id {env_id!r} is not a registered environment ({exc}){_close_ids(env_id)}; pass a "
                         f"registered id (n2n_gym.ENVS) or register yours with gymnasium.register first") from None


def _close_ids(env_id: str) -> str:
    """'; did you mean ...' with the registered N2N ids closest to ``env_id`` (case and
    punctuation aside: 'resnet20' finds the ResNet-20 ids), or ''."""
    import difflib

    ids = sorted(i for i in gym.registry if i.startswith("N2N-"))
    norm = {re.sub(r"[^a-z0-9]", "", i.lower()): i for i in ids}
    key = re.sub(r"[^a-z0-9]", "", env_id.lower())
    found = [norm[k] for k in norm if key and key in k] or [
        norm[k] for k in difflib.get_close_matches(key, list(norm), n=3, cutoff=0.6)]
    return f"; did you mean {', '.join(found[:4])}" if found else ""
