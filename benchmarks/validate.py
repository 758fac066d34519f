"""Replay and re-check benchmark records: ``n2n-gym validate RESULTS... [--tolerance 1e-6]``.

For every record of the results files (CompilerGym's ``validate`` idea):

1. the record follows the schema (``benchmarks/records.py``) and its anytime curve ends at
   its best reward;
2. a fresh env is made: ``gym.make(env_id, **env_kwargs, **best.replay,
   protocol=record protocol, eval_seed=record eval seed, cache=False)`` (``best.replay``:
   the stage, ratio table and start architecture of the episode that found the best
   student), with the record's env version and teacher (sha256) checked;
3. the best student's actions are replayed from ``reset(seed=record seed)``: the episode
   must end exactly after the last action, and the architecture it yields must have the
   canonical hash of the record's architecture (and of ``best.arch_hash``);
4. the student is trained and scored again (``cache=False``: really recomputed, with the
   record's torch thread count) and its reward, validation and test accuracy, params and
   FLOPs must match the record within ``--tolerance``.

One ``PASS``/``FAIL`` line per record; the exit status is 1 if any record fails, 2 if
there was no record. Editing a record's reward, actions or architecture makes it fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from typing import Any

from n2n_gym.benchmarks.records import read_records, schema_errors


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


def _close(a: Any, b: Any, tol: float) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=tol)


def _hash(arch_json: str | None) -> str | None:
    from n2n_gym.arch import Architecture

    return Architecture.from_json(arch_json).canonical_hash() if arch_json else None


def check_record(record: dict, tolerance: float = 1e-6, device: str = "cpu", threads: int | None = None) -> list[str]:
    """The reasons ``record`` fails validation (empty: it passes)."""
    import gymnasium as gym

    import n2n_gym
    from n2n_gym.arch import ArchitectureError

    errors = schema_errors(record)
    if errors:
        return errors
    best, budget = record["best"], record.get("budget") or {}
    curve = (record.get("curve") or {}).get("best_reward") or []
    if curve and not _close(max(curve), best["reward"], tolerance):
        errors.append(f"the anytime curve peaks at {max(curve):.6f}, not at the best reward {best['reward']:.6f}")
    if record["env_id"] not in gym.registry:
        return errors + [f"unknown env {record['env_id']!r} (n2n-gym {n2n_gym.__version__})"]
    version = gym.spec(record["env_id"]).version
    if record.get("env_version") is not None and version != record["env_version"]:
        errors.append(f"env version {version} differs from the record's {record['env_version']}")
    try:
        recorded_hash = _hash(best["architecture"])
    except (ValueError, KeyError, TypeError, ArchitectureError, json.JSONDecodeError) as exc:
        return errors + [f"the recorded architecture does not parse: {exc}"]
    if best.get("arch_hash") is not None and best["arch_hash"] != recorded_hash:
        errors.append("best.arch_hash is not the hash of best.architecture")

    kwargs = {**record["env_kwargs"], **(best.get("replay") or {})}
    kwargs.update(protocol=record["protocol"], eval_seed=record["eval_seed"], cache=False, progress=False,
                  device=device)
    try:
        env = gym.make(record["env_id"], **kwargs)
    except Exception as exc:  # noqa: BLE001 - report, do not crash the whole validation
        return errors + [f"cannot make the env: {type(exc).__name__}: {exc}"]
    try:
        with _torch_threads(threads if threads is not None else budget.get("torch_threads")):
            obs, info = env.reset(seed=record["seed"], options={"update": best.get("update") or 0})
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
    teacher_sha = (record.get("teacher") or {}).get("sha256")
    if teacher_sha and info.get("teacher_sha256") != teacher_sha:
        errors.append(f"the teacher differs (sha256 {str(info.get('teacher_sha256'))[:12]} vs the record's "
                      f"{teacher_sha[:12]}): train it with the record's recipe or pass its checkpoint")
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


def describe(record: dict) -> str:
    best = record.get("best") or {}
    reward = best.get("reward")
    r = f"{reward:.6f}" if isinstance(reward, (int, float)) else "?"
    return f"{record.get('env_id')} {record.get('agent')} seed {record.get('seed')} reward {r}"


def validate_file(paths: list[str], tolerance: float = 1e-6, device: str = "cpu", threads: int | None = None,
                  out=None) -> tuple[int, int]:
    """Check every record of ``paths``; returns (passed, failed)."""
    out = out or sys.stdout
    passed = failed = 0
    for path in paths:
        for i, record in enumerate(read_records(path), 1):
            try:
                errors = check_record(record, tolerance, device, threads)
            except Exception as exc:  # noqa: BLE001
                errors = [f"{type(exc).__name__}: {exc}"]
            where = f"{path}#{i}"
            if errors:
                failed += 1
                print(f"FAIL {where} {describe(record)}: " + "; ".join(errors), file=out, flush=True)
            else:
                passed += 1
                print(f"PASS {where} {describe(record)}", file=out, flush=True)
    return passed, failed


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="n2n-gym validate", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="JSONL results files of n2n-gym bench")
    p.add_argument("--tolerance", type=float, default=1e-6, help="absolute tolerance on reward and accuracies")
    p.add_argument("--device", default="cpu", help="device of the re-evaluation (default cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the re-evaluation (default: the record's budget.torch_threads)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``n2n-gym validate ...``; returns the exit status."""
    return run_args(build_parser().parse_args(argv))


def run_args(args: argparse.Namespace) -> int:
    """Run the parsed arguments of :func:`build_parser` (for a CLI with subcommands)."""
    passed, failed = validate_file(args.results, args.tolerance, args.device, args.threads)
    print(f"{passed} passed, {failed} failed")
    if passed + failed == 0:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
