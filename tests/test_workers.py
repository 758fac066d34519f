"""Forked and dead workers (issue 21, kind 5): an async vector env forked from a process that
ran torch on two threads does not hang; a claim whose owner process died is taken over at
once; the pickled evaluator of a killed process pool does not stay in the temp folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from conftest import SMALL_DIGITS_RECIPE, subprocess_env

from n2n_gym.evaluation.backends import BLOB_PREFIX, remove_stale_blobs
from n2n_gym.evaluation.cache import ResultCache


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


def test_a_claim_of_a_dead_process_is_taken_over_at_once(tmp_path):
    path = tmp_path / "c.sqlite"
    claimer = textwrap.dedent(f"""
        import os
        from n2n_gym.evaluation.cache import ResultCache
        assert ResultCache({str(path)!r}).claim("k", ttl=60.0)
        os._exit(0)  # killed: no release, no heartbeat
    """)
    subprocess.run([sys.executable, "-c", claimer], check=True, env=subprocess_env(), timeout=120)
    cache = ResultCache(path)
    start = time.monotonic()
    with cache.claimed("k") as hit:  # the owner's pid is dead: no wait for the 60 s ttl
        assert hit is None
    assert time.monotonic() - start < 5
    # a live owner (this process) is still respected
    token = cache.claim("k2", ttl=60.0)
    assert token and cache.claim("k2") is None and cache.claim_owner("k2")["pid"] == os.getpid()
    cache.release("k2", token)
    cache.close()


def test_pickled_evaluators_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / f"{BLOB_PREFIX}{_dead_pid()}-abc.pkl"
    alive = tmp_path / f"{BLOB_PREFIX}{os.getpid()}-def.pkl"
    other = tmp_path / "n2n-evaluator-notes.pkl"
    for p in (dead, alive, other):
        p.write_bytes(b"x")
    assert remove_stale_blobs(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and alive.exists() and other.exists()
