"""The leaderboard: ``n2n-gym leaderboard RESULTS... [--format md|csv|html] [--out DIR]``.

Reads benchmark records (JSONL files of ``n2n-gym bench``, and with ``--wandb-project
ENTITY/PROJECT`` the runs of a W&B project logged with ``--track``, when online) and
ranks, per env and evaluation protocol, the agents by the mean over seeds of their best
reward (``R = Rc * Ra``), with its sample standard deviation, the compression (teacher
params / student params), the accuracy drop (teacher minus best student, in percentage
points, on the validation split that the reward used and on the test split that is only
reported), params, FLOPs (2 per multiply-add, FlopCounterMode's convention) and the
evaluations, episodes and wall-clock used.

Statistics (rliable; Agarwal et al., "Deep Reinforcement Learning at the Edge of the
Statistical Precipice", NeurIPS 2021): per agent the interquartile mean (IQM) of the
seeds' best rewards with a 95 % stratified-bootstrap confidence interval (percentile
method), the probability of improvement over uniform random search ``P(X > Y)`` (the
Mann-Whitney U statistic over seed pairs, ties counting 1/2) with its bootstrap interval,
and an anytime metric: the IQM of the normalised area under the best-so-far curve
(:func:`anytime_auc`). Agents are **ranked only where intervals separate**: an agent's
rank is 1 + the number of agents whose best-reward IQM interval lies entirely above its
own; agents that share a rank are marked "tied". The bootstrap is seeded
(``--bootstrap-seed``), so the same records give the same table. ``--out`` also writes
``profile-<env>-<protocol>.png``: the performance profile (fraction of runs whose best
reward exceeds tau, with bootstrap bands).

With ``--out DIR`` it writes ``leaderboard.<format>`` there and, per env and protocol,
two PNG plots (matplotlib, Agg):

- ``anytime-<env>-<protocol>.png``: best reward against student evaluations, per agent
  the mean over seeds with a band (``--band minmax``: min to max over seeds; ``std``:
  mean +- one standard deviation). A run that stopped before its budget keeps its last
  value;
- ``pareto-<env>-<protocol>.png``: accuracy (``--metric test`` or ``val``) against params
  (log scale) of every student the runs evaluated, with each agent's Pareto front (the
  students no other student of that agent beats on both) and the teacher.

Without ``--out`` the table goes to stdout (no plots).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import html
import io
import json
import math
import os
import pathlib
import re
import statistics
import sys
import unicodedata
import warnings
from collections import defaultdict
from typing import Any, Collection, Iterable

from n2n_gym.bench.records import (
    FLOP_CONVENTION,
    accuracy_drop,
    record_errors,
    scan_records,
)
from n2n_gym.evaluation.protocols import PROTOCOLS
from n2n_gym.utils.checks import int_at_least

CSV_COLUMNS = (
    "env_id", "env_version", "protocol", "env_kwargs", "rank", "tied", "agent", "stage", "seeds", "best_reward_iqm",
    "best_reward_ci_low", "best_reward_ci_high", "p_improvement", "p_improvement_ci_low", "p_improvement_ci_high",
    "auc_iqm", "auc_ci_low", "auc_ci_high", "best_reward_mean", "best_reward_std",
    "compression_mean", "compression_std", "val_acc_drop_mean", "val_acc_drop_std", "test_acc_drop_mean",
    "test_acc_drop_std", "val_acc_mean", "test_acc_mean", "params_mean", "flops_mean", "flop_convention",
    "budget", "evaluations_mean", "episodes_mean", "env_steps_mean", "wall_seconds_mean", "teacher_sha256",
    "teacher_val_accuracy", "teacher_test_accuracy", "teacher_params",
)

DEFAULT_REPS = 5000  # bootstrap resamples per interval
MIN_SEEDS = 2  # runs an agent needs for an interval, P(improvement) and a rank
DEFAULT_BOOTSTRAP_SEED = 0
REFERENCE_AGENT = "random"  # P(improvement) is over uniform random search


# ---------------------------------------------------------------------------- loading
def load_wandb(project: str) -> list[dict]:
    """Records of the runs of a W&B project (``ENTITY/PROJECT``) logged by ``bench --track``."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        warnings.warn(f"WANDB_MODE={os.environ['WANDB_MODE']}: not reading W&B project {project}", stacklevel=2)
        return []
    try:
        import wandb
    except ImportError as exc:  # pragma: no cover
        raise SystemExit("--wandb-project needs wandb: pip install 'n2n-gym[wandb]'") from exc
    records = []
    for run in wandb.Api().runs(project):
        text = run.summary.get("n2n_record")
        if not text:
            continue
        try:
            record = json.loads(text) if isinstance(text, str) else dict(text)
        except (TypeError, ValueError):
            continue
        record.setdefault("students", {"columns": [], "data": []})
        record["source"] = f"wandb:{'/'.join(run.path)}"
        records.append(record)
    return records


def load(paths: Iterable[str | os.PathLike], wandb_project: str | None = None,
         skipped: list[tuple[str, str]] | None = None) -> list[dict]:
    """Records of local JSONL files (+ a W&B project), one per run (:func:`run_identity`; the
    same run id or a copy of a run under a new one counts once). Lines that are cut, fail the
    schema or contradict themselves (``records.record_errors``: NaN rewards, ...) and copies
    are left out and appended to ``skipped`` as ``(where, why)``."""
    skipped = skipped if skipped is not None else []
    records = []
    for where, record, problem in scan_records(list(paths)):
        errors = [problem] if record is None else record_errors(record)
        if errors:
            skipped.append((where, "; ".join(errors)))
        else:
            records.append(record)
    if wandb_project:
        for i, record in enumerate(load_wandb(wandb_project), 1):
            errors = record_errors(record, students=False)  # W&B summaries hold no students table
            if errors:
                skipped.append((record.get("source") or f"wandb:{wandb_project}#{i}", "; ".join(errors)))
            else:
                records.append(record)
    seen: dict[Any, tuple[str, Any]] = {}
    out = []
    for r in records:
        for key in (("run_id", r.get("run_id")), run_identity(r)):
            if key[1] is not None and key in seen:
                first, seed = seen[key]
                same = "run id" if key[0] == "run_id" else "agent, students and curve" + (
                    "" if seed == r.get("seed") else f", only the seed changed: {seed} -> {printable(r.get('seed'))}")
                skipped.append((str(r.get("source") or r.get("run_id")), f"a copy of the run {first} (same {same}): "
                                "counted once"))
                break
        else:
            for key in (("run_id", r.get("run_id")), run_identity(r)):
                seen[key] = (str(r.get("run_id")), r.get("seed"))
            out.append(r)
    return out


def run_identity(record: dict) -> tuple[str, str]:
    """What makes two records the same run whatever their run ids, seeds and files say: env,
    protocol, agent, label, stage, budget asked for, students table and anytime curve (a copied
    line with a new run id, or with its seed edited, is one run, not one more seed: two seeds of
    a search never train the same students with the same rewards). A record without its
    students table (a W&B summary) keeps its seed in the key."""
    import hashlib

    students = (record.get("students") or {}).get("data")
    parts = [record.get(k) for k in ("env_id", "protocol", "agent", "label", "stage")]
    parts += [(record.get("budget") or {}).get("requested"), students, (record.get("curve") or {}).get("best_reward")]
    if not students:
        parts.append(record.get("seed"))
    return "content", hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def at_evaluations(record: dict, n: int) -> dict:
    """``record`` as it stood after its first ``n`` evaluations: the best of those students
    (highest reward, then fewest params: the tracker's rule), the curve cut at ``n`` and a
    budget of ``n``, so runs of different budgets compare at equal evaluations. A run that
    stopped before ``n`` is kept whole (it did not spend the rest). Raises ``ValueError``
    for ``n < 1`` or a record without its students table."""
    if n < 1:
        raise ValueError(f"--at-evaluations must be >= 1, got {n}")
    students = record.get("students") or {}
    rows = students.get("data")
    if rows is None:
        raise ValueError(f"record {record.get('run_id')} has no students table (a W&B summary?): "
                         "it cannot be cut at a number of evaluations")
    if len(rows) <= n:
        return record
    col = {c: i for i, c in enumerate(students["columns"])}
    top = max(rows[:n], key=lambda r: (r[col["reward"]], -r[col["params"]]))
    best = {k: top[col[k]] for k in ("reward", "accuracy", "test_accuracy", "params", "flops", "compression",
                                     "stage", "arch_hash", "evaluation", "episode")}
    out = dict(record)
    out["best"] = {**best, "valid": True}
    out["curve"] = {**(record.get("curve") or {}),
                    "best_reward": list((record.get("curve") or {}).get("best_reward") or [])[:n]}
    out["budget"] = {**(record.get("budget") or {}), "requested": n, "evaluations": n,
                     "episodes": rows[n - 1][col["episode"]],
                     "wall_seconds": None, "eval_seconds": None, "env_steps": None}  # not recorded per evaluation
    out["at_evaluations"] = n
    return out


# ---------------------------------------------------------------------------- the table
def _mean(xs: list) -> float | None:
    xs = [float(x) for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _std(xs: list) -> float | None:
    xs = [float(x) for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else None


_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|.)")


def printable(text: Any, limit: int = 80) -> str:
    """``text`` as a record names it, safe to print and to put in a table: ANSI escape
    sequences, control and format characters (RTL marks) removed, at most ``limit`` characters."""
    text = _ANSI.sub("", str(text))
    return "".join(c for c in text if unicodedata.category(c)[0] != "C")[:limit]


#: What the leaderboard appends to the label of an agent that ``n2n-gym bench`` does not know.
UNREGISTERED = " (unregistered agent)"


def label_names_another_agent(record: dict, known_agents: Collection[str]) -> str | None:
    """The registered agent that ``record``'s label names (its first word: ``n2n`` in ``n2n [joint,
    loo]``) when that is not the agent that made the record, else None: a random-search record
    labelled ``n2n`` would be ranked as N2N (validate fails it, the leaderboard shows its agent)."""
    label = record.get("label")
    word = re.match(r"[A-Za-z0-9_]+", label) if isinstance(label, str) else None
    if word is None or word.group(0) == record.get("agent") or word.group(0) not in known_agents:
        return None
    return word.group(0)


# env kwargs that do not change what a student scores: the stage is part of the row's label,
# the rest are where and how it runs
NEUTRAL_ENV_KWARGS = frozenset({"stage", "device", "progress", "cache", "render_mode"})


def setting(record: dict) -> str:
    """The record's reward-relevant env kwargs (constraints, penalty, ratios, dataset, ...) as
    canonical JSON, "" when none: runs under different settings are different benchmarks."""
    kwargs = record.get("env_kwargs")
    if not isinstance(kwargs, dict):
        return printable(kwargs) if kwargs else ""
    relevant = {k: v for k, v in kwargs.items() if k not in NEUTRAL_ENV_KWARGS}
    return json.dumps(relevant, sort_keys=True, default=str) if relevant else ""


def group_records(records: list[dict], known_agents: Collection[str] | None = None
                  ) -> dict[tuple[str, str, str, str], dict[str, list[dict]]]:
    """``{(env_id, protocol, setting, teacher sha256): {agent label: [records]}}``: runs are
    compared only under the same env, protocol, reward-relevant env kwargs (:func:`setting`)
    and teacher (by content). The label is the record's ``label`` (``n2n-gym bench --label``)
    if it has one, else the agent, plus the stage when the agent ran several stages on the
    same env, plus :data:`UNREGISTERED` for an agent not in ``known_agents`` (if given; the
    command passes ``n2n_gym.bench.runner.AGENTS``): shown, never ranked. Every name goes
    through :func:`printable`."""
    def ident(r: dict) -> tuple[str, str, str, str, str]:  # printable: a malformed field (a dict) is shown
        teacher = r.get("teacher") if isinstance(r.get("teacher"), dict) else {}
        return (printable(r.get("env_id")), printable(r.get("protocol")), setting(r),
                printable(teacher.get("sha256")), printable(r.get("agent")))

    stages: dict[tuple, set] = defaultdict(set)
    for r in records:
        stages[ident(r)].add(printable(r.get("stage")))
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        key = ident(r)[:4]
        label = printable(r.get("agent"))
        if r.get("label"):
            label = printable(r["label"])
            if known_agents is not None and label_names_another_agent(r, known_agents):
                label += f" (agent {printable(r.get('agent'))})"
        elif len(stages[ident(r)]) > 1:
            label += f" [{printable(r.get('stage'))}]"
        if known_agents is not None and r.get("agent") not in known_agents:
            label += UNREGISTERED
        groups[key][label].append(r)
    return {k: dict(v) for k, v in groups.items()}


def agent_row(label: str, runs: list[dict]) -> dict[str, Any]:
    best = [r.get("best") or {} for r in runs]
    budget = [r.get("budget") or {} for r in runs]
    rewards = [b.get("reward") for b in best]
    requested = sorted({b.get("requested") for b in budget if b.get("requested") is not None})
    return {
        "agent": label, "stage": runs[0].get("stage"), "seeds": len(runs),
        "seed_list": sorted(r.get("seed") for r in runs if r.get("seed") is not None),
        "best_reward_mean": _mean(rewards), "best_reward_std": _std(rewards),
        "compression_mean": _mean([b.get("compression") for b in best]),
        "compression_std": _std([b.get("compression") for b in best]),
        "val_acc_drop_mean": _mean([accuracy_drop(r, "val") for r in runs]),
        "val_acc_drop_std": _std([accuracy_drop(r, "val") for r in runs]),
        "test_acc_drop_mean": _mean([accuracy_drop(r, "test") for r in runs]),
        "test_acc_drop_std": _std([accuracy_drop(r, "test") for r in runs]),
        "val_acc_mean": _mean([b.get("accuracy") for b in best]),
        "test_acc_mean": _mean([b.get("test_accuracy") for b in best]),
        "params_mean": _mean([b.get("params") for b in best]), "flops_mean": _mean([b.get("flops") for b in best]),
        "flop_convention": runs[0].get("flop_convention", FLOP_CONVENTION),
        "budget": requested[0] if len(requested) == 1 else ("mixed" if requested else None),
        "evaluations_mean": _mean([b.get("evaluations") for b in budget]),
        "episodes_mean": _mean([b.get("episodes") for b in budget]),
        "env_steps_mean": _mean([b.get("env_steps") for b in budget]),
        "wall_seconds_mean": _mean([b.get("wall_seconds") for b in budget]),
        # a cap cut the run short; "agent_finished" (TAS: one search, one evaluation) is not early
        "stopped_early": sum(b.get("stop_reason") in ("max_episodes", "max_seconds") for b in budget),
    }


def leaderboard(records: list[dict], *, reps: int = DEFAULT_REPS, seed: int = DEFAULT_BOOTSTRAP_SEED,
                known_agents: Collection[str] | None = None) -> list[dict]:
    """One section per (env, protocol, reward-relevant env kwargs, teacher) (:func:`group_records`):
    its header facts and the agent rows, ranked where
    their bootstrap intervals separate (:func:`add_statistics`; ``reps`` bootstrap
    resamples, ``seed`` of the bootstrap); agents not in ``known_agents`` (if given) are
    shown unranked (:func:`group_records`)."""
    sections = []
    groups = group_records(records, known_agents)
    # (env, protocol) pairs split by setting or teacher: their sections (and plot files) say which is which
    split = defaultdict(int)
    for env_id, protocol, *_ in groups:
        split[env_id, protocol] += 1
    for (env_id, protocol, env_setting, sha), agents in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        rows = [agent_row(label, runs) for label, runs in agents.items()]
        add_statistics(rows, agents, reps=reps, seed=seed)
        first = next(iter(agents.values()))[0]
        variant = ""
        if env_setting or split[env_id, protocol] > 1:
            variant = ", ".join(([f"env kwargs {env_setting}"] if env_setting else [])
                                + ([f"teacher {sha[:12]}"] if split[env_id, protocol] > 1 else []))
        sections.append({"env_id": env_id, "env_version": first.get("env_version"), "protocol": protocol,
                         "setting": env_setting, "variant": variant,
                         "teacher": first.get("teacher") if isinstance(first.get("teacher"), dict) else {},
                         "data_variant": first.get("data_variant"), "rows": rows, "agents": agents})
    return sections


# ---------------------------------------------------------------------------- statistics (rliable)


def anytime_auc(record: dict) -> float | None:
    """Normalised area under the best-so-far curve: ``(1/B) sum_{i=1..B} best_i``, with
    ``best_i`` the best reward after ``i`` evaluations and ``B`` the run's requested
    budget (a run that stopped early keeps its last value; one that evaluated one student,
    like the no-search baseline, scores that student's reward). Reward units: it equals
    the best-found reward when that came first, and is lower the later good students come."""
    curve = [c for c in ((record.get("curve") or {}).get("best_reward") or []) if c is not None]
    if not curve:
        return None
    budget = (record.get("budget") or {}).get("requested") or len(curve)
    budget = max(int(budget), len(curve))
    return (sum(curve) + curve[-1] * (budget - len(curve))) / budget


@contextlib.contextmanager
def _seeded_numpy(seed: int):
    """rliable's stratified bootstrap draws from numpy's global generator (not only its
    ``random_state``): seed it for the call and restore it after, so tables are reproducible."""
    import numpy as np

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch: "random_state is deprecated" (rliable still passes one)
            warnings.simplefilter("ignore", FutureWarning)
            yield np.random.RandomState(seed)
    finally:
        np.random.set_state(state)


def iqm_intervals(scores: dict[str, list[float]], *, reps: int = DEFAULT_REPS,
                  seed: int = DEFAULT_BOOTSTRAP_SEED) -> dict[str, tuple[float, float, float]]:
    """``{label: (IQM, CI low, CI high)}`` of each label's per-seed scores: rliable's
    ``aggregate_iqm`` with a 95 % stratified-bootstrap percentile interval (one task, so
    the strata are the runs)."""
    import numpy as np
    from rliable import library as rly
    from rliable import metrics

    data = {k: np.asarray(v, dtype=float)[:, None] for k, v in scores.items() if len(v)}
    out = {}
    for i, (k, x) in enumerate(sorted(data.items())):
        if len(x) < MIN_SEEDS:  # one run: its value, with no interval (a bootstrap of one is zero-width)
            out[k] = (float(x[0, 0]), None, None)
            continue
        with _seeded_numpy(seed + i) as rs:
            point, ci = rly.get_interval_estimates({k: x}, lambda a: np.array([metrics.aggregate_iqm(a)]),
                                                   reps=reps, random_state=rs)
        out[k] = (float(point[k][0]), float(ci[k][0, 0]), float(ci[k][1, 0]))
    return out


def improvement_intervals(scores: dict[str, list[float]], reference: str = REFERENCE_AGENT, *,
                          reps: int = DEFAULT_REPS, seed: int = DEFAULT_BOOTSTRAP_SEED
                          ) -> dict[str, tuple[float, float, float]]:
    """``{label: (P(label > reference), CI low, CI high)}``: rliable's
    ``probability_of_improvement`` (Mann-Whitney U / (n m), ties 1/2) with a 95 %
    bootstrap interval resampling both agents' runs independently. Empty without the
    reference agent; the reference itself is left out."""
    import numpy as np
    from rliable import library as rly
    from rliable import metrics

    if len(scores.get(reference) or ()) < MIN_SEEDS:
        return {}
    y = np.asarray(scores[reference], dtype=float)[:, None]
    out = {}
    for i, (k, v) in enumerate(sorted(scores.items())):
        if k == reference or len(v) < MIN_SEEDS:
            continue
        x = np.asarray(v, dtype=float)[:, None]
        with _seeded_numpy(seed + 1000 + i) as rs:
            point, ci = rly.get_interval_estimates(
                {k: [x, y]}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=reps,
                random_state=rs)
        out[k] = (float(point[k][0]), float(ci[k][0, 0]), float(ci[k][1, 0]))
    return out


def separated_ranks(intervals: dict[str, tuple[float, float, float]]) -> dict[str, tuple[int, bool]]:
    """``{label: (rank, tied)}``: rank = 1 + the number of labels whose interval lies
    entirely above this one's (``low > high``); ``tied``: another label has the same rank."""
    intervals = {k: v for k, v in intervals.items() if v[1] is not None}  # one seed: no interval, no rank
    ranks = {k: 1 + sum(o[1] > v[2] for j, o in intervals.items() if j != k) for k, v in intervals.items()}
    counts = defaultdict(int)
    for r in ranks.values():
        counts[r] += 1
    return {k: (r, counts[r] > 1) for k, r in ranks.items()}


def add_statistics(rows: list[dict], agents: dict[str, list[dict]], *, reps: int = DEFAULT_REPS,
                   seed: int = DEFAULT_BOOTSTRAP_SEED) -> None:
    """Add to each row the IQM of best rewards and of :func:`anytime_auc` with their
    intervals, P(improvement over random search), and the interval-separated ``rank``
    (``tied``); sorts ``rows`` by rank, then IQM. Runs without a reward are left out."""
    best = {k: [float(r["best"]["reward"]) for r in runs if (r.get("best") or {}).get("reward") is not None]
            for k, runs in agents.items()}
    auc = {k: [a for a in map(anytime_auc, runs) if a is not None] for k, runs in agents.items()}
    best_ci, auc_ci = iqm_intervals(best, reps=reps, seed=seed), iqm_intervals(auc, reps=reps, seed=seed + 500)
    poi = improvement_intervals(best, reps=reps, seed=seed)
    ranks = separated_ranks({k: v for k, v in best_ci.items() if not k.endswith(UNREGISTERED)})
    for row in rows:
        k = row["agent"]
        row["best_reward_iqm"], row["best_reward_ci_low"], row["best_reward_ci_high"] = best_ci.get(k, (None,) * 3)
        row["auc_iqm"], row["auc_ci_low"], row["auc_ci_high"] = auc_ci.get(k, (None,) * 3)
        row["p_improvement"], row["p_improvement_ci_low"], row["p_improvement_ci_high"] = poi.get(k, (None,) * 3)
        row["rank"], row["tied"] = ranks.get(k, (None, False))  # None: fewer than MIN_SEEDS runs, not ranked
    rows.sort(key=lambda r: (r["rank"] if r["rank"] is not None else math.inf,
                             -(r["best_reward_iqm"] if r["best_reward_iqm"] is not None else -math.inf)))


# ---------------------------------------------------------------------------- rendering
def _pm(mean, std, fmt="{:.4f}", scale=1.0, suffix="") -> str:
    if mean is None:
        return "-"
    def f(v):  # no "-0.00"
        text = fmt.format(v * scale)
        return text[1:] if text.startswith("-") and not any(c in "123456789" for c in text) else text

    return f(mean) + suffix + (" ± " + f(std) if std is not None else "")


def _num(x, fmt="{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def _si(x) -> str:
    if x is None:
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


TABLE_HEADER = ("rank", "agent", "seeds", "best reward IQM [95% CI]", "P(> random) [95% CI]",
                "anytime AUC IQM [95% CI]", "best reward mean ± std", "compression", "val acc drop (pp)",
                "test acc drop (pp)", "params", "FLOPs", "evaluations", "episodes", "wall s")


def _ci(point, low, high, fmt="{:.4f}") -> str:
    if point is None:
        return "-"
    if low is None:
        return f"{fmt.format(point)} (1 seed, no interval)"
    return f"{fmt.format(point)} [{fmt.format(low)}, {fmt.format(high)}]"


def _table_cells(row: dict) -> list[str]:
    agent = row["agent"] + (f" ({row['stopped_early']} stopped early)" if row["stopped_early"] else "")
    unranked = "- (unregistered)" if row["agent"].endswith(UNREGISTERED) else "- (1 seed)"
    rank = unranked if row["rank"] is None else f"{row['rank']} (tied)" if row.get("tied") else str(row["rank"])
    return [rank, agent, str(row["seeds"]),
            _ci(row.get("best_reward_iqm"), row.get("best_reward_ci_low"), row.get("best_reward_ci_high")),
            _ci(row.get("p_improvement"), row.get("p_improvement_ci_low"), row.get("p_improvement_ci_high"), "{:.2f}"),
            _ci(row.get("auc_iqm"), row.get("auc_ci_low"), row.get("auc_ci_high")),
            _pm(row["best_reward_mean"], row["best_reward_std"]),
            _pm(row["compression_mean"], row["compression_std"], "{:.2f}", suffix="x"),
            _pm(row["val_acc_drop_mean"], row["val_acc_drop_std"], "{:.2f}", 100),
            _pm(row["test_acc_drop_mean"], row["test_acc_drop_std"], "{:.2f}", 100),
            _si(row["params_mean"]), _si(row["flops_mean"]), _num(row["evaluations_mean"], "{:.0f}"),
            _num(row["episodes_mean"], "{:.0f}"), _num(row["wall_seconds_mean"], "{:.0f}")]


def section_note(sec: dict) -> str:
    t = sec["teacher"]
    parts = [f"sha256 {str(t.get('sha256'))[:12]}"]
    if t.get("val_accuracy") is not None:
        parts.append(f"val acc {100 * t['val_accuracy']:.2f}%, test acc {100 * t['test_accuracy']:.2f}%")
    if t.get("params") is not None:
        parts.append(f"{t['params']:,} params, {_si(t.get('flops'))} FLOPs")
    budgets = {r["budget"] for r in sec["rows"]}
    text = "Teacher: " + ", ".join(parts) + f"; data: {sec.get('data_variant')}. "
    cut = sorted({r["at_evaluations"] for runs in sec["agents"].values() for r in runs if "at_evaluations" in r})
    if cut:
        n = ", ".join(map(str, cut))
        text += (f"**Every run scored by its best student among its first {n} evaluation"
                 f"{'' if cut == [1] else 's'}** (runs with fewer evaluations: whole; wall time only of those). ")
    few = [r["agent"] for r in sec["rows"] if r["seeds"] < MIN_SEEDS]
    if few:
        text += (f"**{', '.join(few)}: one seed only, so no interval, no P(> random) and no rank** (intervals need "
                 f"at least {MIN_SEEDS} seeds per agent; a bootstrap of one run is a zero-width interval). ")
    if getattr(PROTOCOLS.get(str(sec.get("protocol"))), "calibration", None) is not None:
        text += (f"Protocol `{sec['protocol']}` is calibrated: the students' accuracies (and their drops) are its "
                 f"estimates of the accuracy after training (the fidelity study's fit), not measurements. ")
    text += (f"Budget: {', '.join(map(str, sorted(budgets, key=str)))} student evaluations per run (cache hits "
             f"and invalid students not counted). Best reward R = Rc * Ra of each run's best student: interquartile "
             f"mean over seeds with a 95% stratified-bootstrap interval (rliable), and mean ± sample std. Rank: 1 + the "
             f"number of agents whose IQM interval lies entirely above this agent's; agents that share a rank are tied "
             f"(their intervals do not separate). P(> random): probability that a run of the agent beats a run of "
             f"uniform random search (ties 1/2). Anytime AUC: mean best-so-far reward over the budget's evaluations "
             f"(normalised area under the anytime curve). Compression = teacher params / student params; accuracy drops = teacher minus "
             f"student, percentage points; params, FLOPs: means of the best students, FLOPs counted as "
             f"{FLOP_CONVENTION}.")
    return text


def profile_name(sec: dict) -> str:
    """File name of the performance-profile plot of a section."""
    return "profile-" + plot_names(sec)[0].removeprefix("anytime-")


def plot_names(sec: dict) -> tuple[str, str, str]:
    """File names of the anytime, Pareto and learning plots of a section."""
    name = f"{sec['env_id']}-{sec['protocol']}"
    if sec.get("variant"):  # a section of several under one env and protocol: its own files
        name += "-" + hashlib.sha256(sec["variant"].encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return f"anytime-{slug}.png", f"pareto-{slug}.png", f"learning-{slug}.png"


def section_title(sec: dict, quote: str = "") -> str:
    """``env (vN), protocol p`` and, for one of several sections of that pair, its setting."""
    title = f"{sec['env_id']} (v{sec['env_version']}), protocol {quote}{sec['protocol']}{quote}"
    return title + (f"; {sec['variant']}" if sec.get("variant") else "")


def render_md(sections: list[dict], plots: bool = False) -> str:
    out = ["# n2n-gym leaderboard", ""]
    for sec in sections:
        out += [f"## {section_title(sec, '`')}", "", section_note(sec), ""]
        out.append("| " + " | ".join(TABLE_HEADER) + " |")
        out.append("|" + "|".join(["---:" if h not in ("agent",) else "---" for h in TABLE_HEADER]) + "|")
        for row in sec["rows"]:
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in _table_cells(row)) + " |")
        out.append("")
        if plots:
            anytime, pareto, learning = plot_names(sec)
            out += [f"![anytime curves]({anytime})", "", f"![accuracy vs params]({pareto})", "",
                    f"![mean reward of new students]({learning})", "", f"![performance profiles]({profile_name(sec)})",
                    ""]
    return "\n".join(out)


def render_csv(sections: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for sec in sections:
        t = sec["teacher"]
        for row in sec["rows"]:
            w.writerow({**row, "env_id": sec["env_id"], "env_version": sec["env_version"], "protocol": sec["protocol"],
                        "env_kwargs": sec.get("setting", ""),
                        "teacher_sha256": t.get("sha256"), "teacher_val_accuracy": t.get("val_accuracy"),
                        "teacher_test_accuracy": t.get("test_accuracy"), "teacher_params": t.get("params")})
    return buf.getvalue()


def render_html(sections: list[dict], plots: bool = False) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>n2n-gym leaderboard</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:nth-child(2){text-align:left}"
           "img{max-width:48%}</style></head><body>", "<h1>n2n-gym leaderboard</h1>"]
    for sec in sections:
        out.append(f"<h2>{e(section_title(sec))}</h2>")
        out.append(f"<p>{e(section_note(sec)).replace('**', '')}</p>")
        out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in TABLE_HEADER) + "</tr>")
        for row in sec["rows"]:
            out.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in _table_cells(row)) + "</tr>")
        out.append("</table>")
        if plots:
            anytime, pareto, learning = plot_names(sec)
            out.append(f"<p><img src='{e(anytime)}' alt='anytime curves'> <img src='{e(pareto)}' "
                       f"alt='accuracy vs params'> <img src='{e(learning)}' alt='mean reward of new students'> "
                       f"<img src='{e(profile_name(sec))}' alt='performance profiles'></p>")
    out.append("</body></html>")
    return "\n".join(out)


# ---------------------------------------------------------------------------- plots
def _colors(labels: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {label: cmap(i % 10) for i, label in enumerate(sorted(labels))}


def _padded(curves: list[list[float]]):
    import numpy as np

    curves = [c for c in curves if c]
    if not curves:
        return None
    n = max(len(c) for c in curves)
    return np.array([list(c) + [c[-1]] * (n - len(c)) for c in curves], dtype=float)


def plot_anytime(sec: dict, path: str | os.PathLike, band: str = "minmax") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = _colors(list(sec["agents"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    order = [row["agent"] for row in sec["rows"]]
    for label in order:
        arr = _padded([(r.get("curve") or {}).get("best_reward") or [] for r in sec["agents"][label]])
        if arr is None:
            continue
        x = np.arange(1, arr.shape[1] + 1)
        mean = arr.mean(0)
        if band == "std":
            lo, hi = mean - arr.std(0), mean + arr.std(0)
        else:
            lo, hi = arr.min(0), arr.max(0)
        ax.plot(x, mean, color=colors[label], label=f"{label} (n={arr.shape[0]})", lw=1.6)
        ax.fill_between(x, lo, hi, color=colors[label], alpha=0.15, lw=0)
    ax.set_xlabel("student evaluations (not cache hits)")
    ax.set_ylabel("best reward so far (R = Rc * Ra)")
    what = "min-max over seeds" if band != "std" else "mean ± std over seeds"
    ax.set_title(f"{sec['env_id']}, protocol {sec['protocol']}: anytime best reward\n(line: mean; band: {what})",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_profile(sec: dict, path: str | os.PathLike, *, reps: int = 2000, seed: int = DEFAULT_BOOTSTRAP_SEED) -> None:
    """Performance profiles (rliable): per agent the fraction of runs whose best reward is
    above tau, against tau, with 95 % stratified-bootstrap bands. A curve to the right of
    another dominates it stochastically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from rliable import library as rly

    scores = {label: np.asarray([r["best"]["reward"] for r in runs if (r.get("best") or {}).get("reward") is not None],
                                dtype=float)[:, None] for label, runs in sec["agents"].items()}
    scores = {k: v for k, v in scores.items() if len(v)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if scores:
        allv = np.concatenate([v.ravel() for v in scores.values()])
        lo, hi = float(allv.min()), float(allv.max())
        pad = max(hi - lo, 1e-3) * 0.05
        taus = np.linspace(lo - pad, hi + pad, 101)
        with _seeded_numpy(seed):
            profiles, cis = rly.create_performance_profile(scores, taus, reps=reps)
        colors = _colors(list(sec["agents"]))
        for row in sec["rows"]:
            k = row["agent"]
            if k not in profiles:
                continue
            ax.plot(taus, profiles[k], color=colors[k], lw=1.6, label=f"{k} (n={len(scores[k])})")
            ax.fill_between(taus, cis[k][0], cis[k][1], color=colors[k], alpha=0.15, lw=0)
        ax.legend(fontsize=8, loc="lower left")
    ax.set_xlabel("best reward tau (R = Rc * Ra)")
    ax.set_ylabel("fraction of runs with best reward > tau")
    ax.set_title(f"{sec['env_id']}, protocol {sec['protocol']}: performance profiles\n(band: 95% stratified-bootstrap "
                 f"interval, rliable)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def window_means(rewards: list[float], window: int) -> list[float]:
    """Mean of each consecutive ``window`` of rewards (the last one may be shorter)."""
    return [sum(rewards[i:i + window]) / len(rewards[i:i + window]) for i in range(0, len(rewards), window)]


def plot_learning(sec: dict, path: str | os.PathLike, window: int = 5) -> None:
    """Mean reward of the newly evaluated (valid, not cached) students per ``window`` evaluations (an N2N
    update's batch by default), mean over seeds: flat for a searcher that does not learn,
    rising for one that does. Agents with fewer than two windows (TAS) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = _colors(list(sec["agents"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in [row["agent"] for row in sec["rows"]]:
        curves = []
        for r in sec["agents"][label]:
            cols = (r.get("students") or {}).get("columns") or []
            if "reward" not in cols:
                continue
            i = cols.index("reward")
            rewards = [row[i] for row in r["students"]["data"] if row[i] is not None]
            curves.append(window_means(rewards, window))
        arr = _padded(curves)
        if arr is None or arr.shape[1] < 2:
            continue
        x = (np.arange(arr.shape[1]) + 1) * window
        ax.plot(x, arr.mean(0), marker="o", ms=3, color=colors[label], label=f"{label} (n={arr.shape[0]})", lw=1.6)
    ax.set_xlabel("student evaluations (not cache hits)")
    ax.set_ylabel(f"mean reward of the last {window} new students")
    ax.set_title(f"{sec['env_id']}, protocol {sec['protocol']}: does the agent learn?\n(mean over seeds; "
                 f"valid students only, repeats not counted)", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no agent with two windows: an empty plot, no legend
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (params, accuracy) not dominated by another (fewer-or-equal params and
    higher accuracy), sorted by params."""
    front, best = [], -math.inf
    for p, a in sorted(points, key=lambda pa: (pa[0], -pa[1])):
        if a > best:
            front.append((p, a))
            best = a
    return front


def _student_points(record: dict, metric: str) -> list[tuple[float, float]]:
    st = record.get("students") or {}
    cols = st.get("columns") or []
    key = "test_accuracy" if metric == "test" else "accuracy"
    if "params" in cols and key in cols and st.get("data"):
        ip, ia = cols.index("params"), cols.index(key)
        return [(row[ip], row[ia]) for row in st["data"] if row[ip]]
    best = record.get("best") or {}
    return [(best["params"], best[key])] if best.get("params") and best.get(key) is not None else []


def plot_pareto(sec: dict, path: str | os.PathLike, metric: str = "test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _colors(list(sec["agents"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in sec["rows"]:
        label = row["agent"]
        points = [p for r in sec["agents"][label] for p in _student_points(r, metric)]
        if not points:
            continue
        xs, ys = zip(*points)
        ax.scatter(xs, ys, s=9, alpha=0.25, color=colors[label], lw=0)
        front = pareto_front(points)
        fx, fy = zip(*front)
        ax.step(fx, fy, where="post", color=colors[label], lw=1.6, label=f"{label} ({len(points)} students)")
        ax.scatter(fx, fy, s=18, color=colors[label], edgecolor="k", lw=0.4, zorder=3)
    t = sec["teacher"]
    tkey = "test_accuracy" if metric == "test" else "val_accuracy"
    if t.get("params") and t.get(tkey) is not None:
        ax.scatter([t["params"]], [t[tkey]], marker="*", s=160, color="k", label="teacher", zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("student params (log scale)")
    ax.set_ylabel(f"{'test' if metric == 'test' else 'validation'} accuracy")
    ax.set_title(f"{sec['env_id']}, protocol {sec['protocol']}: evaluated students and each agent's Pareto front",
                 fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- CLI
RENDER = {"md": render_md, "csv": render_csv, "html": render_html}


def write(sections: list[dict], out: str | os.PathLike, fmt: str = "md", plots: bool = True, band: str = "minmax",
          metric: str = "test") -> list[pathlib.Path]:
    """Write ``leaderboard.<fmt>`` and the plots into ``out``; returns the paths written."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if plots:
        for sec in sections:
            anytime, pareto, learning = plot_names(sec)
            plot_anytime(sec, out / anytime, band)
            plot_pareto(sec, out / pareto, metric)
            plot_learning(sec, out / learning)
            plot_profile(sec, out / profile_name(sec))
            written += [out / anytime, out / pareto, out / learning, out / profile_name(sec)]
    path = out / f"leaderboard.{fmt}"
    text = render_csv(sections) if fmt == "csv" else RENDER[fmt](sections, plots=plots)
    path.write_text(text)
    return [path, *written]


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="n2n-gym leaderboard", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="*", help="JSONL results files of n2n-gym bench")
    p.add_argument("--format", choices=sorted(RENDER), default="md", help="table format (default md)")
    p.add_argument("--out", default=None, help="folder for leaderboard.<format> and the PNG plots (default: "
                                                "print the table)")
    p.add_argument("--wandb-project", default=None, help="also read the runs of this W&B ENTITY/PROJECT (online)")
    p.add_argument("--band", choices=("minmax", "std"), default="minmax", help="seed band of the anytime plot")
    p.add_argument("--metric", choices=("test", "val"), default="test", help="accuracy of the Pareto plot")
    p.add_argument("--no-plots", action="store_true", help="write no PNG")
    p.add_argument("--reps", type=int_at_least(100), default=DEFAULT_REPS,
                   help=f"bootstrap resamples per confidence interval (default {DEFAULT_REPS})")
    p.add_argument("--at-evaluations", type=int_at_least(1), default=None, metavar="N",
                   help="score every run by its best student among its first N evaluations (runs of different "
                        "budgets at equal evaluations; a run that stopped earlier is kept whole)")
    p.add_argument("--bootstrap-seed", type=int, default=DEFAULT_BOOTSTRAP_SEED,
                   help=f"seed of the bootstrap: the same records give the same table (default {DEFAULT_BOOTSTRAP_SEED})")
    return p


def main(argv: list[str] | None = None) -> int:
    """``n2n-gym leaderboard ...``; returns the exit status."""
    return run_args(build_parser().parse_args(argv))


def run_args(args: argparse.Namespace) -> int:
    """Run the parsed arguments of :func:`build_parser` (for a CLI with subcommands)."""
    if not args.results and not args.wandb_project:
        raise SystemExit("give results files and/or --wandb-project")
    skipped: list[tuple[str, str]] = []
    records = load(args.results, args.wandb_project, skipped)
    unreadable = [where for where, why in skipped if why.startswith("cannot read the file")]
    copies = [where for where, why in skipped if why.startswith("a copy of the run")]
    for where, why in skipped:
        print(f"skipped {printable(where, 300)}: {why}", file=sys.stderr)
    if len(skipped) > len(unreadable) + len(copies):
        print(f"skipped {len(skipped) - len(unreadable) - len(copies)} record(s) that fail the schema or their own "
              f"checks (n2n-gym validate says more)", file=sys.stderr)
    from n2n_gym.bench.runner import AGENTS  # records come from anyone: an agent of no registry is not ranked

    for (env_id, protocol, *_), agents in group_records(records, AGENTS).items():
        for label, runs in agents.items():
            seeds = [r.get("seed") for r in runs]
            repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
            if repeated:
                print(f"warning: {env_id} ({protocol}): {label} has several runs of seed(s) {repeated}; each counts "
                      "as one more seed in the statistics (give the variants a --label, or keep one file per budget)",
                      file=sys.stderr)
            if len(runs) < MIN_SEEDS:
                print(f"note: {env_id} ({protocol}): {label} has one seed: shown without an interval, P(> random) or "
                      f"rank (they need >= {MIN_SEEDS} seeds; run more with --seeds)", file=sys.stderr)
    if not records:
        print("no records found", file=sys.stderr)
        return 2
    if args.at_evaluations is not None:
        try:
            records = [at_evaluations(r, args.at_evaluations) for r in records]
        except ValueError as exc:
            raise SystemExit(f"n2n-gym leaderboard: error: {exc}") from None
        if not any("at_evaluations" in r for r in records):
            print(f"note: no run has more than {args.at_evaluations} evaluations: nothing was cut", file=sys.stderr)
    sections = leaderboard(records, reps=args.reps, seed=args.bootstrap_seed, known_agents=AGENTS)
    if args.out:
        for path in write(sections, args.out, args.format, not args.no_plots, args.band, args.metric):
            print(f"wrote {path}")
    else:
        sys.stdout.write(RENDER[args.format](sections) if args.format != "csv" else render_csv(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
