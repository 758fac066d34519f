"""Replay and re-check benchmark records: ``n2n-gym validate RESULTS... [--tolerance 1e-9]``.

For every line of the results files (CompilerGym's ``validate`` idea):

0. a line that is cut (a kill mid-write), not JSON, a repeated run id or a copy of an earlier run (the same students table and curve under another run id or seed) fails; so does,
   before anything is made, a record that names code to import, a file or folder of this
   machine, or processes to start (``records.untrusted_fields``: an ``env_kwargs`` key
   other than the plain-data :data:`~n2n_gym.bench.records.DATA_KWARGS`, an env id
   that is not n2n-gym's, a ``best.replay`` key other than stage / ratios / start
   architecture JSON): records are data, validate never imports, loads or starts what one
   names. ``--trusted`` lifts this for the user's own records (e.g. on ``N2N-Custom-v0``);
1. the record is consistent in itself (``records.record_errors``): schema, no NaN/inf,
   a known agent, seeds, teacher sha256 present, budget counts that add up, the anytime
   curve, the students table (no duplicate student, each row's reward recomputed by the
   reward function, compression) and the best student against that table; a label whose first
   word is another registered agent (``n2n`` on a random-search record) fails;
2. a fresh env is made: ``gym.make(env_id, **env_kwargs, **best.replay,
   protocol=record protocol, eval_seed=record eval seed, cache=False)`` (``best.replay``:
   the stage, ratio table and start architecture of the episode that found the best
   student), with the record's env version checked; its first ``reset()`` provisions the
   teacher, whose weights must be the record's teacher (``teacher.sha256``: the content
   sha256 of the weights, or a legacy file sha256 that the teacher registry maps to them);
   a record whose teacher cannot be obtained here (not pinned, not stored, too long to
   train, data missing) is reported ``UNVERIFIABLE`` with the reason, never rescored
   against another teacher;
3. the best student's actions are replayed from ``reset(seed=record seed)``: the episode
   must end exactly after the last action, and the architecture it yields must have the
   canonical hash of the record's architecture (and of ``best.arch_hash``);
4. the student is trained and scored again (``cache=False``: really recomputed, with the
   record's torch thread count) and its reward, validation and test accuracy, params and
   FLOPs must match the record within ``--tolerance`` (absolute; default 1e-9: on the same
   kind of machine a replay reproduces the floats exactly); so must the teacher's sha256,
   params, FLOPs and validation / test accuracy.

With ``--rerun``, a record that passes is also *re-run*: the agent's whole search again from
the record (agent, hparams, seed, budget, stage, env kwargs, protocol, eval seed, torch
thread count), and its anytime curve (best reward after each evaluation), evaluation count
students table (row by row: the student, its params and reward) and best student
(architecture hash) must be the record's, within ``--tolerance``. So a record whose agent
name, seed or hyperparameters were changed after the run fails, though its best student
replays. A search larger than ``--max-evaluations`` (default 200) is refused, not started. Exact where the record was made: the same kind of machine, torch
build and thread count give the same floats, so the same students in the same order; on
another machine a float that differs in its last bit can send a search elsewhere, so a
re-run there is evidence, not proof (say ``--tolerance`` and the machine with the result).
A run that stopped on wall time (``max_seconds``) cannot be re-run exactly and is
``UNVERIFIABLE``. Hyperparameters that name files or code (a key with path, file, dir, log,
load, save, checkpoint, module, results in its name, or a string value with a slash, a backslash
or a colon) are refused unless ``--trusted``, as in step 0. A re-run costs what the search cost.

One ``PASS``/``FAIL``/``UNVERIFIABLE`` line per record; the exit status is 1 if any record
fails, 2 if there was no record, 3 if none failed but some were unverifiable. Editing a
record's reward, actions or architecture makes it fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from typing import Any

from n2n_gym.bench.leaderboard import label_names_another_agent, run_identity
from n2n_gym.bench.records import record_errors, scan_records, untrusted_fields
from n2n_gym.utils.checks import int_at_least, positive_float

DEFAULT_TOLERANCE = 1e-9


@contextlib.contextmanager
def _torch_threads(n: int | None):
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Unverifiable(Exception):
    """The record cannot be checked here (its teacher or data cannot be obtained): neither pass nor fail."""


def teacher_mismatch(record_sha: str | None, teacher) -> str | None:
    """Why the env's ``teacher`` is not the record's (None: it is). The record's sha256 is
    the weights' content sha256, or a legacy file sha256 the registry maps to them."""
    from n2n_gym.teachers.registry import by_sha

    if not record_sha or record_sha == teacher.sha256:
        return None
    pin = by_sha(record_sha)
    if pin is not None and pin.sha256 == teacher.sha256:
        return None
    if pin is not None:
        return (f"the record's teacher is the pinned {pin.id} (weights sha256 {pin.sha256[:12]}…), but the env's "
                f"teacher here has {teacher.sha256[:12]}… ({teacher.source}); get the pinned file {pin.file} "
                f"into $N2N_TEACHERS or run `{pin.reproduce}`")
    return (f"the record's teacher (sha256 {record_sha[:12]}…) is in no teacher registry and not the env's teacher "
            f"here ({teacher.sha256[:12]}…): nobody can obtain it to rescore this record")


def unobtainable_teacher(record: dict) -> str | None:
    """Why the record's teacher cannot be obtained, known without provisioning the env's
    teacher (which may mean training it): its sha256 is in no registry while the env's
    teacher is pinned to other weights. None when that cannot be told up front."""
    from n2n_gym.envs.registration import ENVS
    from n2n_gym.teachers.registry import by_sha, for_names

    sha = (record.get("teacher") or {}).get("sha256")
    kwargs = record.get("env_kwargs") or {}
    if not isinstance(sha, str) or by_sha(sha) is not None or record.get("env_id") not in ENVS:
        return None
    if any(k in kwargs for k in ("teacher", "dataset", "teacher_checkpoint", "teacher_recipe", "teacher_module")):
        return None
    pins = for_names(*ENVS[record["env_id"]][:2])
    if not pins:
        return None
    return (f"the record's teacher (sha256 {sha[:12]}…) is in no teacher registry; the env's teacher is the pinned "
            f"{', '.join(f'{p.id} ({p.sha256[:12]}…)' for p in pins)}: nobody can obtain the record's teacher to "
            "rescore this record")


def _close(a: Any, b: Any, tol: float) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=tol)


def _hash(arch_json: str | None) -> str | None:
    from n2n_gym.ir.arch import Architecture

    return Architecture.from_json(arch_json).canonical_hash() if arch_json else None


def check_record(record: dict, tolerance: float = DEFAULT_TOLERANCE, device: str = "cpu", threads: int | None = None,
                 *, trusted: bool = False) -> list[str]:
    """The reasons ``record`` fails validation (empty: it passes). Records are data: one that
    names code, files of this machine or processes to start (``records.untrusted_fields``)
    fails before anything is constructed, unless ``trusted`` (the user's own records)."""
    import gymnasium as gym

    import n2n_gym
    from n2n_gym.ir.arch import ArchitectureError

    errors = record_errors(record)
    if errors:
        return errors
    refused = [] if trusted else untrusted_fields(record)
    if refused:
        return [f"refused, nothing was run: {'; '.join(refused)} (validate never imports, loads or starts what a "
                "record names; for records of your own, --trusted allows it)"]
    from n2n_gym.bench.runner import AGENTS

    if record["agent"] not in AGENTS:
        errors.append(f"unknown agent {record['agent']!r} (agents: {', '.join(AGENTS)})")
    other = label_names_another_agent(record, AGENTS)
    if other:
        errors.append(f"the label {record['label'][:80]!r} names the agent {other!r}, but the record's agent is "
                      f"{record['agent']!r}: a record of one agent would be ranked as another")
    best, budget = record["best"], record.get("budget") or {}
    if record["env_id"] not in gym.registry:
        return errors + [f"unknown env {record['env_id']!r} (n2n-gym {n2n_gym.__version__})"]
    version = gym.spec(record["env_id"]).version
    if record.get("env_version") is not None and version != record["env_version"]:
        errors.append(f"env version {version} differs from the record's {record['env_version']}")
    why = unobtainable_teacher(record)
    if why:
        raise Unverifiable(why)
    try:
        recorded_hash = _hash(best["architecture"])
    except (ValueError, KeyError, TypeError, ArchitectureError, json.JSONDecodeError) as exc:
        return errors + [f"the recorded architecture does not parse: {exc}"]
    if best.get("arch_hash") is not None and best["arch_hash"] != recorded_hash:
        errors.append("best.arch_hash is not the hash of best.architecture")

    kwargs = {**record["env_kwargs"], **(best.get("replay") or {})}
    # progress=True: a teacher this machine lacks is trained by its recipe with a progress bar and
    # an ETA (stopped beforehand if the estimate is over N2N_TEACHER_MAX_MINUTES), never silently
    kwargs.update(protocol=record["protocol"], eval_seed=record["eval_seed"], cache=False, progress=True,
                  device=device)
    try:
        env = gym.make(record["env_id"], **kwargs)
    except Exception as exc:  # noqa: BLE001 - report, do not crash the whole validation
        return errors + [f"cannot make the env: {type(exc).__name__}: {exc}"]
    try:
        with _torch_threads(threads if threads is not None else budget.get("torch_threads")):
            from n2n_gym.data.datasets import DataUnavailableError
            from n2n_gym.teachers.teacher import (
                TeacherCheckpointError,
                TeacherTrainingTooLong,
            )

            try:
                obs, info = env.reset(seed=record["seed"], options={"update": best.get("update") or 0})
            except (DataUnavailableError, TeacherTrainingTooLong, TeacherCheckpointError) as exc:
                raise Unverifiable(f"the record's teacher or data cannot be obtained here: {exc}") from exc
            why = teacher_mismatch((record.get("teacher") or {}).get("sha256"), env.unwrapped.teacher)
            if why:
                raise Unverifiable(why)
            actions = list(best["actions"])
            terminated = truncated = False
            for t, a in enumerate(actions):
                if terminated or truncated:
                    return errors + [f"the episode ended after {t} of the {len(actions)} recorded actions"]
                try:
                    obs, reward, terminated, truncated, info = env.step(a)
                except ValueError as exc:
                    return errors + [f"action {t} ({a!r}) is not valid: {exc}"]
            if not terminated:
                return errors + [f"the episode did not end after the {len(actions)} recorded actions"]
    finally:
        env.close()
    errors += teacher_errors(record, info, tolerance)
    if _hash(info.get("architecture")) != recorded_hash:
        errors.append("the replayed actions give a different architecture than the recorded one")
    checks = (("reward", reward, best["reward"]), ("val accuracy", info.get("accuracy"), best.get("accuracy")),
              ("test accuracy", info.get("test_accuracy"), best.get("test_accuracy")))
    for name, got, want in checks:
        if not _close(got, want, tolerance):
            errors.append(f"{name} {got!r} != recorded {want!r} (tolerance {tolerance:g})")
    for name in ("params", "flops"):
        if best.get(name) is not None and int(info.get(name, -1)) != int(best[name]):
            errors.append(f"{name} {info.get(name)} != recorded {best[name]}")
    if bool(info.get("valid")) != bool(best.get("valid", True)):
        errors.append(f"valid={info.get('valid')} but the record says {best.get('valid')}")
    return errors


#: Parts of an hparam key that name a file, folder or code: refused in a re-run unless trusted.
FILE_HPARAM_WORDS = ("path", "file", "dir", "log", "load", "save", "checkpoint", "module", "results")


def untrusted_hparams(hparams: dict) -> list[str]:
    """The agent settings of a record that name files or code (see the module docstring)."""
    out = []
    for key, value in (hparams or {}).items():
        if any(w in str(key).lower() for w in FILE_HPARAM_WORDS) and value not in (None, "", False):
            out.append(f"hparams.{key} names a file or code")
        elif isinstance(value, str) and any(c in value for c in "/\\:"):
            out.append(f"hparams.{key} = {value[:40]!r} looks like a path or an import")
    return out


#: Default of ``--max-evaluations``: the largest search ``--rerun`` starts.
DEFAULT_MAX_EVALUATIONS = 200


#: Default of ``--max-memory-gb``: the address space (GiB) a ``--rerun`` search may take.
DEFAULT_MAX_MEMORY_GB = 16.0


def _limit_memory(limit_bytes: int, parent: int) -> None:
    """Initializer of the re-run's process: an address-space limit (a record's hyperparameters
    could ask for a network of any size: N2N's ``hidden`` grows memory with its square), and
    exit with the validating process."""
    import resource

    from n2n_gym.evaluation.backends import exit_with_parent

    exit_with_parent(parent)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes if hard == resource.RLIM_INFINITY else
                                            min(limit_bytes, hard), hard))


def _rerun_search(kwargs: dict, threads: int | None) -> dict:
    from n2n_gym.bench.runner import run_one

    with _torch_threads(threads):
        return run_one(**kwargs)


def rerun_errors(record: dict, tolerance: float = DEFAULT_TOLERANCE, threads: int | None = None, *,
                 trusted: bool = False, max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
                 max_memory_gb: float = DEFAULT_MAX_MEMORY_GB) -> list[str]:
    """Re-run the record's whole search and compare its anytime curve, evaluation count,
    students table (row by row: student, params, reward) and best student; the reasons it
    differs (empty: the same run). A search larger than ``max_evaluations`` evaluations (or
    ``20 * max_evaluations + 20`` episodes, the tracker's default cap) is refused before it
    starts. The search runs in a child process limited to ``max_memory_gb`` GiB of address
    space: one that needs more stops and is reported, and this process survives. Raises
    :class:`Unverifiable` for a run that stopped on wall time."""
    import concurrent.futures
    import multiprocessing
    import os
    from concurrent.futures.process import BrokenProcessPool

    budget = record.get("budget") or {}
    if budget.get("stop_reason") == "max_seconds":
        raise Unverifiable("the run stopped on wall time (max_seconds): a re-run cannot stop at the same point")
    episodes = budget.get("max_episodes")
    if budget["requested"] > max_evaluations or (episodes is not None and episodes > 20 * max_evaluations + 20):
        return [f"re-run refused, nothing was run: the search asks for {budget['requested']} evaluations / "
                f"{episodes} episodes, over --max-evaluations {max_evaluations} (raise it to re-run a larger search)"]
    refused = [] if trusted else untrusted_hparams(record.get("hparams") or {})
    if refused:
        return [f"re-run refused, nothing was run: {'; '.join(refused)} (--trusted for your own records)"]
    kwargs = dict(env_id=record["env_id"], agent=record["agent"], seed=record["seed"], budget=int(budget["requested"]),
                  protocol=record["protocol"], stage=record.get("stage"), env_kwargs=record["env_kwargs"],
                  hparams=record.get("hparams") or {}, eval_seed=record["eval_seed"],
                  max_episodes=budget.get("max_episodes"), label=record.get("label"))
    limit = f"the search needed more than --max-memory-gb {max_memory_gb:g} GiB (raise it for a larger one)"
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_limit_memory,
                                                initargs=(int(max_memory_gb * 2 ** 30), os.getpid())) as pool:
        try:
            again = pool.submit(_rerun_search, kwargs,
                                threads if threads is not None else budget.get("torch_threads")).result()
        except MemoryError:
            return [f"re-run stopped: {limit}"]
        except BrokenProcessPool:
            return [f"re-run stopped: its process died ({limit}, or it was killed)"]
    errors = []
    want, got = record["curve"]["best_reward"], again["curve"]["best_reward"]
    if len(want) != len(got):
        errors.append(f"re-run: {len(got)} evaluations, the record has {len(want)}")
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if not _close(a, b, tolerance)), None)
    if first is not None:
        errors.append(f"re-run: the anytime curve differs from evaluation {first + 1} on ({got[first]!r} vs "
                      f"recorded {want[first]!r})")
    if again["hparams"] != record.get("hparams"):  # the agent's settings as it reports them, defaults included
        errors.append(f"re-run: the agent reports hyperparameters {json.dumps(again['hparams'])[:200]}, the record "
                      f"{json.dumps(record.get('hparams'))[:200]}")
    row = _first_other_student(record["students"], again["students"], tolerance)
    if row is not None:
        errors.append(f"re-run: the students table differs from row {row} on (another student, params or reward: "
                      "the agent, its hyperparameters or its seed are not the record's)")
    if (again["best"] or {}).get("arch_hash") != (record["best"] or {}).get("arch_hash"):
        errors.append("re-run: the search found another best student")
    return errors


def _first_other_student(want: dict, got: dict, tolerance: float) -> int | None:
    """The first row (1-based) where two students tables differ in student, params or
    reward (within ``tolerance``); a row only one table has counts. None: the same."""
    from n2n_gym.bench.records import STUDENT_COLUMNS

    col = {c: i for i, c in enumerate(STUDENT_COLUMNS)}
    a, b = want.get("data") or [], got.get("data") or []
    for i, (x, y) in enumerate(zip(a, b), 1):
        if x[col["arch_hash"]] != y[col["arch_hash"]] or x[col["params"]] != y[col["params"]] \
                or not _close(x[col["reward"]], y[col["reward"]], tolerance):
            return i
    return None if len(a) == len(b) else min(len(a), len(b)) + 1


def teacher_errors(record: dict, info: dict, tolerance: float) -> list[str]:
    """The replayed env's teacher against the record's: sha256, params, FLOPs, accuracies."""
    teacher = record.get("teacher") or {}
    errors = []
    from n2n_gym.teachers.registry import by_sha

    pin = by_sha(teacher["sha256"]) if isinstance(teacher.get("sha256"), str) else None
    # the same weights: the content sha256, or a legacy file sha256 the registry maps to them
    if info.get("teacher_sha256") != teacher.get("sha256") and not (pin and pin.sha256 == info.get("teacher_sha256")):
        errors.append(f"the teacher differs (sha256 {str(info.get('teacher_sha256'))[:12]} vs the record's "
                      f"{str(teacher.get('sha256'))[:12]}): train it with the record's recipe or pass its checkpoint")
        return errors  # another teacher: its numbers differ too, say it once
    for name, key in (("params", "teacher_params"), ("flops", "teacher_flops")):
        if teacher.get(name) is not None and info.get(key) != teacher[name]:
            errors.append(f"teacher {name} {info.get(key)!r} != recorded {teacher[name]!r}")
    for name, key in (("val_accuracy", "teacher_accuracy"), ("test_accuracy", "teacher_test_accuracy")):
        if teacher.get(name) is not None and not _close(info.get(key), teacher[name], tolerance):
            errors.append(f"teacher {name} {info.get(key)!r} != recorded {teacher[name]!r} (tolerance {tolerance:g})")
    return errors


def describe(record: dict) -> str:
    best = record.get("best") or {}
    reward = best.get("reward")
    r = f"{reward:.6f}" if isinstance(reward, (int, float)) else "?"
    return f"{record.get('env_id')} {record.get('agent')} seed {record.get('seed')} reward {r}"


def validate_file(paths: list[str], tolerance: float = DEFAULT_TOLERANCE, device: str = "cpu",
                  threads: int | None = None, out=None, counts: dict | None = None, *,
                  trusted: bool = False, rerun: bool = False,
                  max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
                  max_memory_gb: float = DEFAULT_MAX_MEMORY_GB) -> tuple[int, int]:
    """Check every line of ``paths``; returns (passed, failed). A line that cannot be read
    as a record, or repeats an earlier record's run id or its run (:func:`~n2n_gym.bench.leaderboard.run_identity`:
    the same students table and curve under another run id or seed), fails; a record whose teacher or
    data cannot be obtained here is UNVERIFIABLE (neither). ``counts`` (a dict, if given)
    receives passed, failed and unverifiable."""
    out = out or sys.stdout
    passed = failed = unverifiable = 0
    seen: dict = {}  # run id or content identity (leaderboard.run_identity) -> the line that had it
    for where, record, problem in scan_records(paths):
        if record is None:
            failed += 1
            print(f"FAIL {where}: {problem}", file=out, flush=True)
            continue
        rid = record.get("run_id")
        try:
            content = run_identity(record)
        except (TypeError, ValueError):  # not JSON-able as read: check_record says why
            content = None
        if isinstance(rid, str) and rid in seen:
            errors = [f"duplicate of {seen[rid]} (same run_id {rid})"]
        elif content is not None and content in seen:
            errors = [f"duplicate of {seen[content]} (same agent, students table and anytime curve; another run id "
                      f"or seed: a copy of one run, which the leaderboard counts once)"]
        else:
            if isinstance(rid, str):
                seen[rid] = where
            if content is not None:
                seen[content] = where
            try:
                errors = check_record(record, tolerance, device, threads, trusted=trusted)
                if rerun and not errors:
                    print(f"re-running {where} {describe(record)} ...", file=out, flush=True)
                    errors = rerun_errors(record, tolerance, threads, trusted=trusted,
                                          max_evaluations=max_evaluations, max_memory_gb=max_memory_gb)
            except Unverifiable as exc:
                unverifiable += 1
                print(f"UNVERIFIABLE {where} {describe(record)}: {exc}", file=out, flush=True)
                continue
            except Exception as exc:  # noqa: BLE001 - one bad record must not stop the others
                errors = [f"{type(exc).__name__}: {exc}"]
        if errors:
            failed += 1
            print(f"FAIL {where} {describe(record)}: " + "; ".join(errors), file=out, flush=True)
        else:
            passed += 1
            print(f"PASS {where} {describe(record)}", file=out, flush=True)
    if counts is not None:
        counts.update(passed=passed, failed=failed, unverifiable=unverifiable)
    return passed, failed


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="n2n-gym validate", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="JSONL results files of n2n-gym bench")
    p.add_argument("--tolerance", type=_tolerance, default=DEFAULT_TOLERANCE,
                   help="absolute tolerance on rewards and accuracies (default %(default)g: a replay on the same "
                        "kind of machine is exact)")
    p.add_argument("--device", default="cpu", help="device of the re-evaluation (default cpu)")
    p.add_argument("--trusted", action="store_true",
                   help="the records are your own: allow what validate refuses in records from others (a "
                        "teacher_module to import, a teacher_checkpoint, npz data set or other path of this machine, "
                        "a backend that starts workers)")
    p.add_argument("--rerun", action="store_true",
                   help="also re-run each passing record's whole search and compare its anytime curve and best "
                        "student (costs what the search cost; exact on the same kind of machine and thread count)")
    p.add_argument("--max-evaluations", type=int_at_least(1), default=DEFAULT_MAX_EVALUATIONS,
                   help="--rerun refuses a search of more evaluations than this (default %(default)s): a record "
                        "from someone else cannot make this machine run a search of any size")
    p.add_argument("--max-memory-gb", type=positive_float, default=DEFAULT_MAX_MEMORY_GB,
                   help="--rerun runs the search in a process limited to this address space in GiB (default "
                        "%(default)s): a record's hyperparameters cannot make this machine run out of memory")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the re-evaluation (default: the record's budget.torch_threads)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``n2n-gym validate ...``; returns the exit status."""
    return run_args(build_parser().parse_args(argv))


def run_args(args: argparse.Namespace) -> int:
    """Run the parsed arguments of :func:`build_parser` (for a CLI with subcommands)."""
    counts: dict = {}
    passed, failed = validate_file(args.results, args.tolerance, args.device, args.threads, counts=counts,
                                   trusted=args.trusted, rerun=args.rerun, max_evaluations=args.max_evaluations,
                                   max_memory_gb=args.max_memory_gb)
    unverifiable = counts.get("unverifiable", 0)
    print(f"{passed} passed, {failed} failed, {unverifiable} unverifiable")
    if passed + failed + unverifiable == 0:
        return 2
    return 1 if failed else (3 if unverifiable else 0)


if __name__ == "__main__":
    sys.exit(main())
