"""Tests for n2n_gym.evaluation.cache (standard library only; no torch)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
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
