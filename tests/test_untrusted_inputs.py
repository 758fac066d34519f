"""Issue 21, what a break-it pass found after the first fixes: data from outside the process
(cache rows and claims, results files, record fields) is checked where it is read, and every
output location is checked before the first evaluation. Each test is built from one example
of the pass and from others of the same kind."""

from __future__ import annotations

import json
import math
import sqlite3
import time

import numpy as np
import pytest
from conftest import make_digits_env

from n2n_gym.evaluation.cache import MAX_CLAIM_TTL, CacheRowWarning, ResultCache


# ---------------------------------------------------------------------------- the result cache
def _play(env, actions) -> dict:
    """The terminal info of one episode of ``actions``."""
    env.reset()
    return [env.step(a) for a in actions][-1][-1]


@pytest.fixture(scope="module")
def cached_env(digits_teacher, tmp_path_factory):
    """A digits env with a private cache file and one student evaluated in it: (env, path, actions, info)."""
    env = make_digits_env(cache=str(tmp_path_factory.mktemp("untrusted-cache") / "cache.sqlite"))
    env.reset(seed=0)
    narrowest = [int(np.flatnonzero(m)[0]) for m in env.unwrapped.layer_masks()]
    first = _play(env, narrowest)
    assert first["valid"] and not first["cached"]
    yield env, env.unwrapped.evaluator.cache.path, narrowest, first
    env.close()


def _sql(path, statement: str, *args) -> None:
    con = sqlite3.connect(path)
    with con:
        con.execute(statement, args)
    con.close()


def _edit(**change):
    def fn(text):
        return json.dumps({**json.loads(text), **change})
    return fn


@pytest.mark.parametrize("damage", [
    pytest.param(lambda t: "[" * 100_000 + "]" * 100_000, id="nested-100000-deep"),
    pytest.param(lambda t: '{"a":' * 50_000 + "1" + "}" * 50_000, id="nested-objects"),
    pytest.param(lambda t: '{"seconds": ' + "9" * 5000 + "}", id="5000-digit-int"),
    pytest.param(_edit(seconds=1e308), id="seconds-1e308"),
    pytest.param(_edit(valid=False, reward=-1.0, reason="x"), id="invalid-with-accuracy"),
    pytest.param(_edit(valid=False, reward=-1.0, accuracy=0.0, test_accuracy=0.0, reason=""), id="invalid-no-reason"),
    pytest.param(_edit(reason="diverged"), id="valid-with-a-reason"),
])
def test_a_cache_row_from_outside_is_a_miss_never_an_error_or_a_number(cached_env, damage):
    """Issue 21 (remaining 7 and "also"): a deep-nested row raised RecursionError out of step();
    seconds=1e308 and an invalid row with accuracy > 0 were served."""
    env, path, actions, first = cached_env
    con = sqlite3.connect(path)
    with con:
        for key, value in con.execute("SELECT key, value FROM results").fetchall():
            con.execute("UPDATE results SET value=? WHERE key=?", (damage(value), key))
    con.close()
    with pytest.warns(CacheRowWarning, match="damaged"):
        info = _play(env, actions)
    assert info["valid"] and not info["cached"]
    assert (info["reward"], info["accuracy"]) == (first["reward"], first["accuracy"])
    assert _play(env, actions)["cached"]  # stored again, sound


@pytest.mark.parametrize("expires", [1e300, "never", b"\x00", None, -5.0], ids=["1e300", "text", "blob", "null",
                                                                               "expired"])
@pytest.mark.parametrize("pid", [1, 2 ** 62], ids=["live-pid", "huge-pid"])
def test_a_hostile_claim_row_is_stale_and_never_blocks(tmp_path, expires, pid):
    """Issue 21 (remaining 4): a claims row with expires=1e300 (or text) made step() hang forever.
    Rows of another host and of a live pid (1) are what a real live owner would write."""
    cache = ResultCache(tmp_path / "c.sqlite")
    cache.claim("warm")  # creates the tables
    _sql(cache.path, "DROP TABLE claims")  # expires NOT NULL would refuse the null row: a file of any schema
    _sql(cache.path, "CREATE TABLE claims(key TEXT PRIMARY KEY, owner TEXT, host TEXT, pid INTEGER, expires)")
    _sql(cache.path, "INSERT INTO claims VALUES (?, ?, ?, ?, ?)", "k", "evil", "elsewhere", pid, expires)
    start = time.monotonic()
    assert cache.claim_owner("k") is None
    with cache.claimed("k") as hit:
        assert hit is None  # ours: the hostile claim was stale
    assert time.monotonic() - start < 5


def test_a_live_claim_still_makes_others_wait(tmp_path):
    """The other side: a claim a live owner holds within MAX_CLAIM_TTL is honoured."""
    cache = ResultCache(tmp_path / "c.sqlite")
    assert cache.claim("k", ttl=60) is not None
    other = ResultCache(cache.path)
    assert other.claim("k") is None and other.claim_owner("k") is not None
    with pytest.raises(TimeoutError):
        other.wait("k", timeout=0.2)
    with pytest.raises(ValueError, match="ttl"):
        cache.claim("j", ttl=MAX_CLAIM_TTL * 2)
    with pytest.raises(ValueError, match="ttl"):
        cache.claim("j", ttl=math.nan)
