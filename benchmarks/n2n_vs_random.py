"""N2N agent vs uniform random search at equal numbers of student evaluations.

Both methods run the same two-stage pipeline (removal, then shrinkage from the best
stage-1 student) with the same number of episodes (= evaluated students) per stage; the
random searcher draws every action uniformly among the allowed ones
(``info["action_mask"]``) and never learns. We compare the best reward found after each
number of evaluations, over several seeds.

    python -m n2n_gym.benchmarks.n2n_vs_random                       # embedded digits env, 3 seeds
    python -m n2n_gym.benchmarks.n2n_vs_random --env N2N-VGG13-MNIST-v0 --updates 10,20 --seeds 0 1 2

Results: ``benchmarks/results/n2n_vs_random_<env>.json`` (written after every run, so an
interrupted benchmark keeps its finished runs and skips them when started again) and
``benchmarks/results/n2n_vs_random_<env>.png``. Evaluations are cached by the env (the
same student is never trained twice, by either method), which does not change any
result: a student's score is a deterministic function of its architecture.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
from n2n_gym.agents.n2n import N2N, Args

RESULTS = ROOT / "benchmarks" / "results"
METHODS = ("n2n", "random")


def best_so_far(rewards: list[float]) -> list[float]:
    return np.maximum.accumulate(np.asarray(rewards, dtype=float)).tolist()


def run_one(env_id: str, env_kwargs: dict, protocol: str, updates: str, rollouts: int, seed: int, method: str,
            extra: dict) -> dict:
    args = Args(env_id=env_id, env_kwargs=env_kwargs, protocol=protocol, updates=updates, rollouts=rollouts, seed=seed,
                random_search=(method == "random"), progress=False, **extra)
    start = time.perf_counter()
    search = N2N(args)
    history = search.run()
    seconds = time.perf_counter() - start
    best = search.best
    rewards = [r["reward"] for r in history]
    seen: set = set()
    new = []  # was this evaluation the first of its student in this run (a student trained, not a repeat)?
    for r in history:
        key = r.get("architecture") or f"invalid:{r['stage']}:{r['actions']}"
        new.append(key not in seen)
        seen.add(key)
    return {
        "method": method, "seed": seed, "seconds": seconds, "evaluations": len(history),
        "distinct_students": len({r["architecture"] for r in history if r.get("architecture")}),
        "uncached_evaluations": sum(not r["cached"] for r in history),
        "rewards": rewards, "best_so_far": best_so_far(rewards), "new_student": new,
        "best_so_far_by_distinct": best_so_far([x for x, n in zip(rewards, new) if n]),
        "stages": [r["stage"] for r in history],
        "batch_mean_rewards": [u["mean_reward"] for u in search.update_log],
        "best": {k: best[k] for k in ("reward", "accuracy", "test_accuracy", "params", "compression", "flops", "stage",
                                      "evaluation", "architecture")},
        "teacher": {"params": best["teacher_params"], "val_accuracy": best["teacher_accuracy"],
                    "test_accuracy": best["teacher_test_accuracy"]},
    }


def summarise(runs: list[dict], checkpoints: list[int]) -> dict:
    out = {}
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        curves = np.array([r["best_so_far"] for r in rs])
        out[method] = {
            "seeds": [r["seed"] for r in rs],
            "final_best_mean": float(curves[:, -1].mean()), "final_best_std": float(curves[:, -1].std()),
            "final_best_per_seed": curves[:, -1].tolist(),
            "best_at": {str(c): float(curves[:, c - 1].mean()) for c in checkpoints if c <= curves.shape[1]},
            "compression_of_best": [r["best"]["compression"] for r in rs],
            "val_accuracy_of_best": [r["best"]["accuracy"] for r in rs],
            "test_accuracy_of_best": [r["best"]["test_accuracy"] for r in rs],
            "distinct_students_mean": float(np.mean([r["distinct_students"] for r in rs])),
            "seconds_mean": float(np.mean([r["seconds"] for r in rs])),
        }
    if "n2n" in out and "random" in out:
        n2n = {r["seed"]: r["best_so_far"][-1] for r in runs if r["method"] == "n2n"}
        rnd = {r["seed"]: r["best_so_far"][-1] for r in runs if r["method"] == "random"}
        common = sorted(set(n2n) & set(rnd))
        out["n2n_wins"] = sum(n2n[s] > rnd[s] for s in common)
        out["ties"] = sum(n2n[s] == rnd[s] for s in common)
        out["paired_seeds"] = len(common)
        # mean over evaluations of the best-so-far gap (area between the curves)
        gaps = [np.mean(np.array(r1["best_so_far"]) - np.array(r2["best_so_far"]))
                for r1 in runs if r1["method"] == "n2n"
                for r2 in runs if r2["method"] == "random" and r2["seed"] == r1["seed"]]
        out["mean_best_so_far_gap"] = float(np.mean(gaps)) if gaps else None
        # equal numbers of students actually trained (repeats of a student are free: cached)
        pairs = []
        for r1 in runs:
            for r2 in runs:
                if r1["method"] == "n2n" and r2["method"] == "random" and r2["seed"] == r1["seed"] \
                        and "best_so_far_by_distinct" in r1 and "best_so_far_by_distinct" in r2:
                    k = min(len(r1["best_so_far_by_distinct"]), len(r2["best_so_far_by_distinct"]))
                    pairs.append((r1["seed"], k, r1["best_so_far_by_distinct"][k - 1],
                                  r2["best_so_far_by_distinct"][k - 1]))
        if pairs:
            out["at_equal_distinct_students"] = {
                "per_seed": [{"seed": s_, "distinct_students": k, "n2n": a, "random": b} for s_, k, a, b in pairs],
                "n2n_mean": float(np.mean([a for *_, a, _ in pairs])),
                "random_mean": float(np.mean([b for *_, b in pairs])),
                "n2n_wins": sum(a > b for *_, a, b in pairs)}
    return out


def plot(runs: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    colors = {"n2n": "tab:red", "random": "tab:grey"}
    labels = {"n2n": "N2N agent (REINFORCE, LSTM policies)", "random": "uniform random search"}
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        curves = np.array([r["best_so_far"] for r in rs])
        x = np.arange(1, curves.shape[1] + 1)
        ax = axes[0]
        ax.plot(x, curves.mean(0), color=colors[method], label=f"{labels[method]} ({len(rs)} seeds)")
        ax.fill_between(x, curves.min(0), curves.max(0), color=colors[method], alpha=0.2)
        for j, r in enumerate(rs):  # one line per seed: runs train different numbers of students
            if "best_so_far_by_distinct" in r:
                d = r["best_so_far_by_distinct"]
                axes[2].step(np.arange(1, len(d) + 1), d, where="post", color=colors[method], alpha=0.5, lw=0.9,
                             label=labels[method] if j == 0 else None)
                axes[2].plot([len(d)], [d[-1]], "o", color=colors[method], ms=3)
        batch = np.array([r["batch_mean_rewards"] for r in rs])
        ax = axes[1]
        xb = np.arange(1, batch.shape[1] + 1)
        ax.plot(xb, batch.mean(0), color=colors[method], label=labels[method])
        ax.fill_between(xb, batch.min(0), batch.max(0), color=colors[method], alpha=0.2)
    stages = runs[0]["stages"]
    bounds = [i for i in range(1, len(stages)) if stages[i] != stages[i - 1]]
    rollouts = len(runs[0]["rewards"]) // max(len(runs[0]["batch_mean_rewards"]), 1)
    for b in bounds:
        axes[0].axvline(b + 0.5, color="black", ls="--", lw=0.8)
        axes[1].axvline(b / max(rollouts, 1) + 0.5, color="black", ls="--", lw=0.8)
    lo = min(min(r["best_so_far"][max(len(r["best_so_far"]) // 10, 0)] for r in runs) - 0.02, 0.9)
    axes[0].set_ylim(max(lo, -1.0), 1.0)
    axes[0].set_xlabel("student evaluations")
    axes[0].set_ylabel("best reward so far (mean; band: min-max over seeds)")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[1].set_xlabel("policy update (batch of rollouts)")
    axes[1].set_ylabel("mean reward of the batch")
    lowest = min(min(r["batch_mean_rewards"]) for r in runs)
    axes[1].set_ylim(max(-1.05, lowest - 0.05), 1.0)
    axes[1].legend(loc="lower right", fontsize=8)
    axes[2].set_ylim(*axes[0].get_ylim())
    axes[2].set_xlabel("distinct students trained (repeats are cached, free)")
    axes[2].set_ylabel("best reward so far (per seed; dot: run end)")
    axes[2].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--env", default="N2N-DigitsNet-Digits-v0", help="env id")
    p.add_argument("--env-kwargs", type=json.loads, default={}, metavar="JSON", help="extra gym.make arguments")
    p.add_argument("--protocol", default="fast", help="student evaluation protocol")
    p.add_argument("--updates", default="20,40", help="policy updates per stage (as n2n-gym compress)")
    p.add_argument("--rollouts", type=int, default=5, help="students per update")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods to run")
    p.add_argument("--agent-kwargs", type=json.loads, default={}, metavar="JSON",
                   help="extra agents.n2n.Args fields for the N2N agent (e.g. '{\"lr_shrink\": 0.03}')")
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    p.add_argument("--fresh", action="store_true", help="ignore runs already in the result file")
    ns = p.parse_args(argv)

    out = pathlib.Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ns.env).strip("-").lower() + (f"-{ns.tag}" if ns.tag else "")
    json_path, png_path = out / f"n2n_vs_random_{slug}.json", out / f"n2n_vs_random_{slug}.png"
    setup = {"env": ns.env, "env_kwargs": ns.env_kwargs, "protocol": ns.protocol, "updates": ns.updates,
             "rollouts": ns.rollouts, "agent_kwargs": ns.agent_kwargs}
    runs: list[dict] = []
    if json_path.exists() and not ns.fresh:
        saved = json.loads(json_path.read_text())
        if saved.get("setup") == setup:
            runs = saved["runs"]
    done = {(r["method"], r["seed"]) for r in runs}
    for seed in ns.seeds:
        for method in ns.methods:
            if (method, seed) in done:
                continue
            extra = ns.agent_kwargs if method == "n2n" else {}
            r = run_one(ns.env, ns.env_kwargs, ns.protocol, ns.updates, ns.rollouts, seed, method, extra)
            runs.append(r)
            print(f"{method:>6} seed {seed}: best reward {r['best']['reward']:.4f} "
                  f"({r['best']['compression']:.2f}x, val acc {r['best']['accuracy']:.4f}) after {r['evaluations']} "
                  f"evaluations ({r['distinct_students']} distinct), {r['seconds']:.0f} s", flush=True)
            n_eval = len(runs[0]["rewards"])
            checkpoints = sorted({c for c in (25, 50, 100, 150, 200, 300, 400, 500) if c < n_eval} | {n_eval})
            result = {"setup": setup, "summary": summarise(runs, checkpoints), "runs": runs,
                      "command": "python -m n2n_gym.benchmarks.n2n_vs_random " + " ".join(argv if argv is not None
                                                                               else sys.argv[1:])}
            tmp = json_path.with_name(json_path.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(json_path)
    if not runs:
        return
    n_eval = len(runs[0]["rewards"])
    title = (f"{ns.env}: N2N vs random search, {ns.updates} updates x {ns.rollouts} rollouts "
             f"({n_eval} students per run), protocol {ns.protocol}")
    plot(runs, png_path, title)
    summary = json.loads(json_path.read_text())["summary"]
    print(json.dumps(summary, indent=1))
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
