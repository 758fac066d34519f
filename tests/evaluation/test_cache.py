"""n2n_gym.evaluation.cache: the SQLite result cache (round trips, concurrent writers, kills, corrupt
files, read-only caches; rows from outside are a miss, never an error or a number) and the claims
that keep workers from computing a student twice (hostile claim rows are stale, never blocking)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import make_digits_env, subprocess_env

from n2n_gym.evaluation.cache import MAX_CLAIM_TTL, CacheRowWarning

REPO = pathlib.Path(__file__).resolve().parents[2]


# the cache module imports no torch (nor does ``import n2n_gym``): these tests stay light
from n2n_gym.evaluation import cache as cache_mod  # noqa: E402

ResultCache = cache_mod.ResultCache


NullCache = cache_mod.NullCache


CacheCorruptError = cache_mod.CacheCorruptError


# Prelude for child processes: same direct loading of the module file.
_CHILD_PRELUDE = textwrap.dedent(
    """
    import sys
    from n2n_gym.evaluation import cache
    """
)


def _child(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", _CHILD_PRELUDE + textwrap.dedent(code), *args]


# --------------------------------------------------------------------- basics
def test_round_trip_len_contains_overwrite(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sub" / "dir" / "c.sqlite"
    with ResultCache(path) as c:
        assert c.path == path and path.exists()
        assert c.get("missing") is None
        assert "missing" not in c
        assert len(c) == 0
        c.put("a", {"acc": 0.5, "nested": {"x": [1, 2, 3]}})
        c.put("b", {"acc": 0.25})
        assert c.get("a") == {"acc": 0.5, "nested": {"x": [1, 2, 3]}}
        assert "a" in c and "b" in c and 3 not in c
        assert len(c) == 2
        c.put("a", {"acc": 0.75})
        assert c.get("a") == {"acc": 0.75}
        assert len(c) == 2
        assert dict(c.items()) == {"a": {"acc": 0.75}, "b": {"acc": 0.25}}
        with pytest.raises(TypeError):
            c.put("bad", {"x": object()})
        assert "bad" not in c and len(c) == 2
    # persistent across reopen
    with ResultCache(path) as c2:
        assert c2.get("b") == {"acc": 0.25}
        assert len(c2) == 2
    with pytest.raises(ValueError):
        c2.get("b")


def test_schema_and_pragmas(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.sqlite"
    ResultCache(path).put("k", {"v": 1})
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = [(r[1], r[2], r[5]) for r in con.execute("PRAGMA table_info(results)")]
        assert cols == [("key", "TEXT", 1), ("value", "TEXT", 0), ("created", "REAL", 0)]
        key, value, created = con.execute("SELECT key, value, created FROM results").fetchone()
        assert key == "k" and json.loads(value) == {"v": 1} and abs(created - time.time()) < 60
    finally:
        con.close()


def test_cache_key_canonical() -> None:
    k1 = cache_mod.cache_key(a=1, b={"y": 2, "x": [1, 2]})
    k2 = cache_mod.cache_key(b={"x": [1, 2], "y": 2}, a=1)
    assert k1 == k2 and len(k1) == 64 and int(k1, 16) >= 0
    assert cache_mod.cache_key(a=1) != cache_mod.cache_key(a=2)
    import hashlib

    assert cache_mod.cache_key(b=1, a="x") == hashlib.sha256(b'{"a":"x","b":1}').hexdigest()


def test_default_cache_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("N2N_CACHE", str(tmp_path / "explicit"))
    assert cache_mod.default_cache_dir() == tmp_path / "explicit"
    assert (tmp_path / "explicit").is_dir()
    with ResultCache() as c:
        assert c.path == tmp_path / "explicit" / "results.sqlite"
        c.put("k", {"v": 1})
    monkeypatch.delenv("N2N_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_mod.default_cache_dir() == tmp_path / "xdg" / "n2n_gym"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_mod.default_cache_dir() == tmp_path / "home" / ".cache" / "n2n_gym"
    assert (tmp_path / "home" / ".cache" / "n2n_gym").is_dir()


def test_null_cache() -> None:
    with NullCache() as c:
        c.put("a", {"x": 1})
        assert c.get("a") is None
        assert "a" not in c
        assert len(c) == 0
        assert list(c.items()) == []


# ---------------------------------------------------------------- processes
def test_value_written_by_subprocess_is_read(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.sqlite"
    parent = ResultCache(path)  # open before the child writes
    parent.put("from_parent", {"who": "parent"})
    code = """
        c = cache.ResultCache(sys.argv[1])
        assert c.get("from_parent") == {"who": "parent"}
        c.put("from_child", {"who": "child", "pid": __import__("os").getpid()})
        c.close()
    """
    subprocess.run(_child(code, str(path)), cwd=REPO, check=True, timeout=60)
    got = parent.get("from_child")
    assert got is not None and got["who"] == "child"
    assert len(parent) == 2
    parent.close()


def test_concurrent_writers(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.sqlite"
    n_procs, n_puts = 4, 200
    code = """
        c = cache.ResultCache(sys.argv[1])
        w = int(sys.argv[2])
        for i in range(int(sys.argv[3])):
            c.put(f"{w}-{i}", {"w": w, "i": i})
            if i % 50 == 0:
                c.get(f"{w}-{i}")
                len(c)
        c.close()
    """
    procs = [
        subprocess.Popen(_child(code, str(path), str(w), str(n_puts)), cwd=REPO)
        for w in range(n_procs)
    ]
    for p in procs:
        assert p.wait(timeout=60) == 0
    with ResultCache(path) as c:
        assert len(c) == n_procs * n_puts
        for w in range(n_procs):
            for i in range(n_puts):
                assert c.get(f"{w}-{i}") == {"w": w, "i": i}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_reopens_after_fork(tmp_path: pathlib.Path) -> None:
    c = ResultCache(tmp_path / "c.sqlite")
    c.put("before", {"v": 0})
    pid = os.fork()
    if pid == 0:  # child: must transparently open its own connection
        code = 1
        try:
            ok = c.get("before") == {"v": 0}
            c.put("child", {"v": 1})
            code = 0 if ok and c._pid == os.getpid() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert c.get("child") == {"v": 1}
    c.put("after", {"v": 2})
    assert len(c) == 3
    c.close()


def test_survives_kill_mid_write(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.sqlite"
    code = """
        import hashlib
        c = cache.ResultCache(sys.argv[1])
        blob = "x" * 200_000
        i = 0
        while True:
            payload = blob + str(i)
            c.put(f"k{i % 300}", {"i": i, "n": len(payload), "payload": payload,
                                  "sha": hashlib.sha256(payload.encode()).hexdigest()})
            if i == 20:
                print("ready", flush=True)
            i += 1
    """
    proc = subprocess.Popen(
        _child(code, str(path)), cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        assert proc.poll() is None, "writer exited early"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    import hashlib

    with ResultCache(path) as c:
        con = sqlite3.connect(path)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            con.close()
        n = 0
        for key, value in c.items():
            assert value["n"] == len(value["payload"])
            assert hashlib.sha256(value["payload"].encode()).hexdigest() == value["sha"]
            assert key == f"k{value['i'] % 300}"
            n += 1
        assert n == len(c) and n > 20
        c.put("after_kill", {"ok": True})
        assert c.get("after_kill") == {"ok": True}


# ------------------------------------------------------------------ corrupt
def test_corrupt_file_raises_clear_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"this is definitely not an sqlite database\n" * 200)
    with pytest.raises(CacheCorruptError) as ei:
        ResultCache(path)
    msg = str(ei.value)
    assert str(path) in msg and "delete" in msg.lower()
    assert isinstance(ei.value, RuntimeError)


def test_damaged_sqlite_file_raises_clear_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "results.sqlite"
    with ResultCache(path) as c:
        for i in range(200):
            c.put(f"k{i}", {"v": "y" * 1000})
    # scribble over everything after the header
    data = bytearray(path.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)
    path.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError) as ei:
        c = ResultCache(path)
        len(c)
        list(c.items())
    assert str(path) in str(ei.value)


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


def test_result_cache_errors_name_the_path_and_the_fix(tmp_path):
    import sqlite3

    blocked = tmp_path / "results.sqlite"
    blocked.mkdir()  # unopenable even for root
    with pytest.raises(sqlite3.OperationalError, match=f"result cache '{blocked}': unable to open database file; "
                                                       "make the folder and file writable"):
        ResultCache(blocked)
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(OSError, match=f"cannot create the folder of the result cache '{afile}/r.sqlite'"):
        ResultCache(afile / "r.sqlite")


_PLAY_CACHED = """
import json, sys, warnings
sys.path.insert(0, {tests!r})
from conftest import make_digits_env
env = make_digits_env(stage="remove")
env.reset(seed=0)
done = False
while not done:
    _, reward, done, _, info = env.step(1)
print(json.dumps({{"reward": reward, "cached": info["cached"], "valid": info["valid"]}}))
"""


def _read_only_command(folder: pathlib.Path, view: pathlib.Path) -> list[str] | None:
    """A command prefix that runs with ``folder`` read-only at ``view``: chmod for a normal
    user; for root (whom chmod does not stop) a read-only bind mount in a private mount
    namespace. None where neither is possible."""
    import shutil

    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
        view.symlink_to(folder)
        return []
    if shutil.which("unshare") is None:
        return None
    view.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {folder} {view} && ! touch {view}/w"],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro {folder} {view} && exec "$@"', "sh"]


def test_a_read_only_cache_serves_everything_it_holds(digits_teacher, n2n_cache_dir, tmp_path):
    import shutil

    from conftest import subprocess_env

    cache = tmp_path / "cache"
    shutil.copytree(n2n_cache_dir / "teachers", cache / "teachers",
                    ignore=shutil.ignore_patterns("*.lock", "*.partial"))
    script = _PLAY_CACHED.format(tests=str(pathlib.Path(__file__).parents[1]))
    env = subprocess_env(N2N_CACHE=str(cache))
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    want = json.loads(first.stdout.splitlines()[-1])
    assert want["valid"] and not want["cached"]
    before = sorted(p.relative_to(cache) for p in cache.rglob("*") if not p.name.endswith((".lock", "-wal", "-shm")))
    prefix = _read_only_command(cache, tmp_path / "ro")
    if prefix is None:
        pytest.skip("cannot make a folder read-only here (root without mount namespaces)")
    second = subprocess.run(prefix + [sys.executable, "-c", script], env=subprocess_env(N2N_CACHE=str(tmp_path / "ro")),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    got = json.loads(second.stdout.splitlines()[-1])
    assert got == {**want, "cached": True}
    assert "is not writable: it serves the results it holds" in second.stderr
    after = sorted(p.relative_to(cache) for p in cache.rglob("*") if not p.name.endswith((".lock", "-wal", "-shm")))
    assert after == before


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


# ---------------------------------------------------------------------------- the result cache
def _play_actions(env, actions) -> dict:
    """The terminal info of one episode of ``actions``."""
    env.reset()
    return [env.step(a) for a in actions][-1][-1]


@pytest.fixture(scope="module")
def cached_env_with_one_student(digits_teacher, tmp_path_factory):
    """A digits env with a private cache file and one student evaluated in it: (env, path, actions, info)."""
    env = make_digits_env(cache=str(tmp_path_factory.mktemp("untrusted-cache") / "cache.sqlite"))
    env.reset(seed=0)
    narrowest = [int(np.flatnonzero(m)[0]) for m in env.unwrapped.layer_masks()]
    first = _play_actions(env, narrowest)
    assert first["valid"] and not first["cached"]
    yield env, env.unwrapped.evaluator.cache.path, narrowest, first
    env.close()


def _sql(path, statement: str, *args) -> None:
    con = sqlite3.connect(path)
    with con:
        con.execute(statement, args)
    con.close()


def _edit_row(**change):
    def fn(text):
        return json.dumps({**json.loads(text), **change})
    return fn


@pytest.mark.parametrize("damage", [
    pytest.param(lambda t: "[" * 100_000 + "]" * 100_000, id="nested-100000-deep"),
    pytest.param(lambda t: '{"a":' * 50_000 + "1" + "}" * 50_000, id="nested-objects"),
    pytest.param(lambda t: '{"seconds": ' + "9" * 5000 + "}", id="5000-digit-int"),
    pytest.param(_edit_row(seconds=1e308), id="seconds-1e308"),
    pytest.param(_edit_row(valid=False, reward=-1.0, reason="x"), id="invalid-with-accuracy"),
    pytest.param(_edit_row(valid=False, reward=-1.0, accuracy=0.0, test_accuracy=0.0, reason=""), id="invalid-no-reason"),
    pytest.param(_edit_row(reason="diverged"), id="valid-with-a-reason"),
    # break-it 21 F10: a poisoned "invalid" row with a 10 MB reason was served (info["reason"] 10 MB)
    pytest.param(_edit_row(valid=False, reward=-1.0, accuracy=0.0, test_accuracy=0.0, reason="A" * 10_000_000),
                 id="invalid-10MB-reason"),
    pytest.param(_edit_row(valid=False, reward=-1.0, accuracy=0.0, test_accuracy=0.0, reason="\x1b[2J\x1b[31mpwned"),
                 id="invalid-ansi-reason"),
    # break-it 3 #1: a non-number measured accuracy raised TypeError out of step(); #3: one on an
    # uncalibrated protocol's row was served as the measurement
    pytest.param(_edit_row(measured_accuracy="0.5"), id="measured-accuracy-text"),
    pytest.param(_edit_row(measured_accuracy=[0.5]), id="measured-accuracy-list"),
    pytest.param(_edit_row(measured_accuracy=1.5), id="measured-accuracy-above-1"),
    pytest.param(_edit_row(measured_accuracy=0.3), id="measured-accuracy-uncalibrated"),
])
def test_a_cache_row_from_outside_is_a_miss_never_an_error_or_a_number(cached_env_with_one_student, damage):
    """Issue 21 (remaining 7 and "also"): a deep-nested row raised RecursionError out of step();
    seconds=1e308 and an invalid row with accuracy > 0 were served."""
    env, path, actions, first = cached_env_with_one_student
    con = sqlite3.connect(path)
    with con:
        for key, value in con.execute("SELECT key, value FROM results").fetchall():
            con.execute("UPDATE results SET value=? WHERE key=?", (damage(value), key))
    con.close()
    with pytest.warns(CacheRowWarning, match="damaged"):
        info = _play_actions(env, actions)
    assert info["valid"] and not info["cached"]
    assert (info["reward"], info["accuracy"]) == (first["reward"], first["accuracy"])
    assert _play_actions(env, actions)["cached"]  # stored again, sound


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


@pytest.mark.parametrize("tables", [
    ["DROP TABLE results", "CREATE TABLE results(a, b)"],  # the break-it example
    ["DROP TABLE claims", "CREATE TABLE claims(key TEXT PRIMARY KEY, owner TEXT)"],
    ["ALTER TABLE results ADD COLUMN extra TEXT"],
])
def test_a_cache_file_with_another_schema_is_refused_naming_the_file_and_the_fix(tmp_path, tables):
    """Break-it 21 F10: a results table of other columns made step() raise OperationalError ("no
    such column: value") with advice about permissions. It is not our cache: CacheCorruptError at
    open, naming the file and the fix; the file is left as it is."""
    path = tmp_path / "results.sqlite"
    cache_mod.ResultCache(path).close()
    for statement in tables:
        _sql(path, statement)
    before = path.read_bytes()
    with pytest.raises(cache_mod.CacheCorruptError, match="not an n2n-gym result cache") as exc:
        cache_mod.ResultCache(path)
    message = str(exc.value)
    assert str(path) in message and "delete it" in message and "writable" not in message
    assert path.read_bytes() == before


def test_a_schema_changed_under_an_open_cache_is_a_corrupt_cache_not_a_permission_error(tmp_path):
    path = tmp_path / "results.sqlite"
    cache = cache_mod.ResultCache(path)
    cache.put("k", {"x": 1})
    _sql(path, "DROP TABLE results")
    _sql(path, "CREATE TABLE results(a, b)")
    with pytest.raises(cache_mod.CacheCorruptError, match=str(path)) as exc:
        cache.get("k")
    assert "writable" not in str(exc.value)
    cache.close()


def test_a_failure_reason_is_bounded_and_plain_text():
    from n2n_gym.evaluation.evaluator import MAX_REASON_CHARS, EvalResult

    r = EvalResult(False, "\x1b[31m" + "x" * 10_000, 0.0, 0.0, 1, 1, -1.0, 0.0)
    assert len(r.reason) == MAX_REASON_CHARS and "\x1b" not in r.reason and r.reason.endswith("…")
