"""TAS vs the N2N agent at equal compute, from benchmark-runner records.

    python -m n2n_gym.benchmarks.tas_vs_n2n --env N2N-DigitsNet-Digits-v0 --budget 60 --seeds 0 1 2 \
        --results benchmarks/results/leaderboard-digits.jsonl --run
    python -m n2n_gym.benchmarks.tas_vs_n2n --env N2N-VGG13-MNIST-v0 --budget 40 \
        --results benchmarks/results/leaderboard-mnist.jsonl

Both methods go through ``n2n-gym bench`` (``n2n_gym.bench.runner.run_one``) with the same
``--budget``: the N2N agent may evaluate that many distinct students; TAS gets a search
whose compute equals that many evaluations (``n2n_gym/agents/tas.py``, ``--budget-evaluations``)
plus its one evaluation. ``--run`` runs whatever (agent, seed) is missing from the
results file first, appending to it (so the leaderboard includes both); without it the
script only summarises. Records of ``n2n-gym bench --agent n2n --stage joint`` (N2N's shrink
policy on the joint remove-or-shrink action space) at the same budget are reported as a
third row, ``n2n [joint]``, when the file has them.

Compute is reported in student-epoch equivalents: an RL evaluation under the ``fast``
protocol trains its student for ``epochs x train_images / train split`` epochs; TAS's
figure is the search's FLOPs over (derived student FLOPs x train split) plus its
evaluation (``extra.tas.total_student_epochs`` of its record). Output:
``benchmarks/results/tas_vs_n2n_<env>.json`` and ``.png`` (best reward per seed, and test
accuracy against the FLOPs ratio of each best student).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

ROOT = pathlib.Path(__file__).resolve().parents[1]
from n2n_gym.bench.records import read_records

RESULTS = ROOT / "benchmarks" / "results"
#: (label, runner agent, stage): the paper's two-stage N2N, N2N's shrink policy on the joint
#: stage (reported when its records exist), and TAS
VARIANTS = (("n2n", "n2n", "remove,shrink"), ("n2n [joint]", "n2n", "joint"), ("tas", "tas", "joint"))
REQUIRED = ("n2n", "tas")


def epochs_per_evaluation(env_id: str, protocol: str, env_kwargs: dict | None = None) -> float:
    """Student epochs one RL evaluation costs on ``env_id`` (loads the env's data split)."""
    import gymnasium as gym

    import n2n_gym  # noqa: F401
    from n2n_gym.agents.tas import (
        evaluation_epochs,  # the same count TAS sizes its search with
    )
    from n2n_gym.evaluation.protocols import get_protocol

    env = gym.make(env_id, **{**(env_kwargs or {}), "protocol": protocol})
    try:
        split = len(env.unwrapped.evaluator.data.train_idx)
    finally:
        env.close()
    return evaluation_epochs(get_protocol(protocol), split)


def select(records: list[dict], env_id: str, agent: str, stage: str, budget: int, protocol: str,
           seeds: list[int]) -> list[dict]:
    """The latest record of each seed of (env, agent, stage, budget, protocol)."""
    by_seed: dict[int, dict] = {}
    for r in records:
        if (r.get("env_id"), r.get("agent"), r.get("stage"), r.get("protocol"),
                (r.get("budget") or {}).get("requested")) == (env_id, agent, stage, protocol, budget) \
                and r.get("seed") in seeds:
            by_seed[r["seed"]] = r
    return [by_seed[s] for s in sorted(by_seed)]


def run_row(record: dict, epochs_per_eval: float) -> dict:
    best, budget, teacher = record["best"], record["budget"], record["teacher"]
    tas = (record.get("extra") or {}).get("tas")
    if tas is not None:
        epochs = tas.get("total_student_epochs")
    else:
        epochs = budget["evaluations"] * epochs_per_eval
    flops_ratio = best["flops"] / teacher["flops"] if best.get("flops") and teacher.get("flops") else None
    return {"seed": record["seed"], "reward": best.get("reward"), "compression": best.get("compression"),
            "val_accuracy": best.get("accuracy"), "test_accuracy": best.get("test_accuracy"),
            "params": best.get("params"), "flops_ratio": flops_ratio, "student_epochs": epochs,
            "evaluations": budget["evaluations"], "wall_seconds": budget["wall_seconds"],
            "stop_reason": budget["stop_reason"], "in_band": (tas or {}).get("in_band")}


def summarise(rows: list[dict]) -> dict:
    out: dict = {"seeds": len(rows)}
    for key in ("reward", "compression", "val_accuracy", "test_accuracy", "flops_ratio", "student_epochs",
                "wall_seconds"):
        xs = [r[key] for r in rows if r[key] is not None]
        out[key] = statistics.fmean(xs) if xs else None
        out[key + "_std"] = statistics.stdev(xs) if len(xs) > 1 else None
    return out


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"n2n": "tab:blue", "n2n [joint]": "tab:green", "tas": "tab:orange"}
    labels = list(result["runs"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, agent in enumerate(labels):
        rows = result["runs"].get(agent, [])
        ax1.scatter([i] * len(rows), [r["reward"] for r in rows], color=colors[agent], zorder=3)
        if rows:
            ax1.hlines(result["summary"][agent]["reward"], i - 0.2, i + 0.2, color=colors[agent])
        ax2.scatter([r["flops_ratio"] for r in rows], [100 * r["test_accuracy"] for r in rows], color=colors[agent],
                    label=f"{agent} ({result['summary'].get(agent, {}).get('student_epochs') or 0:.1f} student-epochs)")
    teacher = result["teacher"]
    ax2.axhline(100 * teacher["test_accuracy"], color="gray", ls="--", lw=1, label="teacher")
    ax1.set_xticks(range(len(labels)), labels)
    ax1.set_ylabel("best reward (validation)")
    ax1.set_title(f"{result['env_id']}, budget {result['budget']} evaluations")
    ax2.set_xlabel("FLOPs of the best student / teacher")
    ax2.set_ylabel("test accuracy (%)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="N2N-DigitsNet-Digits-v0", help="env id")
    p.add_argument("--budget", type=int, default=60, help="student evaluations (TAS: their compute)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--protocol", default="fast")
    p.add_argument("--results", required=True, help="runner JSONL results file (read, and appended to with --run)")
    p.add_argument("--env-kwargs", type=json.loads, default={}, metavar="JSON", help="extra gym.make kwargs of --run")
    p.add_argument("--run", action="store_true", help="run the missing (agent, seed) pairs first")
    p.add_argument("--threads", type=int, default=1, help="torch threads of --run")
    p.add_argument("--out", default=str(RESULTS), help="folder of the json and png")
    args = p.parse_args(argv)

    if args.run:
        import torch

        from n2n_gym.bench.runner import run_one, summary_line

        torch.set_num_threads(args.threads)
        for agent, stage in (("n2n", "remove,shrink"), ("tas", "joint")):
            done = {r["seed"] for r in select(read_records(args.results) if pathlib.Path(args.results).exists()
                                              else [], args.env, agent, stage, args.budget, args.protocol,
                                              args.seeds)}
            for seed in (s for s in args.seeds if s not in done):
                print(summary_line(run_one(args.env, agent, seed, args.budget, protocol=args.protocol,
                                           env_kwargs=args.env_kwargs, results=args.results)), flush=True)

    records = read_records(args.results)
    chosen = {label: select(records, args.env, agent, stage, args.budget, args.protocol, args.seeds)
              for label, agent, stage in VARIANTS}
    missing = [a for a in REQUIRED if not chosen[a]]
    if missing:
        raise SystemExit(f"no {', '.join(missing)} records for {args.env} at budget {args.budget} in {args.results}; "
                         "add --run to run them")
    per_eval = epochs_per_evaluation(args.env, args.protocol, args.env_kwargs)
    runs = {a: [run_row(r, per_eval) for r in rs] for a, rs in chosen.items() if rs}
    first = next(r for r in records if r.get("env_id") == args.env)
    result = {"env_id": args.env, "budget": args.budget, "protocol": args.protocol,
              "data_variant": first.get("data_variant"), "teacher": first["teacher"],
              "epochs_per_evaluation": per_eval, "runs": runs, "summary": {a: summarise(rows) for a, rows in runs.items()}}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"tas_vs_n2n_{args.env.lower()}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    plot(result, out / f"{stem}.png")
    print(f"{args.env} ({result['data_variant']}), {args.protocol} protocol, budget {args.budget} evaluations; "
          f"teacher test acc {first['teacher']['test_accuracy']:.4f}")
    print("| agent | seeds | best reward | compression | FLOPs ratio | test acc | student-epochs | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for a, rows in runs.items():
        s = summarise(rows)
        std = s["reward_std"] or 0.0
        print(f"| {a} | {s['seeds']} | {s['reward']:.4f} ± {std:.4f} | {s['compression']:.2f}x | "
              f"{s['flops_ratio']:.3f} | {100 * s['test_accuracy']:.2f} % | {s['student_epochs']:.1f} | "
              f"{s['wall_seconds']:.0f} |")
    print(f"-> {out / stem}.json, .png")
    return result


if __name__ == "__main__":
    main()
