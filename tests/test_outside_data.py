"""Data from outside the process is checked (issue 21, kind 2): cached rows, results of
worker processes and Ray actors, imported graphs and data files. A bad one is a miss (with a
warning), a result of -1 with a real reason or a retry, an error naming it, or a refusal:
never a crash of ``step()`` and never a number."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3

import numpy as np
import pytest
import torch
from conftest import make_digits_env
from torch import nn

from n2n_gym.evaluation.cache import CacheRowWarning


# ---------------------------------------------------------------------------- cached rows
@pytest.fixture(scope="module")
def cached_env(digits_teacher, tmp_path_factory):
    """A digits env with its own cache file, one student evaluated in it: (env, path, actions, info)."""
    path = tmp_path_factory.mktemp("rows") / "cache.sqlite"
    env = make_digits_env(cache=str(path))
    env.reset(seed=0)
    actions = [int(np.flatnonzero(m)[0]) for m in env.unwrapped.layer_masks()]  # narrowest widths
    info = _play(env, actions)
    assert info["valid"] and not info["cached"]
    yield env, path, actions, info
    env.close()


def _play(env, actions) -> dict:
    env.reset()
    for a in actions:
        *_, info = env.step(a)
    return info


def _rewrite(path, fn) -> None:
    """Apply ``fn`` to the text of every stored result row (what a damaged disk or another program does)."""
    con = sqlite3.connect(path)
    with con:
        for key, value in con.execute("SELECT key, value FROM results").fetchall():
            con.execute("UPDATE results SET value=? WHERE key=?", (fn(value), key))
    con.close()


def _edit(**change):
    def fn(text):
        row = json.loads(text)
        row.update(change)
        return json.dumps(row)
    return fn


@pytest.mark.parametrize("damage", [
    pytest.param(lambda t: t[: len(t) // 2], id="cut-json"),
    pytest.param(lambda t: "[1, 2]", id="json-list"),
    pytest.param(_edit(accuracy=1.7), id="accuracy-1.7"),
    pytest.param(_edit(accuracy=math.nan), id="accuracy-nan"),
    pytest.param(_edit(params="12"), id="params-string"),
    pytest.param(_edit(reward=0.99), id="reward-not-its-own"),
    pytest.param(_edit(valid="yes"), id="valid-string"),
    pytest.param(lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "flops"}), id="missing-field"),
])
def test_a_damaged_cache_row_is_a_miss_with_a_warning(cached_env, damage):
    env, path, actions, first = cached_env
    assert _play(env, actions)["cached"]  # the row serves while it is sound
    _rewrite(path, damage)
    with pytest.warns(CacheRowWarning, match="damaged"):
        info = _play(env, actions)
    assert not info["cached"] and info["valid"]  # recomputed...
    assert info["reward"] == first["reward"] and info["accuracy"] == first["accuracy"]  # ...to the same numbers
    assert _play(env, actions)["cached"]  # and stored again


# ---------------------------------------------------------------------------- worker results
def test_a_killed_process_worker_is_replaced_and_the_student_scored(digits_teacher):
    env = make_digits_env(cache=False, backend="process", workers=1)
    try:
        env.reset(seed=0)
        masks = env.unwrapped.layer_masks()
        narrow = [int(np.flatnonzero(m)[0]) for m in masks]
        (reward, info), = env.unwrapped.evaluate_many([narrow])
        assert info["valid"]
        pool = env.unwrapped.backend._pool
        for pid in list(pool._processes):
            os.kill(pid, signal.SIGKILL)
        other = [int(np.flatnonzero(m)[-1]) for m in masks]
        (reward2, info2), = env.unwrapped.evaluate_many([other])
        assert info2["reason"] or info2["valid"]
        assert info2["valid"], info2["reason"]
    finally:
        env.close()


def test_a_dead_ray_actor_is_replaced_and_no_result_is_dropped(digits_teacher):
    import ray

    from n2n_gym.evaluation.backends import RayBackend

    env = make_digits_env(cache=False)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        env.reset(seed=0)
        masks = env.unwrapped.layer_masks()
        students = [env.unwrapped.student_architecture([int(np.flatnonzero(m)[i]) for m in masks]) for i in (0, -1)]
        backend = RayBackend(env.unwrapped.evaluator, workers=1)
        first = backend.evaluate_many([(students[0], "tiny", 0)])[0]
        ray.kill(backend._actors[0])  # the case: every later step got -1 with no reason
        results = backend.evaluate_many([(s, "tiny", 0) for s in students])
        assert len(results) == 2 and all(r.valid for r in results), [r.reason for r in results]
        assert results[0].reward == first.reward
        backend.close()
    finally:
        ray.shutdown()
        env.close()


# ---------------------------------------------------------------------------- imported graphs
class _ConvTwice(nn.Module):
    """One conv applied twice (weight sharing): 1 set of weights, not 2 layers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv(x))
        x = torch.relu(self.conv(x))
        return self.fc(torch.flatten(x, 1))


class _TiedWeights(_ConvTwice):
    """Two conv modules holding one weight tensor."""

    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2.weight = self.conv.weight

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv(x))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("model, words", [(_ConvTwice, "module `conv` (Conv2d) is called 2 times"),
                                          (_TiedWeights, "`conv2.weight` is the same tensor as a weight of `conv`")])
def test_the_importer_refuses_shared_weights(model, words):
    from n2n_gym.teachers.importer import UnsupportedModelError, import_module

    with pytest.raises(UnsupportedModelError, match="weight sharing") as err:
        import_module(model().eval(), torch.randn(2, 1, 8, 8))
    assert words in str(err.value)


# ---------------------------------------------------------------------------- data files
def _cifar_npz(folder, y_train):
    folder.mkdir(parents=True)
    for split, y in (("train", y_train), ("test", np.arange(10))):
        n = len(y)
        np.savez(folder / f"cifar10-{split}.npz", x=np.zeros((n, 32, 32, 3), np.uint8), y=np.asarray(y, np.int64),
                 official_index=np.arange(n))


def test_a_data_file_with_labels_outside_the_classes_is_an_error_naming_it(tmp_path):
    from n2n_gym.data.datasets import load_dataset

    _cifar_npz(tmp_path / "cifar10", np.r_[np.arange(10), np.arange(10), [12]])
    with pytest.raises(ValueError, match=r"labels span 0\.\.12, outside the data set's 0\.\.9") as err:
        load_dataset("cifar10", root=tmp_path, download=False)
    assert str(tmp_path) in str(err.value)
