"""n2n-gym: network compression as a Gymnasium MDP (N2N, Ashok et al., ICLR 2018).

``import n2n_gym`` registers the environments; ``gym.make(n2n_gym.DEFAULT_ENV_ID)``.
"""

from .arch import FLOP_CONVENTION, Architecture, Layer
from .registration import DEFAULT_ENV_ID, ENVS, register_envs

__version__ = "0.1.0"

register_envs()


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
