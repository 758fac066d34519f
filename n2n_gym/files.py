"""Crash-safe file writes and hashing: a reader sees the old file or the new one, never half."""

from __future__ import annotations

import hashlib
import os
import pathlib


def _replace_atomically(path: pathlib.Path, write) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    _replace_atomically(pathlib.Path(path), lambda f: f.write(text.encode()))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch

    _replace_atomically(pathlib.Path(path), lambda f: torch.save(obj, f))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
