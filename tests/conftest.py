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


# ---------------------------------------------------------------------------- the IR's tests
CIFAR_SHAPE = (3, 32, 32)
DIGITS_SHAPE = (1, 8, 8)


def zoo_input_shape(name: str) -> tuple[int, int, int]:
    return DIGITS_SHAPE if name == "digitsnet" else CIFAR_SHAPE


def zoo_arch(name: str, num_classes: int = 10):
    """The zoo teacher ``name`` on its data set's input shape."""
    from n2n_gym.ir.zoo import teacher_architecture

    return teacher_architecture(name, zoo_input_shape(name), num_classes)


def measured(arch):
    """(sum of parameter numels, FlopCounterMode FLOPs of a 1-image forward, logits)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from n2n_gym.ir.build import build

    torch.manual_seed(0)
    module = build(arch).eval()
    params = sum(p.numel() for p in module.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = module(torch.randn(1, *arch.input_shape))
    return params, counter.get_total_flops(), out


def reference_spaces(arch):
    """(group, input group) per layer, by the rules of the module docstrings: a residual
    addition ties the block's tail (and its projection) to one channel space."""
    from n2n_gym.ir.arch import CONV, LINEAR

    group, source = {}, {}
    current = "image"
    for kind, *rest in arch.segments():
        if kind == "layer":
            i = rest[0]
            if arch.layers[i].kind in (CONV, LINEAR):
                source[i], group[i], current = current, i, i
            continue
        body, shortcut = rest
        block_in = current
        for k in body:
            source[k], group[k], current = current, k, k
        tail = body[-1]
        if shortcut is None:
            group[tail] = block_in
        else:
            source[shortcut] = block_in
            group[shortcut] = tail
        current = group[tail]
    # a group is named by its first producer
    return group, source


# ---------------------------------------------------------------------------- records
@pytest.fixture(scope="module")
def genuine_record(digits_teacher) -> dict:
    """One real record: random search, 2 evaluations, tiny protocol."""
    from n2n_gym.bench import runner

    return runner.run_one("N2N-DigitsNet-Digits-v0", "random", 0, 2, protocol="tiny",
                          env_kwargs=BENCH_ENV_KWARGS, device="cpu")


def copy_record(record: dict, **change) -> dict:
    """``record`` with a new run id and ``change`` (dotted keys reach into objects)."""
    import copy
    import uuid

    r = copy.deepcopy(record)
    r["run_id"] = uuid.uuid4().hex
    for dotted, value in change.items():
        *parents, last = dotted.split("__")
        target = r
        for p in parents:
            target = target[p]
        target[last] = value
    return r

