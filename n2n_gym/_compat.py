"""Deprecated module paths of 0.1 (a flat package): ``import n2n_gym.arch`` still works and
warns once, pointing at the new home (``n2n_gym.ir.arch``). Pickles and records that name an
old path (e.g. a cached evaluator, a Gymnasium spec's ``n2n_gym.env:N2NEnv``) load too, every
public name of a 0.1 module resolves (from whichever module it moved to), and
``python -m n2n_gym.benchmarks.runner`` runs the new module. Removed in 0.3."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

#: old module path -> the modules its names moved to (the first is its new home)
MOVED: dict[str, tuple[str, ...]] = {
    "n2n_gym.files": ("n2n_gym.utils.files",),
    "n2n_gym.checks": ("n2n_gym.utils.checks", "n2n_gym.envs.checks", "n2n_gym.ir.edits", "n2n_gym.data.datasets"),
    "n2n_gym.arch": ("n2n_gym.ir.arch",), "n2n_gym.zoo": ("n2n_gym.ir.zoo",), "n2n_gym.edits": ("n2n_gym.ir.edits",),
    "n2n_gym.build": ("n2n_gym.ir.build",), "n2n_gym.encoding": ("n2n_gym.ir.encoding",),
    "n2n_gym.students": ("n2n_gym.ir.students",),
    "n2n_gym.teacher_registry": ("n2n_gym.teachers.registry", "n2n_gym.teachers.teacher"),
    "n2n_gym.importer": ("n2n_gym.teachers.importer",),
    "n2n_gym.distill": ("n2n_gym.evaluation.distill",), "n2n_gym.protocols": ("n2n_gym.evaluation.protocols",),
    "n2n_gym.reward": ("n2n_gym.evaluation.reward",), "n2n_gym.cache": ("n2n_gym.evaluation.cache",),
    "n2n_gym.backends": ("n2n_gym.evaluation.backends",), "n2n_gym.supernet": ("n2n_gym.evaluation.supernet",),
    "n2n_gym.final": ("n2n_gym.evaluation.final",), "n2n_gym.deploy": ("n2n_gym.evaluation.deploy",),
    "n2n_gym.env": ("n2n_gym.envs.env",), "n2n_gym.registration": ("n2n_gym.envs.registration",),
    "n2n_gym.wrappers": ("n2n_gym.envs.wrappers",), "n2n_gym.adapters": ("n2n_gym.envs.adapters",),
    "n2n_gym.benchmarks.runner": ("n2n_gym.bench.runner", "n2n_gym.agents.n2n"),
    "n2n_gym.benchmarks.records": ("n2n_gym.bench.records",),
    "n2n_gym.benchmarks.leaderboard": ("n2n_gym.bench.leaderboard",),
    "n2n_gym.benchmarks.validate": ("n2n_gym.bench.validate",),
}
#: names that were renamed as they moved: (old module, old name) -> (new module, new name)
RENAMED: dict[tuple[str, str], tuple[str, str]] = {
    ("n2n_gym.benchmarks.runner", "run_n2n"): ("n2n_gym.agents.n2n", "run_benchmark"),
}


def _alias(old: str) -> types.ModuleType:
    """The module object ``old`` names now: the new module itself when all its names went there
    (``import n2n_gym.arch as A; A is n2n_gym.ir.arch``), else a module that looks each name up
    in the modules it moved to."""
    homes = MOVED[old]
    renamed = {name: target for (mod, name), target in RENAMED.items() if mod == old}
    if len(homes) == 1 and not renamed:
        return importlib.import_module(homes[0])
    alias = types.ModuleType(old, f"Deprecated path of {homes[0]} (n2n-gym 0.2; removed in 0.3).")

    def __getattr__(name: str):
        if name in renamed:
            module, new = renamed[name]
            return getattr(importlib.import_module(module), new)
        for home in homes:
            module = importlib.import_module(home)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r} (its names moved to {', '.join(homes)})")

    alias.__getattr__ = __getattr__  # PEP 562
    alias.__path__ = []  # so "import n2n_gym.checks.x" fails as for a module, not oddly
    return alias


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        # stacklevel 2: the importing line (warnings skips importlib's own frames when counting), so
        # that Python's default filter shows it where a user's script imports the old path
        warnings.warn(f"{spec.name} moved to {self.new} (n2n-gym 0.2); the old path is removed in 0.3",
                      DeprecationWarning, stacklevel=2)
        return _alias(spec.name)

    def exec_module(self, module) -> None:
        pass  # the new modules are already executed

    def get_code(self, fullname: str):
        # ``python -m n2n_gym.benchmarks.runner``: runpy runs the new module's code as __main__
        spec = importlib.util.find_spec(self.new)
        return spec.loader.get_code(self.new)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        homes = MOVED.get(fullname)
        if homes is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(homes[0]))


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
