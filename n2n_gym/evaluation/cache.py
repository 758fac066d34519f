"""Persistent result cache for expensive student evaluations.

The cache is a single SQLite file in WAL mode.  It is safe to use from several
processes at once (each process opens its own connection, reopened after a
fork) and survives a process being killed in the middle of a write: every
``put`` is one transaction, so a reader sees either the old or the new value,
never a partial one.

Claims (:meth:`ResultCache.claim`, :meth:`ResultCache.claimed`) make an
evaluation in flight visible to every process sharing the file, so that no two
workers compute the same key: the second waits for the first's result.  A claim
names its owner (host, pid) and expires unless its owner renews it (a
heartbeat thread does, every third of ``ttl``), so a crashed worker's claim
lapses after ``ttl`` seconds and another worker takes the key over; a claim
whose owner is a process of this machine that has died is taken over at once.

A stored row that is not a JSON object is a miss (:class:`CacheRowWarning`, the
row dropped and the result computed again); :mod:`n2n_gym.evaluation` checks the
values of a row the same way before it serves one.

This module deliberately depends only on the standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import socket
import sqlite3
import threading
import time
import urllib.parse
import uuid
import warnings
from typing import Any, Callable, Iterator, TypeVar

from n2n_gym.utils.files import cache_key, default_cache_dir

__all__ = [
    "CLAIM_TTL",
    "CacheCorruptError",
    "CacheRowWarning",
    "MAX_CLAIM_TTL",
    "NullCache",
    "ResultCache",
    "cache_key",
    "default_cache_dir",
]

_T = TypeVar("_T")

#: Seconds SQLite's own busy handler waits for a lock before giving up.
_SQLITE_TIMEOUT = 60.0
#: Extra attempts after SQLite reports "database is locked"/"busy".
_LOCK_RETRIES = 10

#: Seconds a claim lives without a heartbeat: a crashed worker's evaluation is
#: taken over this long after its last heartbeat.
CLAIM_TTL = 30.0
#: The longest ``ttl`` a claim may have. Claims rows are data from outside the process (any
#: program can write the file): one whose expiry is not a number, or further ahead than this,
#: was not written by a live owner of ours and is stale, so a hostile row cannot hang a waiter.
MAX_CLAIM_TTL = 3600.0
# SQL condition of a claims row that is over: expired, or an expiry no owner of ours writes
_STALE_CLAIM = "(typeof(expires) NOT IN ('real', 'integer') OR expires<? OR expires>?)"

# Connections inherited across a fork are never closed in the child: closing
# them there could interfere with the parent's locks / WAL state.  They are
# kept here so garbage collection does not close them either.
_ABANDONED: list[sqlite3.Connection] = []


def pid_dead(pid: int) -> bool:
    """Whether no process of this machine has the id ``pid`` (signal 0 probes without sending)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # (OverflowError: no pid is that large)
        return True
    except OSError:  # it exists (PermissionError: another user's)
        return False
    return False


def _owner_dead(host: str | None, pid: int | None) -> bool:
    """Whether a claim's owner is a process of this machine that no longer runs (a claim of
    another host, whose processes cannot be seen from here, lapses after its ``ttl``)."""
    return host == socket.gethostname() and isinstance(pid, int) and pid > 0 and pid_dead(pid)


class CacheCorruptError(RuntimeError):
    """The cache file exists but is not a usable SQLite database."""


class CacheRowWarning(RuntimeWarning):
    """A stored result is damaged (not JSON, wrong types, impossible values): it is a miss."""


def _is_lock_error(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` means the file is damaged / not SQLite (vs. a transient error)."""
    if _is_lock_error(exc):
        return False
    msg = str(exc).lower()
    if not isinstance(exc, sqlite3.OperationalError):
        return True  # "file is not a database", "database disk image is malformed", ...
    return any(s in msg for s in ("malformed", "not a database", "encrypted", "no such column", "has no column named"))


#: The tables of a result cache and their columns: a file whose tables differ (another program's
#: SQLite file, or ours edited) is refused with CacheCorruptError, not used.
_SCHEMA = {"results": ("key", "value", "created"), "claims": ("key", "owner", "host", "pid", "expires")}


class ResultCache:
    """Key -> JSON-dict store backed by SQLite, multi-process and crash safe."""

    path: pathlib.Path

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        """Open (creating if needed) the cache at ``path``.

        ``None`` means ``default_cache_dir() / "results.sqlite"``.  Raises
        :class:`CacheCorruptError` if the file is not a valid SQLite database.
        """
        if path is None:
            self.path = default_cache_dir() / "results.sqlite"
        else:
            self.path = pathlib.Path(path).expanduser()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot create the folder of the result cache {str(self.path)!r}: "
                                         f"{exc.strerror}; pass a writable path or cache=False") from exc
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._closed = False
        self.readonly = False  # True: opened read-only (see _open_readonly); put() stores nothing
        self._connection()  # open eagerly so errors surface at construction

    # ------------------------------------------------------------------ setup
    def _corrupt(self, exc: BaseException) -> CacheCorruptError:
        return CacheCorruptError(
            f"result cache at {str(self.path)!r} is corrupted or not an SQLite "
            f"database ({exc}). It only holds cached results and can safely be "
            f"deleted (also remove any '-wal'/'-shm' files next to it)."
        )

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                str(self.path),
                timeout=_SQLITE_TIMEOUT,
                isolation_level=None,  # autocommit; transactions are explicit
                check_same_thread=False,  # guarded by self._lock
            )
        except sqlite3.OperationalError as exc:
            raise self._unusable(exc) from exc
        try:
            self._retry(lambda: self._init_schema(conn))
        except sqlite3.OperationalError as exc:
            conn.close()
            readonly = self._open_readonly() if self.path.is_file() and not _is_lock_error(exc) else None
            if readonly is None:
                raise self._unusable(exc) from exc
            return readonly
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_readonly(self) -> sqlite3.Connection | None:
        """A read-only cache (read-only folder or file system) still serves what it holds:
        opened ``immutable`` (SQLite then needs no -shm/-wal file), new results are not
        stored (warned once). None when the file cannot be read that way either."""
        uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute("SELECT 1 FROM results LIMIT 1").fetchall()
        except sqlite3.DatabaseError:
            return None
        self.readonly = True
        warnings.warn(f"result cache {str(self.path)!r} is not writable: it serves the results it holds, new "
                      f"results are not stored (make it writable, or set N2N_CACHE to a writable folder)",
                      UserWarning, stacklevel=5)
        return conn

    def _unusable(self, exc: sqlite3.OperationalError) -> sqlite3.OperationalError:
        """SQLite's own message ("unable to open database file", "database or disk is full",
        "attempt to write a readonly database") with the path and the fix."""
        msg = str(exc)
        if "full" in msg.lower():
            fix = "free disk space there, or pass cache=<path elsewhere> / cache=False"
        else:
            fix = ("make the folder and file writable, or set N2N_CACHE / pass cache=<a writable path> "
                   "(cache=False: no cache)")
        return sqlite3.OperationalError(f"result cache {str(self.path)!r}: {msg}; {fix}")

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        try:
            # If WAL is unavailable (odd filesystems) SQLite keeps its rollback
            # journal, which is still atomic; so the result is not checked.
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS results("
                "key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS claims("
                "key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT, pid INTEGER, expires REAL NOT NULL)"
            )
            for table, columns in _SCHEMA.items():
                have = [row[1] for row in conn.execute(f"PRAGMA table_info({table})").fetchall()]
                if have != list(columns):
                    raise CacheCorruptError(
                        f"result cache at {str(self.path)!r} is not an n2n-gym result cache: its table {table!r} "
                        f"has the columns ({', '.join(map(str, have))[:200]}), not ({', '.join(columns)}). It only "
                        "holds cached results: delete it (and any '-wal'/'-shm' files next to it), or pass "
                        "cache=<another path> / cache=False")
        except sqlite3.DatabaseError as exc:
            if _is_corruption(exc):
                raise self._corrupt(exc) from exc
            raise

    def _connection(self) -> sqlite3.Connection:
        """The connection for the current process, (re)opened as needed."""
        if self._closed:
            raise ValueError(f"result cache {str(self.path)!r} is closed")
        pid = os.getpid()
        if self._conn is None or self._pid != pid:
            if self._conn is not None:
                _ABANDONED.append(self._conn)  # inherited over fork: don't touch
            self._conn = None
            self._conn = self._open()
            self._pid = pid
        return self._conn

    def _retry(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn``, retrying with backoff while the database is locked."""
        delay = 0.05
        for attempt in range(_LOCK_RETRIES + 1):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc) or attempt == _LOCK_RETRIES:
                    raise
            time.sleep(delay * (1.0 + random.random()))
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)`` under the lock with lock-retry and corruption mapping."""
        with self._lock:
            conn = self._connection()
            try:
                return self._retry(lambda: fn(conn))
            except sqlite3.DatabaseError as exc:
                if _is_corruption(exc):
                    raise self._corrupt(exc) from exc
                if isinstance(exc, sqlite3.OperationalError) and not _is_lock_error(exc):
                    raise self._unusable(exc) from exc
                raise

    # -------------------------------------------------------------- interface
    def get(self, key: str) -> dict | None:
        """Return the stored dict for ``key`` or ``None`` if absent. A row that is not a JSON
        object (damaged on disk, written by other code) is a miss: it is dropped, with a
        :class:`CacheRowWarning`, so that the result is computed and stored again."""
        row = self._run(lambda c: c.execute("SELECT value FROM results WHERE key=?", (key,)).fetchone())
        return None if row is None else self._parsed(key, row[0])

    def _parsed(self, key: str, blob: Any) -> dict | None:
        try:
            value = json.loads(blob)
        except (TypeError, ValueError) as exc:  # JSONDecodeError, bytes that are not UTF-8, a 5000-digit int
            problem = f"not JSON: {exc}"
        except RecursionError:  # nested deeper than the parser's stack: nothing this cache wrote
            problem = "JSON nested too deep"
        else:
            if isinstance(value, dict):
                return value
            problem = f"a JSON {type(value).__name__}, not an object"
        self.discard(key, problem)
        return None

    def discard(self, key: str, problem: str = "") -> None:
        """Drop the stored result of ``key`` (a damaged row: ``problem`` says what is wrong
        with it, in a :class:`CacheRowWarning`); the next request computes it again."""
        if problem:
            warnings.warn(f"{self.path}: the cached result {key[:12]} is damaged ({problem}); it is ignored and "
                          "computed again", CacheRowWarning, stacklevel=3)
        if not self.readonly:
            self._run(lambda c: c.execute("DELETE FROM results WHERE key=?", (key,)))

    def put(self, key: str, value: dict) -> None:
        """Store ``value`` (JSON-serialised) under ``key``, replacing any old value."""
        blob = json.dumps(value)  # serialise first: a bad value never opens a transaction
        if self.readonly:
            return
        now = time.time()

        def _put(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT OR REPLACE INTO results(key, value, created) VALUES (?, ?, ?)",
                    (key, blob, now),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        self._run(_put)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        row = self._run(lambda c: c.execute("SELECT 1 FROM results WHERE key=?", (key,)).fetchone())
        return row is not None

    def __len__(self) -> int:
        return int(self._run(lambda c: c.execute("SELECT COUNT(*) FROM results").fetchone()[0]))

    def items(self) -> Iterator[tuple[str, dict]]:
        """Iterate over ``(key, value)`` pairs (a snapshot taken at call time)."""
        rows = self._run(lambda c: c.execute("SELECT key, value FROM results ORDER BY key").fetchall())
        for key, blob in rows:
            value = self._parsed(key, blob)
            if value is not None:
                yield key, value

    def keys(self) -> list[str]:
        """All stored keys."""
        rows = self._run(lambda c: c.execute("SELECT key FROM results ORDER BY key").fetchall())
        return [r[0] for r in rows]

    # ----------------------------------------------------------------- claims
    def claim(self, key: str, ttl: float = CLAIM_TTL) -> str | None:
        """Claim ``key`` for an evaluation: a token, or ``None`` when the result is
        already stored or another live owner holds the claim. Raises ``ValueError`` for a
        ``ttl`` outside ``(0, MAX_CLAIM_TTL]`` (a longer claim would read as stale to others).

        One transaction checks the result, drops an expired claim and inserts ours, so
        two processes never both get a token for the same key.
        """
        if not (isinstance(ttl, (int, float)) and 0 < ttl <= MAX_CLAIM_TTL):
            raise ValueError(f"ttl must be a number of seconds in (0, {MAX_CLAIM_TTL:g}], got {ttl!r}")
        if self.readonly:  # nothing can be written, so nothing is shared: the caller computes
            return "readonly"
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        now = time.time()

        def _claim(conn: sqlite3.Connection) -> str | None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("SELECT 1 FROM results WHERE key=?", (key,)).fetchone() is not None:
                    got = None
                else:
                    conn.execute(f"DELETE FROM claims WHERE key=? AND {_STALE_CLAIM}", (key, now, now + MAX_CLAIM_TTL))
                    held = conn.execute("SELECT host, pid FROM claims WHERE key=?", (key,)).fetchone()
                    if held is not None and _owner_dead(*held):  # its process is gone: take it over now
                        conn.execute("DELETE FROM claims WHERE key=?", (key,))
                    cur = conn.execute(
                        "INSERT OR IGNORE INTO claims(key, owner, host, pid, expires) VALUES (?, ?, ?, ?, ?)",
                        (key, token, socket.gethostname(), os.getpid(), now + ttl),
                    )
                    got = token if cur.rowcount == 1 else None
                conn.execute("COMMIT")
                return got
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return self._run(_claim)

    def renew(self, key: str, token: str, ttl: float = CLAIM_TTL) -> bool:
        """Extend our claim on ``key`` by ``ttl`` seconds; False if it is no longer ours."""
        if self.readonly:
            return True
        cur = self._run(lambda c: c.execute("UPDATE claims SET expires=? WHERE key=? AND owner=?",
                                            (time.time() + ttl, key, token)))
        return cur.rowcount == 1

    def release(self, key: str, token: str) -> None:
        """Drop our claim on ``key`` (a no-op if it expired and another owner took it)."""
        if self.readonly:
            return
        self._run(lambda c: c.execute("DELETE FROM claims WHERE key=? AND owner=?", (key, token)))

    def claim_owner(self, key: str) -> dict | None:
        """The live claim on ``key`` (``{"owner", "host", "pid", "expires"}``) or ``None``."""
        if self.readonly:
            return None
        now = time.time()
        row = self._run(lambda c: c.execute(f"SELECT owner, host, pid, expires FROM claims WHERE key=? AND NOT "
                                            f"{_STALE_CLAIM}", (key, now, now + MAX_CLAIM_TTL)).fetchone())
        if row is None or _owner_dead(row[1], row[2]):  # a dead process's claim is over at once
            return None
        return dict(zip(("owner", "host", "pid", "expires"), row))

    def wait(self, key: str, poll: float = 0.05, timeout: float | None = None) -> dict | None:
        """Wait while another owner's live claim on ``key`` stands: the stored result, or
        ``None`` once the claim is released or expired without one (claim it then)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            hit = self.get(key)
            if hit is not None or self.claim_owner(key) is None:
                return hit if hit is not None else self.get(key)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the claim on {key[:12]} did not end within {timeout} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    @contextlib.contextmanager
    def claimed(self, key: str, ttl: float = CLAIM_TTL) -> Iterator[dict | None]:
        """Claim ``key`` for the block, or wait for whoever holds it.

        Yields the stored result (no claim taken: the block must not compute), or
        ``None``: the key is ours until the block ends (a heartbeat thread renews the
        claim; the claim is released on exit, also on error, so waiters take over).
        """
        while True:
            token = self.claim(key, ttl)
            if token is not None:
                break
            hit = self.wait(key)
            if hit is not None:
                yield hit
                return
        stop = threading.Event()

        def _heartbeat() -> None:
            while not stop.wait(ttl / 3):
                with contextlib.suppress(sqlite3.Error, ValueError):
                    self.renew(key, token, ttl)

        beat = threading.Thread(target=_heartbeat, name=f"n2n-claim-{key[:8]}", daemon=True)
        beat.start()
        try:
            yield None
        finally:
            stop.set()
            beat.join()
            self.release(key, token)

    def close(self) -> None:
        """Close this process's connection; further use raises ``ValueError``."""
        with self._lock:
            if self._conn is not None:
                if self._pid == os.getpid():
                    self._conn.close()
                else:
                    _ABANDONED.append(self._conn)
            self._conn = None
            self._closed = True

    def __enter__(self) -> "ResultCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Picklable (e.g. for multiprocessing spawn): the receiver reopens.
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"ResultCache({str(self.path)!r})"


class NullCache:
    """Same interface as :class:`ResultCache` but stores nothing (``cache=False``)."""

    path: pathlib.Path | None = None

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None

    def get(self, key: str) -> dict | None:
        """Always ``None``."""
        return None

    def put(self, key: str, value: dict) -> None:
        """Discard ``value``."""

    def discard(self, key: str, problem: str = "") -> None:
        """Nothing is stored: nothing to drop."""

    def __contains__(self, key: object) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def items(self) -> Iterator[tuple[str, dict]]:
        """Empty iterator."""
        return iter(())

    def keys(self) -> list[str]:
        """Always empty."""
        return []

    def claim(self, key: str, ttl: float = CLAIM_TTL) -> str | None:
        """Always a token: nothing is shared, so nothing is claimed by others."""
        return "null"

    def renew(self, key: str, token: str, ttl: float = CLAIM_TTL) -> bool:
        return True

    def release(self, key: str, token: str) -> None:
        """No-op."""

    def claim_owner(self, key: str) -> dict | None:
        return None

    @contextlib.contextmanager
    def claimed(self, key: str, ttl: float = CLAIM_TTL) -> Iterator[dict | None]:
        """Always ours (yields ``None``): a process without a shared cache computes."""
        yield None

    def close(self) -> None:
        """No-op."""

    def __enter__(self) -> "NullCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "NullCache()"
