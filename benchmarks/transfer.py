"""Transfer: does a policy pre-trained on a smaller teacher learn faster on a larger one?

The N2N paper (Sec. 4.4) pre-trains a policy on a small teacher and fine-tunes it on a
larger one. Here: pre-train the N2N policy of one stage on the source teacher, then run
the same stage on the target teacher (same data set) from the pre-trained weights and
from a fresh initialisation, over several seeds, and count the policy updates until the
batch-mean reward first reaches a threshold. The policies read the layer count from the
observation, so the weights load whatever the depth of the target.

    python -m n2n_gym.benchmarks.transfer                                    # digitsnet -> resnet20 on digits
    python -m n2n_gym.benchmarks.transfer --source resnet20 --target resnet56 --threshold 0.8

Results: ``benchmarks/results/transfer_<source>_to_<target>_<stage>.json`` (written after
every run; finished runs are skipped when started again) and the ``.png`` beside it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
from n2n_gym.agents.n2n import N2N, Args, save_policies
from n2n_gym.utils.checks import int_at_least

RESULTS = ROOT / "benchmarks" / "results"


def updates_to_reach(batch_means: list[float], threshold: float) -> int | None:
    """1-based index of the first update whose batch-mean reward is >= threshold."""
    for i, m in enumerate(batch_means):
        if m >= threshold:
            return i + 1
    return None


def search(env_id: str, teacher: str, stage: str, updates: int, rollouts: int, seed: int, protocol: str,
           load_policy: str | None = None, extra: dict | None = None) -> tuple[N2N, float]:
    args = Args(env_id=env_id, env_kwargs={"teacher": teacher, "progress": False}, stages=stage, updates=str(updates),
                rollouts=rollouts, seed=seed, protocol=protocol, load_policy=load_policy, progress=False,
                **(extra or {}))
    start = time.perf_counter()
    s = N2N(args)
    s.run()
    return s, time.perf_counter() - start


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["setup"]
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"fresh": "tab:grey", "pretrained": "tab:red"}
    labels = {"fresh": "fresh policy", "pretrained": f"pre-trained on {s['source']}"}
    for kind in ("fresh", "pretrained"):
        rs = [r for r in result["runs"] if r["init"] == kind]
        if not rs:
            continue
        batch = np.array([r["batch_mean_rewards"] for r in rs])
        x = np.arange(1, batch.shape[1] + 1)
        axes[0].plot(x, batch.mean(0), color=colors[kind], label=f"{labels[kind]} ({len(rs)} seeds)")
        axes[0].fill_between(x, batch.min(0), batch.max(0), color=colors[kind], alpha=0.2)
        # runs differ in episodes (N2N resamples repeated proposals): pad with each run's final best
        curves = [np.maximum.accumulate(r["rewards"]) for r in rs]
        n = max(len(c) for c in curves)
        best = np.array([np.concatenate([c, np.full(n - len(c), c[-1])]) for c in curves])
        xe = np.arange(1, best.shape[1] + 1)
        axes[1].plot(xe, best.mean(0), color=colors[kind], label=labels[kind])
        axes[1].fill_between(xe, best.min(0), best.max(0), color=colors[kind], alpha=0.2)
    axes[0].axhline(s["threshold"], color="black", ls="--", lw=0.8, label=f"threshold {s['threshold']}")
    axes[0].set_xlabel(f"policy update on {s['target']} ({s['rollouts']} students each)")
    axes[0].set_ylabel("batch-mean reward (mean; band: min-max)")
    axes[0].legend(loc="best", fontsize=8)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("episodes (students proposed; repeats are cache hits)")
    axes[1].set_ylabel("best reward so far")
    axes[1].legend(loc="best", fontsize=8)
    fig.suptitle(f"transfer of the '{s['stage']}' policy: {s['source']} -> {s['target']} ({s['env']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _reward(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not -1.0 <= value <= 1.0:  # N2N's R lies in [-1, 1] (nan fails this too)
        raise argparse.ArgumentTypeError(f"must be a reward in [-1, 1], got {text!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--env", default="N2N-DigitsNet-Digits-v0", help="env id (its data set is used for both teachers)")
    p.add_argument("--source", default="digitsnet", help="smaller zoo teacher to pre-train on")
    p.add_argument("--target", default="resnet20", help="larger zoo teacher to transfer to")
    p.add_argument("--stage", default="remove", choices=("remove", "shrink", "joint"), help="the stage whose policy transfers")
    p.add_argument("--pretrain-updates", type=int_at_least(1), default=40, help="updates on the source teacher")
    p.add_argument("--updates", type=int_at_least(1), default=25, help="updates on the target teacher per run")
    p.add_argument("--rollouts", type=int_at_least(1), default=5, help="students per update")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the target runs")
    p.add_argument("--pretrain-seed", type=int, default=100, help="seed of the pre-training run")
    p.add_argument("--threshold", type=_reward, default=0.8, help="batch-mean reward to reach")
    p.add_argument("--protocol", default="fast", help="student evaluation protocol")
    p.add_argument("--agent-kwargs", type=json.loads, default={}, metavar="JSON", help="extra agents.n2n.Args fields")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    p.add_argument("--fresh", action="store_true", help="ignore runs already in the result file")
    ns = p.parse_args(argv)
    if len(set(ns.seeds)) != len(ns.seeds):
        p.error(f"--seeds has repeats ({ns.seeds}): each seed is one run and counts once in the statistics")

    out = pathlib.Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"transfer_{ns.source}_to_{ns.target}_{ns.stage}"
    json_path, png_path, policy_path = out / f"{stem}.json", out / f"{stem}.png", out / f"{stem}_policy.pt"
    setup = {k: getattr(ns, k) for k in ("env", "source", "target", "stage", "pretrain_updates", "updates", "rollouts",
                                         "pretrain_seed", "threshold", "protocol", "agent_kwargs")}
    result = {"setup": setup, "pretrain": None, "runs": []}
    if json_path.exists() and not ns.fresh:
        saved = json.loads(json_path.read_text())
        if {k: v for k, v in saved["setup"].items() if k != "threshold"} == \
                {k: v for k, v in setup.items() if k != "threshold"}:
            result["pretrain"], result["runs"] = saved["pretrain"], saved["runs"]

    def write() -> None:
        summary = {}
        for kind in ("fresh", "pretrained"):
            rs = [r for r in result["runs"] if r["init"] == kind]
            if not rs:
                continue
            reach = [updates_to_reach(r["batch_mean_rewards"], ns.threshold) for r in rs]
            for r, u in zip(rs, reach):
                r["updates_to_threshold"] = u
            summary[kind] = {
                "seeds": [r["seed"] for r in rs],
                "updates_to_threshold": reach,
                "updates_to_threshold_mean (never -> updates + 1)": float(np.mean([u or ns.updates + 1 for u in reach])),
                "reached": sum(u is not None for u in reach),
                "mean_batch_reward_over_run": float(np.mean([np.mean(r["batch_mean_rewards"]) for r in rs])),
                "first_update_batch_reward_mean": float(np.mean([r["batch_mean_rewards"][0] for r in rs])),
                "final_best_reward_mean": float(np.mean([max(r["rewards"]) for r in rs])),
                "seconds_mean": float(np.mean([r["seconds"] for r in rs])),
            }
        if "fresh" in summary and "pretrained" in summary:
            # rliable statistics (as the leaderboard's): IQM of updates-to-threshold with a 95 %
            # stratified-bootstrap interval, and P(a pre-trained run reaches it sooner than a fresh one)
            from n2n_gym.bench.leaderboard import improvement_intervals, iqm_intervals

            u = {k: [x or ns.updates + 1 for x in summary[k]["updates_to_threshold"]] for k in ("fresh", "pretrained")}
            for k, v in iqm_intervals(u, reps=2000).items():
                summary[k]["updates_to_threshold_iqm_ci95"] = list(v)
            p = improvement_intervals({k: [-x for x in v] for k, v in u.items()}, reference="fresh", reps=2000)
            summary["p_pretrained_sooner_ci95"] = list(p["pretrained"])
        result["summary"] = summary
        result["setup"]["threshold"] = ns.threshold
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(json_path)

    if result["pretrain"] is None or not policy_path.exists():
        print(f"pre-training the {ns.stage} policy on {ns.source} ({ns.pretrain_updates} updates) ...", flush=True)
        s, sec = search(ns.env, ns.source, ns.stage, ns.pretrain_updates, ns.rollouts, ns.pretrain_seed, ns.protocol,
                        extra=ns.agent_kwargs)
        save_policies(s, policy_path)
        result["pretrain"] = {"seconds": sec, "batch_mean_rewards": [u["mean_reward"] for u in s.update_log],
                              "best_reward": s.best["reward"], "policy": policy_path.name}
        result["runs"] = []
        write()
        print(f"  done in {sec:.0f} s; batch-mean reward {result['pretrain']['batch_mean_rewards'][0]:.3f} -> "
              f"{result['pretrain']['batch_mean_rewards'][-1]:.3f}", flush=True)
    done = {(r["init"], r["seed"]) for r in result["runs"]}
    for seed in ns.seeds:
        for kind in ("fresh", "pretrained"):
            if (kind, seed) in done:
                continue
            s, sec = search(ns.env, ns.target, ns.stage, ns.updates, ns.rollouts, seed, ns.protocol,
                            load_policy=str(policy_path) if kind == "pretrained" else None, extra=ns.agent_kwargs)
            batch = [u["mean_reward"] for u in s.update_log]
            result["runs"].append({"init": kind, "seed": seed, "seconds": sec, "batch_mean_rewards": batch,
                                   "rewards": [r["reward"] for r in s.history],
                                   "best": {k: s.best[k] for k in ("reward", "accuracy", "params", "compression")}})
            write()
            print(f"{kind:>10} seed {seed}: updates to {ns.threshold}: {updates_to_reach(batch, ns.threshold)}, "
                  f"batch reward {batch[0]:.3f} -> {batch[-1]:.3f}, best {s.best['reward']:.4f}, {sec:.0f} s", flush=True)
    write()
    plot(result, png_path)
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
