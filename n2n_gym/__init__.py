"""n2n-gym: network compression as a Gymnasium MDP (N2N, Ashok et al., ICLR 2018).

``import n2n_gym`` registers the environments; ``gym.make(n2n_gym.DEFAULT_ENV_ID)``.

The layers, bottom up (each sub-package may import only those below it; CI checks it with
import-linter, ``pyproject.toml``): :mod:`n2n_gym.utils`, :mod:`n2n_gym.ir` (the architecture
IR), :mod:`n2n_gym.data`, :mod:`n2n_gym.teachers`, :mod:`n2n_gym.evaluation` (protocols,
training loops, reward, cache, backends), :mod:`n2n_gym.envs` (the MDP, wrappers),
:mod:`n2n_gym.bench` (runner, records, leaderboard, validate), :mod:`n2n_gym.agents`; the CLI
(:mod:`n2n_gym.cli`) is thin commands on top. ``docs/development.md`` says where things go.
"""

import os as _os
import sys as _sys

from n2n_gym import _compat
from n2n_gym.envs.registration import DEFAULT_ENV_ID, ENVS, register_envs
from n2n_gym.ir.arch import FLOP_CONVENTION, Architecture, Layer

__version__ = "0.1.0"

_compat.install()
register_envs()


def _one_torch_thread_after_fork() -> None:
    """In a process forked from this one (``gym.make_vec(..., vectorization_mode="async")``
    uses fork by default on Linux), torch runs on one thread: the OpenMP pool of a parent that
    ran torch ops on several threads does not survive a fork, and the child's first parallel
    op would hang forever (PyTorch's fork-after-threads deadlock). PyTorch's own DataLoader
    workers do the same. ``torch.set_num_threads`` in the child sets another count."""
    torch = _sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() > 1:
        torch.set_num_threads(1)


if hasattr(_os, "register_at_fork"):  # (POSIX)
    _os.register_at_fork(after_in_child=_one_torch_thread_after_fork)


def __getattr__(name):
    # the torch-heavy parts load on first use, so `import n2n_gym` stays light
    if name == "N2NEnv":
        from n2n_gym.envs.env import N2NEnv

        return N2NEnv
    if name == "load_student":
        from n2n_gym.ir.students import load_student

        return load_student
    if name in ("import_module", "UnsupportedModelError"):
        from n2n_gym.teachers import importer

        return getattr(importer, name)
    raise AttributeError(f"module 'n2n_gym' has no attribute {name!r}")


__all__ = ["Architecture", "Layer", "DEFAULT_ENV_ID", "ENVS", "FLOP_CONVENTION", "N2NEnv", "__version__",
           "import_module", "UnsupportedModelError"]
