"""Crash-safe file writes, content digests and the cache-folder rule.

A reader sees the old file or the new one, never half.

A write goes to ``<name>.tmp<pid>`` next to the target, is fsynced, then renamed over it.
The temporary file is removed on any failure (full disk, kill by an exception, ...), and
:func:`remove_stale_temps` removes those of processes that died (``kill -9``) before.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import pathlib
import re
from typing import Any

import numpy as np

_TMP = re.compile(r"^(?P<name>.+)\.tmp(?P<pid>\d+)$")


def replace_atomically(path: pathlib.Path, write) -> None:
    """Call ``write(f)`` on a temporary binary file beside ``path``, fsync it, rename it over
    ``path``; on any error the temporary file is removed and ``path`` is untouched."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | IsADirectoryError):
            fix = ("free disk space or write elsewhere" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                   else "check the folder's permissions or write elsewhere")
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; {fix}") from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    replace_atomically(pathlib.Path(path), lambda f: f.write(text.encode()))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` crash-safely. Serialised in memory first, so that a full disk is an
    ``OSError`` naming ``path`` rather than a torch-internal error."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    replace_atomically(pathlib.Path(path), lambda f: f.write(buf.getbuffer()))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (``os.kill(pid, 0)``; another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[pathlib.Path]:
    """Remove the ``*.tmp<pid>`` files of :func:`atomic_write_text` / :func:`atomic_torch_save`
    in ``folder`` whose process is gone (a run killed mid-write); returns what was removed."""
    removed = []
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TMP.match(p.name)
        if m and p.is_file() and (int(m["pid"]) == os.getpid() or not pid_alive(int(m["pid"]))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CacheFolderError(OSError):
    """The n2n-gym cache folder (``$N2N_CACHE``, ...) cannot be made or written."""


def cache_dir_choice() -> tuple[pathlib.Path, str, str]:
    """``(folder, what chose it, how to write it portably)`` of the cache folder, not made:
    ``$N2N_CACHE`` if set, else ``$XDG_CACHE_HOME/n2n_gym``, else ``~/.cache/n2n_gym``."""
    env = os.environ.get("N2N_CACHE")
    if env:
        return pathlib.Path(env).expanduser(), "N2N_CACHE", "$N2N_CACHE"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return pathlib.Path(xdg).expanduser() / "n2n_gym", "XDG_CACHE_HOME", "$XDG_CACHE_HOME/n2n_gym"
    return pathlib.Path.home() / ".cache" / "n2n_gym", "the default ~/.cache/n2n_gym", "~/.cache/n2n_gym"


def default_cache_dir() -> pathlib.Path:
    """Return the cache directory, creating it if needed.

    ``$N2N_CACHE`` if set, else ``$XDG_CACHE_HOME/n2n_gym``, else
    ``~/.cache/n2n_gym``. Raises ``OSError`` naming the folder, the variable that chose it
    and the fix (:class:`CacheFolderError`, an ``OSError``) when it cannot be made. A folder
    that exists read-only is returned: a shared read-only cache serves what it holds (the
    result cache opens it read-only), and a writer says so where it writes.
    """
    d, source, _ = cache_dir_choice()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheFolderError(exc.errno, f"the n2n-gym cache folder {d} (from {source}) cannot be made or "
                                          f"written: {exc.strerror or exc}; set N2N_CACHE to a writable folder"
                               ) from exc
    return d


def cache_key(**parts: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of ``parts``.

    Canonical means sorted keys and compact separators, so the key does not
    depend on argument order.
    """
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def json_safe(value: Any) -> Any:
    """Numpy scalars/arrays to Python, tuples to lists, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "to_json"):
        return value.to_json()
    return str(value)
