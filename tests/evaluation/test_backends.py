"""Evaluation backends, claims in the shared cache, batched and vectorised evaluation.

Small on purpose: the tiny protocol on the embedded digits env, 2 workers, a few students.
Rewards must equal the serial path's bit for bit (one torch thread everywhere).
"""

from __future__ import annotations

import os
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
from n2n_gym.evaluation.backends import make_backend
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


# ---------------------------------------------------------------------------- claims
def test_claim_is_exclusive_and_released(tmp_path):
    a, b = ResultCache(tmp_path / "c.sqlite"), ResultCache(tmp_path / "c.sqlite")
    token = a.claim("k")
    assert token is not None and b.claim("k") is None
    assert b.claim_owner("k")["pid"] == os.getpid()
    a.release("k", token)
    token_b = b.claim("k")
    assert token_b is not None
    b.put("k", {"v": 1})
    b.release("k", token_b)
    assert a.claim("k") is None  # a stored result is never claimed again


def test_expired_claim_is_taken_over(tmp_path):
    a, b = ResultCache(tmp_path / "c.sqlite"), ResultCache(tmp_path / "c.sqlite")
    assert a.claim("k", ttl=0.2) is not None
    assert b.claim("k") is None
    time.sleep(0.3)
    assert b.claim("k") is not None


def _claim_in_child(path, key: str, then: str) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import time, sys
        from n2n_gym.evaluation.cache import ResultCache
        c = ResultCache({str(path)!r})
        with c.claimed({key!r}, ttl=0.6) as hit:
            assert hit is None
            print("claimed", flush=True)
            time.sleep(1.5)
            {then}
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=subprocess_env())
    assert p.stdout.readline().strip() == "claimed"
    return p


def test_waiter_gets_the_claim_holders_result(tmp_path):
    path = tmp_path / "c.sqlite"
    child = _claim_in_child(path, "k", "c.put('k', {'by': 'child'})")
    with ResultCache(path).claimed("k") as hit:  # waits past several heartbeats (ttl 0.6 s, 1.5 s of work)
        assert hit == {"by": "child"}
    assert child.wait(30) == 0


def test_crashed_workers_claim_expires(tmp_path):
    path = tmp_path / "c.sqlite"
    child = _claim_in_child(path, "k", "pass")
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    start = time.monotonic()
    with ResultCache(path).claimed("k") as hit:
        assert hit is None  # ours now: the dead owner's claim lapsed
    assert time.monotonic() - start < 10


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


# ---------------------------------------------------------------------------- benchmarks at tiny scale
def test_gpu_eval_runs_on_cpu(tmp_path, digits_teacher):
    import json

    from n2n_gym.benchmarks import gpu_eval

    out = gpu_eval.main(["--device", "cpu", "--protocol", "tiny", "--students", "2", "--warmup", "1",
                         "--env-kwargs", json.dumps({"teacher_recipe": SMALL_DIGITS_RECIPE}),
                         "--out", str(tmp_path / "g.json")])
    assert out["students"] == 2 and out["students_per_hour"] > 0
    assert 0 < out["fraction_of_peak"] and out["peak_source"].startswith("measured")
    assert json.loads((tmp_path / "g.json").read_text())["device"] == "cpu"


def test_throughput_benchmark_tiny(tmp_path, digits_teacher):
    import json

    from n2n_gym.benchmarks import throughput

    out = throughput.main(["--protocol", "tiny", "--parts", "a,d", "--repeats", "1", "--images", "64", "--epochs", "1",
                           "--lever-students", "1", "--env-kwargs", json.dumps({"teacher_recipe": SMALL_DIGITS_RECIPE}),
                           "--out", str(tmp_path / "t")])
    assert set(out["distill"]["median_images_per_s"]) == {"project_aug", "reference_aug", "project_noaug",
                                                          "reference_noaug", "project_shared"}
    assert out["distill"]["speedup_shared_logits"] > 0
    assert out["levers"]["students"] == 1 and all(v > 0 for v in out["levers"]["seconds"].values())
    assert (tmp_path / "t.png").exists() and (tmp_path / "t.json").exists()


def test_lazy_test_accuracy_same_rewards_and_measured_on_demand(tmp_path, serial):
    import math

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
