"""Shared test setup.

- Every test session gets its own, empty n2n-gym cache (``N2N_CACHE``: trained teachers
  and the SQLite result cache) and runs offline (``N2N_OFFLINE=1``: nothing downloads).
- ``digits_teacher`` trains the embedded digits teacher once per session with a small
  recipe (``SMALL_DIGITS_RECIPE``); every test env that needs a digits teacher passes
  that same recipe, so they all load the one cached checkpoint.
- Real data sets come only from ``$N2N_DATA`` (``shared_data_root`` skips without it).
- In CI (``CI=true``) a test skipped for a missing package (``pytest.importorskip``, or a
  skip whose reason says a module is not installed) FAILS instead: the README's install must
  give everything the tests import, and a green CI must not hide a missing dependency.
- torch runs on one thread (``N2N_TEST_TORCH_THREADS`` to change): the tests use tiny
  tensors, and on a busy 2-core machine two OpenMP threads that contend for a core make
  a small forward pass 100x slower (0.7 s instead of 5 ms for a ResNet-20 image).
"""

from __future__ import annotations

import os
import pathlib
import re
import sys

import pytest

#: The recipe every digits test env uses (``teacher_recipe=``): one shared cache entry,
#: a few seconds to train instead of the full 40-epoch default.
SMALL_DIGITS_RECIPE = {"epochs": 3, "batch_size": 64, "lr": 0.05}

pytest_plugins = ["pytester"]  # tests of this conftest's CI hook

_ENV_VARS = ("N2N_CACHE", "N2N_OFFLINE")

#: skip reasons that mean "a package is missing": pytest.importorskip's wording and ours
_MISSING_PACKAGE = re.compile(r"could not import|no module named|not installed|needs? (the )?package", re.I)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _missing_package_reason(report) -> str | None:
    """The skip reason of ``report`` if it is a skip for a missing package."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    reason = str(report.longrepr[2])
    return reason if _MISSING_PACKAGE.search(reason) else None


def _fail_in_ci(report) -> None:
    reason = _missing_package_reason(report) if _in_ci() else None
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = (f"CI=true: skipped for a missing package, which fails in CI ({reason}). "
                           f"Add the package to pyproject.toml so that the README's install gives it.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # a module-level importorskip skips the whole module at collection
    outcome = yield
    _fail_in_ci(outcome.get_result())


@pytest.fixture(scope="session", autouse=True)
def _isolated_n2n_cache(tmp_path_factory: pytest.TempPathFactory):
    """A fresh cache folder for this session, and no downloads (restored afterwards)."""
    saved = {k: os.environ.get(k) for k in _ENV_VARS}
    os.environ["N2N_CACHE"] = str(tmp_path_factory.mktemp("n2n_cache"))
    os.environ["N2N_OFFLINE"] = "1"
    try:
        yield pathlib.Path(os.environ["N2N_CACHE"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    """One torch thread for the session, if torch is in use (test modules imported it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("N2N_TEST_TORCH_THREADS", "1")))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def subprocess_env(**extra: str) -> dict[str, str]:
    """os.environ for a child process: this session's cache, offline, one thread."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", os.environ.get("N2N_TEST_TORCH_THREADS", "1"))
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def n2n_cache_dir(_isolated_n2n_cache: pathlib.Path) -> pathlib.Path:
    """The session's ``N2N_CACHE`` folder."""
    return _isolated_n2n_cache


def make_digits_env(**kwargs):
    """The embedded default env with the tiny protocol and the small shared teacher recipe."""
    import gymnasium as gym

    import n2n_gym

    kwargs.setdefault("protocol", "tiny")
    kwargs.setdefault("teacher_recipe", dict(SMALL_DIGITS_RECIPE))
    kwargs.setdefault("progress", False)
    kwargs.setdefault("device", "cpu")
    return gym.make(n2n_gym.DEFAULT_ENV_ID, **kwargs)


@pytest.fixture(scope="session")
def digits_teacher(_isolated_n2n_cache):
    """The embedded digits teacher, trained once per session into the session cache."""
    env = make_digits_env()
    try:
        return env.unwrapped.teacher
    finally:
        env.close()


@pytest.fixture(scope="session")
def digits_data():
    from n2n_gym.data.datasets import load_dataset

    return load_dataset("digits")


#: The env_kwargs of every benchmark-runner test run: the small shared teacher recipe.
BENCH_ENV_KWARGS = {"teacher_recipe": dict(SMALL_DIGITS_RECIPE)}


def bench(agent: str, budget: int = 2, seed: int = 0, **kw) -> dict:
    """One benchmark-runner run of ``agent`` on the embedded env (tiny protocol, CPU): its record."""
    from n2n_gym.bench import runner

    kw.setdefault("env_kwargs", dict(BENCH_ENV_KWARGS))
    return runner.run_one("N2N-DigitsNet-Digits-v0", agent, seed, budget, protocol="tiny", device="cpu", **kw)


def shared_data_root(*required: str) -> pathlib.Path:
    """``$N2N_DATA`` as a path; skips the test if it is unset or lacks ``required`` files."""
    root = os.environ.get("N2N_DATA")
    if not root:
        pytest.skip("N2N_DATA is not set")
    path = pathlib.Path(root)
    missing = [r for r in required if not (path / r).exists()]
    if missing:
        pytest.skip(f"N2N_DATA={root} lacks {missing}")
    return path
