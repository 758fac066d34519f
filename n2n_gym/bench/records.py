"""Benchmark records: the budget every agent is held to, and the JSONL results file.

A benchmark run is one (env, agent, seed, budget). While it runs, a :class:`BudgetTracker`
watches the terminal ``info`` of every episode:

- the **budget** counts student *evaluations*: terminal infos with ``valid`` and not
  ``cached``. The runner gives every run a private result cache, so "not cached" means
  "a student this run had not evaluated before"; invalid students (cannot be built, not
  smaller than the teacher) cost nothing and do not count. Episodes and env steps are
  counted too, and a run also stops after ``max_episodes`` episodes (an agent that keeps
  proposing students it already evaluated would otherwise never exhaust its budget);
- the **anytime curve**: the best reward after each evaluation;
- the **best student** (highest reward, then fewest params), with what is needed to
  replay it: its actions and the env kwargs of the episode that produced it (stage,
  ratios, start architecture);
- a **table of evaluated students** (one row per evaluation).

At the end, :func:`make_record` turns the tracker into one JSON record (schema
:data:`SCHEMA_VERSION`, fields in :data:`REQUIRED_FIELDS`) and :func:`append_record`
appends it to the results file as one line: one ``os.write`` of the whole line on a file
opened with ``O_APPEND`` under a lock, then ``fsync``; a write that fails part-way (full
disk) is cut back, so it leaves no partial line. A run killed mid-write leaves at worst a
cut last line; :func:`read_records` skips lines that do not parse (with a warning), and the
next append starts on a fresh line, so the file stays valid JSONL for every reader that
skips a damaged line. The runner checks the results file before the first evaluation
(:func:`results_file_problem`: never a file of the user's that is not a results file) and
never loses a finished record (:func:`save_record`: a fallback file, said in one line).

FLOPs follow ``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs per multiply-add
(:data:`FLOP_CONVENTION`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import math
import os
import pathlib
import platform
import stat
import subprocess
import sys
import tempfile
import uuid
import warnings
from typing import Iterable, Iterator

import gymnasium as gym

from n2n_gym.envs.wrappers import (  # noqa: F401  (re-exported: the budget lives in the library)
    STUDENT_COLUMNS,
    BudgetExhausted,
    BudgetTracker,
    BudgetWrapper,
    json_safe,
    private_cache,
    replay_kwargs_of,
    resolve_device,
)
from n2n_gym.ir.arch import FLOP_CONVENTION
from n2n_gym.ir.encoding import STAGES

TrackedEnv = BudgetWrapper  # the name the first records' code used

#: Why a run stopped (``budget.stop_reason``).
STOP_REASONS = ("budget", "max_episodes", "max_seconds", "agent_finished")
#: The most torch threads a record may ask a checking machine for.
MAX_THREADS = 256

FORMAT = "n2n-gym-bench"
SCHEMA_VERSION = 1

#: Fields every record has (validate checks them).
REQUIRED_FIELDS = (
    "format", "schema_version", "run_id", "created", "env_id", "env_version", "package_version", "git_commit",
    "teacher", "data_variant", "protocol", "eval_seed", "agent", "hparams", "seed", "stage", "env_kwargs",
    "budget", "best", "flop_convention", "curve", "students",
)

#: Env kwargs that only change how a run executes, never a result; records leave them out.
RUNTIME_KWARGS = ("cache", "progress", "device", "render_mode", "data_root")


# ---------------------------------------------------------------------------- the file
def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` to the JSONL file ``path`` as one line. The line is one ``os.write``
    on a file opened with ``O_APPEND`` under an exclusive lock, then ``fsync``; if the write
    fails part-way (a full disk, a file size limit), the file is cut back to its old length
    before the error is raised, so no partial line is ever left by a failed write (a kill
    mid-write can still cut the last line, which readers skip and the next append starts
    after)."""
    import fcntl

    line = json.dumps(json_safe(record), allow_nan=False, separators=(",", ":")).encode("utf-8") + b"\n"
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_file():
        raise OSError(errno.EINVAL, _NOT_REGULAR.format(path=path))
    # O_NONBLOCK: a FIFO put at the path since would block the open until a reader came
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, _NOT_REGULAR.format(path=path))
        fcntl.flock(fd, fcntl.LOCK_EX)  # writers of one file append one after the other
        size = os.fstat(fd).st_size
        if size:  # a line cut by an earlier kill: start ours on a fresh line
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = b"\n" + line
        try:
            written = os.write(fd, line)
            while written < len(line):  # a short write: finish it, or fail with the reason
                n = os.write(fd, line[written:])
                if n == 0:
                    raise OSError(28, "short write (no space left?)")
                written += n
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):  # (not a regular file: nothing to cut back)
                os.ftruncate(fd, size)  # no cut line: the file is as it was
            raise
    finally:
        os.close(fd)


_NOT_REGULAR = "{path} is not a regular file (a FIFO, device or socket): records go to a regular file"
#: Folders of the kernel's pseudo file systems: their files look writable and take no record.
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")


def results_file_problem(path: str | os.PathLike) -> str | None:
    """Why the results file ``path`` cannot take records (None: it can), known before any
    run: a folder, not a regular file (a FIFO would block, /dev/full fails every write), a
    file of the kernel's (:data:`SYSTEM_FOLDERS`), an unwritable file or folder (a file is
    really created there and removed, as ``os.access`` is true for root on anything), or a
    file of the user's that is not a results file (its first line is not an n2n-gym record),
    which is never written to."""
    path = pathlib.Path(path)
    real = path.resolve()
    if any(real == pathlib.Path(d) or pathlib.Path(d) in real.parents for d in SYSTEM_FOLDERS):
        return f"{path} is in {real.parts[0]}{real.parts[1]}, a folder of the kernel's, not a place for a results file"
    if path.is_dir():
        return f"{path} is a folder, not a results file"
    if path.exists():
        if not path.is_file():
            return _NOT_REGULAR.format(path=path)
        if path.stat().st_size and not _holds_records(path):
            return (f"{path} is not a results file of n2n-gym (none of its first lines is a record): it is left "
                    "untouched; pass another --results")
        if not os.access(path, os.W_OK):
            return f"{path} is not writable"
        return None
    return output_folder_problem(path.parent, f"cannot create {path}")


def _holds_records(path: pathlib.Path, lines: int = 5) -> bool:
    """Whether one of the first non-empty ``lines`` lines of ``path`` is an n2n-gym record
    (the first may be cut by a kill) or the file is empty / unreadable here (then the write
    itself tells)."""
    seen = 0
    try:
        with open(path, "rb") as f:
            while seen < lines:
                line = f.readline(MAX_LINE_BYTES + 1)  # bounded: one huge line is not a record file
                if not line:
                    return seen == 0
                if not line.strip():
                    continue
                seen += 1
                with contextlib.suppress(ValueError):
                    head = json.loads(line)
                    if isinstance(head, dict) and head.get("format") == FORMAT:
                        return True
    except OSError:
        return True
    return False


def output_folder_problem(folder: str | os.PathLike, what: str = "cannot write the output folder") -> str | None:
    """Why files cannot be written in ``folder`` (made if missing): None when they can."""
    folder = pathlib.Path(folder).resolve()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{what}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{what}: {existing} is not a writable folder"
    try:  # really create a file: access() says yes to root on read-only mounts and pseudo file systems
        fd, probe = tempfile.mkstemp(prefix=".n2n-gym-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"{what}: no file can be created in {existing} ({exc.strerror or exc})"
    return None


def fallback_records_path(path: str | os.PathLike) -> pathlib.Path:
    """Where a record goes when ``path`` cannot take it: ``unsaved-records/`` in the n2n-gym
    cache folder (``$N2N_CACHE``), else in the temp folder."""
    from n2n_gym.utils.files import default_cache_dir

    name = pathlib.Path(path).name or "results.jsonl"
    try:
        folder = default_cache_dir() / "unsaved-records"
    except OSError:
        folder = pathlib.Path(tempfile.gettempdir()) / "n2n-gym-unsaved-records"
    return folder / name


def save_record(path: str | os.PathLike, record: dict, out=None) -> pathlib.Path | None:
    """Append ``record`` to ``path``; if that fails (a full disk, a path gone read-only), to
    :func:`fallback_records_path`, saying so in one line on ``out`` (stderr); if that fails
    too, the line itself is printed there. A finished record is never lost silently.
    Returns the file that holds it (None: only printed)."""
    out = out or sys.stderr
    try:
        append_record(path, record)
        return pathlib.Path(path)
    except OSError as exc:
        why = exc.strerror or str(exc)
    other = fallback_records_path(path)
    for target in (other, pathlib.Path(tempfile.gettempdir()) / f"n2n-gym-record-{record.get('run_id', 'x')}.jsonl"):
        try:
            append_record(target, record)
        except OSError:
            continue
        print(f"could not write the record to {path} ({why}); it was written to {target} instead", file=out,
              flush=True)
        return target
    print(f"could not write the record to {path} ({why}) nor to {other}; here it is: "
          + json.dumps(json_safe(record), separators=(",", ":")), file=out, flush=True)
    return None


def iter_records(path: str | os.PathLike, *, strict: bool = False) -> Iterator[dict]:
    """The records of one JSONL file. Lines that do not parse (a run killed mid-write)
    are skipped with a warning, or raise ``ValueError`` with ``strict``; a file that cannot
    be read raises ``OSError``."""
    for where, record, error in scan_records(path):
        if record is not None:
            yield record
            continue
        if "#" not in where:  # the file itself
            raise OSError(f"{where}: {error}")
        msg = f"{where}: skipping a line that is {error}"
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)


def read_records(paths: str | os.PathLike | Iterable[str | os.PathLike], *, strict: bool = False) -> list[dict]:
    """All records of one or several JSONL files (damaged lines skipped)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[dict] = []
    for p in paths:
        out.extend(iter_records(p, strict=strict))
    return out


#: The longest line of a results file that is read as a record (a record is kilobytes, a few
#: megabytes with a large students table); a longer line is "not a record", skipped without
#: being held in memory or parsed (parsing costs about 13 times a line's length).
MAX_LINE_BYTES = 32 << 20


def _lines(f) -> Iterator[bytes | None]:
    """The lines of a binary file, each at most :data:`MAX_LINE_BYTES` (None for a longer one,
    read past in chunks)."""
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) <= MAX_LINE_BYTES:
            yield raw
            continue
        while raw and not raw.endswith(b"\n"):  # the rest of the long line, a chunk at a time
            raw = f.readline(1 << 20)
        yield None


def scan_records(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[tuple[str, dict | None, str]]:
    """Every non-empty line of the JSONL files as ``(where, record, error)``: ``where`` is
    ``path#line``; ``record`` is None and ``error`` says why when the line is cut, is not
    JSON or not a JSON object, is longer than :data:`MAX_LINE_BYTES` (32 MiB; not parsed, nor
    held in memory), or the file cannot be read. Readers that must not pass
    damage silently (``validate``, the leaderboard) use this instead of :func:`read_records`."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        try:
            f = open(path, "rb")
        except OSError as exc:
            yield f"{path}", None, f"cannot read the file: {exc.strerror or exc}"
            continue
        with f:
            for n, raw in enumerate(_lines(f), 1):
                if raw is None:
                    yield (f"{path}#{n}", None, f"over {MAX_LINE_BYTES >> 20} MiB (a record is kilobytes, "
                           "megabytes with a large students table): not a record, not parsed")
                    continue
                text = raw.strip()
                if not text:
                    continue
                try:
                    record = json.loads(text)
                except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int of > 4300 digits
                    yield f"{path}#{n}", None, f"not valid JSON (a line cut by a kill?): {str(exc)[:200]}"
                    continue
                except RecursionError:
                    yield f"{path}#{n}", None, "JSON nested deeper than Python's parser goes: not a record"
                    continue
                problem = data_problem(record)
                if not isinstance(record, dict):
                    yield f"{path}#{n}", None, f"not a JSON object but {type(record).__name__}"
                elif problem:
                    yield f"{path}#{n}", None, problem
                else:
                    yield f"{path}#{n}", record, ""


#: How deep a record's JSON nests (a record nests 5 levels) and how large its integers are
#: (seeds, params, FLOPs fit in 64 bits): beyond, a line is not a record, whatever it holds.
MAX_DEPTH = 32
MAX_INT = 2 ** 63 - 1


def data_problem(value) -> str | None:
    """Why the parsed JSON ``value`` cannot be a record's data (None: it can): nested deeper
    than :data:`MAX_DEPTH`, or an integer beyond +-:data:`MAX_INT` (a float conversion of
    it overflows). Walked without recursion, so no line can exhaust the stack."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
            return f"an integer of {v.bit_length()} bits (records hold integers below 2**63): not a record"
        if isinstance(v, (dict, list)):
            if depth >= MAX_DEPTH:
                return f"JSON nested deeper than {MAX_DEPTH} levels: not a record"
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return None


def _nonfinite(value, where: str = "") -> list[str]:
    """Paths of the NaN / infinite floats in ``value`` (json.loads accepts NaN and Infinity)."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [where or "."]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nonfinite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nonfinite(v, f"{where}[{i}]")]
    return []


def _is_int(v, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _rel_close(a: float, b: float, tol: float = 1e-12) -> bool:
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


def record_errors(record: dict, *, students: bool = True) -> list[str]:
    """What a record asserts that contradicts itself, without replaying anything: the schema,
    non-finite values, the types of agent / seed / teacher, the budget counts, the anytime
    curve, the table of evaluated students (columns, indices, duplicate students, each
    row's reward recomputed with :func:`n2n_gym.evaluation.reward.n2n_reward` and its compression)
    and the best student against that table (``students=False``: records without their
    table, as logged to W&B). Empty when consistent."""
    from n2n_gym.evaluation.reward import n2n_reward

    problem = data_problem(record)  # records of W&B and callers come without scan_records' check
    if problem:
        return [problem]
    errors = schema_errors(record)
    if errors:
        return errors
    bad = _nonfinite(record)
    if bad:
        return [f"non-finite value(s) at {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"]
    if not isinstance(record["agent"], str) or not record["agent"]:
        errors.append(f"agent {record['agent']!r} is not a name")
    for name in ("seed", "eval_seed"):
        if not _is_int(record[name]):
            errors.append(f"{name} {record[name]!r} is not an integer >= 0")
    teacher = record["teacher"] if isinstance(record["teacher"], dict) else {}
    sha = teacher.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        errors.append(f"teacher.sha256 is missing or not a sha256 ({sha!r}): the teacher cannot be checked")
    t_acc, t_params = teacher.get("val_accuracy"), teacher.get("params")
    if not (_is_num(t_acc) and 0 < t_acc <= 1):
        errors.append(f"teacher.val_accuracy {t_acc!r} is not a fraction in (0, 1]")
    if not _is_int(t_params, 1):
        errors.append(f"teacher.params {t_params!r} is not a positive integer")
    best, budget = record["best"], record["budget"] if isinstance(record["budget"], dict) else {}
    if not _is_num(best.get("reward")):
        errors.append(f"best.reward {best.get('reward')!r} is not a number")
    if not isinstance(best.get("actions"), list) or not all(_is_int(a) for a in best["actions"]):
        errors.append("best.actions is not a list of actions (integers >= 0)")

    counts = {k: budget.get(k) for k in ("requested", "evaluations", "episodes", "env_steps", "cached_episodes",
                                         "invalid_episodes")}
    wrong = [k for k, v in counts.items() if not _is_int(v)]
    if wrong:
        return errors + [f"budget.{', budget.'.join(wrong)} missing or not integers >= 0"]
    ev, ep = counts["evaluations"], counts["episodes"]
    parallel = budget.get("parallel", 1)  # envs stepped together (SB3 n_envs); absent in older records
    if not _is_int(parallel, 1):
        errors.append(f"budget.parallel {parallel!r} is not an integer >= 1")
    elif ev > counts["requested"] + parallel - 1:
        errors.append(f"budget: {ev} evaluations exceed the {counts['requested']} requested"
                      + (f" plus the {parallel - 1} that {parallel} envs stepped together may add" if parallel > 1 else ""))
    if ev > ep or ev + counts["cached_episodes"] + counts["invalid_episodes"] < ep:
        errors.append(f"budget: {ev} evaluations, {counts['cached_episodes']} cached and "
                      f"{counts['invalid_episodes']} invalid episodes do not add up to {ep} episodes")
    if counts["env_steps"] < ep:
        errors.append(f"budget: {counts['env_steps']} env steps for {ep} episodes")
    trained = budget.get("trainings")  # (records before issue 21 lack it)
    if trained is not None and not _is_int(trained):
        errors.append(f"budget.trainings {trained!r} is not an integer >= 0")
    elif trained is not None and trained > ev + counts["invalid_episodes"]:
        errors.append(f"budget: {trained} students were trained during the run, but only {ev} evaluations (and "
                      f"{counts['invalid_episodes']} invalid episodes) were counted: students were trained outside "
                      "the budget (env.unwrapped.evaluator, a copy or a second env, student_test_accuracy)")
    stop, cap = budget.get("stop_reason"), budget.get("max_episodes")
    if stop is not None and stop not in STOP_REASONS:
        errors.append(f"budget.stop_reason {str(stop)[:40]!r} is not one of {list(STOP_REASONS)}")
    if stop == "budget" and ev < counts["requested"]:
        errors.append(f"budget: stop_reason 'budget' after {ev} of {counts['requested']} evaluations")
    if cap is not None and not _is_int(cap, 1):
        errors.append(f"budget.max_episodes {cap!r} is not an integer >= 1")
    elif stop == "max_episodes" and (cap is None or ep < cap):
        errors.append(f"budget: stop_reason 'max_episodes' after {ep} episodes, but the cap is {cap!r}")
    stages = record["stage"].split(",") if isinstance(record["stage"], str) else [record["stage"]]
    if record["stage"] is not None and not all(st in STAGES for st in stages):
        errors.append(f"stage {str(record['stage'])[:40]!r} is not one of {list(STAGES)} (or a comma-separated list)")
    if best.get("stage") is not None and best["stage"] not in STAGES:
        errors.append(f"best.stage {str(best['stage'])[:40]!r} is not one of {list(STAGES)}")

    curve = (record["curve"] or {}).get("best_reward") if isinstance(record["curve"], dict) else None
    if not isinstance(curve, list) or not all(_is_num(c) for c in curve):
        return errors + ["curve.best_reward is not a list of numbers"]
    if len(curve) != ev:
        errors.append(f"the anytime curve has {len(curve)} points for {ev} evaluations")
    if any(b < a for a, b in zip(curve, curve[1:])):
        errors.append("the anytime curve (best reward so far) decreases")
    if curve and _is_num(best.get("reward")) and not _rel_close(curve[-1], best["reward"]):
        errors.append(f"the anytime curve ends at {curve[-1]!r}, not at the best reward {best['reward']!r}")

    if not students:
        return errors
    students = record["students"] if isinstance(record["students"], dict) else {}
    if students.get("columns") != list(STUDENT_COLUMNS):
        return errors + [f"students.columns {students.get('columns')!r} are not {list(STUDENT_COLUMNS)}"]
    rows = students.get("data")
    if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == len(STUDENT_COLUMNS) for r in rows):
        return errors + [f"students.data is not a list of rows of {len(STUDENT_COLUMNS)} values"]
    if len(rows) != ev:
        errors.append(f"the students table has {len(rows)} rows for {ev} evaluations")
    col = {c: i for i, c in enumerate(STUDENT_COLUMNS)}
    seen: dict[str, int] = {}
    constrained = bool((record["env_kwargs"] or {}).get("constraints")) if isinstance(record["env_kwargs"], dict) \
        else False
    for i, row in enumerate(rows, 1):
        r = dict(zip(STUDENT_COLUMNS, row))
        if r["evaluation"] != i:
            errors.append(f"student row {i}: evaluation index {r['evaluation']!r}, expected {i}")
        if not (_is_int(r["params"], 1) and _is_num(r["reward"]) and _is_num(r["accuracy"])):
            errors.append(f"student row {i}: params / reward / accuracy are not numbers")
            continue
        if r["arch_hash"] in seen:
            errors.append(f"student row {i} duplicates row {seen[r['arch_hash']]} (arch {str(r['arch_hash'])[:12]}): "
                          f"a student is evaluated once per run")
        seen.setdefault(r["arch_hash"], i)
        if _is_int(t_params, 1) and _is_num(r["compression"]) and not _rel_close(r["compression"],
                                                                                t_params / r["params"]):
            errors.append(f"student row {i}: compression {r['compression']!r} is not teacher params / params "
                          f"({t_params / r['params']!r})")
        if not constrained and _is_num(t_acc) and t_acc > 0 and _is_int(t_params, 1):
            want = n2n_reward(student_params=r["params"], teacher_params=t_params, student_accuracy=r["accuracy"],
                              teacher_accuracy=t_acc).value
            if not _rel_close(r["reward"], want):
                errors.append(f"student row {i}: reward {r['reward']!r} is not R = Rc * Ra = {want!r} of its params "
                              f"and accuracy")
    rewards = [r[col["reward"]] for r in rows if _is_num(r[col["reward"]])]
    running = -math.inf
    for i, (c, rw) in enumerate(zip(curve, rewards), 1):
        running = max(running, rw)
        if c < running:
            errors.append(f"the anytime curve at evaluation {i} ({c!r}) is below the student reward {running!r}")
            break
    h = best.get("arch_hash")
    if h in seen and _is_num(best.get("reward")) and not constrained:
        got = rows[seen[h] - 1][col["reward"]]
        if got != best["reward"]:
            errors.append(f"best.reward {best['reward']!r} differs from its student row's {got!r}")
    if rewards and not constrained and _is_num(best.get("reward")) and max(rewards) > best["reward"]:
        errors.append(f"a student row has reward {max(rewards)!r}, above best.reward {best['reward']!r}")
    return errors


def schema_errors(record: dict) -> list[str]:
    """What is missing or malformed in ``record`` (empty when it follows the schema)."""
    errors = [f"missing field {k!r}" for k in REQUIRED_FIELDS if k not in record]
    if record.get("format") not in (None, FORMAT):
        errors.append(f"format is {record.get('format')!r}, not {FORMAT!r}")
    if isinstance(record.get("schema_version"), int) and record["schema_version"] > SCHEMA_VERSION:
        errors.append(f"schema_version {record['schema_version']} is newer than this reader ({SCHEMA_VERSION})")
    best = record.get("best")
    if isinstance(best, dict):
        errors += [f"missing best.{k}" for k in ("reward", "actions", "architecture", "replay") if k not in best]
    elif "best" in record:
        errors.append("best is not an object")
    return errors


# ---------------------------------------------------------------------------- records are data
#: env kwargs a record may carry when it comes from someone else. Each value is plain data
#: checked here; anything that names code to import (``teacher_module``), a file or folder of
#: the checking machine (``teacher_checkpoint``, ``npz:`` data sets, ``data_root``, ``cache``,
#: a ``start_architecture`` path) or processes and clusters to start (``backend``, ``workers``,
#: ``backend_options``) is refused by :func:`untrusted_fields` before anything is constructed.
DATA_KWARGS = ("stage", "ratios", "start_architecture", "constraints", "penalty", "penalty_horizon",
               "episodes_per_update", "illegal_action", "min_width", "test_accuracy", "observation", "teacher",
               "dataset", "teacher_recipe", "allow_untrained_teacher")
#: what each refused env kwarg would make a checking machine do
REFUSED_KWARGS = {
    "teacher_module": "names code to import and call",
    "teacher_checkpoint": "names a file of the checking machine to load",
    "data_root": "names a folder of the checking machine",
    "cache": "names a file of the checking machine to write",
    "backend": "starts worker processes or joins a Ray cluster",
    "workers": "starts worker processes",
    "backend_options": "names a Ray cluster to join",
    "teacher_max_minutes": "lifts the checking machine's limit on teacher training",
}
#: the keys of ``best.replay`` (what replays the best student's episode)
REPLAY_KEYS = ("stage", "ratios", "start_architecture")
_MAX_TEXT = 1 << 20  # an architecture's JSON is kilobytes; a megabyte of text is not a record's


def untrusted_fields(record: dict) -> list[str]:
    """What in ``record`` would make a machine checking it import or call code, read or write
    its files, start processes or run without its limits: the env id and protocol must be
    n2n-gym's own, ``env_kwargs`` only :data:`DATA_KWARGS` with plain values, ``best.replay``
    only :data:`REPLAY_KEYS`, the thread count sane. Empty when the record is plain data.
    ``n2n-gym validate`` refuses a record with any (unless told the records are the user's own)."""
    from n2n_gym.data.datasets import DATASETS
    from n2n_gym.envs.registration import CUSTOM_ENV_ID, ENVS
    from n2n_gym.evaluation.protocols import PROTOCOLS
    from n2n_gym.ir.zoo import TEACHERS
    from n2n_gym.teachers.teacher import Recipe

    out = []
    env_id = record.get("env_id")
    if env_id not in ENVS and env_id != CUSTOM_ENV_ID:
        out.append(f"env_id {str(env_id)[:80]!r} is not an n2n-gym env (a 'module:Env' id would import the module)")
    if not isinstance(record.get("protocol"), str) or record["protocol"] not in PROTOCOLS:
        out.append(f"protocol {str(record.get('protocol'))[:80]!r} is not one of {sorted(PROTOCOLS)}")
    kwargs = record.get("env_kwargs")
    if not isinstance(kwargs, dict):
        return out + ["env_kwargs is not an object"]
    replay = (record.get("best") or {}).get("replay") if isinstance(record.get("best"), dict) else None
    if replay is not None and not isinstance(replay, dict):
        out.append("best.replay is not an object")
        replay = {}
    # the env id's own teacher and data set: a record may not change them (a teacher to train)
    own = dict(zip(("teacher", "dataset"), ENVS[env_id][:2])) if env_id in ENVS else {}
    items = [(f"env_kwargs.{k}", k, v) for k, v in kwargs.items()]
    items += [(f"best.replay.{k}", k, v) for k, v in (replay or {}).items()]
    for where, key, value in items:
        if where.startswith("best.replay.") and key not in REPLAY_KEYS:
            out.append(f"{where} is not one of {list(REPLAY_KEYS)}")
        elif key in REFUSED_KWARGS:
            out.append(f"{where} {REFUSED_KWARGS[key]} ({str(value)[:80]!r})")
        elif key not in DATA_KWARGS:
            out.append(f"{where} is not an env argument a record may carry ({', '.join(DATA_KWARGS)})")
        elif not _plain(value):
            out.append(f"{where} is not plain JSON data")
        elif key == "dataset" and value not in DATASETS:
            out.append(f"{where} {str(value)[:80]!r} is not a named data set ({', '.join(sorted(DATASETS))}); "
                       "an 'npz:' data set names a file of the checking machine")
        elif key == "teacher" and value not in TEACHERS:
            out.append(f"{where} {str(value)[:80]!r} is not a zoo teacher")
        elif key in ("teacher", "dataset") and value != own.get(key):
            out.append(f"{where} {str(value)[:80]!r} is not {env_id}'s own {key} ({own.get(key)!r}): it would "
                       "make the checking machine train another teacher (minutes to hours)")
        elif key == "start_architecture" and value is not None and not (
                isinstance(value, str) and value.lstrip().startswith("{") and len(value) <= _MAX_TEXT):
            out.append(f"{where} is not architecture JSON (a path would name a file of the checking machine)")
        elif key == "teacher_recipe":
            out += _recipe_problems(where, value, {f.name for f in dataclasses.fields(Recipe)})
            out += _recipe_cost_problems(where, value, own.get("dataset"))
    threads = (record.get("budget") or {}).get("torch_threads") if isinstance(record.get("budget"), dict) else None
    if threads is not None and not (_is_int(threads, 1) and threads <= MAX_THREADS):
        out.append(f"budget.torch_threads {str(threads)[:20]!r} is not a thread count in [1, {MAX_THREADS}]")
    return out


def _plain(value, depth: int = 0) -> bool:
    """JSON data: numbers, short strings, booleans, None, and lists / objects of them."""
    if depth > 8:
        return False
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return len(value) <= _MAX_TEXT
    if isinstance(value, list):
        return len(value) <= 4096 and all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return len(value) <= 64 and all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


#: The data sets on which a record's ``teacher_recipe`` may train the checking machine's teacher:
#: the embedded one (seconds of training), and no longer than its default recipe. Elsewhere a
#: recipe trains a teacher for minutes to hours, which only ``--trusted`` (the user's own) allows.
CHEAP_RECIPE_DATASETS = ("digits",)
MIN_RECIPE_BATCH = 16


def _recipe_cost_problems(where: str, recipe, dataset: str | None) -> list[str]:
    from n2n_gym.teachers.teacher import RECIPES

    if not isinstance(recipe, dict):
        return []
    if dataset not in CHEAP_RECIPE_DATASETS:
        return [f"{where} would make the checking machine train a teacher on {dataset or 'this env'!r} (minutes "
                f"to hours); a record may carry one only on {', '.join(CHEAP_RECIPE_DATASETS)}"]
    default = RECIPES[dataset]
    epochs, batch = recipe.get("epochs", default.epochs), recipe.get("batch_size", default.batch_size)
    if (isinstance(epochs, (int, float)) and epochs > default.epochs) or (
            isinstance(batch, (int, float)) and batch < MIN_RECIPE_BATCH):
        return [f"{where} trains longer than {dataset}'s default recipe ({default.epochs} epochs, batches of "
                f"{MIN_RECIPE_BATCH} or more): "
                "too costly for a stranger's record"]
    return []


def _recipe_problems(where: str, recipe, fields: set[str]) -> list[str]:
    if not isinstance(recipe, dict):
        return [f"{where} is not an object of Recipe fields"]
    out = [f"{where}.{k} is not a Recipe field" for k in recipe if k not in fields]
    for k, v in recipe.items():
        if k in fields and not (isinstance(v, (int, float)) and not (isinstance(v, float) and not math.isfinite(v))):
            out.append(f"{where}.{k} {str(v)[:40]!r} is not a finite number")
    threads = recipe.get("threads", 1)
    if isinstance(threads, (int, float)) and not 1 <= threads <= MAX_THREADS:
        out.append(f"{where}.threads {threads!r} is not a thread count in [1, {MAX_THREADS}]")
    return out


# ---------------------------------------------------------------------------- provenance
def git_commit(path: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout holding this package (+ ``-dirty`` when it
    has uncommitted changes to tracked files), or ``"unknown"``."""
    cwd = pathlib.Path(path) if path else pathlib.Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + "-dirty" if dirty else commit) or "unknown"


def env_version(env_id: str) -> int | None:
    try:
        return gym.spec(env_id).version
    except gym.error.Error:
        return None


# ---------------------------------------------------------------------------- env kwargs
def record_env_kwargs(env_kwargs: dict | None) -> dict:
    """The user's env kwargs without the runtime-only ones (cache, device, ...)."""
    return json_safe({k: v for k, v in (env_kwargs or {}).items() if k not in RUNTIME_KWARGS})


# ---------------------------------------------------------------------------- the record
def make_record(*, env_id: str, agent: str, hparams: dict, seed: int, stage: str | None, env_kwargs: dict,
                tracker: BudgetTracker, protocol: str, eval_seed: int, extra: dict | None = None,
                label: str | None = None) -> dict:
    """One replayable leaderboard record of a finished run; ``label`` names a variant of
    the agent (its hparams) on the leaderboard."""
    import n2n_gym

    best = tracker.best or {"reward": None, "actions": [], "architecture": None, "arch_hash": None, "replay": {},
                            "stage": stage}
    ctx = tracker.context or {}
    teacher = ctx.get("teacher") or {}
    torch_threads = None
    if "torch" in sys.modules:
        torch_threads = sys.modules["torch"].get_num_threads()
    record = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "run_id": uuid.uuid4().hex,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "env_id": env_id, "env_version": env_version(env_id),
        "package_version": n2n_gym.__version__, "git_commit": git_commit(),
        "teacher": teacher, "data_variant": ctx.get("data_variant"),
        "protocol": ctx.get("protocol") or protocol, "eval_seed": eval_seed,
        "agent": agent, "hparams": json_safe(hparams), "seed": seed,
        "stage": stage or best.get("stage"), "env_kwargs": record_env_kwargs(env_kwargs),
        "budget": {**tracker.summary(), "device": tracker.device or resolve_device(env_kwargs.get("device")),
                   "torch_threads": torch_threads, "host": platform.node(), "python": platform.python_version()},
        "best": json_safe(best), "flop_convention": FLOP_CONVENTION,
        "curve": {"x": "evaluations", "y": "best_reward", "best_reward": tracker.curve},
        "students": {"columns": list(STUDENT_COLUMNS), "data": json_safe(tracker.rows)},
    }
    if extra:
        record["extra"] = json_safe(extra)
    if label:
        record["label"] = str(label)
    return record


def accuracy_drop(record: dict, split: str = "test") -> float | None:
    """Teacher accuracy minus the best student's (``split``: "test" or "val")."""
    t = (record.get("teacher") or {}).get("test_accuracy" if split == "test" else "val_accuracy")
    s = (record.get("best") or {}).get("test_accuracy" if split == "test" else "accuracy")
    if t is None or s is None:
        return None
    return float(t) - float(s)
