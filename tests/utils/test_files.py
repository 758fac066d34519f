"""n2n_gym.utils.files: crash-safe writes leave no temp file on a full disk; stale temp files of
killed writers are removed."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from n2n_gym.utils.files import atomic_torch_save, atomic_write_text, remove_stale_temps


# ---------------------------------------------------------------------------- F: edges
def test_atomic_writes_leave_no_temp_file_when_the_disk_is_full(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    for write in (lambda p: atomic_write_text(p, "x"), lambda p: atomic_torch_save({"a": 1}, p)):
        target = tmp_path / "state.pt"
        with pytest.raises(OSError, match=f"cannot write {target}: No space left on device; free disk space"):
            write(target)
        assert list(tmp_path.iterdir()) == []


def test_resume_removes_temp_files_of_a_killed_writer(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"state.pt.tmp{int(dead.stdout)}"
    live = tmp_path / f"history.jsonl.tmp{os.getppid()}"  # a running process: its write is in progress
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    (tmp_path / "state.pt").write_bytes(b"whole")
    assert remove_stale_temps(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["state.pt", live.name])


def test_an_unusable_cache_folder_is_a_clear_error_naming_n2n_cache(tmp_path, monkeypatch, capsys):
    """Issue 21 ("also"): an unwritable N2N_CACHE gave a traceback."""
    from n2n_gym.cli import main
    from n2n_gym.utils.files import CacheFolderError, default_cache_dir

    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("N2N_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(CacheFolderError, match="N2N_CACHE"):
        default_cache_dir()
    assert main(["bench", "--agent", "random", "--budget", "1", "--protocol", "tiny", "--no-progress",
                 "--results", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "(from N2N_CACHE) cannot be made or written" in err and "Traceback" not in err
