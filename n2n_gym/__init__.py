"""n2n-gym: network compression as a Gymnasium MDP (N2N, Ashok et al., ICLR 2018).

``import n2n_gym`` registers the environments; ``gym.make(n2n_gym.DEFAULT_ENV_ID)``.
"""

import os as _os
import sys as _sys

from .arch import FLOP_CONVENTION, Architecture, Layer
from .registration import DEFAULT_ENV_ID, ENVS, register_envs

__version__ = "0.1.0"

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
        from .env import N2NEnv

        return N2NEnv
    if name == "load_student":
        from .students import load_student

        return load_student
    if name in ("import_module", "UnsupportedModelError"):
        from . import importer

        return getattr(importer, name)
    raise AttributeError(f"module 'n2n_gym' has no attribute {name!r}")


__all__ = ["Architecture", "Layer", "DEFAULT_ENV_ID", "ENVS", "FLOP_CONVENTION", "N2NEnv", "__version__",
           "import_module", "UnsupportedModelError"]
