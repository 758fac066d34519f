"""Evaluation backends, batched and vectorised evaluation, and their workers (killed processes,
dead Ray actors, stale blobs, forks after torch ops).

Small on purpose: the tiny protocol on the embedded digits env, 2 workers, a few students.
Rewards must equal the serial path's bit for bit (one torch thread everywhere)."""

from __future__ import annotations

import math
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import gymnasium as gym
import numpy as np
import pytest
from conftest import SMALL_DIGITS_RECIPE, make_digits_env, subprocess_env

import n2n_gym
from n2n_gym.agents.n2n import N2N, Args
from n2n_gym.evaluation.backends import BLOB_PREFIX, make_backend, remove_stale_blobs
from n2n_gym.evaluation.cache import ResultCache


def random_actions(env, n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    _, info = env.reset()
    return [[int(rng.choice(np.flatnonzero(m))) for m in info["layer_masks"]] for _ in range(n)]


def play(env, actions) -> tuple[float, dict]:
    env.reset()
    for a in actions:
        _, r, done, _, info = env.step(a)
    assert done
    return r, info


# ---------------------------------------------------------------------------- backends
@pytest.fixture(scope="module")
def serial(digits_teacher):
    """Four random students' terminal (reward, info) through reset/step, no cache."""
    env = make_digits_env(cache=False)
    acts = random_actions(env.unwrapped, 4)
    acts.append(acts[0])  # a repeat inside the batch
    out = [play(env, a) for a in acts]
    env.close()
    return acts, out


def _check_equal(serial_out, batch_out):
    for (r, info), (rb, ib) in zip(serial_out, batch_out):
        assert rb == r
        for k in ("accuracy", "test_accuracy", "params", "flops", "valid", "reason", "architecture", "actions"):
            assert ib[k] == info[k], k


@pytest.fixture(scope="module")
def local_ray():
    import ray  # in the dev install: a missing Ray is a failure, not a skip
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("backend", ["inline", "process", "ray"])
def test_backends_give_the_serial_rewards(backend, serial, request):
    if backend == "ray":
        request.getfixturevalue("local_ray")
    acts, serial_out = serial
    flops = [info["flops"] for _, info in serial_out[:4]]
    assert flops != sorted(flops, reverse=True)  # so the workers' longest-first order differs from the batch's
    workers = 1 if backend == "inline" else 2
    options = {} if backend == "inline" else {"threads": 1}
    env = make_digits_env(cache=False, backend=backend, workers=workers, backend_options=options)
    try:
        out = env.unwrapped.evaluate_many(acts)
        _check_equal(serial_out, out)
        assert out[-1][1]["cached"]  # the repeat was evaluated once
        assert env.unwrapped.backend.name == backend
        _check_equal(serial_out[:1], [play(env, acts[0])])  # step() goes through the backend too
    finally:
        env.close()


def test_four_workers_never_duplicate(tmp_path, digits_teacher):
    """Four processes sharing one cache, asked for overlapping students: each trained once."""
    cache = tmp_path / "results.sqlite"
    env = make_digits_env(cache=str(cache))
    acts = random_actions(env.unwrapped, 3, seed=1)
    archs = [env.unwrapped.student_architecture(a) for a in acts]
    backend = make_backend("process", env.unwrapped.evaluator, workers=4, threads=1)
    try:
        # every worker gets every student, in a rotated order: maximal contention
        futures = [backend.submit(archs[(i + w) % 3], "tiny", 0) for w in range(4) for i in range(3)]
        results = [f.result() for f in futures]
    finally:
        backend.close()
        env.close()
    distinct = {a.canonical_hash() for a in archs}
    assert all(r.valid for r in results)
    assert sum(not r.cached for r in results) == len(distinct)
    assert len(ResultCache(cache)) == len(distinct)


def test_async_vector_env_shares_cache_and_claims(tmp_path, digits_teacher):
    cache = str(tmp_path / "results.sqlite")
    kwargs = dict(protocol="tiny", teacher_recipe=dict(SMALL_DIGITS_RECIPE), progress=False, device="cpu",
                  cache=cache)
    probe = make_digits_env(cache=False)
    (acts,) = random_actions(probe.unwrapped, 1, seed=2)
    reward, _ = play(probe, acts)
    probe.close()
    envs = gym.make_vec(n2n_gym.DEFAULT_ENV_ID, num_envs=2, vectorization_mode="async", **kwargs)
    try:
        envs.reset(seed=0)
        for a in acts:  # both envs build the same student at the same time
            _, rewards, terms, _, infos = envs.step(np.array([a, a]))
        assert terms.all()
        assert list(rewards) == [reward, reward]
        assert sorted(infos["cached"].tolist()) == [False, True]
    finally:
        envs.close()


def test_n2n_batched_rewards_equal_serial(digits_teacher):
    def run(batch_eval: bool) -> list[float]:
        args = Args(protocol="tiny", updates="2,1", rollouts=3, seed=0, device="cpu", progress=False,
                    batch_eval=batch_eval, env_kwargs={"teacher_recipe": dict(SMALL_DIGITS_RECIPE),
                                                       "progress": False, "cache": False})
        return [(r["reward"], r["architecture"], r["test_accuracy"]) for r in N2N(args).run()]

    batched, one_by_one = run(True), run(False)
    assert len(batched) >= 9 and batched == one_by_one  # >= 9: the proposal step resamples repeats


def test_bad_backend_arguments_are_named():
    with pytest.raises(ValueError, match="backend must be one of"):
        make_digits_env(backend="dask")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        make_digits_env(workers=0)
    with pytest.raises(ValueError, match="backend 'inline' runs one worker"):  # at make, not at the first reward
        make_digits_env(cache=False, workers=2)


def test_lazy_test_accuracy_same_rewards_and_measured_on_demand(tmp_path, serial):

    acts, serial_out = serial
    cache = str(tmp_path / "r.sqlite")
    lazy = make_digits_env(cache=cache, test_accuracy="lazy")
    try:
        out = lazy.unwrapped.evaluate_many(acts[:2])
        assert [r for r, _ in out] == [r for r, _ in serial_out[:2]]
        assert all(math.isnan(info["test_accuracy"]) for _, info in out)
        # measured on demand: the retrained student is the evaluated one
        assert lazy.unwrapped.student_test_accuracy(acts[0]) == serial_out[0][1]["test_accuracy"]
    finally:
        lazy.close()
    eager = make_digits_env(cache=cache)  # shares the cache: fills in the lazily stored result
    try:
        (r, info), = eager.unwrapped.evaluate_many(acts[1:2])
        assert info["cached"] and r == serial_out[1][0]
        assert info["test_accuracy"] == serial_out[1][1]["test_accuracy"]
    finally:
        eager.close()
    with pytest.raises(ValueError, match="test_accuracy must be one of"):
        make_digits_env(test_accuracy="never")


@pytest.mark.parametrize("bad", [[99] * 9, ["a"] * 9, [0.5] * 9])
def test_evaluate_many_checks_actions_like_step(bad):
    env = make_digits_env(cache=False)
    with pytest.raises(ValueError, match="outside the action space"):
        env.unwrapped.evaluate_many([bad])


def test_process_backend_in_an_unguarded_script_fails_fast_and_says_why(tmp_path, digits_teacher):
    # spawn imports the script again in each worker; without the __main__ guard the workers
    # would make pools of their own: they refuse, and the parent reports it instead of hanging
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import gymnasium as gym, n2n_gym
        env = gym.make("N2N-DigitsNet-Digits-v0", protocol="tiny", backend="process", workers=2, cache=False,
                       teacher_recipe={dict(SMALL_DIGITS_RECIPE)!r})
        u = env.unwrapped
        u.evaluate_many([[1] * u.num_layers])
    """))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env=subprocess_env(TMPDIR=str(tmp_path)), cwd=tmp_path)
    assert proc.returncode != 0 and time.monotonic() - start < 300
    assert "a worker process of the 'process' backend died" in proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr.splitlines()[-1]
    assert not list(tmp_path.glob("n2n-evaluator-*"))  # the pickled evaluator the workers read is removed


@pytest.mark.parametrize("workers, error", [("2", TypeError), (2.5, TypeError), (True, TypeError), (0, ValueError)])
def test_workers_are_checked_at_make(workers, error):
    with pytest.raises(error, match="workers"):
        gym.make("N2N-DigitsNet-Digits-v0", backend="process", workers=workers)


def test_inline_backend_with_several_workers_fails_at_make():
    with pytest.raises(ValueError, match="backend 'inline' runs one worker"):
        gym.make("N2N-DigitsNet-Digits-v0", workers=2)


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


def test_a_dead_ray_actor_is_replaced_and_no_result_is_dropped(digits_teacher, local_ray):
    from n2n_gym.evaluation.backends import RayBackend

    ray = local_ray  # the module's Ray instance: a second ray.init in one process fails
    env = make_digits_env(cache=False)
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
        env.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_async_vector_env_forked_after_two_thread_torch_ops_does_not_hang(digits_teacher):
    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads(2)
        a = torch.randn(256, 256)
        (a @ a).sum()  # the parent's OpenMP pool is up
        import gymnasium as gym
        import n2n_gym
        envs = gym.make_vec(n2n_gym.DEFAULT_ENV_ID, num_envs=2, vectorization_mode="async", protocol="tiny",
                            device="cpu", cache=False, progress=False, teacher_recipe={SMALL_DIGITS_RECIPE!r})
        assert envs.unwrapped.context is None or envs.unwrapped.context == "fork"
        envs.reset(seed=0)
        done = False
        while not done:
            _, reward, term, trunc, _ = envs.step([0, 0])
            done = bool(term.any())
        envs.close()
        print("finished", reward)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                          env=subprocess_env(OMP_NUM_THREADS="2"))
    assert proc.returncode == 0 and "finished" in proc.stdout, proc.stderr[-2000:]


def test_pickled_evaluators_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / f"{BLOB_PREFIX}{_dead_pid()}-abc.pkl"
    alive = tmp_path / f"{BLOB_PREFIX}{os.getpid()}-def.pkl"
    other = tmp_path / "n2n-evaluator-notes.pkl"
    for p in (dead, alive, other):
        p.write_bytes(b"x")
    assert remove_stale_blobs(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and alive.exists() and other.exists()


# ---------------------------------------------------------------------------- workers
_POOL_PARENT = """
import sys, numpy as np
from conftest import make_digits_env
from n2n_gym.evaluation.backends import ProcessBackend
env = make_digits_env(cache=False)
env.reset(seed=0)
arch = env.unwrapped.student_architecture([int(np.flatnonzero(m)[0]) for m in env.unwrapped.layer_masks()])
backend = ProcessBackend(env.unwrapped.evaluator, workers=1, threads=1)
backend.evaluate_many([(arch, "tiny", 0)])  # the worker is up
print(*backend._pool._processes, flush=True)
sys.stdin.read()  # until killed
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except FileNotFoundError:
        return True


def test_process_pool_workers_exit_with_a_killed_parent(digits_teacher):
    """Issue 21 (remaining 8): the workers of a killed process-pool run trained on."""
    import subprocess
    import sys

    from conftest import subprocess_env

    proc = subprocess.Popen([sys.executable, "-c", _POOL_PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=subprocess_env(), cwd=pathlib.Path(__file__).parents[1])
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert workers and not any(_gone(p) for p in workers)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while not all(_gone(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(p) for p in workers), "a worker outlived its killed parent"
    finally:
        proc.kill()


class CountingCache(ResultCache):
    """The real SQLite cache, counting its reads."""

    gets = 0

    def get(self, key):
        CountingCache.gets += 1
        return super().get(key)


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_a_student_is_looked_up_in_the_cache_once_before_its_claim(backend, tmp_path, digits_teacher):
    """The backend's batch looks each student up once; the evaluator then reads the row only
    under the claim (another process may have stored it while this one waited), not with a
    second lookup before it (which it did). A hit costs one read."""
    env = make_digits_env(cache=False)
    env.reset(seed=0)
    masks = env.unwrapped.layer_masks()
    student = env.unwrapped.student_architecture([int(np.flatnonzero(m)[0]) for m in masks])
    evaluator = env.unwrapped.evaluator
    evaluator.cache = CountingCache(tmp_path / "results.sqlite")
    pool = make_backend(backend, evaluator, workers=1, **({"threads": 1} if backend == "process" else {}))
    try:
        CountingCache.gets = 0
        first = pool.evaluate_many([(student, "tiny", 0)])[0]
        assert first.valid and not first.cached
        assert CountingCache.gets == 1  # the batch's lookup; the claim reads the row itself
        CountingCache.gets = 0
        again = pool.evaluate_many([(student, "tiny", 0)])[0]
        assert again.cached and CountingCache.gets == 1
    finally:
        pool.close()
        env.close()


def test_an_interrupted_pool_stops_its_running_work(digits_teacher, digits_data, tmp_path):
    """Ctrl-C (or an error) inside ``with ProcessBackend(...)`` stops the workers at once: on
    exit it waited for every running call (a break-it pass: `kill -INT` of compress went on with
    the whole side-by-side final distillation). The calls' checkpoints stay."""
    from n2n_gym.evaluation.backends import ProcessBackend
    from n2n_gym.evaluation.evaluator import Evaluator
    from n2n_gym.evaluation.final import final_distill

    arch = digits_teacher.architecture
    checkpoint = tmp_path / "long.ckpt"
    with pytest.raises(KeyboardInterrupt):
        with ProcessBackend(Evaluator(digits_teacher, digits_data), workers=1) as pool:
            future = pool.call(final_distill, arch, 100_000, 1e-3, 0, "inherit", checkpoint)
            deadline = time.monotonic() + 300
            while not checkpoint.exists():  # an epoch done: the worker is deep in its call
                assert time.monotonic() < deadline and not future.done()
                time.sleep(0.1)
            processes = list(pool._pool._processes.values())
            raise KeyboardInterrupt
    assert processes and not any(p.is_alive() for p in processes)
    assert future.done() and checkpoint.exists()
