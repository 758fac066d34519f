"""The package's shape is a contract: the layer order (import-linter, pyproject.toml), no
import cycle between modules, benchmark scripts used by no library module, and the old flat
module paths still importable (with a DeprecationWarning) for one minor version."""

from __future__ import annotations

import importlib
import os
import pathlib
import shutil
import subprocess
import sys
import warnings

import grimp
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_layer_contracts_hold():
    exe = shutil.which("lint-imports") or str(pathlib.Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe, "--no-cache", "--config", str(REPO / "pyproject.toml")], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def test_no_import_cycles():
    graph = grimp.build_graph("n2n_gym", include_external_packages=False)
    # the root package registers the envs and serves lazy names; sub-packages import it only to
    # register the ids (``import n2n_gym``), which is not a dependency on a layer
    graph.remove_module("n2n_gym")
    assert _cycles(graph) == []


def test_no_library_module_imports_a_deprecated_path():
    """The import graph cannot see through the aliases of _compat: an upward import written
    with an old path (``from n2n_gym.env import N2NEnv`` in n2n_gym/utils) would pass the
    layer contracts, so no library module may use an old path at all."""
    import ast

    from n2n_gym._compat import MOVED

    offenders = []
    for path in (REPO / "n2n_gym").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n in MOVED]
    assert offenders == []


def test_no_library_module_uses_the_benchmark_scripts():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "n2n_gym").rglob("*.py")
                 if "n2n_gym.benchmarks" in p.read_text() and p.name != "_compat.py"]
    assert offenders == []


@pytest.mark.parametrize("old, new", [("n2n_gym.arch", "n2n_gym.ir.arch"), ("n2n_gym.env", "n2n_gym.envs.env"),
                                      ("n2n_gym.benchmarks.runner", "n2n_gym.bench.runner"),
                                      ("n2n_gym.teacher_registry", "n2n_gym.teachers.registry")])
def test_moved_modules_keep_a_deprecated_alias(old, new):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new) or module.__name__ == old  # the module, or a lookup over its homes
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


def test_every_alias_points_at_a_module():
    from n2n_gym._compat import MOVED, RENAMED

    for homes in MOVED.values():
        for new in homes:
            importlib.import_module(new)
    for module, name in RENAMED.values():
        assert hasattr(importlib.import_module(module), name)


@pytest.mark.parametrize("old, name, new", [
    ("n2n_gym.checks", "check_env_args", "n2n_gym.envs.checks"),
    ("n2n_gym.checks", "check_splits", "n2n_gym.data.datasets"),
    ("n2n_gym.checks", "check_start_architecture", "n2n_gym.ir.edits"),
    ("n2n_gym.checks", "check_int", "n2n_gym.utils.checks"),
    ("n2n_gym.teacher_registry", "pin_teacher", "n2n_gym.teachers.teacher"),
    ("n2n_gym.teacher_registry", "by_sha", "n2n_gym.teachers.registry"),
])
def test_every_name_of_an_old_module_still_resolves(old, name, new):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        got = getattr(importlib.import_module(old), name)
    assert got is getattr(importlib.import_module(new), name)


def test_a_renamed_name_resolves_under_its_old_name():
    from n2n_gym.agents.n2n import run_benchmark

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from n2n_gym.benchmarks.runner import run_n2n
    assert run_n2n is run_benchmark


def test_python_dash_m_of_an_old_path_runs_the_new_module():
    proc = subprocess.run([sys.executable, "-m", "n2n_gym.benchmarks.runner", "--help"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "n2n-gym bench" in proc.stdout, proc.stderr[-2000:]


def test_import_n2n_gym_stays_free_of_torch():
    proc = subprocess.run([sys.executable, "-c", "import sys, n2n_gym; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "False"


def test_deprecated_path_warns_at_the_importing_line_under_default_filters(tmp_path):
    """Python shows a DeprecationWarning by default only when it is attributed to __main__: the
    alias must point at the user's import line, not at importlib (bug hunt: it pointed past the
    stack, 'sys:1', and a script importing an old path saw nothing)."""
    script = tmp_path / "old_path.py"
    script.write_text("import n2n_gym\nimport n2n_gym.arch\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    assert done.returncode == 0, done.stderr
    assert f"{script}:2: DeprecationWarning: n2n_gym.arch moved to n2n_gym.ir.arch" in done.stderr
