"""Deprecated module paths of 0.1 (a flat package): ``import n2n_gym.arch`` still works and
warns once, pointing at the new home (``n2n_gym.ir.arch``). Pickles and records that name an
old path (e.g. a cached evaluator, a Gymnasium spec's ``n2n_gym.env:N2NEnv``) load too.
Removed in 0.3."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module path -> new module path
MOVED = {
    "n2n_gym.files": "n2n_gym.utils.files", "n2n_gym.checks": "n2n_gym.utils.checks",
    "n2n_gym.arch": "n2n_gym.ir.arch", "n2n_gym.zoo": "n2n_gym.ir.zoo", "n2n_gym.edits": "n2n_gym.ir.edits",
    "n2n_gym.build": "n2n_gym.ir.build", "n2n_gym.encoding": "n2n_gym.ir.encoding",
    "n2n_gym.students": "n2n_gym.ir.students",
    "n2n_gym.teacher_registry": "n2n_gym.teachers.registry", "n2n_gym.importer": "n2n_gym.teachers.importer",
    "n2n_gym.distill": "n2n_gym.evaluation.distill", "n2n_gym.protocols": "n2n_gym.evaluation.protocols",
    "n2n_gym.reward": "n2n_gym.evaluation.reward", "n2n_gym.cache": "n2n_gym.evaluation.cache",
    "n2n_gym.backends": "n2n_gym.evaluation.backends", "n2n_gym.supernet": "n2n_gym.evaluation.supernet",
    "n2n_gym.final": "n2n_gym.evaluation.final", "n2n_gym.deploy": "n2n_gym.evaluation.deploy",
    "n2n_gym.env": "n2n_gym.envs.env", "n2n_gym.registration": "n2n_gym.envs.registration",
    "n2n_gym.wrappers": "n2n_gym.envs.wrappers", "n2n_gym.adapters": "n2n_gym.envs.adapters",
    "n2n_gym.benchmarks.runner": "n2n_gym.bench.runner", "n2n_gym.benchmarks.records": "n2n_gym.bench.records",
    "n2n_gym.benchmarks.leaderboard": "n2n_gym.bench.leaderboard",
    "n2n_gym.benchmarks.validate": "n2n_gym.bench.validate",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {self.new} (n2n-gym 0.2); the old path is removed in 0.3",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:
        pass  # the new module is already executed


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
